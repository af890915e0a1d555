//! TCP and UDP health of a network namespace: pure parsers for `/proc/<pid>/net/snmp`,
//! `net/netstat`, `net/snmp6`, `net/sockstat` and `net/sockstat6`, the choice of metrics, and
//! their points.
//!
//! Every counter here is kept per network namespace by the kernel (its SNMP MIBs live in
//! `struct net`), so one read of a pod's files is the pod's count, whatever its containers.
//! Not reported, though sockstat prints them: `orphan`, `alloc` and `mem`. They are the
//! kernel's totals for the whole host (`tcp_orphan_count`, `tcp_sockets_allocated`,
//! `proto_memory_allocated`), printed the same in every namespace: checked on 6.18, where a
//! fresh, empty namespace showed the host's `alloc 6 mem 97`.
//!
//! Fields come and go between kernel versions (`Udp: IgnoredMulti` from 3.19, `MemErrors` from
//! 5.x, `TcpExt` grows every few releases), so header/value line pairs are matched by name,
//! never by position; a counter the kernel does not print is `None` and gets no point.
//!
//! Not the `procfs` crate's `Snmp`: it requires every field of the 4.x layout (a kernel
//! without `Icmp: InCsumErrors` fails), reads no `netstat` or `sockstat`, and builds a
//! `HashMap` of owned strings per read; the by-name scan here allocates nothing. Measured with
//! `benches/netns_protocols.rs` on the kernel 6.18 fixtures (conditions in
//! `docs/network-health.md`): `procfs`'s `Snmp` 29 µs and `Snmp6` 17 µs against 1.1 µs and
//! 2.2 µs here, per read of one namespace's file.

use serde::Deserialize;

pub use crate::sources::ParseError;

use crate::glob::Glob;
use crate::model::{AttrValue, Point, Value};
use crate::semconv::{self, ProtocolFamily};

/// `Tcp:` of `net/snmp`. TCP's MIB is one for both IP versions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tcp {
    pub active_opens: Option<u64>,
    pub passive_opens: Option<u64>,
    pub attempt_fails: Option<u64>,
    pub estab_resets: Option<u64>,
    pub curr_estab: Option<u64>,
    pub in_segs: Option<u64>,
    pub out_segs: Option<u64>,
    pub retrans_segs: Option<u64>,
    pub in_errs: Option<u64>,
    pub out_rsts: Option<u64>,
}

/// The `TcpExt:` counters of `net/netstat` that podometer reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpExt {
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
    pub syn_retrans: Option<u64>,
    pub timeouts: Option<u64>,
}

/// `Udp:` of `net/snmp` (IPv4) or the `Udp6*` lines of `net/snmp6` (IPv6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Udp {
    pub in_datagrams: Option<u64>,
    pub no_ports: Option<u64>,
    pub in_errors: Option<u64>,
    pub out_datagrams: Option<u64>,
    pub rcvbuf_errors: Option<u64>,
    pub sndbuf_errors: Option<u64>,
}

/// The per-namespace fields of `net/sockstat` (`TCP`, `UDP`) or `net/sockstat6` (`TCP6`,
/// `UDP6`; no `tw` there: TIME-WAIT sockets of both versions are counted in sockstat's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sockets {
    pub tcp_in_use: Option<u64>,
    pub udp_in_use: Option<u64>,
    pub tcp_time_wait: Option<u64>,
}

/// `net/snmp`: the `Tcp` and `Udp` sections.
pub fn parse_snmp(text: &str) -> Result<(Tcp, Udp), ParseError> {
    let (mut tcp, mut udp) = (Tcp::default(), Udp::default());
    header_value_pairs(text, &["Tcp", "Udp"], |section, name, value| {
        let slot = match (section, name) {
            ("Tcp", "ActiveOpens") => &mut tcp.active_opens,
            ("Tcp", "PassiveOpens") => &mut tcp.passive_opens,
            ("Tcp", "AttemptFails") => &mut tcp.attempt_fails,
            ("Tcp", "EstabResets") => &mut tcp.estab_resets,
            ("Tcp", "CurrEstab") => &mut tcp.curr_estab,
            ("Tcp", "InSegs") => &mut tcp.in_segs,
            ("Tcp", "OutSegs") => &mut tcp.out_segs,
            ("Tcp", "RetransSegs") => &mut tcp.retrans_segs,
            ("Tcp", "InErrs") => &mut tcp.in_errs,
            ("Tcp", "OutRsts") => &mut tcp.out_rsts,
            ("Udp", name) => match udp_slot(&mut udp, name) {
                Some(slot) => slot,
                None => return Ok(Walk::On),
            },
            _ => return Ok(Walk::On),
        };
        *slot = Some(number(name, value)?);
        Ok(Walk::On)
    })?;
    Ok((tcp, udp))
}

/// Which `TcpExt` counters [`parse_netstat`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpExtWanted {
    /// `ListenOverflows` and `ListenDrops`.
    pub listen: bool,
    pub syn_retrans: bool,
    pub timeouts: bool,
}

impl TcpExtWanted {
    pub const ALL: TcpExtWanted = TcpExtWanted { listen: true, syn_retrans: true, timeouts: true };
}

/// `net/netstat`: the wanted `TcpExt` counters. The walk stops at the last one wanted: the
/// listen counters are the 20th and 21st of 136 fields on 6.18, and `IpExt` and `MPTcpExt`
/// follow; splitting all of them cost 8 µs a read against 1 µs (`benches/netns_protocols.rs`).
pub fn parse_netstat(text: &str, wanted: TcpExtWanted) -> Result<TcpExt, ParseError> {
    let mut ext = TcpExt::default();
    let needed =
        2 * usize::from(wanted.listen) + usize::from(wanted.syn_retrans) + usize::from(wanted.timeouts);
    let mut found = 0;
    header_value_pairs(text, &["TcpExt"], |_, name, value| {
        let slot = match name {
            "ListenOverflows" if wanted.listen => &mut ext.listen_overflows,
            "ListenDrops" if wanted.listen => &mut ext.listen_drops,
            "TCPSynRetrans" if wanted.syn_retrans => &mut ext.syn_retrans,
            "TCPTimeouts" if wanted.timeouts => &mut ext.timeouts,
            _ => return Ok(Walk::On),
        };
        *slot = Some(number(name, value)?);
        found += 1;
        Ok(if found == needed { Walk::Stop } else { Walk::On })
    })?;
    Ok(ext)
}

/// `net/snmp6`: one `Name value` pair per line; the `Udp6*` ones, which the kernel prints
/// together. The ~90 `Ip6`/`Icmp6` lines before them are skipped in one substring search, not
/// split: splitting them cost as much as reading the file (`benches/netns_protocols.rs`).
pub fn parse_snmp6(text: &str) -> Result<Udp, ParseError> {
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut udp = Udp::default();
    let start = if text.starts_with("Udp6") { Some(0) } else { text.find("\nUdp6").map(|i| i + 1) };
    let Some(start) = start else { return Ok(udp) };
    for (i, line) in text[start..].lines().enumerate() {
        if !line.starts_with("Udp6") {
            break;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            // Counted only for the message: the skipped lines before the block.
            let line_no = text[..start].matches('\n').count() + 1 + i;
            return Err(ParseError::at_line(line_no, format!("not `name value`: `{line}`")));
        };
        if let Some(slot) = udp_slot(&mut udp, &name["Udp6".len()..]) {
            *slot = Some(number(name, value)?);
        }
    }
    Ok(udp)
}

/// `net/sockstat` or `net/sockstat6`: `PROTO: key value key value ...` per line.
pub fn parse_sockstat(text: &str) -> Result<Sockets, ParseError> {
    let mut out = Sockets::default();
    let mut any = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (proto, rest) = line
            .split_once(':')
            .ok_or_else(|| ParseError::at_line(i + 1, format!("no `:` after the protocol in `{line}`")))?;
        any = true;
        let mut fields = rest.split_whitespace();
        while let Some(key) = fields.next() {
            let value = fields
                .next()
                .ok_or_else(|| ParseError::at_line(i + 1, format!("`{proto}: {key}` has no value")))?;
            let slot = match (proto, key) {
                ("TCP" | "TCP6", "inuse") => &mut out.tcp_in_use,
                ("UDP" | "UDP6", "inuse") => &mut out.udp_in_use,
                ("TCP", "tw") => &mut out.tcp_time_wait,
                _ => continue,
            };
            *slot = Some(number(key, value)?);
        }
    }
    if any {
        Ok(out)
    } else {
        Err(ParseError::Empty)
    }
}

fn udp_slot<'u>(udp: &'u mut Udp, name: &str) -> Option<&'u mut Option<u64>> {
    Some(match name {
        "InDatagrams" => &mut udp.in_datagrams,
        "NoPorts" => &mut udp.no_ports,
        "InErrors" => &mut udp.in_errors,
        "OutDatagrams" => &mut udp.out_datagrams,
        "RcvbufErrors" => &mut udp.rcvbuf_errors,
        "SndbufErrors" => &mut udp.sndbuf_errors,
        _ => return None,
    })
}

fn number(key: &str, text: &str) -> Result<u64, ParseError> {
    text.parse().map_err(|_| ParseError::BadNumber { key: key.to_owned(), text: text.to_owned() })
}

/// Whether [`header_value_pairs`] goes on after a field.
enum Walk {
    On,
    /// Everything wanted was found: the rest of the text is not looked at.
    Stop,
}

/// Walks `Section: name name ...` / `Section: value value ...` line pairs (`net/snmp`,
/// `net/netstat`), calling `each(section, name, value)` for every field of the `wanted`
/// sections; the others are passed over without splitting their fields (`TcpExt` alone has
/// 136). A header without its values line, a values line of another section or, in a wanted
/// section, another count of values than names is an error: the pairing is what says which
/// number is which.
fn header_value_pairs<'t>(
    text: &'t str,
    wanted: &[&str],
    mut each: impl FnMut(&'t str, &'t str, &'t str) -> Result<Walk, ParseError>,
) -> Result<(), ParseError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let mut any = false;
    while let Some((i, header)) = lines.next() {
        any = true;
        let Some((j, values)) = lines.next() else {
            return Err(ParseError::at_line(i + 1, "a header line without its line of values"));
        };
        let split = |n: usize, line: &'t str| {
            line.split_once(':')
                .map(|(s, rest)| (s.trim(), rest))
                .ok_or_else(|| ParseError::at_line(n + 1, format!("no `Section:` in `{line}`")))
        };
        let ((section, names), (again, numbers)) = (split(i, header)?, split(j, values)?);
        if section != again {
            return Err(ParseError::at_line(
                j + 1,
                format!("values of `{again}` after the header of `{section}`"),
            ));
        }
        if !wanted.contains(&section) {
            continue;
        }
        let (mut names, mut numbers) = (names.split_whitespace(), numbers.split_whitespace());
        loop {
            match (names.next(), numbers.next()) {
                (Some(name), Some(value)) => {
                    if let Walk::Stop = each(section, name, value)? {
                        return Ok(());
                    }
                }
                (None, None) => break,
                _ => {
                    return Err(ParseError::at_line(
                        j + 1,
                        format!("`{section}`: as many names as values expected"),
                    ))
                }
            }
        }
    }
    if any {
        Ok(())
    } else {
        Err(ParseError::Empty)
    }
}

/// One namespace's counters, each part `None` when its file was not read (not wanted, or not
/// there: `snmp6` and `sockstat6` are missing where IPv6 is off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolCounters {
    pub tcp: Option<Tcp>,
    pub tcp_ext: Option<TcpExt>,
    pub udp4: Option<Udp>,
    pub udp6: Option<Udp>,
    pub sockets4: Option<Sockets>,
    pub sockets6: Option<Sockets>,
}

/// The files a namespace's protocol counters come from, in the order they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolFile {
    Snmp,
    Netstat,
    Snmp6,
    Sockstat,
    Sockstat6,
}

impl ProtocolFile {
    pub const ALL: [ProtocolFile; 5] = [
        ProtocolFile::Snmp,
        ProtocolFile::Netstat,
        ProtocolFile::Snmp6,
        ProtocolFile::Sockstat,
        ProtocolFile::Sockstat6,
    ];

    /// The file's path under `/proc/<pid>/`.
    pub fn path(self) -> &'static str {
        match self {
            ProtocolFile::Snmp => "net/snmp",
            ProtocolFile::Netstat => "net/netstat",
            ProtocolFile::Snmp6 => "net/snmp6",
            ProtocolFile::Sockstat => "net/sockstat",
            ProtocolFile::Sockstat6 => "net/sockstat6",
        }
    }

    /// The IPv6 files are absent where IPv6 is off (`ipv6.disable=1`): that is no error.
    pub fn optional(self) -> bool {
        matches!(self, ProtocolFile::Snmp6 | ProtocolFile::Sockstat6)
    }
}

/// Every protocol metric, the index of its entry in [`ProtocolSelection`]'s choice, so that a
/// sweep looks one up by index rather than by name; each has one entry in [`METRICS`] (which a
/// test checks).
#[derive(Debug, Clone, Copy)]
enum Pm {
    TcpSegmentCount,
    TcpRetransmitted,
    TcpErrors,
    TcpResets,
    TcpActiveOpens,
    TcpPassiveOpens,
    TcpFailedOpens,
    TcpListenOverflows,
    TcpListenDrops,
    TcpSynRetransmitted,
    TcpTimeouts,
    UdpDatagrams,
    UdpNoPort,
    UdpErrors,
    UdpBufferErrors,
    Connections,
    Sockets,
}

/// One reported metric: its name under `<prefix>.network.` and the files it needs.
struct Metric {
    id: Pm,
    name: &'static str,
    files: &'static [ProtocolFile],
}

use ProtocolFile::{Netstat, Snmp, Snmp6, Sockstat, Sockstat6};

/// Every protocol metric; the names `protocol_metrics.include`/`exclude` match.
static METRICS: &[Metric] = &[
    Metric { id: Pm::TcpSegmentCount, name: "tcp.segment.count", files: &[Snmp] },
    Metric { id: Pm::TcpRetransmitted, name: "tcp.segment.retransmitted", files: &[Snmp] },
    Metric { id: Pm::TcpErrors, name: "tcp.segment.errors", files: &[Snmp] },
    Metric { id: Pm::TcpResets, name: "tcp.reset.count", files: &[Snmp] },
    Metric { id: Pm::TcpActiveOpens, name: "tcp.open.active", files: &[Snmp] },
    Metric { id: Pm::TcpPassiveOpens, name: "tcp.open.passive", files: &[Snmp] },
    Metric { id: Pm::TcpFailedOpens, name: "tcp.open.failed", files: &[Snmp] },
    Metric { id: Pm::TcpListenOverflows, name: "tcp.listen.overflows", files: &[Netstat] },
    Metric { id: Pm::TcpListenDrops, name: "tcp.listen.drops", files: &[Netstat] },
    Metric { id: Pm::TcpSynRetransmitted, name: "tcp.syn.retransmitted", files: &[Netstat] },
    Metric { id: Pm::TcpTimeouts, name: "tcp.timeouts", files: &[Netstat] },
    Metric { id: Pm::UdpDatagrams, name: "udp.datagram.count", files: &[Snmp, Snmp6] },
    Metric { id: Pm::UdpNoPort, name: "udp.no_port", files: &[Snmp, Snmp6] },
    Metric { id: Pm::UdpErrors, name: "udp.errors", files: &[Snmp, Snmp6] },
    Metric { id: Pm::UdpBufferErrors, name: "udp.buffer_errors", files: &[Snmp, Snmp6] },
    Metric { id: Pm::Connections, name: "connection.count", files: &[Snmp, Sockstat] },
    Metric { id: Pm::Sockets, name: "socket.count", files: &[Sockstat, Sockstat6] },
];

/// The default set: what says a pod's network is unhealthy, from three files per namespace.
fn default_include() -> Vec<Glob> {
    ["tcp.segment.retransmitted", "tcp.reset.count", "tcp.listen.*", "udp.buffer_errors"]
        .into_iter()
        .map(Glob::new)
        .collect()
}

/// Which TCP/UDP counters the netns source reports for each namespace, by name under
/// `<prefix>.network.` (`tcp.segment.retransmitted` for `k8s.pod.network.tcp.segment.retransmitted`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProtocolMetricsConfig {
    /// Metrics to report, as globs over those names. Default: `tcp.segment.retransmitted`,
    /// `tcp.reset.count`, `tcp.listen.*`, `udp.buffer_errors` (three files per namespace:
    /// `snmp`, `netstat`, `snmp6`). `["*"]`: all of them; `[]`: none, and no file is read.
    #[serde(default = "default_include")]
    pub include: Vec<Glob>,
    /// Metrics never reported, as globs; applied after `include`.
    #[serde(default)]
    pub exclude: Vec<Glob>,
}

impl Default for ProtocolMetricsConfig {
    fn default() -> Self {
        ProtocolMetricsConfig { include: default_include(), exclude: Vec::new() }
    }
}

impl ProtocolMetricsConfig {
    /// Problems as (key, reason), for the config check: a glob that matches no metric is a
    /// typo that would silently report nothing.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, globs) in [("include", &self.include), ("exclude", &self.exclude)] {
            for g in globs {
                if !METRICS.iter().any(|m| g.matches(m.name)) {
                    let names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
                    out.push((
                        format!("protocol_metrics.{key}"),
                        format!(
                            "`{}` matches no protocol metric (they are: {})",
                            g.as_str(),
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// The metrics chosen by a [`ProtocolMetricsConfig`] and the files they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolSelection {
    wanted: Vec<bool>,
    files: Vec<ProtocolFile>,
}

impl ProtocolSelection {
    pub fn new(config: &ProtocolMetricsConfig) -> ProtocolSelection {
        let mut wanted = vec![false; METRICS.len()];
        for m in METRICS {
            wanted[m.id as usize] = config.include.iter().any(|g| g.matches(m.name))
                && !config.exclude.iter().any(|g| g.matches(m.name));
        }
        let files = ProtocolFile::ALL
            .into_iter()
            .filter(|f| METRICS.iter().any(|m| wanted[m.id as usize] && m.files.contains(f)))
            .collect();
        ProtocolSelection { wanted, files }
    }

    /// The files to read per namespace and sweep; empty when no metric is wanted.
    pub fn files(&self) -> &[ProtocolFile] {
        &self.files
    }

    /// Parses the text of file `kind` into its part of `into`, looking only for what is wanted
    /// where that saves work (`netstat`).
    pub fn parse(
        &self,
        kind: ProtocolFile,
        text: &str,
        into: &mut ProtocolCounters,
    ) -> Result<(), ParseError> {
        match kind {
            ProtocolFile::Snmp => {
                let (tcp, udp) = parse_snmp(text)?;
                (into.tcp, into.udp4) = (Some(tcp), Some(udp));
            }
            ProtocolFile::Netstat => {
                let wanted = TcpExtWanted {
                    listen: self.wants(Pm::TcpListenOverflows) || self.wants(Pm::TcpListenDrops),
                    syn_retrans: self.wants(Pm::TcpSynRetransmitted),
                    timeouts: self.wants(Pm::TcpTimeouts),
                };
                into.tcp_ext = Some(parse_netstat(text, wanted)?);
            }
            ProtocolFile::Snmp6 => into.udp6 = Some(parse_snmp6(text)?),
            ProtocolFile::Sockstat => into.sockets4 = Some(parse_sockstat(text)?),
            ProtocolFile::Sockstat6 => into.sockets6 = Some(parse_sockstat(text)?),
        }
        Ok(())
    }

    fn wants(&self, m: Pm) -> bool {
        self.wanted[m as usize]
    }

    /// The wanted metrics of `family` that `counters` has values for, as points. Counters the
    /// kernel did not print get no point (never a zero in their place). Runs per namespace and
    /// sweep: a metric is looked up by index and a point's attributes are built only when it
    /// is wanted.
    pub fn points(&self, family: &'static ProtocolFamily, c: &ProtocolCounters, out: &mut Vec<Point>) {
        type Attrs = Vec<(&'static str, AttrValue)>;
        let dir = |d: &'static str| (semconv::NETWORK_IO_DIRECTION, AttrValue::constant(d));
        let (rx, tx) = (semconv::DIRECTION_RECEIVE, semconv::DIRECTION_TRANSMIT);
        let mut push = |m: Pm,
                        desc: &'static crate::model::MetricDesc,
                        value: Option<u64>,
                        attrs: &dyn Fn() -> Attrs| {
            if let (Some(v), true) = (value, self.wants(m)) {
                let mut p = Point::new(desc, Value::from_u64(v));
                p.attributes = attrs();
                out.push(p);
            }
        };
        let none = || Attrs::new();
        if let Some(t) = &c.tcp {
            push(Pm::TcpSegmentCount, &family.tcp_segments, t.in_segs, &|| vec![dir(rx)]);
            push(Pm::TcpSegmentCount, &family.tcp_segments, t.out_segs, &|| vec![dir(tx)]);
            push(Pm::TcpRetransmitted, &family.tcp_retransmitted, t.retrans_segs, &none);
            push(Pm::TcpErrors, &family.tcp_errors, t.in_errs, &none);
            push(Pm::TcpResets, &family.tcp_resets, t.estab_resets, &|| vec![dir(rx)]);
            push(Pm::TcpResets, &family.tcp_resets, t.out_rsts, &|| vec![dir(tx)]);
            push(Pm::TcpActiveOpens, &family.tcp_active_opens, t.active_opens, &none);
            push(Pm::TcpPassiveOpens, &family.tcp_passive_opens, t.passive_opens, &none);
            push(Pm::TcpFailedOpens, &family.tcp_failed_opens, t.attempt_fails, &none);
            push(Pm::Connections, &family.connections, t.curr_estab, &|| {
                connection(semconv::CONNECTION_ESTABLISHED)
            });
        }
        if let Some(e) = &c.tcp_ext {
            push(Pm::TcpListenOverflows, &family.tcp_listen_overflows, e.listen_overflows, &none);
            push(Pm::TcpListenDrops, &family.tcp_listen_drops, e.listen_drops, &none);
            push(Pm::TcpSynRetransmitted, &family.tcp_syn_retransmitted, e.syn_retrans, &none);
            push(Pm::TcpTimeouts, &family.tcp_timeouts, e.timeouts, &none);
        }
        for (udp, version) in [(&c.udp4, semconv::NETWORK_TYPE_IPV4), (&c.udp6, semconv::NETWORK_TYPE_IPV6)] {
            let Some(u) = udp else { continue };
            let ty = || (semconv::NETWORK_TYPE, AttrValue::constant(version));
            push(Pm::UdpDatagrams, &family.udp_datagrams, u.in_datagrams, &|| vec![dir(rx), ty()]);
            push(Pm::UdpDatagrams, &family.udp_datagrams, u.out_datagrams, &|| vec![dir(tx), ty()]);
            push(Pm::UdpNoPort, &family.udp_no_port, u.no_ports, &|| vec![ty()]);
            push(Pm::UdpErrors, &family.udp_errors, u.in_errors, &|| vec![ty()]);
            push(Pm::UdpBufferErrors, &family.udp_buffer_errors, u.rcvbuf_errors, &|| vec![dir(rx), ty()]);
            push(Pm::UdpBufferErrors, &family.udp_buffer_errors, u.sndbuf_errors, &|| vec![dir(tx), ty()]);
        }
        if let Some(s) = &c.sockets4 {
            push(Pm::Connections, &family.connections, s.tcp_time_wait, &|| {
                connection(semconv::CONNECTION_TIME_WAIT)
            });
        }
        for (sockets, version) in
            [(&c.sockets4, semconv::NETWORK_TYPE_IPV4), (&c.sockets6, semconv::NETWORK_TYPE_IPV6)]
        {
            let Some(s) = sockets else { continue };
            for (transport, value) in
                [(semconv::TRANSPORT_TCP, s.tcp_in_use), (semconv::TRANSPORT_UDP, s.udp_in_use)]
            {
                push(Pm::Sockets, &family.sockets, value, &|| {
                    vec![
                        (semconv::NETWORK_TRANSPORT, AttrValue::constant(transport)),
                        (semconv::NETWORK_TYPE, AttrValue::constant(version)),
                    ]
                });
            }
        }
    }
}

fn connection(state: &'static str) -> Vec<(&'static str, AttrValue)> {
    vec![
        (semconv::NETWORK_TRANSPORT, AttrValue::constant(semconv::TRANSPORT_TCP)),
        (semconv::NETWORK_CONNECTION_STATE, AttrValue::constant(state)),
    ]
}

/// Every protocol metric's name under `<prefix>.network.` and the files it is read from, for
/// the docs' check.
pub fn metric_files() -> impl Iterator<Item = (&'static str, &'static [ProtocolFile])> {
    METRICS.iter().map(|m| (m.name, m.files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(kernel: &str, file: &str) -> String {
        let path = format!("{}/fixtures/net_protocols/{kernel}/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn snmp_of_two_kernels_is_read_by_name() {
        let (tcp, udp) = parse_snmp(&fixture("linux-6.18", "snmp")).unwrap();
        // Recorded after one loopback connection: 1 active and 1 passive open, 6 segments each
        // way, the closing RST counted once sent and once as a reset connection.
        assert_eq!(tcp.active_opens, Some(1));
        assert_eq!(tcp.passive_opens, Some(1));
        assert_eq!((tcp.in_segs, tcp.out_segs), (Some(6), Some(6)));
        assert_eq!((tcp.out_rsts, tcp.estab_resets), (Some(1), Some(1)));
        assert_eq!(udp.in_datagrams, Some(0));

        let (tcp, udp) = parse_snmp(&fixture("older-3.x", "snmp")).unwrap();
        assert_eq!(tcp.retrans_segs, Some(227));
        assert_eq!(tcp.out_rsts, Some(1003));
        assert_eq!(tcp.in_errs, Some(5));
        assert_eq!(tcp.curr_estab, Some(0));
        assert_eq!(udp.no_ports, Some(120));
        assert_eq!(udp.out_datagrams, Some(53028));
    }

    #[test]
    fn a_field_moved_or_missing_is_found_by_name_or_left_out() {
        // Two fields swapped and one dropped, as kernels do between versions.
        let text =
            "Tcp: RtoAlgorithm RetransSegs InSegs\nTcp: 1 9 4\nUdp: RcvbufErrors InDatagrams\nUdp: 3 7\n";
        let (tcp, udp) = parse_snmp(text).unwrap();
        assert_eq!((tcp.retrans_segs, tcp.in_segs, tcp.out_segs), (Some(9), Some(4), None));
        assert_eq!((udp.rcvbuf_errors, udp.in_datagrams, udp.sndbuf_errors), (Some(3), Some(7), None));
    }

    #[test]
    fn netstat_of_two_kernels_and_a_counter_an_old_kernel_lacks() {
        let ext = parse_netstat(&fixture("linux-6.18", "netstat"), TcpExtWanted::ALL).unwrap();
        assert_eq!(ext.listen_overflows, Some(0));
        assert!(ext.syn_retrans.is_some() && ext.timeouts.is_some());
        let ext = parse_netstat(&fixture("older-3.x", "netstat"), TcpExtWanted::ALL).unwrap();
        // ListenOverflows and ListenDrops are the 20th and 21st names there; TCPTimeouts the 49th.
        assert_eq!((ext.listen_overflows, ext.listen_drops, ext.timeouts), (Some(0), Some(0), Some(115)));
        assert_eq!(ext.syn_retrans, None, "that kernel has no TCPSynRetrans: no value, not a zero");
    }

    #[test]
    fn netstat_is_walked_only_up_to_the_last_counter_wanted() {
        let text =
            "TcpExt: ListenOverflows ListenDrops Junk TCPTimeouts\nTcpExt: 3 4 x 9\nIpExt: A\nMPTcpExt: 1\n";
        let listen = TcpExtWanted { listen: true, syn_retrans: false, timeouts: false };
        let ext = parse_netstat(text, listen).expect("the walk stops before `Junk` and the broken IpExt");
        assert_eq!((ext.listen_overflows, ext.listen_drops, ext.timeouts), (Some(3), Some(4), None));
        assert!(parse_netstat(text, TcpExtWanted::ALL).is_err(), "walked further, the broken pair is found");
    }

    #[test]
    fn snmp6_and_sockstat() {
        let udp6 = parse_snmp6(&fixture("linux-6.18", "snmp6")).unwrap();
        assert_eq!(udp6.in_datagrams, Some(0));
        assert_eq!(udp6.rcvbuf_errors, Some(0));
        let s = parse_sockstat(&fixture("linux-6.18", "sockstat")).unwrap();
        assert_eq!((s.tcp_in_use, s.udp_in_use), (Some(0), Some(0)));
        assert!(s.tcp_time_wait.is_some());
        let s6 = parse_sockstat(&fixture("linux-6.18", "sockstat6")).unwrap();
        assert_eq!((s6.tcp_in_use, s6.udp_in_use, s6.tcp_time_wait), (Some(0), Some(0), None));
        let old = parse_sockstat(&fixture("rhel4-2.6.9", "sockstat")).unwrap();
        assert_eq!((old.tcp_in_use, old.tcp_time_wait, old.udp_in_use), (Some(4), Some(4), Some(0)));
    }

    #[test]
    fn broken_texts_are_errors() {
        for bad in [
            "",
            "Tcp: InSegs OutSegs\n",
            "Tcp: InSegs OutSegs\nUdp: 1 2\n",
            "Tcp: InSegs OutSegs\nTcp: 1\n",
            "Tcp: InSegs\nTcp: x\n",
            "Tcp InSegs\nTcp 1\n",
        ] {
            assert!(parse_snmp(bad).is_err(), "{bad:?}");
        }
        assert!(parse_netstat("TcpExt: ListenDrops\nTcpExt: -1\n", TcpExtWanted::ALL).is_err());
        assert!(parse_snmp6("Udp6InDatagrams 1 2\n").is_err());
        assert!(parse_snmp6("").is_err());
        assert!(parse_sockstat("TCP: inuse\n").is_err());
        assert!(parse_sockstat("TCP inuse 1\n").is_err());
        // Fields podometer does not read are not parsed: MaxConn is -1.
        assert!(parse_snmp("Tcp: MaxConn InSegs\nTcp: -1 5\n").is_ok());
    }

    #[test]
    fn the_default_set_reads_three_files_and_the_choice_follows_include_and_exclude() {
        let default = ProtocolSelection::new(&ProtocolMetricsConfig::default());
        assert_eq!(default.files(), &[Snmp, Netstat, Snmp6]);
        let none = ProtocolSelection::new(&ProtocolMetricsConfig { include: vec![], exclude: vec![] });
        assert!(none.files().is_empty());
        let all =
            ProtocolSelection::new(&ProtocolMetricsConfig { include: vec![Glob::new("*")], exclude: vec![] });
        assert_eq!(all.files(), &ProtocolFile::ALL);
        let tcp_only = ProtocolSelection::new(&ProtocolMetricsConfig {
            include: vec![Glob::new("*")],
            exclude: vec![Glob::new("udp.*"), Glob::new("socket.*"), Glob::new("connection.*")],
        });
        assert_eq!(tcp_only.files(), &[Snmp, Netstat]);
    }

    #[test]
    fn points_carry_directions_and_ip_versions_and_skip_what_the_kernel_did_not_print() {
        let family = &semconv::POD_NETWORK.protocols;
        let counters = ProtocolCounters {
            tcp: Some(Tcp { retrans_segs: Some(7), out_rsts: Some(2), estab_resets: None, ..Tcp::default() }),
            tcp_ext: Some(TcpExt { listen_overflows: Some(3), listen_drops: Some(4), ..TcpExt::default() }),
            udp4: Some(Udp { rcvbuf_errors: Some(5), sndbuf_errors: Some(0), ..Udp::default() }),
            udp6: Some(Udp { rcvbuf_errors: Some(1), ..Udp::default() }),
            ..ProtocolCounters::default()
        };
        let mut points = Vec::new();
        ProtocolSelection::new(&ProtocolMetricsConfig::default()).points(family, &counters, &mut points);
        let shown: Vec<String> = points
            .iter()
            .map(|p| {
                let attrs: Vec<String> = p
                    .attributes
                    .iter()
                    .map(|(k, v)| match v {
                        AttrValue::Str(s) => format!("{k}={s}"),
                        other => format!("{k}={other:?}"),
                    })
                    .collect();
                format!("{} {} {}", p.metric.name, attrs.join(","), p.value.as_f64())
            })
            .collect();
        assert_eq!(
            shown,
            [
                "k8s.pod.network.tcp.segment.retransmitted  7",
                "k8s.pod.network.tcp.reset.count network.io.direction=transmit 2",
                "k8s.pod.network.tcp.listen.overflows  3",
                "k8s.pod.network.tcp.listen.drops  4",
                "k8s.pod.network.udp.buffer_errors network.io.direction=receive,network.type=ipv4 5",
                "k8s.pod.network.udp.buffer_errors network.io.direction=transmit,network.type=ipv4 0",
                "k8s.pod.network.udp.buffer_errors network.io.direction=receive,network.type=ipv6 1",
            ]
        );
    }

    #[test]
    fn every_metric_index_has_one_entry() {
        let mut ids: Vec<usize> = METRICS.iter().map(|m| m.id as usize).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..METRICS.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_glob_that_matches_no_metric_is_a_config_error() {
        let config = ProtocolMetricsConfig { include: vec![Glob::new("tcp.retransmits")], exclude: vec![] };
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("tcp.segment.retransmitted"), "{problems:?}");
        assert!(ProtocolMetricsConfig::default().validate().is_empty());
    }
}
