//! The Helm chart (deploy/helm/podometer) against the kustomize manifests it mirrors: `helm lint
//! --strict`, then for the base and each overlay `helm template` with the equivalent values
//! compared object by object with `kubectl kustomize` (both parsed; a difference names the
//! object and the field), the shared least-privilege checks of tests/kubernetes.rs on the
//! chart's output (also for value combinations kustomize has no overlay for), extraConfig's
//! merge, the schema rejecting an unknown value, and the ConfigMap's hash-suffixed name equal to
//! the one kustomize's generator gives the same config text.
//!
//! `helm` is built from its Go module by scripts/helm.sh on first use (cached outside the clone,
//! about 4-6 minutes cold on 2 busy cores).
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::manifests::{check_daemon_set, check_rbac, kubectl_available, kustomize, pod_spec, Rendered};

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
