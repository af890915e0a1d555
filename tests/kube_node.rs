//! Live: a real one-node Kubernetes cluster from `scripts/kube-node.sh` (kube-apiserver,
//! kube-controller-manager, kube-scheduler and kubelet built from the `k8s.io/kubernetes` Go
//! module, etcd from Debian, the kubelet over a containerd of its own, all in a network
//! namespace the script makes). A pod of the locally built busybox image is scheduled, runs
//! under the kubelet's own cgroup root and answers `kubectl exec`.
//!
//! The first run on a machine builds the four binaries (about 17 minutes on 2 cores, cached
//! under /var/tmp/podometer-kube); later runs bring the node up in about 10 s.
mod support;

use support::kube_node::{kube_node_available, KubeNode, BUSYBOX_IMAGE};

#[test]
fn a_pod_runs_on_the_real_node() {
    if !kube_node_available() {
        return;
    }
    let node = KubeNode::up();
    let node_name = node.env["KUBE_NODE_NAME"].clone();
    let ready = node.kubectl_ok(
        &["get", "node", &node_name, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#],
        None,
    );
    assert_eq!(ready, "True", "node {node_name} not Ready");

    let pod = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "smoke", "namespace": "default"}},
  "spec": {{"containers": [{{"name": "smoke", "image": "{BUSYBOX_IMAGE}", "command": ["sleep", "3600"]}}]}}}}"#
    );
    node.kubectl_ok(&["apply", "-f", "-"], Some(&pod));
    let waited = node.kubectl(&["wait", "--for=condition=Ready", "pod/smoke", "--timeout=120s"], None);
    if !waited.status.success() {
        let describe = node.kubectl(&["describe", "pod", "smoke"], None);
        panic!(
            "pod smoke not Ready: {}\n{}",
            String::from_utf8_lossy(&waited.stderr),
            String::from_utf8_lossy(&describe.stdout)
        );
    }
    let placed =
        node.kubectl_ok(&["get", "pod", "smoke", "-o", "jsonpath={.status.phase} {.spec.nodeName}"], None);
    assert_eq!(placed, format!("Running {node_name}"));

    // Through the API server to the kubelet inside the node's namespace and into the container;
    // the container sits below the kubelet's own cgroup root, not the host's /kubepods.
    let cgroups = node.kubectl_ok(&["exec", "smoke", "--", "cat", "/proc/self/cgroup"], None);
    let memory = cgroups
        .lines()
        .find(|l| l.contains(":memory:"))
        .unwrap_or_else(|| panic!("no memory line: {cgroups}"));
    assert!(memory.contains(":/podometer-kube/kubepods/besteffort/pod"), "{memory}");

    // The audit log has the pod's creation, at Metadata level.
    let audit = std::fs::read_to_string(&node.env["KUBE_AUDIT_LOG"]).expect("audit log");
    assert!(
        audit.lines().any(|l| l.contains(r#""verb":"create""#)
            && l.contains(r#""resource":"pods""#)
            && l.contains(r#""name":"smoke""#)
            && l.contains(r#""level":"Metadata""#)),
        "no audit event for the pod's creation"
    );
}
