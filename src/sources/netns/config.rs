//! The `netns` source's configuration.

use std::path::PathBuf;

use serde::Deserialize;

use super::protocols::ProtocolMetricsConfig;
use crate::glob::Glob;

/// Reads network counters once per network namespace.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetnsConfig {
    /// Where the host's procfs is mounted; `/host/proc` in a DaemonSet. The agent must see the
    /// host's pids there (`hostPID: true`), since `cgroup.procs` lists them.
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// Interfaces to report, as globs (`eth*`, `net?`). Empty (the default): all of them,
    /// minus `exclude_interfaces`.
    #[serde(default)]
    pub include_interfaces: Vec<Glob>,
    /// Interfaces never reported, as globs; applied after `include_interfaces`.
    /// Default: `["lo"]`, since loopback traffic never leaves the pod.
    #[serde(default = "default_exclude_interfaces")]
    pub exclude_interfaces: Vec<Glob>,
    /// What to do with containers in the host's network namespace (Kubernetes
    /// `hostNetwork: true`, `podman --network host`). Their interfaces are the host's and are
    /// never reported for them. `skip` (default): nothing, a debug log. `mark`: also set the
    /// resource attribute `podometer.host_network = true` on their pod (Kubernetes) or
    /// container Resource.
    #[serde(default)]
    pub host_network: HostNetwork,
    /// Name the host-side veth of each pod interface (`network.interface.host_peer`) through
    /// rtnetlink. Needs the agent in the host network namespace (`hostNetwork: true`);
    /// elsewhere it is turned off by itself with a log line.
    #[serde(default = "default_true")]
    pub resolve_host_peer: bool,
    /// At most this many interfaces are reported per network namespace (after the include and
    /// exclude filters, first in the kernel's order, which is creation order): a pod with
    /// `CAP_NET_ADMIN` in its namespace can create thousands, each adding series. The rest are
    /// left out and counted (`netns_interfaces_over_cap`, per sweep). Must be at least 1.
    /// Default: `64`.
    #[serde(default = "default_max_interfaces")]
    pub max_interfaces: usize,
    /// The namespace's TCP and UDP counters (retransmits, resets, listen overflows, UDP buffer
    /// errors, ...) from its `net/snmp`, `net/netstat`, `net/snmp6`, `net/sockstat` and
    /// `net/sockstat6`, read once per namespace and sweep through the member `net/dev` is read
    /// through, on the same Resource. See [`ProtocolMetricsConfig`] for the names and the
    /// default set; `include: []` turns them off.
    #[serde(default)]
    pub protocol_metrics: ProtocolMetricsConfig,
}

/// Handling of containers that share the host's network namespace.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostNetwork {
    /// No series and no attribute.
    #[default]
    Skip,
    /// No series; `podometer.host_network = true` on the pod's or container's Resource.
    Mark,
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

fn default_exclude_interfaces() -> Vec<Glob> {
    vec![Glob::new("lo")]
}

fn default_true() -> bool {
    true
}

fn default_max_interfaces() -> usize {
    64
}

impl NetnsConfig {
    /// Problems as (key, reason), for the config check.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = self.protocol_metrics.validate();
        if self.max_interfaces == 0 {
            out.push(("max_interfaces".into(), "must be at least 1".into()));
        }
        out
    }
}

impl Default for NetnsConfig {
    fn default() -> Self {
        NetnsConfig {
            proc_root: default_proc_root(),
            include_interfaces: Vec::new(),
            exclude_interfaces: default_exclude_interfaces(),
            host_network: HostNetwork::default(),
            resolve_host_peer: true,
            max_interfaces: default_max_interfaces(),
            protocol_metrics: ProtocolMetricsConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_exclude_lo_and_unknown_fields_are_rejected() {
        let cfg: NetnsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, NetnsConfig::default());
        assert_eq!(cfg.exclude_interfaces, vec![Glob::new("lo")]);
        let cfg: NetnsConfig = serde_json::from_str(
            r#"{"host_network":"mark","include_interfaces":["eth*"],"exclude_interfaces":[]}"#,
        )
        .unwrap();
        assert_eq!(cfg.host_network, HostNetwork::Mark);
        assert!(cfg.exclude_interfaces.is_empty());
        assert!(serde_json::from_str::<NetnsConfig>(r#"{"proc_rot":"/x"}"#).is_err());
        assert!(serde_json::from_str::<NetnsConfig>(r#"{"host_network":"report"}"#).is_err());
    }
}
