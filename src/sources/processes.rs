//! Sources for a sidecar that has no node access: the `processes` source sums the CPU time
//! and resident memory of the processes it can see (with `shareProcessNamespace: true`, the
//! whole pod's) per container, and the `pod_network` source reads the pod's interfaces from
//! its own `/proc/net/dev` (a sidecar shares the pod's network namespace).
//!
//! Process sums are not cgroup numbers, and their names say so (`container.processes.*`):
//! - CPU is each live process's `utime + stime` plus `cutime + cstime` (children it waited
//!   for). Work of processes that exited without being waited for by a live process in the
//!   same container (an orphan reaped by the pod's init, the container's main process after
//!   a restart) is lost, so the counter can go backwards; the sweep's start times then start
//!   a new series. Resolution is one clock tick (10 ms) per process.
//! - Memory is the sum of `VmRSS`: pages shared between processes are counted once per
//!   process, and the page cache, kernel memory (slab, page tables, socket buffers) and tmpfs
//!   charged to the cgroup are missing. It is not the cgroup's `memory.usage` nor its working set.
//! - Processes in another pid namespace than the agent's are invisible.
//!
//! The agent's own container is the exception: where its cgroup is mounted at
//! `own_cgroup_root` the source also reads that cgroup's CPU and memory files, true cgroup
//! numbers under the cgroup metric names.
//!
//! Each process is put in its container by its path in `/proc/<pid>/cgroup`, classified as the
//! cgroups source classifies it, so that its resource has the same id and attributes
//! (`crate::resource`). A path the layouts cannot anchor (a private cgroup namespace shows the
//! other containers as `/../<name>`) gives the container id in its last component (and the
//! runtime its prefix names). A process whose path names no id (the agent's own container in a
//! private cgroup namespace shows `/`) is grouped under its cgroup path, with the attribute
//! `podometer.cgroup.path` instead of `container.id`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use procfs::FromRead;
use serde::Deserialize;

use crate::glob::Glob;
use crate::model::{AttrValue, Attributes, Point, ResourceId, Sweep, SweepContext, Value};
use crate::semconv;
use crate::sources::cgroups::classify::{named_container, Classified, Classifier};
use crate::sources::cgroups::parse::{self, parse_proc_cgroup, ParseError};
use crate::sources::netns::interface_points;
use crate::sources::netns::procfs::parse_net_dev;
use crate::sources::netns::protocols::{ProtocolCounters, ProtocolMetricsConfig, ProtocolSelection};
use crate::sources::{BoxError, Source};

/// `processes:` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessesConfig {
    /// The procfs to read; `/proc` in a sidecar (with `shareProcessNamespace: true` it shows
    /// every container of the pod).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// At most this many processes are read per sweep; the rest are counted and skipped.
    #[serde(default = "default_max_processes")]
    pub max_processes: usize,
    /// Where the agent's own container's cgroup is mounted (inside a container, the runtime
    /// mounts the container's own cgroup at `/sys/fs/cgroup`). Its CPU time, memory usage and
    /// working set are reported as the cgroup metrics of the agent's own container when the
    /// agent's pid is listed there; otherwise (the host's tree, no mount) nothing is read.
    #[serde(default = "default_cgroup_root")]
    pub own_cgroup_root: PathBuf,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        ProcessesConfig {
            proc_root: default_proc_root(),
            max_processes: default_max_processes(),
            own_cgroup_root: default_cgroup_root(),
        }
    }
}

/// `pod_network:` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetworkConfig {
    /// The procfs whose `net/dev` is read (`<proc_root>/self/net/dev`, the agent's own network
    /// namespace, which in a pod is the pod's).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// The pod's UID (`k8s.pod.uid`), from the downward API: `${env:K8S_POD_UID:-}`. Empty:
    /// the series go on a pod resource without a UID (the resource attributes still name it).
    #[serde(default)]
    pub pod_uid: String,
    /// Interfaces never reported, as globs. Default: `["lo"]`.
    #[serde(default = "default_exclude")]
    pub exclude_interfaces: Vec<Glob>,
    /// The pod's TCP/UDP counters from `<proc_root>/self/net/{snmp,netstat,...}`, chosen as in
    /// the netns source (`sources.netns.protocol_metrics`); `include: []` turns them off.
    #[serde(default)]
    pub protocol_metrics: ProtocolMetricsConfig,
}

impl Default for PodNetworkConfig {
    fn default() -> Self {
        PodNetworkConfig {
            proc_root: default_proc_root(),
            pod_uid: String::new(),
            exclude_interfaces: default_exclude(),
            protocol_metrics: ProtocolMetricsConfig::default(),
        }
    }
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}
fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_max_processes() -> usize {
    4096
}
fn default_exclude() -> Vec<Glob> {
    vec![Glob::new("lo")]
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessesError {
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The CPU-time fields of `/proc/<pid>/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcTimes {
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
}

/// The CPU times of `/proc/<pid>/stat`, parsed by the `procfs` crate: 1.9 µs per process
/// against 0.85 µs for the scan it replaced, beside 31 µs for reading the process's three files
/// (`benches/processes.rs`, release build, shared 2-core machine under load).
pub fn parse_stat_times(text: &str) -> Result<ProcTimes, String> {
    // `procfs` slices around the command name without checking where it is: a text without
    // ` (` after the pid or `) ` before the state would panic there, so such texts are refused
    // first. The kernel always writes both; the name between them may hold anything.
    let t = text.trim();
    let open = t.find('(').ok_or("no `(` before the command name")?;
    let close = t.rfind(')').ok_or("no `)` after the command name")?;
    if open == 0 || t.as_bytes()[open - 1] != b' ' || t.as_bytes().get(close + 1) != Some(&b' ') {
        return Err("the command name is not between ` (` and `) `".into());
    }
    let stat = procfs::process::Stat::from_read(t.as_bytes()).map_err(|e| e.to_string())?;
    // cutime/cstime are signed in the kernel's format; they are never negative in practice.
    let ticks = |v: i64| v.max(0) as u64;
    Ok(ProcTimes {
        utime: stat.utime,
        stime: stat.stime,
        cutime: ticks(stat.cutime),
        cstime: ticks(stat.cstime),
    })
}

/// `VmRSS` of `/proc/<pid>/status` in bytes; `None` for kernel threads and zombies (no line).
///
/// Not the `procfs` crate's `Status`: it parses all ~58 lines into a `HashMap` of owned strings
/// to keep one, 35 µs per process against 0.5 µs for this scan, more than reading the process's
/// three files costs (31 µs; `benches/processes.rs`, release build, shared 2-core machine under
/// load). At `max_processes` (4,096) that is 140 ms of a sweep instead of 2 ms.
pub fn parse_status_rss(text: &str) -> Result<Option<u64>, String> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib = rest.trim().strip_suffix("kB").ok_or("VmRSS without kB")?.trim();
            return kib.parse::<u64>().map(|k| Some(k * 1024)).map_err(|e| format!("VmRSS `{kib}`: {e}"));
        }
    }
    Ok(None)
}

/// The cgroup path that places a process in a container, from `/proc/<pid>/cgroup` (parsed
/// by the cgroups source's [`parse_proc_cgroup`]): the first line that names a container id
/// (v1 controllers or the v2 `0::` line), else the `0::` line, else the first.
pub fn cgroup_key(text: &str) -> Result<String, ParseError> {
    let lines = parse_proc_cgroup(text)?;
    let line = lines
        .iter()
        .find(|l| named_container(l.path).is_some())
        .or_else(|| lines.iter().find(|l| l.is_unified()))
        .unwrap_or(&lines[0]);
    Ok(line.path.to_owned())
}

/// The resource of the processes in the cgroup at `path`: the container the cgroups source
/// would make of it, with the same id and attributes; else the container its last component
/// names; else the path itself (`podometer.cgroup.path`).
pub fn resource_of(classifier: &Classifier, path: &str) -> (ResourceId, Attributes) {
    match classifier.classify(path) {
        Some(what @ Classified::Container { .. }) => (what.identity(), crate::resource::classified(&what)),
        _ => match named_container(path) {
            Some((id, runtime)) => {
                (ResourceId::Container(id.to_owned()), crate::resource::unanchored_container(id, runtime))
            }
            None => (
                ResourceId::Container(path.to_owned()),
                vec![(semconv::PODOMETER_CGROUP_PATH, AttrValue::text(path))],
            ),
        },
    }
}

#[derive(Default)]
struct Group {
    ticks_user: u64,
    ticks_system: u64,
    rss: u64,
    processes: u64,
}

pub struct ProcessesSource {
    config: ProcessesConfig,
    /// The cgroups source's default layouts: a sidecar has no cgroups source to configure.
    classifier: Classifier,
    ticks_per_second: f64,
    own: Option<OwnCgroup>,
}

/// The agent's own container's cgroup files, when they are its own.
#[derive(Debug)]
enum OwnCgroup {
    /// `cpu.stat`, `memory.current`, `memory.stat` in one directory.
    V2 { dir: PathBuf },
    /// `cpuacct.usage{,_user,_sys}` and `memory.usage_in_bytes`, `memory.stat`; the last
    /// user/system split (ns) keeps both modes monotonic.
    V1 { cpuacct: PathBuf, memory: PathBuf, split: (u64, u64) },
}

/// True when the cgroup mounted at `root` is the agent's own container's (a namespaced or
/// bind-mounted container cgroup), not the host's tree: then the node view cannot see other
/// containers, and the built-in config takes the sidecar view.
pub fn own_cgroup_mounted(root: &Path, proc_root: &Path) -> bool {
    OwnCgroup::find(root, proc_root).is_some()
}

impl OwnCgroup {
    /// The own cgroup under `root`, if the agent's pid is listed in its `cgroup.procs` and it
    /// is not the host's root cgroup (whose files are the whole machine's): on v2 the real root
    /// has no `memory.current`, a container's namespaced root has; on v1 the agent's path in
    /// `/proc/self/cgroup` is `/` only in the root cgroup.
    fn find(root: &Path, proc_root: &Path) -> Option<OwnCgroup> {
        let me = std::process::id().to_string();
        let lists_me = |dir: &Path| {
            std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| t.lines().any(|l| l.trim() == me))
        };
        if root.join("cgroup.controllers").is_file() {
            let own = lists_me(root) && root.join("memory.current").is_file();
            return own.then(|| OwnCgroup::V2 { dir: root.to_owned() });
        }
        let self_cgroup = std::fs::read_to_string(proc_root.join("self/cgroup")).ok()?;
        let in_root = parse_proc_cgroup(&self_cgroup)
            .ok()?
            .iter()
            .any(|l| l.has_controller("cpuacct") && l.path == "/");
        if in_root {
            return None;
        }
        let cpuacct =
            ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"].iter().map(|d| root.join(d)).find(|d| d.is_dir())?;
        let memory = root.join("memory");
        (lists_me(&cpuacct) && lists_me(&memory)).then_some(OwnCgroup::V1 { cpuacct, memory, split: (0, 0) })
    }

    /// (user s, system s, memory usage B, working set B).
    fn read(&mut self) -> Result<(f64, f64, u64, u64), ProcessesError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|source| ProcessesError::Read { path: path.clone(), source })
        };
        let bad = |path: &Path, e: parse::ParseError| ProcessesError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        };
        match self {
            OwnCgroup::V2 { dir } => {
                let cpu =
                    parse::parse_v2_cpu_stat(&read(dir.join("cpu.stat"))?).map_err(|e| bad(dir, e))?.time;
                let usage =
                    parse::parse_single(&read(dir.join("memory.current"))?).map_err(|e| bad(dir, e))?;
                let stat =
                    parse::parse_v2_memory_stat(&read(dir.join("memory.stat"))?).map_err(|e| bad(dir, e))?;
                Ok((cpu.user, cpu.system, usage, parse::working_set(usage, &stat)))
            }
            OwnCgroup::V1 { cpuacct, memory, split } => {
                let total = parse::parse_single(&read(cpuacct.join("cpuacct.usage"))?)
                    .map_err(|e| bad(cpuacct, e))?;
                let user = parse::parse_single(&read(cpuacct.join("cpuacct.usage_user"))?)
                    .map_err(|e| bad(cpuacct, e))?;
                let sys = parse::parse_single(&read(cpuacct.join("cpuacct.usage_sys"))?)
                    .map_err(|e| bad(cpuacct, e))?;
                *split = parse::adjust_cputime(total, user, sys, *split);
                let usage = parse::parse_single(&read(memory.join("memory.usage_in_bytes"))?)
                    .map_err(|e| bad(memory, e))?;
                let stat = parse::parse_v1_memory_stat(&read(memory.join("memory.stat"))?)
                    .map_err(|e| bad(memory, e))?;
                Ok((split.0 as f64 / 1e9, split.1 as f64 / 1e9, usage, parse::working_set(usage, &stat)))
            }
        }
    }
}

impl ProcessesSource {
    pub fn new(config: &ProcessesConfig) -> Result<ProcessesSource, ProcessesError> {
        std::fs::read_dir(&config.proc_root)
            .map_err(|source| ProcessesError::List { path: config.proc_root.clone(), source })?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let own = OwnCgroup::find(&config.own_cgroup_root, &config.proc_root);
        match &own {
            Some(own) => tracing::info!(cgroup = ?own, "Reading the agent's own container cgroup."),
            None => {
                tracing::info!(root = %config.own_cgroup_root.display(), "The agent's own cgroup is not mounted there (or does not list its pid); not read.")
            }
        }
        Ok(ProcessesSource {
            config: config.clone(),
            classifier: Classifier::default(),
            ticks_per_second: if hz > 0 { hz as f64 } else { 100.0 },
            own,
        })
    }

    fn read_pid(&self, dir: &Path) -> Result<(String, ProcTimes, Option<u64>), ProcessesError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ProcessesError::Read { path, source })
        };
        let parse_err = |name: &str, message: String| ProcessesError::Parse { path: dir.join(name), message };
        let key = cgroup_key(&read("cgroup")?).map_err(|e| parse_err("cgroup", e.to_string()))?;
        let times = parse_stat_times(&read("stat")?).map_err(|m| parse_err("stat", m))?;
        let rss = parse_status_rss(&read("status")?).map_err(|m| parse_err("status", m))?;
        Ok((key, times, rss))
    }
}

impl Source for ProcessesSource {
    fn collect(&mut self, _ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError> {
        let root = &self.config.proc_root;
        let entries =
            std::fs::read_dir(root).map_err(|source| ProcessesError::List { path: root.clone(), source })?;
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut seen = 0usize;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            seen += 1;
            if seen > self.config.max_processes {
                crate::warn_limited!(
                    "processes-cap",
                    max = self.config.max_processes,
                    "More processes than max_processes; the rest are skipped."
                );
                break;
            }
            match self.read_pid(&entry.path()) {
                Ok((key, times, rss)) => {
                    let g = groups.entry(key).or_default();
                    g.ticks_user += times.utime + times.cutime;
                    g.ticks_system += times.stime + times.cstime;
                    g.rss += rss.unwrap_or(0);
                    g.processes += 1;
                }
                // A process that exited between the listing and the read: normal.
                Err(ProcessesError::Read { source, .. }) if crate::sources::is_vanished(&source) => {}
                Err(error) => {
                    crate::agent_counters::Telemetry::inc(
                        &crate::agent_counters::Telemetry::global().source_errors,
                    );
                    crate::warn_limited!("processes-read", %error, "A process could not be read.");
                }
            }
        }
        // The own container's key, as the loop below names its resource.
        let own_key = self.own.as_ref().and_then(|_| {
            let text = std::fs::read_to_string(self.config.proc_root.join("self/cgroup")).ok()?;
            cgroup_key(&text).ok()
        });
        let f = &semconv::CONTAINER_PROCESSES;
        for (key, g) in groups {
            let (id, attributes) = resource_of(&self.classifier, &key);
            let resource = sweep.resource_mut(id, || attributes);
            let secs = |ticks: u64| Value::Double(ticks as f64 / self.ticks_per_second);
            resource.points.push(
                Point::new(&f.cpu_time, secs(g.ticks_user))
                    .with(semconv::CPU_MODE, AttrValue::constant(semconv::CPU_MODE_USER)),
            );
            resource.points.push(
                Point::new(&f.cpu_time, secs(g.ticks_system))
                    .with(semconv::CPU_MODE, AttrValue::constant(semconv::CPU_MODE_SYSTEM)),
            );
            resource.points.push(Point::new(&f.memory_rss, Value::from_u64(g.rss)));
            resource.points.push(Point::new(&f.count, Value::from_u64(g.processes)));
        }
        if let (Some(own), Some(key)) = (&mut self.own, own_key) {
            match own.read() {
                Ok((user, system, usage, working_set)) => {
                    let (id, attributes) = resource_of(&self.classifier, &key);
                    let c = &semconv::CONTAINER;
                    let resource = sweep.resource_mut(id, || attributes);
                    resource.points.push(
                        Point::new(&c.cpu_time, Value::Double(user))
                            .with(semconv::CPU_MODE, AttrValue::constant(semconv::CPU_MODE_USER)),
                    );
                    resource.points.push(
                        Point::new(&c.cpu_time, Value::Double(system))
                            .with(semconv::CPU_MODE, AttrValue::constant(semconv::CPU_MODE_SYSTEM)),
                    );
                    resource.points.push(Point::new(&c.memory_usage, Value::from_u64(usage)));
                    resource.points.push(Point::new(&c.memory_working_set, Value::from_u64(working_set)));
                }
                Err(error) => {
                    crate::agent_counters::Telemetry::inc(
                        &crate::agent_counters::Telemetry::global().source_errors,
                    );
                    crate::warn_limited!("own-cgroup", %error, "The agent's own cgroup could not be read.");
                }
            }
        }
        Ok(())
    }
}

pub struct PodNetworkSource {
    config: PodNetworkConfig,
    path: PathBuf,
    protocols: ProtocolSelection,
}

impl PodNetworkSource {
    pub fn new(config: &PodNetworkConfig) -> Result<PodNetworkSource, ProcessesError> {
        let path = config.proc_root.join("self/net/dev");
        std::fs::read_to_string(&path)
            .map_err(|source| ProcessesError::Read { path: path.clone(), source })?;
        let protocols = ProtocolSelection::new(&config.protocol_metrics);
        Ok(PodNetworkSource { config: config.clone(), path, protocols })
    }
}

impl Source for PodNetworkSource {
    fn collect(&mut self, _ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|source| ProcessesError::Read { path: self.path.clone(), source })?;
        let interfaces = parse_net_dev(&text)
            .map_err(|e| ProcessesError::Parse { path: self.path.clone(), message: e.to_string() })?;
        let uid = self.config.pod_uid.clone();
        let resource = sweep.resource_mut(ResourceId::Pod(uid.clone()), || {
            if uid.is_empty() {
                Vec::new()
            } else {
                vec![(semconv::K8S_POD_UID, AttrValue::text(&uid))]
            }
        });
        let family = &semconv::POD_NETWORK;
        for iface in
            interfaces.iter().filter(|i| !self.config.exclude_interfaces.iter().any(|g| g.matches(&i.name)))
        {
            resource.points.extend(interface_points(family, iface, None));
        }
        // The pod's own MIBs: read whole each sweep (one pod, a few files; the node view keeps
        // them open instead).
        let mut counters = ProtocolCounters::default();
        for kind in self.protocols.files() {
            let path = self.config.proc_root.join("self").join(kind.path());
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && kind.optional() => continue,
                Err(source) => return Err(ProcessesError::Read { path, source }.into()),
            };
            self.protocols
                .parse(*kind, &text, &mut counters)
                .map_err(|e| ProcessesError::Parse { path: path.clone(), message: e.to_string() })?;
        }
        self.protocols.points(&family.protocols, &counters, &mut resource.points);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn fixture(file: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/proc").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        // A shell's stat on 6.18, renamed to `a b) (c)`: fields are counted from the last `)`.
        let sh = fixture("stat");
        let renamed = sh.replacen("(sh)", "(a b) (c))", 1).replacen(" 0 0 0 0 20 ", " 250 75 12 3 20 ", 1);
        assert_eq!(
            parse_stat_times(&renamed),
            Ok(ProcTimes { utime: 250, stime: 75, cutime: 12, cstime: 3 })
        );
        assert_eq!(parse_stat_times(&sh), Ok(ProcTimes::default()));
        let negative = sh.replacen(" 0 0 0 0 20 ", " 1 2 -3 4 20 ", 1);
        assert_eq!(parse_stat_times(&negative), Ok(ProcTimes { utime: 1, stime: 2, cutime: 0, cstime: 4 }));
        for bad in ["1 (x) S 1 2", "no parens", "(x) S 1", "1 (x)", "1 (x)é 1", ""] {
            assert!(parse_stat_times(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_rss() {
        assert_eq!(parse_status_rss(&fixture("status")), Ok(Some(1684 * 1024)));
        let kthread: String =
            fixture("status").lines().filter(|l| !l.starts_with("Vm")).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse_status_rss(&kthread), Ok(None));
        assert!(parse_status_rss(&fixture("status").replace("1684 kB", "x kB")).is_err());
        assert!(parse_status_rss("VmRSS:\t12 pages\n").is_err());
    }

    #[test]
    fn cgroup_keys() {
        let v1 = format!("12:memory:/machine.slice/libpod-{ID}.scope\n0::/\n");
        assert_eq!(cgroup_key(&v1).unwrap(), format!("/machine.slice/libpod-{ID}.scope"));
        let nested = format!("0::/../cri-containerd-{ID}.scope\n");
        assert_eq!(cgroup_key(&nested).unwrap(), format!("/../cri-containerd-{ID}.scope"));
        assert_eq!(cgroup_key("0::/\n").unwrap(), "/");
        assert_eq!(cgroup_key("3:pids:/user.slice\n0::/init.scope\n").unwrap(), "/init.scope");
        assert_eq!(cgroup_key("3:pids:/user.slice\n2:cpu:/b\n").unwrap(), "/user.slice");
        assert!(cgroup_key("garbage").is_err());
        assert!(cgroup_key("").is_err());
    }

    #[test]
    fn a_processes_container_is_the_cgroup_sources_resource() {
        let classifier = Classifier::default();
        let uid = "5d7d4c6f-0e1a-4b3c-8d9e-0f1a2b3c4d5e";
        // The host's cgroup namespace: the whole path, classified as the cgroups source does.
        let path = format!("/kubepods/besteffort/pod{uid}/{ID}");
        let (id, attributes) = resource_of(&classifier, &path);
        let what = classifier.classify(&path).unwrap();
        assert_eq!(id, what.identity());
        assert_eq!(attributes, crate::resource::classified(&what));
        assert!(attributes.contains(&(semconv::K8S_POD_UID, AttrValue::text(uid))));
        assert!(attributes.contains(&(semconv::CONTAINER_RUNTIME_NAME, AttrValue::constant("containerd"))));
        // A private cgroup namespace: the id and the runtime its prefix names, no pod.
        let (id, attributes) = resource_of(&classifier, &format!("/../cri-containerd-{ID}.scope"));
        assert_eq!(id, ResourceId::Container(ID.into()));
        assert_eq!(
            attributes,
            crate::resource::unanchored_container(ID, Some(crate::model::Runtime::Containerd))
        );
        let (_, attributes) = resource_of(&classifier, &format!("/../{ID}"));
        assert_eq!(attributes, vec![(semconv::CONTAINER_ID, AttrValue::text(ID))]);
        // No id at all: the path.
        let (id, attributes) = resource_of(&classifier, "/");
        assert_eq!(id, ResourceId::Container("/".into()));
        assert_eq!(attributes, vec![(semconv::PODOMETER_CGROUP_PATH, AttrValue::text("/"))]);
    }

    #[test]
    fn own_processes_are_grouped_and_counted() {
        let mut source = ProcessesSource::new(&ProcessesConfig::default()).unwrap();
        let mut sweep = Sweep::new(std::time::SystemTime::now());
        let mut ctx = SweepContext::new(sweep.time);
        source.collect(&mut ctx, &mut sweep).unwrap();
        let total: i64 = sweep
            .resources
            .iter()
            .flat_map(|r| r.points_of("container.processes.count"))
            .map(|p| match p.value {
                Value::Int(n) => n,
                _ => 0,
            })
            .sum();
        // This test process is one of them; the kernel counts many more on any host.
        assert!(total >= 1, "no process counted");
    }

    #[test]
    fn the_sidecars_pod_network_carries_the_pods_tcp_and_udp_counters() {
        // A procfs of one process: net/dev of one interface and the 3.x-era snmp and netstat
        // fixtures; no snmp6 (IPv6 off), which leaves the IPv6 points out without an error.
        let dir = tempfile::tempdir().expect("tempdir");
        let net = dir.path().join("self/net");
        std::fs::create_dir_all(&net).expect("mkdir");
        std::fs::write(
            net.join("dev"),
            "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n  eth0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n",
        )
        .expect("dev");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/net_protocols/older-3.x");
        for f in ["snmp", "netstat"] {
            std::fs::copy(fixtures.join(f), net.join(f)).expect("copy fixture");
        }
        let config = PodNetworkConfig {
            proc_root: dir.path().to_owned(),
            pod_uid: "u1".into(),
            ..PodNetworkConfig::default()
        };
        let mut source = PodNetworkSource::new(&config).expect("source");
        let now = std::time::SystemTime::now();
        let mut sweep = Sweep::new(now);
        source.collect(&mut SweepContext::new(now), &mut sweep).expect("collect");
        let pod = sweep.resource(&ResourceId::Pod("u1".into())).expect("pod");
        let value = |name: &str| pod.points_of(name).map(|p| p.value.as_f64()).sum::<f64>();
        assert_eq!(value("k8s.pod.network.tcp.segment.retransmitted"), 227.0);
        assert_eq!(value("k8s.pod.network.tcp.reset.count"), 1003.0 + 161.0);
        assert_eq!(value("k8s.pod.network.udp.buffer_errors"), 0.0);
        assert_eq!(pod.points_of("k8s.pod.network.udp.buffer_errors").count(), 2, "IPv4 only");
        assert_eq!(pod.points_of("k8s.pod.network.tcp.listen.overflows").count(), 1);
        assert_eq!(pod.points_of("k8s.pod.network.io").count(), 2);
    }
}
