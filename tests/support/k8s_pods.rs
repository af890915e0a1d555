//! Realistic Pod objects, as a kubelet-managed node's API server holds them: managedFields,
//! probes, resources, env, volumes, conditions, statuses of init and regular containers. Built
//! from the JSON a real cluster returns and parsed into `k8s-openapi`'s `Pod` (so anything the
//! schema rejects fails here), for the stand-in API server and the cache benchmark.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// Who made the pod.
#[derive(Debug, Clone)]
pub enum Owner {
    /// Through a ReplicaSet `<name>-<hash>`.
    Deployment {
        name: String,
        hash: String,
    },
    StatefulSet(String),
    DaemonSet(String),
    /// Through a Job `<name>-<scheduled minute>`.
    CronJob {
        name: String,
        minute: u64,
    },
    Job(String),
    /// A static pod: its mirror is owned by the Node and carries the kubelet's UID.
    Static {
        node: String,
        hash: String,
    },
}

#[derive(Debug, Clone)]
pub struct TestContainer {
    pub name: String,
    pub image: String,
    /// 64 hex; `None` for one not started yet.
    pub id: Option<String>,
    pub restarts: i32,
}

#[derive(Debug, Clone)]
pub struct TestPod {
    pub name: String,
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    pub node: String,
    pub owner: Owner,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub init_containers: Vec<TestContainer>,
    pub containers: Vec<TestContainer>,
    /// `containerd`, `cri-o` or `docker`.
    pub runtime: String,
}

impl TestPod {
    /// The UID the kubelet (and the cgroup path) uses: a static pod's config hash.
    pub fn kubelet_uid(&self) -> &str {
        match &self.owner {
            Owner::Static { hash, .. } => hash,
            _ => &self.uid,
        }
    }
}

fn container_spec(c: &TestContainer, i: usize) -> Value {
    json!({
        "name": c.name,
        "image": c.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--port=8080", "--log-level=info", format!("--instance={i}")],
        "ports": [{"containerPort": 8080 + i, "name": "http", "protocol": "TCP"}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"divisor": "1", "resource": "limits.cpu"}}},
            {"name": "LOG_FORMAT", "value": "json"}
        ],
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                          "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1,
                          "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                           "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"mountPath": "/etc/app", "name": "config", "readOnly": true},
            {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access-7x2kq", "readOnly": true}
        ]
    })
}

fn container_status(c: &TestContainer, runtime: &str, init: bool) -> Value {
    let mut s = json!({
        "name": c.name,
        "image": format!("docker.io/library/{}", c.image.rsplit('/').next().unwrap()),
        "imageID": format!("docker.io/library/{}@sha256:{}", c.image.rsplit('/').next().unwrap().split(':').next().unwrap(), "4c2d9f0e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d"),
        "ready": !init,
        "restartCount": c.restarts,
        "started": !init,
        "state": if init {
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-11-27T08:01:02Z", "finishedAt": "2026-11-27T08:01:04Z"}})
        } else {
            json!({"running": {"startedAt": "2026-11-27T08:01:05Z"}})
        },
        "volumeMounts": [{"mountPath": "/etc/app", "name": "config", "readOnly": true, "recursiveReadOnly": "Disabled"}]
    });
    if let Some(id) = &c.id {
        s["containerID"] = json!(format!("{runtime}://{id}"));
    }
    s
}

/// The Pod the API server would return for `t`.
pub fn pod(t: &TestPod) -> Pod {
    let (owner_refs, generate_name): (Value, String) = match &t.owner {
        Owner::Deployment { name, hash } => (
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
                    "uid": "6a1f4c3e-2b7d-4e9a-8c5f-0d1e2f3a4b5c", "controller": true, "blockOwnerDeletion": true}]),
            format!("{name}-{hash}-"),
        ),
        Owner::StatefulSet(name) => (
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                    "uid": "7b2e5d4f-3c8e-4fab-9d6a-1e2f3a4b5c6d", "controller": true, "blockOwnerDeletion": true}]),
            format!("{name}-"),
        ),
        Owner::DaemonSet(name) => (
            json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name,
                    "uid": "8c3f6e5a-4d9f-4abc-8e7b-2f3a4b5c6d7e", "controller": true, "blockOwnerDeletion": true}]),
            format!("{name}-"),
        ),
        Owner::CronJob { name, minute } => (
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": format!("{name}-{minute}"),
                    "uid": "9d4a7f6b-5e0a-4bcd-9f8c-3a4b5c6d7e8f", "controller": true, "blockOwnerDeletion": true}]),
            format!("{name}-{minute}-"),
        ),
        Owner::Job(name) => (
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                    "uid": "ae5b8a7c-6f1b-4cde-8a9d-4b5c6d7e8f9a", "controller": true, "blockOwnerDeletion": true}]),
            format!("{name}-"),
        ),
        Owner::Static { node, .. } => (
            json!([{"apiVersion": "v1", "kind": "Node", "name": node,
                    "uid": "bf6c9b8d-7a2c-4def-9bae-5c6d7e8f9a0b", "controller": true}]),
            String::new(),
        ),
    };
    let mut labels: serde_json::Map<String, Value> =
        t.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut annotations: serde_json::Map<String, Value> =
        t.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    match &t.owner {
        Owner::Deployment { hash, .. } => {
            labels.insert("pod-template-hash".into(), json!(hash));
        }
        Owner::CronJob { name, minute } => {
            labels.insert("batch.kubernetes.io/job-name".into(), json!(format!("{name}-{minute}")));
            labels.insert(
                "batch.kubernetes.io/controller-uid".into(),
                json!("9d4a7f6b-5e0a-4bcd-9f8c-3a4b5c6d7e8f"),
            );
        }
        Owner::Job(name) => {
            labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
        }
        Owner::Static { hash, .. } => {
            annotations.insert("kubernetes.io/config.hash".into(), json!(hash));
            annotations.insert("kubernetes.io/config.mirror".into(), json!(hash));
            annotations.insert("kubernetes.io/config.seen".into(), json!("2026-11-27T08:00:00.000000000Z"));
            annotations.insert("kubernetes.io/config.source".into(), json!("file"));
        }
        _ => {}
    }
    annotations.insert(
        "kubectl.kubernetes.io/last-applied-configuration".into(),
        json!(format!("{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{}\"}}}}", t.name)),
    );
    let managed_fields = json!([
        {"apiVersion": "v1", "fieldsType": "FieldsV1", "manager": "kube-controller-manager", "operation": "Update",
         "time": "2026-11-27T08:01:00Z",
         "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}},
                      "f:ownerReferences": {".": {}, "k:{\"uid\":\"6a1f4c3e\"}": {}}},
                      "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:args": {}, "f:env": {".": {},
                      "k:{\"name\":\"POD_NAME\"}": {".": {}, "f:name": {}, "f:valueFrom": {".": {}, "f:fieldRef": {}}}},
                      "f:image": {}, "f:imagePullPolicy": {}, "f:livenessProbe": {".": {}, "f:httpGet": {".": {},
                      "f:path": {}, "f:port": {}, "f:scheme": {}}}, "f:name": {}, "f:ports": {}, "f:resources": {}}},
                      "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                      "f:terminationGracePeriodSeconds": {}, "f:volumes": {}}}},
        {"apiVersion": "v1", "fieldsType": "FieldsV1", "manager": "kubelet", "operation": "Update",
         "subresource": "status", "time": "2026-11-27T08:01:06Z",
         "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"ContainersReady\"}": {".": {},
                      "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
                      "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {},
                      "f:status": {}, "f:type": {}}}, "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {},
                      "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, "k:{\"ip\":\"10.244.1.23\"}": {".": {},
                      "f:ip": {}}}, "f:startTime": {}}}}
    ]);
    let containers: Vec<Value> = t.containers.iter().enumerate().map(|(i, c)| container_spec(c, i)).collect();
    let init: Vec<Value> = t.init_containers.iter().enumerate().map(|(i, c)| container_spec(c, i)).collect();
    let mut metadata = json!({
        "name": t.name,
        "namespace": t.namespace,
        "uid": t.uid,
        "resourceVersion": "1",
        "creationTimestamp": "2026-11-27T08:01:00Z",
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": owner_refs,
        "managedFields": managed_fields,
    });
    if !generate_name.is_empty() {
        metadata["generateName"] = json!(generate_name);
    }
    let value = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": containers,
            "initContainers": init,
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": true,
            "nodeName": t.node,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {"fsGroup": 2000, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "serviceAccount": "default",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": format!("{}-config", t.name), "defaultMode": 420}},
                {"name": "kube-api-access-7x2kq", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ]
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-11-27T08:01:02Z"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-27T08:01:04Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T08:01:06Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-27T08:01:06Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-27T08:01:00Z"}
            ],
            "hostIP": "192.0.2.10",
            "hostIPs": [{"ip": "192.0.2.10"}],
            "podIP": "10.244.1.23",
            "podIPs": [{"ip": "10.244.1.23"}],
            "qosClass": "Burstable",
            "startTime": "2026-11-27T08:01:00Z",
            "initContainerStatuses": t.init_containers.iter().map(|c| container_status(c, &t.runtime, true)).collect::<Vec<_>>(),
            "containerStatuses": t.containers.iter().map(|c| container_status(c, &t.runtime, false)).collect::<Vec<_>>()
        }
    });
    serde_json::from_value(value).expect("a realistic Pod parses as a k8s-openapi Pod")
}

/// A random 64-hex container id.
pub fn random_id() -> String {
    format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..))
}

/// A random pod UID.
pub fn random_uid() -> String {
    let h = format!("{:032x}", fastrand::u128(..));
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

pub fn container(name: &str, image: &str, restarts: i32) -> TestContainer {
    TestContainer { name: name.into(), image: image.into(), id: Some(random_id()), restarts }
}
