//! Exporters push sweeps out of the agent. Each runs in its own task fed by a bounded channel,
//! so a slow or dead exporter never delays the sweeps or the other exporters.

pub mod file;
pub mod otlp;
pub mod prometheus;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::model::Sweep;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub trait Exporter: Send + 'static {
    /// Takes one sweep. Should return quickly: an exporter that talks to the network queues
    /// the sweep and sends it from its own task. An `Err` is logged by the caller; the sweep
    /// is lost for this exporter only.
    fn export(&mut self, sweep: Arc<Sweep>) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Flushes what is queued, giving up at `deadline`. Called once, after the last sweep.
    fn shutdown(&mut self, deadline: Instant) -> BoxFuture<'_, Result<(), BoxError>>;
}
