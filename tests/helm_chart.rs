//! The Helm chart (deploy/helm/podometer) against the kustomize manifests it mirrors: `helm lint
//! --strict`, then for the base and each overlay `helm template` with the equivalent values
//! compared object by object with `kubectl kustomize` (both parsed; a difference names the
//! object and the field), the shared least-privilege checks of tests/kubernetes.rs on the
//! chart's output (also for value combinations kustomize has no overlay for), extraConfig's
//! merge, the schema rejecting an unknown value, and the ConfigMap's hash-suffixed name equal to
//! the one kustomize's generator gives the same config text.
//!
//! Live: the chart installed with `helm install` on the real one-node cluster of
//! scripts/kube-node.sh, the image loaded into its containerd: the DaemonSet's pod becomes Ready
//! through its real probes, reads the mounted host cgroup tree, and `helm uninstall` leaves no
//! object behind, the namespace included.
//!
//! `helm` is built from its Go module by scripts/helm.sh on first use (cached outside the clone,
//! about 4-6 minutes cold on 2 busy cores).
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::kube_node::{kube_node_available, KubeNode};
use support::manifests::{check_daemon_set, check_rbac, kubectl_available, kustomize, pod_spec, Rendered};
use support::podman::{podman, podman_available};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = "deploy/helm/podometer";

/// Labels Helm charts conventionally put on every object and kustomize cannot: which chart
/// (name-version) rendered it and that Helm manages it. They say nothing about what runs or
/// what it may do, so the comparison drops them (after checking the chart sets them).
const HELM_LABELS: [&str; 2] = ["helm.sh/chart", "app.kubernetes.io/managed-by"];

/// The base and each overlay with the chart values that mean the same.
const CASES: [(&str, &[&str]); 3] = [
    ("deploy/kubernetes", &[]),
    ("deploy/kubernetes/overlays/host-peers", &["hostPeers.enabled=true"]),
    ("deploy/kubernetes/overlays/k8s-api", &["metadata.k8sApi.enabled=true"]),
];

fn helm_available() -> bool {
    kubectl_available()
        && support::prerequisite(support::have_command("go"), "go (scripts/helm.sh builds helm)")
}

/// The helm binary scripts/helm.sh builds once (and finds afterwards), under its lock.
fn helm() -> PathBuf {
    static HELM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELM.get_or_init(|| {
        let out = support::run(Command::new("bash").arg(format!("{ROOT}/scripts/helm.sh")));
        let path = PathBuf::from(out.lines().last().expect("scripts/helm.sh printed the binary's path"));
        assert!(path.is_file(), "{} is not a file", path.display());
        path
    })
    .clone()
}

/// `helm template podometer CHART -n podometer --set …`; Err with helm's stderr when it fails.
fn template(sets: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "podometer", &format!("{ROOT}/{CHART}"), "--namespace", "podometer"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn template_ok(sets: &[&str]) -> String {
    template(sets).unwrap_or_else(|e| panic!("helm template {sets:?} failed: {e}"))
}

/// A generated ConfigMap's name without the hash suffix kustomize (and the chart) append.
fn strip_hash(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            base.to_owned()
        }
        _ => panic!("{name}: no 10-character hash suffix"),
    }
}

/// The objects of a rendering keyed by `Kind/name`, normalised for comparison: Helm's own
/// labels dropped (`helm` says they must be there), the ConfigMap's hash suffix cut from its
/// name and from the volume naming it (the hash is of the config's text, whose comments and key
/// order differ; the text is compared parsed), the config text parsed.
fn objects(text: &str, helm: bool) -> BTreeMap<String, Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).expect("rendered manifests are YAML");
    let mut out = BTreeMap::new();
    for mut d in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = d["kind"].as_str().expect("kind").to_owned();
        if let Some(labels) = d["metadata"]["labels"].as_object_mut() {
            for l in HELM_LABELS {
                assert_eq!(labels.remove(l).is_some(), helm, "{kind}: label {l}");
            }
        } else {
            assert!(!helm, "{kind}: the chart's object has no labels");
        }
        if kind == "ConfigMap" {
            let name = strip_hash(d["metadata"]["name"].as_str().unwrap());
            d["metadata"]["name"] = name.into();
            for v in d["data"].as_object_mut().expect("data").values_mut() {
                *v = serde_saphyr::from_str::<Value>(v.as_str().unwrap()).expect("config is YAML");
            }
        }
        if kind == "DaemonSet" {
            for v in d["spec"]["template"]["spec"]["volumes"].as_array_mut().expect("volumes") {
                if let Some(name) = v["configMap"]["name"].as_str() {
                    v["configMap"]["name"] = strip_hash(name).into();
                }
            }
        }
        let key = format!("{kind}/{}", d["metadata"]["name"].as_str().expect("name"));
        assert!(out.insert(key.clone(), d).is_none(), "{key} rendered twice");
    }
    out
}

/// Every difference between two values, as `path: kustomize … chart …`.
fn diff(path: &str, kustomize: &Value, chart: &Value, out: &mut Vec<String>) {
    match (kustomize, chart) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                diff(&format!("{path}.{k}"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if kustomize == chart => {}
        _ => out.push(format!("{path}: kustomize {kustomize}, chart {chart}")),
    }
}

fn compare(dir: &str, sets: &[&str]) -> Vec<String> {
    let want = objects(&kustomize(dir), false);
    let got = objects(&template_ok(sets), true);
    let mut problems = Vec::new();
    for key in want.keys().chain(got.keys().filter(|k| !want.contains_key(*k))) {
        match (want.get(key), got.get(key)) {
            (Some(w), Some(g)) => diff(key, w, g, &mut problems),
            (Some(_), None) => problems.push(format!("{key}: rendered by kustomize, not by the chart")),
            (None, _) => problems.push(format!("{key}: rendered by the chart, not by kustomize")),
        }
    }
    problems
}

#[test]
fn chart_lints_strictly_with_each_overlays_values() {
    if !helm_available() {
        return;
    }
    for (_, sets) in CASES {
        let mut cmd = Command::new(helm());
        cmd.args(["lint", "--strict", &format!("{ROOT}/{CHART}")]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "helm lint --strict {sets:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn chart_renders_what_kustomize_renders_for_the_base_and_each_overlay() {
    if !helm_available() {
        return;
    }
    for (dir, sets) in CASES {
        let problems = compare(dir, sets);
        assert!(problems.is_empty(), "{dir} vs the chart with {sets:?}:\n{}", problems.join("\n"));
    }
    // The comparison sees a difference: the base against the host-peers values.
    let problems = compare("deploy/kubernetes", &["hostPeers.enabled=true"]);
    assert!(
        problems.iter().any(|p| p.starts_with("DaemonSet/podometer.spec.template.spec.hostNetwork:")),
        "{problems:?}"
    );
}

/// The least-privilege checks of tests/kubernetes.rs, on the chart's output for each overlay's
/// values and for combinations kustomize has no overlay for.
#[test]
fn chart_output_passes_the_least_privilege_checks() {
    if !helm_available() {
        return;
    }
    let cases: [(&[&str], &[&str], bool, bool); 5] = [
        (&[], &["SYS_PTRACE"], false, false),
        (&["hostPeers.enabled=true"], &["SYS_PTRACE", "NET_ADMIN"], true, false),
        (&["metadata.k8sApi.enabled=true"], &["SYS_PTRACE"], false, true),
        (
            &["metadata.k8sApi.enabled=true", "hostPeers.enabled=true"],
            &["SYS_PTRACE", "NET_ADMIN"],
            true,
            true,
        ),
        // Without runtime_files no bundle directory is mounted (check_host_paths fails a mount
        // the config reads nothing from).
        (&["metadata.runtimeFiles.enabled=false"], &["SYS_PTRACE"], false, false),
    ];
    for (sets, caps, host_network, token) in cases {
        let r = Rendered::parse(&format!("chart {sets:?}"), &template_ok(sets));
        check_daemon_set(&r, caps, host_network, token);
        assert_eq!(r.service_account.automount_service_account_token, Some(false));
        if token {
            check_rbac(&r);
        } else {
            assert!(r.role.is_none() && r.binding.is_none(), "{sets:?}: a role nobody uses");
        }
    }
    let r = Rendered::parse("chart", &template_ok(&["metadata.runtimeFiles.enabled=false"]));
    let volumes = pod_spec(&r.daemon_set).volumes.clone().unwrap();
    let host: Vec<_> = volumes.iter().filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str())).collect();
    assert_eq!(host, ["/proc", "/sys/fs/cgroup"]);
}

/// extraConfig merges key by key (a `false` overrides too), and a changed config is a renamed
/// ConfigMap the DaemonSet's volume follows, so the DaemonSet rolls.
#[test]
fn extra_config_merges_and_renames_the_config_map() {
    if !helm_available() {
        return;
    }
    let plain = Rendered::parse("chart", &template_ok(&[]));
    let sets = ["extraConfig.interval=30s", "extraConfig.sources.netns.resolve_host_peer=false"];
    let merged = Rendered::parse("chart extraConfig", &template_ok(&sets));
    check_daemon_set(&merged, &["SYS_PTRACE"], false, false);
    let text = &merged.config_map.data.as_ref().unwrap()["podometer.yaml"];
    let config: Value = serde_saphyr::from_str(text).unwrap();
    assert_eq!(config["interval"], "30s");
    assert_eq!(config["sources"]["netns"]["resolve_host_peer"], false);
    assert_eq!(config["sources"]["netns"]["proc_root"], "/host/proc", "the rest of the map kept");
    assert_eq!(config["processors"]["runtime_files"]["containerd_state"], "/host/run/containerd");
    let name = |r: &Rendered| r.config_map.metadata.name.clone().unwrap();
    assert_ne!(name(&plain), name(&merged), "a changed config keeps its ConfigMap's name");
    let volume = |r: &Rendered| {
        pod_spec(&r.daemon_set)
            .volumes
            .clone()
            .unwrap()
            .into_iter()
            .find_map(|v| v.config_map.map(|c| c.name))
            .unwrap()
    };
    assert_eq!(volume(&merged), name(&merged));
    assert_eq!(volume(&plain), name(&plain));
}

/// The chart names its ConfigMap as kustomize's generator would for the same text: kustomize
/// itself, given the chart's config as a file, computes the name.
#[test]
fn config_map_name_is_kustomizes_for_the_same_text() {
    if !helm_available() {
        return;
    }
    for (_, sets) in CASES {
        let r = Rendered::parse("chart", &template_ok(sets));
        let text = &r.config_map.data.as_ref().unwrap()["podometer.yaml"];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("podometer.yaml"), text).unwrap();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            "configMapGenerator:\n  - name: podometer-config\n    files: [podometer.yaml]\n",
        )
        .unwrap();
        let out = support::run(Command::new("kubectl").arg("kustomize").arg(dir.path()));
        let generated: Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(generated["data"]["podometer.yaml"], text.as_str());
        assert_eq!(generated["metadata"]["name"].as_str(), r.config_map.metadata.name.as_deref(), "{sets:?}");
    }
}

/// values.schema.json: a misspelt value fails instead of being ignored.
#[test]
fn unknown_values_are_rejected() {
    if !helm_available() {
        return;
    }
    let err = template(&["hostPeer.enabled=true"]).expect_err("an unknown value renders");
    assert!(err.contains("hostPeer"), "{err}");
    let err = template(&["metadata.k8sapi.enabled=true"]).expect_err("an unknown value renders");
    assert!(err.contains("k8sapi"), "{err}");
}

fn image() -> String {
    format!("localhost/podometer:{}", env!("CARGO_PKG_VERSION"))
}

/// `helm` against the real node, with Helm's own cache, config and data in a temporary
/// directory (not in ~).
fn helm_on(node: &KubeNode, home: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(helm());
    cmd.env("KUBECONFIG", &node.env["KUBECONFIG"]);
    for (var, dir) in
        [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")]
    {
        cmd.env(var, home.join(dir));
    }
    cmd.args(args).output().expect("run helm")
}

/// Uninstalls the release when the test ends early (the node's `down` would remove it too).
struct Release<'a> {
    node: &'a KubeNode,
    home: &'a Path,
    installed: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.installed {
            let _ = helm_on(self.node, self.home, &["uninstall", "podometer", "--namespace", "podometer"]);
        }
    }
}

/// One HTTP/1.0 GET to a pod's address from the host (the node's routes send pod addresses
/// into its namespace): status line and body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn chart_installs_on_the_real_node_and_uninstalls_without_a_trace() {
    if !(kube_node_available() && helm_available() && podman_available()) {
        return;
    }
    let have_image = podman().args(["image", "exists", &image()]).status().is_ok_and(|s| s.success());
    if !support::prerequisite(have_image, "the podometer image (scripts/image.sh builds it)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("podometer.tar");
    support::run(podman().args(["save", "--format", "docker-archive", "-o"]).arg(&archive).arg(image()));

    let node = KubeNode::up();
    support::run(Command::new("bash").arg(support::kube_node::script()).arg("load-image").arg(&archive));
    // The node's containerd keeps its bundles under its own state directory: the agent reads
    // the real bundles of the node's pods there, and the chart creates no host directory.
    let state = support::kube_node::cache_dir().join("run/containerd/state");
    assert!(state.join("io.containerd.runtime.v2.task").is_dir(), "{}", state.display());
    let home = dir.path().join("helm");
    let mut release = Release { node: &node, home: &home, installed: true };
    let chart = format!("{ROOT}/{CHART}");
    let state_set = format!("metadata.runtimeFiles.containerdState={}", state.display());
    let out = helm_on(
        &node,
        &home,
        &[
            "install",
            "podometer",
            &chart,
            "--namespace",
            "podometer",
            "--create-namespace",
            "--set",
            &state_set,
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    if !out.status.success() {
        let pods = node.kubectl(&["describe", "pods", "-n", "podometer"], None);
        panic!(
            "helm install failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&pods.stdout)
        );
    }
    // Ready through its probes: the readiness probe is /readyz, which answers 200 once the first
    // sweep is done.
    let pods: Value = serde_json::from_str(&node.kubectl_ok(
        &["get", "pods", "-n", "podometer", "-l", "app.kubernetes.io/name=podometer", "-o", "json"],
        None,
    ))
    .unwrap();
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one agent on the one node");
    let pod = &items[0];
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "pod not Ready: {}", pod["status"]);
    assert_eq!(pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"], "/readyz");
    let pod_name = pod["metadata"]["name"].as_str().unwrap();
    let ip = pod["status"]["podIP"].as_str().expect("pod IP");
    let readyz = http_get(&format!("{ip}:13133"), "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 200") || readyz.starts_with("HTTP/1.0 200"), "{readyz}");
    // The mounted host cgroup tree is the one it reads. (It finds no containers there on this
    // test node: the kubelet's cgroup root is /podometer-kube, a layout the cgroups source does
    // not look for, so the node's pods are not measured here.)
    let logs = node.kubectl_ok(&["logs", "-n", "podometer", pod_name], None);
    assert!(logs.contains("Found the cgroup hierarchies. root=/host/sys/fs/cgroup"), "{logs}");
    assert!(logs.contains("First sweep done."), "{logs}");

    // Without --wait: the release record lives in the namespace the release deletes, so Helm
    // must purge it before the namespace controller does (with --wait it finds it gone and
    // reports "release: not found" though nothing is left).
    let out = helm_on(&node, &home, &["uninstall", "podometer", "--namespace", "podometer"]);
    assert!(out.status.success(), "helm uninstall: {}", String::from_utf8_lossy(&out.stderr));
    release.installed = false;
    support::wait_until(
        "the namespace to go",
        Duration::from_secs(120),
        || !node.kubectl(&["get", "namespace", "podometer"], None).status.success(),
        || node.kubectl_ok(&["get", "all", "-n", "podometer"], None),
    );
    let left = node.kubectl_ok(
        &[
            "get",
            "clusterrole,clusterrolebinding,priorityclass,daemonset,configmap,serviceaccount",
            "-A",
            "-l",
            "app.kubernetes.io/name=podometer",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(left.trim(), "", "left behind after uninstall");
    let releases = helm_on(&node, &home, &["list", "--all-namespaces", "--all", "-q"]);
    assert_eq!(String::from_utf8_lossy(&releases.stdout).trim(), "", "a release record is left");
    drop(release);
}
