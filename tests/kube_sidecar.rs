//! Live, on the real node of scripts/kube-node.sh: deploy/kubernetes/sidecar-example.yaml
//! applied as shipped, in a namespace that enforces the `restricted` Pod Security level, with
//! these changes only: the app's image (no registry here: busybox, so it needs a command; it
//! burns some CPU, then takes bytes on the example's port 8080), the sidecar's OTLP endpoint
//! (the test's receiver) and its interval (PODOMETER_INTERVAL=2s, which the built-in config
//! reads). The sidecar image is the shipped reference, loaded into the node.
//!
//! Its numbers against the kernel's, read on the host (as tests/sidecar.rs does with Podman):
//! - the pod's `eth0` receive bytes equal `/proc/<pid>/net/dev` of a pod process, bracketed
//!   by reads just before and after the sweep and equal to one of them (the probes and the
//!   sidecar's own exports cross eth0 every sweep), and include the bytes sent;
//! - the app container's `container.processes.cpu.time` is within the tick truncation of its
//!   cgroup's CPU time (two ticks per process that ran in it, plus one);
//! - the app's `container.processes.memory.rss` equals the sum of `VmRSS` of the processes in
//!   its cgroup (the same definition, read by the kernel's `/proc/<pid>/status`);
//! - the sidecar's own container: its cgroup CPU time (`container.cpu.time`) between the
//!   kernel's readings.
#[path = "support/kube_deploy.rs"]
mod k;
mod support;

use std::time::{Duration, Instant, SystemTime};

use k::Sink;
use serde_json::{json, Value as Json};
use support::kube_node::{kube_node_available, KubeNode, BUSYBOX_IMAGE};

const NS: &str = "sidecar-example";
const PAYLOAD: usize = 250_000;

fn deployment(endpoint: &str) -> Json {
    let text =
        std::fs::read_to_string(format!("{}/deploy/kubernetes/sidecar-example.yaml", k::ROOT)).unwrap();
    let mut d: Json = serde_saphyr::from_str(&text).expect("the example is YAML");
    d["metadata"]["namespace"] = json!(NS);
    let mut changed = 0;
    for c in d["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap() {
        match c["name"].as_str().unwrap() {
            "app" => {
                c["image"] = json!(BUSYBOX_IMAGE);
                c["command"] = json!(["sh", "-c",
                    "dd if=/dev/zero of=/dev/null bs=1 count=1500000 2>/dev/null; while true; do nc -l -p 8080 > /dev/null; done"]);
                changed += 1;
            }
            "podometer" => {
                assert_eq!(c["image"], k::podometer_image().as_str(), "the example's sidecar image");
                k::set_env(c, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
                k::set_env(c, "PODOMETER_INTERVAL", "2s");
                changed += 1;
            }
            other => panic!("unexpected container {other}"),
        }
    }
    assert_eq!(changed, 2);
    d
}

fn vm_rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn the_sidecar_example_on_the_real_node_matches_the_kernel() {
    if !kube_node_available() || !k::podometer_image_available() {
        return;
    }
    let started = Instant::now();
    let node = KubeNode::up();
    let sink = Sink::start();
    k::load_podometer_image(&node);
    k::apply_json(
        &node,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                       "pod-security.kubernetes.io/enforce-version": "latest"}}}),
    );
    let out = node.kubectl(&["apply", "-f", "-"], Some(&deployment(&sink.endpoint()).to_string()));
    let warnings = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{warnings}");
    node.rollout(NS, "deployment/web", "120s");
    let pod = k::pods(&node, NS, "app=web").remove(0);
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let ids: std::collections::BTreeMap<String, String> = k::container_ids(&pod).into_iter().collect();
    let (app, sidecar) = (ids["app"].clone(), ids["podometer"].clone());
    let pid = k::cgroup_pids(&pod, &app)[0];
    let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    eprintln!("node up, sidecar pod Ready (restricted): {:?}", started.elapsed());

    // The burn ends (the cgroup's counter stops moving), then the bytes.
    let mut last = k::kernel_cpu(&pod, Some(&app));
    k::poll(
        "the app's CPU burn to end",
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(500));
            let now = k::kernel_cpu(&pod, Some(&app));
            let done = now - last < 0.005 && now > 0.05;
            last = now;
            done.then_some(())
        },
        String::new,
    );
    let rx_before = k::net_dev(pid)["eth0"].0;
    support::netns::send_tcp(&ip, 8080, PAYLOAD, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));

    let mut equal_seen = false;
    for _attempt in 0..5 {
        let rx1 = k::net_dev(pid)["eth0"].0;
        let (cpu1, own1) = (k::kernel_cpu(&pod, Some(&app)), k::kernel_cpu(&pod, Some(&sidecar)));
        let rss1: u64 = k::cgroup_pids(&pod, &app).iter().map(|p| vm_rss_bytes(*p)).sum();
        let since = SystemTime::now();
        let points = k::poll(
            "a sweep from the sidecar",
            Duration::from_secs(20),
            || {
                let p = sink.points_since(since);
                p.iter().any(|p| p.name == "k8s.pod.network.io").then_some(p)
            },
            || k::logs(&node, NS, &name),
        );
        let rx2 = k::net_dev(pid)["eth0"].0;
        let (cpu2, own2) = (k::kernel_cpu(&pod, Some(&app)), k::kernel_cpu(&pod, Some(&sidecar)));
        let rss2: u64 = k::cgroup_pids(&pod, &app).iter().map(|p| vm_rss_bytes(*p)).sum();
        let of = |metric: &str, id: Option<&str>| -> Option<f64> {
            let ps: Vec<f64> = points
                .iter()
                .filter(|p| p.name == metric && p.res("container.id") == id)
                .map(|p| p.value)
                .collect();
            (!ps.is_empty()).then(|| ps.iter().sum())
        };
        let rx = points
            .iter()
            .find(|p| {
                p.name == "k8s.pod.network.io"
                    && p.res("k8s.pod.uid") == Some(&uid)
                    && p.attr("network.interface.name") == Some("eth0")
                    && p.attr("network.io.direction") == Some("receive")
            })
            .expect("the pod's eth0 receive point, with the pod's uid")
            .value as u64;
        let cpu = of("container.processes.cpu.time", Some(&app)).expect("the app's process CPU");
        let rss = of("container.processes.memory.rss", Some(&app)).expect("the app's process RSS") as u64;
        let own = of("container.cpu.time", Some(&sidecar)).expect("the sidecar's own cgroup CPU");
        eprintln!(
            "eth0 rx kernel {rx1}..{rx2}, sidecar {rx}; app cgroup CPU {cpu1:.4}..{cpu2:.4} s, processes {cpu:.4} s; \
             app RSS kernel {rss1}..{rss2}, sidecar {rss}; own cgroup CPU {own1:.4}..{own2:.4}, sidecar {own:.4}"
        );
        assert!(rx1 <= rx && rx <= rx2, "pod rx {rx} outside the kernel's {rx1}..{rx2}");
        assert!(rx - rx_before >= PAYLOAD as u64, "{PAYLOAD} bytes sent, {} seen", rx - rx_before);
        // sh, dd and two nc (the one that took the bytes, the one listening now).
        let tolerance = 2.0 * 0.01 * 4.0 + 0.01;
        assert!(cpu >= cpu1 - tolerance && cpu <= cpu2 + 1e-6, "app CPU {cpu} vs cgroup {cpu1}..{cpu2}");
        assert!(own1 - 1e-5 <= own && own <= own2 + 1e-5, "own cgroup CPU {own} outside {own1}..{own2}");
        // The kubelet's probes and the sidecar's own exports cross eth0 every sweep, so the pod
        // is never quiet: the sweep's number must be the kernel's at one of the two reads
        // (nothing arrived between that read and the sweep's).
        if (rx == rx1 || rx == rx2) && rss1 == rss2 {
            assert_eq!(rss, rss1, "the app's RSS: sum of VmRSS");
            equal_seen = true;
            break;
        }
    }
    assert!(
        equal_seen,
        "the sidecar's rx never equalled a kernel reading (or the app's RSS never held still)"
    );
    eprintln!("whole test {:?}", started.elapsed());
}
