//! Which network namespace a container is in: the oldest live process of each container,
//! cached with the identity of its `<proc_root>/<pid>` directory and its namespace, so that a
//! known container costs one `stat` per sweep (see [`ProcIdent`]).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::procfs::{parse_procs, parse_stat_starttime};
use super::NetnsError;
use crate::model::{ContainerInfo, PodRef};

/// Identity of a network namespace: device and inode of the nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct NsKey {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

/// The oldest live process of a container, and when it started (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CachedPid {
    pub(super) pid: u32,
    pub(super) start: u64,
}

/// Device and inode of `<proc_root>/<pid>`: procfs makes this inode for one process (it holds
/// that process's `struct pid`) and never hands it to another, since the directory's dentry is
/// dropped once its process is reaped. The same identity later is the same process, whatever
/// became of the pid's number; a new identity is not proof of a new process (procfs may evict
/// an idle inode and make another), so it sends the check back to the start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcIdent {
    dev: u64,
    ino: u64,
}

/// What is known of a container: its oldest live process, that process's `<proc_root>/<pid>`
/// identity (taken before its start time was read) and its namespace.
#[derive(Debug, Clone, Copy)]
struct Located {
    pid: CachedPid,
    ident: ProcIdent,
    ns: NsKey,
}

/// Each container's oldest live process and namespace, by container id.
pub(super) struct PidCache {
    proc_root: PathBuf,
    entries: HashMap<String, Located>,
}

impl PidCache {
    pub(super) fn new(proc_root: PathBuf) -> PidCache {
        PidCache { proc_root, entries: HashMap::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The cached process and namespace of a container, unchecked.
    pub(super) fn cached(&self, id: &str) -> Option<(CachedPid, NsKey)> {
        self.entries.get(id).map(|l| (l.pid, l.ns))
    }

    /// Forgets the containers `keep` says no to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|id, _| keep(id));
    }

    /// The container's oldest live process and its namespace; `Ok(None)` when it has no live
    /// process left.
    pub(super) fn locate(&mut self, c: &ContainerInfo) -> Result<Option<(CachedPid, NsKey)>, NetnsError> {
        // The same process is in the same namespace: processes of a container do not leave
        // theirs (a `setns` of its oldest process would go unseen until it exits). So a known
        // container costs one `stat` of `<proc_root>/<pid>` (see `ProcIdent`): no read of its
        // `stat` file (five syscalls and the kernel formatting fifty fields), no `stat` of
        // `ns/net`.
        if let Some(Located { pid: cached, ident, ns: key }) = self.entries.get(&c.id).copied() {
            let now = proc_ident(&self.proc_root, cached.pid).ok();
            if now == Some(ident) {
                return Ok(Some((cached, key)));
            }
            // Another inode for the same process (procfs evicted the old one): the start time
            // decides, as it did before the inode was known. The identity was taken first, so
            // a start time that still matches proves it is this process's.
            if let Some(now) = now {
                if start_time(&self.proc_root, cached.pid).ok() == Some(cached.start) {
                    self.entries.insert(c.id.clone(), Located { pid: cached, ident: now, ns: key });
                    return Ok(Some((cached, key)));
                }
            }
            self.entries.remove(&c.id);
        }
        let text = std::fs::read_to_string(&c.procs_file)
            .map_err(|source| NetnsError::Read { path: c.procs_file.clone(), source })?;
        let pids =
            parse_procs(&text).map_err(|source| NetnsError::Parse { path: c.procs_file.clone(), source })?;
        // Pids that exit meanwhile are skipped quietly; any other failure (no CAP_SYS_PTRACE
        // for ns/net, say) is reported if no pid works, rather than passing for "no process".
        let mut failure: Option<NetnsError> = None;
        let mut note = |e: NetnsError| {
            if !e.is_vanished() {
                failure = Some(e);
            }
        };
        let mut live: Vec<(CachedPid, ProcIdent)> = Vec::with_capacity(pids.len());
        for pid in pids {
            // The identity before the start time: if the pid is reused in between, the start
            // time will not match next sweep's check, and the cache is dropped then.
            match proc_ident(&self.proc_root, pid)
                .and_then(|ident| Ok((ident, start_time(&self.proc_root, pid)?)))
            {
                Ok((ident, start)) => live.push((CachedPid { pid, start }, ident)),
                Err(e) => note(e),
            }
        }
        live.sort_by_key(|(p, _)| (p.start, p.pid));
        for (candidate, ident) in live {
            // A zombie still has a stat file but no namespace: try the next one.
            match ns_key(&self.proc_root, candidate.pid) {
                Ok(key) => {
                    self.entries.insert(c.id.clone(), Located { pid: candidate, ident, ns: key });
                    return Ok(Some((candidate, key)));
                }
                Err(e) => note(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// The Kubernetes pods (uid) and namespaces where the oldest process known among the pod's
    /// members cached there is still the process located (one `stat`, see [`ProcIdent`]). The
    /// pod's other members cached in that namespace are taken as they are, without a check each:
    /// a pod's containers all live in its sandbox's namespace, and their series go to the pod
    /// whichever member is read through. That member is the one checked here, since it is
    /// the one [`super::owner::choose_owner`] picks among them; another member is read through only after a
    /// failed read, and [`NetnsSource::read_counters`] checks its namespace then. A replaced
    /// sandbox has a new namespace and new containers, located afresh; if the checked process
    /// is gone, every member of the pod there is located on its own, as other containers are.
    /// At 100 containers in pods of 3: 44 `statx` per sweep instead of 110 (docs/performance.md,
    /// "Performance").
    pub(super) fn vouched_pods<'c>(&self, containers: &'c [Arc<ContainerInfo>]) -> HashSet<(&'c str, NsKey)> {
        let mut oldest: HashMap<(&'c str, NsKey), (u64, &'c str, CachedPid, ProcIdent)> = HashMap::new();
        for c in containers {
            let Some(PodRef::Kubernetes { uid, .. }) = &c.pod else { continue };
            let Some(&Located { pid, ident, ns: key }) = self.entries.get(&c.id) else { continue };
            let candidate = (pid.start, c.id.as_str(), pid, ident);
            oldest
                .entry((uid.as_str(), key))
                .and_modify(|o| {
                    if (candidate.0, candidate.1) < (o.0, o.1) {
                        *o = candidate;
                    }
                })
                .or_insert(candidate);
        }
        oldest
            .into_iter()
            .filter(|(_, (_, _, pid, ident))| proc_ident(&self.proc_root, pid.pid).ok() == Some(*ident))
            .map(|(pod, _)| pod)
            .collect()
    }
}

/// The host namespace is pid 1's. Some sandboxes forbid even root to look at pid 1 (an LSM
/// or a protected init); the agent's own namespace is then the reference, which is the host's
/// in the supported deployment (`hostNetwork: true`).
pub(super) fn host_ns_key(proc_root: &Path) -> Result<NsKey, NetnsError> {
    match ns_key(proc_root, 1) {
        Ok(key) => Ok(key),
        Err(e) => {
            let own = ns_key(Path::new("/proc"), std::process::id())?;
            tracing::warn!(error = %e, "Cannot see pid 1's network namespace; taking the agent's own as the host's.");
            Ok(own)
        }
    }
}

pub(super) fn ns_key(proc_root: &Path, pid: u32) -> Result<NsKey, NetnsError> {
    let path = proc_root.join(pid.to_string()).join("ns/net");
    // stat follows the magic link to the nsfs inode without opening the namespace.
    let meta = std::fs::metadata(&path).map_err(|source| NetnsError::Namespace { path, source })?;
    Ok(NsKey { dev: meta.dev(), ino: meta.ino() })
}

pub(super) fn proc_ident(proc_root: &Path, pid: u32) -> Result<ProcIdent, NetnsError> {
    let path = proc_root.join(pid.to_string());
    let meta = std::fs::metadata(&path).map_err(|source| NetnsError::Read { path, source })?;
    Ok(ProcIdent { dev: meta.dev(), ino: meta.ino() })
}

pub(super) fn start_time(proc_root: &Path, pid: u32) -> Result<u64, NetnsError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let text =
        std::fs::read_to_string(&path).map_err(|source| NetnsError::Read { path: path.clone(), source })?;
    parse_stat_starttime(&text).map_err(|source| NetnsError::Parse { path, source })
}
