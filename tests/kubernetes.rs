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

use k8s_openapi::api::apps::v1::Deployment;
use support::manifests::{
    capabilities, check_daemon_set, check_rbac, kubectl_available, kustomize, pod_spec, Rendered,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn render(dir: &str) -> Rendered {
    Rendered::parse(dir, &kustomize(dir))
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
    check_rbac(&r);
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
