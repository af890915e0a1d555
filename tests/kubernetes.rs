//! The Kubernetes manifests: the kustomize base and its host-peers and k8s-api overlays rendered
//! by the real `kubectl kustomize`, every object parsed with its `k8s-openapi` type, and the
//! checks a typo would break (a mount naming no volume, an env var the config reads but nobody
//! sets, a config that fails `check-config`, RBAC beyond pods or in another namespace, a probe
//! on the wrong port), and least privilege: host paths only where the config reads, all
//! read-only and recursively so, no API token without the overlay that uses it, `host.name`
//! the node's name. The sidecar example is checked for what makes it a sidecar: no host
//! access, no privilege.
//! No API server can run here, so "applies" means "renders and parses into the API types".
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Rendered {
    namespace: Namespace,
    service_account: ServiceAccount,
    role: Option<ClusterRole>,
    binding: Option<ClusterRoleBinding>,
    priority: PriorityClass,
    config_map: ConfigMap,
    daemon_set: DaemonSet,
}

fn kubectl_available() -> bool {
    support::prerequisite(support::have_command("kubectl"), "kubectl (1.32, with kustomize) on PATH")
}

fn render(dir: &str) -> Rendered {
    let text = support::run(Command::new("kubectl").args(["kustomize", &format!("{ROOT}/{dir}")]));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("kustomize output is YAML");
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
        assert!(known.contains(&d["kind"].as_str().unwrap_or("")), "{dir}: unexpected object: {d}");
    }
    let pick = |kind: &str| -> Option<serde_json::Value> {
        let found: Vec<&serde_json::Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert!(found.len() <= 1, "{dir}: expected at most one {kind}, found {}", found.len());
        found.first().map(|v| (*v).clone())
    };
    let one = |kind: &str| pick(kind).unwrap_or_else(|| panic!("{dir}: no {kind}"));
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

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().unwrap()
}

fn capabilities(c: &Container) -> (Vec<String>, Vec<String>) {
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.clone()).unwrap_or_default();
    (caps.add.unwrap_or_default(), caps.drop.unwrap_or_default())
}

/// `${env:NAME}` references without a default: the variables the config cannot start without.
fn required_env(config: &str) -> BTreeSet<String> {
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

fn check_daemon_set(r: &Rendered, expected_caps: &[&str], host_network: bool, token: bool) {
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

fn pipeline_processors(config: &serde_json::Value) -> Vec<String> {
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
fn check_host_paths(spec: &PodSpec, c: &Container, config: &serde_json::Value) {
    let path = |v: &serde_json::Value, what: &str| -> String {
        v.as_str().unwrap_or_else(|| panic!("{what} not set in the config")).to_owned()
    };
    let cgroups = path(&config["sources"]["cgroups"]["root"], "cgroups.root");
    let proc_root = path(&config["sources"]["netns"]["proc_root"], "netns.proc_root");
    let files = &config["processors"]["runtime_files"];
    // What the runtime_files processor opens below its roots (the overlay driver's directory).
    let bundles = [
        format!("{}/io.containerd.runtime.v2.task", path(&files["containerd_state"], "containerd_state")),
        format!("{}/overlay-containers", path(&files["storage_root"], "storage_root")),
    ];
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

#[test]
fn base_renders_and_holds_together() {
    if !kubectl_available() {
        return;
    }
    let r = render("deploy/kubernetes");
    check_daemon_set(&r, &["SYS_PTRACE"], false, false);
    // No API access: the config reads files only.
    assert!(r.role.is_none() && r.binding.is_none(), "the base binds a role it never uses");
    assert_eq!(r.service_account.automount_service_account_token, Some(false));
    let value = r.priority.value.unwrap_or(0);
    assert!(value > 0 && value < 1_000_000_000, "below the system-*-critical classes");
}

#[test]
fn host_peers_overlay_adds_net_admin_and_host_network_only() {
    if !kubectl_available() {
        return;
    }
    let r = render("deploy/kubernetes/overlays/host-peers");
    check_daemon_set(&r, &["SYS_PTRACE", "NET_ADMIN"], true, false);
    assert!(r.role.is_none());
    // The capabilities are exactly the privilege table of docs/deploy.md.
    let readme = std::fs::read_to_string(format!("{ROOT}/docs/deploy.md")).unwrap();
    let table = readme.split("| capability |").nth(1).expect("the privilege table of docs/deploy.md");
    let listed: BTreeSet<&str> = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    assert_eq!(listed, BTreeSet::from(["CAP_SYS_PTRACE", "CAP_NET_ADMIN"]));
    assert_eq!(pod_spec(&r.daemon_set).dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
}

/// The overlay the 403 error names: RBAC limited to pods, bound to the DaemonSet's account in
/// the DaemonSet's namespace, the token mounted and `k8s_api` in the config.
#[test]
fn k8s_api_overlay_binds_pods_to_the_agents_account_in_its_namespace() {
    if !kubectl_available() {
        return;
    }
    let r = render(podometer::processors::metadata::k8s_api::RBAC_OVERLAY);
    check_daemon_set(&r, &["SYS_PTRACE"], false, true);
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

#[test]
fn sidecar_example_needs_no_node_access() {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/sidecar-example.yaml")).unwrap();
    let d: Deployment = serde_saphyr::from_str(&text).expect("a Deployment");
    let spec = d.spec.template.spec.unwrap();
    assert_eq!(spec.share_process_namespace, Some(true));
    assert!(
        !spec.host_pid.unwrap_or(false)
            && !spec.host_network.unwrap_or(false)
            && !spec.host_ipc.unwrap_or(false)
    );
    assert!(spec.volumes.unwrap_or_default().iter().all(|v| v.host_path.is_none()), "no hostPath");
    assert_eq!(spec.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    let sidecar = spec.containers.iter().find(|c| c.name == "podometer").expect("the sidecar");
    let (add, drop) = capabilities(sidecar);
    assert!(add.is_empty());
    assert_eq!(drop, ["ALL"]);
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(sc.privileged.is_none() || sc.privileged == Some(false));
    // The downward API variables the built-in sidecar config reads.
    let builtin = std::fs::read_to_string(format!("{ROOT}/config/sidecar.yaml")).unwrap();
    let env = sidecar.env.as_ref().unwrap();
    for (name, path) in [
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_POD_UID", "metadata.uid"),
        ("K8S_NAMESPACE_NAME", "metadata.namespace"),
        ("K8S_NODE_NAME", "spec.nodeName"),
    ] {
        assert!(builtin.contains(&format!("${{env:{name}")), "config/sidecar.yaml does not read {name}");
        let e = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} not set"));
        assert_eq!(e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, path);
    }
    // No flags: the image's built-in config serves it.
    assert_eq!(sidecar.args.as_deref(), Some(&["run".to_owned()][..]));
}
