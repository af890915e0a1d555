//! The container image (built by scripts/image.sh, which scripts/test.sh runs first): its
//! shape (size, no shell, non-root, OCI labels), the view it picks with no flags, name
//! resolution in the static binary, and the DaemonSet's pod run as closely as Podman allows
//! beside a Podman pod, compared with the agent run directly on the host.
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use support::podman::{podman, podman_available, PodmanPod};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn image() -> String {
    format!("localhost/podometer:{}", env!("CARGO_PKG_VERSION"))
}

fn image_available() -> bool {
    podman_available()
        && support::prerequisite(
            podman().args(["image", "exists", &image()]).status().map(|s| s.success()).unwrap_or(false),
            "the podometer image (scripts/image.sh builds it)",
        )
}

/// `podman run --rm` of the image with these options, then these agent arguments.
fn run_image(options: &[&str], args: &[&str]) -> std::process::Output {
    let mut cmd = podman();
    cmd.args(["run", "--rm"]).args(options).arg(image()).args(args);
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

#[test]
fn image_is_small_shell_less_non_root_and_labelled() {
    if !image_available() {
        return;
    }
    let inspect = support::run(podman().args(["image", "inspect", &image()]));
    let v: Json = serde_json::from_str(&inspect).unwrap();
    let img = &v[0];
    let size = img["Size"].as_u64().unwrap();
    eprintln!("image size: {} KiB", size / 1024);
    assert!(size <= 20 * 1024 * 1024, "image is {size} bytes, over 20 MiB");
    assert_eq!(img["Config"]["User"], "65532:65532");
    assert_eq!(img["Config"]["Entrypoint"], serde_json::json!(["/usr/bin/podometer"]));
    let labels = &img["Config"]["Labels"];
    for key in ["title", "version", "revision", "created", "licenses", "source", "description"] {
        let value = labels[format!("org.opencontainers.image.{key}")].as_str().unwrap_or("");
        assert!(!value.is_empty(), "OCI label {key} missing: {labels}");
    }
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    // No shell: running one fails.
    let sh = run_image(&["--entrypoint", "/bin/sh"], &["-c", "true"]);
    assert!(!sh.status.success(), "the image has a shell");
    // The binary answers and is the version of this tree.
    let version = run_image(&[], &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("podometer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn without_host_root_it_takes_the_sidecar_view_and_says_why() {
    if !image_available() {
        return;
    }
    let out = run_image(&["-e", "K8S_POD_UID=uid-1", "-e", "K8S_POD_NAME=web-1"], &["collect"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("view=\"sidecar\""), "{stderr}");
    assert!(stderr.contains("this container's own cgroup"), "{stderr}");
    let json: Json = serde_json::from_slice(&out.stdout).expect("one OTLP/JSON line");
    let text = json.to_string();
    assert!(text.contains("container.processes.cpu.time"), "{text}");
    assert!(text.contains("k8s.pod.network.io"), "{text}");
    // Its own container's cgroup, mounted by Podman at /sys/fs/cgroup.
    assert!(text.contains("\"container.cpu.time\""), "own cgroup not read: {stderr}");
    assert!(text.contains("\"web-1\""), "k8s.pod.name from the downward API variable missing: {text}");
}

/// The OTLP exporter resolves the collector's name through getaddrinfo of the static glibc:
/// with `--add-host` the name is in the container's /etc/hosts, and a plain TCP listener on
/// the host sees the HTTP request arrive.
#[test]
fn static_binary_resolves_the_collector_by_name() {
    if !image_available() {
        return;
    }
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = support::unique("collector").replace('-', "");
    let endpoint = format!("http://{name}.test:{port}/v1/metrics");
    let container = support::unique("podometer-dns");
    let _cleanup = RmOnDrop(container.clone());
    let status = podman()
        .args([
            "run",
            "-d",
            "--name",
            &container,
            "--network=host",
            "--add-host",
            &format!("{name}.test:127.0.0.1"),
        ])
        .args(["-e", "PODOMETER_VIEW=sidecar", "-e", "PODOMETER_INTERVAL=200ms"])
        .args([
            "-e",
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
            "-e",
            &format!("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT={endpoint}"),
        ])
        .args(["-e", "PODOMETER_HEALTH_ENDPOINT=127.0.0.1:0"])
        .arg(image())
        .arg("run")
        .status()
        .unwrap();
    assert!(status.success());
    listener.set_nonblocking(false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let request = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        let logs = podman().args(["logs", &container]).output().unwrap();
        panic!("no connection from the agent in 30 s; logs:\n{}", String::from_utf8_lossy(&logs.stderr))
    });
    assert!(request.starts_with("POST /v1/metrics "), "{request}");
}

struct RmOnDrop(String);
impl Drop for RmOnDrop {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.0]).output();
    }
}

/// The resource attributes of a container in one `collect` output.
fn resource_attributes(json: &Json, id: &str) -> Option<std::collections::BTreeMap<String, Json>> {
    json["resourceMetrics"].as_array()?.iter().find_map(|rm| {
        let attributes = rm["resource"]["attributes"].as_array()?;
        attributes.iter().any(|kv| kv["key"] == "container.id" && kv["value"]["stringValue"] == id).then(
            || {
                attributes
                    .iter()
                    .map(|kv| (kv["key"].as_str().unwrap().to_owned(), kv["value"].clone()))
                    .collect()
            },
        )
    })
}

/// The DaemonSet's host paths as `podman run -v` flags (`host:container:ro`), rendered by
/// `kubectl kustomize`; a `DirectoryOrCreate` path this host does not have is left out (the
/// kubelet would create it empty).
fn daemonset_host_mounts() -> Vec<String> {
    let text =
        support::run(Command::new("kubectl").args(["kustomize", &format!("{ROOT}/deploy/kubernetes")]));
    let docs: Vec<Json> = serde_saphyr::from_multiple(&text).expect("kustomize output is YAML");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("the DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let mut flags = Vec::new();
    for v in spec["volumes"].as_array().unwrap() {
        let Some(host) = v["hostPath"]["path"].as_str() else { continue };
        if v["hostPath"]["type"] == "DirectoryOrCreate" && !std::path::Path::new(host).exists() {
            continue;
        }
        for m in spec["containers"][0]["volumeMounts"].as_array().unwrap() {
            if m["name"] == v["name"] {
                assert_eq!(m["readOnly"], true, "{m}");
                flags.push(format!("-v={host}:{}:ro", m["mountPath"].as_str().unwrap()));
            }
        }
    }
    assert!(!flags.is_empty(), "the DaemonSet mounts no host path");
    flags
}

/// (cpu seconds user+system, receive bytes on eth0) of a container in one `collect` output.
fn numbers(json: &Json, id: &str) -> Option<(f64, Option<u64>)> {
    let rm = json["resourceMetrics"].as_array()?.iter().find(|rm| {
        rm["resource"]["attributes"]
            .as_array()
            .map(|a| a.iter().any(|kv| kv["key"] == "container.id" && kv["value"]["stringValue"] == id))
            .unwrap_or(false)
    })?;
    let mut cpu = 0.0;
    let mut rx = None;
    for m in rm["scopeMetrics"][0]["metrics"].as_array()? {
        let points = m["sum"]["dataPoints"].as_array().cloned().unwrap_or_default();
        let attr = |p: &Json, k: &str| {
            p["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|kv| kv["key"] == k).map(|kv| kv["value"]["stringValue"].clone()))
        };
        match m["name"].as_str()? {
            "container.cpu.time" => {
                cpu += points.iter().map(|p| p["asDouble"].as_f64().unwrap_or(0.0)).sum::<f64>()
            }
            "container.network.io" => {
                for p in &points {
                    if attr(p, "network.io.direction") == Some("receive".into())
                        && attr(p, "network.interface.name") == Some("eth0".into())
                    {
                        rx = p["asInt"].as_str().and_then(|s| s.parse().ok());
                    }
                }
            }
            _ => {}
        }
    }
    Some((cpu, rx))
}

fn host_collect(config: &std::path::Path) -> Json {
    let out = Command::new(env!("CARGO_BIN_EXE_podometer"))
        .args(["collect", "-c"])
        .arg(config)
        .env("NODE_NAME", "node-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The DaemonSet's pod as Podman runs it: the image, `--pid=host`, the DaemonSet's host paths
/// read-only where it mounts them, user 0 with every capability dropped but SYS_PTRACE,
/// read-only root filesystem, no privilege escalation, the ConfigMap's config, a hostname that
/// is not the node's. Compared with the agent on the host run just before and just after: the
/// same containers with the same resource attributes (names from the bundle files read through
/// the narrow mounts; `host.name` the node's name from NODE_NAME, not the pod's hostname), CPU
/// within the two host sweeps' bracket, and the pod's received bytes equal (the pod is quiet
/// while the three sweeps run).
#[test]
fn daemonset_pod_under_podman_matches_the_host_agent() {
    if !image_available()
        || !support::prerequisite(support::have_command("kubectl"), "kubectl (1.32, with kustomize) on PATH")
    {
        return;
    }
    let pod = PodmanPod::start(
        "podometer-ds",
        &["exec yes > /dev/null", "while true; do nc -l -p 8080 > /dev/null; done"],
    );
    let ip =
        support::run(podman().args(["inspect", &pod.infra_id, "--format", "{{.NetworkSettings.IPAddress}}"]));
    let ip = ip.trim().to_owned();
    assert!(!ip.is_empty(), "the pod has no IP on the podman bridge");
    support::netns::send_tcp(&ip, 8080, 100_000, Duration::from_secs(10));

    let config_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{ROOT}/deploy/kubernetes/base/agent.yaml"),
        config_dir.path().join("podometer.yaml"),
    )
    .unwrap();
    // The host agent reads the same config with the roots at / instead of /host.
    let host_config = config_dir.path().join("host.yaml");
    let text = std::fs::read_to_string(config_dir.path().join("podometer.yaml")).unwrap();
    std::fs::write(&host_config, text.replace("/host/", "/")).unwrap();
    let mounts = daemonset_host_mounts();

    let before = host_collect(&host_config);
    let mount = format!("{}:/etc/podometer:ro", config_dir.path().display());
    let mut options: Vec<String> = [
        "--pid=host",
        "--user=0",
        "--cap-drop=ALL",
        "--cap-add=SYS_PTRACE",
        "--read-only",
        "--security-opt=no-new-privileges",
        "--hostname=podometer-ds-pod",
        "-e=NODE_NAME=node-1",
    ]
    .map(str::to_owned)
    .to_vec();
    options.extend(mounts);
    options.push(format!("-v={mount}"));
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let out = run_image(&options, &["collect", "-c", "/etc/podometer/podometer.yaml"]);
    let after = host_collect(&host_config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let inside: Json = serde_json::from_slice(&out.stdout).unwrap();

    for id in pod.all_ids() {
        let (c0, r0) = numbers(&before, &id).unwrap_or_else(|| panic!("host agent misses {id}"));
        let (c1, r1) =
            numbers(&inside, &id).unwrap_or_else(|| panic!("containerized agent misses {id}:\n{stderr}"));
        let (c2, r2) = numbers(&after, &id).unwrap();
        eprintln!("{}: cpu {c0:.3} <= {c1:.3} <= {c2:.3} s; eth0 rx {r0:?} {r1:?} {r2:?}", &id[..12]);
        assert!(c0 <= c1 + 1e-9 && c1 <= c2 + 1e-9, "cpu of {id} outside the host bracket: {c0} {c1} {c2}");
        assert_eq!(r0.is_some(), r1.is_some(), "network series of {id} differ");
        let attributes = resource_attributes(&inside, &id).unwrap();
        assert_eq!(
            attributes.get("host.name"),
            Some(&serde_json::json!({"stringValue": "node-1"})),
            "host.name of {id} is not the node's name"
        );
        assert_eq!(
            resource_attributes(&before, &id).as_ref(),
            Some(&attributes),
            "resource attributes of {id}"
        );
        assert!(attributes.contains_key("container.name"), "no name read through the mounts: {attributes:?}");
        if let (Some(r0), Some(r1), Some(r2)) = (r0, r1, r2) {
            assert!(r0 <= r1 && r1 <= r2, "rx of {id} outside the bracket: {r0} {r1} {r2}");
            assert!(r1 >= 100_000, "the pod received 100000 bytes, the agent says {r1}");
        }
    }
    // The pod's network series is on one container (the infra, which owns the namespace).
    let with_net = pod.all_ids().iter().filter(|id| numbers(&inside, id).and_then(|n| n.1).is_some()).count();
    assert_eq!(with_net, 1);
}
