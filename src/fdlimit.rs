//! The open-file limit. The cgroup source keeps every control file of every container open
//! (re-reading an open file costs a tenth of opening it), so a node's container count is bounded
//! by `RLIMIT_NOFILE`: at 1,024 (the usual soft limit of containers and systemd units) and 16
//! files per container that is about 60 containers. At start the agent raises its soft limit to
//! the hard one; the cgroup source then opens new cgroups only while the limit leaves room
//! ([`budget`]) and retries the rest at the next discovery.

use std::io;

/// Descriptors left free for everything that is not a cgroup file: exporter connections, the
/// disk queue, `/proc/<pid>/net/dev` reads, netlink sockets, directory walks.
pub const RESERVE: u64 = 48;

#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("cannot read the open-file limit (getrlimit RLIMIT_NOFILE): {0}")]
    Get(#[source] io::Error),
    #[error("cannot raise the open-file limit from {from} to {to} (setrlimit RLIMIT_NOFILE): {source}")]
    Set {
        from: u64,
        to: u64,
        #[source]
        source: io::Error,
    },
}

/// The soft and hard `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
}

pub fn current() -> Result<Limits, FdLimitError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(FdLimitError::Get(io::Error::last_os_error()));
    }
    Ok(Limits { soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// Raises the soft limit to the hard one (capped by `fs.nr_open`, which an infinite hard limit
/// cannot exceed). Returns the limits before and after.
pub fn raise_soft_to_hard() -> Result<(Limits, Limits), FdLimitError> {
    let before = current()?;
    let mut target = before.hard;
    if before.hard == libc::RLIM_INFINITY {
        // The kernel refuses a NOFILE above fs.nr_open; 1,048,576 is its default.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target <= before.soft {
        return Ok((before, before));
    }
    let lim = libc::rlimit { rlim_cur: target, rlim_max: before.hard };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(FdLimitError::Set { from: before.soft, to: target, source: io::Error::last_os_error() });
    }
    Ok((before, current()?))
}

/// How many descriptors this process has open (`None` when it cannot be told, e.g. for lack of
/// a descriptor to list `/proc/self/fd` with).
pub fn open_count() -> Option<u64> {
    // Since Linux 6.2 the size `stat` gives for `/proc/<pid>/fd` is the number of open
    // descriptors: one system call, where listing the directory walks every descriptor (17,700 at
    // 1,000 containers) and makes a dentry for each. Older kernels give 0: list it then. A
    // process always has a descriptor open while it runs this, so 0 is never a real count.
    if let Ok(meta) = std::fs::metadata("/proc/self/fd") {
        if meta.len() > 0 {
            return Some(meta.len());
        }
    }
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory's own descriptor is listed too.
    Some((entries.count() as u64).saturating_sub(1))
}

/// Descriptors the cgroup source may still open: the soft limit less what is open and the
/// [`RESERVE`]. `None` when either cannot be read: open freely and rely on [`is_exhausted`].
pub fn budget() -> Option<u64> {
    let limits = current().ok()?;
    let open = open_count()?;
    Some(limits.soft.saturating_sub(open).saturating_sub(RESERVE))
}

/// True for the errors of running out of descriptors, the process's (`EMFILE`) or the
/// system's (`ENFILE`).
pub fn is_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_emfile_or_enfile_and_nothing_else() {
        assert!(is_exhausted(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhausted(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhausted(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(!is_exhausted(&io::Error::other("no errno")));
    }

    #[test]
    fn open_count_sees_a_newly_opened_file() {
        let before = open_count().expect("/proc/self/fd");
        let files: Vec<_> = (0..100).map(|_| std::fs::File::open("/proc/self/stat").expect("open")).collect();
        let after = open_count().expect("/proc/self/fd");
        // Other test threads open and close files meanwhile (a few at a time); ours are there.
        assert!(after >= before + 90, "before {before}, after {after}");
        drop(files);
    }
}
