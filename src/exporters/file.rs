//! `file`: OTLP/JSON lines, one request per sweep, to stdout or appended to a file, in the
//! format the OpenTelemetry Collector's file exporter writes.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use super::{BoxError, BoxFuture, Exporter};
use crate::encode;
use crate::model::Sweep;

/// Writes OTLP/JSON lines.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileExporterConfig {
    /// Where to write: `-` for standard output, else a file that is created if missing and
    /// appended to.
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

fn default_path() -> PathBuf {
    PathBuf::from("-")
}

impl Default for FileExporterConfig {
    fn default() -> Self {
        FileExporterConfig { path: default_path() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileExporterError {
    #[error("cannot open {path} for appending: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

pub struct FileExporter {
    path: PathBuf,
    out: Box<dyn Write + Send>,
}

impl FileExporter {
    pub fn new(config: &FileExporterConfig) -> Result<FileExporter, FileExporterError> {
        let out: Box<dyn Write + Send> = if config.path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)
                .map_err(|source| FileExporterError::Open { path: config.path.clone(), source })?;
            Box::new(io::BufWriter::new(file))
        };
        Ok(FileExporter { path: config.path.clone(), out })
    }

    fn write_sweep(&mut self, sweep: &Sweep) -> Result<(), FileExporterError> {
        let line = encode::to_json_line(&encode::encode_sweep(sweep));
        // A sweep is written whole and flushed so that a reader tailing the file never sees
        // half a line, and nothing sits in a buffer when the agent is killed.
        let write = |out: &mut Box<dyn Write + Send>| -> io::Result<()> {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            out.flush()
        };
        write(&mut self.out).map_err(|source| FileExporterError::Write { path: self.path.clone(), source })
    }
}

impl Exporter for FileExporter {
    fn export(&mut self, sweep: Arc<Sweep>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move { self.write_sweep(&sweep).map_err(Into::into) })
    }

    fn shutdown(&mut self, _deadline: Instant) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.out
                .flush()
                .map_err(|source| FileExporterError::Write { path: self.path.clone(), source }.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, ResourceId, Value};
    use crate::semconv;
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn appends_one_json_line_per_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut exporter = FileExporter::new(&FileExporterConfig { path: path.clone() }).unwrap();
        for i in 0..2u64 {
            let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(i));
            sweep
                .resource_mut(ResourceId::Container("c".into()), Vec::new)
                .points
                .push(Point::new(&semconv::CONTAINER.pids_count, Value::Int(i as i64 + 1)));
            exporter.export(Arc::new(sweep)).await.unwrap();
        }
        exporter.shutdown(Instant::now()).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        let dp = &second["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"][0];
        assert_eq!(dp["asInt"], "2");
    }

    #[test]
    fn unwritable_path_is_an_error_naming_the_path() {
        let err = FileExporter::new(&FileExporterConfig { path: "/nonexistent-dir/x.jsonl".into() })
            .err()
            .expect("opening under a missing directory fails");
        assert!(err.to_string().contains("/nonexistent-dir/x.jsonl"), "{err}");
    }
}
