//! Live: the shipped DaemonSet (`deploy/kubernetes`) on the real one-node cluster of
//! scripts/kube-node.sh, applied with `kubectl apply -k` through a kustomization of the test's
//! own that changes what a user changes (the image and the OTLP endpoint), plus what only this
//! node needs (each named where it is made: `support/kube_deploy.rs`). Workloads of every shape
//! run beside it; what the agent exports reaches an OTLP/gRPC receiver the test runs on the
//! host end of the node's veth, and is compared with the API server's names and the kernel's
//! own counters.
//!
//! One node life per test function (up ~10 s, down ~4 s); each test makes several checks.
//! Needs the podometer image (scripts/image.sh; scripts/test.sh builds it first).
mod support;
#[path = "support/kube_deploy.rs"]
mod deploy;
#[path = "support/kube_workloads.rs"]
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use deploy::{Overlay, Point, Sink};
use serde_json::Value;
use support::kube_node::{kube_node_available, KubeNode};
use workloads::{PodInfo, NS};

const INTERVAL: &str = "2s";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn available() -> bool {
    kube_node_available() && deploy::podometer_image_available()
}

fn rendered(shipped: &str) -> Vec<Value> {
    let text = support::run(std::process::Command::new("kubectl").args(["kustomize", &format!("{ROOT}/deploy/kubernetes/{shipped}")]));
    serde_saphyr::from_multiple(&text).expect("kustomize output is YAML")
}

fn daemonset_of(objects: &[Value]) -> Value {
    objects.iter().find(|o| o["kind"] == "DaemonSet").cloned().expect("a DaemonSet")
}

/// `kubectl apply -k`; its stderr (warnings land there).
fn apply(node: &KubeNode, overlay: &Overlay) -> String {
    let out = node.kubectl(&["apply", "-k", overlay.path()], None);
    assert!(out.status.success(), "apply -k failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The agent's pod, once the DaemonSet reports it Ready (its real probes passed).
fn agent_pod(node: &KubeNode) -> PodInfo {
    node.rollout("podometer", "daemonset/podometer", "120s");
    let ds = node.get_json("podometer", &["daemonset", "podometer"]);
    assert_eq!(ds["status"]["numberReady"], 1, "DaemonSet status: {}", ds["status"]);
    let pods: Vec<PodInfo> = workloads::pods_in(node, "podometer")
        .into_iter()
        .filter(|p| p.containers.iter().all(|c| c.id.is_some()))
        .collect();
    assert_eq!(pods.len(), 1, "one running agent pod: {pods:?}");
    pods.into_iter().next().unwrap()
}

/// Every point of the container with this id.
fn of_container<'a>(points: &'a [Point], id: &str) -> Vec<&'a Point> {
    points.iter().filter(|p| p.res("container.id") == Some(id)).collect()
}

/// Every point of the pod's own Resource (not its containers').
fn of_pod<'a>(points: &'a [Point], uid: &str) -> Vec<&'a Point> {
    points.iter().filter(|p| p.res("k8s.pod.uid") == Some(uid) && p.res("container.id").is_none()).collect()
}

fn resources<'a>(points: &[&'a Point]) -> BTreeSet<&'a BTreeMap<String, String>> {
    points.iter().map(|p| &*p.resource).collect()
}

/// Every running container and every pod of `pods` has series, and each of their Resources
/// names it as the API server does, on this node.
fn assert_names(points: &[Point], pods: &[PodInfo], namespace: &str, node_name: &str) {
    for pod in pods {
        let qos = pod.qos.to_lowercase();
        for c in &pod.containers {
            let Some(id) = &c.id else { continue };
            let mine = of_container(points, id);
            assert!(!mine.is_empty(), "no series of container {}/{} ({id})", pod.name, c.name);
            for r in resources(&mine) {
                let want = [
                    ("k8s.pod.name", pod.name.as_str()),
                    ("k8s.namespace.name", namespace),
                    ("k8s.pod.uid", pod.uid.as_str()),
                    ("k8s.container.name", c.name.as_str()),
                    ("k8s.node.name", node_name),
                    ("host.name", node_name),
                    ("k8s.pod.qos_class", qos.as_str()),
                ];
                for (k, v) in want {
                    assert_eq!(r.get(k).map(String::as_str), Some(v), "{k} of {}/{}: {r:?}", pod.name, c.name);
                }
            }
        }
        let own = of_pod(points, &pod.uid);
        assert!(!own.is_empty(), "no pod series of {}", pod.name);
        for r in resources(&own) {
            for (k, v) in [
                ("k8s.pod.name", pod.name.as_str()),
                ("k8s.namespace.name", namespace),
                ("k8s.node.name", node_name),
                ("host.name", node_name),
            ] {
                assert_eq!(r.get(k).map(String::as_str), Some(v), "{k} of pod {}: {r:?}", pod.name);
            }
        }
    }
}

/// CPU: every exported `container.cpu.time` (user + system) taken after a read of the kernel's
/// `usage_usec` and received before a second read lies between the two reads.
fn assert_cpu_bracket(sink: &Sink, id: &str) {
    let before = deploy::kernel_cpu_seconds(id);
    let t1 = SystemTime::now();
    let points = sink.wait_for("a CPU point after the first read", Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p.name == "container.cpu.time" && p.res("container.id") == Some(id) && p.time() >= t1)
    });
    let after = deploy::kernel_cpu_seconds(id);
    let mut by_time: BTreeMap<u64, f64> = BTreeMap::new();
    for p in points.iter().filter(|p| p.name == "container.cpu.time" && p.res("container.id") == Some(id)) {
        if p.time() >= t1 {
            *by_time.entry(p.time_ns).or_default() += p.value;
        }
    }
    assert!(after > before, "the burning container used no CPU: {before} .. {after}");
    // user and system are each rounded to the microsecond by the kernel.
    for (t, v) in &by_time {
        assert!(
            *v >= before - 2e-6 && *v <= after + 2e-6,
            "container {id} CPU at {t}: {v} s outside the kernel's {before} .. {after}"
        );
    }
}

/// Memory: an exported `container.memory.usage` taken between two equal reads of the kernel's
/// `memory.usage_in_bytes` equals them (tries again while the container's usage moves).
fn assert_memory_equal(sink: &Sink, id: &str) {
    for _ in 0..5 {
        let before = deploy::kernel_memory_bytes(id);
        let t1 = SystemTime::now();
        let points = sink.wait_for("a memory point after the first read", Duration::from_secs(30), |ps| {
            ps.iter().any(|p| p.name == "container.memory.usage" && p.res("container.id") == Some(id) && p.time() >= t1)
        });
        let after = deploy::kernel_memory_bytes(id);
        if before != after {
            continue;
        }
        let seen: Vec<f64> = points
            .iter()
            .filter(|p| p.name == "container.memory.usage" && p.res("container.id") == Some(id) && p.time() >= t1)
            .map(|p| p.value)
            .collect();
        assert!(seen.iter().all(|v| *v == before as f64), "container {id} memory {seen:?}, kernel {before}");
        return;
    }
    panic!("container {id}: memory.usage_in_bytes never held still over a sweep");
}

/// Network: for each pod, the exported `k8s.pod.network.io` of eth0 taken after a read of the
/// pod's /proc/net/dev (through `kubectl exec`) and received before a second read lies between
/// the two, per direction.
fn assert_network_brackets(node: &KubeNode, sink: &Sink, pods: &[&PodInfo]) {
    let read = |pod: &PodInfo| {
        let c = &pod.containers[0].name;
        let text = node.exec(NS, &pod.name, c, &["cat", "/proc/net/dev"]);
        deploy::net_dev_bytes(&text, "eth0").unwrap_or_else(|| panic!("no eth0 in {}: {text}", pod.name))
    };
    let mut before = Vec::new();
    for pod in pods {
        before.push((read(pod), SystemTime::now()));
    }
    let last = before.iter().map(|(_, t)| *t).max().unwrap();
    let points = sink.wait_for("network points after the first reads", Duration::from_secs(30), |ps| {
        pods.iter().all(|pod| {
            ps.iter().any(|p| p.name == "k8s.pod.network.io" && p.res("k8s.pod.uid") == Some(&pod.uid) && p.time() >= last)
        })
    });
    for (pod, ((rx0, tx0), t1)) in pods.iter().zip(before) {
        let (rx1, tx1) = read(pod);
        let mine: Vec<&Point> = points
            .iter()
            .filter(|p| {
                p.name == "k8s.pod.network.io"
                    && p.res("k8s.pod.uid") == Some(&pod.uid)
                    && p.attr("network.interface.name") == Some("eth0")
                    && p.time() >= t1
            })
            .collect();
        assert!(mine.iter().any(|p| p.attr("network.io.direction") == Some("receive")), "{}: no eth0 receive", pod.name);
        assert!(mine.iter().any(|p| p.attr("network.io.direction") == Some("transmit")), "{}: no eth0 transmit", pod.name);
        for p in mine {
            let (lo, hi) = match p.attr("network.io.direction") {
                Some("receive") => (rx0, rx1),
                Some("transmit") => (tx0, tx1),
                other => panic!("direction {other:?}"),
            };
            assert!(
                p.value >= lo as f64 && p.value <= hi as f64,
                "{} eth0 {:?} {} outside the kernel's {lo} .. {hi}",
                pod.name,
                p.attr("network.io.direction"),
                p.value
            );
        }
    }
}

/// The pid of a container's first process, from its cgroup on the host.
fn container_pid(id: &str) -> u32 {
    let dir = deploy::container_cgroup("pids", id)
        .or_else(|| deploy::container_cgroup("memory", id))
        .unwrap_or_else(|| panic!("no cgroup for {id}"));
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    procs.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no process in {dir:?}"))
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The running agent is the shipped pod: its securityContext, host PID namespace and (no)
/// token as rendered, and the kernel confirms the process' privileges.
fn assert_shipped_pod(node: &KubeNode, agent: &PodInfo, shipped: &Value) {
    let live = node.get_json("podometer", &["pod", &agent.name]);
    let spec = &shipped["spec"]["template"]["spec"];
    assert_eq!(
        live["spec"]["containers"][0]["securityContext"], spec["containers"][0]["securityContext"],
        "the running container's securityContext is not the shipped one"
    );
    assert_eq!(live["spec"]["hostPID"], true);
    assert_eq!(live["spec"]["hostNetwork"], spec["hostNetwork"]);
    assert_eq!(live["spec"]["automountServiceAccountToken"], spec["automountServiceAccountToken"]);
    let id = agent.containers[0].id.as_deref().unwrap();
    let pid = container_pid(id);
    // Exactly the shipped capabilities: SYS_PTRACE (19), plus NET_ADMIN (12) where the
    // manifest adds it.
    let adds: Vec<&str> = spec["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut want: u64 = 0;
    for cap in adds {
        want |= 1 << match cap {
            "SYS_PTRACE" => 19,
            "NET_ADMIN" => 12,
            other => panic!("unexpected capability {other}"),
        };
    }
    assert_eq!(u64::from_str_radix(&status_field(pid, "CapEff"), 16).unwrap(), want, "CapEff of the agent");
    assert_eq!(u64::from_str_radix(&status_field(pid, "CapBnd"), 16).unwrap(), want, "CapBnd of the agent");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "allowPrivilegeEscalation: false");
    assert_eq!(status_field(pid, "Seccomp"), "2", "seccompProfile RuntimeDefault: a filter");
    assert_eq!(status_field(pid, "Uid").split_whitespace().next(), Some("0"));
}

/// The namespace carries the shipped Pod Security label, the API server enforced it without a
/// warning, and the same pod spec is refused under `baseline` (so the label is what admits it).
fn assert_pod_security(node: &KubeNode, apply_stderr: &str, shipped_ds: &Value) {
    assert!(!apply_stderr.contains("Warning"), "kubectl apply warned: {apply_stderr}");
    let ns = node.get_json("", &["namespace", "podometer"]);
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    let events = node.kubectl_ok(&["-n", "podometer", "get", "events", "-o", "json"], None);
    assert!(!events.contains("FailedCreate"), "the DaemonSet could not create its pod: {events}");

    // The shipped pod spec under another account: the probe namespace has no `podometer` one,
    // and the account plays no part in Pod Security.
    let mut spec = shipped_ds["spec"]["template"]["spec"].clone();
    spec["serviceAccountName"] = "default".into();
    let pod = |namespace: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "psa-probe", "namespace": namespace},
            "spec": spec,
        })
        .to_string()
    };
    node.kubectl_ok(&["create", "namespace", "psa-baseline"], None);
    node.kubectl_ok(&["label", "namespace", "psa-baseline", "pod-security.kubernetes.io/enforce=baseline"], None);
    let refused = node.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&pod("psa-baseline")));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("violates PodSecurity") && err.contains("hostPID"), "{err}");
    let admitted = node.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&pod("podometer")));
    assert!(admitted.status.success(), "{}", String::from_utf8_lossy(&admitted.stderr));
    assert!(!String::from_utf8_lossy(&admitted.stderr).contains("Warning"));
    node.kubectl_ok(&["delete", "namespace", "psa-baseline", "--wait=false"], None);
}

/// The base kustomization for this node: image, endpoint, and the node's paths and interval.
fn base_overlay(shipped: &str, config_file: &str, endpoint: &str, otlp_body: Option<&str>, extra_patches: &str) -> Overlay {
    let config = deploy::node_agent_config(config_file, otlp_body);
    let body = format!(
        "{}{}{extra_patches}{}",
        deploy::image_and_endpoint(endpoint),
        deploy::node_patch(INTERVAL),
        deploy::CONFIG_GENERATOR
    );
    Overlay::new(shipped, &body, &[("podometer.yaml", &config)])
}

fn elapsed(start: Instant, what: &str) {
    eprintln!("[{:6.1} s] {what}", start.elapsed().as_secs_f64());
}

#[test]
fn base_daemonset_measures_every_workload_as_the_kernel_counts() {
    if !available() {
        return;
    }
    let start = Instant::now();
    let node = KubeNode::up();
    let node_name = node.env["KUBE_NODE_NAME"].clone();
    elapsed(start, "node up");
    deploy::load_podometer_image(&node);
    let sink = Sink::start();
    let overlay = base_overlay(".", "base/agent.yaml", &sink.endpoint(), None, "");
    let stderr = apply(&node, &overlay);
    let agent = agent_pod(&node);
    elapsed(start, "agent Ready");
    let shipped = daemonset_of(&rendered("."));
    assert_shipped_pod(&node, &agent, &shipped);
    assert_pod_security(&node, &stderr, &shipped);

    workloads::start(&node);
    elapsed(start, "workloads Ready");
    let pods = workloads::pods(&node);
    let running: Vec<PodInfo> = pods.iter().filter(|p| p.name != "crasher").cloned().collect();
    assert_eq!(running.len(), 6, "web x2, db-0, batch, hostnet, client: {running:?}");
    let ids: Vec<String> = running.iter().flat_map(|p| p.containers.iter().filter_map(|c| c.id.clone())).collect();
    assert_eq!(ids.len(), 8, "every container runs: {running:?}");
    let points = sink.wait_for("series of every workload container", Duration::from_secs(60), |ps| {
        ids.iter().all(|id| ps.iter().any(|p| p.res("container.id") == Some(id)))
    });
    let mut qos: Vec<&str> = running.iter().map(|p| p.qos.as_str()).collect();
    qos.sort();
    qos.dedup();
    assert_eq!(qos, ["BestEffort", "Burstable", "Guaranteed"]);
    assert_names(&points, &running, NS, &node_name);
    assert!(points.iter().all(|p| p.res("host.name") == Some(node_name.as_str())), "host.name other than the node's");
    assert!(points.iter().all(|p| p.res("host.name") != Some(agent.name.as_str())));
    elapsed(start, "names checked");

    let db = running.iter().find(|p| p.name == "db-0").unwrap();
    assert_cpu_bracket(&sink, db.containers[0].id.as_deref().unwrap());
    let web: Vec<&PodInfo> = running.iter().filter(|p| p.name.starts_with("web-")).collect();
    let sidecar = web[0].containers.iter().find(|c| c.name == "sidecar").unwrap();
    assert_memory_equal(&sink, sidecar.id.as_deref().unwrap());
    let networked: Vec<&PodInfo> = running.iter().filter(|p| !p.host_network).collect();
    assert_network_brackets(&node, &sink, &networked);
    elapsed(start, "numbers checked");

    // The restarted container: a new container id, so new series, each starting after the
    // previous container's last point.
    let crasher_series = sink.wait_for("two containers of crasher", Duration::from_secs(90), |ps| {
        let ids: BTreeSet<&str> = ps
            .iter()
            .filter(|p| p.res("k8s.pod.name") == Some("crasher") && p.res("k8s.container.name") == Some("crash"))
            .filter_map(|p| p.res("container.id"))
            .collect();
        ids.len() >= 2
    });
    let mut runs: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new(); // id -> (min start, min time, max time)
    for p in crasher_series.iter().filter(|p| {
        p.res("k8s.pod.name") == Some("crasher")
            && p.res("k8s.container.name") == Some("crash")
            && p.name == "container.cpu.time"
    }) {
        let e = runs.entry(p.res("container.id").unwrap()).or_insert((u64::MAX, u64::MAX, 0));
        e.0 = e.0.min(p.start_ns);
        e.1 = e.1.min(p.time_ns);
        e.2 = e.2.max(p.time_ns);
    }
    let mut ordered: Vec<(u64, u64, u64)> = runs.values().copied().collect();
    ordered.sort_by_key(|r| r.1);
    eprintln!("crasher's containers (first start, first time, last time): {runs:?}");
    for pair in ordered.windows(2) {
        assert!(pair[1].0 > pair[0].2, "a restarted container's series starts before the previous one ended: {ordered:?}");
    }
    let status = workloads::pods(&node).into_iter().find(|p| p.name == "crasher").unwrap();
    assert!(status.containers[0].restarts >= 1);
    if let Some(last) = &status.containers[0].last_id {
        assert!(runs.contains_key(last.as_str()), "the previous container {last} has no series");
    }
    elapsed(start, "restart checked");
}
