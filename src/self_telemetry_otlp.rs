//! The agent's own metrics, exported with the OpenTelemetry SDK (one Resource: the agent's)
//! over OTLP/gRPC.
//!
//! The counters live in [`Telemetry`] (plain atomics, written on the hot paths); this module
//! only reads them through observable instruments when the SDK's periodic reader collects, so
//! the sweep pays nothing for them but one histogram record per sweep. Process numbers come
//! from `/proc/self` through the `procfs` crate at the same moment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig as _};
use opentelemetry_sdk::metrics::{Instrument, PeriodicReader, SdkMeterProvider, Stream};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::agent_counters::{Counter, Kind, Telemetry, COUNTERS, EXPORTER_COUNTERS};
use crate::exporters::otlp::config::{header_map, redact_url, RedactedHeaders, TlsConfig};
use crate::semconv;

/// Where and how often the agent sends its own metrics.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelfTelemetryConfig {
    /// Send the agent's own metrics (default `true`; nothing is sent without an endpoint).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// OTLP/gRPC endpoint (`http://collector:4317`). Default: the first `otlp` exporter's
    /// endpoint when that exporter speaks gRPC.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// TLS for an `https://` endpoint, as the `otlp` exporter's `tls` (`ca_file`, `cert_file`
    /// and `key_file` for mutual TLS). Without `endpoint`, the `otlp` exporter's endpoint and
    /// TLS settings are used together.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Request metadata for `endpoint` (`authorization: Bearer ...`). Without `endpoint`, the
    /// `otlp` exporter's headers are sent, as an authenticating collector expects.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
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
        SelfTelemetryConfig {
            enabled: true,
            endpoint: None,
            tls: TlsConfig::default(),
            headers: None,
            interval: default_interval(),
        }
    }
}

/// The endpoint redacted and header values left out, as everywhere an endpoint is shown.
impl std::fmt::Debug for SelfTelemetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfTelemetryConfig")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("tls", &self.tls)
            .field("headers", &self.headers.as_ref().map(|h| RedactedHeaders(h.keys().map(String::as_str))))
            .field("interval", &self.interval)
            .finish()
    }
}

impl SelfTelemetryConfig {
    /// Problems as (key under `self_telemetry`, reason).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            problems.push((
                "tls".to_owned(),
                "cert_file and key_file go together (mutual TLS needs both)".to_owned(),
            ));
        }
        let files = tls.ca_file.is_some() || tls.cert_file.is_some() || tls.key_file.is_some();
        match &self.endpoint {
            Some(e) if files && !e.starts_with("https://") => problems.push((
                "tls".to_owned(),
                "TLS files need an https:// endpoint (http:// is plaintext)".to_owned(),
            )),
            None if files || tls.insecure.is_some() => problems.push((
                "tls".to_owned(),
                "without `endpoint` the otlp exporter's TLS settings are used; set `endpoint` to set TLS here".to_owned(),
            )),
            _ => {}
        }
        if tls.insecure.is_some() {
            problems.push((
                "tls.insecure".to_owned(),
                "not used here: the scheme decides (http:// plaintext, https:// TLS)".to_owned(),
            ));
        }
        if let Some(headers) = &self.headers {
            if self.endpoint.is_none() {
                problems.push((
                    "headers".to_owned(),
                    "without `endpoint` the otlp exporter's headers are used; set `endpoint` to set headers here"
                        .to_owned(),
                ));
            }
            let pairs: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Err((name, reason)) = header_map(&pairs) {
                problems.push((format!("headers.{name}"), reason));
            }
        }
        problems
    }
}

/// Where self-telemetry goes: the endpoint, the request metadata and, for `https://`, how to
/// verify the server and who we are.
#[derive(Clone, PartialEq)]
pub struct Target {
    pub endpoint: String,
    /// CA certificate(s) instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Sent with every export (gRPC metadata), e.g. `authorization`.
    pub headers: Vec<(String, String)>,
}

/// The endpoint redacted and header values left out.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("ca_file", &self.ca_file)
            .field("client", &self.client)
            .field("headers", &RedactedHeaders(self.headers.iter().map(|(k, _)| k.as_str())))
            .finish()
    }
}

impl Target {
    pub fn plain(endpoint: &str) -> Target {
        Target { endpoint: endpoint.to_owned(), ca_file: None, client: None, headers: Vec::new() }
    }

    /// What errors show of the endpoint.
    fn shown(&self) -> String {
        redact_url(&self.endpoint).into_owned()
    }

    /// tonic's TLS settings for an `https://` endpoint (None for `http://`).
    fn tls(&self) -> Result<Option<ClientTlsConfig>, SelfTelemetryError> {
        if !self.endpoint.starts_with("https://") {
            return Ok(None);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| SelfTelemetryError::Exporter {
                endpoint: self.shown(),
                reason: format!("{}: {e}", path.display()),
            })
        };
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.client {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
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

/// Starts exporting to `endpoint` every `interval`. Must run inside the tokio runtime (tonic's
/// channel lives there). Keep the provider; `shutdown()` sends a last collection.
pub fn start(
    target: &Target,
    interval: Duration,
    resource: Resource,
) -> Result<SdkMeterProvider, SelfTelemetryError> {
    let fail = |reason: String| SelfTelemetryError::Exporter { endpoint: target.shown(), reason };
    let metadata =
        header_map(&target.headers).map_err(|(name, reason)| fail(format!("header {name}: {reason}")))?;
    let mut builder = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(target.endpoint.as_str())
        .with_metadata(tonic::metadata::MetadataMap::from_headers(metadata))
        .with_timeout(Duration::from_secs(10))
        .with_compression(opentelemetry_otlp::Compression::Gzip);
    if let Some(tls) = target.tls()? {
        builder = builder.with_tls_config(tls);
    }
    // The SDK's error may quote the endpoint it was given: redacted like everything else.
    let exporter = builder.build().map_err(|e| {
        let reason = e.to_string().replace(&target.endpoint, &target.shown());
        fail(reason)
    })?;
    let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .with_view(small_streams)
        .build();
    register(&provider);
    Ok(provider)
}

/// Series one self-telemetry instrument may have. The SDK sizes each instrument's tables for
/// its default limit of 2,000 series up front, which held 1.2–2.8 MB at 500 containers
/// (heaptrack) for instruments with a handful of series: one per exporter, or per exporter and
/// failure kind. Past the limit the SDK folds further series into one overflow series.
const SERIES_PER_INSTRUMENT: usize = 128;

fn small_streams(_: &Instrument) -> Option<Stream> {
    Stream::builder().with_cardinality_limit(SERIES_PER_INSTRUMENT).build().ok()
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
    // The agent's counters, from the one table in `telemetry` (counters sharing a metric name
    // become one instrument, told apart by their attribute).
    let mut metrics: Vec<(&'static str, Vec<&'static Counter>)> = Vec::new();
    for c in COUNTERS.iter().filter(|c| c.kind != Kind::LogOnly) {
        match metrics.iter_mut().find(|(m, _)| *m == c.metric) {
            Some((_, list)) => list.push(c),
            None => metrics.push((c.metric, vec![c])),
        }
    }
    for (name, list) in metrics {
        let observe = move || {
            let t = Telemetry::global();
            list.iter()
                .map(|c| {
                    let attrs: Vec<KeyValue> =
                        c.attribute.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
                    ((c.read)(t).load(Ordering::Relaxed), attrs)
                })
                .collect::<Vec<_>>()
        };
        let first = COUNTERS.iter().find(|c| c.metric == name).expect("listed");
        instrument(&meter, name, first.unit, first.kind, first.description, observe);
    }
    // Per exporter, with `exporter` = its config key.
    let mut names: Vec<&'static str> = EXPORTER_COUNTERS.iter().map(|e| e.0).collect();
    names.dedup();
    for name in names {
        let entries: Vec<_> = EXPORTER_COUNTERS.iter().filter(|e| e.0 == name).collect();
        let (_, _, unit, kind, description, _) = *entries[0];
        let observe = move || {
            let mut out = Vec::new();
            for (exporter, counters) in Telemetry::global().exporters() {
                for (_, attribute, _, _, _, read) in &entries {
                    let mut attrs = vec![KeyValue::new("exporter", exporter.clone())];
                    attrs.extend(attribute.iter().map(|(k, v)| KeyValue::new(*k, *v)));
                    out.push((read(&counters).load(Ordering::Relaxed), attrs));
                }
            }
            out
        };
        instrument(&meter, name, unit, kind, description, observe);
    }

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
            // Not `procfs`'s `fd_count`, which lists the directory: see `open_count`.
            if let Some(n) = crate::fdlimit::open_count() {
                o.observe(n as i64, &[]);
            }
        })
        .build();
}

/// An observable counter or gauge reporting what `observe` returns at each collection.
fn instrument(
    meter: &opentelemetry::metrics::Meter,
    name: &'static str,
    unit: &'static str,
    kind: Kind,
    description: &'static str,
    observe: impl Fn() -> Vec<(u64, Vec<KeyValue>)> + Send + Sync + 'static,
) {
    match kind {
        Kind::Counter => {
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |o| observe().iter().for_each(|(v, a)| o.observe(*v, a)))
                .build();
        }
        Kind::Gauge => {
            meter
                .u64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |o| observe().iter().for_each(|(v, a)| o.observe(*v, a)))
                .build();
        }
        Kind::LogOnly => {}
    }
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
