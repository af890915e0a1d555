//! `naming: cadvisor`: the metric and label names cAdvisor (and the kubelet's
//! `/metrics/cadvisor`) expose, which the kubernetes-mixin dashboards and alerts query.
//!
//! Every podometer metric maps to one cAdvisor series name, split by the point attribute
//! cAdvisor encodes in the name (`cpu.mode`, direction, PSI stall type); the CPU modes are
//! also summed into `container_cpu_usage_seconds_total`. Labels: `namespace`, `pod`,
//! `container` (Kubernetes names, when a metadata processor set them), `name` (the runtime's
//! container name), `image`, `id` (container id, or the pod UID for pod totals), and
//! `interface` / `device` where cAdvisor has them. Pod totals carry `container=""`, as the
//! kubelet's pod cgroup does. Resources marked `podometer.host_network` get no network series.
//!
//! TCP counters map to cAdvisor's `container_network_advance_tcp_stats_total{tcp_state=...}`
//! (its `advtcp` metrics, read from the same `net/snmp` and `net/netstat`), the counter's name
//! in lower case as the state, a gauge as cAdvisor types it. cAdvisor's
//! `container_network_{tcp,tcp6,udp,udp6}_usage_total` count the sockets of `/proc/net/tcp`
//! and `udp` one by one (connections per state, queued bytes, per-socket drops): podometer
//! does not read those tables (their cost grows with every socket) and has no exact
//! equivalent, so it does not fill those names; its UDP counters and socket gauges are under
//! `naming: otel` only.

use std::collections::HashMap;
use std::sync::Arc;

use super::text::{attr_text, FamilyKind, Format, Writer};
use crate::model::{AttrValue, Point, Resource, ResourceId, Sweep, Value};
use crate::semconv;

/// One cAdvisor family: where its samples come from.
struct Rule {
    /// The podometer metric without its `container.` / `k8s.pod.` prefix.
    metric: &'static str,
    /// `None`: one series per point. `Some((key, value))`: only points whose attribute `key`
    /// equals `value`.
    only: Option<(&'static str, &'static str)>,
    name: &'static str,
    kind: FamilyKind,
    help: &'static str,
    /// A point attribute copied as this label (`interface`, `device`).
    label: Option<(&'static str, &'static str)>,
    /// A constant label: several rules then feed one family (`tcp_state="retranssegs"`).
    fixed: Option<(&'static str, &'static str)>,
}

const fn rule(
    metric: &'static str,
    only: Option<(&'static str, &'static str)>,
    name: &'static str,
    kind: FamilyKind,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
) -> Rule {
    Rule { metric, only, name, kind, help, label, fixed: None }
}

/// cAdvisor's `advtcp` family: one series per counter of `net/snmp`'s `Tcp` and `net/netstat`'s
/// `TcpExt`, the counter's name in lower case as `tcp_state`, typed gauge as cAdvisor types it.
const fn advanced_tcp(
    metric: &'static str,
    only: Option<(&'static str, &'static str)>,
    state: &'static str,
) -> Rule {
    Rule {
        metric,
        only,
        name: "container_network_advance_tcp_stats_total",
        kind: Gauge,
        help: "advance tcp connections statistic for container",
        label: None,
        fixed: Some(("tcp_state", state)),
    }
}

use FamilyKind::{Counter, Gauge};
const RX: Option<(&str, &str)> = Some((semconv::NETWORK_IO_DIRECTION, semconv::DIRECTION_RECEIVE));
const TX: Option<(&str, &str)> = Some((semconv::NETWORK_IO_DIRECTION, semconv::DIRECTION_TRANSMIT));
const RD: Option<(&str, &str)> = Some((semconv::DISK_IO_DIRECTION, semconv::DIRECTION_READ));
const WR: Option<(&str, &str)> = Some((semconv::DISK_IO_DIRECTION, semconv::DIRECTION_WRITE));
const SOME: Option<(&str, &str)> = Some((semconv::PRESSURE_STALL_TYPE, "some"));
const FULL: Option<(&str, &str)> = Some((semconv::PRESSURE_STALL_TYPE, "full"));
const IFACE: Option<(&str, &str)> = Some((semconv::NETWORK_INTERFACE_NAME, "interface"));
const DEVICE: Option<(&str, &str)> = Some((semconv::SYSTEM_DEVICE, "device"));
const ESTABLISHED: Option<(&str, &str)> =
    Some((semconv::NETWORK_CONNECTION_STATE, semconv::CONNECTION_ESTABLISHED));

/// The sum of both CPU modes: written separately, it is not one point.
pub const CPU_USAGE: &str = "container_cpu_usage_seconds_total";

/// The mapping, in the order families are written. The table in docs/exporters.md is this list.
static RULES: &[Rule] = &[
    rule(
        "cpu.time",
        Some((semconv::CPU_MODE, semconv::CPU_MODE_USER)),
        "container_cpu_user_seconds_total",
        Counter,
        "Cumulative user cpu time consumed in seconds.",
        None,
    ),
    rule(
        "cpu.time",
        Some((semconv::CPU_MODE, semconv::CPU_MODE_SYSTEM)),
        "container_cpu_system_seconds_total",
        Counter,
        "Cumulative system cpu time consumed in seconds.",
        None,
    ),
    rule(
        "cpu.throttling_data.periods",
        None,
        "container_cpu_cfs_periods_total",
        Counter,
        "Number of elapsed enforcement period intervals.",
        None,
    ),
    rule(
        "cpu.throttling_data.throttled_periods",
        None,
        "container_cpu_cfs_throttled_periods_total",
        Counter,
        "Number of throttled period intervals.",
        None,
    ),
    rule(
        "cpu.throttling_data.throttled_time",
        None,
        "container_cpu_cfs_throttled_seconds_total",
        Counter,
        "Total time duration the container has been throttled.",
        None,
    ),
    rule(
        "memory.usage",
        None,
        "container_memory_usage_bytes",
        Gauge,
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        None,
    ),
    rule(
        "memory.working_set",
        None,
        "container_memory_working_set_bytes",
        Gauge,
        "Current working set in bytes.",
        None,
    ),
    rule("memory.rss", None, "container_memory_rss", Gauge, "Size of RSS in bytes.", None),
    rule("memory.file", None, "container_memory_cache", Gauge, "Number of bytes of page cache memory.", None),
    rule(
        "memory.usage.limit",
        None,
        "container_spec_memory_limit_bytes",
        Gauge,
        "Memory limit for the container.",
        None,
    ),
    rule(
        "memory.oom_kills",
        None,
        "container_oom_events_total",
        Counter,
        "Count of out of memory events observed for the container.",
        None,
    ),
    rule("disk.io", RD, "container_fs_reads_bytes_total", Counter, "Cumulative count of bytes read.", DEVICE),
    rule(
        "disk.io",
        WR,
        "container_fs_writes_bytes_total",
        Counter,
        "Cumulative count of bytes written.",
        DEVICE,
    ),
    rule(
        "disk.operations",
        RD,
        "container_fs_reads_total",
        Counter,
        "Cumulative count of reads completed.",
        DEVICE,
    ),
    rule(
        "disk.operations",
        WR,
        "container_fs_writes_total",
        Counter,
        "Cumulative count of writes completed.",
        DEVICE,
    ),
    rule(
        "pids.count",
        None,
        "container_threads",
        Gauge,
        "Number of threads running inside the container.",
        None,
    ),
    rule(
        "pids.limit",
        None,
        "container_threads_max",
        Gauge,
        "Maximum number of threads allowed inside the container.",
        None,
    ),
    rule(
        "cpu.pressure.stall_time",
        SOME,
        "container_pressure_cpu_waiting_seconds_total",
        Counter,
        "Total time duration tasks in the container have waited due to CPU congestion.",
        None,
    ),
    rule(
        "cpu.pressure.stall_time",
        FULL,
        "container_pressure_cpu_stalled_seconds_total",
        Counter,
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        None,
    ),
    rule(
        "memory.pressure.stall_time",
        SOME,
        "container_pressure_memory_waiting_seconds_total",
        Counter,
        "Total time duration tasks in the container have waited due to memory congestion.",
        None,
    ),
    rule(
        "memory.pressure.stall_time",
        FULL,
        "container_pressure_memory_stalled_seconds_total",
        Counter,
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        None,
    ),
    rule(
        "io.pressure.stall_time",
        SOME,
        "container_pressure_io_waiting_seconds_total",
        Counter,
        "Total time duration tasks in the container have waited due to IO congestion.",
        None,
    ),
    rule(
        "io.pressure.stall_time",
        FULL,
        "container_pressure_io_stalled_seconds_total",
        Counter,
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        None,
    ),
    rule(
        "network.io",
        RX,
        "container_network_receive_bytes_total",
        Counter,
        "Cumulative count of bytes received.",
        IFACE,
    ),
    rule(
        "network.io",
        TX,
        "container_network_transmit_bytes_total",
        Counter,
        "Cumulative count of bytes transmitted.",
        IFACE,
    ),
    rule(
        "network.packet.count",
        RX,
        "container_network_receive_packets_total",
        Counter,
        "Cumulative count of packets received.",
        IFACE,
    ),
    rule(
        "network.packet.count",
        TX,
        "container_network_transmit_packets_total",
        Counter,
        "Cumulative count of packets transmitted.",
        IFACE,
    ),
    rule(
        "network.packet.dropped",
        RX,
        "container_network_receive_packets_dropped_total",
        Counter,
        "Cumulative count of packets dropped while receiving.",
        IFACE,
    ),
    rule(
        "network.packet.dropped",
        TX,
        "container_network_transmit_packets_dropped_total",
        Counter,
        "Cumulative count of packets dropped while transmitting.",
        IFACE,
    ),
    rule(
        "network.errors",
        RX,
        "container_network_receive_errors_total",
        Counter,
        "Cumulative count of errors encountered while receiving.",
        IFACE,
    ),
    rule(
        "network.errors",
        TX,
        "container_network_transmit_errors_total",
        Counter,
        "Cumulative count of errors encountered while transmitting.",
        IFACE,
    ),
    advanced_tcp("network.tcp.open.active", None, "activeopens"),
    advanced_tcp("network.tcp.open.passive", None, "passiveopens"),
    advanced_tcp("network.tcp.open.failed", None, "attemptfails"),
    advanced_tcp("network.tcp.reset.count", RX, "estabresets"),
    advanced_tcp("network.connection.count", ESTABLISHED, "currestab"),
    advanced_tcp("network.tcp.segment.count", RX, "insegs"),
    advanced_tcp("network.tcp.segment.count", TX, "outsegs"),
    advanced_tcp("network.tcp.segment.retransmitted", None, "retranssegs"),
    advanced_tcp("network.tcp.segment.errors", None, "inerrs"),
    advanced_tcp("network.tcp.reset.count", TX, "outrsts"),
    advanced_tcp("network.tcp.timeouts", None, "tcptimeouts"),
    advanced_tcp("network.tcp.listen.overflows", None, "listenoverflows"),
    advanced_tcp("network.tcp.listen.drops", None, "listendrops"),
    advanced_tcp("network.tcp.syn.retransmitted", None, "tcpsynretrans"),
];

/// `(podometer metric, attribute filter, cAdvisor name)` of every rule, for the docs and tests.
pub fn mapping() -> impl Iterator<Item = (&'static str, Option<(&'static str, &'static str)>, &'static str)> {
    RULES.iter().map(|r| (r.metric, r.only, r.name))
}

fn str_attr<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
    match r.attribute(key) {
        Some(AttrValue::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The image reference as cAdvisor shows it: `name:tag` when a tag is known.
fn image(r: &Resource) -> Option<String> {
    let name = str_attr(r, semconv::CONTAINER_IMAGE_NAME)?;
    let tag = match r.attribute(semconv::CONTAINER_IMAGE_TAGS) {
        Some(AttrValue::StrArray(tags)) => tags.first().map(String::as_str),
        _ => None,
    };
    let has_tag = name.rsplit('/').next().is_some_and(|last| last.contains(':') || last.contains('@'));
    Some(match tag {
        Some(tag) if !has_tag => format!("{name}:{tag}"),
        _ => name.to_owned(),
    })
}

/// The labels of every series of one resource, in cAdvisor's (alphabetical) order; empty
/// values are left out (Prometheus treats an empty label as absent anyway).
pub fn resource_labels(r: &Resource) -> Vec<(&'static str, String)> {
    let (id, is_pod) = match &r.id {
        ResourceId::Container(id) => (id.clone(), false),
        ResourceId::Pod(uid) => (uid.clone(), true),
    };
    let container = if is_pod { None } else { str_attr(r, semconv::K8S_CONTAINER_NAME).map(str::to_owned) };
    let name = if is_pod { None } else { str_attr(r, semconv::CONTAINER_NAME).map(str::to_owned) };
    let pod = str_attr(r, semconv::K8S_POD_NAME).or_else(|| str_attr(r, semconv::PODMAN_POD_NAME));
    let labels = [
        ("container", container),
        ("id", Some(id)),
        ("image", if is_pod { None } else { image(r) }),
        ("name", name),
        ("namespace", str_attr(r, semconv::K8S_NAMESPACE_NAME).map(str::to_owned)),
        ("pod", pod.map(str::to_owned)),
    ];
    labels.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
}

fn suffix(point: &Point) -> &'static str {
    let name = point.metric.name;
    name.strip_prefix("container.").or_else(|| name.strip_prefix("k8s.pod.")).unwrap_or(name)
}

fn host_network(r: &Resource) -> bool {
    matches!(r.attribute(semconv::PODOMETER_HOST_NETWORK), Some(AttrValue::Bool(true)))
}

pub fn render(sweeps: &[Arc<Sweep>], format: Format, timestamps: bool) -> String {
    let time = sweeps.first().map(|s| s.time).filter(|_| timestamps);
    let points: usize = sweeps.iter().map(|s| s.point_count()).sum();
    let mut w = Writer::new(format, time, points * 200);
    let resources: Vec<&Resource> = sweeps.iter().flat_map(|s| s.resources.iter()).collect();
    let labels: Vec<Vec<(&'static str, String)>> = resources.iter().map(|r| resource_labels(r)).collect();

    // Which rules a metric can feed, by its name without prefix.
    let mut by_metric: HashMap<&'static str, Vec<usize>> = HashMap::new();
    for (i, rule) in RULES.iter().enumerate() {
        by_metric.entry(rule.metric).or_default().push(i);
    }
    let mut members: Vec<Vec<(usize, usize)>> = vec![Vec::new(); RULES.len()];
    // CPU usage: the sum of the modes per resource, in the order the points come.
    let mut cpu_usage: Vec<(usize, f64)> = Vec::new();
    for (ri, r) in resources.iter().enumerate() {
        let skip_network = host_network(r);
        let mut cpu_total: Option<f64> = None;
        for (pi, p) in r.points.iter().enumerate() {
            let metric = suffix(p);
            if skip_network && metric.starts_with("network.") {
                continue;
            }
            let Some(candidates) = by_metric.get(metric) else { continue };
            for &i in candidates {
                let matches = match RULES[i].only {
                    None => true,
                    Some((key, want)) => matches!(p.attribute(key), Some(AttrValue::Str(v)) if v == want),
                };
                if matches {
                    members[i].push((ri, pi));
                }
            }
            if metric == "cpu.time" {
                *cpu_total.get_or_insert(0.0) += p.value.as_f64();
            }
        }
        if let Some(total) = cpu_total {
            cpu_usage.push((ri, total));
        }
    }

    // Each resource's labels written out once (`name="escaped value",...`) with where each
    // label starts: a sample copies the block, the point's own label merged in at its sorted
    // place, instead of escaping the same ids and names again for each point.
    let blocks: Vec<(String, Vec<usize>)> = labels
        .iter()
        .map(|ls| {
            let mut block = Writer::new(format, None, 256);
            let mut starts = Vec::with_capacity(ls.len());
            for (i, (k, v)) in ls.iter().enumerate() {
                starts.push(block.out.len() + usize::from(i > 0));
                block.label(i == 0, k, v);
            }
            (block.out, starts)
        })
        .collect();
    let write_labels = |w: &mut Writer, ri: usize, extra: Option<(&str, &str)>| {
        // cAdvisor's labels are sorted; the resource's are, so the point's one is merged in.
        let (block, starts) = &blocks[ri];
        let Some((ek, ev)) = extra else {
            w.out.push_str(block);
            return;
        };
        let at = labels[ri].iter().position(|(k, _)| ek < *k).unwrap_or(starts.len());
        if at == starts.len() {
            w.out.push_str(block);
            w.label(block.is_empty(), ek, ev);
        } else {
            w.out.push_str(&block[..starts[at]]);
            w.label(true, ek, ev);
            w.out.push(',');
            w.out.push_str(&block[starts[at]..]);
        }
    };

    if !cpu_usage.is_empty() {
        w.family(CPU_USAGE, Counter, "Cumulative cpu time consumed in seconds.");
        for &(ri, total) in &cpu_usage {
            w.start_sample(CPU_USAGE);
            write_labels(&mut w, ri, None);
            w.end_sample(Value::Double(total));
        }
    }
    // Rules of one family are next to each other in RULES: its header goes before the first.
    let mut family = None;
    for (rule, members) in RULES.iter().zip(&members) {
        if members.is_empty() {
            continue;
        }
        if family != Some(rule.name) {
            w.family(rule.name, rule.kind, rule.help);
            family = Some(rule.name);
        }
        for &(ri, pi) in members {
            let point = &resources[ri].points[pi];
            let value = rule
                .label
                .and_then(|(key, label)| point.attribute(key).map(|v| (label, attr_text(v))))
                .or(rule.fixed.map(|(label, v)| (label, std::borrow::Cow::Borrowed(v))));
            w.start_sample(rule.name);
            write_labels(&mut w, ri, value.as_ref().map(|(label, v)| (*label, v.as_ref())));
            w.end_sample(point.value);
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn resource<'a>(
        sweep: &'a mut Sweep,
        id: ResourceId,
        attrs: Vec<(&'static str, AttrValue)>,
    ) -> &'a mut Resource {
        sweep.resource_mut(id, || attrs)
    }

    #[test]
    fn cpu_modes_are_summed_and_split_and_labels_follow_cadvisor() {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
        let r = resource(
            &mut sweep,
            ResourceId::Container("c1".into()),
            vec![
                (semconv::CONTAINER_ID, "c1".into()),
                (semconv::K8S_POD_NAME, "web-0".into()),
                (semconv::K8S_NAMESPACE_NAME, "shop".into()),
                (semconv::K8S_CONTAINER_NAME, "nginx".into()),
                (semconv::CONTAINER_IMAGE_NAME, "docker.io/library/nginx".into()),
                (semconv::CONTAINER_IMAGE_TAGS, AttrValue::StrArray(vec!["1.25".into()])),
            ],
        );
        r.points.push(
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.25)).with(semconv::CPU_MODE, "user"),
        );
        r.points.push(
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(0.5)).with(semconv::CPU_MODE, "system"),
        );
        r.points.push(
            Point::new(&semconv::CONTAINER.disk_io, Value::Int(4096))
                .with(semconv::DISK_IO_DIRECTION, "read")
                .with(semconv::SYSTEM_DEVICE, "8:0"),
        );
        let text = render(&[Arc::new(sweep)], Format::Text, false);
        let labels = "container=\"nginx\",id=\"c1\",image=\"docker.io/library/nginx:1.25\",namespace=\"shop\",pod=\"web-0\"";
        assert!(text.contains(&format!("container_cpu_usage_seconds_total{{{labels}}} 1.75\n")), "{text}");
        assert!(text.contains(&format!("container_cpu_user_seconds_total{{{labels}}} 1.25\n")), "{text}");
        assert!(text.contains(&format!("container_cpu_system_seconds_total{{{labels}}} 0.5\n")), "{text}");
        assert!(
            text.contains(
                "container_fs_reads_bytes_total{container=\"nginx\",device=\"8:0\",id=\"c1\",image="
            ),
            "{text}"
        );
        assert!(!text.contains("container_fs_writes_bytes_total{"), "{text}");
    }

    #[test]
    fn tcp_counters_share_cadvisors_advanced_tcp_family_and_udp_has_no_cadvisor_name() {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
        let r = resource(&mut sweep, ResourceId::Pod("p1".into()), vec![(semconv::K8S_POD_UID, "p1".into())]);
        let family = &semconv::POD_NETWORK.protocols;
        r.points.push(Point::new(&family.tcp_retransmitted, Value::Int(7)));
        r.points.push(
            Point::new(&family.tcp_resets, Value::Int(3)).with(semconv::NETWORK_IO_DIRECTION, "transmit"),
        );
        r.points.push(
            Point::new(&family.tcp_resets, Value::Int(2)).with(semconv::NETWORK_IO_DIRECTION, "receive"),
        );
        r.points.push(Point::new(&family.tcp_listen_overflows, Value::Int(5)));
        r.points.push(
            Point::new(&family.udp_buffer_errors, Value::Int(9))
                .with(semconv::NETWORK_IO_DIRECTION, "receive")
                .with(semconv::NETWORK_TYPE, "ipv4"),
        );
        let text = render(&[Arc::new(sweep)], Format::Text, false);
        let family_name = "container_network_advance_tcp_stats_total";
        assert_eq!(text.matches(&format!("# TYPE {family_name} gauge\n")).count(), 1, "one header: {text}");
        for (state, v) in [("retranssegs", 7), ("outrsts", 3), ("estabresets", 2), ("listenoverflows", 5)] {
            let line = format!("{family_name}{{id=\"p1\",tcp_state=\"{state}\"}} {v}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(!text.contains("udp"), "{text}");
    }

    #[test]
    fn host_network_resources_get_no_network_series_and_pods_no_container_label() {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
        for (uid, host) in [("p1", false), ("p2", true)] {
            let r = resource(
                &mut sweep,
                ResourceId::Pod(uid.into()),
                vec![(semconv::K8S_POD_UID, uid.into()), (semconv::PODOMETER_HOST_NETWORK, host.into())],
            );
            r.points.push(
                Point::new(&semconv::POD_NETWORK.io, Value::Int(10))
                    .with(semconv::NETWORK_INTERFACE_NAME, "eth0")
                    .with(semconv::NETWORK_IO_DIRECTION, "receive"),
            );
            r.points.push(Point::new(&semconv::POD.memory_working_set, Value::Int(7)));
        }
        let text = render(&[Arc::new(sweep)], Format::OpenMetrics, false);
        assert!(
            text.contains("container_network_receive_bytes_total{id=\"p1\",interface=\"eth0\"} 10\n"),
            "{text}"
        );
        assert!(!text.contains("id=\"p2\",interface"), "{text}");
        assert!(text.contains("container_memory_working_set_bytes{id=\"p2\"} 7\n"), "{text}");
        assert!(text.contains("# TYPE container_network_receive_bytes counter\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
