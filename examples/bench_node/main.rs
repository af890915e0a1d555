//! The node benchmark that `scripts/bench-node.sh` drives: the whole agent's cost on a synthetic
//! node, side by side with the kernel floor and the tools users would run instead.
//!
//! For each size N it builds, on the real cgroupfs and network stack, N containers in the kubelet
//! layout (`kubepods/besteffort/pod<uid>/<64 hex>`: pods of a sandbox and two containers, a live
//! `sleep` in each, one network namespace with a veth per pod), then measures on the same
//! containers:
//! - `podometer run` (the binary given, its built-in default config: cgroups + netns sources,
//!   OTLP gRPC with the default compression) at 1 s to an OTLP gRPC receiver in this process: CPU
//!   (utime+stime of all threads from `/proc/<pid>/stat`, and per thread), RSS, open fds;
//! - at the same time, between the agent's sweeps, the kernel floor: `pread` of the files the
//!   agent reads every sweep, kept open, plus one `/proc/<pid>/net/dev` per pod (kept open too),
//!   no parsing, at the agent's 1 s cadence;
//! - then, one after another: the agent again with `--lean-config`, if given; a naive reader
//!   (open + read + close of the same files); Netdata (Debian's, only its cgroups plugin, at
//!   1 s): CPU of its `PLUGIN[cgroups]` threads;
//!
//! and once, over `--podman` Podman containers (it cannot see synthetic cgroups), the CPU of
//! `podman stats --interval 1` streaming. Then the peers that need real containers or a real
//! kubelet: the OpenTelemetry Collector's `docker_stats` and `podman_stats` receivers over
//! engines of the bench's own, beside the agent over the same containers (`engines.rs`), and
//! with `--kube` the `kubeletstats` receiver and `/metrics/cadvisor` on the real node
//! (`kube.rs`). It writes `node.md` (tables), `node.csv`, `node.dat`, `node-peers.csv` and
//! `node-peers.dat` (for `scripts/bench-node.sh` to plot) into `--out`. Root only; everything it creates is named
//! after its pid and removed on exit, also on failure.

#[path = "../../benches/support/sweep_files.rs"]
#[allow(dead_code)] // V2_FILES: the node is hybrid
mod sweep_files;

mod engines;
mod kube;
mod peers_table;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use sweep_files::{HYBRID_FILES, HYBRID_LEAN_FILES, HYBRID_RARE_FILES};
use tonic::codec::CompressionEncoding;

/// The files of the TCP/UDP counters the agent reads by default, once per pod and sweep.
const PROTOCOL_FILES: [&str; 3] = ["net/snmp", "net/netstat", "net/snmp6"];

const HIERARCHIES: &[&str] = &["cpu", "cpuacct", "memory", "blkio", "pids", "cpuset", "systemd", "unified"];

struct Args {
    sizes: Vec<usize>,
    sweeps: u64,
    podman: usize,
    netdata: bool,
    out: PathBuf,
    agent: PathBuf,
    label: String,
    /// `--agent-env K=V`: more environment for the agent (e.g. its OTLP compression).
    agent_env: Vec<(String, String)>,
    /// `--lean-config FILE`: also measure the agent with this config (the lean profile,
    /// `config/lean.yaml`) at every N, on the same node.
    lean_config: Option<PathBuf>,
    /// `--protocols-off-config FILE`: also measure the agent with this config (the default one
    /// with the TCP/UDP counters off, `bench/no-protocols.yaml`): the difference is what the
    /// counters add, set beside the pread floor of their files.
    protocols_off_config: Option<PathBuf>,
    /// `--otelcol BIN`: the OpenTelemetry Collector (scripts/otelcol.sh builds it) whose
    /// docker_stats, podman_stats and kubeletstats receivers are measured; or
    /// `--otelcol-missing REASON`, shown in their cells instead.
    otelcol: Result<PathBuf, String>,
    /// `--engines docker,podman` (default both; `none`): the engines whose stats APIs are
    /// measured over real containers, with the agent over the same containers.
    engines: Vec<String>,
    /// `--engine-sizes`: how many real containers each engine runs (default: `--sizes`).
    engine_sizes: Option<Vec<usize>>,
    /// `--kube`: also measure on the real node of scripts/kube-node.sh (kubeletstats and the
    /// kubelet's /metrics/cadvisor), each window `--kube-seconds` long (default 60).
    kube: bool,
    kube_seconds: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        sizes: vec![100, 500, 1000],
        sweeps: 20,
        podman: 40,
        netdata: true,
        out: PathBuf::from("bench/results"),
        agent: PathBuf::from("target/release/podometer"),
        label: String::new(),
        agent_env: Vec::new(),
        lean_config: None,
        protocols_off_config: None,
        otelcol: Err("no --otelcol given".into()),
        engines: vec!["docker".into(), "podman".into()],
        engine_sizes: None,
        kube: false,
        kube_seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                a.sizes = value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
            }
            "--sweeps" => a.sweeps = value()?.parse()?,
            "--podman" => a.podman = value()?.parse()?,
            "--no-netdata" => a.netdata = false,
            "--out" => a.out = value()?.into(),
            "--agent" => a.agent = value()?.into(),
            "--lean-config" => a.lean_config = Some(value()?.into()),
            "--protocols-off-config" => a.protocols_off_config = Some(value()?.into()),
            "--label" => a.label = value()?,
            "--otelcol" => a.otelcol = Ok(value()?.into()),
            "--otelcol-missing" => a.otelcol = Err(value()?),
            "--engines" => {
                a.engines = value()?.split(',').filter(|e| *e != "none").map(str::to_owned).collect();
                if let Some(e) = a.engines.iter().find(|e| !["docker", "podman"].contains(&e.as_str())) {
                    bail!("unknown engine {e} (docker, podman or none)");
                }
            }
            "--engine-sizes" => {
                a.engine_sizes =
                    Some(value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?);
            }
            "--kube" => a.kube = true,
            "--kube-seconds" => a.kube_seconds = value()?.parse()?,
            "--agent-env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').context("--agent-env takes KEY=VALUE")?;
                a.agent_env.push((k.to_owned(), v.to_owned()));
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.sizes.iter().any(|n| *n < 3) || a.sweeps < 2 {
        bail!("sizes must be at least 3 (one pod) and sweeps at least 2");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench_node builds cgroups and network namespaces: run it as root");
    }
    fs::create_dir_all(&args.out)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let receiver = runtime.block_on(Receiver::start())?;
    let load_at_start = load_average();
    let machine = machine();
    eprintln!("bench_node: {machine}");

    let mut rows: Vec<Row> = Vec::new();
    let mut per_file = Vec::new();
    for &n in &args.sizes {
        let started = Instant::now();
        let node = Node::build(n)?;
        eprintln!("bench_node: N={n}: {} pods built in {:.1?}", node.pods.len(), started.elapsed());
        let ids = node.ids();
        let (agent, floor_cost) = measure_agent(&args, &ids, "", &receiver, None, Some(&node))?;
        let floor_cost = floor_cost.context("the floor is measured with the agent")?;
        eprintln!("bench_node: N={n}: agent {:.1} µs per container-sweep", agent.per_container_sweep);
        let lean_agent = match &args.lean_config {
            Some(config) => {
                let (lean, _) = measure_agent(&args, &ids, "", &receiver, Some(config), None)?;
                eprintln!(
                    "bench_node: N={n}: lean agent {:.1} µs per container-sweep",
                    lean.per_container_sweep
                );
                Some(lean)
            }
            None => None,
        };
        let floor = floor_cost.per_container_sweep;
        // The lean profile's floor: the same reads, only of the files it keeps.
        let lean = lean_agent.map(|agent| {
            let floor: f64 = floor_cost
                .per_file
                .iter()
                .filter(|(label, _, _)| {
                    label.starts_with("/proc/")
                        || HYBRID_LEAN_FILES.iter().any(|(h, f)| *label == format!("{h}/{f}"))
                })
                .map(|(_, per_read, copies)| per_read * *copies as f64)
                .sum::<f64>()
                / node.containers() as f64;
            (agent, floor)
        });
        // The TCP/UDP counters: the agent without them, on the same node; what they add per pod
        // and sweep against the pread floor of their files (per read, times one per pod).
        let protocols = match &args.protocols_off_config {
            Some(config) => {
                let (off, _) = measure_agent(&args, &ids, "", &receiver, Some(config), None)?;
                let per_pod =
                    |per_container: f64| per_container * node.containers() as f64 / node.pods.len() as f64;
                let floor: f64 = floor_cost
                    .per_file
                    .iter()
                    .filter(|(label, _, _)| PROTOCOL_FILES.iter().any(|f| label.contains(f)))
                    .map(|(_, per_read, _)| per_read)
                    .sum();
                let added = Added {
                    whole: per_pod(agent.per_container_sweep - off.per_container_sweep),
                    sweep_thread: per_pod(agent.sweep_thread - off.sweep_thread),
                    floor,
                };
                eprintln!(
                    "bench_node: N={n}: TCP/UDP counters add {:.1} µs per pod-sweep ({:.1} on the sweep thread); their files' floor {floor:.1} µs{}",
                    added.whole,
                    added.sweep_thread,
                    added.noise_note()
                );
                Some(added)
            }
            None => None,
        };
        let naive = measure_reader(&node, args.sweeps, ReadMode::OpenReadClose, None)?.per_container_sweep;
        per_file.push((n, floor_cost.per_file));
        eprintln!("bench_node: N={n}: floor {floor:.1} µs, naive {naive:.1} µs per container-sweep");
        // A Netdata that charts nothing is reported as missing, not a reason to lose the run.
        let netdata = if args.netdata {
            measure_netdata(&args, n).map_err(|e| eprintln!("bench_node: N={n}: netdata: {e:#}")).ok()
        } else {
            None
        };
        if let Some(nd) = &netdata {
            eprintln!("bench_node: N={n}: netdata {:.1} µs per container-sample ({} cgroups)", nd.0, nd.1);
        }
        rows.push(Row { n, agent, floor, naive, netdata, lean, protocols });
        drop(node);
    }
    let podman = if args.podman > 0 { Some(measure_podman(&args)?) } else { None };
    if let Some(p) = podman {
        eprintln!("bench_node: podman stats {p:.1} µs per container-sample over {} containers", args.podman);
    }
    let engine_rows = engines::measure_engines(&args, &receiver);
    let kube = if args.kube {
        Some(kube::measure_kube(&args, &receiver).map_err(|e| {
            eprintln!("bench_node: kube: {e:#}");
            format!("{e:#}")
        }))
    } else {
        None
    };
    let conditions = format!(
        "{machine}; load average (1, 5, 15 min) {load_at_start} at the start, {} at the end",
        load_average()
    );
    write_results(&args, &conditions, &rows, podman)?;
    peers_table::write(&args, &conditions, &rows, &engine_rows, kube.as_ref())?;
    write_per_file(&args, &machine, &per_file)?;
    drop(runtime);
    Ok(())
}

// ---------------------------------------------------------------- the synthetic node

struct Pod {
    /// Relative cgroup paths: the pod, then its sandbox and two containers.
    pod_cgroup: String,
    containers: Vec<String>,
    netns: String,
    /// The sandbox's `sleep`, whose `/proc/<pid>/net/dev` is the pod's.
    sandbox_pid: u32,
}

/// Containers, namespaces and processes; removed on drop.
struct Node {
    pods: Vec<Pod>,
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
    qos_dirs: Vec<PathBuf>,
}

impl Node {
    fn build(n: usize) -> anyhow::Result<Node> {
        static BUILDS: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        // Deleted namespaces take their veths with them a moment later: new names every build.
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let pods_n = n.div_ceil(3);
        let mut node =
            Node { pods: Vec::new(), children: Vec::new(), dirs: Vec::new(), qos_dirs: Vec::new() };
        for h in HIERARCHIES {
            for part in ["kubepods", "kubepods/besteffort"] {
                let dir = Path::new("/sys/fs/cgroup").join(h).join(part);
                if Path::new("/sys/fs/cgroup").join(h).join("cgroup.procs").exists() && !dir.exists() {
                    fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                    inherit_cpuset(h, &dir);
                    node.qos_dirs.push(dir);
                }
            }
        }
        let mut batch = String::new();
        for p in 0..pods_n {
            let netns = format!("bn{pid}b{build}p{p}");
            let _ = writeln!(batch, "netns add {netns}");
            let _ = writeln!(batch, "link add b{pid:x}{build}v{p} type veth peer name eth0 netns {netns}");
            let _ = writeln!(batch, "link set b{pid:x}{build}v{p} up");
            let uid = format!("{pid:08x}-{p:04x}-4{build:03x}-8000-{:012x}", p * 7919 + 1);
            let pod_cgroup = format!("kubepods/besteffort/pod{uid}");
            let members = if p + 1 == pods_n && n % 3 != 0 { n % 3 } else { 3 };
            let containers = (0..members)
                .map(|c| {
                    let seed = format!("{pid:08x}{build:02x}{p:06x}{c:02x}");
                    format!("{seed}{}", "ab".repeat(32))[..64].to_owned()
                })
                .collect();
            node.pods.push(Pod { pod_cgroup, containers, netns, sandbox_pid: 0 });
        }
        // Netns first, so that a failure leaves nothing half-made in cgroups; removed on drop.
        let mut ip = Command::new("ip").args(["-batch", "-"]).stdin(Stdio::piped()).spawn()?;
        ip.stdin.take().context("ip stdin")?.write_all(batch.as_bytes())?;
        if !ip.wait()?.success() {
            bail!("ip -batch failed to create namespaces and veths");
        }
        for i in 0..node.pods.len() {
            let (pod_cgroup, containers, netns) = {
                let p = &node.pods[i];
                (p.pod_cgroup.clone(), p.containers.clone(), p.netns.clone())
            };
            node.mkdir_all(&pod_cgroup)?;
            for (c, id) in containers.iter().enumerate() {
                let rel = format!("{pod_cgroup}/{id}");
                node.mkdir_all(&rel)?;
                let child = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .args(["sleep", "1000000"])
                    .stdin(Stdio::null())
                    .spawn()
                    .context("nsenter sleep")?;
                let child_pid = child.id();
                node.children.push(child);
                for h in HIERARCHIES {
                    let procs = Path::new("/sys/fs/cgroup").join(h).join(&rel).join("cgroup.procs");
                    if procs.exists() {
                        fs::write(&procs, child_pid.to_string())
                            .with_context(|| format!("join {}", procs.display()))?;
                    }
                }
                if c == 0 {
                    node.pods[i].sandbox_pid = child_pid;
                }
            }
        }
        // nsenter execs sleep: wait until every process runs in its namespace.
        std::thread::sleep(Duration::from_millis(300));
        Ok(node)
    }

    fn mkdir_all(&mut self, rel: &str) -> anyhow::Result<()> {
        for h in HIERARCHIES {
            let base = Path::new("/sys/fs/cgroup").join(h);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            // Parents too: another session's cleanup may remove an empty `kubepods/besteffort`
            // between two of our builds.
            let mut dir = base.clone();
            for part in Path::new(rel).components() {
                dir.push(part);
                if !dir.exists() {
                    fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                    inherit_cpuset(h, &dir);
                    self.dirs.push(dir.clone());
                }
            }
        }
        Ok(())
    }

    /// The containers' ids (the leaf cgroups' names), as the agent reports them.
    fn ids(&self) -> Vec<String> {
        self.pods.iter().flat_map(|p| p.containers.iter().cloned()).collect()
    }

    fn containers(&self) -> usize {
        self.pods.iter().map(|p| p.containers.len()).sum()
    }

    /// The files the agent reads every sweep (limits are read once a minute and left out), as
    /// (label, path); with `extra`, also files it reads rarely or only on other hosts, for the
    /// per-file cost table.
    fn sweep_files(&self, extra: bool) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let set: Vec<&(&str, &str)> =
            HYBRID_FILES.iter().chain(if extra { HYBRID_RARE_FILES } else { &[] }).collect();
        for pod in &self.pods {
            let groups = std::iter::once(pod.pod_cgroup.clone())
                .chain(pod.containers.iter().map(|c| format!("{}/{c}", pod.pod_cgroup)));
            for rel in groups {
                for (h, f) in &set {
                    let path = Path::new("/sys/fs/cgroup").join(h).join(&rel).join(f);
                    if path.exists() {
                        out.push((format!("{h}/{f}"), path));
                    }
                }
            }
            for file in std::iter::once("net/dev").chain(PROTOCOL_FILES) {
                out.push((
                    format!("/proc/<pid>/{file} (per pod)"),
                    PathBuf::from(format!("/proc/{}/{file}", pod.sandbox_pid)),
                ));
            }
        }
        out
    }
}

fn inherit_cpuset(h: &str, dir: &Path) {
    if h != "cpuset" {
        return;
    }
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Some(v) = dir.parent().and_then(|p| fs::read_to_string(p.join(file)).ok()) {
            let _ = fs::write(dir.join(file), v.trim());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let batch: String = self.pods.iter().map(|p| format!("netns del {}\n", p.netns)).collect();
        if let Ok(mut ip) = Command::new("ip").args(["-force", "-batch", "-"]).stdin(Stdio::piped()).spawn() {
            if let Some(mut stdin) = ip.stdin.take() {
                let _ = stdin.write_all(batch.as_bytes());
            }
            let _ = ip.wait();
        }
        // Processes leave their cgroups a moment after they exit: rmdir retries on EBUSY.
        for dir in self.dirs.iter().rev().chain(self.qos_dirs.iter().rev()) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------- the OTLP receiver

#[derive(Clone, Default)]
struct Receiver {
    port: u16,
    requests: Arc<AtomicU64>,
    /// Container resources received, summed over requests (a sweep may span several).
    container_resources: Arc<AtomicU64>,
    /// Container resources received per sweep, by the sweep's timestamp (its points'
    /// `time_unix_nano`): a sweep's resources may arrive over several requests, and on a loaded
    /// machine a request late, so counting sweeps by the wall clock would be off by one.
    per_sweep: Arc<std::sync::Mutex<BTreeMap<u64, u64>>>,
    /// Distinct `container.id`s received since the warm-up began.
    seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Pod resources (a `k8s.pod.uid` with no container or volume name: what the Collector's
    /// kubeletstats receiver sends per pod), summed over requests, and the distinct uids.
    pod_resources: Arc<AtomicU64>,
    pods_seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    bytes: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut containers = 0;
        let mut pods = 0;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let mut pods_seen = self.pods_seen.lock().unwrap_or_else(|e| e.into_inner());
            let mut per_sweep = self.per_sweep.lock().unwrap_or_else(|e| e.into_inner());
            for rm in &req.resource_metrics {
                let mut pod_uid = None;
                let mut in_pod = false;
                for kv in rm.resource.iter().flat_map(|r| &r.attributes) {
                    let Some(AnyValue::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.as_ref())
                    else {
                        continue;
                    };
                    match kv.key.as_str() {
                        "container.id" => {
                            containers += 1;
                            seen.insert(v.clone());
                            if let Some(t) = first_point_time(rm) {
                                *per_sweep.entry(t).or_default() += 1;
                            }
                        }
                        "k8s.pod.uid" => pod_uid = Some(v),
                        "k8s.container.name" | "k8s.volume.name" => in_pod = true,
                        _ => {}
                    }
                }
                if let (Some(uid), false) = (pod_uid, in_pod) {
                    pods += 1;
                    pods_seen.insert(uid.clone());
                }
            }
        }
        self.container_resources.fetch_add(containers, Ordering::Relaxed);
        self.pod_resources.fetch_add(pods, Ordering::Relaxed);
        self.bytes.fetch_add(prost::Message::encoded_len(&req) as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The time of a resource's first data point: the agent stamps every point of a sweep with the
/// sweep's time.
fn first_point_time(rm: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics) -> Option<u64> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    rm.scope_metrics.iter().flat_map(|s| &s.metrics).find_map(|m| match m.data.as_ref()? {
        Data::Gauge(g) => g.data_points.first().map(|p| p.time_unix_nano),
        Data::Sum(s) => s.data_points.first().map(|p| p.time_unix_nano),
        Data::Histogram(h) => h.data_points.first().map(|p| p.time_unix_nano),
        _ => None,
    })
}

impl Receiver {
    /// The containers of a typical sweep among those received since `clear_sweeps`: the median
    /// of the per-sweep counts, so that a sweep cut by either end of the window (its first
    /// requests before, or its last ones after) does not count as a short sweep.
    fn containers_per_sweep(&self) -> Option<u64> {
        let per_sweep = self.per_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: Vec<u64> = per_sweep.values().copied().collect();
        counts.sort_unstable();
        counts.get(counts.len() / 2).copied()
    }

    fn clear_sweeps(&self) {
        self.per_sweep.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut receiver = Receiver { port: listener.local_addr()?.port(), ..Receiver::default() };
        receiver.port = listener.local_addr()?.port();
        let service = MetricsServiceServer::new(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(receiver)
    }
}

// ---------------------------------------------------------------- measuring processes

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in seconds from a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` text.
fn stat_cpu(text: &str) -> Option<(f64, f64)> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / clk_tck(), stime / clk_tck()))
}

fn process_cpu(pid: u32) -> anyhow::Result<(f64, f64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat_cpu(&text).context("parse /proc/<pid>/stat")
}

/// CPU seconds by thread name, summed, from each thread's `schedstat` (nanoseconds, where
/// `stat` counts 10 ms ticks).
fn thread_cpu(pid: u32, filter: impl Fn(&str) -> bool) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
        if !filter(&comm) {
            continue;
        }
        let ns: Option<f64> = fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
        if let Some(ns) = ns {
            *out.entry(comm).or_insert(0.0) += ns / 1e9;
        }
    }
    out
}

/// Threads of the process (`thread_cpu` sums by name, and two I/O threads share one).
fn task_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| tasks.count()).unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct AgentResult {
    /// Containers the agent delivered per sweep (ours and any other on the machine).
    containers: usize,
    per_container_sweep: f64,
    user: f64,
    system: f64,
    /// Per container-sweep, by thread kind: the sweep thread (sources, processors) and the
    /// I/O threads (encode, compress, export).
    sweep_thread: f64,
    io_threads: f64,
    rss_mib: f64,
    fds: usize,
    threads: usize,
    bytes_per_sweep: f64,
}

/// The agent over `args.sweeps` sweeps of the containers `ids` (the synthetic node's, or an
/// engine's real ones; `tag` names its log), with its built-in configuration or `config`.
/// With `floor`, the pread floor of that node is measured over the same window, between the
/// agent's sweeps (see [`measure_reader`]): agent and floor see the same machine, so their ratio
/// does not move with what the rest of the machine did between two measurements.
fn measure_agent(
    args: &Args,
    ids: &[String],
    tag: &str,
    receiver: &Receiver,
    config: Option<&Path>,
    floor: Option<&Node>,
) -> anyhow::Result<(AgentResult, Option<ReaderCost>)> {
    let n = ids.len();
    let kind =
        config.and_then(|c| c.file_stem()).map(|s| format!("-{}", s.to_string_lossy())).unwrap_or_default();
    let log = args.out.join(format!("agent-{tag}{n}{kind}{}.log", args.label));
    let child = Command::new(&args.agent)
        .arg("run")
        .args(config.map(|c| [Path::new("-c"), c]).into_iter().flatten())
        .env("PODOMETER_INTERVAL", "1s")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port))
        .env("NO_COLOR", "1")
        .envs(args.agent_env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {}", args.agent.display()))?;
    let agent = Killed(child);
    let pid = agent.0.id();
    // Warm up: discovery done, every container delivered, two more sweeps.
    let deadline = Instant::now() + Duration::from_secs(90);
    let start_requests = receiver.requests.load(Ordering::Relaxed);
    receiver.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let ours = |r: &Receiver| {
        let seen = r.seen.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter(|id| seen.contains(*id)).count()
    };
    loop {
        let got = receiver.requests.load(Ordering::Relaxed) - start_requests;
        // 98 %: at N = 1,000 the hard open-file limit here (20,000) leaves a few cgroups unread
        // (the agent says so in its log); the table shows how many it delivered.
        if got >= 3 && ours(receiver) * 100 >= n * 98 {
            // Two more sweeps past the one that completed the set.
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent delivered {got} requests with {} of our {n} containers in 90 s; see {}",
                ours(receiver),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (u0, s0) = process_cpu(pid)?;
    let t0 = thread_cpu(pid, |_| true);
    let b0 = receiver.bytes.load(Ordering::Relaxed);
    let c0 = receiver.container_resources.load(Ordering::Relaxed);
    receiver.clear_sweeps();
    let w0 = Instant::now();
    // BENCH_NODE_PERF=DIR: a CPU profile of the agent over the measured sweeps (perf's software
    // clock; it adds a little to the agent's CPU, so profile runs are not the reported ones).
    let perf = std::env::var_os("BENCH_NODE_PERF").map(|dir| {
        Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-g", "-p", &pid.to_string(), "-o"])
            .arg(Path::new(&dir).join(format!("perf-{n}.data")))
            .args(["--", "sleep", &args.sweeps.to_string()])
            .stdout(Stdio::null())
            .spawn()
    });
    // BENCH_NODE_INSPECT=COMMAND: a shell command run over the measured sweeps with the agent's
    // pid in AGENT_PID and N in NODE_N (smaps, strace, heaptrack attach); like the profile, it
    // adds to the agent's cost, so inspection runs are not the reported ones.
    let inspect = std::env::var_os("BENCH_NODE_INSPECT").map(|command| {
        Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("AGENT_PID", pid.to_string())
            .env("NODE_N", n.to_string())
            .spawn()
    });
    let floor = std::thread::scope(|scope| {
        // Two sweeps fewer than the window, so that the reader is done within it.
        let reader = floor.map(|node| {
            scope.spawn(move || {
                measure_reader(
                    node,
                    args.sweeps.saturating_sub(2).max(1),
                    ReadMode::Pread,
                    Some(&receiver.requests),
                )
            })
        });
        std::thread::sleep(Duration::from_secs(args.sweeps));
        reader
            .map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the floor reader panicked"))))
            .transpose()
    })?;
    if let Some(Ok(mut i)) = inspect {
        let _ = i.wait();
    }
    let (u1, s1) = process_cpu(pid)?;
    let t1 = thread_cpu(pid, |_| true);
    if let Some(Ok(mut p)) = perf {
        let _ = p.wait();
    }
    let wall = w0.elapsed().as_secs_f64();
    let b1 = receiver.bytes.load(Ordering::Relaxed);
    let c1 = receiver.container_resources.load(Ordering::Relaxed);
    // The agent sweeps on a fixed 1 s cadence. It reads every container on the machine, ours
    // and any other: its cost is divided by the containers it delivered.
    let sweeps = wall.round().max(1.0);
    // A sweep in flight at either end of the window would move a count over the wall clock by
    // one sweep's worth (a third at 3 sweeps): count by the sweeps' own timestamps instead.
    let read = receiver.containers_per_sweep().unwrap_or(0) as usize;
    if read * 10 < n * 8 {
        bail!(
            "the agent delivered {read} containers per sweep ({} in {sweeps} s), fewer than our {n}; see {}",
            c1 - c0,
            log.display()
        );
    }
    let per = |secs: f64| secs * 1e6 / (sweeps * read as f64);
    let delta = |name: &dyn Fn(&str) -> bool| -> f64 {
        t1.iter().filter(|(k, _)| name(k)).map(|(k, v)| v - t0.get(k).copied().unwrap_or(0.0)).sum()
    };
    // The total from the threads' schedstat (ns) rather than the process's stat (10 ms ticks,
    // too coarse at N=100); a thread that ended inside the window would be missed, so the stat
    // total is the floor under it.
    let threads_total = delta(&|_| true);
    let stat_total = (u1 - u0) + (s1 - s0);
    let total = if threads_total + 0.02 >= stat_total { threads_total } else { stat_total };
    let result = AgentResult {
        containers: read,
        per_container_sweep: per(total),
        user: per(u1 - u0),
        system: per(s1 - s0),
        sweep_thread: per(delta(&|k| k == "podometer-sweep")),
        io_threads: per(delta(&|k| k == "podometer-io")),
        rss_mib: status_kib(pid, "VmRSS:") as f64 / 1024.0,
        fds: open_fds(pid),
        threads: task_count(pid),
        bytes_per_sweep: (b1 - b0) as f64 / sweeps,
    };
    Ok((result, floor))
}

#[derive(Clone, Copy, PartialEq)]
enum ReadMode {
    Pread,
    OpenReadClose,
}

/// What reading the agent's files costs the kernel, per container-sweep (this thread's CPU time,
/// user + system), and for `Pread` each file's cost per read, by file.
struct ReaderCost {
    per_container_sweep: f64,
    per_file: PerFile,
}

/// (file, µs per read, copies read per sweep).
type PerFile = Vec<(String, f64, usize)>;

/// `paced_by`: the receiver's request count while the agent runs; each sweep then starts 400 ms
/// after one of the agent's requests arrives, so that the reader works in the agent's idle half
/// of each second, at its cadence, under the same load from the rest of the machine. Without it
/// (the naive reader, run on its own) sweeps are 200 ms apart.
fn measure_reader(
    node: &Node,
    sweeps: u64,
    mode: ReadMode,
    paced_by: Option<&AtomicU64>,
) -> anyhow::Result<ReaderCost> {
    // Grouped by file so that one clock reading covers all the cgroups' copies of a file.
    // The extra files would take the floor past a 20,000 descriptor limit at N = 1,000.
    let extra = mode == ReadMode::Pread && node.containers() <= 500;
    let mut groups: BTreeMap<String, (Vec<PathBuf>, Vec<File>, f64)> = BTreeMap::new();
    for (label, path) in node.sweep_files(extra) {
        let g = groups.entry(label).or_default();
        if mode == ReadMode::Pread {
            g.1.push(File::open(&path)?);
        }
        g.0.push(path);
    }
    let agent_set: std::collections::BTreeSet<String> =
        node.sweep_files(false).into_iter().map(|(l, _)| l).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_request = paced_by.map(|r| r.load(Ordering::Relaxed));
    for _ in 0..sweeps {
        if let (Some(requests), Some(last)) = (paced_by, last_request.as_mut()) {
            let deadline = Instant::now() + Duration::from_millis(2500);
            while requests.load(Ordering::Relaxed) == *last && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            *last = requests.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(400));
        }
        for (_, (paths, files, spent)) in groups.iter_mut() {
            let start = thread_cpu_now();
            match mode {
                ReadMode::Pread => {
                    for f in files.iter() {
                        let _ = f.read_at(&mut buf, 0)?;
                    }
                }
                ReadMode::OpenReadClose => {
                    for p in paths.iter() {
                        let mut f = File::open(p)?;
                        let _ = f.read(&mut buf)?;
                    }
                }
            }
            *spent += thread_cpu_now() - start;
        }
        if paced_by.is_none() {
            // Between sweeps, like the agent: caches cool down a little.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let total: f64 = groups.iter().filter(|(l, _)| agent_set.contains(*l)).map(|(_, g)| g.2).sum();
    let per_file = groups
        .iter()
        .map(|(l, (paths, _, spent))| {
            (l.clone(), spent * 1e6 / (sweeps as f64 * paths.len() as f64), paths.len())
        })
        .collect();
    Ok(ReaderCost { per_container_sweep: total * 1e6 / (sweeps as f64 * node.containers() as f64), per_file })
}

fn thread_cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

// ---------------------------------------------------------------- peers

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Netdata with only its cgroups plugin, at 1 s, its state in a temp dir. Returns the CPU of its
/// `PLUGIN[cgroups]` threads per cgroup-sample and how many cgroups it charted.
fn measure_netdata(args: &Args, n: usize) -> anyhow::Result<(f64, usize)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let d = dir.path().display();
    let off = [
        "proc",
        "diskspace",
        "tc",
        "idlejitter",
        "timex",
        "apps",
        "python.d",
        "go.d",
        "charts.d",
        "node.d",
        "ebpf",
        "perf",
        "slabinfo",
        "statsd",
        "checks",
        "fping",
        "ioping",
        "nfacct",
        "freeipmi",
        "cups",
        "netdata monitoring",
        "profile",
        "debugfs",
        "logs-management",
        "systemd-journal",
    ];
    let mut plugins = String::from("[plugins]\n  enable running new plugins = no\n  cgroups = yes\n");
    for p in off {
        let _ = writeln!(plugins, "  {p} = no");
    }
    // 1.37's key is `max cgroups to allow` (default 1,000: the node's other cgroups leave
    // fewer for the bench's at N = 1,000). No renaming: its `cgroup-name.sh` asks a Kubernetes
    // API and docker for every `kubepods` cgroup, one at a time with timeouts, before charting
    // it; with no API on this machine the discovery of 500 cgroups outlasted the warm-up. The
    // cgroups are charted under their path names instead; steady-state reading is the same.
    let conf = format!(
        "[global]\n  run as user = root\n  update every = 1\n  memory mode = ram\n  history = 60\n  \
         cache directory = {d}/cache\n  lib directory = {d}/lib\n  log directory = {d}/log\n  \
         pid file = {d}/netdata.pid\n  error log = {d}/error.log\n  access log = none\n  debug log = none\n\
         [web]\n  bind to = 127.0.0.1:{port}\n\
         [registry]\n  enabled = no\n[health]\n  enabled = no\n[ml]\n  enabled = no\n[statsd]\n  enabled = no\n\
         [cloud]\n  conversation log = no\n{plugins}\
         [plugin:cgroups]\n  update every = 1\n  use unified cgroups = no\n  check for new cgroups every = 10\n  \
         max cgroups to allow = 5000\n  max cgroups depth to monitor = 0\n  \
         run script to rename cgroups matching = !*\n"
    );
    for sub in ["cache", "lib", "log"] {
        fs::create_dir_all(dir.path().join(sub))?;
    }
    let conf_path = dir.path().join("netdata.conf");
    fs::write(&conf_path, conf)?;
    let child = Command::new("netdata")
        .arg("-c")
        .arg(&conf_path)
        .arg("-D")
        .stdout(Stdio::null())
        .stderr(File::create(args.out.join(format!("netdata-{n}{}.log", args.label)))?)
        .spawn()
        .context("start netdata (apt-get install netdata)")?;
    let netdata = Killed(child);
    let pid = netdata.0.id();
    // Warm up until the number of charted cgroups stops growing (its discovery runs a name
    // script per cgroup), at most 180 s.
    let charted = || -> usize {
        let Some(body) = http_get(port, "/api/v1/charts") else { return 0 };
        let mut names = std::collections::BTreeSet::new();
        // Netdata pretty-prints: `"id": "cgroup_<name>.<chart>"`.
        let compact: String = body.split_whitespace().collect();
        for part in compact.split("\"id\":\"cgroup_").skip(1) {
            if let Some(name) = part.split('.').next() {
                names.insert(name.to_owned());
            }
        }
        names.len()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let c = charted();
        if c != last.0 {
            last = (c, Instant::now());
        } else if c > 0 && last.1.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    let cgroups = charted();
    if cgroups == 0 {
        bail!("netdata charted no cgroups in 180 s");
    }
    let is_cg = |k: &str| k == "PLUGIN[cgroups]";
    let c0: f64 = thread_cpu(pid, is_cg).values().sum();
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.sweeps));
    let c1: f64 = thread_cpu(pid, is_cg).values().sum();
    let samples = w0.elapsed().as_secs_f64().round() * cgroups as f64;
    drop(netdata);
    Ok(((c1 - c0) * 1e6 / samples, cgroups))
}

/// `podman stats --interval 1` streaming over `args.podman` containers it started: CPU of that
/// process per container-sample.
fn measure_podman(args: &Args) -> anyhow::Result<f64> {
    struct Containers(Vec<String>);
    impl Drop for Containers {
        fn drop(&mut self) {
            if !self.0.is_empty() {
                let _ = Command::new("podman")
                    .args(["rm", "-f", "-t", "0"])
                    .args(&self.0)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let mut names = Containers(Vec::new());
    for i in 0..args.podman {
        let name = format!("bn-{}-{i}", std::process::id());
        let out = Command::new("podman")
            .args(["run", "-d", "--name", &name, "localhost/bb:1", "sleep", "1000000"])
            .output()?;
        if !out.status.success() {
            bail!("podman run: {}", String::from_utf8_lossy(&out.stderr));
        }
        names.0.push(name);
    }
    let child = Command::new("podman")
        .args(["stats", "--interval", "1", "--format", "json"])
        .args(&names.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stats = Killed(child);
    let pid = stats.0.id();
    std::thread::sleep(Duration::from_secs(3));
    let (u0, s0) = process_cpu(pid)?;
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.sweeps));
    let (u1, s1) = process_cpu(pid)?;
    let samples = w0.elapsed().as_secs_f64().round() * args.podman as f64;
    drop(stats);
    Ok(((u1 - u0) + (s1 - s0)) * 1e6 / samples)
}

// ---------------------------------------------------------------- results

struct Row {
    n: usize,
    agent: AgentResult,
    floor: f64,
    naive: f64,
    netdata: Option<(f64, usize)>,
    /// The agent with the lean config, and the pread floor of the files it reads.
    lean: Option<(AgentResult, f64)>,
    protocols: Option<Added>,
}

/// What the TCP/UDP counters add per pod and sweep (µs): the whole agent's and the sweep
/// thread's difference to the agent without them, and the pread floor of their files.
struct Added {
    whole: f64,
    sweep_thread: f64,
    floor: f64,
}

impl Added {
    /// The difference of two runs cannot be below what the kernel alone spends on the files
    /// the counters read: when it is, the runs' noise is larger than the counters' cost, and
    /// the figure is no result (short or loaded runs: the smoke run's 3 sweeps of a debug build).
    fn noise_note(&self) -> &'static str {
        if self.whole < self.floor {
            " (below the files' floor: noise, not a result)"
        } else {
            ""
        }
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let mode = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "hybrid cgroups"
    } else {
        "cgroup v1"
    };
    // The agent's discovery walks this whole tree, the host's own cgroups too: part of its
    // fixed cost per sweep, so the table says how many there were.
    let walked = if mode == "hybrid cgroups" { "/sys/fs/cgroup/unified" } else { "/sys/fs/cgroup" };
    format!("{cpu}, {cores} cores, kernel {kernel}, {mode}; {} cgroups of the host's own in the tree the agent walks", count_dirs(Path::new(walked)))
}

/// Directories under `dir` (not counting it), not following symlinks.
fn count_dirs(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + count_dirs(&e.path()))
        .sum()
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A cost over its pread floor. Below 1.0 the floor was mismeasured (nothing reads the same
/// files for less than the kernel's own cost of them), so such a cell is marked invalid, never
/// read as a target met.
fn ratio(cost: f64, floor: f64) -> String {
    let r = cost / floor;
    if r < 1.0 {
        format!("{r:.2}× (invalid: below the floor)")
    } else {
        format!("{r:.2}×")
    }
}

/// What moves the floor, for the table: memory cgroups the kernel still holds that no directory
/// shows (dying ones, whose pages are still charged; each makes the memory files dearer) and the
/// cadence the floor was read at.
fn floor_conditions() -> String {
    let kernel = fs::read_to_string("/proc/cgroups")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&"memory"))
                    .then(|| f.get(2).and_then(|n| n.parse::<usize>().ok()))
                    .flatten()
            })
        })
        .unwrap_or(0);
    let visible = 1 + count_dirs(Path::new("/sys/fs/cgroup/memory"));
    format!(
        "floor read with `pread` of kept-open files at the agent's 1 s cadence, between its sweeps; memory cgroups: {kernel} in the kernel, {visible} visible ({} dying)",
        kernel.saturating_sub(visible)
    )
}

fn write_results(args: &Args, machine: &str, rows: &[Row], podman: Option<f64>) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}. {} s per measurement, interval 1 s.\n", args.sweeps);
    let _ = writeln!(md, "Floor conditions: {}. A ratio below 1.0 is marked invalid.\n", floor_conditions());
    let _ = writeln!(
        md,
        "CPU per container-sweep (µs, user + system); podometer ratios are to the pread floor of the same run.\n"
    );
    let _ = writeln!(
        md,
        "| N | pread floor | naive open+read+close | podometer | containers read | ratio | user | system | sweep thread | I/O threads | netdata cgroups | RSS MiB | fds | threads | OTLP bytes/sweep |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut csv = String::from(
        "n,agent_containers,floor_us,naive_us,agent_us,agent_user_us,agent_system_us,sweep_thread_us,io_threads_us,netdata_us,netdata_cgroups,podman_us,rss_mib,fds,threads,bytes_per_sweep,lean_us,lean_floor_us,lean_rss_mib\n",
    );
    let mut dat = String::from("# n floor naive podometer netdata podman podometer-lean\n");
    for r in rows {
        let a = &r.agent;
        let nd = r.netdata.map(|(v, c)| format!("{v:.1} ({c} cgroups)")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {:.0} |",
            r.n,
            r.floor,
            r.naive,
            a.per_container_sweep,
            a.containers,
            ratio(a.per_container_sweep, r.floor),
            a.user,
            a.system,
            a.sweep_thread,
            a.io_threads,
            nd,
            a.rss_mib,
            a.fds,
            a.threads,
            a.bytes_per_sweep
        );
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "NaN".into());
        let _ = writeln!(
            csv,
            "{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{},{},{},{:.1},{},{},{:.0},{},{},{}",
            r.n,
            a.containers,
            r.floor,
            r.naive,
            a.per_container_sweep,
            a.user,
            a.system,
            a.sweep_thread,
            a.io_threads,
            opt(r.netdata.map(|x| x.0)),
            r.netdata.map(|x| x.1).unwrap_or(0),
            opt(podman),
            a.rss_mib,
            a.fds,
            a.threads,
            a.bytes_per_sweep,
            opt(r.lean.as_ref().map(|l| l.0.per_container_sweep)),
            opt(r.lean.as_ref().map(|l| l.1)),
            opt(r.lean.as_ref().map(|l| l.0.rss_mib)),
        );
        let _ = writeln!(
            dat,
            "{} {:.2} {:.2} {:.2} {} {} {}",
            r.n,
            r.floor,
            r.naive,
            a.per_container_sweep,
            opt(r.netdata.map(|x| x.0)),
            opt(podman),
            opt(r.lean.as_ref().map(|l| l.0.per_container_sweep)),
        );
    }
    if let Some(p) = podman {
        let _ = writeln!(
            md,
            "\n`podman stats --interval 1` streaming over {} Podman containers: {p:.1} µs per container-sample.",
            args.podman
        );
    }
    if rows.iter().any(|r| r.lean.is_some()) {
        let config = args.lean_config.as_deref().unwrap_or(Path::new("?")).display().to_string();
        let _ = writeln!(
            md,
            "\nLean profile (`{config}`: the same agent, `skip` leaving pressure, block I/O, `memory.stat` and throttling unread), on the same node in the same run; its floor is the pread floor of the files it still reads.\n"
        );
        let _ = writeln!(
            md,
            "| N | lean floor | podometer lean | ratio | sweep thread | I/O threads | RSS MiB | netdata ÷ lean | podman ÷ lean |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            let Some((l, floor)) = &r.lean else { continue };
            let times = |other: Option<f64>| {
                other.map(|v| format!("{:.2}×", v / l.per_container_sweep)).unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                md,
                "| {} | {floor:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                r.n,
                l.per_container_sweep,
                ratio(l.per_container_sweep, *floor),
                l.sweep_thread,
                l.io_threads,
                l.rss_mib,
                times(r.netdata.map(|x| x.0)),
                times(podman),
            );
        }
    }
    if rows.iter().any(|r| r.protocols.is_some()) {
        let config = args.protocols_off_config.as_deref().unwrap_or(Path::new("?")).display().to_string();
        let _ = writeln!(
            md,
            "\nTCP/UDP counters (default set: `{}` once per pod): what they add per pod-sweep (µs), the agent with them (the default) minus the agent without them (`{config}`) on the same node in the same run, beside the pread floor of those files measured with the agent.\n",
            PROTOCOL_FILES.join("`, `")
        );
        let _ = writeln!(
            md,
            "| N | pods | floor of the files | added, whole agent | ratio | added, sweep thread | ratio |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for r in rows {
            let Some(p) = &r.protocols else { continue };
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1}{} | {} | {:.1} | {} |",
                r.n,
                r.n.div_ceil(3),
                p.floor,
                p.whole,
                p.noise_note(),
                ratio(p.whole, p.floor),
                p.sweep_thread,
                ratio(p.sweep_thread, p.floor)
            );
        }
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let _ = writeln!(
            md,
            "\nFlatness: podometer at N={} costs {:.2}× its per-container cost at N={}.",
            last.n,
            last.agent.per_container_sweep / first.agent.per_container_sweep,
            first.n
        );
    }
    let suffix = &args.label;
    fs::write(args.out.join(format!("node{suffix}.md")), md)?;
    fs::write(args.out.join(format!("node{suffix}.csv")), csv)?;
    fs::write(args.out.join(format!("node{suffix}.dat")), dat)?;
    Ok(())
}

/// The kernel's cost of each file, per read, at each size: the lean profile's table.
fn write_per_file(args: &Args, machine: &str, per_file: &[(usize, PerFile)]) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}. CPU (µs, user + system) of one `pread` at offset 0 of a kept-open file, by file; mean over every cgroup of the node and {} sweeps.\n", args.sweeps);
    let sizes: Vec<usize> = per_file.iter().map(|(n, _)| *n).collect();
    let _ = write!(md, "| file |");
    for n in &sizes {
        let _ = write!(md, " N={n} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---|".repeat(sizes.len()));
    if let Some((_, first)) = per_file.first() {
        for (label, _, _) in first {
            let _ = write!(md, "| `{label}` |");
            for (_, files) in per_file {
                let v = files.iter().find(|(l, _, _)| l == label).map(|(_, v, _)| *v);
                let _ = write!(md, " {} |", v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()));
            }
            let _ = writeln!(md);
        }
    }
    fs::write(args.out.join(format!("node-files{}.md", args.label)), md)?;
    Ok(())
}
