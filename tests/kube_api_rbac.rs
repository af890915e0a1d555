//! Live, on the real node of scripts/kube-node.sh: the `k8s_api` metadata processor in the
//! cluster, as deploy/kubernetes/overlays/k8s-api ships it (its service-account token, its
//! ClusterRole and binding), with only what this node needs changed (the test's OTLP receiver,
//! the API server's address, a 2 s interval, the kubelet's cgroup root; see
//! `NodeAgent` in support/kube_deploy.rs), and the bundle volume left as shipped.
//!
//! 1. What the agent asks the API server, from the server's audit log: every request of the
//!    agent's service account is a list or watch of pods with
//!    `fieldSelector=spec.nodeName=<node>`, at the cluster scope (which is what the
//!    ClusterRole grants; the selector is what keeps it to the node), and allowed.
//! 2. Names from the API on the exported points: pod, namespace, container, image, and the
//!    owners (ReplicaSet, Deployment, DaemonSet), which only the API has (the bundle files
//!    that `runtime_files` reads are not where this node's containerd keeps them, so nothing
//!    else could have named them).
//! 3. With `list` dropped from the ClusterRole and the agent restarted: one ERROR line naming
//!    the 403, the verb, the node's selector and the overlay; no second line within the
//!    minute; the list retried with backoff (a handful of requests, not a flood); the agent
//!    keeps exporting, with ids only, and stays live but not ready.
#[path = "support/kube_deploy.rs"]
mod k;
mod support;

use std::time::{Duration, Instant, SystemTime};

use k::NodeAgent;
use serde_json::{json, Value as Json};
use support::kube_node::{kube_node_available, KubeNode, BUSYBOX_IMAGE};

const SA_USER: &str = "system:serviceaccount:podometer:podometer";
const NS: &str = "kubeapi-workload";

fn workload() -> Json {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "names", "namespace": NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "names"}},
          "template": {"metadata": {"labels": {"app": "names"}}, "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
              {"name": "first", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"]},
              {"name": "second", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]}}}}]})
}

/// The requests of the agent in pod `pod_name` in the audit log, each once: its last event
/// with a response (a watch that is still open has `ResponseStarted`, the rest
/// `ResponseComplete`).
fn agent_requests(node: &KubeNode, pod_name: &str) -> Vec<Json> {
    let mut by_id: Vec<(String, Json)> = Vec::new();
    for e in k::audit_events(node) {
        if e["user"]["username"] != SA_USER
            || e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] != pod_name
            || e["responseStatus"].is_null()
        {
            continue;
        }
        let id = e["auditID"].as_str().unwrap_or_default().to_owned();
        match by_id.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = e,
            None => by_id.push((id, e)),
        }
    }
    by_id.into_iter().map(|(_, e)| e).collect()
}

#[test]
fn k8s_api_in_cluster_is_node_scoped_names_points_and_reports_a_missing_verb_once() {
    if !kube_node_available() || !k::podometer_image_available() {
        return;
    }
    let started = Instant::now();
    // Without the node's bundles `runtime_files` names nothing: every name is the API's.
    let (node, sink) =
        k::node_with_agent(&workload().to_string(), &NodeAgent::k8s_api().without_node_bundles());
    let node_name = node.env["KUBE_NODE_NAME"].clone();
    node.rollout(NS, "deployment/names", "120s");
    eprintln!("node up, image loaded, agent and workload rolled out: {:?}", started.elapsed());

    // ---- names from the API on the points -----------------------------------------------
    let pod = k::pods(&node, NS, "app=names").remove(0);
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let pod_uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let replicaset = pod["metadata"]["ownerReferences"][0]["name"].as_str().unwrap().to_owned();
    let containers = k::container_ids(&pod);
    assert_eq!(containers.len(), 2, "{pod}");
    let agent = k::pods(&node, "podometer", "app.kubernetes.io/name=podometer").remove(0);
    let agent_name = agent["metadata"]["name"].as_str().unwrap().to_owned();
    let (_, agent_id) = k::container_ids(&agent).remove(0);

    let named = |p: &k::Point, id: &str| p.res("container.id") == Some(id) && p.res("k8s.pod.name").is_some();
    let points = k::poll(
        "points of every workload container and of the agent, named from the API",
        Duration::from_secs(60),
        || {
            let points = sink.points();
            let all = containers.iter().map(|(_, id)| id.as_str()).chain([agent_id.as_str()]);
            all.clone().all(|id| points.iter().any(|p| named(p, id))).then_some(points)
        },
        || {
            format!(
                "{} requests received; agent log:\n{}",
                sink.requests(),
                k::logs(&node, "podometer", &agent_name)
            )
        },
    );
    for (name, id) in &containers {
        let p = points.iter().rev().find(|p| named(p, id)).unwrap();
        let want = [
            ("k8s.pod.name", pod_name.as_str()),
            ("k8s.pod.uid", pod_uid.as_str()),
            ("k8s.namespace.name", NS),
            ("k8s.container.name", name.as_str()),
            ("k8s.replicaset.name", replicaset.as_str()),
            ("k8s.deployment.name", "names"),
            ("container.image.name", "podometer.test/busybox"),
            ("container.image.tags", "1"),
            ("k8s.node.name", node_name.as_str()),
        ];
        for (key, value) in want {
            assert_eq!(p.res(key), Some(value), "{key} of container {name}: {:?}", p.resource);
        }
    }
    let own = points.iter().rev().find(|p| named(p, &agent_id)).unwrap();
    assert_eq!(own.res("k8s.daemonset.name"), Some("podometer"), "{:?}", own.resource);
    assert_eq!(own.res("k8s.pod.name"), Some(agent_name.as_str()));
    // The pod's own resource (its cgroup, its network) is named too.
    assert!(
        points.iter().any(|p| p.res("k8s.pod.uid") == Some(&pod_uid)
            && p.res("container.id").is_none()
            && p.res("k8s.pod.name") == Some(&pod_name)
            && p.name == "k8s.pod.cpu.time"),
        "no named k8s.pod.cpu.time for the workload pod"
    );

    // ---- what the agent asked the API server --------------------------------------------
    let selector = format!("fieldSelector=spec.nodeName%3D{node_name}");
    let requests = agent_requests(&node, &agent_name);
    assert!(!requests.is_empty(), "no audit event of {SA_USER}");
    for e in &requests {
        let uri = e["requestURI"].as_str().unwrap();
        assert!(
            ["list", "watch"].contains(&e["verb"].as_str().unwrap()),
            "the agent may only list and watch: {e}"
        );
        assert_eq!(e["objectRef"]["resource"], "pods", "{e}");
        assert!(
            uri.starts_with("/api/v1/pods?"),
            "pods at the cluster scope, as the ClusterRole grants: {uri}"
        );
        assert!(uri.contains(&selector), "not node-scoped: {uri}");
        assert_eq!(e["responseStatus"]["code"], 200, "{e}");
        assert!(
            e["annotations"]["authorization.k8s.io/reason"]
                .as_str()
                .is_some_and(|r| r.contains(r#"ClusterRole "podometer""#)),
            "allowed by the shipped ClusterRole: {e}"
        );
    }
    for verb in ["list", "watch"] {
        assert!(requests.iter().any(|e| e["verb"] == verb), "no {verb} in {requests:?}");
    }
    // The token grants nothing beyond the pods rule: RBAC answers as the agent.
    for (args, allowed) in [
        (vec!["list", "pods"], "yes"),
        (vec!["watch", "pods"], "yes"),
        (vec!["list", "secrets"], "no"),
        (vec!["list", "nodes"], "no"),
        (vec!["create", "pods"], "no"),
        (vec!["get", "configmaps", "-n", "podometer"], "no"),
    ] {
        let mut full = vec!["auth", "can-i", "--as", SA_USER];
        full.extend(&args);
        let out = node.kubectl(&full, None);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), allowed, "can-i {args:?}");
    }

    // ---- one verb less ------------------------------------------------------------------
    node.kubectl_ok(
        &[
            "patch",
            "clusterrole",
            "podometer",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/rules/0/verbs", "value": ["get", "watch"]}]"#,
        ],
        None,
    );
    node.kubectl_ok(&["-n", "podometer", "delete", "pod", &agent_name, "--wait=true"], None);
    let restarted = k::poll(
        "the DaemonSet's new agent pod running",
        Duration::from_secs(60),
        || {
            k::pods(&node, "podometer", "app.kubernetes.io/name=podometer")
                .into_iter()
                .find(|p| p["metadata"]["name"] != agent_name.as_str() && !k::container_ids(p).is_empty())
        },
        || {
            // The pods' states and what the kubelet and the controller said, for a diagnosis.
            let pods = node.kubectl(&["-n", "podometer", "get", "pods", "-o", "wide"], None);
            let events =
                node.kubectl(&["-n", "podometer", "get", "events", "--sort-by=.lastTimestamp"], None);
            format!("{}\n{}", String::from_utf8_lossy(&pods.stdout), String::from_utf8_lossy(&events.stdout))
        },
    );
    let new_name = restarted["metadata"]["name"].as_str().unwrap().to_owned();
    let since = SystemTime::now();
    let forbidden = |log: &str| log.lines().filter(|l| l.contains("403 Forbidden")).count();
    k::poll(
        "the 403 line",
        Duration::from_secs(30),
        || (forbidden(&k::logs(&node, "podometer", &new_name)) > 0).then_some(()),
        || k::logs(&node, "podometer", &new_name),
    );
    // Exporting goes on, with ids only, once the initial sync timeout (10 s) has passed.
    let workload_id = containers[0].1.clone();
    k::poll(
        "points of the workload, with ids only, from the restarted agent",
        Duration::from_secs(40),
        || {
            sink.points_since(since)
                .iter()
                .any(|p| p.res("container.id") == Some(&workload_id) && p.res("k8s.pod.name").is_none())
                .then_some(())
        },
        || k::logs(&node, "podometer", &new_name),
    );
    // 30 s of the new agent's life: long enough for several retries, shorter than the log's
    // one-line-a-minute window.
    let window = Duration::from_secs(30);
    std::thread::sleep(window.saturating_sub(since.elapsed().unwrap_or_default()));
    let log = k::logs(&node, "podometer", &new_name);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("403 Forbidden")).collect();
    assert_eq!(lines.len(), 1, "one line for the 403 within the minute, not one per retry:\n{log}");
    let line = lines[0];
    for needle in [
        "ERROR",
        "refused to list pods",
        &format!("fieldSelector=spec.nodeName={node_name}"),
        "deploy/kubernetes/overlays/k8s-api",
        "get, list and watch",
        SA_USER,
        &format!("https://{}:{}", k::API_HOST, k::API_PORT),
    ] {
        assert!(line.contains(needle), "the 403 line lacks `{needle}`: {line}");
    }
    let refused: Vec<Json> = agent_requests(&node, &new_name);
    assert!(
        refused.iter().all(|e| e["verb"] == "list" && e["responseStatus"]["code"] == 403),
        "the new agent only lists, and is refused: {refused:?}"
    );
    // Backoff from 250 ms doubling: about 7 tries in 30 s; a retry loop without it makes
    // hundreds.
    assert!(
        (2..=10).contains(&refused.len()),
        "{} list requests in {window:?}: retried with backoff?",
        refused.len()
    );
    let status = get_pod_status(&node, &new_name);
    assert_eq!(status.0, "Running", "the agent keeps running");
    assert_eq!(status.1, "False", "not Ready: its metadata processor never synced");
    assert_eq!(status.2, 0, "no restart: /healthz stays up");
    eprintln!(
        "403: {} list requests in {window:?}, 1 log line; whole test {:?}",
        refused.len(),
        started.elapsed()
    );
}

/// (phase, Ready condition, restarts) of a pod.
fn get_pod_status(node: &KubeNode, name: &str) -> (String, String, i64) {
    let pod = node.get_json("podometer", &["pod", name]);
    let ready = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_owned();
    let restarts = pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(-1);
    (pod["status"]["phase"].as_str().unwrap_or("").to_owned(), ready, restarts)
}
