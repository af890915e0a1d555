//! The agent's own counters, and rate-limited logging for per-sweep failures.
//!
//! Counters are plain atomics shared by reference; they are logged at info level every few
//! minutes by the `run` loop. Exporting them as metrics through the OpenTelemetry SDK comes
//! later, reading the same struct.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Telemetry {
    pub sweeps: AtomicU64,
    /// Duration of the latest sweep, in microseconds.
    pub last_sweep_micros: AtomicU64,
    /// Containers whose reading failed for a reason other than vanishing.
    pub source_errors: AtomicU64,
    /// Containers that vanished mid-read; normal on a busy node.
    pub containers_vanished: AtomicU64,
    /// Sweeps an exporter's channel was too full to take.
    pub sweeps_dropped_by_exporter_backlog: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_retried: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub batches_evicted: AtomicU64,
    pub points_rejected: AtomicU64,
    pub queue_bytes: AtomicU64,
    /// Container resources a metadata processor had no names for (exported with ids only).
    pub metadata_misses: AtomicU64,
    /// Metadata inputs that could not be used: an unreadable, oversized or malformed runtime
    /// file, a failed or malformed answer from a metadata API (socket errors, timeouts, bad JSON).
    pub metadata_errors: AtomicU64,
    /// Container and pod cgroups left unopened at a discovery for lack of file descriptors
    /// (counted at every discovery that leaves them out; they are retried at the next one).
    pub fd_exhausted: AtomicU64,
    /// Containers, pods, network namespaces (resources with network series) and points of the
    /// latest sweep, for self-telemetry.
    pub last_containers: AtomicU64,
    pub last_pods: AtomicU64,
    pub last_network_namespaces: AtomicU64,
    pub last_points: AtomicU64,
    /// Export and queue faults, each counted where it happens (the batch is also counted in
    /// `batches_retried` or the sweep in the export-failed log): OTLP/HTTP requests that got no
    /// answer within `timeout`; that failed to connect or whose connection was reset or closed
    /// before an answer; whose answer was not HTTP; and batches that could not be written to
    /// the disk queue (a full or failing disk), which are not queued.
    pub export_timeouts: AtomicU64,
    pub export_connection_errors: AtomicU64,
    pub export_bad_responses: AtomicU64,
    pub queue_write_errors: AtomicU64,
}

impl Telemetry {
    pub fn global() -> &'static Arc<Telemetry> {
        static GLOBAL: OnceLock<Arc<Telemetry>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Telemetry::default()))
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One log line's worth of fields.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("sweeps", get(&self.sweeps)),
            ("last_sweep_micros", get(&self.last_sweep_micros)),
            ("source_errors", get(&self.source_errors)),
            ("containers_vanished", get(&self.containers_vanished)),
            ("sweeps_dropped_by_exporter_backlog", get(&self.sweeps_dropped_by_exporter_backlog)),
            ("batches_sent", get(&self.batches_sent)),
            ("batches_retried", get(&self.batches_retried)),
            ("batches_dropped", get(&self.batches_dropped)),
            ("batches_evicted", get(&self.batches_evicted)),
            ("points_rejected", get(&self.points_rejected)),
            ("queue_bytes", get(&self.queue_bytes)),
            ("metadata_misses", get(&self.metadata_misses)),
            ("metadata_errors", get(&self.metadata_errors)),
            ("fd_exhausted", get(&self.fd_exhausted)),
            ("last_containers", get(&self.last_containers)),
            ("last_pods", get(&self.last_pods)),
            ("last_network_namespaces", get(&self.last_network_namespaces)),
            ("last_points", get(&self.last_points)),
            ("export_timeouts", get(&self.export_timeouts)),
            ("export_connection_errors", get(&self.export_connection_errors)),
            ("export_bad_responses", get(&self.export_bad_responses)),
            ("queue_write_errors", get(&self.queue_write_errors)),
        ]
    }
}

/// Lets one message per key through per interval and says how many were held back, so a
/// failure that repeats every sweep costs one log line a minute, not one per container.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Mutex<Option<HashMap<&'static str, (Instant, u64)>>>,
}

impl RateLimiter {
    pub const fn new(interval: Duration) -> RateLimiter {
        RateLimiter { interval, last: Mutex::new(None) }
    }

    /// `Some(suppressed)` when a message under `key` may be logged now.
    pub fn allow(&self, key: &'static str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut guard = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let last = guard.get_or_insert_with(HashMap::new);
        match last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let held = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(held)
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs a warning at most once a minute per call site key.
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::telemetry::RateLimiter =
            $crate::telemetry::RateLimiter::new(::std::time::Duration::from_secs(60));
        if let Some(suppressed) = LIMITER.allow($key) {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_lets_one_through_per_interval_and_counts_the_rest() {
        let limiter = RateLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limiter.allow_at("k", t0), Some(0));
        assert_eq!(limiter.allow_at("k", t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow_at("k", t0 + Duration::from_secs(2)), None);
        assert_eq!(limiter.allow_at("other", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(limiter.allow_at("k", t0 + Duration::from_secs(61)), Some(2));
    }
}
