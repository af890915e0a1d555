//! `netns`: network I/O per network namespace, on the pod's or the owning container's Resource.
//!
//! Works from the containers the cgroup source published in [`SweepContext::containers`]:
//!
//! - **Which namespace.** For each container, a live pid from its `cgroup.procs` (the oldest,
//!   cached). Each sweep checks that the cached pid is still the same process with one `stat` of
//!   `<proc_root>/<pid>`: procfs makes that directory's inode for one process and drops it when
//!   the process is reaped, so a reused pid shows another inode; only then (or when procfs
//!   evicted the inode) is the process's start time read from its `stat` file. The namespace
//!   identity is the device and inode of `<proc_root>/<pid>/ns/net` (a `stat`, nothing is
//!   opened), taken once per cached process, not every sweep. Containers are grouped by that
//!   identity.
//! - **Counters.** `<proc_root>/<pid>/net/dev` of one member, read once per namespace and
//!   sweep. procfs shows the namespace of the process it belongs to, so no `setns`, no fork.
//!   Counters are in the pod's view: receive is what the pod received.
//! - **Where the series go.** Once per namespace. If any member belongs to a Kubernetes pod,
//!   on that pod's Resource with `k8s.pod.network.*`. Otherwise on the Resource of the
//!   namespace's *owner* with `container.network.*`: the member whose oldest live process
//!   started first (ties: smallest id). The sandbox/infra container creates the namespace and
//!   the others join it later, so it always started first; no runtime metadata is needed, and
//!   when the sandbox process is gone (CRI-O `drop_infra_ctr`, killed pause) the oldest app
//!   container takes over. Other members get no network series.
//! - **hostNetwork.** A namespace equal to `<proc_root>/1/ns/net` is the host's; its interfaces
//!   are never attributed to a container or pod. [`HostNetwork`] decides whether such members
//!   are merely skipped or also marked.
//! - **Host peer.** See the `peer` submodule: rtnetlink from the host namespace names the host-side veth
//!   of each pod interface (point attribute `network.interface.host_peer`). The host's links are
//!   dumped once and then kept current from link notifications; a namespace is looked up
//!   (`RTM_GETNSID` and a dump of its links) when it is new or its interface names change. So
//!   once every namespace is known, a sweep sends no netlink request at all.
//!
//! Privileges, checked on kernel 6.18 with `setpriv` dropping one capability at a time:
//! - `stat` of `/proc/<pid>/ns/net` is a ptrace-read check: `CAP_SYS_PTRACE` for processes
//!   of other users and for root processes with capabilities the agent lacks (so: always).
//!   `CAP_DAC_READ_SEARCH`/`CAP_DAC_OVERRIDE` do not help. Without it a container is reported
//!   as an error (`source_errors`, rate-limited warning), not silently skipped.
//! - `/proc/<pid>/net/dev`, `/proc/<pid>/stat` and `cgroup.procs` are world-readable.
//! - `RTM_GETNSID` needs only the open namespace fd (same ptrace check); the host link dump
//!   and the `RTNLGRP_LINK` subscription need nothing. The dump of a pod's links with
//!   `IFLA_TARGET_NETNSID` needs `CAP_NET_ADMIN` (`EACCES` otherwise): without it, counters
//!   are still reported, without `host_peer`. `RTM_NEWNSID` is never sent.
//! - In a DaemonSet: `hostPID: true` (pids in `cgroup.procs` are the host's) and
//!   `hostNetwork: true` for host peers (netlink sockets see the namespace they are opened in).

mod config;
mod kept_open;
mod origins;
mod owner;
// Crate-visible for the fuzz entry points in `crate::fuzzing`.
pub(crate) mod peer;
mod peer_cache;
mod pids;
pub mod procfs;
mod protocol_files;
pub mod protocols;

pub use config::{HostNetwork, NetnsConfig};
pub use peer_cache::NetlinkCounts;

pub use peer::{match_host_peers, LinkRecord};
pub use procfs::{
    parse_net_dev, parse_net_dev_wanted, parse_procs, parse_stat_starttime, DirectionCounters,
    InterfaceCounters, NetDev, ParseError,
};
pub use protocols::{ProtocolMetricsConfig, ProtocolSelection};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use thiserror::Error;
use tracing::debug;

use crate::agent_counters::Telemetry;
use crate::glob::Glob;
use crate::model::{AttrValue, ContainerInfo, PodRef, Point, ResourceId, Sweep, SweepContext, Value};
use crate::semconv::{self, NetworkFamily};
use crate::sources::{is_vanished, BoxError, Source};
use crate::warn_limited;

use kept_open::{may_keep_open, pread_text};
use origins::Origins;
use owner::{choose_owner, container_target, kubernetes_pod, target, Member, Target};
use peer_cache::PeerResolver;
use pids::{host_ns_key, ns_key, NsKey, PidCache};
use protocol_files::ProtocolReader;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("cannot stat the network namespace {path}: {source}")]
    Namespace { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
}

impl NetnsError {
    /// A process or cgroup that went away between listing and reading: normal on a busy node.
    pub(super) fn is_vanished(&self) -> bool {
        match self {
            NetnsError::Read { source, .. } | NetnsError::Namespace { source, .. } => is_vanished(source),
            NetnsError::Parse { .. } => false,
        }
    }
}

pub struct NetnsSource {
    proc_root: PathBuf,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    host_network: HostNetwork,
    max_interfaces: usize,
    /// The host's network namespace, fixed for the agent's life.
    host: NsKey,
    /// Each container's oldest live process and its namespace.
    pids: PidCache,
    /// hostNetwork containers already logged, so the debug line comes once per container.
    host_network_logged: HashSet<String>,
    peers: Option<PeerResolver>,
    /// Each namespace's `net/dev`, kept open and re-read with `pread`: opening it again every
    /// sweep cost more than reading it. The open file pins its namespace, so a file is closed
    /// as soon as its namespace has no member left (see the end of `collect`).
    dev_files: HashMap<NsKey, File>,
    dev_buf: Vec<u8>,
    /// When each resource's network series began, and in which namespace.
    origins: Origins,
    /// Each namespace's TCP/UDP counter files, kept open like `dev_files`.
    protocols: ProtocolReader,
}

impl std::fmt::Debug for NetnsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsSource")
            .field("proc_root", &self.proc_root)
            .field("cached_pids", &self.pids.len())
            .field("resolves_host_peers", &self.peers.is_some())
            .finish()
    }
}

impl NetnsSource {
    /// Fails only when neither `<proc_root>/1/ns/net` nor the agent's own namespace can be
    /// stat'ed; peer resolution that cannot start is turned off with a log line instead.
    pub fn new(config: &NetnsConfig) -> Result<NetnsSource, NetnsError> {
        let host = host_ns_key(&config.proc_root)?;
        let peers = if config.resolve_host_peer { PeerResolver::start(host) } else { None };
        Ok(NetnsSource {
            proc_root: config.proc_root.clone(),
            include: config.include_interfaces.clone(),
            exclude: config.exclude_interfaces.clone(),
            host_network: config.host_network,
            max_interfaces: config.max_interfaces.max(1),
            host,
            pids: PidCache::new(config.proc_root.clone()),
            host_network_logged: HashSet::new(),
            peers,
            dev_files: HashMap::new(),
            dev_buf: vec![0; 4096],
            origins: Origins::default(),
            protocols: ProtocolReader::new(ProtocolSelection::new(&config.protocol_metrics)),
        })
    }

    /// Netlink work done so far; `None` when host peers are not resolved.
    pub fn netlink_counts(&self) -> Option<NetlinkCounts> {
        self.peers.as_ref().map(|p| p.counts)
    }

    #[cfg(test)]
    fn wanted(&self, name: &str) -> bool {
        interface_wanted(&self.include, &self.exclude, name)
    }
}

impl Source for NetnsSource {
    /// One sweep, in four steps: find each container's namespace ([`NetnsSource::group_by_namespace`]),
    /// bring the host peer cache up to date, then per namespace choose where its series go
    /// ([`NetnsSource::target`]), read its counters ([`NetnsSource::read_counters`]) and emit
    /// them ([`NetnsSource::emit`]); last, let go of what no namespace uses any more.
    fn collect(&mut self, ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError> {
        let mut groups = self.group_by_namespace(&ctx.containers);
        if let Some(peers) = &mut self.peers {
            peers.begin_sweep();
        }
        let mut pods_done: HashSet<String> = HashSet::new();
        let mut live_namespaces: HashSet<NsKey> = HashSet::with_capacity(groups.len());
        for (key, members) in groups.iter_mut() {
            if *key == self.host {
                self.host_network_members(members, sweep);
                continue;
            }
            // The cached lookup cannot tell an exited owner (a zombie) from a live one: one
            // check per namespace per sweep (not per container) hands a container's series to
            // the next member instead. A Kubernetes pod's series go to the pod whichever member
            // owns the namespace, and `read_counters` passes over a member that has left its
            // namespace, so pods skip the check.
            let pod = kubernetes_pod(members).is_some();
            let owner = loop {
                let pairs: Vec<(&str, u64)> =
                    members.iter().map(|m| (m.container.id.as_str(), m.pid.start)).collect();
                let Some(i) = choose_owner(&pairs) else { break None };
                if pod
                    || members.len() == 1
                    || self.proc_root.join(members[i].pid.pid.to_string()).join("ns/net").exists()
                {
                    break Some(i);
                }
                members.remove(i);
            };
            let Some(owner) = owner else { continue };
            let members: &[Member<'_>] = members;
            let Some(mut target) = target(members, owner, &mut pods_done) else { continue };
            let Some((reader_pid, counters)) = self.read_counters(*key, target.owner, members) else {
                continue;
            };
            // Read through another member: the owner's process is exiting (a zombie still
            // passes the cached lookup). A container's series go to the member they were read
            // through, as they will from the next sweep on.
            if reader_pid != target.owner.pid.pid && matches!(target.id, ResourceId::Container(_)) {
                if let Some(reader) = members.iter().find(|m| m.pid.pid == reader_pid) {
                    target = container_target(reader);
                }
            }
            live_namespaces.insert(*key);
            let protocols = if self.protocols.enabled() {
                let keep = may_keep_open(self.dev_files.len() + self.protocols.open_count());
                self.protocols.read(*key, &self.proc_root, reader_pid, keep)
            } else {
                None
            };
            let origin = self.origins.note(&target.id, *key, sweep.time);
            self.emit(*key, reader_pid, &counters, protocols.as_ref(), target, origin, sweep);
        }
        if let Some(peers) = &mut self.peers {
            peers.end_sweep(&live_namespaces);
        }
        self.origins.end_sweep();
        // Close the files of namespaces without members: an open file would keep a dead
        // namespace alive.
        self.dev_files.retain(|key, _| live_namespaces.contains(key));
        self.protocols.retain(&live_namespaces);
        Ok(())
    }
}

impl NetnsSource {
    /// Each container's namespace, containers grouped by it, oldest namespace first (by its
    /// oldest process), so that when a pod shows in two namespaces (its sandbox being replaced)
    /// the one it has been using keeps the series. Forgets containers no longer listed.
    fn group_by_namespace<'c>(
        &mut self,
        containers: &'c [Arc<ContainerInfo>],
    ) -> Vec<(NsKey, Vec<Member<'c>>)> {
        let telemetry = Telemetry::global();
        let mut groups: BTreeMap<NsKey, Vec<Member<'c>>> = BTreeMap::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(containers.len());
        let vouched = self.pids.vouched_pods(containers);
        for c in containers {
            seen.insert(c.id.as_str());
            if let (Some(PodRef::Kubernetes { uid, .. }), Some((pid, key))) =
                (&c.pod, self.pids.cached(&c.id))
            {
                if vouched.contains(&(uid.as_str(), key)) {
                    groups.entry(key).or_default().push(Member { container: c, pid });
                    continue;
                }
            }
            match self.pids.locate(c) {
                Ok(Some((pid, key))) => groups.entry(key).or_default().push(Member { container: c, pid }),
                Ok(None) => {
                    debug!(container = %c.id, "Container has no live process; no network series for it.")
                }
                Err(e) if e.is_vanished() => Telemetry::inc(&telemetry.containers_vanished),
                Err(e) => {
                    Telemetry::inc(&telemetry.source_errors);
                    warn_limited!("netns.locate", container = %c.id, error = %e, "Cannot find the network namespace of a container.");
                }
            }
        }
        self.pids.retain(|id| seen.contains(id));
        self.host_network_logged.retain(|id| seen.contains(id.as_str()));
        let mut groups: Vec<(NsKey, Vec<Member<'c>>)> = groups.into_iter().collect();
        groups.sort_by_key(|(key, members)| (members.iter().map(|m| m.pid.start).min(), *key));
        groups
    }

    /// A namespace's `net/dev`, parsed, and the pid it was read through: from the file kept
    /// open for the namespace, else through the owner's process, else any other member's (the
    /// owner's may exit right now). `None` (counted, logged) when nothing could be read. Only
    /// the interfaces the filters want are parsed, at most `max_interfaces`; the wanted ones
    /// beyond are only counted, so a namespace with thousands of links costs little more.
    fn read_counters(
        &mut self,
        key: NsKey,
        owner: &Member<'_>,
        members: &[Member<'_>],
    ) -> Option<(u32, NetDev)> {
        let telemetry = Telemetry::global();
        // A namespace read before: its file is still open (and the namespace still has a
        // member, or it would not be in this sweep's groups).
        let mut read = None;
        if let Some(file) = self.dev_files.get(&key) {
            match pread_text(file, &mut self.dev_buf) {
                Ok(text) if lists_an_interface(text) => read = Some((owner.pid.pid, text.to_owned())),
                _ => {
                    self.dev_files.remove(&key);
                }
            }
        }
        let readers = std::iter::once(owner).chain(members.iter().filter(|m| m.pid.pid != owner.pid.pid));
        let mut failed = false;
        for reader in readers {
            if read.is_some() {
                break;
            }
            let path = self.proc_root.join(reader.pid.pid.to_string()).join("net/dev");
            let opened = File::open(&path);
            // A pod member other than the owner may not have been checked this sweep (see
            // `vouched_pods`): its pid, if reused, would read another namespace. The check
            // after opening: the file is that of the process the pid named when it was opened.
            let other_namespace = || {
                reader.pid.pid != owner.pid.pid
                    && ns_key(&self.proc_root, reader.pid.pid).is_ok_and(|now| now != key)
            };
            match opened.and_then(|f| pread_text(&f, &mut self.dev_buf).map(|t| (t.to_owned(), f))) {
                Ok(_) if other_namespace() => continue,
                // Read through a process that has left its namespaces (exiting, or a zombie):
                // the file holds the headers only. Another member may still read it.
                Ok((text, _)) if !lists_an_interface(&text) => continue,
                Ok((text, file)) => {
                    if may_keep_open(self.dev_files.len() + self.protocols.open_count()) {
                        self.dev_files.insert(key, file);
                    }
                    read = Some((reader.pid.pid, text));
                    break;
                }
                Err(source) if is_vanished(&source) => continue,
                Err(source) => {
                    Telemetry::inc(&telemetry.source_errors);
                    let e = NetnsError::Read { path, source };
                    warn_limited!("netns.read", error = %e, "Cannot read a namespace's network counters.");
                    failed = true;
                    break;
                }
            }
        }
        let Some((reader_pid, text)) = read else {
            if !failed {
                Telemetry::inc(&telemetry.containers_vanished);
            }
            return None;
        };
        let (include, exclude) = (&self.include, &self.exclude);
        match parse_net_dev_wanted(
            &text,
            |name| interface_wanted(include, exclude, name),
            self.max_interfaces,
        ) {
            Ok(counters) => Some((reader_pid, counters)),
            Err(source) => {
                Telemetry::inc(&telemetry.source_errors);
                let path = self.proc_root.join(reader_pid.to_string()).join("net/dev");
                let e = NetnsError::Parse { path, source };
                warn_limited!("netns.parse", error = %e, "Cannot parse a namespace's network counters.");
                None
            }
        }
    }

    /// The wanted interfaces of a namespace (filtered and capped by `read_counters`), with their
    /// host peers, and its protocol counters, as points on the target resource; counters stamped
    /// with the namespace's origin.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        key: NsKey,
        reader_pid: u32,
        counters: &NetDev,
        protocols: Option<&protocols::ProtocolCounters>,
        target: Target<'_, '_>,
        origin: SystemTime,
        sweep: &mut Sweep,
    ) {
        let wanted = &counters.interfaces;
        if counters.over_cap > 0 {
            let over = counters.over_cap;
            Telemetry::global()
                .netns_interfaces_over_cap
                .fetch_add(over as u64, std::sync::atomic::Ordering::Relaxed);
            warn_limited!(
                "netns.max_interfaces",
                left_out = over,
                max_interfaces = self.max_interfaces,
                pid = reader_pid,
                "A network namespace has more interfaces than sources.netns.max_interfaces; the rest are not reported."
            );
        }
        if wanted.is_empty() && protocols.is_none() {
            return;
        }
        let names: Vec<&str> = wanted.iter().map(|c| c.name.as_str()).collect();
        let peers = match &mut self.peers {
            Some(p) if !names.is_empty() => p.peers_of(key, &self.proc_root, reader_pid, &names),
            _ => None,
        };
        let Target { id, attributes, family, .. } = target;
        let resource = sweep.resource_mut(id, || attributes);
        for iface in wanted {
            // One shared value per interface, cloned onto its eight points without allocating.
            let peer = peers.and_then(|p| p.get(&iface.name)).map(|p| AttrValue::text(p));
            for mut point in interface_points(family, iface, peer.as_ref()) {
                point.start_time = Some(origin);
                resource.points.push(point);
            }
        }
        if let Some(counters) = protocols {
            let first = resource.points.len();
            self.protocols.selection().points(&family.protocols, counters, &mut resource.points);
            for point in &mut resource.points[first..] {
                if point.metric.kind == crate::model::MetricKind::Counter {
                    point.start_time = Some(origin);
                }
            }
        }
    }
}

/// Whether a `net/dev` text lists any interface. Every live network namespace has at least
/// `lo`; a text of the two header lines only was read through a process that has left its
/// namespaces (exiting, a zombie, or reaped while its file was kept open).
fn lists_an_interface(text: &str) -> bool {
    text.lines().skip(2).any(|l| l.contains(':'))
}

/// The eight points of one interface (bytes, errors, packets and drops, each received and
/// transmitted), named by `family` and carrying the interface's name, the direction and, when
/// known, the host peer; the one shape of network series for both the netns source and the
/// sidecar's `pod_network`.
pub(crate) fn interface_points<'a>(
    family: &'static NetworkFamily,
    iface: &'a InterfaceCounters,
    peer: Option<&'a AttrValue>,
) -> impl Iterator<Item = Point> + 'a {
    let name = AttrValue::text(&iface.name);
    [(semconv::DIRECTION_RECEIVE, &iface.receive), (semconv::DIRECTION_TRANSMIT, &iface.transmit)]
        .into_iter()
        .flat_map(move |(direction, c)| {
            let name = name.clone();
            [
                (&family.io, c.bytes),
                (&family.errors, c.errors),
                (&family.packets, c.packets),
                (&family.dropped, c.dropped),
            ]
            .into_iter()
            .map(move |(metric, value)| {
                let point = Point::new(metric, Value::from_u64(value));
                let name = (semconv::NETWORK_INTERFACE_NAME, name.clone());
                let direction = (semconv::NETWORK_IO_DIRECTION, AttrValue::constant(direction));
                match peer {
                    Some(peer) => point.with_all([
                        name,
                        direction,
                        (semconv::NETWORK_INTERFACE_HOST_PEER, peer.clone()),
                    ]),
                    None => point.with_all([name, direction]),
                }
            })
        })
}

impl NetnsSource {
    fn host_network_members(&mut self, members: &[Member<'_>], sweep: &mut Sweep) {
        for m in members {
            if self.host_network_logged.insert(m.container.id.clone()) {
                debug!(container = %m.container.id, "Container uses the host network namespace; no network series for it.");
            }
            if self.host_network != HostNetwork::Mark {
                continue;
            }
            let (id, attributes) = match &m.container.pod {
                Some(PodRef::Kubernetes { uid, qos }) => {
                    (ResourceId::Pod(uid.clone()), crate::resource::pod(uid, qos))
                }
                _ => (
                    m.container.resource_id(),
                    crate::resource::container(
                        &m.container.id,
                        m.container.runtime,
                        m.container.pod.as_ref(),
                    ),
                ),
            };
            sweep.resource_mut(id, || attributes).set_attribute(semconv::PODOMETER_HOST_NETWORK, true);
        }
    }
}

fn interface_wanted(include: &[Glob], exclude: &[Glob], name: &str) -> bool {
    (include.is_empty() || include.iter().any(|g| g.matches(name)))
        && !exclude.iter().any(|g| g.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_net_dev_of_headers_only_lists_no_interface() {
        let headers = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";
        assert!(!lists_an_interface(headers), "an exiting process's view");
        let lo = format!("{headers}    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n");
        assert!(lists_an_interface(&lo));
    }

    #[test]
    fn interface_filters_include_then_exclude() {
        let cfg = NetnsConfig { resolve_host_peer: false, ..NetnsConfig::default() };
        let mut source = NetnsSource::new(&cfg).unwrap();
        assert!(source.wanted("eth0"));
        assert!(!source.wanted("lo"));
        source.include = vec![Glob::new("eth*"), Glob::new("net?")];
        source.exclude = vec![Glob::new("eth9")];
        assert!(source.wanted("eth0") && source.wanted("net1"));
        assert!(!source.wanted("eth9") && !source.wanted("wlan0") && !source.wanted("net10"));
    }

    /// A `/proc` made of plain files: a process is `<pid>/stat`, `<pid>/net/dev` and
    /// `<pid>/ns/net`, a hard link to one file per namespace (a namespace's identity is its
    /// inode, as with nsfs). A fixture because what is tested is a reused pid, which a real
    /// machine cannot be made to hand out on demand; `tests/netns_live.rs` covers real namespaces.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            let fake = FakeProc { dir: tempfile::tempdir().expect("tempdir") };
            for ns in ["ns-host", "ns-a", "ns-b"] {
                std::fs::write(fake.dir.path().join(ns), "").expect("namespace file");
            }
            fake.process(1, "ns-host", 1, 0);
            fake
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// Process `pid` in namespace `ns`, started at `start`, whose `eth0` has received `rx`
        /// bytes; it replaces any process of that pid. The new directory is made before the old
        /// one goes, so that it gets another inode, as procfs gives a new process.
        fn process(&self, pid: u32, ns: &str, start: u64, rx: u64) {
            let d = self.root().join(format!("{pid}.new"));
            std::fs::create_dir_all(d.join("ns")).expect("mkdir");
            std::fs::create_dir_all(d.join("net")).expect("mkdir");
            std::fs::hard_link(self.root().join(ns), d.join("ns/net")).expect("link");
            let stat = format!("{pid} (sleep) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n");
            std::fs::write(d.join("stat"), stat).expect("stat");
            std::fs::write(d.join("net/dev"), net_dev(Some(rx))).expect("net/dev");
            let path = self.root().join(pid.to_string());
            if path.exists() {
                std::fs::remove_dir_all(&path).expect("rm");
            }
            std::fs::rename(d, path).expect("rename");
        }

        /// A `cgroup.procs` listing `pids`.
        fn procs(&self, name: &str, pids: &[u32]) -> PathBuf {
            let path = self.root().join(name);
            let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
            std::fs::write(&path, text).expect("cgroup.procs");
            path
        }
    }

    /// A `net/dev` with `eth0` having received `rx` bytes, or the headers only (a process that
    /// has left its namespaces).
    fn net_dev(rx: Option<u64>) -> String {
        let mut text = String::from(
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
        );
        if let Some(rx) = rx {
            text.push_str(&format!("  eth0: {rx} 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n"));
        }
        text
    }

    fn pod_member(fake: &FakeProc, id: &str, pid: u32) -> Arc<ContainerInfo> {
        Arc::new(ContainerInfo {
            id: id.to_owned(),
            runtime: crate::model::Runtime::Containerd,
            pod: Some(PodRef::Kubernetes { uid: "pod-1".into(), qos: "burstable".into() }),
            procs_file: fake.procs(id, &[pid]),
        })
    }

    fn received(source: &mut NetnsSource, containers: &[Arc<ContainerInfo>]) -> Vec<i64> {
        let now = SystemTime::now();
        let mut ctx = SweepContext::new(now);
        ctx.containers = containers.to_vec();
        let mut sweep = Sweep::new(now);
        source.collect(&mut ctx, &mut sweep).expect("collect");
        sweep
            .resources
            .iter()
            .flat_map(|r| r.points.iter())
            .filter(|p| p.metric.name == "k8s.pod.network.io")
            .filter(|p| p.attribute(semconv::NETWORK_IO_DIRECTION) == Some(&AttrValue::from("receive")))
            .map(|p| match p.value {
                Value::Int(v) => v,
                other => panic!("not an integer: {other:?}"),
            })
            .collect()
    }

    /// A pod member whose process is gone and whose pid now names a process in another
    /// namespace: while the pod's oldest process lives, its members are not checked one by one
    /// (`vouched_pods`), so the stale pid may be the one read through when the owner's read
    /// fails. Its counters must not pass for the pod's.
    #[test]
    fn a_reused_pid_of_an_unchecked_pod_member_is_not_read_as_the_pod() {
        let fake = FakeProc::new();
        fake.process(100, "ns-a", 10, 1000);
        fake.process(200, "ns-a", 20, 1000);
        let pod = [pod_member(&fake, "a-sandbox", 100), pod_member(&fake, "b-app", 200)];
        let config = NetnsConfig {
            proc_root: fake.root().to_owned(),
            resolve_host_peer: false,
            ..NetnsConfig::default()
        };
        let mut source = NetnsSource::new(&config).expect("source");
        assert_eq!(received(&mut source, &pod), [1000], "read once for the pod");

        // The sandbox's process is exiting (same process, its namespaces gone), and the app's
        // pid belongs to a new process in another namespace.
        std::fs::write(fake.root().join("100/net/dev"), net_dev(None)).expect("write");
        fake.process(200, "ns-b", 500, 999_999);
        let values = received(&mut source, &pod);
        assert!(!values.contains(&999_999), "another namespace's counters on the pod: {values:?}");

        // The sandbox's process gone for good: each member is located again, and the app's
        // cgroup now lists a process of the pod's namespace.
        std::fs::remove_dir_all(fake.root().join("100")).expect("rm");
        fake.process(300, "ns-a", 30, 2000);
        let pod = [pod_member(&fake, "a-sandbox", 100), pod_member(&fake, "b-app", 300)];
        assert_eq!(received(&mut source, &pod), [2000]);
    }
}
