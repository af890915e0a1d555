//! `cgroups`: every container's CPU, memory, block I/O, PIDs and pressure from cgroup v1, v2
//! and hybrid hosts.
//!
//! The source walks one hierarchy every `discovery_interval` to find container and pod cgroups
//! by their path, anchored where each runtime puts them ([`classify`]), keeps their control
//! files open, and on every sweep reads each file once with `pread` at offset 0 into a reused
//! buffer: for the 13 files of a hybrid container that costs about a quarter of opening,
//! reading and closing them (README, "Stage benchmarks": 60 µs against 240 µs per container on
//! the 2-core CI machine). Files missing at discovery are tried again at the next one. Limits
//! change rarely and are read every `limits_interval`.
//!
//! | Metric (`container.*`, `k8s.pod.*`) | v1 file | v2 file |
//! |---|---|---|
//! | `cpu.time` {user,system} | `cpuacct.usage` split by the ratio of `cpuacct.usage_user`/`usage_sys`; else those two; else `cpuacct.stat`; hybrid without cpuacct: `unified/…/cpu.stat` | `cpu.stat` `user_usec`/`system_usec` |
//! | `cpu.throttling_data.*` | `cpu.stat` | `cpu.stat` |
//! | `memory.usage` | `memory.usage_in_bytes` | `memory.current` |
//! | `memory.working_set` | usage − `memory.stat` `total_inactive_file` | usage − `memory.stat` `inactive_file` |
//! | `memory.rss` | `memory.stat` `total_rss` | `memory.stat` `anon` |
//! | `memory.file` | `memory.stat` `total_cache` | `memory.stat` `file` |
//! | `memory.usage.limit` | `memory.limit_in_bytes` | `memory.max` |
//! | `memory.oom_kills` | `memory.oom_control` `oom_kill` | `memory.events` `oom_kill` |
//! | `disk.io`, `disk.operations` | `blkio.throttle.io_service_bytes_recursive`, `..._io_serviced_recursive` | `io.stat` |
//! | `pids.count`, `pids.limit` | `pids.current`, `pids.max` | `pids.current`, `pids.max` |
//! | `{cpu,memory,io}.pressure.stall_time` | hybrid: `unified/…/*.pressure` | `*.pressure` |

pub mod classify;
pub mod hierarchy;
pub mod parse;

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::fdlimit;
use crate::model::{AttrValue, ContainerInfo, Point, Resource, ResourceId, Sweep, SweepContext, Value};
use crate::semconv::{self, CgroupFamily};
use crate::sources::{container_attributes, is_vanished, pod_attributes, BoxError, Source};
use crate::telemetry::Telemetry;
use crate::warn_limited;
pub use classify::{Classified, Classifier, Layouts};
pub use hierarchy::{CgroupMode, Hierarchies};
use parse::ParseError;

/// Reads container cgroups.
///
/// ```yaml
/// sources:
///   cgroups:
///     root: /host/sys/fs/cgroup
///     discovery_interval: 10s
///     limits_interval: 60s
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CgroupsConfig {
    /// Where the host's cgroup filesystem is mounted; `/host/sys/fs/cgroup` in a DaemonSet.
    /// v1, v2 and hybrid are told apart from the files under it: `cgroup.controllers` at the
    /// root means v2; controller directories (`memory`, `cpuacct` or `cpu,cpuacct`, `cpu`,
    /// `blkio`, `pids`) mean v1, and hybrid when `unified/cgroup.controllers` exists too.
    /// Default: `/sys/fs/cgroup`.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// How often the cgroup tree is walked to find new containers and let go of removed ones.
    /// Between walks, sweeps read the cgroups already known, so a new container appears at most
    /// this long after it starts; a removed one is noticed at once, when its files fail to read.
    /// The first sweep always walks. `0s` walks on every sweep. Default: `10s`.
    #[serde(
        default = "default_discovery_interval",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub discovery_interval: Duration,
    /// How often the limits (`memory.limit_in_bytes` or `memory.max`, `pids.max`) are read
    /// again; in between, sweeps report the last value read. A changed limit shows up at most
    /// this late. The first sweep that sees a container always reads them. Default: `60s`.
    #[serde(default = "default_limits_interval", deserialize_with = "crate::config::duration::deserialize")]
    pub limits_interval: Duration,
    /// Groups of files not to open or read, to save what they cost the kernel every sweep (the
    /// README's lean profile lists the cost of each): `pressure` (`*.pressure`: the
    /// `*.pressure.stall_time` metrics), `block_io` (`blkio.*` or `io.stat`: `disk.io`,
    /// `disk.operations`), `memory_stat` (`memory.stat`: `memory.working_set`, `memory.rss`,
    /// `memory.file`), `throttling` (v1 `cpu.stat`: `cpu.throttling_data.*`; on v2 they come
    /// with the CPU time from the same file and stay). Dropping metrics with the filter
    /// processor saves only their encoding and export; this saves the reads. Default: none.
    #[serde(default)]
    pub skip: Vec<SkipFiles>,
    /// Where each runtime puts its cgroups; containers and pods are recognised only there (see
    /// [`Layouts`]). Default: the runtimes' own defaults.
    #[serde(default)]
    pub layouts: Layouts,
    /// At most this many container and pod cgroups are read; the rest are left out, counted
    /// (`cgroups_over_cap`) and logged once when the cap is first hit. Containers in their
    /// runtime's own tree are taken before rootless ones, so users' subtrees cannot crowd them
    /// out. Must be at least 1. Default: `4096`.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
}

/// A group of cgroup files the source can leave unread (`sources.cgroups.skip`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SkipFiles {
    Pressure,
    BlockIo,
    MemoryStat,
    Throttling,
}

fn default_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

fn default_discovery_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_limits_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_max_groups() -> usize {
    4096
}

impl CgroupsConfig {
    /// Problems as (key, reason), for the config check.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = self.layouts.validate();
        if self.max_groups == 0 {
            problems.push(("max_groups".into(), "must be at least 1".into()));
        }
        problems
    }
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        CgroupsConfig {
            root: default_root(),
            discovery_interval: default_discovery_interval(),
            limits_interval: default_limits_interval(),
            skip: Vec::new(),
            layouts: Layouts::default(),
            max_groups: default_max_groups(),
        }
    }
}

/// Errors of the cgroup source. Per-container errors are counted and logged inside a sweep; only
/// [`CgroupsError::NoHierarchy`] and a root that cannot be listed reach the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum CgroupsError {
    #[error(
        "no cgroup hierarchy under {path}: neither cgroup.controllers (v2) nor a v1 controller directory \
         (memory, cpuacct, cpu,cpuacct, cpu, blkio, pids)"
    )]
    NoHierarchy { path: PathBuf },
    #[error("invalid cgroups configuration: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    /// The cgroup was removed while being read: normal, its container stopped.
    #[error("{path} vanished")]
    Vanished { path: PathBuf },
}

/// What the latest sweep did; for tests and the agent's own logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Whether this sweep walked the tree.
    pub discovered: bool,
    pub containers: usize,
    pub pods: usize,
    /// Files that failed for a reason other than vanishing (each is also counted and logged).
    pub errors: usize,
    /// Containers and pods dropped because their cgroup disappeared.
    pub vanished: usize,
    /// Containers and pods found but not opened for lack of file descriptors (discovery sweeps).
    pub fd_deferred: usize,
    /// Cgroups left out at this sweep's discovery because another cgroup already stands for the
    /// same container or pod.
    pub duplicates: usize,
    /// Cgroups left out at this sweep's discovery because `max_groups` was reached.
    pub over_cap: usize,
}

/// The cgroup source. One per pipeline; it runs on the sweep thread.
pub struct CgroupSource {
    config: CgroupsConfig,
    classifier: Classifier,
    hierarchies: Hierarchies,
    /// Known cgroups by relative path; ordered so sweeps list resources in a stable order.
    groups: BTreeMap<String, Group>,
    last_discovery: Option<Instant>,
    reader: Reader,
    clock_ticks: u64,
    stats: SweepStats,
    /// Whether the latest discovery left cgroups unopened for lack of file descriptors; the
    /// warning is logged when this turns true, not at every discovery.
    fd_short: bool,
    /// Whether the latest discovery hit `max_groups`; logged when this turns true.
    capped: bool,
}

impl std::fmt::Debug for CgroupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupSource")
            .field("root", &self.config.root)
            .field("mode", &self.hierarchies.mode)
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl CgroupSource {
    pub fn new(config: &CgroupsConfig) -> Result<Self, CgroupsError> {
        if let Some((key, reason)) = config.validate().into_iter().next() {
            return Err(CgroupsError::Config(format!("{key}: {reason}")));
        }
        let hierarchies = Hierarchies::detect(&config.root)?;
        tracing::info!(root = %config.root.display(), mode = ?hierarchies.mode, "Found the cgroup hierarchies.");
        let per_group = files_per_group(hierarchies.mode);
        match fdlimit::current() {
            Ok(limits) => {
                let room = limits.soft.saturating_sub(fdlimit::RESERVE) / per_group;
                tracing::info!(
                    soft_limit = limits.soft,
                    hard_limit = limits.hard,
                    files_per_cgroup = per_group,
                    "The open-file limit leaves room for about {room} containers and pods."
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot tell how many containers the open-file limit allows.")
            }
        }
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(CgroupSource {
            config: config.clone(),
            classifier: Classifier::new(&config.layouts),
            hierarchies,
            groups: BTreeMap::new(),
            last_discovery: None,
            reader: Reader::new(),
            clock_ticks: u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100),
            stats: SweepStats::default(),
            fd_short: false,
            capped: false,
        })
    }

    pub fn mode(&self) -> CgroupMode {
        self.hierarchies.mode
    }

    pub fn last_sweep_stats(&self) -> SweepStats {
        self.stats
    }

    /// Walks the tree, keeps known groups (and their open files), opens new ones, drops gone ones.
    /// Returns how many were left unopened for lack of file descriptors.
    fn discover(&mut self) -> Result<usize, CgroupsError> {
        let Some(root) = self.hierarchies.discovery_root().map(Path::to_owned) else {
            return Err(CgroupsError::NoHierarchy { path: self.config.root.clone() });
        };
        self.stats.duplicates = 0;
        self.stats.over_cap = 0;
        let mut found = Vec::new();
        if let Err(source) = std::fs::read_dir(&root) {
            return Err(CgroupsError::Io { path: root, source });
        }
        let complete = walk(&self.classifier, &root, &mut String::new(), 0, &mut found);
        let found = self.select(found);
        // A walk cut short (no descriptor left to list a directory) does not prove the groups it
        // missed are gone: keep them; a removed cgroup is dropped anyway when its files fail.
        if complete {
            let live: HashSet<&str> = found.iter().map(|(rel, _)| rel.as_str()).collect();
            self.groups.retain(|rel, _| live.contains(rel.as_str()));
        }
        // Files of known groups that were missing at their discovery may exist by now.
        for (rel, group) in self.groups.iter_mut() {
            group.open_missing(&self.hierarchies, rel, &self.config.skip);
        }
        // Open new cgroups only while the open-file limit leaves room for all of a cgroup's files
        // and the reserve; the rest are retried at the next discovery (after the limit is raised
        // or other containers stopped). A group is opened whole or not at all.
        let per_group = files_per_group(self.hierarchies.mode);
        let mut budget = fdlimit::budget();
        let mut deferred = 0;
        for (rel, what) in found {
            if self.groups.contains_key(&rel) {
                continue;
            }
            // Only after an incomplete walk, which kept groups it did not see again.
            if self.groups.len() >= self.config.max_groups {
                self.stats.over_cap += 1;
                continue;
            }
            if budget.is_some_and(|b| b < per_group) {
                deferred += 1;
                continue;
            }
            let Some(group) = Group::open(&self.hierarchies, &rel, what, &self.config.skip) else {
                // EMFILE/ENFILE despite the budget (another thread opened files meanwhile, or
                // the system-wide table is full): its files were closed on the way out.
                deferred += 1;
                budget = Some(0);
                continue;
            };
            if let Some(b) = &mut budget {
                *b = b.saturating_sub(group.open_files());
            }
            tracing::debug!(cgroup = %rel, "Found a new container or pod cgroup.");
            self.groups.insert(rel, group);
        }
        self.note_fd_shortage(deferred);
        self.note_cap();
        Ok(deferred)
    }

    /// Chooses which of the cgroups a walk found are read: one cgroup per resource identity,
    /// at most `max_groups`. Cgroups in a runtime's own tree come before rootless ones, and
    /// among those, groups already read before new ones, so neither a copied id nor a flood of
    /// cgroups in a user's subtree can displace a real container.
    fn select(&mut self, mut found: Vec<(String, Classified)>) -> Vec<(String, Classified)> {
        found.sort_by_key(|(rel, what)| (what.is_rootless(), !self.groups.contains_key(rel)));
        let telemetry = Telemetry::global();
        let mut owners: HashMap<ResourceId, String> = HashMap::with_capacity(found.len());
        let mut selected: Vec<(String, Classified)> = Vec::with_capacity(found.len());
        for (rel, what) in found {
            match owners.entry(what.identity()) {
                Entry::Occupied(first) => {
                    self.stats.duplicates += 1;
                    Telemetry::inc(&telemetry.cgroups_duplicate_identity);
                    warn_limited!(
                        "cgroups_duplicate",
                        cgroup = %rel,
                        kept = %first.get(),
                        "Two cgroups claim the same container or pod; reading only the first (a runtime's \
                         own tree before a user's, a known cgroup before a new one)."
                    );
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert(rel.clone());
                }
            }
            if selected.len() >= self.config.max_groups {
                self.stats.over_cap += 1;
                continue;
            }
            selected.push((rel, what));
        }
        selected
    }

    /// Counts cgroups left out by `max_groups` and says so once, when the cap is first hit.
    fn note_cap(&mut self) {
        let over = self.stats.over_cap;
        if over > 0 {
            Telemetry::global().cgroups_over_cap.fetch_add(over as u64, std::sync::atomic::Ordering::Relaxed);
            if !self.capped {
                tracing::warn!(
                    max_groups = self.config.max_groups,
                    left_out = over,
                    "More container and pod cgroups than sources.cgroups.max_groups: {over} are not read \
                     (rootless ones first). Raise max_groups if the node really runs that many."
                );
            }
            self.capped = true;
        } else if self.capped {
            tracing::info!("Every container and pod cgroup fits in max_groups again.");
            self.capped = false;
        }
    }

    /// Counts cgroups left unopened and says so once per shortage, not at every discovery.
    fn note_fd_shortage(&mut self, deferred: usize) {
        let telemetry = Telemetry::global();
        if deferred > 0 {
            telemetry.fd_exhausted.fetch_add(deferred as u64, std::sync::atomic::Ordering::Relaxed);
            if !self.fd_short {
                let limits = fdlimit::current().ok();
                tracing::warn!(
                    unread = deferred,
                    read = self.groups.len(),
                    soft_limit = limits.map(|l| l.soft),
                    hard_limit = limits.map(|l| l.hard),
                    "Out of file descriptors: {deferred} container and pod cgroups are not read. Retrying at \
                     every discovery; raise the open-file limit (ulimit -n, LimitNOFILE, the runtime's \
                     nofile ulimit) to read them all."
                );
            }
            self.fd_short = true;
        } else if self.fd_short {
            tracing::info!(
                read = self.groups.len(),
                unread_total = telemetry.fd_exhausted.load(std::sync::atomic::Ordering::Relaxed),
                "Every container and pod cgroup has its files open again."
            );
            self.fd_short = false;
        }
    }
}

/// Deep enough for every known layout (kind nests the kubelet's tree a few levels down), shallow
/// enough to bound a walk of an odd tree.
const MAX_DEPTH: usize = 10;

/// Files one cgroup keeps open at most, by mode ([`Group::open`]): v1 has 12 (cpuacct 3, cpu 1,
/// memory 4, blkio 2, pids 2), hybrid adds the 3 pressure files of `unified`, v2 has 11.
fn files_per_group(mode: CgroupMode) -> u64 {
    match mode {
        CgroupMode::V1 => 12,
        CgroupMode::Hybrid => 15,
        CgroupMode::V2 => 11,
    }
}

/// Returns false when a directory could not be listed for a reason other than being gone.
fn walk(
    classifier: &Classifier,
    root: &Path,
    rel: &mut String,
    depth: usize,
    out: &mut Vec<(String, Classified)>,
) -> bool {
    let dir = if rel.is_empty() { root.to_owned() } else { root.join(&*rel) };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        // A directory removed while walking is a container that stopped: nothing to report.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(_) => return false,
    };
    let mut complete = true;
    for entry in entries.flatten() {
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let len = rel.len();
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(name);
        match classifier.classify(rel) {
            // A container's sub-cgroups belong to it; its own files already count them.
            Some(what @ Classified::Container { .. }) => out.push((rel.clone(), what)),
            Some(what @ Classified::Pod { .. }) => {
                out.push((rel.clone(), what));
                complete &= walk(classifier, root, rel, depth + 1, out);
            }
            None if depth + 1 < MAX_DEPTH => complete &= walk(classifier, root, rel, depth + 1, out),
            None => {}
        }
        rel.truncate(len);
    }
    complete
}

impl Source for CgroupSource {
    fn collect(&mut self, ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError> {
        let now = Instant::now();
        let mut stats = SweepStats::default();
        let due = self.last_discovery.is_none_or(|t| now.duration_since(t) >= self.config.discovery_interval);
        if due {
            stats.fd_deferred = self.discover()?;
            stats.duplicates = self.stats.duplicates;
            stats.over_cap = self.stats.over_cap;
            self.last_discovery = Some(now);
            stats.discovered = true;
        }
        let fresh_sweep = sweep.resources.is_empty();
        let limits_interval = self.config.limits_interval;
        let clock_ticks = self.clock_ticks;
        let mut gone: Vec<String> = Vec::new();
        for (rel, group) in self.groups.iter_mut() {
            let read_limits = group.limits_read.is_none_or(|t| now.duration_since(t) >= limits_interval);
            let family = match group.what {
                Classified::Container { .. } => &semconv::CONTAINER,
                Classified::Pod { .. } => &semconv::POD,
            };
            let mut points = Vec::with_capacity(24);
            let mut errors = Vec::new();
            let outcome =
                group.read(&mut self.reader, family, clock_ticks, read_limits, &mut points, &mut errors);
            for error in &errors {
                Telemetry::inc(&Telemetry::global().source_errors);
                warn_limited!("cgroups_read", cgroup = %rel, error = %error, "Could not read a cgroup file; its metrics are left out of this sweep.");
            }
            stats.errors += errors.len();
            if let Err(vanished) = outcome {
                tracing::debug!(cgroup = %rel, file = %vanished.display(), "A cgroup vanished while being read.");
                if matches!(group.what, Classified::Container { .. }) {
                    Telemetry::inc(&Telemetry::global().containers_vanished);
                }
                stats.vanished += 1;
                gone.push(rel.clone());
                continue;
            }
            if read_limits {
                group.limits_read = Some(now);
            }
            let (id, attributes) = match &group.what {
                Classified::Container { id, runtime, pod, rootless } => {
                    stats.containers += 1;
                    // A rootless container's id and names are its user's word: no network or
                    // metadata lookup is made for it (see `classify`).
                    if rootless.is_none() {
                        ctx.containers.push(ContainerInfo {
                            id: id.clone(),
                            runtime: *runtime,
                            pod: pod.clone(),
                            procs_file: group.procs_file.clone(),
                        });
                    }
                    let mut attributes = container_attributes(id, *runtime, pod.as_ref());
                    if let Some(uid) = rootless {
                        attributes.push((semconv::PODOMETER_CONTAINER_ROOTLESS, AttrValue::Bool(true)));
                        attributes.push((semconv::USER_ID, AttrValue::from(uid.to_string())));
                    }
                    (group.what.identity(), attributes)
                }
                Classified::Pod { uid, qos } => {
                    stats.pods += 1;
                    (ResourceId::Pod(uid.clone()), pod_attributes(uid, qos))
                }
            };
            if fresh_sweep {
                // Nobody else added resources: skip resource_mut's linear search per container.
                sweep.resources.push(Resource { id, attributes, points });
            } else {
                sweep.resource_mut(id, || attributes).points.extend(points);
            }
        }
        for rel in gone {
            self.groups.remove(&rel);
        }
        self.stats = stats;
        Ok(())
    }
}

/// An open control file and its path, for error messages.
struct Handle {
    file: File,
    path: PathBuf,
}

impl Handle {
    /// `None` when the file does not exist: the controller is not mounted or the kernel lacks it.
    /// Running out of descriptors sets `starved` instead of logging: the source says it once.
    fn open(dir: Option<&Path>, name: &str, starved: &Cell<bool>) -> Option<Handle> {
        let path = dir?.join(name);
        match File::open(&path) {
            Ok(file) => Some(Handle { file, path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if fdlimit::is_exhausted(&e) => {
                starved.set(true);
                None
            }
            Err(e) => {
                Telemetry::inc(&Telemetry::global().source_errors);
                warn_limited!("cgroups_open", path = %path.display(), error = %e, "Could not open a cgroup file; its metrics are left out.");
                None
            }
        }
    }
}

/// The sweep's read buffers, reused for every file.
struct Reader {
    buf: Vec<u8>,
    second: Vec<u8>,
}

impl Reader {
    fn new() -> Reader {
        Reader { buf: vec![0; 16 * 1024], second: vec![0; 256] }
    }
}

/// Reads a whole kept-open file from offset 0, growing `buf` as needed.
fn read_into<'b>(handle: &Option<Handle>, buf: &'b mut Vec<u8>) -> Result<Option<&'b str>, CgroupsError> {
    let Some(h) = handle else { return Ok(None) };
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match h.file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                // cgroup files are generated whole on each read from offset 0; a short read is
                // the end, and skipping the extra read that would return 0 saves a syscall.
                if len < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_vanished(&e) => return Err(CgroupsError::Vanished { path: h.path.clone() }),
            // PSI switched off for this cgroup (`cgroup.pressure` 0) or the whole kernel.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(None),
            Err(e) => return Err(CgroupsError::Io { path: h.path.clone(), source: e }),
        }
    }
    std::str::from_utf8(&buf[..len])
        .map(Some)
        .map_err(|_| CgroupsError::Parse { path: h.path.clone(), source: ParseError::NotText })
}

fn parsed<T>(handle: &Option<Handle>, result: Result<T, ParseError>) -> Result<T, CgroupsError> {
    result.map_err(|source| CgroupsError::Parse {
        path: handle.as_ref().map(|h| h.path.clone()).unwrap_or_default(),
        source,
    })
}

/// Reads a kept-open file and parses it. `Ok(None)`: this group has no such file. The outer
/// `Err` is the cgroup vanishing, which ends the whole group; the inner one is a parse failure
/// that leaves out only this file's metrics.
fn read_parsed<T>(
    handle: &Option<Handle>,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<Result<T, CgroupsError>>, CgroupsError> {
    Ok(read_into(handle, buf)?.map(|text| parsed(handle, parse(text))))
}

/// The first per-file failure of a group: the group's other files are still read and emitted,
/// and this one error is reported for it.
#[derive(Default)]
struct FirstError(Option<CgroupsError>);

impl FirstError {
    /// The parsed value, or `None` after keeping its error (when it is the first).
    fn keep<T>(&mut self, result: Option<Result<T, CgroupsError>>) -> Option<T> {
        match result {
            Some(Ok(value)) => Some(value),
            Some(Err(e)) => {
                self.0.get_or_insert(e);
                None
            }
            None => None,
        }
    }

    fn into_result(self) -> Result<(), CgroupsError> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Where CPU time comes from, best first.
enum CpuTimeFiles {
    /// v1 `cpuacct.usage` (exact total) split by the ratio of `cpuacct.usage_user` and
    /// `cpuacct.usage_sys` (tick samples), nanoseconds; `split` is the last split reported.
    UsageSplit {
        total: Option<Handle>,
        user: Option<Handle>,
        sys: Option<Handle>,
        split: (u64, u64),
    },
    /// v1 `cpuacct.usage_user` and `cpuacct.usage_sys` without `cpuacct.usage`, nanoseconds.
    UsagePair(Option<Handle>, Option<Handle>),
    /// v1 `cpuacct.stat`, USER_HZ ticks.
    AcctStat(Option<Handle>),
    /// v2 `cpu.stat`, microseconds; also throttling when the cpu controller is enabled.
    V2Stat(Option<Handle>),
    Missing,
}

struct Group {
    what: Classified,
    procs_file: PathBuf,
    cpu_time: CpuTimeFiles,
    /// v1 `cpu.stat` (cpu controller).
    throttling: Option<Handle>,
    v2_memory: bool,
    memory_usage: Option<Handle>,
    memory_stat: Option<Handle>,
    memory_limit: Option<Handle>,
    oom: Option<Handle>,
    /// v2 `io.stat`, or v1 bytes and operations files.
    io_stat: Option<Handle>,
    blkio_bytes: Option<Handle>,
    blkio_ops: Option<Handle>,
    pids_current: Option<Handle>,
    pids_max: Option<Handle>,
    pressure: [Option<Handle>; 3],
    limits_read: Option<Instant>,
    memory_limit_value: Option<u64>,
    pids_limit_value: Option<u64>,
}

impl Group {
    /// `None` when a file could not be opened for lack of descriptors: the files already opened
    /// are closed again, so that the group is retried whole at the next discovery.
    fn open(h: &Hierarchies, rel: &str, what: Classified, skip: &[SkipFiles]) -> Option<Group> {
        let mut group = Group {
            what,
            procs_file: PathBuf::new(),
            cpu_time: CpuTimeFiles::Missing,
            throttling: None,
            v2_memory: h.mode == CgroupMode::V2,
            memory_usage: None,
            memory_stat: None,
            memory_limit: None,
            oom: None,
            io_stat: None,
            blkio_bytes: None,
            blkio_ops: None,
            pids_current: None,
            pids_max: None,
            pressure: [None, None, None],
            limits_read: None,
            memory_limit_value: None,
            pids_limit_value: None,
        };
        group.open_missing(h, rel, skip).then_some(group)
    }

    /// Opens every file this group does not hold yet: all of them at discovery, then, at each
    /// later discovery, what was missing, since runtimes create a container's controller
    /// directories (and `unified/`, and crun its `container/` child) one after the other, and a
    /// controller's files appear only once it is enabled. Costs a failed `open` per missing
    /// file per discovery, nothing per sweep. Returns false when it ran out of descriptors (what
    /// it opened is kept; the rest is retried at the next discovery).
    fn open_missing(&mut self, h: &Hierarchies, rel: &str, skip: &[SkipFiles]) -> bool {
        let in_dir = |base: &Option<PathBuf>| base.as_ref().map(|b| b.join(rel));
        let unified = in_dir(&h.unified);
        let v2 = h.mode == CgroupMode::V2;
        let starved = Cell::new(false);
        let fill = |slot: &mut Option<Handle>, dir: &Option<PathBuf>, name: &str| {
            if slot.is_none() && !starved.get() {
                *slot = Handle::open(dir.as_deref(), name, &starved);
            }
        };
        let wanted = |what: SkipFiles| !skip.contains(&what);
        let (memory, cpuacct, cpu, blkio, pids) = if v2 {
            (unified.clone(), None, unified.clone(), unified.clone(), unified.clone())
        } else {
            (in_dir(&h.memory), in_dir(&h.cpuacct), in_dir(&h.cpu), in_dir(&h.blkio), in_dir(&h.pids))
        };
        let cpu_time = std::mem::replace(&mut self.cpu_time, CpuTimeFiles::Missing);
        self.cpu_time = if v2 {
            let mut stat = match cpu_time {
                CpuTimeFiles::V2Stat(stat) => stat,
                _ => None,
            };
            fill(&mut stat, &unified, "cpu.stat");
            CpuTimeFiles::V2Stat(stat)
        } else {
            match cpu_time {
                // The best source is kept; anything less is tried for better again.
                best @ CpuTimeFiles::UsageSplit { .. } => best,
                lesser => {
                    let (mut total, mut user, mut sys) = (None, None, None);
                    fill(&mut total, &cpuacct, "cpuacct.usage");
                    fill(&mut user, &cpuacct, "cpuacct.usage_user");
                    fill(&mut sys, &cpuacct, "cpuacct.usage_sys");
                    if user.is_some() && sys.is_some() && total.is_some() {
                        CpuTimeFiles::UsageSplit { total, user, sys, split: (0, 0) }
                    } else if user.is_some() && sys.is_some() {
                        CpuTimeFiles::UsagePair(user, sys)
                    } else {
                        match lesser {
                            CpuTimeFiles::AcctStat(Some(stat)) => CpuTimeFiles::AcctStat(Some(stat)),
                            CpuTimeFiles::V2Stat(Some(stat)) => CpuTimeFiles::V2Stat(Some(stat)),
                            _ => {
                                let mut stat = None;
                                fill(&mut stat, &cpuacct, "cpuacct.stat");
                                if stat.is_some() {
                                    CpuTimeFiles::AcctStat(stat)
                                } else {
                                    // Hybrid without cpuacct: the unified hierarchy's core
                                    // cpu.stat still has the times.
                                    fill(&mut stat, &unified, "cpu.stat");
                                    if stat.is_some() {
                                        CpuTimeFiles::V2Stat(stat)
                                    } else {
                                        CpuTimeFiles::Missing
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        let cond = |what: SkipFiles, dir: &Option<PathBuf>| if wanted(what) { dir.clone() } else { None };
        if !v2 {
            fill(&mut self.throttling, &cond(SkipFiles::Throttling, &cpu), "cpu.stat");
        }
        fill(&mut self.memory_usage, &memory, if v2 { "memory.current" } else { "memory.usage_in_bytes" });
        fill(&mut self.memory_stat, &cond(SkipFiles::MemoryStat, &memory), "memory.stat");
        fill(&mut self.memory_limit, &memory, if v2 { "memory.max" } else { "memory.limit_in_bytes" });
        fill(&mut self.oom, &memory, if v2 { "memory.events" } else { "memory.oom_control" });
        let io = cond(SkipFiles::BlockIo, &blkio);
        if v2 {
            fill(&mut self.io_stat, &io, "io.stat");
        } else {
            fill(&mut self.blkio_bytes, &io, "blkio.throttle.io_service_bytes_recursive");
            fill(&mut self.blkio_ops, &io, "blkio.throttle.io_serviced_recursive");
        }
        fill(&mut self.pids_current, &pids, "pids.current");
        fill(&mut self.pids_max, &pids, "pids.max");
        let pressure = cond(SkipFiles::Pressure, &unified);
        for (slot, name) in self.pressure.iter_mut().zip(["cpu.pressure", "memory.pressure", "io.pressure"]) {
            fill(slot, &pressure, name);
        }
        self.procs_file = [&memory, &pids, &cpuacct, &unified]
            .into_iter()
            .flatten()
            .find(|d| d.is_dir())
            .or_else(|| [&memory, &pids, &cpuacct, &unified].into_iter().flatten().next())
            .map(|d| {
                // crun, on v2, moves a container's processes into a `container` child when the
                // container runs systemd; the parent's cgroup.procs is then empty.
                let nested = d.join("container");
                if v2 && nested.join("cgroup.procs").is_file() {
                    nested.join("cgroup.procs")
                } else {
                    d.join("cgroup.procs")
                }
            })
            .unwrap_or_default();
        !starved.get()
    }

    /// How many descriptors this group holds.
    fn open_files(&self) -> u64 {
        let cpu = match &self.cpu_time {
            CpuTimeFiles::UsageSplit { total, user, sys, .. } => {
                [total, user, sys].iter().filter(|h| h.is_some()).count()
            }
            CpuTimeFiles::UsagePair(u, s) => [u, s].iter().filter(|h| h.is_some()).count(),
            CpuTimeFiles::AcctStat(h) | CpuTimeFiles::V2Stat(h) => usize::from(h.is_some()),
            CpuTimeFiles::Missing => 0,
        };
        let others = [
            &self.throttling,
            &self.memory_usage,
            &self.memory_stat,
            &self.memory_limit,
            &self.oom,
            &self.io_stat,
            &self.blkio_bytes,
            &self.blkio_ops,
            &self.pids_current,
            &self.pids_max,
        ];
        let pressure = self.pressure.iter().filter(|h| h.is_some()).count();
        (cpu + others.iter().filter(|h| h.is_some()).count() + pressure) as u64
    }

    /// Reads every file once. `Err(path)` when the cgroup vanished; other failures go to
    /// `errors` and leave out only the metrics of the failing file.
    fn read(
        &mut self,
        reader: &mut Reader,
        f: &'static CgroupFamily,
        clock_ticks: u64,
        read_limits: bool,
        points: &mut Vec<Point>,
        errors: &mut Vec<CgroupsError>,
    ) -> Result<(), PathBuf> {
        let steps = [
            self.read_cpu(reader, f, clock_ticks, points),
            self.read_memory(reader, f, read_limits, points),
            self.read_io(reader, f, points),
            self.read_pids(reader, f, read_limits, points),
            self.read_pressure(reader, f, points),
        ];
        for step in steps {
            match step {
                Ok(()) => {}
                Err(CgroupsError::Vanished { path }) => return Err(path),
                Err(e) => errors.push(e),
            }
        }
        Ok(())
    }

    fn read_cpu(
        &mut self,
        r: &mut Reader,
        f: &'static CgroupFamily,
        clock_ticks: u64,
        points: &mut Vec<Point>,
    ) -> Result<(), CgroupsError> {
        let mut errors = FirstError::default();
        let time = match &mut self.cpu_time {
            CpuTimeFiles::UsageSplit { total, user, sys, split } => {
                let total_ns = read_into(total, &mut r.buf)?.map(|t| parsed(total, parse::parse_single(t)));
                match (total_ns, read_into(user, &mut r.buf)?, read_into(sys, &mut r.second)?) {
                    (Some(Ok(total_ns)), Some(u), Some(s)) => Some(
                        parsed(user, parse::parse_single(u))
                            .and_then(|u| parsed(sys, parse::parse_single(s)).map(|s| (u, s)))
                            .map(|(u, s)| {
                                *split = parse::adjust_cputime(total_ns, u, s, *split);
                                parse::CpuTime { user: split.0 as f64 / 1e9, system: split.1 as f64 / 1e9 }
                            }),
                    ),
                    (Some(Err(e)), _, _) => Some(Err(e)),
                    _ => None,
                }
            }
            CpuTimeFiles::UsagePair(user, sys) => {
                match (read_into(user, &mut r.buf)?, read_into(sys, &mut r.second)?) {
                    (Some(u), Some(s)) => Some(parsed(user, parse::parse_cpuacct_usage_pair(u, s))),
                    _ => None,
                }
            }
            CpuTimeFiles::AcctStat(stat) => {
                read_into(stat, &mut r.buf)?.map(|t| parsed(stat, parse::parse_cpuacct_stat(t, clock_ticks)))
            }
            CpuTimeFiles::V2Stat(stat) => match read_into(stat, &mut r.buf)? {
                Some(t) => match parsed(stat, parse::parse_v2_cpu_stat(t)) {
                    Ok(s) => {
                        if let Some(th) = s.throttling {
                            push_throttling(f, th, points);
                        }
                        Some(Ok(s.time))
                    }
                    Err(e) => Some(Err(e)),
                },
                None => None,
            },
            CpuTimeFiles::Missing => None,
        };
        if let Some(t) = errors.keep(time) {
            points.push(
                Point::new(&f.cpu_time, Value::Double(t.user))
                    .with(semconv::CPU_MODE, semconv::CPU_MODE_USER),
            );
            points.push(
                Point::new(&f.cpu_time, Value::Double(t.system))
                    .with(semconv::CPU_MODE, semconv::CPU_MODE_SYSTEM),
            );
        }
        if let Some(th) = errors.keep(read_parsed(&self.throttling, &mut r.buf, parse::parse_v1_cpu_stat)?) {
            push_throttling(f, th, points);
        }
        errors.into_result()
    }

    fn read_memory(
        &mut self,
        r: &mut Reader,
        f: &'static CgroupFamily,
        read_limits: bool,
        points: &mut Vec<Point>,
    ) -> Result<(), CgroupsError> {
        let mut errors = FirstError::default();
        let usage = errors.keep(read_parsed(&self.memory_usage, &mut r.buf, parse::parse_single)?);
        if let Some(usage) = usage {
            points.push(Point::new(&f.memory_usage, Value::from_u64(usage)));
        }
        let v2 = self.v2_memory;
        let stat = read_parsed(&self.memory_stat, &mut r.buf, |t| {
            if v2 {
                parse::parse_v2_memory_stat(t)
            } else {
                parse::parse_v1_memory_stat(t)
            }
        })?;
        if let Some(stat) = errors.keep(stat) {
            if let Some(usage) = usage {
                points.push(Point::new(
                    &f.memory_working_set,
                    Value::from_u64(parse::working_set(usage, &stat)),
                ));
            }
            points.push(Point::new(&f.memory_rss, Value::from_u64(stat.rss)));
            points.push(Point::new(&f.memory_file, Value::from_u64(stat.file)));
        }
        if read_limits {
            let limit = read_parsed(&self.memory_limit, &mut r.buf, |t| {
                if v2 {
                    parse::parse_max_or_number(t)
                } else {
                    parse::parse_v1_memory_limit(t)
                }
            })?;
            self.memory_limit_value = errors.keep(limit).flatten();
        }
        if let Some(v) = self.memory_limit_value {
            points.push(Point::new(&f.memory_limit, Value::from_u64(v)));
        }
        if let Some(v) = errors.keep(read_parsed(&self.oom, &mut r.buf, parse::parse_oom_kills)?) {
            points.push(Point::new(&f.memory_oom_kills, Value::from_u64(v)));
        }
        errors.into_result()
    }

    fn read_io(
        &self,
        r: &mut Reader,
        f: &'static CgroupFamily,
        points: &mut Vec<Point>,
    ) -> Result<(), CgroupsError> {
        let mut errors = FirstError::default();
        if let Some(stat) = errors.keep(read_parsed(&self.io_stat, &mut r.buf, parse::parse_v2_io_stat)?) {
            push_device_io(&f.disk_io, &stat.bytes, points);
            push_device_io(&f.disk_operations, &stat.operations, points);
        }
        for (handle, metric) in [(&self.blkio_bytes, &f.disk_io), (&self.blkio_ops, &f.disk_operations)] {
            if let Some(devices) = errors.keep(read_parsed(handle, &mut r.buf, parse::parse_v1_blkio)?) {
                push_device_io(metric, &devices, points);
            }
        }
        errors.into_result()
    }

    fn read_pids(
        &mut self,
        r: &mut Reader,
        f: &'static CgroupFamily,
        read_limits: bool,
        points: &mut Vec<Point>,
    ) -> Result<(), CgroupsError> {
        let mut errors = FirstError::default();
        if let Some(v) = errors.keep(read_parsed(&self.pids_current, &mut r.buf, parse::parse_single)?) {
            points.push(Point::new(&f.pids_count, Value::from_u64(v)));
        }
        if read_limits {
            let limit = read_parsed(&self.pids_max, &mut r.buf, parse::parse_max_or_number)?;
            self.pids_limit_value = errors.keep(limit).flatten();
        }
        if let Some(v) = self.pids_limit_value {
            points.push(Point::new(&f.pids_limit, Value::from_u64(v)));
        }
        errors.into_result()
    }

    fn read_pressure(
        &self,
        r: &mut Reader,
        f: &'static CgroupFamily,
        points: &mut Vec<Point>,
    ) -> Result<(), CgroupsError> {
        let mut errors = FirstError::default();
        for (handle, metric) in
            self.pressure.iter().zip([&f.cpu_pressure, &f.memory_pressure, &f.io_pressure])
        {
            if let Some(p) = errors.keep(read_parsed(handle, &mut r.buf, parse::parse_pressure)?) {
                points.push(
                    Point::new(metric, Value::Double(p.some)).with(semconv::PRESSURE_STALL_TYPE, "some"),
                );
                if let Some(full) = p.full {
                    points.push(
                        Point::new(metric, Value::Double(full)).with(semconv::PRESSURE_STALL_TYPE, "full"),
                    );
                }
            }
        }
        errors.into_result()
    }
}

fn push_throttling(f: &'static CgroupFamily, th: parse::Throttling, points: &mut Vec<Point>) {
    points.push(Point::new(&f.cpu_throttling_periods, Value::from_u64(th.periods)));
    points.push(Point::new(&f.cpu_throttling_throttled_periods, Value::from_u64(th.throttled_periods)));
    points.push(Point::new(&f.cpu_throttling_throttled_time, Value::Double(th.throttled_time)));
}

fn push_device_io(
    metric: &'static crate::model::MetricDesc,
    devices: &[parse::DeviceIo],
    points: &mut Vec<Point>,
) {
    for d in devices {
        for (direction, value) in [(semconv::DIRECTION_READ, d.read), (semconv::DIRECTION_WRITE, d.write)] {
            points.push(
                Point::new(metric, Value::from_u64(value))
                    .with(semconv::DISK_IO_DIRECTION, direction)
                    .with(semconv::SYSTEM_DEVICE, d.device.as_str()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_into_grows_the_buffer_for_large_files_and_rereads_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.stat");
        let text: String = (0..3000).map(|i| format!("key_{i} {i}\n")).collect();
        assert!(text.len() > 16 * 1024);
        std::fs::write(&path, &text).expect("write");
        let handle = Handle::open(Some(dir.path()), "memory.stat", &Cell::new(false));
        let mut buf = vec![0; 16 * 1024];
        assert_eq!(read_into(&handle, &mut buf).expect("read"), Some(text.as_str()));
        // Same file again: pread at offset 0 sees it whole, not from where the last read ended.
        std::fs::write(&path, "short 1\n").expect("rewrite");
        assert_eq!(read_into(&handle, &mut buf).expect("read"), Some("short 1\n"));
    }

    #[test]
    fn a_missing_file_is_none_and_not_text_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut buf = vec![0; 64];
        assert!(Handle::open(Some(dir.path()), "cpu.pressure", &Cell::new(false)).is_none());
        assert_eq!(read_into(&None, &mut buf).expect("missing is fine"), None);
        std::fs::write(dir.path().join("pids.current"), [0xff, 0xfe, b'\n']).expect("write");
        let handle = Handle::open(Some(dir.path()), "pids.current", &Cell::new(false));
        let err = read_into(&handle, &mut buf).expect_err("not UTF-8");
        assert!(err.to_string().contains("pids.current"), "{err}");
    }
}
