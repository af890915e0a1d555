//! The least-privilege and consistency checks of the DaemonSet manifests, shared by the
//! kustomize tests (tests/kubernetes.rs) and the Helm chart's (tests/helm_chart.rs): every
//! object parsed with its `k8s-openapi` type, host paths only where the config reads, read-only
//! and recursively so, capabilities exactly as named, an API token and RBAC only with `k8s_api`,
//! `host.name` the node's name, and a config that passes `check-config`.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The objects of one rendering of the DaemonSet manifests.
pub struct Rendered {
    pub namespace: Namespace,
    pub service_account: ServiceAccount,
    pub role: Option<ClusterRole>,
    pub binding: Option<ClusterRoleBinding>,
    pub priority: PriorityClass,
    pub config_map: ConfigMap,
    pub daemon_set: DaemonSet,
}

pub fn kubectl_available() -> bool {
    super::prerequisite(super::have_command("kubectl"), "kubectl (1.32, with kustomize) on PATH")
}

/// `kubectl kustomize` of a directory of this repository: the rendered manifests' text.
pub fn kustomize(dir: &str) -> String {
    super::run(Command::new("kubectl").args(["kustomize", &format!("{ROOT}/{dir}")]))
}

impl Rendered {
    /// Every object of `text` (`what` names where it came from in messages), each parsed with
    /// its API type: only the kinds the manifests ship, at most one of each.
    pub fn parse(what: &str, text: &str) -> Rendered {
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(text).expect("rendered manifests are YAML");
        let known = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "PriorityClass",
            "ConfigMap",
            "DaemonSet",
        ];
        for d in &docs {
            assert!(known.contains(&d["kind"].as_str().unwrap_or("")), "{what}: unexpected object: {d}");
        }
        let pick = |kind: &str| -> Option<serde_json::Value> {
            let found: Vec<&serde_json::Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
            assert!(found.len() <= 1, "{what}: expected at most one {kind}, found {}", found.len());
            found.first().map(|v| (*v).clone())
        };
        let one = |kind: &str| pick(kind).unwrap_or_else(|| panic!("{what}: no {kind}"));
        fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
        }
        Rendered {
            namespace: typed(one("Namespace")),
            service_account: typed(one("ServiceAccount")),
            role: pick("ClusterRole").map(typed),
            binding: pick("ClusterRoleBinding").map(typed),
            priority: typed(one("PriorityClass")),
            config_map: typed(one("ConfigMap")),
            daemon_set: typed(one("DaemonSet")),
        }
    }
}

pub fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().unwrap()
}

pub fn capabilities(c: &Container) -> (Vec<String>, Vec<String>) {
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.clone()).unwrap_or_default();
    (caps.add.unwrap_or_default(), caps.drop.unwrap_or_default())
}

/// `${env:NAME}` references without a default: the variables the config cannot start without.
pub fn required_env(config: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = config;
    while let Some(i) = rest.find("${env:") {
        let tail = &rest[i + 6..];
        let end = tail.find('}').expect("closed reference");
        let reference = &tail[..end];
        if !reference.contains(":-") {
            names.insert(reference.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

pub fn check_daemon_set(r: &Rendered, expected_caps: &[&str], host_network: bool, token: bool) {
    let ns = r.namespace.metadata.name.as_deref().unwrap();
    let spec = pod_spec(&r.daemon_set);
    assert_eq!(r.daemon_set.metadata.namespace.as_deref(), Some(ns));
    assert_eq!(spec.host_pid, Some(true), "hostPID: cgroup.procs lists host pids");
    assert_eq!(spec.host_network.unwrap_or(false), host_network);
    assert_eq!(spec.service_account_name, r.service_account.metadata.name);
    assert_eq!(spec.priority_class_name, r.priority.metadata.name);
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "no toleration of every taint: {tolerations:?}"
    );
    assert_eq!(spec.containers.len(), 1);
    let c = &spec.containers[0];

    // Privilege: exactly the capabilities of docs/deploy.md, nothing else.
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let (add, drop) = capabilities(c);
    assert_eq!(drop, ["ALL"]);
    assert_eq!(add, expected_caps);

    // Every mount names a volume; the host root is read-only at /host.
    let volumes: Vec<&str> = spec.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
    let mounts = c.volume_mounts.as_ref().unwrap();
    for m in mounts {
        assert!(
            volumes.contains(&m.name.as_str()),
            "mount {} names no volume (volumes: {volumes:?})",
            m.name
        );
    }

    // An API token only where the config calls the API (the k8s-api overlay).
    assert_eq!(spec.automount_service_account_token, Some(token), "automountServiceAccountToken");

    // The config the agent is told to read is the ConfigMap's key, mounted where args say.
    let args = c.args.as_ref().expect("args");
    assert_eq!(args[..2], ["run", "-c"]);
    let config_path = Path::new(&args[2]);
    let config_mount = mounts.iter().find(|m| config_path.starts_with(&m.mount_path)).expect("config mount");
    let config_volume = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == config_mount.name).unwrap();
    assert_eq!(
        config_volume.config_map.as_ref().map(|c| c.name.as_str()),
        r.config_map.metadata.name.as_deref(),
        "the config volume names the generated ConfigMap"
    );
    let key = config_path.strip_prefix(&config_mount.mount_path).unwrap().to_str().unwrap();
    let config =
        r.config_map.data.as_ref().unwrap().get(key).unwrap_or_else(|| panic!("ConfigMap has no key {key}"));

    let parsed: serde_json::Value = serde_saphyr::from_str(config).expect("the config is YAML");
    check_host_paths(spec, c, &parsed);

    // Every variable the config needs is set, and with them it passes check-config.
    let env = c.env.as_ref().expect("env");
    // host.name is the node's name (the pod's own hostname is its pod name).
    let host_name = parsed["host_name"].as_str().expect("host_name set in the config");
    let variable = host_name
        .strip_prefix("${env:")
        .and_then(|v| v.strip_suffix('}'))
        .unwrap_or_else(|| panic!("host_name `{host_name}` is not one variable"));
    let from = env.iter().find(|e| e.name == variable).unwrap_or_else(|| panic!("{variable} not set"));
    let field = from.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("from the downward API");
    assert_eq!(field.field_path, "spec.nodeName", "host.name from {variable}");
    assert_eq!(token, pipeline_processors(&parsed).contains(&"k8s_api".to_owned()), "k8s_api iff a token");
    let set: BTreeSet<&str> = env.iter().map(|e| e.name.as_str()).collect();
    for name in required_env(config) {
        assert!(
            set.contains(name.as_str()),
            "the config reads ${{env:{name}}} but the DaemonSet does not set it"
        );
    }
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field =
        node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("podometer.yaml");
    std::fs::write(&file, config).unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_podometer"));
    check.args(["check-config", "-c"]).arg(&file);
    for e in env.iter().filter(|e| e.value_from.is_some()) {
        check.env(&e.name, "node-1");
    }
    for e in env.iter().filter_map(|e| e.value.as_ref().map(|v| (&e.name, v))) {
        check.env(e.0, e.1);
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "ConfigMap config fails check-config: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Probes hit the health endpoint the config opens.
    let health_port: i32 = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("endpoint: 0.0.0.0:"))
        .expect("the config opens the health endpoint on 0.0.0.0")
        .trim()
        .parse()
        .unwrap();
    let port =
        c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("health")).expect("health port");
    assert_eq!(port.container_port, health_port);
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("health".into())
        );
    }
    let resources = c.resources.as_ref().expect("resources");
    for what in ["cpu", "memory"] {
        assert!(resources.requests.as_ref().unwrap().contains_key(what), "no {what} request");
        assert!(resources.limits.as_ref().unwrap().contains_key(what), "no {what} limit");
    }
}

pub fn pipeline_processors(config: &serde_json::Value) -> Vec<String> {
    let pipelines = config["pipelines"].as_object().expect("pipelines");
    pipelines
        .values()
        .flat_map(|p| p["processors"].as_array().cloned().unwrap_or_default())
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

/// Host paths: never the host's root; only the trees the config reads, each mounted at `/host`
/// plus its host path, read-only, recursively read-only where the kubelet and runtime can,
/// without mount propagation (which recursive read-only rules out).
pub fn check_host_paths(spec: &PodSpec, c: &Container, config: &serde_json::Value) {
    let path = |v: &serde_json::Value, what: &str| -> String {
        v.as_str().unwrap_or_else(|| panic!("{what} not set in the config")).to_owned()
    };
    let cgroups = path(&config["sources"]["cgroups"]["root"], "cgroups.root");
    let proc_root = path(&config["sources"]["netns"]["proc_root"], "netns.proc_root");
    let files = &config["processors"]["runtime_files"];
    // What the runtime_files processor opens below its roots (the overlay driver's directory);
    // nothing without it.
    let bundles = if files.is_null() {
        Vec::new()
    } else {
        vec![
            format!("{}/io.containerd.runtime.v2.task", path(&files["containerd_state"], "containerd_state")),
            format!("{}/overlay-containers", path(&files["storage_root"], "storage_root")),
        ]
    };
    let read: Vec<String> =
        [cgroups.clone(), proc_root.clone()].into_iter().chain(bundles.iter().cloned()).collect();

    let volumes = spec.volumes.as_ref().unwrap();
    let mounts = c.volume_mounts.as_ref().unwrap();
    let mut host_mounts = Vec::new();
    for v in volumes {
        let Some(host) = &v.host_path else { continue };
        assert_ne!(host.path.trim_end_matches('/'), "", "the host's root is mounted ({})", v.name);
        let on: Vec<_> = mounts.iter().filter(|m| m.name == v.name).collect();
        assert_eq!(on.len(), 1, "host path {} mounted {} times", host.path, on.len());
        let m = on[0];
        assert_eq!(m.mount_path, format!("/host{}", host.path), "{} not at /host plus its host path", v.name);
        assert_eq!(m.read_only, Some(true), "{} is writable", m.mount_path);
        assert!(
            matches!(m.recursive_read_only.as_deref(), Some("IfPossible" | "Enabled")),
            "{}: mounts below it stay writable without recursiveReadOnly",
            m.mount_path
        );
        assert!(
            m.mount_propagation.as_deref().unwrap_or("None") == "None",
            "{}: propagation rules out recursive read-only",
            m.mount_path
        );
        assert!(m.sub_path.is_none() && m.sub_path_expr.is_none());
        assert!(
            read.iter()
                .any(|r| Path::new(r).starts_with(&m.mount_path) || Path::new(&m.mount_path).starts_with(r)),
            "{} is mounted but the config reads nothing there (it reads {read:?})",
            m.mount_path
        );
        host_mounts.push(m.mount_path.clone());
    }
    // Everything the config reads is mounted, cgroups and proc as whole trees.
    for whole in [&cgroups, &proc_root] {
        assert!(host_mounts.contains(whole), "{whole} is not a mount of its own: {host_mounts:?}");
    }
    for r in &bundles {
        assert!(
            host_mounts.iter().any(|m| Path::new(r).starts_with(m)),
            "{r} (read by runtime_files) is not mounted: {host_mounts:?}"
        );
    }
}

/// RBAC for `k8s_api`: one rule, get/list/watch on pods, bound to the DaemonSet's account in the
/// DaemonSet's namespace.
pub fn check_rbac(r: &Rendered) {
    let role = r.role.as_ref().expect("a ClusterRole");
    let binding = r.binding.as_ref().expect("a ClusterRoleBinding");
    let rules = role.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
    assert_eq!(rule.verbs, ["get", "list", "watch"]);
    assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
    assert!(role.aggregation_rule.is_none());
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), r.service_account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, r.service_account.metadata.namespace, "bound in another namespace");
    assert_eq!(subjects[0].namespace, r.daemon_set.metadata.namespace);
    assert_eq!(subjects[0].namespace, r.namespace.metadata.name);
}
