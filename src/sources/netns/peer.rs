//! Host-side veth peers of pod interfaces, through rtnetlink from the host namespace: no setns.
//!
//! For one pod namespace:
//! 1. `RTM_GETNSID` with `NETNSA_FD` (an fd of `<proc_root>/<pid>/ns/net`, opened read-only)
//!    gives the id the host namespace uses for it. The kernel assigns that id itself the
//!    moment a link of the host has its peer there (it must, to report `IFLA_LINK_NETNSID`),
//!    so "no id" means "no host link points into this namespace" and we never send
//!    `RTM_NEWNSID`: the agent changes nothing in the kernel.
//! 2. `RTM_GETLINK` dump with `IFLA_TARGET_NETNSID` set to that id lists the pod's links
//!    (name and ifindex) from the host side (kernel >= 4.20); only those among the interfaces
//!    reported from `net/dev` (at most `max_interfaces`) are decoded. `/proc/<pid>/net/dev` has no
//!    ifindex; `igmp`, `dev_mcast` and `if_inet6` have one but only list interfaces that are
//!    up with IPv4 multicast, with hardware multicast addresses or with IPv6, so they miss
//!    interfaces in ordinary configurations.
//! 3. A dump of the host's own links; the peer of pod interface `i` is the host veth whose
//!    `IFLA_LINK_NETNSID` is the id and whose `IFLA_LINK` is `i`'s ifindex ([`match_host_peers`]).
//!
//! The host dump is cached and redone only in a sweep after the kernel announced a link
//! change (a non-blocking socket subscribed to `RTNLGRP_LINK`, drained every sweep); the pod
//! side is redone when a namespace is new or its interface names changed. Steady state costs
//! one `recv` returning `EAGAIN` per sweep.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLA_TYPE_MASK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `RTNLGRP_LINK` from `linux/rtnetlink.h`.
const RTNLGRP_LINK: u32 = 1;
/// `RTM_NEWLINK` from `linux/rtnetlink.h`.
const RTM_NEWLINK: u16 = 16;
/// `NLMSG_MIN_TYPE` from `linux/netlink.h`: types below are netlink's own (noop, error, done).
const NLMSG_MIN_TYPE: u16 = 16;
/// `IFLA_IFNAME` from `linux/if_link.h`.
const IFLA_IFNAME: u16 = 3;
/// The size of `struct ifinfomsg`, which precedes a link message's attributes.
const IFINFOMSG_LEN: usize = 16;

/// What a link dump says about one link, as far as peer matching needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`, e.g. `veth`; `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex in the peer's namespace.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace as this namespace numbers it; absent when the
    /// peer is in the same namespace.
    pub link_netnsid: Option<i32>,
}

impl LinkRecord {
    pub fn from_message(msg: &LinkMessage) -> LinkRecord {
        let mut rec = LinkRecord {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            link: None,
            link_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => rec.name = name.clone(),
                LinkAttribute::Link(index) => rec.link = Some(*index),
                LinkAttribute::LinkNetNsId(id) => rec.link_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            rec.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        rec
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".to_owned(),
        InfoKind::Netkit => "netkit".to_owned(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Pairs each pod interface with its host-side peer: the host link of kind `veth` (or
/// `netkit`, Cilium's veth replacement) whose peer namespace is `nsid` and whose peer ifindex
/// is the pod interface's. Pod interfaces without such a link (macvlan, ipvlan, `lo`, tunnels)
/// are absent from the result.
pub fn match_host_peers(
    nsid: i32,
    pod_links: &[LinkRecord],
    host_links: &[LinkRecord],
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pod in pod_links {
        let peer = host_links.iter().find(|h| {
            matches!(h.kind.as_deref(), Some("veth") | Some("netkit"))
                && h.link_netnsid == Some(nsid)
                && h.link == Some(pod.index)
        });
        if let Some(peer) = peer {
            out.insert(pod.name.clone(), peer.name.clone());
        }
    }
    out
}

/// A request/response rtnetlink socket in the agent's (the host's) network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// The last dump raced with a change (`NLM_F_DUMP_INTR`) and may be inconsistent.
    pub interrupted: bool,
}

impl Rtnl {
    pub fn new() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // A kernel that never answers must not stall the sweep thread forever.
        set_recv_timeout(&socket, Duration::from_secs(2))?;
        Ok(Rtnl { socket, seq: 0, buf: vec![0; 64 * 1024], interrupted: false })
    }

    /// The id the host gives the namespace of `ns_path`; `None` when it has none.
    pub fn nsid_of(&mut self, ns_path: &Path) -> io::Result<Option<i32>> {
        let ns = File::open(ns_path)?;
        let fd = u32::try_from(ns.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(fd));
        let replies = self.request(RouteNetlinkMessage::GetNsId(msg), NLM_F_REQUEST)?;
        drop(ns);
        for reply in replies {
            if let RouteNetlinkMessage::NewNsId(m) = reply {
                for attr in m.attributes {
                    if let NsidAttribute::Id(id) = attr {
                        return Ok((id >= 0).then_some(id));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Every link of the host's own namespace.
    pub fn dump_host_links(&mut self) -> io::Result<Vec<LinkRecord>> {
        let replies =
            self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(LinkRecord::from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// The links named in `names` of the namespace the host numbers `nsid`, at most one per
    /// name, in the kernel's order.
    ///
    /// The kernel filters a link dump by master and kind only, never by name, and one
    /// `RTM_GETLINK` per name would cost a round trip per interface, so the whole dump is read
    /// from the socket (it must be, up to `NLMSG_DONE`, for the next answer to be found); but
    /// only the named links are decoded and kept ([`parse_link_datagram`]): a namespace with
    /// thousands of links costs reading their headers and names, no allocation.
    pub fn dump_pod_links(&mut self, nsid: i32, names: &[&str]) -> io::Result<Vec<LinkRecord>> {
        let mut msg = LinkMessage::default();
        // IFLA_IF_NETNSID is IFLA_TARGET_NETNSID's older name (both 46).
        msg.attributes.push(LinkAttribute::IfNetnsId(nsid));
        let seq = self.send(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut links = Vec::new();
        self.receive(|datagram, interrupted| {
            parse_link_datagram(datagram, seq, names, &mut links, interrupted)
        })?;
        Ok(links)
    }

    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        self.receive(|datagram, interrupted| parse_datagram(datagram, seq, dump, &mut replies, interrupted))?;
        Ok(replies)
    }

    /// Sends a request; its sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        Ok(seq)
    }

    /// Hands each datagram received to `parse` until it says the answer is complete.
    fn receive(&mut self, mut parse: impl FnMut(&[u8], &mut bool) -> io::Result<bool>) -> io::Result<()> {
        self.interrupted = false;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            if parse(&self.buf[..n], &mut self.interrupted)? {
                return Ok(());
            }
        }
    }
}

fn invalid_data(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Walks the messages of one datagram answering request `seq`; `Ok(true)` once the answer is
/// complete. Netlink's own messages (done, error) are decoded here; every other message of
/// the answer is handed whole (header and payload) to `message`, undecoded.
fn walk_datagram(
    datagram: &[u8],
    seq: u32,
    dump: bool,
    interrupted: &mut bool,
    mut message: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    let mut offset = 0;
    while offset < datagram.len() {
        let bytes = &datagram[offset..];
        // Checked: at least a header, and no longer than what is left.
        let buffer = NetlinkBuffer::new_checked(bytes).map_err(invalid_data)?;
        let len = buffer.length() as usize;
        let (kind, flags, sequence_number) =
            (buffer.message_type(), buffer.flags(), buffer.sequence_number());
        // Netlink messages are 4-byte aligned within a datagram.
        offset += (len + 3) & !3;
        if len == 0 {
            return Err(invalid_data("zero-length netlink message"));
        }
        if sequence_number != seq {
            continue; // late answer to an earlier, timed-out request
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        if kind >= NLMSG_MIN_TYPE {
            message(&bytes[..len])?;
            if !dump {
                return Ok(true);
            }
            continue;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]).map_err(invalid_data)?.payload
        {
            // A dump the kernel refused (no CAP_NET_ADMIN for IFLA_TARGET_NETNSID)
            // ends in DONE carrying the error, not in an error message.
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(io::Error::from_raw_os_error(-done.code))
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => match e.code {
                Some(_) => return Err(e.to_io()),
                None => return Ok(true),
            },
            _ => {}
        }
    }
    Ok(false)
}

/// Reads the messages of one datagram answering request `seq` into `replies`; `Ok(true)` once
/// the answer is complete. Pure, so the fuzz target `netlink` can feed it arbitrary bytes.
pub fn parse_datagram(
    datagram: &[u8],
    seq: u32,
    dump: bool,
    replies: &mut Vec<RouteNetlinkMessage>,
    interrupted: &mut bool,
) -> io::Result<bool> {
    walk_datagram(datagram, seq, dump, interrupted, |bytes| {
        if let NetlinkPayload::InnerMessage(m) =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(invalid_data)?.payload
        {
            replies.push(m);
        }
        Ok(())
    })
}

/// Reads, out of one datagram of a link dump answering request `seq`, the links named in
/// `names` into `links`, at most one per name; `Ok(true)` once the dump is complete. Pure, so
/// the fuzz target `netlink` can feed it arbitrary bytes.
///
/// A link message is decoded only once its `IFLA_IFNAME` (found by walking its attributes
/// without decoding them) is one of `names` and not already in `links`: the others are
/// skipped, whatever they hold, so `links` never outgrows `names` and an unwanted link costs
/// no allocation. A malformed message is an error only if it is decoded.
pub fn parse_link_datagram(
    datagram: &[u8],
    seq: u32,
    names: &[&str],
    links: &mut Vec<LinkRecord>,
    interrupted: &mut bool,
) -> io::Result<bool> {
    walk_datagram(datagram, seq, true, interrupted, |bytes| {
        let buffer = NetlinkBuffer::new(bytes);
        if buffer.message_type() != RTM_NEWLINK || links.len() >= names.len() {
            return Ok(());
        }
        let Some(name) = link_name(buffer.payload()) else { return Ok(()) };
        if !names.iter().any(|n| n.as_bytes() == name) || links.iter().any(|l| l.name.as_bytes() == name) {
            return Ok(());
        }
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(invalid_data)?.payload
        {
            links.push(LinkRecord::from_message(&link));
        }
        Ok(())
    })
}

/// The `IFLA_IFNAME` of a link message's payload, without its NUL, read in place; `None` when
/// the message has none or its attributes are malformed before it.
fn link_name(payload: &[u8]) -> Option<&[u8]> {
    for nla in NlasIterator::new(payload.get(IFINFOMSG_LEN..)?) {
        let nla = nla.ok()?;
        if nla.kind() & NLA_TYPE_MASK == IFLA_IFNAME {
            // `new_checked` saw 4 <= length <= the buffer's.
            let length = usize::from(nla.length());
            let value = &nla.into_inner()[4..length];
            return value.split(|&b| b == 0).next();
        }
    }
    None
}

/// A non-blocking socket that hears the host's link changes.
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    pub fn new() -> io::Result<LinkEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        Ok(LinkEvents { socket, buf: vec![0; 32 * 1024] })
    }

    /// Reads every pending notification. Each carries the whole link (the kernel fills it like
    /// a dump's answer), so the host's link list is kept current from them alone, without
    /// asking the kernel again.
    pub fn drain(&mut self) -> Drained {
        let mut drained = Drained::default();
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return drained,
                Ok(n) => {
                    let mut messages = Vec::new();
                    let mut interrupted = false;
                    // Notifications carry sequence number 0.
                    if parse_datagram(&self.buf[..n], 0, true, &mut messages, &mut interrupted).is_err() {
                        drained.lost = true;
                    }
                    for m in messages {
                        match m {
                            RouteNetlinkMessage::NewLink(link) => {
                                drained.changes.push(LinkChange::New(LinkRecord::from_message(&link)))
                            }
                            RouteNetlinkMessage::DelLink(link) => {
                                drained.changes.push(LinkChange::Deleted(link.header.index))
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ENOBUFS: the kernel dropped notifications; re-dump to be safe.
                Err(_) => {
                    drained.lost = true;
                    return drained;
                }
            }
        }
    }
}

/// What [`LinkEvents::drain`] heard.
#[derive(Debug, Default)]
pub struct Drained {
    pub changes: Vec<LinkChange>,
    /// Notifications were dropped (the socket's queue overflowed) or unreadable: the host's
    /// links must be dumped again.
    pub lost: bool,
}

/// One host link change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// A link added or changed: its whole record.
    New(LinkRecord),
    /// The link with this ifindex was removed.
    Deleted(u32),
}

/// Applies a change to the host's links; true when it may change a pod interface's peer (a
/// veth or netkit pointing into another namespace came, went or changed).
pub fn apply_link_change(links: &mut Vec<LinkRecord>, change: LinkChange) -> bool {
    let peer_like = |l: &LinkRecord| {
        matches!(l.kind.as_deref(), Some("veth") | Some("netkit")) && l.link_netnsid.is_some()
    };
    match change {
        LinkChange::New(link) => {
            let relevant = peer_like(&link);
            match links.iter_mut().find(|l| l.index == link.index) {
                Some(old) => {
                    let was = peer_like(old);
                    let changed = *old != link;
                    *old = link;
                    changed && (relevant || was)
                }
                None => {
                    links.push(link);
                    relevant
                }
            }
        }
        LinkChange::Deleted(index) => match links.iter().position(|l| l.index == index) {
            Some(i) => peer_like(&links.swap_remove(i)),
            None => false,
        },
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd owned by `socket`, pointer and length describe a live timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>, link: Option<u32>, nsid: Option<i32>) -> LinkRecord {
        LinkRecord { index, name: name.into(), kind: kind.map(Into::into), link, link_netnsid: nsid }
    }

    /// A node with more than the capture below shows: pod A (nsid 0) with eth0 and a second
    /// veth net1, pod B (nsid 1) whose eth0 has the same ifindex as pod A's, a macvlan pod
    /// (nsid 2), a vxlan and the physical uplink. Built by hand from the fields the captured
    /// messages carry.
    fn captured_host() -> Vec<LinkRecord> {
        vec![
            link(1, "lo", None, None, None),
            link(2, "ens4", None, None, None),
            link(7, "vethA0", Some("veth"), Some(2), Some(0)),
            link(8, "vethA1", Some("veth"), Some(3), Some(0)),
            link(9, "vethB0", Some("veth"), Some(2), Some(1)),
            // A host vxlan with a link-netns elsewhere must never be taken for a peer.
            link(10, "vx0", Some("vxlan"), Some(2), Some(1)),
            link(11, "podman0", Some("bridge"), None, None),
        ]
    }

    #[test]
    fn each_pod_interface_gets_the_veth_that_points_at_its_ifindex_in_its_namespace() {
        let pod_a = vec![
            link(1, "lo", None, None, None),
            link(2, "eth0", Some("veth"), Some(7), Some(0)),
            link(3, "net1", Some("veth"), Some(8), Some(0)),
        ];
        let peers = match_host_peers(0, &pod_a, &captured_host());
        assert_eq!(peers.get("eth0").map(String::as_str), Some("vethA0"));
        assert_eq!(peers.get("net1").map(String::as_str), Some("vethA1"));
        assert_eq!(peers.get("lo"), None);
        assert_eq!(peers.len(), 2);

        // Same ifindex 2 in another namespace: the nsid tells them apart.
        let pod_b = vec![link(2, "eth0", Some("veth"), Some(9), Some(0))];
        let peers = match_host_peers(1, &pod_b, &captured_host());
        assert_eq!(peers.get("eth0").map(String::as_str), Some("vethB0"));
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn macvlan_and_unknown_namespaces_have_no_peer() {
        let macvlan = vec![link(2, "eth0", Some("macvlan"), Some(2), Some(0))];
        assert!(match_host_peers(2, &macvlan, &captured_host()).is_empty());
        let pod_a = vec![link(2, "eth0", Some("veth"), Some(7), Some(0))];
        assert!(match_host_peers(5, &pod_a, &captured_host()).is_empty());
    }

    /// Real RTM_NEWLINK messages, as the kernel sent them, parsed and matched.
    #[test]
    fn captured_kernel_messages_match_the_pod_eth0_to_its_host_veth() {
        let mut host = Vec::new();
        let mut pod = Vec::new();
        for line in include_str!("testdata/rtnl_links.txt").lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split_whitespace();
            let (side, name, hex) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload else {
                panic!("{side} {name}: not a link message");
            };
            let rec = LinkRecord::from_message(&link);
            assert_eq!(rec.name, name);
            if side == "HOST" {
                host.push(rec)
            } else {
                pod.push(rec)
            }
        }
        let vcap0 = host.iter().find(|l| l.name == "vcap0").expect("vcap0 captured");
        let eth0 = pod.iter().find(|l| l.name == "eth0").expect("eth0 captured");
        assert_eq!(vcap0.kind.as_deref(), Some("veth"));
        assert_eq!(vcap0.link_netnsid, Some(0));
        assert_eq!(vcap0.link, Some(eth0.index));
        assert_eq!(eth0.link, Some(vcap0.index), "and the pod side points back at the host veth");
        let peers = match_host_peers(0, &pod, &host);
        assert_eq!(peers.get("eth0").map(String::as_str), Some("vcap0"));
        assert_eq!(peers.len(), 1, "lo has no peer: {peers:?}");
        assert!(match_host_peers(1, &pod, &host).is_empty(), "another namespace id matches nothing");
    }

    /// One netlink message as the kernel sends it in a link dump: header, `ifinfomsg`, then
    /// the attributes given (type and value), each padded to 4 bytes.
    fn raw_link(seq: u32, index: i32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        out[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        out[6..8].copy_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        out[20..24].copy_from_slice(&index.to_ne_bytes());
        for (kind, value) in attributes {
            out.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            out.resize((out.len() + 3) & !3, 0);
        }
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out
    }

    fn raw_done(seq: u32) -> Vec<u8> {
        let mut out = vec![0u8; 20];
        out[0..4].copy_from_slice(&20u32.to_ne_bytes());
        out[4..6].copy_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        out[6..8].copy_from_slice(&2u16.to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        out
    }

    fn ifname(name: &str) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn a_pod_dump_keeps_only_the_named_links_of_thousands() {
        let mut datagram = Vec::new();
        for i in 0..10_000 {
            let name = match i {
                1 => "lo".to_owned(),
                5_000 => "eth0".to_owned(),
                _ => format!("dummy{i}"),
            };
            datagram.extend(raw_link(
                7,
                i + 1,
                &[(IFLA_IFNAME, &ifname(&name)), (4, &1500u32.to_ne_bytes())],
            ));
        }
        // A second link named eth0 (impossible in one namespace) is not kept twice.
        datagram.extend(raw_link(7, 20_000, &[(IFLA_IFNAME, &ifname("eth0"))]));
        datagram.extend(raw_done(7));
        let mut links = Vec::new();
        let mut interrupted = false;
        let names = ["eth0", "lo", "net1"];
        assert!(parse_link_datagram(&datagram, 7, &names, &mut links, &mut interrupted).unwrap());
        assert!(!interrupted);
        assert_eq!(links, [link(2, "lo", None, None, None), link(5_001, "eth0", None, None, None)]);

        // The same dump split over two datagrams: not complete until DONE.
        let half = raw_link(7, 1, &[(IFLA_IFNAME, &ifname("lo"))]);
        let mut links = Vec::new();
        assert!(!parse_link_datagram(&half, 7, &names, &mut links, &mut interrupted).unwrap());
        assert!(parse_link_datagram(&raw_done(7), 7, &names, &mut links, &mut interrupted).unwrap());
        assert_eq!(links.len(), 1);
    }

    #[test]
    fn unnamed_links_of_a_pod_dump_are_not_decoded() {
        // IFLA_MTU of two bytes does not decode: an error for a named link only.
        let bad_mtu: (u16, &[u8]) = (4, &[1, 2]);
        let mut datagram = raw_link(3, 2, &[(IFLA_IFNAME, &ifname("junk0")), bad_mtu]);
        datagram.extend(raw_link(3, 3, &[(IFLA_IFNAME, &ifname("eth0")), (5, &2u32.to_ne_bytes())]));
        // No name at all, and attributes that do not even walk: skipped.
        datagram.extend(raw_link(3, 4, &[]));
        datagram.extend(raw_link(3, 5, &[(99, &[0; 3])]).into_iter().take(36).chain([0xff, 0xff, 0, 0]));
        datagram.extend(raw_done(3));
        let mut links = Vec::new();
        let mut interrupted = false;
        assert!(parse_link_datagram(&datagram, 3, &["eth0"], &mut links, &mut interrupted).unwrap());
        assert_eq!(links, [link(3, "eth0", None, Some(2), None)]);

        let mut links = Vec::new();
        let err = parse_link_datagram(&datagram, 3, &["junk0"], &mut links, &mut interrupted).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The generic reader decodes everything, so it fails on the unnamed link too.
        assert!(parse_datagram(&datagram, 3, true, &mut Vec::new(), &mut interrupted).is_err());
    }

    #[test]
    fn a_pod_dump_reads_eth0_out_of_the_captured_kernel_messages() {
        let mut expected = None;
        let mut datagram = Vec::new();
        for line in include_str!("testdata/rtnl_links.txt").lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split_whitespace();
            let (side, name, hex) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
            if side == "HOST" {
                continue;
            }
            let mut bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            bytes[8..12].copy_from_slice(&9u32.to_ne_bytes());
            if name == "eth0" {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
                let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = msg.payload else {
                    panic!()
                };
                expected = Some(LinkRecord::from_message(&l));
            }
            datagram.extend(&bytes);
            datagram.resize((datagram.len() + 3) & !3, 0);
        }
        datagram.extend(raw_done(9));
        let mut links = Vec::new();
        assert!(parse_link_datagram(&datagram, 9, &["eth0"], &mut links, &mut false).unwrap());
        assert_eq!(links, [expected.expect("eth0 captured")]);
    }

    #[test]
    fn link_records_read_name_kind_link_and_netnsid_from_attributes() {
        let mut msg = LinkMessage::default();
        msg.header.index = 42;
        msg.attributes = vec![
            LinkAttribute::IfName("vh0".into()),
            LinkAttribute::Link(2),
            LinkAttribute::LinkNetNsId(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        // Round-trip through the wire format, as a real dump would arrive.
        let mut header = NetlinkHeader::default();
        header.sequence_number = 1;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::NewLink(msg)));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(back)) = parsed.payload else {
            panic!("not a link message: {parsed:?}");
        };
        assert_eq!(LinkRecord::from_message(&back), link(42, "vh0", Some("veth"), Some(2), Some(3)));
    }
}
