//! Wires components from the config (the one place where concrete types meet), sweeps, and
//! runs the agent until a signal, shutting down in stages: last sweep, then exporters drain.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{Config, ExporterConfig, ProcessorConfig, SourceConfig};
use crate::exporters::file::FileExporter;
use crate::exporters::otlp::OtlpExporter;
use crate::exporters::Exporter;
use crate::model::{AttrValue, StartTimes, Sweep, SweepContext};
use crate::processors::filter::Filter;
use crate::processors::metadata::k8s_api::K8sApiProcessor;
use crate::processors::metadata::Readiness;
use crate::processors::Processor;
use crate::semconv;
use crate::sources::cgroups::CgroupSource;
use crate::sources::netns::NetnsSource;
use crate::sources::Source;
use crate::telemetry::Telemetry;
use crate::warn_limited;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot start {kind} `{id}`: {source}")]
    Build { kind: &'static str, id: String, source: Box<dyn std::error::Error + Send + Sync> },
}

fn build_error(
    kind: &'static str,
    id: &str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> PipelineError {
    PipelineError::Build { kind, id: id.to_owned(), source: source.into() }
}

/// Sources, start times and processors of one pipeline, and the exporters it feeds.
pub struct Pipeline {
    pub name: String,
    sources: Vec<(String, Box<dyn Source>)>,
    processors: Vec<Box<dyn Processor>>,
    start_times: StartTimes,
    resource_attributes: Vec<(&'static str, AttrValue)>,
    pub exporter_ids: Vec<String>,
}

impl Pipeline {
    /// Waits, before the first sweep, until every processor with a background cache has
    /// filled it once or its own wait time has passed, so a restart does not export nameless
    /// series. Returns the processors' readiness flags (for `/readyz`).
    pub fn wait_for_processors(&self) -> Vec<Readiness> {
        let started = Instant::now();
        let mut flags = Vec::new();
        for processor in &self.processors {
            if let Some((readiness, wait)) = processor.readiness() {
                if !readiness.wait_until(started + wait) {
                    warn!(pipeline = %self.name, waited = %humantime::format_duration(wait), "A metadata processor has not synced yet; exporting with ids until it does.");
                }
                flags.push(readiness);
            }
        }
        flags
    }

    /// Runs every source and processor once. A failing source is logged and the others still run.
    pub fn sweep(&mut self, time: SystemTime) -> Sweep {
        let mut ctx = SweepContext::new(time);
        let mut sweep = Sweep::new(time);
        for (id, source) in &mut self.sources {
            if let Err(error) = source.collect(&mut ctx, &mut sweep) {
                Telemetry::inc(&Telemetry::global().source_errors);
                warn_limited!("source-failed", source = %id, %error, "A source produced nothing this sweep.");
            }
        }
        for resource in &mut sweep.resources {
            for (key, value) in &self.resource_attributes {
                resource.set_attribute(key, value.clone());
            }
        }
        self.start_times.apply(&mut sweep);
        for processor in &mut self.processors {
            processor.process(&ctx, &mut sweep);
        }
        sweep
    }
}

/// The kernel's hostname, read the way `hostname` does.
fn kernel_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Builds every pipeline's sources and processors. Exporters are built separately because
/// `collect` needs none and they may be shared by pipelines.
pub fn build_pipelines(config: &Config) -> Result<Vec<Pipeline>, PipelineError> {
    let mut resource_attributes: Vec<(&'static str, AttrValue)> = Vec::new();
    if let Some(host) = config.host_name.clone().or_else(kernel_hostname) {
        resource_attributes.push((semconv::HOST_NAME, host.into()));
    }
    if let Some(node) = config.node_name.clone().filter(|n| !n.is_empty()) {
        resource_attributes.push((semconv::K8S_NODE_NAME, node.into()));
    }
    let mut pipelines = Vec::new();
    for (name, (_, pc)) in &config.pipelines.value.entries {
        let mut sources: Vec<(String, Box<dyn Source>)> = Vec::new();
        for id in &pc.sources {
            let id = id.value.as_str();
            let source: Box<dyn Source> = match config.sources.get(id) {
                Some(SourceConfig::Cgroups(c)) => {
                    Box::new(CgroupSource::new(c).map_err(|e| build_error("source", id, e))?)
                }
                Some(SourceConfig::Netns(c)) => {
                    Box::new(NetnsSource::new(c).map_err(|e| build_error("source", id, e))?)
                }
                None => unreachable!("validated: pipelines only name defined sources"),
            };
            sources.push((id.to_owned(), source));
        }
        let mut processors: Vec<Box<dyn Processor>> = Vec::new();
        for id in &pc.processors {
            match config.processors.get(&id.value) {
                Some(ProcessorConfig::Filter(c)) => processors.push(Box::new(Filter::new(c.clone()))),
                Some(ProcessorConfig::K8sApi(c)) => processors.push(Box::new(
                    K8sApiProcessor::new(c, config.node_name.as_deref())
                        .map_err(|e| build_error("processor", &id.value, e))?,
                )),
                None => unreachable!("validated: pipelines only name defined processors"),
            }
        }
        pipelines.push(Pipeline {
            name: name.clone(),
            sources,
            processors,
            start_times: StartTimes::new(),
            resource_attributes: resource_attributes.clone(),
            exporter_ids: pc.exporters.iter().map(|s| s.value.clone()).collect(),
        });
    }
    Ok(pipelines)
}

/// Builds the exporters every pipeline uses, each once. Must run inside the tokio runtime.
pub fn build_exporters(config: &Config) -> Result<BTreeMap<String, Box<dyn Exporter>>, PipelineError> {
    let mut used: Vec<&str> = Vec::new();
    for (_, pc) in config.pipelines.value.entries.values() {
        used.extend(pc.exporters.iter().map(|s| s.value.as_str()));
    }
    let mut exporters: BTreeMap<String, Box<dyn Exporter>> = BTreeMap::new();
    for id in used {
        if exporters.contains_key(id) {
            continue;
        }
        let exporter: Box<dyn Exporter> = match config.exporters.get(id) {
            Some(ExporterConfig::File(c)) => {
                Box::new(FileExporter::new(c).map_err(|e| build_error("exporter", id, e))?)
            }
            Some(ExporterConfig::Otlp(c)) => {
                Box::new(OtlpExporter::new(id, c).map_err(|e| build_error("exporter", id, e))?)
            }
            None => unreachable!("validated: pipelines only name defined exporters"),
        };
        exporters.insert(id.to_owned(), exporter);
    }
    Ok(exporters)
}

/// Sweeps every pipeline once and merges the results (for `collect`).
pub fn sweep_all(pipelines: &mut [Pipeline], time: SystemTime) -> Sweep {
    let mut merged = Sweep::new(time);
    for p in pipelines {
        merged.resources.extend(p.sweep(time).resources);
    }
    merged
}

/// How many sweeps may wait for one exporter before new ones are dropped for it. Exporters
/// queue internally, so a full channel means the exporter task itself is stuck.
const EXPORTER_CHANNEL_SWEEPS: usize = 4;

/// Runs until `stop` yields, then does one last sweep and lets every exporter flush within
/// `config.shutdown_timeout`.
pub async fn run(
    config: &Config,
    mut pipelines: Vec<Pipeline>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), PipelineError> {
    let exporters = build_exporters(config)?;
    let mut senders: BTreeMap<String, mpsc::Sender<Arc<Sweep>>> = BTreeMap::new();
    let mut tasks = Vec::new();
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None::<Instant>);
    for (id, mut exporter) in exporters {
        let (tx, mut rx) = mpsc::channel::<Arc<Sweep>>(EXPORTER_CHANNEL_SWEEPS);
        senders.insert(id.clone(), tx);
        let mut deadline_rx = deadline_rx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(sweep) = rx.recv().await {
                if let Err(error) = exporter.export(sweep).await {
                    warn_limited!("export-failed", exporter = %id, %error, "An exporter could not take a sweep.");
                }
            }
            // The sweeper is gone: flush until the deadline the shutdown set.
            let deadline = loop {
                if let Some(d) = *deadline_rx.borrow_and_update() {
                    break d;
                }
                if deadline_rx.changed().await.is_err() {
                    break Instant::now();
                }
            };
            if let Err(error) = exporter.shutdown(deadline).await {
                warn!(exporter = %id, %error, "An exporter did not flush everything before shutdown.");
            }
            debug!(exporter = %id, "Exporter stopped.");
        }));
    }

    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let interval = config.interval;
    let stats_every = config.stats_log_interval;
    let sweeper = std::thread::Builder::new()
        .name("podometer-sweep".into())
        .spawn(move || sweep_loop(&mut pipelines, &senders, interval, stats_every, stop_rx))
        .expect("spawning the sweep thread");

    stop.await;
    info!("Stopping: one last sweep, then flushing exporters.");
    let _ = stop_tx.send(());
    let deadline = Instant::now() + config.shutdown_timeout;
    // The sweeper finishes its last sweep and drops the senders, which ends the exporter loops.
    let _ = tokio::task::spawn_blocking(move || sweeper.join()).await;
    let _ = deadline_tx.send(Some(deadline));
    let grace = config.shutdown_timeout + Duration::from_secs(1);
    for task in tasks {
        let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        if tokio::time::timeout(remaining.min(grace), task).await.is_err() {
            warn!("An exporter did not stop within shutdown_timeout; leaving it behind.");
        }
    }
    log_stats();
    Ok(())
}

fn sweep_loop(
    pipelines: &mut [Pipeline],
    senders: &BTreeMap<String, mpsc::Sender<Arc<Sweep>>>,
    interval: Duration,
    stats_every: Duration,
    stop: std_mpsc::Receiver<()>,
) {
    let telemetry = Telemetry::global();
    for pipeline in pipelines.iter() {
        pipeline.wait_for_processors();
    }
    let mut next = Instant::now();
    let mut next_stats = Instant::now() + stats_every;
    loop {
        let stopping = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => true,
        };
        let started = Instant::now();
        let time = SystemTime::now();
        for pipeline in pipelines.iter_mut() {
            let sweep = Arc::new(pipeline.sweep(time));
            for id in &pipeline.exporter_ids {
                let Some(tx) = senders.get(id) else { continue };
                if tx.try_send(Arc::clone(&sweep)).is_err() {
                    Telemetry::inc(&telemetry.sweeps_dropped_by_exporter_backlog);
                    warn_limited!("exporter-backlog", exporter = %id, "An exporter is not keeping up; a sweep was dropped for it.");
                }
            }
        }
        Telemetry::inc(&telemetry.sweeps);
        telemetry.last_sweep_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if stopping {
            return;
        }
        if Instant::now() >= next_stats {
            log_stats();
            next_stats = Instant::now() + stats_every;
        }
        // Keep a fixed cadence; if a sweep overran, start the next one at once but do not burst.
        next += interval;
        if next < Instant::now() {
            next = Instant::now();
        }
    }
}

fn log_stats() {
    let stats = Telemetry::global().snapshot();
    let fields: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
    info!(stats = %fields.join(" "), "Agent counters.");
}
