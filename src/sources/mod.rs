//! Sources read the host and fill a [`Sweep`]. They run one after another on the sweep
//! thread, in the order the pipeline lists them, and share a [`SweepContext`]: the cgroup
//! source publishes the containers it found there, and the network namespace source reads
//! them instead of walking the cgroup tree again.

pub mod cgroups;
pub mod netns;
pub mod processes;

use crate::model::{Sweep, SweepContext};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub trait Source: Send {
    /// Adds this sweep's points. Failures of single containers (a cgroup that vanished, a file
    /// that could not be parsed) are handled inside and counted; an `Err` means the whole
    /// source produced nothing this sweep (its root is gone, say), and the pipeline logs it.
    fn collect(&mut self, ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError>;
}
