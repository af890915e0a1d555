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
//! `node-peers.dat` (for `scripts/bench-node.sh` to plot) into `--out`. The synthetic node is
//! `node.rs`, the receiver `receiver.rs`, the measurements `measure.rs` and `tools.rs`, the
//! tables `results.rs`. Root only; everything it creates is named
//! after its pid and removed on exit, also on failure.

#[path = "../../benches/support/sweep_files.rs"]
#[allow(dead_code)] // V2_FILES: the node is hybrid
mod sweep_files;

mod engines;
mod kube;
mod measure;
mod node;
mod peers_table;
mod receiver;
mod results;
mod tools;

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

use measure::*;
use node::*;
use receiver::*;
use results::*;
use tools::*;

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
