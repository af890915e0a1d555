//! Configuration of one `otlp` exporter instance, and its resolution against the
//! `OTEL_EXPORTER_OTLP_*` environment variables of the OpenTelemetry specification.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use super::headers::{check_header, header_map, parse_env_headers, redact_url, RedactedHeaders};

/// `OTEL_EXPORTER_OTLP_METRICS_*` is looked up first, then `OTEL_EXPORTER_OTLP_*`.
pub const ENV_PREFIX_METRICS: &str = "OTEL_EXPORTER_OTLP_METRICS_";
pub const ENV_PREFIX_GENERIC: &str = "OTEL_EXPORTER_OTLP_";
pub const ENV_ENDPOINT: &str = "ENDPOINT";
pub const ENV_HEADERS: &str = "HEADERS";
pub const ENV_PROTOCOL: &str = "PROTOCOL";
pub const ENV_COMPRESSION: &str = "COMPRESSION";
pub const ENV_TIMEOUT: &str = "TIMEOUT";
pub const ENV_CERTIFICATE: &str = "CERTIFICATE";
pub const ENV_CLIENT_KEY: &str = "CLIENT_KEY";
pub const ENV_CLIENT_CERTIFICATE: &str = "CLIENT_CERTIFICATE";
pub const ENV_INSECURE: &str = "INSECURE";

pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318/v1/metrics";
/// Appended to a base URL taken from `OTEL_EXPORTER_OTLP_ENDPOINT` for HTTP/protobuf.
pub const HTTP_METRICS_PATH: &str = "v1/metrics";

/// Wire protocol.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`MetricsService/Export`), default port 4317.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with a binary protobuf body, default port 4318.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(text: &str) -> Option<Protocol> {
        match text.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// Compression of request bodies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

impl Compression {
    fn parse(text: &str) -> Option<Compression> {
        match text.trim() {
            "gzip" => Some(Compression::Gzip),
            "none" => Some(Compression::None),
            _ => None,
        }
    }
}

/// Pushes OTLP to a collector or a TSDB. Every field may be left out. The connection fields
/// (`protocol`, `endpoint`, `headers`, `compression`, `timeout`, `tls`) then fall back to
/// `OTEL_EXPORTER_OTLP_METRICS_<X>`, then `OTEL_EXPORTER_OTLP_<X>`, then their default, as the
/// OpenTelemetry specification orders them; the others go straight to their default.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// `grpc` or `http/protobuf`. Env: `PROTOCOL`. Default `grpc`.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Where to send. gRPC: `http://host:4317` (plaintext), `https://host:4317` (TLS), or
    /// `host:4317` (TLS unless `tls.insecure`). HTTP/protobuf: the full URL of the metrics
    /// endpoint, used as given (`http://host:8428/opentelemetry/v1/metrics`). Env: `ENDPOINT`;
    /// only a base URL from `OTEL_EXPORTER_OTLP_ENDPOINT` gets `/v1/metrics` appended.
    /// Default `http://localhost:4317` (gRPC), `http://localhost:4318/v1/metrics` (HTTP).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Extra request headers (gRPC metadata), e.g. `authorization: Bearer ...`. Env: `HEADERS`
    /// as `k=v,k2=v2`, URL-decoded. When given here, the env variables are not consulted.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// `gzip` or `none`. Env: `COMPRESSION`. Default `gzip`: every common receiver takes it
    /// on gRPC and HTTP (zstd is not accepted by rotel's gRPC receiver nor documented by
    /// VictoriaMetrics' OTLP endpoint).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// The gzip level, 1 (fastest) to 9 (smallest), for both protocols. Default 1: it costs
    /// a fraction of level 6's CPU for more bytes on the wire (`examples/export_cost.rs`
    /// measures both; the numbers are in docs/performance.md).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// Time allowed for one request, connection included (`10s`, `500ms`). Env: `TIMEOUT` in
    /// milliseconds. Default `10s`.
    #[serde(default, deserialize_with = "crate::config::duration::deserialize_option")]
    pub timeout: Option<Duration>,
    /// TLS settings; TLS itself is chosen by the endpoint's scheme (see `endpoint`).
    // Boxed: rarely set, and it would make the config enum of all exporters large.
    #[serde(default)]
    pub tls: Box<TlsConfig>,
    /// Most data points in one request. A request also stays under gRPC's 4 MiB default
    /// message limit whatever this says. Default 8192.
    #[serde(default = "default_max_batch_points")]
    pub max_batch_points: usize,
    /// Where batches wait while the receiver is down or slow.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Backoff between attempts at the batch at the head of the queue.
    #[serde(default)]
    pub retry: RetryConfig,
}

impl Default for OtlpExporterConfig {
    /// The same as an empty mapping in YAML.
    fn default() -> Self {
        OtlpExporterConfig {
            protocol: None,
            endpoint: None,
            headers: None,
            compression: None,
            compression_level: default_compression_level(),
            timeout: None,
            tls: Box::default(),
            max_batch_points: default_max_batch_points(),
            queue: QueueConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

/// TLS files are PEM. The server certificate is always verified when TLS is used.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) to verify the server with, instead of the system's roots.
    /// Env: `CERTIFICATE`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS; needs `key_file`. Env: `CLIENT_CERTIFICATE`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key for mutual TLS; needs `cert_file`. Env: `CLIENT_KEY`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Only for a gRPC endpoint written without a scheme (`host:4317`): `true` sends plaintext,
    /// `false` uses TLS. An `http://` endpoint is always plaintext and an `https://` one always
    /// TLS with a verified certificate; `insecure: true` with `https://` is a config error,
    /// never a way to skip verification. Env: `INSECURE` (`true`/`false`). Default `false`.
    #[serde(default)]
    pub insecure: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Bound on queued batches (encoded bytes as queued: gzipped, about 9x smaller, when
    /// `compression` is gzip); when full, the oldest batches are evicted.
    /// Default 67108864 (64 MiB).
    #[serde(default = "default_queue_max_bytes")]
    pub max_bytes: u64,
    /// With a directory, the queue lives on disk there (one directory per exporter instance)
    /// and survives a crash or restart: delivery is at least once and in order. Without one,
    /// the queue is in memory and lost on exit.
    #[serde(default)]
    pub directory: Option<PathBuf>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { max_bytes: default_queue_max_bytes(), directory: None }
    }
}

/// How the delay before the next attempt is drawn.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, min(max_interval, initial_interval * multiplier^n)]` ("full jitter").
    Full,
    /// Uniform in `[initial_interval, min(max_interval, previous * multiplier)]`.
    Decorrelated,
    /// The exponential delay itself, capped at `max_interval`.
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff delay. Default `1s`.
    #[serde(default = "default_initial_interval", deserialize_with = "crate::config::duration::deserialize")]
    pub initial_interval: Duration,
    /// Cap on the backoff delay. Default `30s`.
    #[serde(default = "default_max_interval", deserialize_with = "crate::config::duration::deserialize")]
    pub max_interval: Duration,
    /// Cap on a delay the receiver asks for (`Retry-After`, gRPC `RetryInfo`): a receiver
    /// that says "come back tomorrow" must not stop delivery while the queue evicts. A longer
    /// request is honoured up to this, then the batch is tried again. Default: `max_interval`.
    #[serde(default, deserialize_with = "crate::config::duration::deserialize_option")]
    pub max_requested_delay: Option<Duration>,
    /// Growth of the delay per attempt, at least 1. Default 2.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// `full`, `decorrelated` or `none`. Default `full`.
    #[serde(default = "default_jitter")]
    pub jitter: Jitter,
}

impl RetryConfig {
    /// The longest receiver-requested delay that is honoured as asked.
    pub fn requested_delay_cap(&self) -> Duration {
        self.max_requested_delay.unwrap_or(self.max_interval)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_requested_delay: None,
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

fn default_compression_level() -> u32 {
    1
}

fn default_max_batch_points() -> usize {
    crate::exporters::otlp::batcher::DEFAULT_MAX_POINTS
}
fn default_queue_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_initial_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> Jitter {
    Jitter::Full
}
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A problem found in the configuration: key path (relative to the exporter) and reason.
pub type ConfigProblem = (String, String);

/// How the transport talks to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    Plaintext,
    /// TLS; `ca_file` replaces the system roots when set.
    Tls {
        ca_file: Option<PathBuf>,
        client: Option<(PathBuf, PathBuf)>,
    },
}

/// The configuration after the env fallback: every value known. Its `Debug` shows header
/// names but not their values, and the endpoint without its `user:password@`.
#[derive(Clone, PartialEq)]
pub struct ResolvedConfig {
    pub protocol: Protocol,
    /// gRPC: `http://` or `https://` URI of the server. HTTP: the full request URL.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub compression: Compression,
    /// The gzip level, 1..=9 (validated).
    pub compression_level: u32,
    pub timeout: Duration,
    pub security: Security,
    pub max_batch_points: usize,
    pub queue: QueueConfig,
    pub retry: RetryConfig,
}

impl std::fmt::Debug for ResolvedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedConfig")
            .field("protocol", &self.protocol)
            .field("endpoint", &redact_url(&self.endpoint))
            .field("headers", &RedactedHeaders(self.headers.iter().map(|(k, _)| k.as_str())))
            .field("compression", &self.compression)
            .field("compression_level", &self.compression_level)
            .field("timeout", &self.timeout)
            .field("security", &self.security)
            .field("max_batch_points", &self.max_batch_points)
            .field("queue", &self.queue)
            .field("retry", &self.retry)
            .finish()
    }
}

impl std::fmt::Debug for OtlpExporterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporterConfig")
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("headers", &self.headers.as_ref().map(|h| RedactedHeaders(h.keys().map(String::as_str))))
            .field("compression", &self.compression)
            .field("compression_level", &self.compression_level)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("max_batch_points", &self.max_batch_points)
            .field("queue", &self.queue)
            .field("retry", &self.retry)
            .finish()
    }
}

impl OtlpExporterConfig {
    /// Checks what can be checked without the environment. Key paths are relative to the
    /// exporter's own key (`endpoint`, `tls.cert_file`, `retry.multiplier`, ...).
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        if let Some(endpoint) = &self.endpoint {
            if let Err(reason) = check_endpoint(endpoint, self.protocol.unwrap_or(Protocol::Grpc)) {
                problems.push(("endpoint".to_owned(), reason));
            }
            if self.tls.insecure == Some(true) && endpoint.starts_with("https://") {
                problems.push((
                    "tls.insecure".to_owned(),
                    "`insecure: true` contradicts an https:// endpoint; use http:// for plaintext".to_owned(),
                ));
            }
            if endpoint.starts_with("http://")
                && (self.tls.ca_file.is_some() || self.tls.cert_file.is_some() || self.tls.key_file.is_some())
            {
                problems.push((
                    "tls".to_owned(),
                    "TLS files are set but the http:// endpoint is plaintext; use https://".to_owned(),
                ));
            }
        }
        if let Some(headers) = &self.headers {
            for (k, v) in headers {
                if let Err(reason) = check_header(k, v) {
                    problems.push((format!("headers.{k}"), reason));
                }
            }
        }
        if self.timeout == Some(Duration::ZERO) {
            problems.push(("timeout".to_owned(), "must be more than zero".to_owned()));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push((
                "tls".to_owned(),
                "cert_file and key_file go together (mutual TLS needs both)".to_owned(),
            ));
        }
        if !(1..=9).contains(&self.compression_level) {
            problems.push((
                "compression_level".to_owned(),
                format!("{} is not a gzip level (1 to 9)", self.compression_level),
            ));
        }
        if self.max_batch_points == 0 {
            problems.push(("max_batch_points".to_owned(), "must be at least 1".to_owned()));
        }
        if self.queue.max_bytes < crate::exporters::otlp::batcher::DEFAULT_MAX_BYTES as u64 {
            problems.push((
                "queue.max_bytes".to_owned(),
                format!(
                    "must hold at least one full batch ({} bytes)",
                    crate::exporters::otlp::batcher::DEFAULT_MAX_BYTES
                ),
            ));
        }
        if let Some(dir) = &self.queue.directory {
            if dir.as_os_str().is_empty() {
                problems.push(("queue.directory".to_owned(), "must not be empty".to_owned()));
            }
        }
        let r = &self.retry;
        if r.initial_interval.is_zero() {
            problems.push(("retry.initial_interval".to_owned(), "must be more than zero".to_owned()));
        }
        if r.max_interval < r.initial_interval {
            problems.push((
                "retry.max_interval".to_owned(),
                "must be at least retry.initial_interval".to_owned(),
            ));
        }
        if r.max_requested_delay == Some(Duration::ZERO) {
            problems.push(("retry.max_requested_delay".to_owned(), "must be more than zero".to_owned()));
        }
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            problems.push(("retry.multiplier".to_owned(), "must be a number of at least 1".to_owned()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Applies the env fallback (`env` is `std::env::var(..).ok()` in the agent) and the
    /// defaults, and validates the result.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedConfig, Vec<ConfigProblem>> {
        self.validate()?;
        let mut problems = Vec::new();
        let metrics_var = |k: &str| env(&format!("{ENV_PREFIX_METRICS}{k}")).filter(|v| !v.trim().is_empty());
        let generic_var = |k: &str| env(&format!("{ENV_PREFIX_GENERIC}{k}")).filter(|v| !v.trim().is_empty());
        let lookup = |k: &str| {
            metrics_var(k)
                .map(|v| (format!("{ENV_PREFIX_METRICS}{k}"), v))
                .or_else(|| generic_var(k).map(|v| (format!("{ENV_PREFIX_GENERIC}{k}"), v)))
        };

        let protocol = match (self.protocol, lookup(ENV_PROTOCOL)) {
            (Some(p), _) => p,
            (None, Some((var, v))) => Protocol::parse(&v).unwrap_or_else(|| {
                problems.push((var, format!("`{v}` is not a supported protocol (grpc, http/protobuf)")));
                Protocol::Grpc
            }),
            (None, None) => Protocol::Grpc,
        };

        let endpoint = if let Some(e) = &self.endpoint {
            e.clone()
        } else if let Some(e) = metrics_var(ENV_ENDPOINT) {
            e
        } else if let Some(base) = generic_var(ENV_ENDPOINT) {
            match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => {
                    format!("{}/{HTTP_METRICS_PATH}", base.trim_end_matches('/'))
                }
            }
        } else {
            match protocol {
                Protocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_owned(),
                Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT.to_owned(),
            }
        };
        let endpoint = endpoint.trim().to_owned();
        if let Err(reason) = check_endpoint(&endpoint, protocol) {
            problems.push(("endpoint".to_owned(), reason));
        }

        let headers: Vec<(String, String)> = match (&self.headers, lookup(ENV_HEADERS)) {
            (Some(h), _) => h.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            (None, Some((var, text))) => match parse_env_headers(&text) {
                Ok(h) => h,
                Err(reason) => {
                    problems.push((var, reason));
                    Vec::new()
                }
            },
            (None, None) => Vec::new(),
        };
        for (k, v) in &headers {
            if let Err(reason) = check_header(k, v) {
                problems.push((format!("headers.{k}"), reason));
            }
        }

        let compression = match (self.compression, lookup(ENV_COMPRESSION)) {
            (Some(c), _) => c,
            (None, Some((var, v))) => Compression::parse(&v).unwrap_or_else(|| {
                problems.push((var, format!("`{v}` is not a supported compression (gzip, none)")));
                Compression::Gzip
            }),
            (None, None) => Compression::Gzip,
        };

        let timeout = match (self.timeout, lookup(ENV_TIMEOUT)) {
            (Some(t), _) => t,
            (None, Some((var, v))) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    problems.push((var, format!("`{v}` is not a timeout in milliseconds")));
                    default_timeout()
                }
            },
            (None, None) => default_timeout(),
        };

        let path_of = |configured: &Option<PathBuf>, key: &str| {
            configured.clone().or_else(|| lookup(key).map(|(_, v)| PathBuf::from(v.trim())))
        };
        let ca_file = path_of(&self.tls.ca_file, ENV_CERTIFICATE);
        let cert_file = path_of(&self.tls.cert_file, ENV_CLIENT_CERTIFICATE);
        let key_file = path_of(&self.tls.key_file, ENV_CLIENT_KEY);
        let insecure = match (self.tls.insecure, lookup(ENV_INSECURE)) {
            (Some(b), _) => b,
            (None, Some((var, v))) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    problems.push((var, format!("`{v}` is not true or false")));
                    false
                }
            },
            (None, None) => false,
        };
        let client = match (cert_file, key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                problems.push(("tls".to_owned(), "cert_file and key_file go together".to_owned()));
                None
            }
        };

        let (endpoint, security) = if let Some(rest) = endpoint.strip_prefix("https://") {
            if insecure {
                problems.push((
                    "tls.insecure".to_owned(),
                    "`insecure: true` contradicts an https:// endpoint".to_owned(),
                ));
            }
            (format!("https://{rest}"), Security::Tls { ca_file, client })
        } else if endpoint.starts_with("http://") {
            // The env may carry a CA for other signals' https endpoints; only configured
            // files contradict a plaintext endpoint, and validate() reports those.
            (endpoint, Security::Plaintext)
        } else if insecure {
            (format!("http://{endpoint}"), Security::Plaintext)
        } else {
            (format!("https://{endpoint}"), Security::Tls { ca_file, client })
        };

        if problems.is_empty() {
            Ok(ResolvedConfig {
                protocol,
                endpoint,
                headers,
                compression,
                compression_level: self.compression_level,
                timeout,
                security,
                max_batch_points: self.max_batch_points,
                queue: self.queue.clone(),
                retry: self.retry.clone(),
            })
        } else {
            Err(problems)
        }
    }
}

fn check_endpoint(endpoint: &str, protocol: Protocol) -> Result<(), String> {
    let e = endpoint.trim();
    let (scheme, rest) = match e.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, e),
    };
    match (scheme, protocol) {
        (Some("http") | Some("https"), _) => {}
        (Some(s), _) => return Err(format!("scheme `{s}` is not http or https")),
        (None, Protocol::HttpProtobuf) => {
            return Err("an http/protobuf endpoint is a full URL (http://host:4318/v1/metrics)".to_owned())
        }
        (None, Protocol::Grpc) => {}
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("`{}` has no host", redact_url(e)));
    }
    if e.parse::<http::Uri>().is_err() {
        return Err(format!("`{}` is not a valid URL", redact_url(e)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn yaml(text: &str) -> OtlpExporterConfig {
        serde_saphyr::from_str(text).expect("test config parses")
    }

    #[test]
    fn defaults_without_config_or_env() {
        let r = OtlpExporterConfig::default().resolve(env_of(&[])).unwrap();
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.endpoint, DEFAULT_GRPC_ENDPOINT);
        assert_eq!(r.compression, Compression::Gzip);
        assert_eq!(r.compression_level, 1);
        assert_eq!(r.timeout, Duration::from_secs(10));
        assert_eq!(r.security, Security::Plaintext);
        assert_eq!(r.max_batch_points, 8192);
        assert_eq!(r.queue.max_bytes, 64 * 1024 * 1024);

        let http = yaml("protocol: http/protobuf").resolve(env_of(&[])).unwrap();
        assert_eq!(http.endpoint, DEFAULT_HTTP_ENDPOINT);
    }

    #[test]
    fn yaml_fields_parse_with_human_durations() {
        let c = yaml(
            "protocol: http/protobuf\nendpoint: https://vm:8428/opentelemetry/v1/metrics\n\
             headers: {authorization: Bearer x}\ncompression: none\ncompression_level: 6\ntimeout: 2500ms\n\
             tls: {ca_file: /etc/ca.pem}\nmax_batch_points: 100\n\
             queue: {max_bytes: 10000000, directory: /var/lib/podometer/q}\n\
             retry: {initial_interval: 200ms, max_interval: 5s, multiplier: 1.5, jitter: decorrelated}",
        );
        let r = c.resolve(env_of(&[])).unwrap();
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.endpoint, "https://vm:8428/opentelemetry/v1/metrics");
        assert_eq!(r.headers, vec![("authorization".to_owned(), "Bearer x".to_owned())]);
        assert_eq!(r.compression, Compression::None);
        assert_eq!(r.compression_level, 6);
        assert_eq!(r.timeout, Duration::from_millis(2500));
        assert_eq!(r.security, Security::Tls { ca_file: Some("/etc/ca.pem".into()), client: None });
        assert_eq!(r.queue.directory, Some(PathBuf::from("/var/lib/podometer/q")));
        assert_eq!(r.retry.initial_interval, Duration::from_millis(200));
        assert_eq!(r.retry.jitter, Jitter::Decorrelated);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_saphyr::from_str::<OtlpExporterConfig>("endpoint: x\nendpont: y").is_err());
        assert!(serde_saphyr::from_str::<OtlpExporterConfig>("retry: {jiter: full}").is_err());
        assert!(serde_saphyr::from_str::<OtlpExporterConfig>("protocol: http/json").is_err());
    }

    #[test]
    fn metrics_env_wins_over_generic_env_and_config_wins_over_both() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,x-tenant = a%20b"),
        ]);
        let r = OtlpExporterConfig::default().resolve(&env).unwrap();
        assert_eq!(r.endpoint, "http://metrics:4317");
        assert_eq!(r.timeout, Duration::from_millis(1500));
        assert_eq!(r.compression, Compression::None);
        assert_eq!(
            r.headers,
            vec![("api-key".to_owned(), "s=cret".to_owned()), ("x-tenant".to_owned(), "a b".to_owned())]
        );
        let configured = yaml("endpoint: http://configured:4317\ntimeout: 3s\nheaders: {a: b}");
        let r = configured.resolve(&env).unwrap();
        assert_eq!(r.endpoint, "http://configured:4317");
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(r.headers, vec![("a".to_owned(), "b".to_owned())]);
    }

    #[test]
    fn only_a_generic_base_url_gets_the_metrics_path_for_http() {
        let base = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318/")]);
        let http = yaml("protocol: http/protobuf");
        assert_eq!(http.resolve(&base).unwrap().endpoint, "http://col:4318/v1/metrics");
        let full = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://vm:8428/opentelemetry/v1/metrics"),
        ]);
        assert_eq!(http.resolve(&full).unwrap().endpoint, "http://vm:8428/opentelemetry/v1/metrics");
        let configured = yaml("protocol: http/protobuf\nendpoint: http://vm:8428/custom");
        assert_eq!(configured.resolve(&base).unwrap().endpoint, "http://vm:8428/custom");
        let env_protocol = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://col:4318"),
        ]);
        let r = OtlpExporterConfig::default().resolve(&env_protocol).unwrap();
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.endpoint, "https://col:4318/v1/metrics");
    }

    #[test]
    fn tls_follows_the_scheme_and_insecure_only_decides_for_bare_grpc_endpoints() {
        let r = yaml("endpoint: col:4317").resolve(env_of(&[])).unwrap();
        assert_eq!(r.endpoint, "https://col:4317");
        assert!(matches!(r.security, Security::Tls { .. }));
        let r = yaml("endpoint: col:4317\ntls: {insecure: true}").resolve(env_of(&[])).unwrap();
        assert_eq!((r.endpoint.as_str(), r.security), ("http://col:4317", Security::Plaintext));
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/k.pem"),
        ]);
        let r = yaml("endpoint: https://col:4317").resolve(env).unwrap();
        assert_eq!(
            r.security,
            Security::Tls {
                ca_file: Some("/ca.pem".into()),
                client: Some(("/c.pem".into(), "/k.pem".into()))
            }
        );
    }

    #[test]
    fn validate_names_each_bad_key() {
        let c = yaml(
            "endpoint: ftp://x\nmax_batch_points: 0\ntls: {cert_file: /c.pem}\ncompression_level: 10\n\
             queue: {max_bytes: 10}\nretry: {multiplier: 0.5, initial_interval: 5s, max_interval: 1s}",
        );
        let problems = c.validate().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "endpoint",
            "compression_level",
            "max_batch_points",
            "tls",
            "queue.max_bytes",
            "retry.multiplier",
            "retry.max_interval",
        ] {
            assert!(keys.contains(&key), "{key} missing from {problems:?}");
        }
        let insecure_https = yaml("endpoint: https://x:4317\ntls: {insecure: true}").validate().unwrap_err();
        assert_eq!(insecure_https[0].0, "tls.insecure");
        let files_on_http = yaml("endpoint: http://x:4317\ntls: {ca_file: /ca.pem}").validate().unwrap_err();
        assert_eq!(files_on_http[0].0, "tls");
        let bare_http = yaml("protocol: http/protobuf\nendpoint: x:4318").validate().unwrap_err();
        assert_eq!(bare_http[0].0, "endpoint");
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ]);
        let problems = OtlpExporterConfig::default().resolve(env).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"), "{problems:?}");
        assert!(keys.contains(&"OTEL_EXPORTER_OTLP_PROTOCOL"), "{problems:?}");
        assert!(keys.contains(&"OTEL_EXPORTER_OTLP_HEADERS"), "{problems:?}");
    }

    #[test]
    fn secrets_are_not_in_debug_output_or_header_errors() {
        let c = yaml("endpoint: https://agent:pa55word@col:4317\nheaders: {authorization: Bearer t0psecret}");
        let r = c.resolve(env_of(&[])).unwrap();
        for text in [format!("{r:?}"), format!("{c:?}")] {
            assert!(!text.contains("pa55word") && !text.contains("t0psecret"), "{text}");
            assert!(text.contains("authorization") && text.contains("agent:***@col:4317"), "{text}");
        }
        for bad in ["authorization%3DBearer t0psecret", "k=t0psecret%zz", "=t0psecret", "a=b,k=t0psecret%C3"]
        {
            let env = env_of(&[("OTEL_EXPORTER_OTLP_HEADERS", bad)]);
            let problems = OtlpExporterConfig::default().resolve(env).unwrap_err();
            let text = format!("{problems:?}");
            assert!(!text.contains("t0psecret"), "{bad}: {text}");
            assert!(text.contains("entry"), "{bad}: names the entry: {text}");
        }
        let bad_value = yaml("headers: {x-key: \"t0psecret\\u0001\"}").validate().unwrap_err();
        assert!(!format!("{bad_value:?}").contains("t0psecret"), "{bad_value:?}");
        assert_eq!(bad_value[0].0, "headers.x-key");
        assert_eq!(redact_url("http://u:p@h:1/a@b"), "http://u:***@h:1/a@b");
        assert_eq!(redact_url("h:4317"), "h:4317");
        assert_eq!(redact_url("http://h:4318/v1/metrics?a=b@c"), "http://h:4318/v1/metrics?a=b@c");
        assert!(
            check_header("x-trace-bin", "AAAA").is_err(),
            "binary metadata is refused for both protocols"
        );
    }

    #[test]
    fn default_is_an_empty_mapping() {
        assert_eq!(OtlpExporterConfig::default(), yaml("{}"));
    }
}
