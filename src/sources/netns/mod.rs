//! `netns`: network I/O per network namespace, on the pod's or the owning container's Resource.

use std::path::PathBuf;

use serde::Deserialize;

/// Reads network counters once per network namespace.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetnsConfig {
    /// Where the host's procfs is mounted; `/host/proc` in a DaemonSet.
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

impl Default for NetnsConfig {
    fn default() -> Self {
        NetnsConfig { proc_root: default_proc_root() }
    }
}
