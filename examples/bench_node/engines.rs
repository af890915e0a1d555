//! Real container engines and the OpenTelemetry Collector's receivers over their stats APIs.
//!
//! The synthetic node is cgroups and processes only: no engine knows its containers, so the
//! Collector's `docker_stats` and `podman_stats` receivers (which ask an engine's API for each
//! container's stats) cannot read it. Each engine here is a daemon of the bench's own (a
//! `dockerd` with its own data, exec root and socket; `podman system service` on a socket of its
//! own) running N real containers (`busybox sleep`, `--network none`: a Linux bridge takes at
//! most 1,024 ports, and neither peer is asked for network counters here). The containers are
//! added, not rebuilt, from one size to the next. At each size, in one run:
//! - the agent (`podometer run`, built-in config, 1 s) over the same containers: its CPU per
//!   container-sweep and RSS, while the engine idles (the engine's idle CPU);
//! - the Collector with only that receiver, `collection_interval: 1s`, exporting OTLP gRPC to
//!   the bench's own receiver (the same sink and the same encode-and-send work as the agent;
//!   the receiver counts the `container.id`s delivered, so a receiver that falls behind shows
//!   it): its CPU per container-sample and RSS, and what the engine's daemons spent above idle
//!   meanwhile (stats are read by the engine: dockerd, its containerd and the shims, or the
//!   Podman service), from a CPU-accounting cgroup that holds the engine's processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[path = "../../tests/support/engine_daemon.rs"]
mod engine_daemon;

use super::{measure_agent, process_cpu, status_kib, thread_cpu, AgentResult, Args, Killed, Receiver};

/// A CPU-accounting cgroup of the bench's own: every process started into it (and what those
/// start, unless they move themselves) is counted in its usage. Removed on drop.
pub struct CpuGroup {
    dir: PathBuf,
    v2: bool,
}

impl CpuGroup {
    pub fn new(name: &str) -> anyhow::Result<CpuGroup> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 { Path::new("/sys/fs/cgroup") } else { Path::new("/sys/fs/cgroup/cpuacct") };
        let dir = base.join(format!("bench-node-{}-{name}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(CpuGroup { dir, v2 })
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// CPU seconds (user + system) of everything that ran in the group.
    pub fn usage(&self) -> f64 {
        if self.v2 {
            fs::read_to_string(self.dir.join("cpu.stat"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<f64>().ok()))
                .map_or(0.0, |us| us / 1e6)
        } else {
            fs::read_to_string(self.dir.join("cpuacct.usage"))
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0.0, |ns| ns / 1e9)
        }
    }

    /// A command that joins this group, then execs `program`.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(r#"echo $$ > "$0" && exec "$@""#).arg(self.procs()).arg(program);
        cmd
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Processes leave a cgroup a moment after they exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.dir).is_err() && self.dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A container engine of the bench's own, its containers and daemons removed on drop.
pub struct Engine {
    pub kind: &'static str,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    daemon: Option<Killed>,
    pub group: CpuGroup,
    pub ids: Vec<String>,
    wrote_key: bool,
}

fn wait_for_socket(socket: &Path, daemon: &mut Killed, what: &str) -> anyhow::Result<()> {
    engine_daemon::wait_for_socket(socket, &mut daemon.0, what, Duration::from_secs(60))
        .map_err(anyhow::Error::msg)
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Engine {
    pub fn start(kind: &'static str, out: &Path, label: &str) -> anyhow::Result<Engine> {
        let dir = tempfile::Builder::new().prefix("bench-node-engine").tempdir()?;
        let group = CpuGroup::new(kind)?;
        let log = fs::File::create(out.join(format!("{kind}d{label}.log")))?;
        let (socket, mut cmd, wrote_key) = match kind {
            "docker" => {
                if std::env::var_os("PODOMETER_BB_DOCKER_TAR").is_none() {
                    bail!("PODOMETER_BB_DOCKER_TAR is unset (eval \"$(scripts/testbed.sh)\")");
                }
                let socket = dir.path().join("docker.sock");
                let mut cmd = group.command("dockerd");
                engine_daemon::dockerd_args(&mut cmd, dir.path(), &socket);
                (socket, cmd, !Path::new(engine_daemon::DOCKER_KEY_JSON).exists())
            }
            _ => {
                let socket = dir.path().join("podman.sock");
                let mut cmd = group.command("podman");
                cmd.args(["system", "service", "--time=0"]).arg(format!("unix://{}", socket.display()));
                (socket, cmd, false)
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start the {kind} engine"))?;
        let mut engine =
            Engine { kind, dir, socket, daemon: Some(Killed(child)), group, ids: Vec::new(), wrote_key };
        let socket = engine.socket.clone();
        wait_for_socket(&socket, engine.daemon.as_mut().context("daemon")?, kind)?;
        if kind == "docker" {
            let tar = std::env::var_os("PODOMETER_BB_DOCKER_TAR").context("checked above")?;
            run_ok(engine.cli().args(["load", "-q", "-i"]).arg(tar))?;
        }
        Ok(engine)
    }

    /// The engine's CLI on its socket: Debian's docker client, or podman (which runs the
    /// containers itself and shares its storage with the service).
    pub fn cli(&self) -> Command {
        if self.kind == "docker" {
            engine_daemon::docker_cli(&self.socket)
        } else {
            Command::new("podman")
        }
    }

    /// Runs containers until there are `n`, four `run`s at a time.
    pub fn grow(&mut self, n: usize) -> anyhow::Result<()> {
        let start = self.ids.len();
        if n <= start {
            return Ok(());
        }
        let pid = std::process::id();
        let next = std::sync::atomic::AtomicUsize::new(start);
        let made = std::sync::Mutex::new(Vec::new());
        let this = &*self;
        let errors: Vec<anyhow::Error> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| -> anyhow::Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= n {
                                return Ok(());
                            }
                            let name = format!("bn-{pid}-{}-{i}", this.kind);
                            let id = run_ok(this.cli().args([
                                "run",
                                "-d",
                                "--network",
                                "none",
                                "--log-driver",
                                "none",
                                "--name",
                                &name,
                                "localhost/bb:1",
                                "sleep",
                                "1000000",
                            ]))?;
                            made.lock().unwrap_or_else(|e| e.into_inner()).push(id.trim().to_owned());
                        }
                    })
                })
                .collect();
            workers.into_iter().filter_map(|w| w.join().ok().and_then(Result::err)).collect()
        });
        self.ids.extend(made.into_inner().unwrap_or_else(|e| e.into_inner()));
        if let Some(e) = errors.into_iter().next() {
            return Err(e.context(format!("{} of {n} {} containers running", self.ids.len(), self.kind)));
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for chunk in self.ids.chunks(200) {
            let mut cmd = self.cli();
            if self.kind == "podman" {
                cmd.args(["rm", "-f", "-t", "0"]);
            } else {
                cmd.args(["rm", "-f"]);
            }
            let _ = cmd.args(chunk).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        // SIGTERM, then up to 5 s, then SIGKILL: dockerd stops the containerd it started.
        drop(self.daemon.take());
        if self.kind == "docker" {
            engine_daemon::clean_up_after_dockerd(self.dir.path(), self.wrote_key);
        }
        // The group empties once the shims and daemons are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && fs::read_to_string(self.group.procs()).map(|p| !p.trim().is_empty()).unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What one Collector measured: per sample (a container, or a pod for kubeletstats) and
/// collection, its CPU (µs, user + system) and RSS, and how many it delivered per second.
#[derive(Clone)]
pub struct CollectorResult {
    pub delivered: f64,
    pub per_sample: f64,
    pub rss_mib: f64,
    /// CPU seconds per second of wall time of another process or group over the window (the
    /// engine's, or the kubelet's).
    pub other_per_sec: Option<f64>,
}

/// What the Collector counts as a sample.
pub enum Samples<'a> {
    Containers(&'a [String]),
    Pods(&'a [String]),
}

/// CPU seconds of a process: the sum over its threads' schedstat (ns), or its stat (10 ms
/// ticks) when a thread that ended took more than that from the sum.
pub fn cpu_of(pid: u32) -> anyhow::Result<(f64, f64)> {
    let threads: f64 = thread_cpu(pid, |_| true).values().sum();
    let (u, s) = process_cpu(pid)?;
    Ok((threads, u + s))
}

fn cpu_delta(before: (f64, f64), after: (f64, f64)) -> f64 {
    let threads = after.0 - before.0;
    let stat = after.1 - before.1;
    if threads + 0.02 >= stat {
        threads
    } else {
        stat
    }
}

/// The Collector of `--otelcol` with `receiver_yaml` (one receiver, named `name`) exporting OTLP gRPC
/// to `sink`: warmed up until it delivered 98 % of `samples`, then measured for `seconds`.
/// `other`: a CPU reading (seconds) of something else to take over the same window.
pub fn measure_collector(
    args: &Args,
    sink: &Receiver,
    name: &str,
    receiver_yaml: &str,
    samples: Samples,
    seconds: u64,
    other: Option<&dyn Fn() -> f64>,
) -> anyhow::Result<CollectorResult> {
    let bin = args.otelcol.as_ref().map_err(|why| anyhow::anyhow!("{why}"))?;
    let dir = tempfile::Builder::new().prefix("bench-node-otelcol").tempdir()?;
    let config = dir.path().join("config.yaml");
    // No telemetry server (it would take :8888 and cost CPU of its own), warnings only.
    let yaml = format!(
        "receivers:\n{receiver_yaml}\
         exporters:\n  otlp_grpc:\n    endpoint: 127.0.0.1:{port}\n    tls:\n      insecure: true\n\
         service:\n  telemetry:\n    logs:\n      level: warn\n    metrics:\n      level: none\n  \
         pipelines:\n    metrics:\n      receivers: [{name}]\n      exporters: [otlp_grpc]\n",
        port = sink.port
    );
    fs::write(&config, &yaml)?;
    let (wanted, n) = match samples {
        Samples::Containers(ids) | Samples::Pods(ids) => (ids, ids.len()),
    };
    let pods = matches!(samples, Samples::Pods(_));
    let log = args.out.join(format!("otelcol-{name}-{n}{}.log", args.label));
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut collector = Killed(child);
    let pid = collector.0.id();
    let seen = |r: &Receiver| -> usize {
        let set = if pods { &r.pods_seen } else { &r.seen };
        let set = set.lock().unwrap_or_else(|e| e.into_inner());
        wanted.iter().filter(|id| set.contains(*id)).count()
    };
    let counter = |r: &Receiver| -> u64 {
        if pods {
            r.pod_resources.load(std::sync::atomic::Ordering::Relaxed)
        } else {
            r.container_resources.load(std::sync::atomic::Ordering::Relaxed)
        }
    };
    sink.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    sink.pods_seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = collector.0.try_wait() {
            bail!("the Collector exited ({status}); see {}", log.display());
        }
        if seen(sink) * 100 >= n * 98 {
            // Two more collections past the one that completed the set.
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        if Instant::now() > deadline {
            bail!("the Collector's {name} delivered {} of {n} in 120 s; see {}", seen(sink), log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c0 = cpu_of(pid)?;
    let o0 = other.map(|f| f());
    let d0 = counter(sink);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let c1 = cpu_of(pid)?;
    let o1 = other.map(|f| f());
    let d1 = counter(sink);
    let wall = w0.elapsed().as_secs_f64();
    let rss_mib = status_kib(pid, "VmRSS:") as f64 / 1024.0;
    if let Ok(Some(status)) = collector.0.try_wait() {
        bail!("the Collector exited during the window ({status}); see {}", log.display());
    }
    let delivered = (d1 - d0) as f64 / wall;
    if delivered < 1.0 {
        bail!("the Collector's {name} delivered nothing in the window; see {}", log.display());
    }
    Ok(CollectorResult {
        delivered,
        per_sample: cpu_delta(c0, c1) * 1e6 / (delivered * wall),
        rss_mib,
        other_per_sec: o0.zip(o1).map(|(a, b)| (b - a) / wall),
    })
}

/// One engine at one size: the agent and the Collector's receiver over the same containers.
pub struct EngineRow {
    pub kind: &'static str,
    pub n: usize,
    pub agent: Result<AgentResult, String>,
    /// The engine's CPU (s/s) while the agent ran: its idle cost.
    pub engine_idle: Option<f64>,
    pub collector: Result<CollectorResult, String>,
}

impl EngineRow {
    /// What the engine spent above idle for the Collector, per container-sample (µs).
    pub fn engine_added(&self) -> Option<f64> {
        let c = self.collector.as_ref().ok()?;
        Some((c.other_per_sec? - self.engine_idle?).max(0.0) * 1e6 / c.delivered)
    }
}

/// Every engine of `--engines` at every size of `--engine-sizes`; a size or engine that cannot
/// run gives a row saying why, never nothing.
pub fn measure_engines(args: &Args, sink: &Receiver) -> Vec<EngineRow> {
    let sizes = args.engine_sizes.clone().unwrap_or_else(|| args.sizes.clone());
    let mut rows = Vec::new();
    for kind in ["docker", "podman"] {
        if !args.engines.iter().any(|e| e == kind) {
            continue;
        }
        let not_run = |n: usize, why: String| EngineRow {
            kind,
            n,
            agent: Err(why.clone()),
            engine_idle: None,
            collector: Err(why),
        };
        let started = Instant::now();
        let mut engine = match Engine::start(kind, &args.out, &args.label) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("bench_node: {kind}: {e:#}");
                rows.extend(sizes.iter().map(|&n| not_run(n, format!("the engine did not start: {e:#}"))));
                continue;
            }
        };
        eprintln!("bench_node: {kind} engine up in {:.1?}", started.elapsed());
        for (i, &n) in sizes.iter().enumerate() {
            let t = Instant::now();
            if let Err(e) = engine.grow(n) {
                eprintln!("bench_node: {kind} N={n}: {e:#}");
                rows.push(not_run(n, format!("{e:#}")));
                rows.extend(sizes[i + 1..].iter().map(|&m| not_run(m, format!("N={n} could not be made"))));
                break;
            }
            eprintln!("bench_node: {kind} N={n}: containers running after {:.1?}", t.elapsed());
            let ids = engine.ids.clone();
            let g0 = engine.group.usage();
            let w0 = Instant::now();
            let agent = measure_agent(args, &ids, &format!("{kind}-"), sink, None, None)
                .map(|(a, _)| a)
                .map_err(|e| format!("{e:#}"));
            // The agent's run includes its warm-up; the engine idles all along.
            let engine_idle = Some((engine.group.usage() - g0) / w0.elapsed().as_secs_f64());
            let receiver_name = if kind == "docker" { "docker_stats" } else { "podman_stats" };
            let collector = match &args.otelcol {
                Err(why) => Err(why.clone()),
                Ok(_) => {
                    // Debian's dockerd 20.10 answers API 1.41 at most; the receiver asks 1.44
                    // unless told.
                    let api = if kind == "docker" { "    api_version: \"1.41\"\n" } else { "" };
                    let yaml = format!(
                        "  {receiver_name}:\n    endpoint: unix://{}\n    collection_interval: 1s\n{api}",
                        engine.socket.display()
                    );
                    let group = &engine.group;
                    let usage = || group.usage();
                    measure_collector(
                        args,
                        sink,
                        receiver_name,
                        &yaml,
                        Samples::Containers(&ids),
                        args.sweeps,
                        Some(&usage),
                    )
                    .map_err(|e| format!("{e:#}"))
                }
            };
            match (&agent, &collector) {
                (Ok(a), Ok(c)) => eprintln!(
                    "bench_node: {kind} N={n}: podometer {:.1} µs per container-sweep; {receiver_name} {:.1} µs per container-sample ({:.0} per s)",
                    a.per_container_sweep, c.per_sample, c.delivered
                ),
                _ => eprintln!(
                    "bench_node: {kind} N={n}: podometer {}; {receiver_name} {}",
                    agent.as_ref().err().map_or("ran", String::as_str),
                    collector.as_ref().err().map_or("ran", String::as_str)
                ),
            }
            rows.push(EngineRow { kind, n, agent, engine_idle, collector });
        }
    }
    rows
}
