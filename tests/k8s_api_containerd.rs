//! `k8s_api` on the same kind of pods as `runtime_files`: pods created through real
//! containerd's CRI (tests/support/containerd.rs, cri.rs), whose container ids the stand-in
//! API server's Pod statuses then name, as the kubelet would report them.
//!
//! Why a stand-in API server: no Kubernetes API server can run on these machines (see
//! tests/k8s_api.rs). Everything else is real: the runtime, its cgroups, the CNI network
//! namespace, and the agent's pipeline (cgroups → netns → k8s_api) built from YAML.
#[path = "support/k8s_pods.rs"]
mod k8s_pods;
#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::time::SystemTime;

use k8s_pods::{pod, Owner, TestContainer, TestPod};
use kube_api::KubeApi;
use podometer::model::ResourceId;
use podometer::pipeline::{build_pipelines, sweep_all};
use podometer::semconv;
use support::containerd::{Containerd, BUSYBOX_IMAGE};
use support::str_attr;

#[test]
fn pods_created_through_the_cri_get_their_api_names_and_owners_on_every_resource() {
    if !(support::containerd::containerd_available() && support::netns::netns_available()) {
        return;
    }
    let node = Containerd::start();
    let uid = support::cri::kubelet_pod_uid('9');
    let seq: u64 = uid.rsplit('-').next().and_then(|s| u64::from_str_radix(s, 16).ok()).unwrap_or(0);
    let name = format!("checkout-7d4b9c6f8-{:05}", seq % 100_000);
    let namespace = support::unique("shop");
    let cri_pod =
        node.run_pod(&name, &namespace, &uid, &[("app", "exec sleep 300"), ("sidecar", "exec sleep 300")]);

    // What the kubelet would report for this pod: the runtime's own container ids.
    let node_name = support::unique("node");
    let api = KubeApi::start();
    let containers: Vec<TestContainer> = cri_pod
        .containers
        .iter()
        .map(|(n, id)| TestContainer {
            name: n.clone(),
            image: BUSYBOX_IMAGE.to_owned(),
            id: Some(id.clone()),
            restarts: 0,
        })
        .collect();
    api.apply(&pod(&TestPod {
        name: name.clone(),
        namespace: namespace.clone(),
        uid: uid.clone(),
        node: node_name.clone(),
        owner: Owner::Deployment { name: "checkout".into(), hash: "7d4b9c6f8".into() },
        labels: vec![("app".into(), "checkout".into())],
        annotations: vec![],
        init_containers: vec![],
        containers,
        runtime: "containerd".into(),
    }));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube_api::write_kubeconfig(&kubeconfig, &api.url, "stand-in-token");
    // The only test in this binary: the process environment is its own.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    let kubelet_root = format!("{}/kubepods", node.cgroup_base);
    let yaml = format!(
        r#"
node_name: {node_name}
sources:
  cgroups: {{ discovery_interval: 0s, layouts: {{ kubelet: ["{kubelet_root}"] }} }}
  netns: {{}}
processors:
  k8s_api: {{ labels: [app] }}
exporters:
  file: {{ path: /dev/null }}
pipelines:
  node: {{ sources: [cgroups, netns], processors: [k8s_api], exporters: [file] }}
"#
    );
    let config = podometer::config::parse("test.yaml", &yaml, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
    let mut pipelines = build_pipelines(&config).expect("pipelines");
    for p in &pipelines {
        for readiness in p.wait_for_processors() {
            assert!(readiness.is_ready(), "k8s_api synced with the stand-in server");
        }
    }
    let sweep = sweep_all(&mut pipelines, SystemTime::now());

    for (container, id) in &cri_pod.containers {
        let r = ResourceId::Container(id.clone());
        assert!(sweep.resource(&r).is_some(), "container {container} ({id}) found by the cgroup source");
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_CONTAINER_NAME), Some(container.as_str()));
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_POD_NAME), Some(name.as_str()), "{container}");
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_NAMESPACE_NAME), Some(namespace.as_str()));
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_DEPLOYMENT_NAME), Some("checkout"), "{container}");
        assert_eq!(str_attr(&sweep, &r, semconv::K8S_REPLICASET_NAME), Some("checkout-7d4b9c6f8"));
        assert_eq!(str_attr(&sweep, &r, "k8s.pod.label.app"), Some("checkout"), "{container}");
    }
    // The sandbox is not in the API's statuses; its cgroup path names the pod, which does.
    let sandbox = ResourceId::Container(cri_pod.sandbox_id.clone());
    assert_eq!(str_attr(&sweep, &sandbox, semconv::K8S_POD_NAME), Some(name.as_str()), "the sandbox");
    assert_eq!(str_attr(&sweep, &sandbox, semconv::K8S_CONTAINER_NAME), None);
    let pod_resource = ResourceId::Pod(uid.clone());
    assert_eq!(str_attr(&sweep, &pod_resource, semconv::K8S_POD_NAME), Some(name.as_str()));
    assert_eq!(str_attr(&sweep, &pod_resource, semconv::K8S_DEPLOYMENT_NAME), Some("checkout"));
    let r = sweep.resource(&pod_resource).expect("pod resource");
    assert!(
        r.points.iter().any(|p| p.metric.name == "k8s.pod.network.io"),
        "the pod's network series are on the named pod resource: {r:#?}"
    );
    assert!(
        api.requests()
            .iter()
            .all(|q| q.query.get("fieldSelector") == Some(&format!("spec.nodeName={node_name}"))),
        "every request node-scoped: {:?}",
        api.requests()
    );
    drop(pipelines);
    drop(cri_pod);
}
