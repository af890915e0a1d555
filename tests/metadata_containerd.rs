//! `runtime_files` on a real kubelet-style node: Debian's containerd with its CRI plugin, pods
//! created through the CRI exactly as the kubelet creates them (RunPodSandbox, CreateContainer,
//! StartContainer, the kubelet's labels, a `kubepods` cgroup parent), CNI bridge networking.
//! The agent runs as configured from YAML: cgroups → netns → runtime_files, nothing stubbed.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use podometer::model::{AttrValue, ResourceId, Sweep, Value};
use podometer::pipeline::{build_pipelines, sweep_all, Pipeline};
use podometer::semconv;
use support::containerd::Containerd;
use support::netns::{send_tcp, tcp_sink_in};
use support::str_attr;

fn live() -> bool {
    support::containerd::containerd_available() && support::netns::netns_available()
}

fn pod_uid() -> String {
    support::cri::kubelet_pod_uid('8')
}

fn agent(node: &Containerd) -> Vec<Pipeline> {
    let yaml = format!(
        r#"
sources:
  cgroups: {{ discovery_interval: 0s, layouts: {{ kubelet: ["{}/kubepods"] }} }}
  netns: {{}}
processors:
  runtime_files: {{ containerd_state: "{}" }}
exporters:
  file: {{ path: /dev/null }}
pipelines:
  node: {{ sources: [cgroups, netns], processors: [runtime_files], exporters: [file] }}
"#,
        node.cgroup_base,
        node.state.display()
    );
    let config = podometer::config::parse("test.yaml", &yaml, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
    build_pipelines(&config).expect("pipelines")
}

fn pod_network_io(sweep: &Sweep, uid: &str, direction: &str) -> i64 {
    let pod = sweep.resource(&ResourceId::Pod(uid.to_owned())).expect("pod resource");
    let points: Vec<_> = pod
        .points_of("k8s.pod.network.io")
        .filter(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME) == Some(&AttrValue::from("eth0")))
        .filter(|p| p.attribute(semconv::NETWORK_IO_DIRECTION) == Some(&AttrValue::from(direction)))
        .collect();
    assert_eq!(points.len(), 1, "{points:?}");
    match points[0].value {
        Value::Int(v) => v,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The first process of a container of `node`, from its cgroup.
fn first_pid(node: &Containerd, uid: &str, id: &str) -> u32 {
    let procs = Path::new("/sys/fs/cgroup/memory")
        .join(node.cgroup_parent(uid).trim_start_matches('/'))
        .join(id)
        .join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
    text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no pid in {text:?}"))
}

#[test]
fn pods_created_through_the_cri_get_their_names_on_every_resource_and_network_series() {
    if !live() {
        return;
    }
    let node = Containerd::start();
    let uid = pod_uid();
    let name = support::unique("web");
    let namespace = support::unique("shop");
    let pod = node.run_pod(
        &name,
        &namespace,
        &uid,
        &[("app", "exec sleep 300"), ("log-shipper", "exec sleep 300")],
    );
    assert!(node.bundle(&pod.sandbox_id).exists(), "the sandbox's bundle is where a node has it");

    let mut pipelines = agent(&node);
    let sweep = sweep_all(&mut pipelines, SystemTime::now());

    for (container, id) in &pod.containers {
        let r = ResourceId::Container(id.clone());
        assert!(sweep.resource(&r).is_some(), "container {container} ({id}) found by the cgroup source");
        assert_eq!(
            str_attr(&sweep, &r, semconv::K8S_CONTAINER_NAME),
            Some(container.as_str()),
            "{container}"
        );
        assert_eq!(str_attr(&sweep, &r, semconv::CONTAINER_NAME), Some(container.as_str()), "{container}");
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_POD_NAME), Some(name.as_str()), "{container}");
        assert_eq!(
            str_attr(&sweep, &r, semconv::K8S_NAMESPACE_NAME),
            Some(namespace.as_str()),
            "{container}"
        );
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_POD_UID), Some(uid.as_str()), "{container}");
        assert_eq!(str_attr(&sweep, &r, semconv::CONTAINER_IMAGE_NAME), Some("podometer.test/busybox"));
        assert_eq!(
            sweep.resource(&r).and_then(|r| r.attribute(semconv::CONTAINER_IMAGE_TAGS)),
            Some(&AttrValue::StrArray(vec!["1".into()]))
        );
    }
    let sandbox = ResourceId::Container(pod.sandbox_id.clone());
    assert_eq!(str_attr(&sweep, &sandbox, semconv::K8S_POD_NAME), Some(name.as_str()), "the sandbox");
    assert_eq!(str_attr(&sweep, &sandbox, semconv::K8S_NAMESPACE_NAME), Some(namespace.as_str()));
    assert_eq!(str_attr(&sweep, &sandbox, semconv::K8S_CONTAINER_NAME), None, "a sandbox is no container");

    let pod_resource = ResourceId::Pod(uid.clone());
    assert_eq!(
        str_attr(&sweep, &pod_resource, semconv::K8S_POD_NAME),
        Some(name.as_str()),
        "the pod resource"
    );
    assert_eq!(str_attr(&sweep, &pod_resource, semconv::K8S_NAMESPACE_NAME), Some(namespace.as_str()));
    let r = sweep.resource(&pod_resource).expect("pod resource");
    assert!(
        r.points.iter().any(|p| p.metric.name == "k8s.pod.network.io"),
        "the pod's network series are on the named pod resource: {r:#?}"
    );
    assert!(r.points.iter().any(|p| p.metric.name == "k8s.pod.cpu.time"), "and its cgroup series");

    // Gone pods are forgotten: after removal nothing of the pod is left in the snapshot.
    let ids: Vec<String> =
        pod.containers.iter().map(|(_, id)| id.clone()).chain([pod.sandbox_id.clone()]).collect();
    drop(pod);
    let sweep = sweep_all(&mut pipelines, SystemTime::now());
    for id in &ids {
        assert!(sweep.resource(&ResourceId::Container(id.clone())).is_none(), "{id} still reported");
    }
}

/// The network source's exactness check on a CRI node: what the pod received, as the agent
/// reads it from the pod's namespace, equals what the CNI veth transmitted on the host side.
#[test]
fn pod_receive_bytes_equal_the_host_veth_transmit_on_a_cri_node() {
    if !live() {
        return;
    }
    let node = Containerd::start();
    let uid = pod_uid();
    let name = support::unique("sink");
    let pod = node.run_pod(&name, "default", &uid, &[("app", "exec sleep 300")]);
    let pid = first_pid(&node, &uid, &pod.sandbox_id);
    let netns = format!("/proc/{pid}/ns/net");
    // eth0's peer, read from inside the pod's namespace: `eth0@if<host ifindex>`.
    let link = support::run(
        Command::new("nsenter").arg(format!("--net={netns}")).args(["ip", "-o", "link", "show", "eth0"]),
    );
    let peer_index = link
        .split_once("eth0@if")
        .and_then(|(_, rest)| rest.split(':').next())
        .unwrap_or_else(|| panic!("no peer in {link}"))
        .to_owned();
    let host_veth = std::fs::read_dir("/sys/class/net")
        .expect("sysfs")
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex")).map(|i| i.trim() == peer_index).unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("host veth of the pod");
    let master =
        std::fs::read_link(format!("/sys/class/net/{host_veth}/master")).expect("veth on the bridge");
    assert!(master.ends_with(&node.bridge), "{host_veth} is on {}", master.display());
    // No IPv6 autoconfiguration traffic on the path while counting.
    for iface in [&node.bridge, &host_veth] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"), "1");
    }
    let _ = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        .status();
    let ip = node.cri.pod_ip(&pod.sandbox_id).expect("PodSandboxStatus");
    assert!(ip.starts_with(&node.subnet_prefix), "pod ip {ip} from our subnet {}", node.subnet_prefix);
    let host_tx = || -> i64 {
        let path = format!("/sys/class/net/{host_veth}/statistics/tx_bytes");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .expect("tx_bytes")
    };

    let mut pipelines = agent(&node);
    const PORT: u16 = 8080;
    const PAYLOAD: usize = 1_000_000;
    let sink = tcp_sink_in(&netns, PORT);
    // Warm the ARP entry so the transfer is the only traffic between the two readings.
    send_tcp(&ip, PORT, 1, Duration::from_secs(10));
    assert_eq!(sink.join().expect("sink"), 1);
    std::thread::sleep(Duration::from_millis(300));
    let sink = tcp_sink_in(&netns, PORT);
    let host_before = host_tx();
    let before = sweep_all(&mut pipelines, SystemTime::now());
    send_tcp(&ip, PORT, PAYLOAD, Duration::from_secs(10));
    assert_eq!(sink.join().expect("sink"), PAYLOAD as u64);
    std::thread::sleep(Duration::from_millis(300));
    let after = sweep_all(&mut pipelines, SystemTime::now());
    let host_after = host_tx();

    let received = pod_network_io(&after, &uid, "receive") - pod_network_io(&before, &uid, "receive");
    let transmitted = host_after - host_before;
    eprintln!("CRI pod: payload {PAYLOAD}, pod receive delta {received}, host veth {host_veth} transmit delta {transmitted}");
    assert_eq!(received, transmitted, "pod receive delta equals the host veth's transmit delta");
    assert!(received >= PAYLOAD as i64);
    let peer = after
        .resource(&ResourceId::Pod(uid.clone()))
        .and_then(|r| r.points_of("k8s.pod.network.io").next())
        .and_then(|p| p.attribute(semconv::NETWORK_INTERFACE_HOST_PEER).cloned());
    assert_eq!(peer, Some(AttrValue::from(host_veth.as_str())), "the agent names the same host veth");
    assert_eq!(str_attr(&after, &ResourceId::Pod(uid.clone()), semconv::K8S_POD_NAME), Some(name.as_str()));
}
