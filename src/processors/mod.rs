//! Processors change a sweep after the sources filled it: metadata enrichers add attributes,
//! filters drop what nobody wants to pay for.

pub mod filter;

use crate::model::{Sweep, SweepContext};

pub trait Processor: Send {
    fn process(&mut self, ctx: &SweepContext, sweep: &mut Sweep);
}
