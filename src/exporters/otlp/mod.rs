//! `otlp`: OTLP over gRPC or HTTP/protobuf with batching, retry and a bounded queue.

use serde::Deserialize;

/// Pushes OTLP to a collector or a TSDB.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// Where to send. gRPC: `http://host:4317`; HTTP: the full URL of the metrics endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
}
