//! The host peer of each pod interface, per namespace, kept current from the host's link
//! notifications (see the `peer` module for the netlink side).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tracing::debug;

use super::peer::{self, match_host_peers, LinkEvents, LinkRecord, Rtnl};
use super::pids::NsKey;
use crate::agent_counters::Telemetry;
use crate::warn_limited;

/// The peers just matched, plus the last known peer of each interface still present that the
/// match left without one. `network.interface.host_peer` is an identifying point attribute and
/// its lookup is best effort (a failed dump, a stale host cache, a missing `CAP_NET_ADMIN`):
/// losing it would start new series for no change on the node. A veth's two ends live and die
/// together, so an interface that is still there still has the peer it had; a different peer
/// from a successful match replaces it.
fn keep_known_peers(
    mut matched: HashMap<String, String>,
    known: &HashMap<String, String>,
    interfaces: &[String],
) -> HashMap<String, String> {
    for name in interfaces {
        if !matched.contains_key(name) {
            if let Some(peer) = known.get(name) {
                matched.insert(name.clone(), peer.clone());
            }
        }
    }
    matched
}

/// How often the peer resolver went to the kernel; to check that steady state costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetlinkCounts {
    /// Dumps of the host's links: the first, and after notifications were lost.
    pub host_dumps: u64,
    /// Namespaces resolved (`RTM_GETNSID` plus a dump of the pod's links): new namespaces and
    /// namespaces whose interface names changed.
    pub namespace_lookups: u64,
    /// Host link notifications applied to the cache (no request: the kernel sends them).
    pub link_events: u64,
}

/// Per-namespace cache of host peers, refreshed on link events.
pub(super) struct PeerResolver {
    rtnl: Rtnl,
    events: LinkEvents,
    host_links: Vec<LinkRecord>,
    /// Bumped on every host dump; a namespace matched under an older one is matched again.
    generation: u64,
    host_dirty: bool,
    /// A failed host dump is not retried for every namespace of the same sweep.
    host_tried: bool,
    namespaces: HashMap<NsKey, NsPeers>,
    pub(super) counts: NetlinkCounts,
}

struct NsPeers {
    interfaces: Vec<String>,
    nsid: Option<i32>,
    pod_links: Vec<LinkRecord>,
    generation: u64,
    peers: HashMap<String, String>,
}

impl PeerResolver {
    pub(super) fn start(host: NsKey) -> Option<PeerResolver> {
        // Sockets live in the agent's namespace: only there do host links and nsids mean the
        // host's.
        match std::fs::metadata("/proc/self/ns/net") {
            Ok(me) if (NsKey { dev: me.dev(), ino: me.ino() }) == host => {}
            _ => {
                tracing::info!("The agent is not in the host network namespace (no hostNetwork); host veth peers are not resolved.");
                return None;
            }
        }
        let started = Rtnl::new().and_then(|rtnl| Ok((rtnl, LinkEvents::new()?)));
        match started {
            Ok((rtnl, events)) => Some(PeerResolver {
                rtnl,
                events,
                host_links: Vec::new(),
                generation: 0,
                host_dirty: true,
                host_tried: false,
                namespaces: HashMap::new(),
                counts: NetlinkCounts::default(),
            }),
            Err(e) => {
                tracing::info!(error = %e, "Cannot open rtnetlink; host veth peers are not resolved.");
                None
            }
        }
    }

    /// Applies the host's link changes heard since the last sweep to the cached host links. A
    /// change that may move a peer has every namespace matched again (in memory); only lost
    /// notifications make the next sweep dump the host's links.
    pub(super) fn begin_sweep(&mut self) {
        let drained = self.events.drain();
        self.counts.link_events += drained.changes.len() as u64;
        let mut relevant = false;
        for change in drained.changes {
            relevant |= peer::apply_link_change(&mut self.host_links, change);
        }
        if relevant {
            self.generation += 1;
        }
        if drained.lost {
            self.host_dirty = true;
        }
        self.host_tried = false;
    }

    fn refresh_host(&mut self) {
        if !self.host_dirty || self.host_tried {
            return;
        }
        self.host_tried = true;
        self.counts.host_dumps += 1;
        match self.rtnl.dump_host_links() {
            Ok(links) => {
                self.host_links = links;
                self.generation += 1;
                // A dump that raced with a change is used, and redone next sweep.
                self.host_dirty = self.rtnl.interrupted;
            }
            Err(e) => {
                Telemetry::inc(&Telemetry::global().source_errors);
                warn_limited!("netns.host_links", error = %e, "Cannot list the host's links; host peers may be stale.");
            }
        }
    }

    pub(super) fn peers_of(
        &mut self,
        key: NsKey,
        proc_root: &Path,
        pid: u32,
        names: &[&str],
    ) -> Option<&HashMap<String, String>> {
        let stale = match self.namespaces.get(&key) {
            Some(ns) => ns.interfaces.iter().map(String::as_str).ne(names.iter().copied()),
            None => true,
        };
        if stale || self.host_dirty {
            self.refresh_host();
        }
        if stale {
            // What was known stays known (see `keep_known_peers`).
            let known = self.namespaces.remove(&key).map(|ns| ns.peers).unwrap_or_default();
            let ns_path = proc_root.join(pid.to_string()).join("ns/net");
            self.counts.namespace_lookups += 1;
            let (nsid, pod_links) = match self.rtnl.nsid_of(&ns_path) {
                Ok(Some(nsid)) => match self.rtnl.dump_pod_links(nsid, names) {
                    Ok(links) => (Some(nsid), links),
                    Err(e) => {
                        debug!(path = %ns_path.display(), error = %e, "Cannot list the links of a pod namespace; no host peers for it.");
                        (Some(nsid), Vec::new())
                    }
                },
                Ok(None) => {
                    debug!(path = %ns_path.display(), "No host link points into this namespace (no veth: macvlan, ipvlan or none); no host peers for it.");
                    (None, Vec::new())
                }
                Err(e) => {
                    debug!(path = %ns_path.display(), error = %e, "Cannot get the host's id of a namespace; no host peers for it.");
                    (None, Vec::new())
                }
            };
            self.namespaces.insert(
                key,
                NsPeers {
                    interfaces: names.iter().map(|s| (*s).to_owned()).collect(),
                    nsid,
                    pod_links,
                    generation: 0,
                    peers: known,
                },
            );
        }
        let ns = self.namespaces.get_mut(&key)?;
        if ns.generation != self.generation {
            let matched = match ns.nsid {
                Some(nsid) => match_host_peers(nsid, &ns.pod_links, &self.host_links),
                None => HashMap::new(),
            };
            ns.peers = keep_known_peers(matched, &ns.peers, &ns.interfaces);
            ns.generation = self.generation;
        }
        Some(&ns.peers)
    }

    pub(super) fn end_sweep(&mut self, live: &HashSet<NsKey>) {
        self.namespaces.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_peers_survive_a_failed_lookup_and_yield_to_a_new_match() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
        };
        let interfaces = vec!["eth0".to_owned(), "net1".to_owned()];
        let known = map(&[("eth0", "veth1"), ("gone0", "veth9")]);
        // The lookup failed: nothing matched. eth0 keeps its peer; a gone interface's is dropped.
        assert_eq!(keep_known_peers(HashMap::new(), &known, &interfaces), map(&[("eth0", "veth1")]));
        // A successful match wins, and adds what is new.
        let matched = map(&[("eth0", "veth2"), ("net1", "veth3")]);
        assert_eq!(keep_known_peers(matched.clone(), &known, &interfaces), matched);
    }
}
