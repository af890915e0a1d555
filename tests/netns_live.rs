//! The netns source on a Kubernetes-shaped node without Kubernetes: kubelet-style cgroups,
//! network namespaces joined to the host by veth pairs, processes inside them; and real
//! Podman pods. The cgroup source is not used: the tests publish `SweepContext.containers`
//! themselves, which is the seam between the two sources.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podometer::model::{AttrValue, ContainerInfo, PodRef, ResourceId, Runtime, Sweep};
use podometer::semconv;
use podometer::sources::netns::{HostNetwork, NetnsConfig, NetnsSource};
use support::kube_pod::{hex_id, sweep, KubePod};
use support::netns::{podman_net_bytes, send_tcp, tcp_sink_in, TestNetns};

const PORT: u16 = 8080;

/// The one point of `metric` for `iface` and `direction` on `id`; panics if there are several.
fn value(sweep: &Sweep, id: &ResourceId, metric: &str, iface: &str, direction: &str) -> i64 {
    let resource = sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?} in {sweep:#?}"));
    let points: Vec<_> = resource
        .points_of(metric)
        .filter(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME) == Some(&AttrValue::from(iface)))
        .filter(|p| p.attribute(semconv::NETWORK_IO_DIRECTION) == Some(&AttrValue::from(direction)))
        .collect();
    assert_eq!(points.len(), 1, "{metric} {iface} {direction} on {id:?}: {points:?}");
    match points[0].value {
        podometer::model::Value::Int(v) => v,
        other => panic!("{metric} is not an integer: {other:?}"),
    }
}

/// Points of the interface series (`net/dev`); the namespace's TCP/UDP counters are counted
/// apart (`tests/netns_protocols_live.rs`).
fn network_point_count(sweep: &Sweep) -> usize {
    sweep
        .resources
        .iter()
        .flat_map(|r| r.points.iter())
        .filter(|p| {
            p.metric.name.contains(".network.") && p.attribute(semconv::NETWORK_INTERFACE_NAME).is_some()
        })
        .count()
}

fn interfaces_of(sweep: &Sweep, id: &ResourceId) -> Vec<String> {
    let mut names: Vec<String> = sweep
        .resource(id)
        .map(|r| {
            r.points
                .iter()
                .filter_map(|p| match p.attribute(semconv::NETWORK_INTERFACE_NAME) {
                    Some(AttrValue::Str(s)) => Some(s.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn live() -> bool {
    support::live_cgroups_available() && support::netns::netns_available()
}

#[test]
fn two_container_pod_reports_once_with_exact_bytes_and_its_host_veth() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let mut pod = KubePod::new(2);
    pod.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    pod.start(1, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    let containers = pod.infos();
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let id = pod.resource_id();

    let sink = tcp_sink_in(&format!("/run/netns/{}", ns.name), PORT);
    let host_tx_before = ns.host_tx_bytes();
    let before = sweep(&mut source, &containers);
    const PAYLOAD: usize = 1_000_000;
    send_tcp(&ns.pod_addr, PORT, PAYLOAD, Duration::from_secs(10));
    let received = sink.join().expect("sink thread");
    // The last ACK of the close crosses the veth just after the sink returns.
    std::thread::sleep(Duration::from_millis(300));
    let after = sweep(&mut source, &containers);
    let host_tx_after = ns.host_tx_bytes();

    assert_eq!(received, PAYLOAD as u64, "the sink got the payload");
    let rx = value(&after, &id, "k8s.pod.network.io", "eth0", "receive")
        - value(&before, &id, "k8s.pod.network.io", "eth0", "receive");
    let kernel = (host_tx_after - host_tx_before) as i64;
    eprintln!("k8s pod: payload {PAYLOAD}, pod receive delta {rx}, host veth transmit delta {kernel}");
    assert_eq!(rx, kernel, "pod receive delta equals the host veth's transmit delta");
    assert!(rx >= PAYLOAD as i64, "receive delta {rx} below the payload {PAYLOAD}");
    let packets = value(&after, &id, "k8s.pod.network.packet.count", "eth0", "receive")
        - value(&before, &id, "k8s.pod.network.packet.count", "eth0", "receive");
    assert!(packets > 0, "received packets counted");

    // One set of series: one resource, the pod's, with eth0 only (lo is excluded by default),
    // 4 metrics x 2 directions, whatever the number of containers in the namespace.
    for s in [&before, &after] {
        assert_eq!(s.resources.len(), 1, "{s:#?}");
        assert_eq!(s.resources[0].id, id);
        assert_eq!(network_point_count(s), 8, "{s:#?}");
        assert_eq!(interfaces_of(s, &id), ["eth0"]);
        assert_eq!(s.resources[0].attribute(semconv::K8S_POD_UID), Some(&AttrValue::from(pod.uid.as_str())));
        assert_eq!(s.resources[0].attribute(semconv::K8S_POD_QOS_CLASS), Some(&AttrValue::from("burstable")));
    }
    // Every interface point; the namespace's TCP/UDP counters have no interface.
    for p in
        after.resources[0].points.iter().filter(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME).is_some())
    {
        assert_eq!(
            p.attribute(semconv::NETWORK_INTERFACE_HOST_PEER),
            Some(&AttrValue::from(ns.host_if.as_str())),
            "host peer on {p:?}"
        );
    }
}

#[test]
fn pod_whose_sandbox_process_is_gone_is_still_reported_through_its_app() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let mut pod = KubePod::new(2);
    let sandbox = pod.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    pod.start(1, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    let containers = pod.infos();
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let id = pod.resource_id();

    let first = sweep(&mut source, &containers);
    assert_eq!(interfaces_of(&first, &id), ["eth0"]);
    pod.containers[0].1.kill(sandbox);
    assert!(!Path::new(&format!("/proc/{sandbox}")).exists(), "sandbox process reaped");

    let sink = tcp_sink_in(&format!("/run/netns/{}", ns.name), PORT);
    let host_tx_before = ns.host_tx_bytes();
    let before = sweep(&mut source, &containers);
    send_tcp(&ns.pod_addr, PORT, 100_000, Duration::from_secs(10));
    assert_eq!(sink.join().expect("sink"), 100_000);
    std::thread::sleep(Duration::from_millis(300));
    let after = sweep(&mut source, &containers);
    let host_tx_after = ns.host_tx_bytes();

    assert_eq!(network_point_count(&after), 8, "{after:#?}");
    let rx = value(&after, &id, "k8s.pod.network.io", "eth0", "receive")
        - value(&before, &id, "k8s.pod.network.io", "eth0", "receive");
    assert_eq!(rx, (host_tx_after - host_tx_before) as i64);
    let peer = after.resources[0].points[0].attribute(semconv::NETWORK_INTERFACE_HOST_PEER);
    assert_eq!(peer, Some(&AttrValue::from(ns.host_if.as_str())));
}

#[test]
fn host_network_pod_gets_no_series_and_is_marked_on_request() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let mut normal = KubePod::new(1);
    normal.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    let mut host_pod = KubePod::new(2);
    host_pod.start(0, "exec sleep 300", "sleep");
    host_pod.start(1, "exec sleep 300", "sleep");
    let mut containers = normal.infos();
    containers.extend(host_pod.infos());

    let mut skip = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let s = sweep(&mut skip, &containers);
    assert_eq!(s.resource(&host_pod.resource_id()), None, "{s:#?}");
    assert_eq!(interfaces_of(&s, &normal.resource_id()), ["eth0"], "the other pod is unaffected");
    assert_eq!(network_point_count(&s), 8);

    let config = NetnsConfig { host_network: HostNetwork::Mark, ..NetnsConfig::default() };
    let mut mark = NetnsSource::new(&config).expect("source");
    let s = sweep(&mut mark, &containers);
    let marked = s.resource(&host_pod.resource_id()).expect("host-network pod is marked");
    assert_eq!(marked.attribute(semconv::PODOMETER_HOST_NETWORK), Some(&AttrValue::Bool(true)));
    assert!(marked.points.is_empty(), "no series for a host-network pod: {marked:#?}");
    assert_eq!(network_point_count(&s), 8);
}

#[test]
fn interfaces_that_come_and_go_are_followed_with_their_peers() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let mut pod = KubePod::new(1);
    pod.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    let containers = pod.infos();
    let config = NetnsConfig { exclude_interfaces: Vec::new(), ..NetnsConfig::default() };
    let mut source = NetnsSource::new(&config).expect("source");
    let id = pod.resource_id();

    assert_eq!(interfaces_of(&sweep(&mut source, &containers), &id), ["eth0", "lo"]);

    // A second veth, as a Multus secondary network would add.
    let extra = format!("{}n", ns.host_if);
    support::run(
        Command::new("ip")
            .args(["link", "add", &extra, "type", "veth", "peer", "name", "net1", "netns", &ns.name]),
    );
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let guard = DelLink(extra.clone());
    let s = sweep(&mut source, &containers);
    assert_eq!(interfaces_of(&s, &id), ["eth0", "lo", "net1"]);
    let peer_of = |s: &Sweep, iface: &str| {
        s.resource(&id)
            .and_then(|r| {
                r.points
                    .iter()
                    .find(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME) == Some(&AttrValue::from(iface)))
            })
            .and_then(|p| p.attribute(semconv::NETWORK_INTERFACE_HOST_PEER).cloned())
    };
    assert_eq!(peer_of(&s, "net1"), Some(AttrValue::from(extra.as_str())));
    assert_eq!(peer_of(&s, "eth0"), Some(AttrValue::from(ns.host_if.as_str())));
    assert_eq!(peer_of(&s, "lo"), None, "lo has no host peer");

    drop(guard);
    // The pod-side end goes with the pair; give the kernel a moment.
    let mut names = Vec::new();
    for _ in 0..50 {
        names = interfaces_of(&sweep(&mut source, &containers), &id);
        if names == ["eth0", "lo"] {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(names, ["eth0", "lo"], "no stale interface after deletion");
}

fn podman_info(pod: &support::podman::PodmanPod, id: &str) -> ContainerInfo {
    ContainerInfo {
        id: id.to_owned(),
        runtime: Runtime::Podman,
        pod: Some(PodRef::Podman { id: pod.pod_id.clone() }),
        procs_file: Path::new("/sys/fs/cgroup/memory/libpod_parent")
            .join(&pod.pod_id)
            .join(format!("libpod-{id}"))
            .join("cgroup.procs"),
    }
}

fn podman_pid(id: &str) -> u32 {
    let out = support::run(support::podman::podman().args(["inspect", id, "--format", "{{.State.Pid}}"]));
    out.trim().parse().unwrap_or_else(|e| panic!("pid of {id}: {e}: {out}"))
}

#[test]
fn podman_pod_reports_once_on_the_infra_container_like_podman_stats() {
    if !support::podman::podman_available() {
        return;
    }
    let pod = support::podman::PodmanPod::start("podometer-netns", &["sleep 300", "sleep 300"]);
    let containers: Vec<ContainerInfo> = pod.all_ids().iter().map(|id| podman_info(&pod, id)).collect();
    for c in &containers {
        assert!(c.procs_file.exists(), "{} missing", c.procs_file.display());
    }
    let infra = ResourceId::Container(pod.infra_id.clone());
    let infra_pid = podman_pid(&pod.infra_id);
    let addr = support::run(support::podman::podman().args([
        "inspect",
        &pod.infra_id,
        "--format",
        "{{.NetworkSettings.IPAddress}}",
    ]));
    // The host side of the pod's eth0, found independently: eth0's iflink is its ifindex.
    let iflink = support::run(support::podman::podman().args([
        "exec",
        &pod.app_ids[0],
        "cat",
        "/sys/class/net/eth0/iflink",
    ]));
    let host_veth = std::fs::read_dir("/sys/class/net")
        .expect("sysfs")
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .map(|i| i.trim() == iflink.trim())
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("host veth of the pod");
    let master = std::fs::read_link(format!("/sys/class/net/{host_veth}/master")).expect("veth on a bridge");
    assert!(master.ends_with("podman0"), "{host_veth} is on {}", master.display());

    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let start = sweep(&mut source, &containers);
    let sink = tcp_sink_in(&format!("/proc/{infra_pid}/ns/net"), PORT);
    const PAYLOAD: usize = 500_000;
    send_tcp(addr.trim(), PORT, PAYLOAD, Duration::from_secs(10));
    assert_eq!(sink.join().expect("sink"), PAYLOAD as u64);
    std::thread::sleep(Duration::from_millis(300));

    // podman reads the same kernel counters at its own instant; the podman0 bridge carries
    // background traffic (ARP, IPv6 neighbour discovery) at any time, so the reference is
    // bracketed by two of our sweeps rather than compared with a fudge factor.
    let before = sweep(&mut source, &containers);
    let (podman_rx, podman_tx) = podman_net_bytes(&pod.infra_id);
    let after = sweep(&mut source, &containers);
    let rx = |s: &Sweep| value(s, &infra, "container.network.io", "eth0", "receive");
    let tx = |s: &Sweep| value(s, &infra, "container.network.io", "eth0", "transmit");
    assert!(
        rx(&before) as u64 <= podman_rx && podman_rx <= rx(&after) as u64,
        "podman rx {podman_rx} outside [{}, {}]",
        rx(&before),
        rx(&after)
    );
    assert!(
        tx(&before) as u64 <= podman_tx && podman_tx <= tx(&after) as u64,
        "podman tx {podman_tx} outside [{}, {}]",
        tx(&before),
        tx(&after)
    );
    eprintln!(
        "podman: ours rx [{}, {}] podman rx {podman_rx}; ours tx [{}, {}] podman tx {podman_tx}",
        rx(&before),
        rx(&after),
        tx(&before),
        tx(&after)
    );
    assert!(rx(&before) - rx(&start) >= PAYLOAD as i64, "payload counted on receive");
    for app in &pod.app_ids {
        let (app_rx, _) = podman_net_bytes(app);
        assert!(app_rx >= rx(&before) as u64, "podman reports the shared netns for app {app} too");
    }

    // One set of series, on the infra container, none on the apps.
    for s in [&start, &before, &after] {
        assert_eq!(network_point_count(s), 8, "{s:#?}");
        assert_eq!(interfaces_of(s, &infra), ["eth0"]);
        for app in &pod.app_ids {
            assert_eq!(s.resource(&ResourceId::Container(app.clone())), None);
        }
        let r = s.resource(&infra).expect("infra resource");
        assert_eq!(r.attribute(semconv::CONTAINER_ID), Some(&AttrValue::from(pod.infra_id.as_str())));
        assert_eq!(r.attribute(semconv::CONTAINER_RUNTIME_NAME), Some(&AttrValue::from("podman")));
        for p in r.points.iter().filter(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME).is_some()) {
            assert_eq!(
                p.attribute(semconv::NETWORK_INTERFACE_HOST_PEER),
                Some(&AttrValue::from(host_veth.as_str()))
            );
        }
    }

    // Without its infra process the pod's namespace lives on (podman holds it in /run/netns):
    // the app whose process started first takes over, and still only one set is emitted.
    support::run(Command::new("kill").args(["-9", &infra_pid.to_string()]));
    let mut gone = false;
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{infra_pid}/ns/net")).exists() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "infra process {infra_pid} still there");
    // Podman tears the pod's network down once its infra is gone (eth0 is removed from the
    // namespace, `lo` stays, and `lo` is excluded): what the kernel shows around the sweep
    // decides what the sweep must show.
    let app_dev = format!("/proc/{}/net/dev", podman_pid(&pod.app_ids[0]));
    let has_eth0 = || std::fs::read_to_string(&app_dev).is_ok_and(|t| t.contains("eth0:"));
    let before = has_eth0();
    let s = sweep(&mut source, &containers);
    let after = has_eth0();
    assert_eq!(s.resource(&infra), None, "the dead infra has no series");
    let app0 = ResourceId::Container(pod.app_ids[0].clone());
    if before && after {
        assert_eq!(network_point_count(&s), 8, "{s:#?}");
        assert_eq!(interfaces_of(&s, &app0), ["eth0"], "the first app owns the namespace now: {s:#?}");
    } else if !before && !after {
        assert_eq!(network_point_count(&s), 0, "eth0 is gone from the namespace: {s:#?}");
    }
}

/// Many pods at once: every pod gets its own series and peer, and once warm a sweep sends no
/// netlink request at all: no namespace lookup and no host link dump, even while host links come
/// and go (this test adds and removes a veth pair midway; other tests on the machine do too).
/// Link notifications keep the host's link cache current instead.
#[test]
fn many_pods_cost_no_netlink_work_in_steady_state() {
    if !live() {
        return;
    }
    const PODS: usize = 24;
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for _ in 0..PODS {
        let ns = TestNetns::create();
        let mut pod = KubePod::new(2);
        pod.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
        pod.start(1, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
        namespaces.push(ns);
        pods.push(pod);
    }
    let containers: Vec<ContainerInfo> = pods.iter().flat_map(KubePod::infos).collect();
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");

    let t = std::time::Instant::now();
    let cold = sweep(&mut source, &containers);
    let cold_time = t.elapsed();
    let warm_counts = source.netlink_counts().expect("peers resolved as root in the host netns");
    assert_eq!(warm_counts.namespace_lookups, PODS as u64, "one lookup per new namespace");

    const SWEEPS: u32 = 20;
    let t = std::time::Instant::now();
    let mut last = cold.clone();
    let churn = format!("vc{}", std::process::id() % 1_000_000);
    for i in 0..SWEEPS {
        if i == SWEEPS / 2 {
            support::run(Command::new("ip").args([
                "link",
                "add",
                &churn,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{churn}p"),
            ]));
            support::run(Command::new("ip").args(["link", "del", &churn]));
        }
        last = sweep(&mut source, &containers);
    }
    let warm_time = t.elapsed() / SWEEPS;
    let counts = source.netlink_counts().expect("counts");
    eprintln!(
        "{PODS} pods / {} containers: cold sweep {cold_time:?}, warm sweep {warm_time:?} (debug build); \
         netlink after warm-up: {} host dumps, {} namespace lookups over {SWEEPS} sweeps, {} link \
         notifications applied",
        containers.len(),
        counts.host_dumps - warm_counts.host_dumps,
        counts.namespace_lookups - warm_counts.namespace_lookups,
        counts.link_events - warm_counts.link_events,
    );
    assert_eq!(counts.namespace_lookups, warm_counts.namespace_lookups, "no namespace lookups once warm");
    assert_eq!(counts.host_dumps, warm_counts.host_dumps, "no host link dump once warm");
    assert!(counts.link_events - warm_counts.link_events >= 2, "the veth's add and delete were heard");
    for s in [&cold, &last] {
        assert_eq!(network_point_count(s), 8 * PODS, "one set of series per pod");
        for (pod, ns) in pods.iter().zip(&namespaces) {
            let r = s.resource(&pod.resource_id()).expect("pod resource");
            assert!(r.points.iter().filter(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME).is_some()).all(
                |p| {
                    p.attribute(semconv::NETWORK_INTERFACE_HOST_PEER)
                        == Some(&AttrValue::from(ns.host_if.as_str()))
                }
            ));
        }
    }
}

#[test]
fn vanished_and_empty_containers_are_skipped_without_losing_the_others() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let mut pod = KubePod::new(2);
    pod.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    // Container 1 keeps an empty cgroup: created, never started.
    let mut containers = pod.infos();
    let mut vanished = containers[0].clone();
    vanished.id = hex_id("vanished");
    vanished.procs_file = containers[0].procs_file.with_file_name("gone-meanwhile").join("cgroup.procs");
    containers.insert(0, vanished);

    let telemetry = podometer::agent_counters::Telemetry::global();
    let count = || telemetry.containers_vanished.load(std::sync::atomic::Ordering::Relaxed);
    let errors = || telemetry.source_errors.load(std::sync::atomic::Ordering::Relaxed);
    let (vanished_before, errors_before) = (count(), errors());
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let s = sweep(&mut source, &containers);
    assert!(count() > vanished_before, "the vanished container is counted");
    assert_eq!(interfaces_of(&s, &pod.resource_id()), ["eth0"], "the live pod is still reported");
    assert_eq!(network_point_count(&s), 8);
    // Other tests in this binary run in parallel and share the counter, but none of them
    // should cause source errors either.
    assert_eq!(errors(), errors_before, "a vanished or empty container is not an error");
}

/// A pod with `CAP_NET_ADMIN` can make as many interfaces as it likes: only `max_interfaces` of
/// them are reported (the first, in creation order), and the rest are counted.
#[test]
fn interfaces_beyond_max_interfaces_are_left_out_and_counted() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    // veth pairs inside the namespace (this kernel has no dummy driver): six more interfaces.
    for i in 0..3 {
        ns.exec(&["ip", "link", "add", &format!("va{i}"), "type", "veth", "peer", "name", &format!("vb{i}")]);
    }
    // The kernel's own order, read with cat, not with the source under test.
    let listed = ns.exec(&["cat", "/proc/net/dev"]);
    let order: Vec<String> = listed
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .filter(|n| n != "lo")
        .collect();
    assert_eq!(order.len(), 7, "{listed}");
    let mut first_three = order[..3].to_vec();
    first_three.sort();
    let mut pod = KubePod::new(1);
    pod.start(0, &format!("exec ip netns exec {} sleep 300", ns.name), "sleep");
    let containers = pod.infos();
    let id = pod.resource_id();

    let uncapped = sweep(&mut NetnsSource::new(&NetnsConfig::default()).expect("source"), &containers);
    assert_eq!(interfaces_of(&uncapped, &id).len(), 7, "eth0 and six veths without a cap");

    let telemetry = podometer::agent_counters::Telemetry::global();
    let over = || telemetry.netns_interfaces_over_cap.load(std::sync::atomic::Ordering::Relaxed);
    let before = over();
    let config = NetnsConfig { max_interfaces: 3, ..NetnsConfig::default() };
    let mut source = NetnsSource::new(&config).expect("source");
    let s = sweep(&mut source, &containers);
    assert_eq!(interfaces_of(&s, &id), first_three, "the first three in the kernel's order");
    assert_eq!(network_point_count(&s), 3 * 8);
    // Only this test sets a cap its namespaces exceed; the others in this binary stay under 64.
    assert_eq!(over() - before, 4, "four interfaces left out and counted");
    let problems = NetnsConfig { max_interfaces: 0, ..NetnsConfig::default() }.validate();
    assert_eq!(problems.len(), 1, "{problems:?}");
}

/// A pod's sandbox is replaced: its containers now live in a new network namespace whose
/// counters are already above the old ones. The source tells the start-time stamper, so the
/// series restart (start = the previous sweep) instead of continuing as if nothing happened.
/// Host peers are off so that the series keep the same attributes across namespaces: only the
/// origin tells them apart.
#[test]
fn a_replaced_sandbox_namespace_starts_new_series() {
    if !live() {
        return;
    }
    let (ns_a, ns_b) = (TestNetns::create(), TestNetns::create());
    let mut pod = KubePod::new(1);
    let sandbox = pod.start(0, &format!("exec ip netns exec {} sleep 300", ns_a.name), "sleep");
    let containers = pod.infos();
    let id = pod.resource_id();
    let config = NetnsConfig { resolve_host_peer: false, ..NetnsConfig::default() };
    let mut source = NetnsSource::new(&config).expect("source");
    let mut starts = podometer::model::StartTimes::new();
    let mut stamped = |source: &mut NetnsSource| {
        let mut s = sweep(source, &containers);
        starts.apply(&mut s);
        s
    };
    let start_of = |s: &Sweep| {
        let r = s.resource(&id).expect("pod resource");
        let p = r.points_of("k8s.pod.network.io").next().expect("a network point");
        p.start_time.expect("counters have a start time")
    };
    let s1 = stamped(&mut source);
    std::thread::sleep(Duration::from_millis(20));
    let s2 = stamped(&mut source);
    assert_eq!(start_of(&s2), s1.time, "same namespace: the series goes on");

    // The new sandbox: more traffic in it than the old namespace ever saw.
    pod.containers[0].1.kill(sandbox);
    pod.start(0, &format!("exec ip netns exec {} sleep 300", ns_b.name), "sleep");
    let sink = tcp_sink_in(&format!("/run/netns/{}", ns_b.name), PORT);
    send_tcp(&ns_b.pod_addr, PORT, 200_000, Duration::from_secs(10));
    assert_eq!(sink.join().expect("sink"), 200_000);
    let old = value(&s2, &id, "k8s.pod.network.io", "eth0", "receive");

    let telemetry = podometer::agent_counters::Telemetry::global();
    let replaced = || telemetry.netns_replaced.load(std::sync::atomic::Ordering::Relaxed);
    let replaced_before = replaced();
    let s3 = stamped(&mut source);
    let new = value(&s3, &id, "k8s.pod.network.io", "eth0", "receive");
    assert!(new > old, "the new namespace's counter ({new}) is above the old one's ({old})");
    assert_eq!(start_of(&s3), s2.time, "new series, started at the previous sweep");
    // The namespace's TCP/UDP counters restart with it: they are the new namespace's.
    let retransmitted = s3
        .resource(&id)
        .and_then(|r| r.points_of("k8s.pod.network.tcp.segment.retransmitted").next())
        .expect("the default protocol counters");
    assert_eq!(retransmitted.start_time, Some(s2.time), "protocol counters start anew too");
    assert!(replaced() > replaced_before, "counted");
    let s4 = stamped(&mut source);
    assert_eq!(start_of(&s4), s2.time, "and it goes on from there");
}
