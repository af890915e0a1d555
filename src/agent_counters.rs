//! The agent's own counters, and rate-limited logging for per-sweep failures.
//!
//! Counters are plain atomics shared by reference; they are logged at info level every few
//! minutes by the `run` loop and exported by [`crate::self_telemetry_otlp`], both from the one
//! [`COUNTERS`] list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How a counter is exported by self-telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic sum.
    Counter,
    /// The latest value.
    Gauge,
    /// Logged only: exported some other way (per exporter, or as the sweep histogram).
    LogOnly,
}

/// One of the agent's counters: its name in the "Agent counters." line, and how
/// self-telemetry exports it (metric name, one optional attribute that tells it apart from
/// other counters under the same metric, unit, kind, description).
#[derive(Debug)]
pub struct Counter {
    pub log: &'static str,
    pub read: fn(&Telemetry) -> &AtomicU64,
    pub metric: &'static str,
    pub attribute: Option<(&'static str, &'static str)>,
    pub unit: &'static str,
    pub kind: Kind,
    /// The metric's description (for counters sharing a metric, the first one's is used).
    pub description: &'static str,
}

/// Declares the counters once: the struct's fields, the log line and self-telemetry all come
/// from this list, so adding a counter is one line here (and its increments).
macro_rules! counters {
    ($( $(#[$doc:meta])* $field:ident: $kind:ident $metric:literal $(($ak:literal = $av:literal))? $unit:literal $desc:expr; )*) => {
        #[derive(Debug, Default)]
        pub struct Telemetry {
            $( $(#[$doc])* pub $field: AtomicU64, )*
            /// Per-exporter counters by the exporter's config key. Kept for the life of the
            /// process (exporters are built once), so the last collection after shutdown
            /// still reports every exporter.
            exporters: Mutex<Vec<(String, Arc<ExporterCounters>)>>,
        }

        /// Every counter of [`Telemetry`], in the log line's order.
        pub const COUNTERS: &[Counter] = &[
            $( Counter {
                log: stringify!($field),
                read: |t| &t.$field,
                metric: $metric,
                attribute: counters!(@attr $(($ak = $av))?),
                unit: $unit,
                kind: Kind::$kind,
                description: $desc,
            }, )*
        ];
    };
    (@attr ($k:literal = $v:literal)) => { Some(($k, $v)) };
    (@attr) => { None };
}

// One description per metric shared by several counters (one per attribute value).
const SOURCE_ERRORS: &str =
    "Containers whose reading failed, by error.type (`read`: failed; `vanished`: gone mid-read).";
const CGROUPS_DROPPED: &str =
    "Cgroups left out at a discovery, by reason (`duplicate_identity`: another cgroup stands for the same container or pod; `over_cap`: sources.cgroups.max_groups reached).";
const EXPORT_FAULTS: &str =
    "OTLP/HTTP requests without a usable answer and batches the disk queue could not store, by error.type (`timeout`, `connection`, `bad_response`, `queue_write`).";

counters! {
    sweeps: Counter "podometer.sweeps" "{sweep}" "Sweeps done.";
    /// Duration of the latest sweep, in microseconds (exported as the `podometer.sweep.duration` histogram).
    last_sweep_micros: LogOnly "podometer.sweep.duration" "us" "Duration of the latest sweep.";
    /// Containers whose reading failed for a reason other than vanishing.
    source_errors: Counter "podometer.source.errors" ("error.type" = "read") "{error}"
        SOURCE_ERRORS;
    /// Containers that vanished mid-read; normal on a busy node.
    containers_vanished: Counter "podometer.source.errors" ("error.type" = "vanished") "{error}"
        SOURCE_ERRORS;
    /// Sweeps an exporter's channel was too full to take (all exporters; per exporter in [`ExporterCounters`]).
    sweeps_dropped_by_exporter_backlog: LogOnly "podometer.exporter.sweeps.dropped" "{sweep}" "Sweeps dropped for exporters that did not keep up.";
    batches_sent: LogOnly "podometer.exporter.batches" "{batch}" "OTLP batches sent, all exporters.";
    batches_retried: LogOnly "podometer.exporter.batches" "{batch}" "OTLP batch attempts retried, all exporters.";
    batches_dropped: LogOnly "podometer.exporter.batches" "{batch}" "OTLP batches dropped, all exporters.";
    batches_evicted: LogOnly "podometer.exporter.batches" "{batch}" "OTLP batches evicted, all exporters.";
    points_rejected: LogOnly "podometer.exporter.points.rejected" "{point}" "Points rejected, all exporters.";
    queue_bytes: LogOnly "podometer.exporter.queue.size" "By" "Bytes queued, all exporters.";
    /// Container resources a metadata processor had no names for (exported with ids only).
    metadata_misses: Counter "podometer.metadata.misses" "{resource}" "Container resources a metadata processor had no names for.";
    /// Metadata inputs that could not be used: an unreadable, oversized or malformed runtime
    /// file, a failed or malformed answer from a metadata API (socket errors, timeouts, bad JSON).
    metadata_errors: Counter "podometer.metadata.errors" "{error}"
        "Metadata inputs that could not be used: unreadable, oversized or malformed runtime files, failed or malformed metadata API answers.";
    /// Container and pod cgroups left unopened at a discovery for lack of file descriptors
    /// (counted at every discovery that leaves them out; they are retried at the next one).
    fd_exhausted: Counter "podometer.discovery.fd_exhausted" "{cgroup}"
        "Container and pod cgroups left unopened at a discovery for lack of file descriptors (retried at the next).";
    /// Cgroups left out because another cgroup already stood for the same container or pod
    /// (a copied id in a user's subtree, say), counted at each discovery.
    cgroups_duplicate_identity: Counter "podometer.discovery.cgroups.dropped" ("reason" = "duplicate_identity") "{cgroup}"
        CGROUPS_DROPPED;
    /// Container and pod cgroups left out at a discovery because `sources.cgroups.max_groups`
    /// was reached.
    cgroups_over_cap: Counter "podometer.discovery.cgroups.dropped" ("reason" = "over_cap") "{cgroup}"
        CGROUPS_DROPPED;
    /// Interfaces left out of a sweep because their namespace had more than
    /// `sources.netns.max_interfaces`.
    netns_interfaces_over_cap: Counter "podometer.network.interfaces.dropped" "{interface}"
        "Interfaces left out of a sweep because their namespace had more than sources.netns.max_interfaces.";
    /// Pods whose network namespace was replaced (new sandbox): their network series restart.
    netns_replaced: Counter "podometer.network_namespaces.replaced" "{namespace}"
        "Pods whose network namespace was replaced (a new sandbox): their network series restart.";
    /// Export faults, all exporters: OTLP/HTTP requests that got no answer within `timeout`;
    /// that failed to connect or whose connection was reset or closed before an answer; whose
    /// answer was not HTTP; and batches that could not be written to the disk queue (a full or
    /// failing disk), which are not queued.
    export_timeouts: Counter "podometer.export.faults" ("error.type" = "timeout") "{fault}"
        EXPORT_FAULTS;
    export_connection_errors: Counter "podometer.export.faults" ("error.type" = "connection") "{fault}"
        EXPORT_FAULTS;
    export_bad_responses: Counter "podometer.export.faults" ("error.type" = "bad_response") "{fault}"
        EXPORT_FAULTS;
    queue_write_errors: Counter "podometer.export.faults" ("error.type" = "queue_write") "{fault}"
        EXPORT_FAULTS;
    /// Containers, pods, network namespaces (resources with network series) and points of the
    /// latest sweep, for self-telemetry.
    last_containers: Gauge "podometer.containers" "{container}" "Containers in the last sweep.";
    last_pods: Gauge "podometer.pods" "{pod}" "Pods in the last sweep.";
    last_network_namespaces: Gauge "podometer.network_namespaces" "{namespace}"
        "Network namespaces read in the last sweep (resources with network series).";
    last_points: Gauge "podometer.sweep.points" "{point}" "Data points (one per series) in the last sweep.";
}

/// One exporter's counters. The agent-wide totals in [`Telemetry`] are kept next to them by
/// whoever counts (see [`ExporterCounters::count`]).
#[derive(Debug, Default)]
pub struct ExporterCounters {
    pub sweeps_dropped_by_backlog: AtomicU64,
    pub batches_queued: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_retried: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub batches_evicted: AtomicU64,
    pub points_rejected: AtomicU64,
    /// Bytes in this exporter's queue after its last queue operation.
    pub queue_bytes: AtomicU64,
}

/// The per-exporter counters self-telemetry exports, with the attribute `exporter` = the
/// exporter's config key: (metric, attribute telling counters of one metric apart, unit,
/// kind, description, read).
#[allow(clippy::type_complexity)]
pub const EXPORTER_COUNTERS: &[(
    &str,
    Option<(&str, &str)>,
    &str,
    Kind,
    &str,
    fn(&ExporterCounters) -> &AtomicU64,
)] = &[
    (
        "podometer.exporter.sweeps.dropped",
        None,
        "{sweep}",
        Kind::Counter,
        "Sweeps an exporter's channel was too full to take.",
        |e| &e.sweeps_dropped_by_backlog,
    ),
    (
        "podometer.exporter.batches",
        Some(("outcome", "sent")),
        "{batch}",
        Kind::Counter,
        "OTLP batches by outcome: sent, retried (attempts), dropped (rejected), evicted (queue full).",
        |e| &e.batches_sent,
    ),
    ("podometer.exporter.batches", Some(("outcome", "retried")), "{batch}", Kind::Counter, "", |e| {
        &e.batches_retried
    }),
    ("podometer.exporter.batches", Some(("outcome", "dropped")), "{batch}", Kind::Counter, "", |e| {
        &e.batches_dropped
    }),
    ("podometer.exporter.batches", Some(("outcome", "evicted")), "{batch}", Kind::Counter, "", |e| {
        &e.batches_evicted
    }),
    (
        "podometer.exporter.points.rejected",
        None,
        "{point}",
        Kind::Counter,
        "Points a receiver rejected in partial_success answers.",
        |e| &e.points_rejected,
    ),
    (
        "podometer.exporter.queue.size",
        None,
        "By",
        Kind::Gauge,
        "Bytes waiting in the exporter's queue.",
        |e| &e.queue_bytes,
    ),
];

impl ExporterCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds `n` to this exporter's counter and to the agent-wide total.
    pub fn count(
        &self,
        local: fn(&ExporterCounters) -> &AtomicU64,
        total: fn(&Telemetry) -> &AtomicU64,
        n: u64,
    ) {
        local(self).fetch_add(n, Ordering::Relaxed);
        total(Telemetry::global()).fetch_add(n, Ordering::Relaxed);
    }
}

impl Telemetry {
    pub fn global() -> &'static Arc<Telemetry> {
        static GLOBAL: OnceLock<Arc<Telemetry>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Telemetry::default()))
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of the exporter `name` (its config key): the same ones for the pipeline
    /// and the exporter itself, whoever asks first.
    pub fn exporter(&self, name: &str) -> Arc<ExporterCounters> {
        let mut list = self.exporters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = list.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let counters = Arc::new(ExporterCounters::default());
        list.push((name.to_owned(), counters.clone()));
        counters
    }

    /// Every exporter's counters, by name.
    pub fn exporters(&self) -> Vec<(String, Arc<ExporterCounters>)> {
        self.exporters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One log line's worth of fields.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        COUNTERS.iter().map(|c| (c.log, (c.read)(self).load(Ordering::Relaxed))).collect()
    }
}

/// Log targets of dependencies kept at `error` unless the filter names them: kube's client logs
/// every answer it cannot decode at WARN with the whole response body, unthrottled, while the
/// agent reports the same failure itself, once a minute (`k8s_api`).
pub const QUIET_TARGETS: &[&str] = &["kube_client", "kube_core", "kube_runtime"];

/// The log filter the agent runs with: `filter` (the `--log` value or `RUST_LOG`) plus an
/// `error` directive for each of [`QUIET_TARGETS`] the filter does not name itself.
pub fn log_filter(filter: &str) -> String {
    let mut out = filter.trim().to_owned();
    for target in QUIET_TARGETS {
        let named = out.split(',').any(|d| d.trim().split(['=', '[', ':']).next() == Some(*target));
        if !named {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(target);
            out.push_str("=error");
        }
    }
    out
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
        static LIMITER: $crate::agent_counters::RateLimiter =
            $crate::agent_counters::RateLimiter::new(::std::time::Duration::from_secs(60));
        if let Some(suppressed) = LIMITER.allow($key) {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn dependencies_are_quiet_unless_the_filter_names_them() {
        assert_eq!(log_filter("info"), "info,kube_client=error,kube_core=error,kube_runtime=error");
        assert_eq!(
            log_filter("debug,kube_client=debug"),
            "debug,kube_client=debug,kube_core=error,kube_runtime=error"
        );
        assert_eq!(log_filter(""), "kube_client=error,kube_core=error,kube_runtime=error");
    }

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

    #[test]
    fn every_counter_is_logged_once_and_exported_or_said_why_not() {
        let t = Telemetry::default();
        t.fd_exhausted.store(7, Ordering::Relaxed);
        let snap = t.snapshot();
        assert!(snap.contains(&("fd_exhausted", 7)));
        let mut names: Vec<&str> = snap.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNTERS.len(), "log names are unique");
        // Counters sharing a metric differ by their attribute.
        for (i, a) in COUNTERS.iter().enumerate() {
            for b in &COUNTERS[i + 1..] {
                if a.metric == b.metric && a.kind != Kind::LogOnly && b.kind != Kind::LogOnly {
                    assert_ne!(a.attribute, b.attribute, "{} and {}", a.log, b.log);
                    assert_eq!(a.unit, b.unit);
                }
            }
        }
        for name in ["metadata_errors", "fd_exhausted", "metadata_misses", "sweeps"] {
            let c = COUNTERS.iter().find(|c| c.log == name).unwrap();
            assert_eq!(c.kind, Kind::Counter, "{name} is exported");
        }
    }

    #[test]
    fn exporter_counters_are_per_name_and_feed_the_totals() {
        let t = Telemetry::global();
        let name = format!("otlp/test-{}", std::process::id());
        let a = t.exporter(&name);
        let other = t.exporter(&format!("{name}-other"));
        assert!(Arc::ptr_eq(&a, &t.exporter(&name)), "one set of counters per name");
        let before = t.batches_retried.load(Ordering::Relaxed);
        a.count(|e| &e.batches_retried, |t| &t.batches_retried, 3);
        assert_eq!(a.batches_retried.load(Ordering::Relaxed), 3);
        assert_eq!(other.batches_retried.load(Ordering::Relaxed), 0);
        assert!(t.batches_retried.load(Ordering::Relaxed) >= before + 3);
        assert!(t.exporters().iter().any(|(n, _)| n == &name));
    }
}
