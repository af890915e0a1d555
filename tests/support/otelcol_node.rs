//! The Collector of `deploy/otelcol/builder.yaml` as a pod in the real node of
//! scripts/kube-node.sh: an image of the static binary (`FROM scratch`, built by Podman and
//! imported into the node) and the shipped Collector DaemonSet (`deploy/otelcol/
//! node-collector.yaml`) with the few changes this node and a test need, each named where it is
//! made.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

use super::kube_node::KubeNode;
use super::otelcol::binary;
use super::{have_command, prerequisite, run};

pub const COLLECTOR_IMAGE: &str = "podometer.test/otelcol:0.161.0";
/// The API server from a pod: the node's address (the service address does not route: the
/// node runs no kube-proxy).
pub const API_HOST: &str = "10.216.0.2";
pub const API_PORT: &str = "6443";

pub fn shipped_collector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/otelcol/node-collector.yaml")
}

pub fn podman_available() -> bool {
    prerequisite(have_command("podman"), "podman (builds the Collector's image)")
}

/// True when the binary is statically linked (`CGO_ENABLED=0`): it then runs in an image that
/// holds nothing else.
pub fn is_static(bin: &Path) -> bool {
    let out = run(Command::new("file").arg("-L").arg(bin));
    out.contains("statically linked")
}

/// Builds the image of the Collector binary (uid 10001, as the project's own images run) and
/// imports it into the node's containerd.
pub fn load_collector_image(node: &KubeNode) {
    let bin = binary();
    assert!(
        is_static(&bin),
        "{} is not statically linked (scripts/otelcol.sh builds with CGO_ENABLED=0)",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&bin, dir.path().join("otelcol")).expect("copy the Collector");
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\nCOPY otelcol /otelcol\nUSER 10001\nENTRYPOINT [\"/otelcol\"]\n",
    )
    .unwrap();
    run(Command::new("podman").args(["build", "-q", "-t", COLLECTOR_IMAGE]).arg(dir.path()));
    let archive = dir.path().join("otelcol.tar");
    run(Command::new("podman")
        .args(["save", "--quiet", "--format", "docker-archive", "-o"])
        .arg(&archive)
        .arg(COLLECTOR_IMAGE));
    node.load_image(&archive);
}

fn set_env(container: &mut Json, name: &str, value: &str) {
    let env = container["env"].as_array_mut().expect("env list");
    env.retain(|e| e["name"] != name);
    env.push(serde_json::json!({"name": name, "value": value}));
}

/// The shipped Collector manifests as a List to apply, with this test's changes only:
/// - the image: `COLLECTOR_IMAGE` (same components as the contrib image's that users run);
/// - the exporter: `file` into `out_dir` (a hostPath volume at /out) in place of `otlp_grpc`
///   to a backend; the pipeline is otherwise the shipped one;
/// - the API server at the node's address (`KUBERNETES_SERVICE_HOST`/`PORT`, which in-cluster
///   clients read).
pub fn collector_manifests(out_dir: &Path) -> Json {
    let text = std::fs::read_to_string(shipped_collector()).unwrap();
    let mut objects: Vec<Json> = serde_saphyr::from_multiple(&text).expect("node-collector.yaml is YAML");
    let mut changed = (false, false);
    for o in &mut objects {
        match o["kind"].as_str() {
            Some("ConfigMap") => {
                let config = o["data"]["otelcol.yaml"].as_str().expect("otelcol.yaml").to_owned();
                let exporter = "exporters:\n  otlp_grpc:\n    endpoint: ${env:BACKEND_OTLP_ENDPOINT}\n";
                let list = "exporters: [otlp_grpc]";
                assert_eq!(config.matches(exporter).count(), 1, "the exporter moved: {config}");
                assert_eq!(config.matches(list).count(), 1, "the pipeline's exporters moved: {config}");
                let config = config
                    .replace(exporter, "exporters:\n  file:\n    path: /out/collector.jsonl\n")
                    .replace(list, "exporters: [file]");
                o["data"]["otelcol.yaml"] = Json::String(config);
                changed.0 = true;
            }
            Some("DaemonSet") => {
                let spec = &mut o["spec"]["template"]["spec"];
                let c = &mut spec["containers"][0];
                c["image"] = COLLECTOR_IMAGE.into();
                c["imagePullPolicy"] = "Never".into();
                set_env(c, "KUBERNETES_SERVICE_HOST", API_HOST);
                set_env(c, "KUBERNETES_SERVICE_PORT", API_PORT);
                c["volumeMounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"name": "out", "mountPath": "/out"}));
                spec["volumes"].as_array_mut().unwrap().push(serde_json::json!({
                    "name": "out", "hostPath": {"path": out_dir.to_str().unwrap(), "type": "Directory"}
                }));
                changed.1 = true;
            }
            _ => {}
        }
    }
    assert_eq!(changed, (true, true), "node-collector.yaml has no ConfigMap or DaemonSet");
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
}
