//! The agent's own metrics, exported with the OpenTelemetry SDK (one Resource: the agent's)
//! over OTLP/gRPC.
//!
//! The counters live in [`Telemetry`] (plain atomics, written on the hot paths); this module
//! only reads them through observable instruments when the SDK's periodic reader collects, so
//! the sweep pays nothing for them but one histogram record per sweep. Process numbers come
//! from `/proc/self` through the `procfs` crate at the same moment.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;
use serde::Deserialize;

use crate::semconv;
use crate::telemetry::Telemetry;

/// Where and how often the agent sends its own metrics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelfTelemetryConfig {
    /// Send the agent's own metrics (default `true`; nothing is sent without an endpoint).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// OTLP/gRPC endpoint (`http://collector:4317`). Default: the first `otlp` exporter's
    /// endpoint when that exporter speaks gRPC.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// How often the metrics are collected and sent.
    #[serde(
        default = "default_interval",
        deserialize_with = "crate::config::duration::deserialize_positive"
    )]
    pub interval: Duration,
}

fn default_true() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for SelfTelemetryConfig {
    fn default() -> Self {
        SelfTelemetryConfig { enabled: true, endpoint: None, interval: default_interval() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelfTelemetryError {
    #[error("cannot build the self-telemetry exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

static SWEEP_DURATION: OnceLock<Histogram<f64>> = OnceLock::new();

/// Records one sweep's duration (a no-op until self-telemetry starts).
pub fn record_sweep(duration: Duration) {
    if let Some(h) = SWEEP_DURATION.get() {
        h.record(duration.as_secs_f64(), &[]);
    }
}

/// Identifies the agent: `service.name=podometer`, `service.version`, `host.name`,
/// `k8s.node.name` when known, and `OTEL_RESOURCE_ATTRIBUTES` (read by the SDK's detector).
pub fn resource(host_name: Option<String>, node_name: Option<String>) -> Resource {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(host) = host_name {
        attributes.push(KeyValue::new(semconv::HOST_NAME, host));
    }
    if let Some(node) = node_name.filter(|n| !n.is_empty()) {
        attributes.push(KeyValue::new(semconv::K8S_NODE_NAME, node));
    }
    Resource::builder().with_service_name("podometer").with_attributes(attributes).build()
}

/// Starts exporting to `endpoint` every `interval`. Must run inside the tokio runtime (tonic's
/// channel lives there). Keep the provider; `shutdown()` sends a last collection.
pub fn start(
    endpoint: &str,
    interval: Duration,
    resource: Resource,
) -> Result<SdkMeterProvider, SelfTelemetryError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .map_err(|e| SelfTelemetryError::Exporter { endpoint: endpoint.to_owned(), reason: e.to_string() })?;
    let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
    let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    register(&provider);
    Ok(provider)
}

fn register(provider: &SdkMeterProvider) {
    let meter = provider.meter(semconv::SCOPE_NAME);
    let _ = SWEEP_DURATION.set(
        meter
            .f64_histogram("podometer.sweep.duration")
            .with_unit("s")
            .with_description("Wall time of one sweep of every pipeline.")
            .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            .build(),
    );
    let t = Telemetry::global;
    let get = |f: fn(&Telemetry) -> &std::sync::atomic::AtomicU64| move || f(t()).load(Ordering::Relaxed);

    macro_rules! counter {
        ($name:expr, $unit:expr, $desc:expr, $read:expr) => {{
            let read = $read;
            meter
                .u64_observable_counter($name)
                .with_unit($unit)
                .with_description($desc)
                .with_callback(move |o| o.observe(read(), &[]))
                .build();
        }};
    }
    macro_rules! gauge {
        ($name:expr, $unit:expr, $desc:expr, $read:expr) => {{
            let read = $read;
            meter
                .u64_observable_gauge($name)
                .with_unit($unit)
                .with_description($desc)
                .with_callback(move |o| o.observe(read(), &[]))
                .build();
        }};
    }
    counter!("podometer.sweeps", "{sweep}", "Sweeps done.", get(|t| &t.sweeps));
    gauge!(
        "podometer.containers",
        "{container}",
        "Containers in the last sweep.",
        get(|t| &t.last_containers)
    );
    gauge!("podometer.pods", "{pod}", "Pods in the last sweep.", get(|t| &t.last_pods));
    gauge!(
        "podometer.network_namespaces",
        "{namespace}",
        "Network namespaces read in the last sweep (resources with network series).",
        get(|t| &t.last_network_namespaces)
    );
    gauge!(
        "podometer.sweep.points",
        "{point}",
        "Data points (one per series) in the last sweep.",
        get(|t| &t.last_points)
    );
    meter
        .u64_observable_counter("podometer.source.errors")
        .with_unit("{error}")
        .with_description(
            "Containers whose reading failed, by error.type (`read`: failed; `vanished`: gone mid-read).",
        )
        .with_callback(|o| {
            let t = Telemetry::global();
            o.observe(t.source_errors.load(Ordering::Relaxed), &[KeyValue::new("error.type", "read")]);
            o.observe(
                t.containers_vanished.load(Ordering::Relaxed),
                &[KeyValue::new("error.type", "vanished")],
            );
        })
        .build();
    meter
        .u64_observable_counter("podometer.export.faults")
        .with_unit("{fault}")
        .with_description(
            "OTLP/HTTP requests without a usable answer and batches the disk queue could not store, by \
             error.type (`timeout`, `connection`, `bad_response`, `queue_write`).",
        )
        .with_callback(|o| {
            let t = Telemetry::global();
            for (kind, counter) in [
                ("timeout", &t.export_timeouts),
                ("connection", &t.export_connection_errors),
                ("bad_response", &t.export_bad_responses),
                ("queue_write", &t.queue_write_errors),
            ] {
                o.observe(counter.load(Ordering::Relaxed), &[KeyValue::new("error.type", kind)]);
            }
        })
        .build();
    counter!(
        "podometer.metadata.misses",
        "{resource}",
        "Container resources a metadata processor had no names for.",
        get(|t| &t.metadata_misses)
    );
    counter!(
        "podometer.exporter.sweeps.dropped",
        "{sweep}",
        "Sweeps an exporter's channel was too full to take.",
        get(|t| &t.sweeps_dropped_by_exporter_backlog)
    );
    meter
        .u64_observable_counter("podometer.exporter.batches")
        .with_unit("{batch}")
        .with_description(
            "OTLP batches by outcome: sent, retried (attempts), dropped (rejected), evicted (queue full).",
        )
        .with_callback(|o| {
            let t = Telemetry::global();
            for (outcome, c) in [
                ("sent", &t.batches_sent),
                ("retried", &t.batches_retried),
                ("dropped", &t.batches_dropped),
                ("evicted", &t.batches_evicted),
            ] {
                o.observe(c.load(Ordering::Relaxed), &[KeyValue::new("outcome", outcome)]);
            }
        })
        .build();
    counter!(
        "podometer.exporter.points.rejected",
        "{point}",
        "Points a receiver rejected in partial_success answers.",
        get(|t| &t.points_rejected)
    );
    gauge!(
        "podometer.exporter.queue.size",
        "By",
        "Bytes waiting in the OTLP exporters' queues.",
        get(|t| &t.queue_bytes)
    );

    // The process itself, under the semantic conventions' process.* names.
    meter
        .f64_observable_counter("process.cpu.time")
        .with_unit("s")
        .with_description("CPU time of the agent process, by cpu.mode.")
        .with_callback(|o| {
            if let Some((user, system)) = process_cpu() {
                o.observe(user, &[KeyValue::new(semconv::CPU_MODE, "user")]);
                o.observe(system, &[KeyValue::new(semconv::CPU_MODE, "system")]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter("process.memory.usage")
        .with_unit("By")
        .with_description("Resident set size of the agent process.")
        .with_callback(|o| {
            if let Some(rss) = process_rss() {
                o.observe(rss, &[]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter("process.unix.file_descriptor.count")
        .with_unit("{file_descriptor}")
        .with_description("Open file descriptors of the agent process.")
        .with_callback(|o| {
            if let Ok(n) = procfs::process::Process::myself().and_then(|p| p.fd_count()) {
                o.observe(n as i64, &[]);
            }
        })
        .build();
}

/// User and system CPU seconds of this process.
pub fn process_cpu() -> Option<(f64, f64)> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let hz = procfs::ticks_per_second() as f64;
    Some((stat.utime as f64 / hz, stat.stime as f64 / hz))
}

/// Resident set size of this process in bytes.
pub fn process_rss() -> Option<i64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.rss * procfs::page_size()) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_numbers_come_from_proc_self() {
        let (user, system) = process_cpu().expect("/proc/self/stat");
        assert!(user >= 0.0 && system >= 0.0);
        let rss = process_rss().expect("rss");
        assert!(rss > 1 << 20, "a test process has more than 1 MiB resident: {rss}");
    }
}
