//! `cgroups`: every container's CPU, memory, block I/O, PIDs and pressure from cgroup v1, v2
//! and hybrid hosts.
//!
//! The source walks one hierarchy every `discovery_interval` to find container and pod cgroups
//! by their path, anchored where each runtime puts them ([`classify`]), keeps their control
//! files open, and on every sweep reads each file once with `pread` at offset 0 into a reused
//! buffer: for the 11 files a hybrid container reads per sweep that costs well under a third of
//! opening, reading and closing them (docs/performance.md, "Stage benchmarks"). Files missing at discovery
//! are tried again at the next one. Limits change rarely and are read every `limits_interval`.
//!
//! Each cgroup version has its own file set, which knows its files' names, opens what is
//! missing, counts its descriptors and reads itself into points: [`v1::V1Files`] (v1, and
//! hybrid with the unified hierarchy's pressure and CPU fallback) and [`v2::V2Files`]. Under
//! both, [`files`] reads one kept-open file into a [`files::FileRead`]: absent, a value, or a
//! failure that leaves out only that file's metrics; a vanished cgroup is the one outcome that
//! ends a group's sweep early.

pub mod classify;
mod files;
pub mod hierarchy;
pub mod parse;
mod v1;
mod v2;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::agent_counters::Telemetry;
use crate::fdlimit;
use crate::model::{Attributes, ContainerInfo, Resource, ResourceId, Sweep, SweepContext};
use crate::semconv::{self, CgroupFamily};
use crate::sources::{BoxError, Source};
use crate::warn_limited;
pub use classify::{Classified, Classifier, Layouts};
use files::{Opener, Out, Reader, Vanished};
pub use hierarchy::{CgroupMode, Hierarchies};
use parse::ParseError;
use v1::V1Files;
use v2::V2Files;

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
    /// Walks happen at sweeps: the first sweep at least this long after the last walk walks.
    /// Between walks, sweeps read the cgroups already known, so a new container appears at most
    /// this long plus one sweep interval after it starts (a container that lives less than
    /// that may never be seen); a removed one is noticed at once, when its files fail to read.
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
    /// the lean profile in docs/performance.md lists the cost of each): `pressure` (`*.pressure`: the
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
            reader: Reader::new(u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)),
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

    /// Chooses which of the cgroups a walk found are read: one cgroup per container id or pod
    /// uid ([`Classified::claim`]), at most `max_groups`. Cgroups in a runtime's own tree come
    /// before rootless ones, and among those, groups already read before new ones, so neither
    /// a copied id nor a flood of cgroups in a user's subtree can displace a real container,
    /// and a copied id is never reported beside the real one: the copy is left out, counted
    /// (`podometer.discovery.cgroups.dropped`, reason `duplicate_identity`) and logged.
    fn select(&mut self, mut found: Vec<(String, Classified)>) -> Vec<(String, Classified)> {
        found.sort_by_key(|(rel, what)| (what.is_rootless(), !self.groups.contains_key(rel)));
        let telemetry = Telemetry::global();
        let mut owners: HashMap<ResourceId, String> = HashMap::with_capacity(found.len());
        let mut selected: Vec<(String, Classified)> = Vec::with_capacity(found.len());
        for (rel, what) in found {
            match owners.entry(what.claim()) {
                Entry::Occupied(first) => {
                    self.stats.duplicates += 1;
                    Telemetry::inc(&telemetry.cgroups_duplicate_identity);
                    warn_limited!(
                        "cgroups_duplicate",
                        cgroup = %rel,
                        kept = %first.get(),
                        rootless = what.is_rootless(),
                        "Two cgroups claim the same container id or pod uid; reading only the first (a \
                         runtime's own tree before a user's delegated one, a known cgroup before a new one)."
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

/// Files one cgroup keeps open at most, by mode.
fn files_per_group(mode: CgroupMode) -> u64 {
    match mode {
        CgroupMode::V1 => V1Files::MAX_FILES_V1,
        CgroupMode::Hybrid => V1Files::MAX_FILES_HYBRID,
        CgroupMode::V2 => V2Files::MAX_FILES,
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

/// How early a sweep may start and still count as `discovery_interval` after the last walk: a
/// sweep's start jitters by tens of milliseconds on a busy machine, and without this a sweep
/// that started a little early put the walk off by a whole sweep interval.
const WALK_SLACK: Duration = Duration::from_millis(200);

/// Whether this sweep walks the tree: the first one does, then the first that starts
/// `interval` (less [`WALK_SLACK`]) after the last walk.
fn walk_due(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|t| now.duration_since(t) + WALK_SLACK >= interval)
}

impl Source for CgroupSource {
    fn collect(&mut self, ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError> {
        let now = Instant::now();
        let mut stats = SweepStats::default();
        let due = walk_due(self.last_discovery, now, self.config.discovery_interval);
        if due {
            stats.fd_deferred = self.discover()?;
            stats.duplicates = self.stats.duplicates;
            stats.over_cap = self.stats.over_cap;
            self.last_discovery = Some(now);
            stats.discovered = true;
        }
        let fresh_sweep = sweep.resources.is_empty();
        let limits_interval = self.config.limits_interval;
        let mut errors = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        for (rel, group) in self.groups.iter_mut() {
            let read_limits = group.limits_read.is_none_or(|t| now.duration_since(t) >= limits_interval);
            // As many points as last time: one allocation, no regrowth.
            let mut points = Vec::with_capacity(group.points_hint);
            let mut out = Out { family: group.family(), points: &mut points, errors: &mut errors };
            let outcome = group.files.read(&mut self.reader, &mut out, read_limits);
            for error in errors.drain(..) {
                let error = error.into_error(&self.hierarchies, rel);
                Telemetry::inc(&Telemetry::global().source_errors);
                warn_limited!("cgroups_read", cgroup = %rel, error = %error, "Could not read a cgroup file; its metrics are left out of this sweep.");
                stats.errors += 1;
            }
            if let Err(vanished) = outcome {
                tracing::debug!(
                    cgroup = %rel,
                    file = %vanished.path(&self.hierarchies, rel).display(),
                    "A cgroup vanished while being read."
                );
                if group.is_container() {
                    Telemetry::inc(&Telemetry::global().containers_vanished);
                }
                stats.vanished += 1;
                gone.push(rel.clone());
                continue;
            }
            if read_limits {
                group.limits_read = Some(now);
            }
            group.points_hint = points.len();
            if group.is_container() {
                stats.containers += 1;
            } else {
                stats.pods += 1;
            }
            if let Some(info) = &group.info {
                ctx.containers.push(info.clone());
            }
            if fresh_sweep {
                // Nobody else added resources: skip resource_mut's linear search per container.
                sweep.resources.push(Resource {
                    id: group.id.clone(),
                    attributes: group.attributes.clone(),
                    points,
                });
            } else {
                sweep.resource_mut(group.id.clone(), || group.attributes.clone()).points.extend(points);
            }
        }
        for rel in gone {
            self.groups.remove(&rel);
        }
        self.stats = stats;
        Ok(())
    }
}

/// A cgroup's files, by the host's cgroup version.
enum Files {
    /// v1, or hybrid (v1 plus the unified hierarchy's extras).
    V1(V1Files),
    V2(V2Files),
}

impl Files {
    fn open_missing(&mut self, o: &Opener<'_>) {
        match self {
            Files::V1(files) => files.open_missing(o),
            Files::V2(files) => files.open_missing(o),
        }
    }

    fn procs_file(&self, o: &Opener<'_>) -> PathBuf {
        match self {
            Files::V1(_) => V1Files::procs_file(o),
            Files::V2(_) => V2Files::procs_file(o),
        }
    }

    fn open_files(&self) -> u64 {
        match self {
            Files::V1(files) => files.open_files(),
            Files::V2(files) => files.open_files(),
        }
    }

    fn read(&mut self, r: &mut Reader, out: &mut Out<'_>, read_limits: bool) -> Result<(), Vanished> {
        match self {
            Files::V1(files) => files.read(r, out, read_limits),
            Files::V2(files) => files.read(r, out, read_limits),
        }
    }
}

/// A container or pod cgroup the source reads, with what its resource carries, built once at
/// discovery: a sweep clones it rather than building it again.
struct Group {
    what: Classified,
    id: ResourceId,
    attributes: Attributes,
    /// What later sources and processors learn of a container (its `cgroup.procs` looked up
    /// again at every discovery); `None` for pods, and for rootless containers, whose id and
    /// names are their user's word: no network or metadata lookup is made for them (see
    /// `classify`).
    info: Option<Arc<ContainerInfo>>,
    files: Files,
    limits_read: Option<Instant>,
    /// Points of the last sweep, to size the next sweep's vector.
    points_hint: usize,
}

impl Group {
    /// `None` when a file could not be opened for lack of descriptors: the files already opened
    /// are closed again, so that the group is retried whole at the next discovery.
    fn open(h: &Hierarchies, rel: &str, what: Classified, skip: &[SkipFiles]) -> Option<Group> {
        let files = match h.mode {
            CgroupMode::V1 | CgroupMode::Hybrid => Files::V1(V1Files::default()),
            CgroupMode::V2 => Files::V2(V2Files::default()),
        };
        let attributes = crate::resource::classified(&what);
        let info = match &what {
            Classified::Container { id, runtime, pod, rootless: None } => Some(Arc::new(ContainerInfo {
                id: id.clone(),
                runtime: *runtime,
                pod: pod.clone(),
                procs_file: PathBuf::new(),
            })),
            Classified::Container { rootless: Some(_), .. } | Classified::Pod { .. } => None,
        };
        let mut group =
            Group { id: what.identity(), what, attributes, info, files, limits_read: None, points_hint: 24 };
        group.open_missing(h, rel, skip).then_some(group)
    }

    fn is_container(&self) -> bool {
        matches!(self.what, Classified::Container { .. })
    }

    fn family(&self) -> &'static CgroupFamily {
        if self.is_container() {
            &semconv::CONTAINER
        } else {
            &semconv::POD
        }
    }

    /// Opens what the group does not hold yet and looks for its `cgroup.procs` again (crun's
    /// `container/` child may have appeared). Returns false when it ran out of descriptors
    /// (what it opened is kept; the rest is retried at the next discovery).
    fn open_missing(&mut self, h: &Hierarchies, rel: &str, skip: &[SkipFiles]) -> bool {
        let o = Opener::new(h, rel, skip);
        self.files.open_missing(&o);
        if let Some(info) = &mut self.info {
            Arc::make_mut(info).procs_file = self.files.procs_file(&o);
        }
        !o.starved()
    }

    /// How many descriptors this group holds.
    fn open_files(&self) -> u64 {
        self.files.open_files()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_is_due_first_then_once_the_interval_less_the_slack_has_passed() {
        let t = Instant::now();
        let ten = Duration::from_secs(10);
        assert!(walk_due(None, t, ten));
        assert!(!walk_due(Some(t), t + Duration::from_millis(9_500), ten));
        // A sweep 50 ms early walks: without the slack it would wait for the next sweep.
        assert!(walk_due(Some(t), t + Duration::from_millis(9_950), ten));
        assert!(walk_due(Some(t), t + Duration::from_secs(12), ten));
        // `0s`: every sweep walks.
        assert!(walk_due(Some(t), t, Duration::ZERO));
    }
}
