//! Wires components from the config (the one place where concrete types meet), sweeps, and
//! runs the agent until a signal, shutting down in stages: last sweep, then exporters drain.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::agent_counters::Telemetry;
use crate::config::{Config, ExporterConfig, ProcessorConfig, SourceConfig};
use crate::exporters::file::FileExporter;
use crate::exporters::otlp::config::redact_url;
use crate::exporters::otlp::OtlpExporter;
use crate::exporters::prometheus::PrometheusExporter;
use crate::exporters::Exporter;
use crate::health::{self, HealthError, HealthState, SweeperGuard};
use crate::model::{AttrValue, StartTimes, Sweep, SweepContext};
use crate::processors::filter::Filter;
use crate::processors::metadata::docker_api::DockerApi;
use crate::processors::metadata::k8s_api::K8sApiProcessor;
use crate::processors::metadata::runtime_files::RuntimeFiles;
use crate::processors::metadata::Readiness;
use crate::processors::Processor;
use crate::semconv;
use crate::sources::cgroups::CgroupSource;
use crate::sources::netns::NetnsSource;
use crate::sources::processes::{PodNetworkSource, ProcessesSource};
use crate::sources::Source;
use crate::warn_limited;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot start {kind} `{id}`: {source}")]
    Build { kind: &'static str, id: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("the sweep thread stopped: {0}")]
    SweeperStopped(String),
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
    /// `host.name`, `k8s.node.name`, the config's and `OTEL_RESOURCE_ATTRIBUTES`.
    common: crate::resource::Common,
    pub exporter_ids: Vec<String>,
    /// The cgroup layout the pipeline's cgroups source found, for the start-up line.
    pub cgroup_mode: Option<String>,
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
            self.common.apply(resource);
        }
        self.start_times.apply(&mut sweep);
        for processor in &mut self.processors {
            processor.process(&ctx, &mut sweep);
        }
        sweep
    }
}

/// Builds every pipeline's sources and processors. Exporters are built separately because
/// `collect` needs none and they may be shared by pipelines.
pub fn build_pipelines(config: &Config) -> Result<Vec<Pipeline>, PipelineError> {
    let common = crate::resource::Common::from_config(config);
    let mut pipelines = Vec::new();
    for (name, (_, pc)) in &config.pipelines.value.entries {
        let mut sources: Vec<(String, Box<dyn Source>)> = Vec::new();
        let mut cgroup_mode = None;
        for id in &pc.sources {
            let id = id.value.as_str();
            let source: Box<dyn Source> = match config.sources.get(id) {
                Some(SourceConfig::Cgroups(c)) => {
                    let source = CgroupSource::new(c).map_err(|e| build_error("source", id, e))?;
                    cgroup_mode = Some(format!("{:?}", source.mode()).to_lowercase());
                    Box::new(source)
                }
                Some(SourceConfig::Netns(c)) => {
                    Box::new(NetnsSource::new(c).map_err(|e| build_error("source", id, e))?)
                }
                Some(SourceConfig::Processes(c)) => {
                    Box::new(ProcessesSource::new(c).map_err(|e| build_error("source", id, e))?)
                }
                Some(SourceConfig::PodNetwork(c)) => {
                    Box::new(PodNetworkSource::new(c).map_err(|e| build_error("source", id, e))?)
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
                Some(ProcessorConfig::DockerApi(c)) => processors
                    .push(Box::new(DockerApi::new(c).map_err(|e| build_error("processor", &id.value, e))?)),
                Some(ProcessorConfig::RuntimeFiles(c)) => {
                    processors.push(Box::new(RuntimeFiles::new(c.clone())))
                }
                None => unreachable!("validated: pipelines only name defined processors"),
            }
        }
        pipelines.push(Pipeline {
            name: name.clone(),
            sources,
            processors,
            start_times: StartTimes::new(),
            common: common.clone(),
            exporter_ids: pc.exporters.iter().map(|s| s.value.clone()).collect(),
            cgroup_mode,
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
            Some(ExporterConfig::Prometheus(c)) => {
                Box::new(PrometheusExporter::new(c).map_err(|e| build_error("exporter", id, e))?)
            }
            None => unreachable!("validated: pipelines only name defined exporters"),
        };
        exporters.insert(id.to_owned(), exporter);
    }
    Ok(exporters)
}

/// What one sweep held, for self-telemetry (public for the benchmark).
#[derive(Default)]
pub struct SweepCounts {
    containers: u64,
    pods: u64,
    network_namespaces: u64,
    points: u64,
}

impl SweepCounts {
    pub fn add(&mut self, sweep: &Sweep) {
        for r in &sweep.resources {
            match r.id {
                crate::model::ResourceId::Container(_) => self.containers += 1,
                crate::model::ResourceId::Pod(_) => self.pods += 1,
            }
            // Pointer comparisons: this runs over every point of every sweep. The netns
            // source appends its points last, so the reverse search ends at once for them.
            let is_net_io = |p: &crate::model::Point| {
                std::ptr::eq(p.metric, &semconv::POD_NETWORK.io)
                    || std::ptr::eq(p.metric, &semconv::CONTAINER_NETWORK.io)
            };
            if r.points.iter().rev().any(is_net_io) {
                self.network_namespaces += 1;
            }
            self.points += r.points.len() as u64;
        }
    }

    pub fn store(&self, t: &Telemetry) {
        t.last_containers.store(self.containers, Ordering::Relaxed);
        t.last_pods.store(self.pods, Ordering::Relaxed);
        t.last_network_namespaces.store(self.network_namespaces, Ordering::Relaxed);
        t.last_points.store(self.points, Ordering::Relaxed);
    }
}

/// Where self-telemetry goes: the configured endpoint and TLS, else the first gRPC `otlp`
/// exporter's endpoint and TLS settings.
pub fn self_telemetry_target(config: &Config) -> Option<crate::self_telemetry_otlp::Target> {
    use crate::exporters::otlp::config::Security;
    use crate::self_telemetry_otlp::Target;
    let st = &config.self_telemetry;
    if !st.enabled {
        return None;
    }
    if let Some(endpoint) = &st.endpoint {
        let client = st.tls.cert_file.clone().zip(st.tls.key_file.clone());
        let headers = st.headers.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        return Some(Target { endpoint: endpoint.clone(), ca_file: st.tls.ca_file.clone(), client, headers });
    }
    config.exporters.entries.values().find_map(|(_, e)| match e {
        ExporterConfig::Otlp(c) => c
            .resolve(|name| std::env::var(name).ok())
            .ok()
            .filter(|r| r.protocol == crate::exporters::otlp::Protocol::Grpc)
            .map(|r| {
                let (ca_file, client) = match r.security {
                    Security::Tls { ca_file, client } => (ca_file, client),
                    Security::Plaintext => (None, None),
                };
                // The exporter's collector authenticates self-telemetry as it does the exporter.
                Target { endpoint: r.endpoint, ca_file, client, headers: r.headers }
            }),
        _ => None,
    })
}

/// Where each exporter sends, for the start-up line: `id -> endpoint`, never headers or
/// credentials.
pub fn exporter_summary(config: &Config) -> Vec<String> {
    use crate::exporters::prometheus::Naming;
    config
        .exporters
        .entries
        .iter()
        .map(|(id, (_, exporter))| match exporter {
            ExporterConfig::File(c) => format!("{id} -> {}", c.path.display()),
            ExporterConfig::Otlp(c) => match c.resolve(|name| std::env::var(name).ok()) {
                Ok(r) => {
                    let protocol = match r.protocol {
                        crate::exporters::otlp::Protocol::Grpc => "grpc",
                        crate::exporters::otlp::Protocol::HttpProtobuf => "http/protobuf",
                    };
                    format!("{id} -> {protocol} {}", redact_url(&r.endpoint))
                }
                Err(_) => format!("{id} -> (unresolved)"),
            },
            ExporterConfig::Prometheus(c) => {
                let naming = if c.naming == Naming::Cadvisor { "cadvisor" } else { "otel" };
                format!("{id} -> http://{}/metrics ({naming} names)", c.endpoint)
            }
        })
        .collect()
}

/// The start-up line: what the first sweep found and where it goes.
fn log_startup(pipelines: &[Pipeline], sweeps: &[Arc<Sweep>], exporters: &[String]) {
    let mut runtimes: Vec<&str> = Vec::new();
    let mut pods: Vec<&str> = Vec::new();
    let mut containers = 0usize;
    for r in sweeps.iter().flat_map(|s| s.resources.iter()) {
        if let crate::model::ResourceId::Container(_) = r.id {
            containers += 1;
            if let Some(AttrValue::Str(rt)) = r.attribute(semconv::CONTAINER_RUNTIME_NAME) {
                if !runtimes.contains(&rt.as_str()) {
                    runtimes.push(rt);
                }
            }
        }
        if let Some(pod) = crate::views::table::pod_key(r) {
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
    }
    runtimes.sort_unstable();
    let modes: Vec<&str> = pipelines.iter().filter_map(|p| p.cgroup_mode.as_deref()).collect();
    info!(
        cgroups = %if modes.is_empty() { "none".to_owned() } else { modes.join(",") },
        runtimes = %if runtimes.is_empty() { "none".to_owned() } else { runtimes.join(",") },
        containers,
        pods = pods.len(),
        exporters = %exporters.join(", "),
        "First sweep done."
    );
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
    let self_telemetry = match self_telemetry_target(config) {
        Some(target) => {
            let resource = crate::resource::Common::from_config(config).sdk_resource();
            match crate::self_telemetry_otlp::start(&target, config.self_telemetry.interval, resource) {
                Ok(provider) => Some(provider),
                Err(error) => {
                    warn!(%error, "Self-telemetry is off.");
                    None
                }
            }
        }
        None => None,
    };
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

    let stale_intervals = config.health.as_ref().map_or(3, |h| h.value.stale_intervals);
    let health = Arc::new(HealthState::new(config.interval, stale_intervals));
    let mut health_task = None;
    if let Some(h) = &config.health {
        let address =
            h.value.address().map_err(|reason| build_error("health endpoint", &h.value.endpoint, reason))?;
        let (_, serving) = health::bind(address, Arc::clone(&health)).await?;
        health_task = Some(tokio::spawn(serving));
    }

    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    // Dropped when the sweep thread ends, normally or by a panic: `run` must not live on
    // without it.
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
    let timing = Timing {
        interval: config.interval,
        stats_every: config.stats_log_interval,
        shutdown_timeout: config.shutdown_timeout,
    };
    let summary = exporter_summary(config);
    let sweeper_health = Arc::clone(&health);
    let sweeper = std::thread::Builder::new()
        .name("podometer-sweep".into())
        .spawn(move || {
            let _ended = ended_tx;
            let _guard = SweeperGuard(Arc::clone(&sweeper_health));
            sweep_loop(&mut pipelines, &senders, timing, stop_rx, &sweeper_health, summary)
        })
        .expect("spawning the sweep thread");

    let sweeper_died = tokio::select! {
        _ = stop => false,
        _ = &mut ended_rx => true,
    };
    if sweeper_died {
        error!("The sweep thread stopped on its own; flushing exporters and exiting with an error.");
    } else {
        info!("Stopping: one last sweep, then flushing exporters.");
    }
    let _ = stop_tx.send(());
    let deadline = Instant::now() + config.shutdown_timeout;
    // The sweeper finishes its last sweep and drops the senders, which ends the exporter loops.
    // A sweep thread that hangs (a read stuck in the kernel) is waited for until the shutdown
    // deadline only: joined on a thread of its own (a blocking-pool task would hold up the
    // runtime's drop as long as the hang), and left behind when the process exits.
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
    let joiner = std::thread::Builder::new().name("podometer-join".into()).spawn(move || {
        let _ = joined_tx.send(sweeper.join());
    });
    // The sweep thread may spend up to `shutdown_timeout` on its last deliveries (measured from
    // its own start of the last sweep, a moment after this deadline's): the same second of
    // grace as the exporters below, so that only a thread that really hangs is given up.
    let joined = match joiner {
        Ok(_) => tokio::time::timeout_at((deadline + Duration::from_secs(1)).into(), joined_rx)
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => None,
    };
    let died_because = match joined {
        None => Some(format!(
            "it did not finish its last sweep within shutdown_timeout ({})",
            humantime::format_duration(config.shutdown_timeout)
        )),
        Some(Err(panic)) => Some(panic_message(panic.as_ref())),
        _ if sweeper_died => Some("it returned without being asked to stop".to_owned()),
        _ => None,
    };
    let _ = deadline_tx.send(Some(deadline));
    let grace = config.shutdown_timeout + Duration::from_secs(1);
    for task in tasks {
        let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        if tokio::time::timeout(remaining.min(grace), task).await.is_err() {
            warn!("An exporter did not stop within shutdown_timeout; leaving it behind.");
        }
    }
    if let Some(task) = health_task {
        task.abort();
    }
    log_stats();
    if let Some(provider) = self_telemetry {
        // A last collection, with the counters the line above logged.
        // The SDK logs a failed export at debug level only; a lost last collection is worth
        // a warning (its counters are in the line above).
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || provider.shutdown()).await {
            warn!(%error, "The last self-telemetry collection may not have been delivered.");
        }
    }
    match died_because {
        Some(reason) => {
            error!(%reason, "The sweep thread died.");
            Err(PipelineError::SweeperStopped(reason))
        }
        None => Ok(()),
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("panicked: {text}")
}

/// The sweep thread's clock: how often it sweeps and logs its counters, and how long its last
/// sweep may wait for a busy exporter.
struct Timing {
    interval: Duration,
    stats_every: Duration,
    shutdown_timeout: Duration,
}

fn sweep_loop(
    pipelines: &mut [Pipeline],
    senders: &BTreeMap<String, mpsc::Sender<Arc<Sweep>>>,
    timing: Timing,
    stop: std_mpsc::Receiver<()>,
    health: &HealthState,
    exporter_summary: Vec<String>,
) {
    let Timing { interval, stats_every, shutdown_timeout } = timing;
    let telemetry = Telemetry::global();
    // Per exporter, for self-telemetry's `exporter` attribute (the OTLP exporters registered
    // theirs when they were built; these are the same).
    let exporter_counters: BTreeMap<&str, _> =
        senders.keys().map(|id| (id.as_str(), telemetry.exporter(id))).collect();
    let mut readiness = Vec::new();
    let mut first = true;
    for pipeline in pipelines.iter() {
        readiness.extend(pipeline.wait_for_processors());
    }
    health.set_processors(readiness);
    #[cfg(debug_assertions)]
    let fault = DebugFault::from_env();
    #[cfg(debug_assertions)]
    let mut sweeps_done = 0u64;
    let mut next = Instant::now();
    let mut next_stats = Instant::now() + stats_every;
    loop {
        let stopping = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => true,
        };
        let started = Instant::now();
        // The last sweep's deliveries share one budget: waiting `shutdown_timeout` for each
        // stuck exporter in turn outlasted the shutdown (two stuck file exporters: 1 s against
        // 500 ms), and `run` gave the sweep thread up as hung.
        let give_up = started + shutdown_timeout;
        let time = SystemTime::now();
        let mut swept = Vec::with_capacity(pipelines.len());
        let mut counts = SweepCounts::default();
        for pipeline in pipelines.iter_mut() {
            let sweep = Arc::new(pipeline.sweep(time));
            counts.add(&sweep);
            if first {
                swept.push(Arc::clone(&sweep));
            }
            for id in &pipeline.exporter_ids {
                let Some(tx) = senders.get(id) else { continue };
                let sent = if stopping {
                    send_last(tx, Arc::clone(&sweep), give_up)
                } else {
                    tx.try_send(Arc::clone(&sweep)).is_ok()
                };
                if !sent {
                    if let Some(c) = exporter_counters.get(id.as_str()) {
                        c.count(
                            |e| &e.sweeps_dropped_by_backlog,
                            |t| &t.sweeps_dropped_by_exporter_backlog,
                            1,
                        );
                    }
                    warn_limited!("exporter-backlog", exporter = %id, "An exporter is not keeping up; a sweep was dropped for it.");
                }
            }
        }
        if first {
            log_startup(pipelines, &swept, &exporter_summary);
            first = false;
        }
        counts.store(telemetry);
        Telemetry::inc(&telemetry.sweeps);
        let elapsed = started.elapsed();
        telemetry.last_sweep_micros.store(elapsed.as_micros() as u64, Ordering::Relaxed);
        crate::self_telemetry_otlp::record_sweep(elapsed);
        health.sweep_done();
        #[cfg(debug_assertions)]
        {
            sweeps_done += 1;
            fault.after_sweep(sweeps_done);
        }
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

/// Hands the last sweep to an exporter. A sweep the exporter is behind on is dropped at once
/// (the next one replaces it), but the last one has no successor: stopping exists to deliver it,
/// so this waits for room until `give_up` (the last sweep's start plus the shutdown timeout,
/// shared by every exporter) before giving up on it.
fn send_last(tx: &mpsc::Sender<Arc<Sweep>>, mut sweep: Arc<Sweep>, give_up: Instant) -> bool {
    loop {
        match tx.try_send(sweep) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= give_up {
                    return false;
                }
                sweep = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Test hook, compiled into debug builds only (the tests' binary, never a release): makes
/// the sweep thread panic or hang after N sweeps, so the tests can check that a dead sweep
/// thread fails `/healthz` and ends `run` with an error. `PODOMETER_DEBUG_FAULT=panic-after:N`
/// or `hang-after:N`.
#[cfg(debug_assertions)]
enum DebugFault {
    None,
    PanicAfter(u64),
    HangAfter(u64),
}

#[cfg(debug_assertions)]
impl DebugFault {
    fn from_env() -> DebugFault {
        let Ok(value) = std::env::var("PODOMETER_DEBUG_FAULT") else { return DebugFault::None };
        let parse = |n: &str| n.parse::<u64>().ok();
        match value.split_once(':') {
            Some(("panic-after", n)) => parse(n).map_or(DebugFault::None, DebugFault::PanicAfter),
            Some(("hang-after", n)) => parse(n).map_or(DebugFault::None, DebugFault::HangAfter),
            _ => DebugFault::None,
        }
    }

    fn after_sweep(&self, swept: u64) {
        match *self {
            DebugFault::PanicAfter(n) if swept >= n => panic!("injected fault after {swept} sweeps"),
            DebugFault::HangAfter(n) if swept >= n => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            _ => {}
        }
    }
}

fn log_stats() {
    let stats = Telemetry::global().snapshot();
    let fields: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
    info!(stats = %fields.join(" "), "Agent counters.");
}
