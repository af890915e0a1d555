//! Processors change a sweep after the sources filled it: metadata enrichers add attributes,
//! filters drop what nobody wants to pay for.

pub mod filter;
pub mod metadata;

use std::time::Duration;

use crate::model::{Sweep, SweepContext};
use metadata::Readiness;

pub trait Processor: Send {
    fn process(&mut self, ctx: &SweepContext, sweep: &mut Sweep);

    /// For a processor whose cache fills in the background (a metadata watch): its readiness,
    /// read by `/readyz`, and how long start-up waits for it before the first sweep is
    /// exported. `None`: always ready, nothing to wait for.
    fn readiness(&self) -> Option<(Readiness, Duration)> {
        None
    }
}
