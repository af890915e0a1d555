//! The two human views of a sweep: `collect --format table` ([`table`]: one table printed
//! between two sweeps) and `podometer top` ([`top`]: the same numbers, live in the terminal).

pub mod table;
pub mod top;
