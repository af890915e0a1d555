//! `file`: OTLP/JSON lines, one request per sweep, to stdout or appended to a file, in the
//! format the OpenTelemetry Collector's file exporter writes.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::oneshot;

use super::{BoxError, BoxFuture, Exporter};
use crate::exporters::otlp::encode;
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

/// The writes themselves happen on a thread of the exporter's own: a full disk, a stdout
/// nobody reads or a FIFO blocks that thread, never an async worker (the other exporters
/// keep delivering; this one stops taking sweeps, which the pipeline counts as dropped).
pub struct FileExporter {
    path: PathBuf,
    jobs: mpsc::SyncSender<Job>,
}

enum Job {
    /// One whole line, newline included; the result comes back when it is written and flushed.
    Write(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Flush(oneshot::Sender<io::Result<()>>),
}

impl FileExporter {
    pub fn new(config: &FileExporterConfig) -> Result<FileExporter, FileExporterError> {
        let mut out: Box<dyn Write + Send> = if config.path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)
                .map_err(|source| FileExporterError::Open { path: config.path.clone(), source })?;
            Box::new(io::BufWriter::new(file))
        };
        // One job at a time: export() waits for each write before taking the next sweep.
        let (jobs, rx) = mpsc::sync_channel::<Job>(1);
        std::thread::Builder::new()
            .name("podometer-file".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        // A sweep is written whole and flushed so that a reader tailing the
                        // file never sees half a line, and nothing sits in a buffer when the
                        // agent is killed.
                        Job::Write(line, done) => {
                            let _ = done.send(out.write_all(&line).and_then(|_| out.flush()));
                        }
                        Job::Flush(done) => {
                            let _ = done.send(out.flush());
                        }
                    }
                }
            })
            .map_err(|source| FileExporterError::Open { path: config.path.clone(), source })?;
        Ok(FileExporter { path: config.path.clone(), jobs })
    }

    /// Hands `job` to the writer thread without ever blocking the caller.
    async fn run(&self, job: Job, done: oneshot::Receiver<io::Result<()>>) -> Result<(), FileExporterError> {
        let error = |source| FileExporterError::Write { path: self.path.clone(), source };
        self.jobs.try_send(job).map_err(|e| {
            error(match e {
                mpsc::TrySendError::Full(_) => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the previous write has not finished (the reader or the disk is stuck)",
                ),
                mpsc::TrySendError::Disconnected(_) => io::Error::other("the writer thread is gone"),
            })
        })?;
        done.await.map_err(|_| error(io::Error::other("the writer thread is gone")))?.map_err(error)
    }
}

impl Exporter for FileExporter {
    fn export(&mut self, sweep: Arc<Sweep>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let mut line = encode::to_json_line(&encode::encode_sweep(&sweep)).into_bytes();
            line.push(b'\n');
            let (tx, rx) = oneshot::channel();
            self.run(Job::Write(line, tx), rx).await.map_err(Into::into)
        })
    }

    fn shutdown(&mut self, deadline: Instant) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            match tokio::time::timeout_at(deadline.into(), self.run(Job::Flush(tx), rx)).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(FileExporterError::Write {
                    path: self.path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        "still blocked writing at the shutdown deadline",
                    ),
                }
                .into()),
            }
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
        // A deadline of "now" raced the writer thread: on a loaded machine its two writes were
        // still under way and the shutdown gave up on them.
        exporter.shutdown(Instant::now() + Duration::from_secs(10)).await.unwrap();
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
