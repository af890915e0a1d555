//! Workloads of every shape on the real node, in the namespace `workloads`, and what a test
//! learns about them from the API server (uids, container ids, owners, QoS) to compare with
//! what podometer exported.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::kube_node::{KubeNode, BUSYBOX_IMAGE};

pub const NS: &str = "workloads";

/// A Deployment (2 replicas of 2 containers, Burstable: requests without limits), a
/// StatefulSet (Guaranteed: limits equal requests; one container burns its CPU limit), a Job
/// and a bare pod (BestEffort), a hostNetwork pod and a container that exits after 20 s (the
/// kubelet restarts it, after 10 s, then 20 s, 40 s, …). It lives that long because the agent
/// finds new cgroups only on its discovery walks (`sources.cgroups.discovery_interval`, 10 s in
/// the shipped config), which come at the first sweep at least that long after the last one: up
/// to one interval more apart. A container that lives less than that may start and end between
/// two walks and never be measured (one of 6 s was missed about every other restart). The
/// Deployment's `httpd` serves a 64 KiB file; `client` starts later (it needs a web pod's
/// address: the node has no DNS and no kube-proxy).
pub fn manifests() -> String {
    let b = BUSYBOX_IMAGE;
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: httpd
          image: {b}
          command: ["sh", "-c", "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/blob bs=1024 count=64 2>/dev/null && exec httpd -f -p 8080 -h /tmp/www"]
          resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
        - name: sidecar
          image: {b}
          command: ["sleep", "3600"]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {NS}}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: burn
          image: {b}
          command: ["sh", "-c", "while :; do :; done"]
          resources:
            requests: {{cpu: 50m, memory: 16Mi}}
            limits: {{cpu: 50m, memory: 16Mi}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: batch, namespace: {NS}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 0
      containers:
        - name: work
          image: {b}
          command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostnet, namespace: {NS}}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: {b}
      command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher, namespace: {NS}}}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 0
  containers:
    - name: crash
      image: {b}
      command: ["sh", "-c", "sleep 20; exit 1"]
"#
    )
}

/// A BestEffort pod fetching the web pod's file every half second.
pub fn client(web_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: fetch
      image: {BUSYBOX_IMAGE}
      command: ["sh", "-c", "while :; do wget -q -O /dev/null http://{web_ip}:8080/blob; sleep 0.5; done"]
"#
    )
}

/// A CronJob every minute: its first Job starts at the next full minute, so a test that
/// creates it first has up to 60 s of other work to do before its pod exists.
pub fn cronjob() -> String {
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {{name: tick, namespace: {NS}}}
spec:
  schedule: "*/1 * * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      backoffLimit: 0
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 0
          containers:
            - name: tock
              image: {BUSYBOX_IMAGE}
              command: ["sleep", "3600"]
"#
    )
}

/// Applies the workloads and the client, and waits until every pod but `crasher` is Ready.
pub fn start(node: &KubeNode) {
    node.kubectl_ok(&["apply", "-f", "-"], Some(&manifests()));
    node.rollout(NS, "deployment/web", "120s");
    node.rollout(NS, "statefulset/db", "120s");
    node.wait(NS, "pod/hostnet", "condition=Ready", "120s");
    node.kubectl_ok(
        &["-n", NS, "wait", "--for=condition=Ready", "pod", "-l", "job-name=batch", "--timeout=120s"],
        None,
    );
    let web = pods(node).into_iter().find(|p| p.name.starts_with("web-")).expect("a web pod");
    node.kubectl_ok(&["apply", "-f", "-"], Some(&client(&web.ip)));
    node.wait(NS, "pod/client", "condition=Ready", "120s");
}

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub qos: String,
    pub host_network: bool,
    /// Controller owner: (kind, name).
    pub owner: Option<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<ContainerInfo>,
}

#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub name: String,
    /// Running container's id (without `containerd://`), when it runs.
    pub id: Option<String>,
    pub restarts: u64,
    /// The previous (terminated) container's id.
    pub last_id: Option<String>,
    /// How long the previous container ran, from its `startedAt` to its `finishedAt` (whole
    /// seconds, as the kubelet reports them).
    pub last_ran: Option<Duration>,
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn strip_runtime(id: &Value) -> Option<String> {
    id.as_str().and_then(|i| i.split_once("://")).map(|(_, id)| id.to_owned())
}

/// `finishedAt - startedAt` of a terminated container state.
fn ran(terminated: &Value) -> Option<Duration> {
    let at = |key: &str| humantime::parse_rfc3339(terminated[key].as_str()?).ok();
    at("finishedAt")?.duration_since(at("startedAt")?).ok()
}

pub fn pod_info(p: &Value) -> PodInfo {
    let owner = p["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
        .map(|r| (s(&r["kind"]), s(&r["name"])));
    let containers = p["status"]["containerStatuses"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| ContainerInfo {
                    name: s(&c["name"]),
                    id: c["state"]["running"].is_object().then(|| strip_runtime(&c["containerID"])).flatten(),
                    restarts: c["restartCount"].as_u64().unwrap_or(0),
                    last_id: strip_runtime(&c["lastState"]["terminated"]["containerID"]),
                    last_ran: ran(&c["lastState"]["terminated"]),
                })
                .collect()
        })
        .unwrap_or_default();
    PodInfo {
        name: s(&p["metadata"]["name"]),
        uid: s(&p["metadata"]["uid"]),
        ip: s(&p["status"]["podIP"]),
        qos: s(&p["status"]["qosClass"]),
        host_network: p["spec"]["hostNetwork"] == true,
        owner,
        labels: p["metadata"]["labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default(),
        containers,
    }
}

pub fn pods_in(node: &KubeNode, namespace: &str) -> Vec<PodInfo> {
    let list = node.get_json(namespace, &["pods"]);
    list["items"].as_array().expect("pod list").iter().map(pod_info).collect()
}

pub fn pods(node: &KubeNode) -> Vec<PodInfo> {
    pods_in(node, NS)
}
