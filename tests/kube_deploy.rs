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
#[path = "support/kube_deploy.rs"]
mod deploy;
mod support;
#[path = "support/kube_workloads.rs"]
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use deploy::{apply_overlay, NodeAgent, Point, Sink, AGENT_PATCH_HEAD};
use serde_json::Value;
use support::kube_node::{elapsed, kube_node_available, KubeNode};
use workloads::{PodInfo, NS};

/// The cgroup source's `discovery_interval` in the shipped config (its default).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sweep_interval() -> Duration {
    humantime::parse_duration(deploy::NODE_INTERVAL).unwrap()
}

fn available() -> bool {
    kube_node_available() && deploy::podometer_image_available()
}

fn rendered(shipped: &str) -> Vec<Value> {
    let text = support::run(
        std::process::Command::new("kubectl")
            .args(["kustomize", &format!("{ROOT}/deploy/kubernetes/{shipped}")]),
    );
    serde_saphyr::from_multiple(&text).expect("kustomize output is YAML")
}

fn daemonset_of(objects: &[Value]) -> Value {
    objects.iter().find(|o| o["kind"] == "DaemonSet").cloned().expect("a DaemonSet")
}

/// The agent's pod, once the DaemonSet reports it Ready (its real probes passed).
fn agent_pod(node: &KubeNode) -> PodInfo {
    node.rollout("podometer", "daemonset/podometer", "120s");
    let ds = node.get_json("podometer", &["daemonset", "podometer"]);
    if ds["status"]["numberReady"] != 1 {
        // What the kubelet said about the probes, so that a failure here can be told apart
        // (a probe timing out, the agent not ready, the pod restarting).
        let events = node.kubectl(&["-n", "podometer", "get", "events", "--sort-by=.lastTimestamp"], None);
        panic!(
            "DaemonSet not ready after its rollout: {}\nevents:\n{}",
            ds["status"],
            String::from_utf8_lossy(&events.stdout)
        );
    }
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
                    assert_eq!(
                        r.get(k).map(String::as_str),
                        Some(v),
                        "{k} of {}/{}: {r:?}",
                        pod.name,
                        c.name
                    );
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
        ps.iter()
            .any(|p| p.name == "container.cpu.time" && p.res("container.id") == Some(id) && p.time() >= t1)
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
            ps.iter().any(|p| {
                p.name == "container.memory.usage" && p.res("container.id") == Some(id) && p.time() >= t1
            })
        });
        let after = deploy::kernel_memory_bytes(id);
        if before != after {
            continue;
        }
        let seen: Vec<f64> = points
            .iter()
            .filter(|p| {
                p.name == "container.memory.usage" && p.res("container.id") == Some(id) && p.time() >= t1
            })
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
            ps.iter().any(|p| {
                p.name == "k8s.pod.network.io" && p.res("k8s.pod.uid") == Some(&pod.uid) && p.time() >= last
            })
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
        assert!(
            mine.iter().any(|p| p.attr("network.io.direction") == Some("receive")),
            "{}: no eth0 receive",
            pod.name
        );
        assert!(
            mine.iter().any(|p| p.attr("network.io.direction") == Some("transmit")),
            "{}: no eth0 transmit",
            pod.name
        );
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
    procs
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process in {dir:?}"))
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
        want |= 1
            << match cap {
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
    node.kubectl_ok(
        &["label", "namespace", "psa-baseline", "pod-security.kubernetes.io/enforce=baseline"],
        None,
    );
    let refused = node.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&pod("psa-baseline")));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("violates PodSecurity") && err.contains("hostPID"),
        "{err}"
    );
    let admitted = node.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&pod("podometer")));
    assert!(admitted.status.success(), "{}", String::from_utf8_lossy(&admitted.stderr));
    assert!(!String::from_utf8_lossy(&admitted.stderr).contains("Warning"));
    node.kubectl_ok(&["delete", "namespace", "psa-baseline", "--wait=false"], None);
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
    let overlay = NodeAgent::base().overlay(&sink.endpoint());
    let stderr = apply_overlay(&node, &overlay);
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
    let ids: Vec<String> =
        running.iter().flat_map(|p| p.containers.iter().filter_map(|c| c.id.clone())).collect();
    assert_eq!(ids.len(), 8, "every container runs: {running:?}");
    let points = sink.wait_for("series of every workload container", Duration::from_secs(60), |ps| {
        ids.iter().all(|id| ps.iter().any(|p| p.res("container.id") == Some(id)))
    });
    let mut qos: Vec<&str> = running.iter().map(|p| p.qos.as_str()).collect();
    qos.sort();
    qos.dedup();
    assert_eq!(qos, ["BestEffort", "Burstable", "Guaranteed"]);
    assert_names(&points, &running, NS, &node_name);
    assert!(
        points.iter().all(|p| p.res("host.name") == Some(node_name.as_str())),
        "host.name other than the node's"
    );
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
            .filter(|p| {
                p.res("k8s.pod.name") == Some("crasher") && p.res("k8s.container.name") == Some("crash")
            })
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
        assert!(
            pair[1].0 > pair[0].2,
            "a restarted container's series starts before the previous one ended: {ordered:?}"
        );
    }
    let status = workloads::pods(&node).into_iter().find(|p| p.name == "crasher").unwrap();
    assert!(status.containers[0].restarts >= 1);
    // The container before the running one, as the kubelet reports it, was measured too. It
    // can be only if a discovery walk fell inside its life: walks are at most the shipped
    // `discovery_interval` (10 s) plus one sweep apart (the walk waits for the first sweep at
    // least 10 s after the last), so the crasher must run longer than that (workloads.rs).
    if let Some(last) = status.containers[0].last_id.clone() {
        let ran = status.containers[0].last_ran.expect("the previous container's start and finish");
        assert!(
            ran > DISCOVERY_INTERVAL + sweep_interval() + Duration::from_secs(1),
            "the previous crasher container ran {ran:?}: too short to be sure a discovery walk saw it"
        );
        sink.wait_for("series of the previous crasher container", Duration::from_secs(30), |ps| {
            ps.iter()
                .any(|p| p.res("container.id") == Some(&last) && p.res("k8s.container.name") == Some("crash"))
        });
    }
    elapsed(start, "restart checked");
}

/// The owner attributes a pod's Resources must carry, from its controller as the API server
/// reports it: ReplicaSet and its Deployment, StatefulSet, DaemonSet, Job and its CronJob.
fn expected_owners(pod: &PodInfo, cronjob: Option<&str>) -> Vec<(&'static str, Option<String>)> {
    let owner = pod.owner.clone();
    let name_of = |kind: &str| owner.as_ref().filter(|(k, _)| k == kind).map(|(_, n)| n.clone());
    let deployment = name_of("ReplicaSet").and_then(|rs| {
        let hash = pod.labels.get("pod-template-hash")?;
        rs.strip_suffix(&format!("-{hash}")).map(str::to_owned)
    });
    vec![
        ("k8s.replicaset.name", name_of("ReplicaSet")),
        ("k8s.deployment.name", deployment),
        ("k8s.statefulset.name", name_of("StatefulSet")),
        ("k8s.daemonset.name", name_of("DaemonSet")),
        ("k8s.job.name", name_of("Job")),
        ("k8s.cronjob.name", cronjob.map(str::to_owned)),
    ]
}

fn assert_owners(points: &[Point], pod: &PodInfo, cronjob: Option<&str>) {
    let mut all: Vec<&Point> = of_pod(points, &pod.uid);
    for c in pod.containers.iter().filter_map(|c| c.id.as_deref()) {
        all.extend(of_container(points, c));
    }
    assert!(!all.is_empty(), "no series of {}", pod.name);
    for r in resources(&all) {
        for (k, v) in expected_owners(pod, cronjob) {
            assert_eq!(r.get(k).cloned(), v, "{k} of {}: {r:?}", pod.name);
        }
    }
}

#[test]
fn overlays_k8s_api_names_owners_and_host_peers_leave_host_network_pods_out() {
    if !available() {
        return;
    }
    let start = Instant::now();
    let node = KubeNode::up();
    let node_name = node.env["KUBE_NODE_NAME"].clone();
    deploy::load_podometer_image(&node);
    let sink = Sink::start();

    // k8s-api: owners from the API server. The CronJob first: its Job starts at the next full
    // minute, while the rest is checked.
    node.kubectl_ok(&["create", "namespace", NS], None);
    node.kubectl_ok(&["apply", "-f", "-"], Some(&workloads::cronjob()));
    let overlay = NodeAgent::k8s_api().overlay(&sink.endpoint());
    let stderr = apply_overlay(&node, &overlay);
    assert!(!stderr.contains("Warning"), "{stderr}");
    let agent = agent_pod(&node);
    assert_shipped_pod(&node, &agent, &daemonset_of(&rendered("overlays/k8s-api")));
    workloads::start(&node);
    elapsed(start, "k8s-api agent and workloads Ready");
    let pods = workloads::pods(&node);
    let running: Vec<PodInfo> =
        pods.iter().filter(|p| p.name != "crasher" && !p.name.starts_with("tick-")).cloned().collect();
    // Owners come from the API server's watch: wait until every container carries its own.
    let points = sink.wait_for("owners on every workload container", Duration::from_secs(60), |ps| {
        running.iter().all(|pod| {
            pod.containers.iter().filter_map(|c| c.id.as_deref()).all(|id| {
                ps.iter().any(|p| {
                    p.res("container.id") == Some(id)
                        && expected_owners(pod, None).iter().all(|(k, v)| p.res(k).map(str::to_owned) == *v)
                })
            })
        })
    });
    // Series sent before the watch had a pod may lack owners: only the sweeps from the one in
    // which the last container first had its owners on, and at least one more after it.
    let since = running
        .iter()
        .flat_map(|pod| pod.containers.iter().filter_map(|c| c.id.as_deref()).map(move |id| (pod, id)))
        .map(|(pod, id)| {
            points
                .iter()
                .filter(|p| {
                    p.res("container.id") == Some(id)
                        && expected_owners(pod, None).iter().all(|(k, v)| p.res(k).map(str::to_owned) == *v)
                })
                .map(|p| p.time_ns)
                .min()
                .unwrap()
        })
        .max()
        .unwrap();
    let points =
        sink.wait_for("a sweep after every container had its owners", Duration::from_secs(30), |ps| {
            ps.iter().any(|p| p.time_ns > since)
        });
    let later: Vec<Point> = points.iter().filter(|p| p.time_ns >= since).cloned().collect();
    assert_names(&later, &running, NS, &node_name);
    for pod in &running {
        assert_owners(&later, pod, None);
    }
    assert_owners(&later, &agent, None);
    assert!(running.iter().any(|p| p.owner.as_ref().map(|o| o.0.as_str()) == Some("ReplicaSet")));
    assert!(running.iter().any(|p| p.owner.as_ref().map(|o| o.0.as_str()) == Some("StatefulSet")));
    assert!(running.iter().any(|p| p.owner.as_ref().map(|o| o.0.as_str()) == Some("Job")));
    elapsed(start, "owners checked");

    // The CronJob's pod (up to a minute after the CronJob was made).
    let tick = {
        let deadline = Instant::now() + Duration::from_secs(100);
        loop {
            let found = workloads::pods(&node)
                .into_iter()
                .find(|p| p.name.starts_with("tick-") && p.containers.iter().all(|c| c.id.is_some()));
            if let Some(p) = found {
                break p;
            }
            assert!(Instant::now() < deadline, "the CronJob started no pod");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let job = tick.owner.clone().expect("the CronJob's pod has a Job").1;
    let cronjob_of_job = node.get_json(NS, &["job", &job]);
    assert_eq!(cronjob_of_job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(cronjob_of_job["metadata"]["ownerReferences"][0]["name"], "tick");
    let tick_id = tick.containers[0].id.clone().unwrap();
    let points = sink.wait_for("the CronJob pod's owners", Duration::from_secs(60), |ps| {
        ps.iter().any(|p| p.res("container.id") == Some(&tick_id) && p.res("k8s.cronjob.name").is_some())
    });
    let later: Vec<Point> = points
        .iter()
        .filter(|p| p.res("k8s.pod.uid") == Some(&tick.uid))
        .skip_while(|p| p.res("k8s.cronjob.name").is_none())
        .cloned()
        .collect();
    assert_owners(&later, &tick, Some("tick"));
    elapsed(start, "CronJob checked");

    // host-peers over it: the agent in the node's network namespace with NET_ADMIN. What the
    // k8s-api overlay added beside the DaemonSet goes first.
    node.kubectl_ok(&["delete", "clusterrolebinding,clusterrole", "podometer"], None);
    let overlay = NodeAgent::new("overlays/host-peers", "base/agent.yaml").overlay(&sink.endpoint());
    let stderr = apply_overlay(&node, &overlay);
    assert!(!stderr.contains("Warning"), "{stderr}");
    node.rollout("podometer", "daemonset/podometer", "120s");
    let agent2 = agent_pod(&node);
    assert_ne!(agent2.uid, agent.uid);
    assert_shipped_pod(&node, &agent2, &daemonset_of(&rendered("overlays/host-peers")));
    let ready = SystemTime::now();
    let pods = workloads::pods(&node);
    let hostnet = pods.iter().find(|p| p.name == "hostnet").unwrap();
    let networked: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| ["client", "db-0"].contains(&p.name.as_str()) || p.name.starts_with("web-"))
        .collect();
    let hostnet_id = hostnet.containers[0].id.clone().unwrap();
    let points = sink.wait_for("three sweeps of the host-peers agent", Duration::from_secs(60), |ps| {
        let times: BTreeSet<u64> = ps
            .iter()
            .filter(|p| p.time() >= ready && p.res("container.id") == Some(&hostnet_id))
            .map(|p| p.time_ns)
            .collect();
        times.len() >= 3
    });
    let after: Vec<&Point> = points.iter().filter(|p| p.time() >= ready).collect();
    let hostnet_net: Vec<&&Point> = after
        .iter()
        .filter(|p| {
            p.name.contains(".network.")
                && (p.res("k8s.pod.uid") == Some(&hostnet.uid) || p.res("container.id") == Some(&hostnet_id))
        })
        .collect();
    assert!(hostnet_net.is_empty(), "the hostNetwork pod has network series: {:?}", hostnet_net.first());
    for pod in networked {
        let peers: BTreeSet<&str> = after
            .iter()
            .filter(|p| {
                p.name == "k8s.pod.network.io"
                    && p.res("k8s.pod.uid") == Some(&pod.uid)
                    && p.attr("network.interface.name") == Some("eth0")
            })
            .filter_map(|p| p.attr("network.interface.host_peer"))
            .collect();
        assert_eq!(peers.len(), 1, "{}: host peers {peers:?}", pod.name);
        let peer = peers.into_iter().next().unwrap();
        let iflink =
            node.exec(NS, &pod.name, &pod.containers[0].name, &["cat", "/sys/class/net/eth0/iflink"]);
        // `ip` in the node's namespace (its /sys is the host's: kube-node.sh enters the network
        // namespace only): "<ifindex>: <name>@if<n>: ...".
        let link = support::run(
            std::process::Command::new("bash")
                .arg(support::kube_node::script())
                .args(["exec", "--", "ip", "-o", "link", "show", "dev", peer]),
        );
        let ifindex = link.split(':').next().unwrap_or_default();
        assert_eq!(iflink.trim(), ifindex.trim(), "{}: {peer} is not the pod's veth peer ({link})", pod.name);
    }
    elapsed(start, "host-peers checked");
}

/// How long one sweep may take to follow the last, with scheduling slack.
fn max_gap() -> Duration {
    Duration::from_millis(3000)
}

/// A rolling update of the DaemonSet while the receiver is down, with the on-disk queue on a
/// hostPath: every sweep either agent made reaches the receiver once it is back.
///
/// "Lost" is defined per series of a pod that runs throughout: the receiver must end up with
/// a point at every sweep, i.e. consecutive timestamps at most one interval apart (plus
/// slack), except across the handover from the old agent to the new one, which may be no
/// longer than the time the rollout took plus one interval (the old agent's last sweep is
/// taken at its SIGTERM, the new one's first when it starts). The old agent's last sweep
/// (taken after the rollout began, with the receiver down) must be among them: it reached the
/// receiver only through the queue directory the new agent took over.
#[test]
fn rolling_update_with_the_disk_queue_on_a_host_path_loses_no_sweep() {
    if !available() {
        return;
    }
    let start = Instant::now();
    let node = KubeNode::up();
    deploy::load_podometer_image(&node);
    let mut sink = Sink::start();
    let queue_dir = tempfile::Builder::new().prefix("podometer-queue-").tempdir_in("/var/tmp").unwrap();
    let queue_patch = format!(
        r#"{AGENT_PATCH_HEAD}                volumeMounts:
                  - name: queue
                    mountPath: /var/lib/podometer
            volumes:
              - name: queue
                hostPath: {{path: {}, type: Directory}}
"#,
        queue_dir.path().display()
    );
    let overlay = NodeAgent::base()
        .otlp("    queue:\n      directory: /var/lib/podometer/queue\n")
        .patch(&queue_patch)
        .overlay(&sink.endpoint());
    apply_overlay(&node, &overlay);
    let old = agent_pod(&node);
    let steady = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "steady", "namespace": "default"}},
  "spec": {{"terminationGracePeriodSeconds": 0, "containers": [{{"name": "main", "image": "{}", "command": ["sleep", "3600"]}}]}}}}"#,
        support::kube_node::BUSYBOX_IMAGE
    );
    node.kubectl_ok(&["apply", "-f", "-"], Some(&steady));
    node.wait("default", "pod/steady", "condition=Ready", "120s");
    let pod = workloads::pods_in(&node, "default").into_iter().find(|p| p.name == "steady").unwrap();
    let id = pod.containers[0].id.clone().unwrap();
    sink.wait_for("three sweeps of the steady pod", Duration::from_secs(60), |ps| {
        ps.iter().filter(|p| p.res("container.id") == Some(&id) && p.name == "container.memory.usage").count()
            >= 3
    });
    elapsed(start, "agent with disk queue running");

    sink.stop();
    let t0 = SystemTime::now();
    std::thread::sleep(Duration::from_secs(6));
    let t1 = SystemTime::now();
    node.kubectl_ok(&["-n", "podometer", "rollout", "restart", "daemonset/podometer"], None);
    node.rollout("podometer", "daemonset/podometer", "120s");
    let t2 = SystemTime::now();
    let new = agent_pod(&node);
    assert_ne!(new.uid, old.uid, "the rollout replaced the agent's pod");
    std::thread::sleep(Duration::from_secs(6));
    let t3 = SystemTime::now();
    sink.resume();
    let resumed = Instant::now();
    let done_after = t3 + Duration::from_secs(4);
    let points =
        sink.wait_for("a sweep taken after the receiver came back", Duration::from_secs(120), |ps| {
            ps.iter().any(|p| p.res("container.id") == Some(&id) && p.time() >= done_after)
        });
    elapsed(
        start,
        &format!("delivered again {:.1} s after the receiver came back", resumed.elapsed().as_secs_f64()),
    );

    let received = sink.received();
    assert!(
        received.iter().all(|r| r.at <= t0 + Duration::from_millis(500) || r.at >= t3),
        "the receiver took requests while it was down"
    );
    let mut series: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for p in
        points.iter().filter(|p| p.res("container.id") == Some(&id) || p.res("k8s.pod.uid") == Some(&pod.uid))
    {
        series.entry(p.series_key()).or_default().insert(p.time_ns);
    }
    assert!(series.len() >= 5, "the steady pod's series: {}", series.len());
    let ns = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let (t0n, t1n, t2n, t3n) = (ns(t0), ns(t1), ns(t2), ns(t3));
    let handover_max = (t2n - t1n) + 2_000_000_000 + 1_000_000_000;
    let mut worst_handover = 0u64;
    for (key, times) in &series {
        let times: Vec<u64> = times.iter().copied().collect();
        assert!(
            times.first().is_some_and(|t| *t < t0n) && times.last().is_some_and(|t| *t > t3n),
            "{key}: not on both sides"
        );
        assert!(
            times.iter().any(|t| (t1n..t2n).contains(t)),
            "{key}: the old agent's last sweep (after the rollout began) is missing"
        );
        // One gap may be longer than a sweep's: the old agent's last sweep, taken after the
        // rollout began, to the new agent's first.
        let mut long_in_handover = 0;
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            if gap <= max_gap().as_nanos() as u64 {
                continue;
            }
            let handover = w[0] >= t1n && w[0] < t2n;
            assert!(handover, "{key}: {gap} ns between sweeps at {} and {}: lost sweeps", w[0], w[1]);
            long_in_handover += 1;
            worst_handover = worst_handover.max(gap);
            assert!(
                gap <= handover_max,
                "{key}: handover gap {gap} ns > rollout + one interval ({handover_max} ns)"
            );
        }
        assert!(long_in_handover <= 1, "{key}: {long_in_handover} long gaps in the handover");
    }
    eprintln!(
        "rollout took {:.1} s; the longest handover gap {:.1} s; receiver down {:.1} s",
        (t2n - t1n) as f64 / 1e9,
        worst_handover as f64 / 1e9,
        (t3n - t0n) as f64 / 1e9
    );
    node.kubectl_ok(&["-n", "default", "delete", "pod", "steady", "--wait=false"], None);
    elapsed(start, "no sweep lost");
}
