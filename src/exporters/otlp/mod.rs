//! `otlp`: OTLP over gRPC or HTTP/protobuf with batching, retry and a bounded queue.
//!
//! `export()` encodes, splits and (by default) gzips the sweep ([`crate::exporters::otlp::batcher`]) on tokio's
//! blocking pool, off the two async workers that also serve `/healthz` and the other
//! exporters, appends the batches to the queue and returns; it never waits on the network. One background task
//! per exporter sends the queue's head, one batch at a time and in order: while the head is
//! being retried the rest wait behind it, so a receiver sees sweeps in the order they were
//! taken.

pub mod batcher;
pub mod config;
pub mod encode;
pub mod headers;
pub mod payload;
pub mod queue;
pub mod retry;
pub mod transport;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use config::{Compression, OtlpExporterConfig, Protocol, ResolvedConfig};
use queue::{DiskQueue, MemoryQueue, Queue, QueueError};
use retry::{Backoff, Decision};
use transport::{Outcome, Transport};

use super::{BoxError, BoxFuture, Exporter};
use crate::agent_counters::Telemetry;
use crate::exporters::otlp::batcher::{BatchError, Batcher, DEFAULT_MAX_BYTES};
use crate::model::Sweep;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("invalid otlp exporter configuration: {}", describe(.0))]
    Config(Vec<config::ConfigProblem>),
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("cannot use endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("header `{name}` cannot be sent: {reason}")]
    Header { name: String, reason: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("exporter {0} is shut down and takes no more sweeps")]
    ShutDown(String),
    #[error("exporter {0} could not encode the sweep: the runtime is shutting down")]
    Cancelled(String),
}

fn describe(problems: &[config::ConfigProblem]) -> String {
    problems.iter().map(|(k, r)| format!("{k}: {r}")).collect::<Vec<_>>().join("; ")
}

/// This exporter's own counts (registered under its name for self-telemetry), next to the
/// agent-wide ones in [`Telemetry`].
pub use crate::agent_counters::ExporterCounters as ExporterStats;

struct Shared {
    name: String,
    queue: Mutex<Queue>,
    /// The queue is on disk: every operation on it is file I/O (an append is `fdatasync`ed).
    on_disk: bool,
    /// `queue.len()` after the last operation, readable without the lock (which a disk
    /// operation may hold for as long as the disk takes).
    len: AtomicUsize,
    wake: Notify,
    closing: AtomicBool,
    stats: Arc<ExporterStats>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The queue goes with it (its bytes leave the agent-wide total at the same moment).
        self.stats.queue_bytes.store(0, Ordering::Relaxed);
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding the lock leaves a queue that is still consistent:
        // every mutation is completed before the next begins.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` on the queue: for a disk queue on tokio's blocking pool, so a slow or stuck disk
/// never holds an async worker (the runtime has two, shared by every exporter); a memory queue
/// is cheap enough to use in place.
async fn with_queue<R: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Queue) -> R + Send + 'static,
) -> R {
    let run = |shared: &Shared| {
        let mut queue = shared.queue();
        let result = f(&mut queue);
        shared.len.store(queue.len(), Ordering::Relaxed);
        shared.stats.queue_bytes.store(queue.bytes(), Ordering::Relaxed);
        result
    };
    if !shared.on_disk {
        return run(shared);
    }
    let shared = shared.clone();
    match tokio::task::spawn_blocking(move || run(&shared)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down, which drops the awaiting task too.
        Err(e) => panic!("queue operation cancelled: {e}"),
    }
}

fn count(global: &AtomicU64, local: &AtomicU64, n: u64) {
    global.fetch_add(n, Ordering::Relaxed);
    local.fetch_add(n, Ordering::Relaxed);
}

pub struct OtlpExporter {
    shared: Arc<Shared>,
    /// Lent to the blocking pool while a sweep is encoded (`None` only then).
    batcher: Option<Batcher>,
    sender: Option<JoinHandle<()>>,
}

impl OtlpExporter {
    /// Builds the exporter from its config and the process environment, and starts its sender
    /// task; call inside a tokio runtime. Nothing is sent until the first sweep, and a receiver
    /// that is down is not an error here.
    pub fn new(name: &str, config: &OtlpExporterConfig) -> Result<OtlpExporter, OtlpError> {
        let resolved = config.resolve(|k| std::env::var(k).ok()).map_err(OtlpError::Config)?;
        OtlpExporter::from_resolved(name, resolved)
    }

    /// As [`OtlpExporter::new`], with the env fallback already applied.
    pub fn from_resolved(name: &str, config: ResolvedConfig) -> Result<OtlpExporter, OtlpError> {
        let transport = Transport::new(&config)?;
        let stats = Telemetry::global().exporter(name);
        let (queue, on_disk) = match &config.queue.directory {
            Some(dir) => {
                let (q, recovery) = DiskQueue::open(dir, config.queue.max_bytes)?;
                let telemetry = Telemetry::global();
                count(&telemetry.batches_dropped, &stats.batches_dropped, recovery.skipped_records);
                count(&telemetry.batches_evicted, &stats.batches_evicted, recovery.evicted);
                if recovery.batches > 0 || recovery.truncated_bytes > 0 || recovery.skipped_records > 0 {
                    tracing::info!(
                        exporter = name,
                        directory = %dir.display(),
                        batches = recovery.batches,
                        truncated_bytes = recovery.truncated_bytes,
                        skipped_records = recovery.skipped_records,
                        "Recovered queued batches from disk; they are sent first, in order."
                    );
                }
                (Queue::Disk(q), true)
            }
            None => (Queue::Memory(MemoryQueue::new(config.queue.max_bytes)), false),
        };
        stats.queue_bytes.store(queue.bytes(), Ordering::Relaxed);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            len: AtomicUsize::new(queue.len()),
            queue: Mutex::new(queue),
            on_disk,
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            stats,
        });
        let gzip = (config.compression == Compression::Gzip).then_some(config.compression_level);
        let sender = tokio::spawn(run_sender(shared.clone(), transport, config.retry.clone(), gzip));
        tracing::info!(
            exporter = name,
            endpoint = %config::redact_url(&config.endpoint),
            protocol = ?config.protocol,
            on_disk = shared.on_disk,
            "OTLP exporter started."
        );
        Ok(OtlpExporter {
            shared,
            batcher: Some(Batcher::new(config.max_batch_points, DEFAULT_MAX_BYTES).with_gzip(gzip)),
            sender: Some(sender),
        })
    }

    pub fn stats(&self) -> Arc<ExporterStats> {
        self.shared.stats.clone()
    }

    /// Batches waiting, the one in flight included.
    pub fn queued(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    async fn enqueue(&mut self, sweep: Arc<Sweep>) -> Result<(), OtlpError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(OtlpError::ShutDown(self.shared.name.clone()));
        }
        // Encoding and gzip are CPU work (milliseconds at a thousand containers): on the
        // blocking pool, so that the async workers keep answering probes and sending.
        let mut batcher =
            self.batcher.take().ok_or_else(|| OtlpError::Cancelled(self.shared.name.clone()))?;
        let encoded = tokio::task::spawn_blocking(move || {
            let batches = batcher.split_encoded(&sweep);
            (batcher, batches)
        })
        .await;
        let batches: Vec<Bytes> = match encoded {
            Ok((batcher, batches)) => {
                self.batcher = Some(batcher);
                batches?
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(OtlpError::Cancelled(self.shared.name.clone())),
        };
        if batches.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let result = with_queue(&self.shared, move |queue| push_all(&shared, queue, batches)).await;
        self.shared.wake.notify_one();
        result
    }
}

fn push_all(shared: &Shared, queue: &mut Queue, batches: Vec<Bytes>) -> Result<(), OtlpError> {
    let telemetry = Telemetry::global();
    let stats = &shared.stats;
    let total = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        let evicted = match queue.push(batch) {
            Ok(evicted) => evicted,
            Err(e) => {
                // This batch and the rest of the sweep are not queued; what is queued stays.
                telemetry.queue_write_errors.fetch_add((total - i) as u64, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        stats.batches_queued.fetch_add(1, Ordering::Relaxed);
        if evicted > 0 {
            count(&telemetry.batches_evicted, &stats.batches_evicted, evicted as u64);
            crate::warn_limited!(
                "otlp_queue_full",
                exporter = %shared.name,
                evicted,
                "The OTLP queue is full; evicting the oldest batches."
            );
        }
    }
    Ok(())
}

impl Exporter for OtlpExporter {
    fn export(&mut self, sweep: Arc<Sweep>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move { self.enqueue(sweep).await.map_err(Into::into) })
    }

    fn shutdown(&mut self, deadline: Instant) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.shared.closing.store(true, Ordering::Release);
            self.shared.wake.notify_one();
            let Some(mut sender) = self.sender.take() else { return Ok(()) };
            let flushed = tokio::time::timeout_at(deadline.into(), &mut sender).await.is_ok();
            if !flushed {
                sender.abort();
                let _ = sender.await;
            }
            let left = self.shared.len.load(Ordering::Relaxed);
            if left == 0 {
                tracing::info!(exporter = %self.shared.name, "OTLP exporter flushed its queue.");
            } else if self.shared.on_disk {
                tracing::info!(
                    exporter = %self.shared.name,
                    batches = left,
                    "Shutdown deadline reached; the unsent batches stay in the on-disk queue for the next start."
                );
            } else {
                tracing::warn!(
                    exporter = %self.shared.name,
                    batches = left,
                    "Shutdown deadline reached; unsent batches are lost (no queue.directory configured)."
                );
            }
            Ok(())
        })
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
    }
}

/// Sends the queue's head until it is delivered or dropped, then the next; exits when the
/// exporter is closing and the queue is empty. `gzip` is the configured level: a batch queued
/// in the other form (by an earlier start, on disk) is converted before it is sent.
async fn run_sender(
    shared: Arc<Shared>,
    mut transport: Transport,
    retry: config::RetryConfig,
    gzip: Option<u32>,
) {
    let telemetry = Telemetry::global();
    let stats = shared.stats.clone();
    let name = shared.name.clone();
    let mut rng = fastrand::Rng::new();
    // Backoff of the batch being retried, keyed by its sequence number.
    let mut backoff: Option<(u64, Backoff)> = None;
    loop {
        let head = with_queue(&shared, |q| q.head()).await;
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => {
                if shared.closing.load(Ordering::Acquire) {
                    return;
                }
                shared.wake.notified().await;
                continue;
            }
            Err(QueueError::Corrupt { path, offset, reason }) => {
                // The record cannot be read back; skipping it is the only way forward.
                count(&telemetry.batches_dropped, &stats.batches_dropped, 1);
                crate::warn_limited!(
                    "otlp_queue_corrupt",
                    exporter = %name,
                    path = %path.display(),
                    offset,
                    reason,
                    "A queued batch is unreadable; dropping it."
                );
                with_queue(&shared, |q| {
                    if let Some(seq) = q.head_seq() {
                        let _ = q.ack(seq);
                    }
                })
                .await;
                continue;
            }
            Err(e) => {
                crate::warn_limited!("otlp_queue_io", exporter = %name, error = %e, "Cannot read the OTLP queue; trying again shortly.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };

        let payload = match payload::as_sent(&head.payload, gzip) {
            Ok(payload) => payload,
            Err(e) => {
                count(&telemetry.batches_dropped, &stats.batches_dropped, 1);
                crate::warn_limited!(
                    "otlp_queue_unpack",
                    exporter = %name,
                    error = %e,
                    "A queued batch cannot be put in the configured compression; dropping it."
                );
                let seq = head.seq;
                let _ = with_queue(&shared, move |q| q.ack(seq)).await;
                continue;
            }
        };
        let outcome = transport.send(&payload).await;
        let finished = match outcome {
            Outcome::Delivered { rejected, message } => {
                count(&telemetry.batches_sent, &stats.batches_sent, 1);
                if rejected > 0 {
                    count(&telemetry.points_rejected, &stats.points_rejected, rejected as u64);
                    crate::warn_limited!(
                        "otlp_partial_success",
                        exporter = %name,
                        rejected,
                        message = %message,
                        "The receiver accepted the batch but rejected some of its points."
                    );
                } else if !message.is_empty() {
                    tracing::debug!(exporter = %name, message = %message, "The receiver accepted the batch with a warning.");
                }
                true
            }
            Outcome::Failed { decision: Decision::Done, .. } => {
                count(&telemetry.batches_sent, &stats.batches_sent, 1);
                true
            }
            Outcome::Failed { decision: Decision::Drop { kind }, detail } => {
                count(&telemetry.batches_dropped, &stats.batches_dropped, 1);
                warn_drop(kind, &name, &detail);
                true
            }
            Outcome::Failed { decision: Decision::Retry { after }, detail } => {
                count(&telemetry.batches_retried, &stats.batches_retried, 1);
                let b = match &mut backoff {
                    Some((seq, b)) if *seq == head.seq => b,
                    slot => &mut slot.insert((head.seq, Backoff::new(&retry))).1,
                };
                let delay = b.delay_for(after, &mut rng);
                crate::warn_limited!(
                    "otlp_retry",
                    exporter = %name,
                    error = %detail,
                    retry_in = ?delay,
                    queued = shared.len.load(Ordering::Relaxed),
                    "The OTLP receiver did not take the batch; retrying, newer batches wait behind it."
                );
                tokio::time::sleep(delay).await;
                false
            }
        };
        if finished {
            backoff = None;
            let seq = head.seq;
            if let Err(e) = with_queue(&shared, move |q| q.ack(seq)).await {
                crate::warn_limited!("otlp_queue_ack", exporter = %name, error = %e, "Cannot record a delivered batch in the queue; it may be sent again after a restart.");
            }
        }
    }
}

/// One warning per kind of refusal per minute: the rate limiter is keyed by the kind.
fn warn_drop(kind: &'static str, name: &str, detail: &str) {
    crate::warn_limited!(
        kind,
        exporter = %name,
        kind,
        error = %detail,
        "The OTLP receiver refused the batch for good; dropping it."
    );
}
