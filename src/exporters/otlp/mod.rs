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

impl OtlpExporterConfig {
    /// Problems as (key path below the exporter, reason).
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("otlp exporter is not merged yet")]
    NotYet,
}

/// Placeholder until the OTLP exporter lands.
pub struct OtlpExporter;

impl OtlpExporter {
    pub fn new(_name: &str, _config: &OtlpExporterConfig) -> Result<OtlpExporter, OtlpError> {
        Err(OtlpError::NotYet)
    }
}

impl crate::exporters::Exporter for OtlpExporter {
    fn export(
        &mut self,
        _sweep: std::sync::Arc<crate::model::Sweep>,
    ) -> crate::exporters::BoxFuture<'_, Result<(), crate::exporters::BoxError>> {
        Box::pin(async { Err(OtlpError::NotYet.into()) })
    }
    fn shutdown(
        &mut self,
        _deadline: std::time::Instant,
    ) -> crate::exporters::BoxFuture<'_, Result<(), crate::exporters::BoxError>> {
        Box::pin(async { Ok(()) })
    }
}
