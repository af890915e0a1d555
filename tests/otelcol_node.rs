//! Live: podometer into the Collector users run beside it, on the real one-node cluster of
//! scripts/kube-node.sh. The shipped podometer DaemonSet (deploy/kubernetes) runs with the
//! agent config of deploy/otelcol/podometer-to-node-collector.yaml and sends OTLP to the node's
//! own address (`status.hostIP`), where the shipped Collector DaemonSet
//! (deploy/otelcol/node-collector.yaml: hostNetwork, its own ServiceAccount with read access to
//! pods only) listens, with the k8sattributes processor configured as docs/collector.md's
//! recipe says and real access to the API server. Changes to the shipped files are the ones a
//! user makes (image, endpoint) and what this node needs, each named in the support code.
//!
//! The reference is podometer's own `file` exporter in the same pipeline (a hostPath volume):
//! every point it wrote must reach the Collector's `file` exporter once, with its value, value
//! type, timestamps, unit, kind and every attribute unchanged, and with exactly the attributes
//! the processor promises added to the Resources of pods, with the API server's values, and
//! nothing added to any other Resource.
//!
//! Needs the podometer image (scripts/image.sh), Podman (the Collector's image) and Go
//! (scripts/otelcol.sh builds the Collector on a machine's first run).
#[path = "support/kube_deploy.rs"]
mod deploy;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use deploy::{Overlay, AGENT_PATCH_HEAD};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use serde_json::Value;
use support::kube_node::{elapsed, kube_node_available, KubeNode, BUSYBOX_IMAGE};
use support::otelcol::{compare, otelcol_available, points, read_requests};
use support::otelcol_node::{collector_manifests, load_collector_image, podman_available};

const INTERVAL: &str = "2s";
/// The workloads' namespace.
const WORK: &str = "otelcol-work";
/// The shipped Collector's namespace and DaemonSet (deploy/otelcol/node-collector.yaml).
const COL_NS: &str = "otel-node";
const COL_DS: &str = "otel-node-collector";
/// The attributes the recipe's `extract` adds, from the API server.
const ADDED: [&str; 5] =
    ["k8s.deployment.name", "k8s.replicaset.name", "k8s.node.name", "k8s.pod.start_time", "app"];

fn available() -> bool {
    kube_node_available() && deploy::podometer_image_available() && otelcol_available() && podman_available()
}

/// A Deployment's pod (owned by a ReplicaSet, label `app`) and a bare pod with a label: what
/// the processor adds differs between them.
fn workloads() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {WORK}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {WORK}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 0
      automountServiceAccountToken: false
      containers:
        - name: main
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: {WORK}, labels: {{app: solo}}}}
spec:
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: ["sleep", "3600"]
"#
    )
}

/// The podometer DaemonSet: the shipped kustomization with podometer-to-node-collector.yaml as
/// its config (as that file's header says, HOST_IP from the downward API), the node's paths
/// and interval, and the test's reference: a `file` exporter in the same pipeline, writing to
/// a hostPath volume at /out.
fn podometer_overlay(out_dir: &Path) -> Overlay {
    let mut config = deploy::node_agent_config("../otelcol/podometer-to-node-collector.yaml", None);
    for (from, to) in [
        ("exporters:\n  otlp:\n", "exporters:\n  file:\n    path: /out/podometer.jsonl\n  otlp:\n"),
        ("exporters: [otlp]", "exporters: [otlp, file]"),
    ] {
        assert_eq!(config.matches(from).count(), 1, "{from:?} moved in podometer-to-node-collector.yaml");
        config = config.replace(from, to);
    }
    let test_patch = format!(
        r#"{AGENT_PATCH_HEAD}                env:
                  - name: HOST_IP
                    valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}
                volumeMounts:
                  - {{name: test-out, mountPath: /out}}
            volumes:
              - name: test-out
                hostPath: {{path: {}, type: Directory}}
"#,
        out_dir.display()
    );
    // The endpoint variable stays the base's: the config's endpoint wins over it.
    let body = format!(
        "{}{}{test_patch}{}",
        deploy::image_and_endpoint("http://otel-collector.observability.svc:4317"),
        deploy::node_patch(INTERVAL),
        deploy::CONFIG_GENERATOR
    );
    Overlay::new(".", &body, &[("podometer.yaml", &config)])
}

fn str_attr(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    })
}

fn string_value(s: &str) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(s.to_owned())) })
}

/// What the recipe's processor config adds to a pod's Resources, from the API server's objects:
/// the node, the pod's creation time (the processor's `k8s.pod.start_time` is
/// metadata.creationTimestamp), the owning ReplicaSet and its Deployment (from the API's owner
/// references, where the processor derives the name from the ReplicaSet's), and label `app`.
fn api_attributes(pod: &Value, replicasets: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("k8s.node.name".into(), pod["spec"]["nodeName"].as_str().unwrap().to_owned());
    out.insert(
        "k8s.pod.start_time".into(),
        pod["metadata"]["creationTimestamp"].as_str().unwrap().to_owned(),
    );
    if let Some(app) = pod["metadata"]["labels"]["app"].as_str() {
        out.insert("app".into(), app.to_owned());
    }
    let owner = |o: &Value, kind: &str| -> Option<(String, String)> {
        o["metadata"]["ownerReferences"]
            .as_array()?
            .iter()
            .find(|r| r["kind"] == kind)
            .map(|r| (r["name"].as_str().unwrap().to_owned(), r["uid"].as_str().unwrap().to_owned()))
    };
    if let Some((rs_name, rs_uid)) = owner(pod, "ReplicaSet") {
        out.insert("k8s.replicaset.name".into(), rs_name);
        let rs = replicasets
            .iter()
            .find(|r| r["metadata"]["uid"] == rs_uid.as_str())
            .expect("the pod's ReplicaSet in the API");
        if let Some((deployment, _)) = owner(rs, "Deployment") {
            out.insert("k8s.deployment.name".into(), deployment);
        }
    }
    out
}

/// podometer's requests as the Collector should write them: each pod Resource (one with
/// `k8s.pod.uid`) gets the API's attributes it does not have; the attributes podometer set
/// itself must already equal the API's (the processor leaves them as they are). Returns the
/// expected requests and the pod uids seen.
fn expected(
    sent: &[ExportMetricsServiceRequest],
    pods: &BTreeMap<String, Value>,
    replicasets: &[Value],
) -> (Vec<ExportMetricsServiceRequest>, BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    let mut out = sent.to_vec();
    for request in &mut out {
        for rm in &mut request.resource_metrics {
            let resource = rm.resource.as_mut().expect("a Resource");
            let Some(uid) = str_attr(&resource.attributes, "k8s.pod.uid") else {
                for key in ADDED {
                    assert!(
                        str_attr(&resource.attributes, key).is_none() || key == "k8s.node.name",
                        "podometer set {key} on a Resource without a pod: {:?}",
                        resource.attributes
                    );
                }
                continue;
            };
            let pod =
                pods.get(&uid).unwrap_or_else(|| panic!("podometer reported pod {uid}, unknown to the API"));
            for (key, path) in [("k8s.pod.name", "name"), ("k8s.namespace.name", "namespace")] {
                assert_eq!(
                    str_attr(&resource.attributes, key).as_deref(),
                    pod["metadata"][path].as_str(),
                    "podometer's {key} of pod {uid}"
                );
            }
            for (key, value) in api_attributes(pod, replicasets) {
                match str_attr(&resource.attributes, &key) {
                    Some(own) => {
                        assert_eq!(own, value, "podometer's own {key} of pod {uid} is not the API's")
                    }
                    None => resource.attributes.push(KeyValue {
                        key,
                        value: string_value(&value),
                        ..Default::default()
                    }),
                }
            }
            seen.insert(uid);
        }
    }
    (out, seen)
}

/// Deletes a DaemonSet and waits until its pods are gone (SIGTERM: each process flushes).
fn delete_daemonset(node: &KubeNode, namespace: &str, name: &str, selector: &str) {
    node.kubectl_ok(&["-n", namespace, "delete", "daemonset", name, "--wait=true", "--timeout=60s"], None);
    node.kubectl_ok(&["-n", namespace, "wait", "--for=delete", "pod", "-l", selector, "--timeout=60s"], None);
}

fn can_i(node: &KubeNode, verb: &str, resource: &str) -> bool {
    let sa = format!("--as=system:serviceaccount:{COL_NS}:{COL_DS}");
    let out = node.kubectl(&["auth", "can-i", verb, resource, "--all-namespaces", &sa], None);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn podometer_daemonset_into_a_node_collector_with_k8sattributes() {
    if !available() {
        return;
    }
    let start = Instant::now();
    let node = KubeNode::up();
    let node_name = node.env["KUBE_NODE_NAME"].clone();
    elapsed(start, "node up");
    deploy::load_podometer_image(&node);
    load_collector_image(&node);
    elapsed(start, "images loaded");

    let out = tempfile::tempdir().unwrap();
    // The Collector runs as uid 10001 and podometer as a root without CAP_DAC_OVERRIDE.
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sent_file = out.path().join("podometer.jsonl");
    let got_file = out.path().join("collector.jsonl");

    // Workloads before the Collector, the Collector before podometer: the order a node has
    // when the agents roll out onto running workloads.
    node.kubectl_ok(&["apply", "-f", "-"], Some(&workloads()));
    node.rollout(WORK, "deployment/web", "120s");
    node.wait(WORK, "pod/solo", "condition=Ready", "120s");
    elapsed(start, "workloads Ready");
    node.kubectl_ok(&["apply", "-f", "-"], Some(&collector_manifests(out.path()).to_string()));
    node.rollout(COL_NS, &format!("daemonset/{COL_DS}"), "120s");
    elapsed(start, "Collector Ready");

    // Least privilege: the account reads pods, nothing else the processor could watch.
    assert!(can_i(&node, "watch", "pods") && can_i(&node, "list", "pods"));
    for resource in ["namespaces", "nodes", "replicasets.apps", "secrets"] {
        assert!(!can_i(&node, "list", resource), "the Collector's account may list {resource}");
    }

    let overlay = podometer_overlay(out.path());
    node.kubectl_ok(&["apply", "-k", overlay.path()], None);
    node.rollout("podometer", "daemonset/podometer", "120s");
    elapsed(start, "podometer Ready");

    let all_pods = || -> BTreeMap<String, Value> {
        node.get_json("", &["pods", "--all-namespaces"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["metadata"]["uid"].as_str().unwrap().to_owned(), p.clone()))
            .collect()
    };
    let pods = all_pods();
    let by_ns =
        |ns: &str| -> Vec<&Value> { pods.values().filter(|p| p["metadata"]["namespace"] == ns).collect() };
    let [agent, collector] = [by_ns("podometer"), by_ns(COL_NS)].map(|v| {
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].clone()
    });
    assert_eq!(by_ns(WORK).len(), 2);
    // The Collector is on the node's address, which is what podometer's HOST_IP holds.
    assert_eq!(collector["status"]["podIP"], collector["status"]["hostIP"]);
    assert_ne!(agent["status"]["podIP"], agent["status"]["hostIP"], "podometer's pod is on the pod network");

    // Every pod of the node in podometer's own output, over five sweeps or more.
    let wait = Instant::now();
    let want: BTreeSet<String> = pods.keys().cloned().collect();
    loop {
        let sent = read_requests(&sent_file);
        let uids: BTreeSet<String> = sent
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .filter_map(|rm| str_attr(&rm.resource.as_ref()?.attributes, "k8s.pod.uid"))
            .collect();
        if sent.len() >= 5 && want.is_subset(&uids) {
            break;
        }
        assert!(
            wait.elapsed() < Duration::from_secs(90),
            "podometer's file: {} sweeps, pods {uids:?}, want {want:?}; podometer's log:\n{}",
            sent.len(),
            node.kubectl(&["-n", "podometer", "logs", "daemonset/podometer"], None).stdout.escape_ascii()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    elapsed(start, "every pod in podometer's output");

    let replicasets: Vec<Value> =
        node.get_json("", &["replicasets", "--all-namespaces"])["items"].as_array().unwrap().clone();
    let collector_log = node.kubectl_ok(&["-n", COL_NS, "logs", &format!("daemonset/{COL_DS}")], None);
    let agent_log = node.kubectl_ok(&["-n", "podometer", "logs", "daemonset/podometer"], None);

    // podometer first (its last sweep goes to the Collector), then the Collector (it drains
    // its pipeline into the file).
    delete_daemonset(&node, "podometer", "podometer", "app.kubernetes.io/name=podometer");
    delete_daemonset(&node, COL_NS, COL_DS, "app.kubernetes.io/name=otel-node-collector");
    elapsed(start, "both stopped");

    for line in collector_log.lines() {
        let l = line.to_lowercase();
        assert!(
            !l.contains("forbidden") && !l.contains("\"level\":\"error\"") && !l.contains("\terror\t"),
            "the Collector logged: {line}\n{collector_log}"
        );
    }
    assert!(collector_log.contains("Everything is ready"), "{collector_log}");
    // The one warning of the base DaemonSet (the host's network namespace, which needs
    // overlays/host-peers) aside, podometer's exporters said nothing: every batch was taken.
    for line in agent_log.lines() {
        let exporter_warning = line.contains("WARN") && line.contains("exporters");
        assert!(!line.contains("ERROR") && !exporter_warning, "podometer logged: {line}\n{agent_log}");
    }

    let sent = read_requests(&sent_file);
    // podometer's own metrics (self_telemetry: by default to the `otlp` exporter's endpoint,
    // through the SDK, not through the pipeline and so not in its `file`): through the
    // processor untouched, as their Resource names no pod.
    let (own, got): (Vec<_>, Vec<_>) =
        read_requests(&got_file).into_iter().flat_map(|r| r.resource_metrics).partition(|rm| {
            let kvs = &rm.resource.as_ref().unwrap().attributes;
            str_attr(kvs, "service.name").as_deref() == Some("podometer")
                && str_attr(kvs, "telemetry.sdk.name").is_some()
        });
    assert!(!own.is_empty(), "no self-telemetry of podometer's in the Collector's file");
    for rm in &own {
        let keys: BTreeSet<&str> =
            rm.resource.as_ref().unwrap().attributes.iter().map(|kv| kv.key.as_str()).collect();
        let want: BTreeSet<&str> = [
            "host.name",
            "k8s.node.name",
            "service.name",
            "service.version",
            "telemetry.sdk.language",
            "telemetry.sdk.name",
            "telemetry.sdk.version",
        ]
        .into();
        assert_eq!(keys, want, "podometer's own Resource in the Collector's file");
    }
    let got = vec![ExportMetricsServiceRequest { resource_metrics: got }];
    let (expected_requests, seen) = expected(&sent, &pods, &replicasets);
    assert_eq!(seen, want, "pods in podometer's output");
    let want_points = points(&expected_requests);
    let got_points = points(&got);
    let own_points = points(&[ExportMetricsServiceRequest { resource_metrics: own }]).len();
    let problems = compare(&want_points, &got_points, 20);
    assert!(
        problems.is_empty(),
        "{} points sent, {} in the Collector's file:\n{}",
        want_points.len(),
        got_points.len(),
        problems.join("\n")
    );

    // What the comparison covered, spelled out: the Deployment's pod has its ReplicaSet,
    // Deployment and label; the bare pod only its label; the DaemonSets' pods neither. (On this
    // node podometer's pipeline reports pods only; the Resource of no pod is its
    // self-telemetry's, checked above.)
    let web = pods.values().find(|p| p["metadata"]["labels"]["app"] == "web").unwrap();
    let solo = pods.values().find(|p| p["metadata"]["name"] == "solo").unwrap();
    let resource_of = |uid: &str| -> Vec<(String, String)> {
        let key = got_points
            .keys()
            .find(|k| k.0.contains(&("k8s.pod.uid".into(), format!("str:{uid}"))))
            .unwrap_or_else(|| panic!("no point of pod {uid} in the Collector's file"));
        key.0.clone()
    };
    let has = |res: &[(String, String)], k: &str, v: &str| res.contains(&(k.to_owned(), format!("str:{v}")));
    let web_res = resource_of(web["metadata"]["uid"].as_str().unwrap());
    let web_rs = web["metadata"]["ownerReferences"][0]["name"].as_str().unwrap();
    assert!(has(&web_res, "k8s.deployment.name", "web") && has(&web_res, "k8s.replicaset.name", web_rs));
    assert!(has(&web_res, "app", "web") && has(&web_res, "k8s.node.name", &node_name), "{web_res:?}");
    let solo_res = resource_of(solo["metadata"]["uid"].as_str().unwrap());
    assert!(has(&solo_res, "app", "solo") && !solo_res.iter().any(|(k, _)| k == "k8s.deployment.name"));
    for p in [&agent, &collector] {
        let res = resource_of(p["metadata"]["uid"].as_str().unwrap());
        assert!(!res.iter().any(|(k, _)| k == "k8s.replicaset.name" || k == "app"), "{res:?}");
        assert!(has(&res, "k8s.pod.start_time", p["metadata"]["creationTimestamp"].as_str().unwrap()));
    }
    for res in got_points.keys().map(|k| &k.0) {
        let n = res.iter().filter(|(k, _)| k == "k8s.node.name").count();
        assert!(n <= 1, "k8s.node.name {n} times: {res:?}");
    }
    eprintln!(
        "{} points in {} sweeps, {} pods; every one in the Collector's file once, as expected; \
         {own_points} points of podometer's self-telemetry",
        want_points.len(),
        sent.len(),
        seen.len()
    );

    node.kubectl_ok(&["delete", "namespace", WORK, "--wait=false"], None);
    elapsed(start, "done");
}
