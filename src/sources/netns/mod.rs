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

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns source is not merged yet")]
    NotYet,
}

/// Placeholder until the netns source lands.
pub struct NetnsSource;

impl NetnsSource {
    pub fn new(_config: &NetnsConfig) -> Result<NetnsSource, NetnsError> {
        Ok(NetnsSource)
    }
}

impl crate::sources::Source for NetnsSource {
    fn collect(
        &mut self,
        _ctx: &mut crate::model::SweepContext,
        _sweep: &mut crate::model::Sweep,
    ) -> Result<(), crate::sources::BoxError> {
        Err(NetnsError::NotYet.into())
    }
}
