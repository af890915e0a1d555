//! The sidecar, for real: `podman kube play` of a pod derived from
//! deploy/kubernetes/sidecar-example.yaml (same pod and sidecar security settings, shared PID
//! namespace, no capability added, no host path but the test's output directory), with an app
//! container that burns CPU and receives a known number of bytes, and the podometer image as
//! the sidecar running the built-in sidecar sources and writing OTLP/JSON to a file the test
//! reads. Its numbers are compared with the kernel's, read from the host:
//! - the pod's received bytes equal the pod's `eth0` counter in `/proc/<infra pid>/net/dev`,
//!   bracketed by host reads just before and after the sweep (equal when the pod is quiet);
//! - the app container's `container.processes.cpu.time` is within a tolerance of its cgroup's
//!   `cpuacct.usage`: each process's `utime`/`stime` is the kernel's exact runtime truncated to
//!   whole clock ticks, once for user and once for system, so the sum is low by less than two
//!   ticks per process that ever ran in the container (the shell, `dd`, and each `nc`, whose
//!   times reach the shell's `cutime` when it waits for them), plus one tick of slack.
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostPathVolumeSource, Pod, PodSecurityContext, SecurityContext, Volume, VolumeMount,
};
use serde_json::Value as Json;
use support::podman::{podman, podman_available};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PAYLOAD: usize = 250_000;

struct PodGuard(String);
impl Drop for PodGuard {
    fn drop(&mut self) {
        support::podman::remove_pod(&self.0);
    }
}

fn image() -> String {
    format!("localhost/podometer:{}", env!("CARGO_PKG_VERSION"))
}

/// The pod: the example's template with the app swapped for a busybox script and the sidecar's
/// exporter pointed at a file in a host directory.
fn pod_from_example(name: &str, out_dir: &Path, pod_uid: &str) -> Pod {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/sidecar-example.yaml")).unwrap();
    let deployment: Deployment = serde_saphyr::from_str(&text).unwrap();
    let mut spec = deployment.spec.template.spec.unwrap();
    for c in &mut spec.containers {
        // Podman turns httpGet probes into curl inside the container; the image has no curl.
        c.liveness_probe = None;
        c.readiness_probe = None;
        match c.name.as_str() {
            "podometer" => {
                c.image = Some(image());
                c.args = Some(vec!["run".into(), "-c".into(), "/out/sidecar.yaml".into()]);
                // Literal values for the downward API fields (Podman fills only some of them).
                let env = c.env.get_or_insert_with(Vec::new);
                for e in env.iter_mut().filter(|e| e.value_from.is_some()) {
                    e.value = Some(match e.name.as_str() {
                        "K8S_POD_UID" => pod_uid.to_owned(),
                        "K8S_POD_NAME" => name.to_owned(),
                        "K8S_NAMESPACE_NAME" => "default".to_owned(),
                        _ => "node-1".to_owned(),
                    });
                    e.value_from = None;
                }
                env.retain(|e| !e.name.starts_with("OTEL_EXPORTER"));
                c.volume_mounts = Some(vec![VolumeMount {
                    name: "out".into(),
                    mount_path: "/out".into(),
                    ..Default::default()
                }]);
            }
            _ => {
                *c = Container {
                    name: "app".into(),
                    image: Some("localhost/bb:1".into()),
                    command: Some(vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "dd if=/dev/zero of=/dev/null bs=1 count=1500000 2>/dev/null; while true; do nc -l -p 8080 > /dev/null; done".into(),
                    ]),
                    // busybox's image user is root; the pod says runAsNonRoot.
                    security_context: Some(SecurityContext {
                        run_as_user: Some(65534),
                        allow_privilege_escalation: Some(false),
                        ..c.security_context.clone().unwrap_or_default()
                    }),
                    env: Some(vec![EnvVar { name: "PATH".into(), value: Some("/bin".into()), ..Default::default() }]),
                    ..Default::default()
                };
            }
        }
    }
    spec.volumes = Some(vec![Volume {
        name: "out".into(),
        host_path: Some(HostPathVolumeSource {
            path: out_dir.display().to_string(),
            type_: Some("Directory".into()),
        }),
        ..Default::default()
    }]);
    let _: &PodSecurityContext =
        spec.security_context.as_ref().expect("the example sets a pod securityContext");
    let mut pod = Pod { spec: Some(spec), ..Default::default() };
    pod.metadata.name = Some(name.to_owned());
    pod
}

fn inspect(id: &str, format: &str) -> String {
    support::run(podman().args(["inspect", id, "--format", format])).trim().to_owned()
}

/// eth0 receive bytes of the network namespace of `pid`, read on the host.
fn host_rx(pid: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("eth0:")).expect("eth0 in the pod");
    line.split_once(':').unwrap().1.split_whitespace().next().unwrap().parse().unwrap()
}

/// The v1 cpuacct cgroup of `pid`, read on the host: `cpuacct.usage` in seconds.
fn host_cgroup_cpu(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrl, path) = (p.next()?, p.next()?, p.next()?);
            ctrl.split(',').any(|c| c == "cpuacct").then(|| path.to_owned())
        })
        .expect("a cpuacct line");
    let usage = std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct{path}/cpuacct.usage")).unwrap();
    usage.trim().parse::<u64>().unwrap() as f64 / 1e9
}

/// From one exported line: (the app's process CPU seconds, its process count, the pod's eth0 rx).
fn sidecar_numbers(line: &str, app_id: &str, pod_uid: &str) -> (Option<f64>, Option<i64>, Option<u64>) {
    let v: Json = serde_json::from_str(line).expect("OTLP/JSON line");
    let has = |rm: &Json, k: &str, val: &str| {
        rm["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv["key"] == k && kv["value"]["stringValue"] == val)
    };
    let (mut cpu, mut count, mut rx) = (None, None, None);
    for rm in v["resourceMetrics"].as_array().unwrap() {
        let metrics = rm["scopeMetrics"][0]["metrics"].as_array().unwrap();
        if has(rm, "container.id", app_id) {
            for m in metrics {
                match m["name"].as_str().unwrap() {
                    "container.processes.cpu.time" => {
                        cpu = Some(
                            m["sum"]["dataPoints"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|p| p["asDouble"].as_f64().unwrap())
                                .sum(),
                        )
                    }
                    "container.processes.count" => {
                        count = m["gauge"]["dataPoints"][0]["asInt"].as_str().and_then(|s| s.parse().ok())
                    }
                    _ => {}
                }
            }
        }
        if has(rm, "k8s.pod.uid", pod_uid)
            && !rm["resource"]["attributes"].to_string().contains("container.id")
        {
            for m in metrics.iter().filter(|m| m["name"] == "k8s.pod.network.io") {
                for p in m["sum"]["dataPoints"].as_array().unwrap() {
                    let attrs = p["attributes"].to_string();
                    if attrs.contains("\"eth0\"") && attrs.contains("\"receive\"") {
                        rx = p["asInt"].as_str().and_then(|s| s.parse().ok());
                    }
                }
            }
        }
    }
    (cpu, count, rx)
}

/// `container.cpu.time` (user + system) of a container resource, from one exported line.
fn own_cgroup_cpu(line: &str, id: &str) -> Option<f64> {
    let v: Json = serde_json::from_str(line).unwrap();
    let rm = v["resourceMetrics"].as_array()?.iter().find(|rm| {
        rm["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv["key"] == "container.id" && kv["value"]["stringValue"] == id)
    })?;
    let m =
        rm["scopeMetrics"][0]["metrics"].as_array()?.iter().find(|m| m["name"] == "container.cpu.time")?;
    Some(m["sum"]["dataPoints"].as_array()?.iter().map(|p| p["asDouble"].as_f64().unwrap_or(0.0)).sum())
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn sidecar_in_a_podman_pod_matches_the_kernel() {
    if !podman_available()
        || !support::prerequisite(
            podman().args(["image", "exists", &image()]).status().map(|s| s.success()).unwrap_or(false),
            "the podometer image (scripts/image.sh builds it)",
        )
    {
        return;
    }
    let name = support::unique("podometer-sidecar");
    let pod_uid = format!("uid-{name}");
    let dir = tempfile::tempdir().unwrap();
    // The sidecar runs as uid 65532 and writes here.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let builtin = std::fs::read_to_string(format!("{ROOT}/config/sidecar.yaml")).unwrap();
    let config = builtin
        .replace("${env:PODOMETER_INTERVAL:-10s}", "500ms")
        .replace("otlp: {}", "file: {path: /out/metrics.jsonl}")
        .replace("exporters: [otlp]", "exporters: [file]");
    assert_ne!(config, builtin);
    std::fs::write(dir.path().join("sidecar.yaml"), &config).unwrap();
    let manifest = dir.path().join("pod.json");
    std::fs::write(
        &manifest,
        serde_json::to_string_pretty(&pod_from_example(&name, dir.path(), &pod_uid)).unwrap(),
    )
    .unwrap();

    let _guard = PodGuard(name.clone());
    support::run(podman().args(["kube", "play"]).arg(&manifest));
    let app = inspect(&format!("{name}-app"), "{{.Id}}");
    let app_pid = inspect(&app, "{{.State.Pid}}");
    let infra = inspect(&name, "{{.InfraContainerID}}");
    let infra_pid = inspect(&infra, "{{.State.Pid}}");
    let sidecar = format!("{name}-podometer");
    assert_eq!(
        inspect(&sidecar, "{{.Config.User}}"),
        "65532:65532",
        "the sidecar runs as the image's non-root user"
    );
    assert_eq!(inspect(&sidecar, "{{.HostConfig.CapAdd}}"), "[]");
    // kube play pods are on the `podman` network: the address is per network.
    let sidecar_id = inspect(&sidecar, "{{.Id}}");
    let sidecar_pid = inspect(&sidecar, "{{.State.Pid}}");
    let ip = inspect(&infra, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}");
    assert!(!ip.is_empty(), "the pod has no IP");

    // Let the burn finish (the cgroup's counter stops moving), then send the bytes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = host_cgroup_cpu(&app_pid);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = host_cgroup_cpu(&app_pid);
        if now - last < 0.005 && now > 0.05 {
            break;
        }
        assert!(Instant::now() < deadline, "the app's CPU burn did not end");
        last = now;
    }
    let rx_before_send = host_rx(&infra_pid);
    support::netns::send_tcp(&ip, 8080, PAYLOAD, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));

    let out = dir.path().join("metrics.jsonl");
    let mut checked = false;
    for _attempt in 0..5 {
        let (rx1, cpu1) = (host_rx(&infra_pid), host_cgroup_cpu(&app_pid));
        let sidecar_cpu1 = host_cgroup_cpu(&sidecar_pid);
        let seen = lines(&out).len();
        let wait = Instant::now() + Duration::from_secs(20);
        while lines(&out).len() <= seen {
            assert!(
                Instant::now() < wait,
                "the sidecar wrote nothing for 20 s; logs: {:?}",
                podman().args(["logs", &sidecar]).output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (rx2, cpu2) = (host_rx(&infra_pid), host_cgroup_cpu(&app_pid));
        let line = lines(&out).pop().unwrap();
        // The sidecar's own container: its cgroup numbers, read inside, between the host's reads.
        let own = own_cgroup_cpu(&line, &sidecar_id);
        let (own1, own2) = (sidecar_cpu1, host_cgroup_cpu(&sidecar_pid));
        eprintln!("sidecar's own cgroup cpu: host {own1:.4}..{own2:.4} s, inside {own:?}");
        let own = own.expect("container.cpu.time of the sidecar's own cgroup");
        assert!(own1 - 1e-6 <= own && own <= own2 + 1e-6, "own cgroup CPU {own} outside {own1}..{own2}");
        let (cpu, count, rx) = sidecar_numbers(&line, &app, &pod_uid);
        let (cpu, count, rx) =
            (cpu.expect("app CPU"), count.expect("app process count"), rx.expect("pod eth0 rx"));
        eprintln!("host rx {rx1}..{rx2}, sidecar {rx}; host cgroup cpu {cpu1:.3}..{cpu2:.3} s, sidecar {cpu:.3} s over {count} processes");
        assert!(rx1 <= rx && rx <= rx2, "pod rx {rx} outside the host's {rx1}..{rx2}");
        assert!(
            rx - rx_before_send >= PAYLOAD as u64,
            "the pod received {PAYLOAD} bytes; the sidecar saw {}",
            rx - rx_before_send
        );
        // sh + dd + two nc (the one that took the bytes, the one listening now): 4 processes.
        let tolerance = 2.0 * 0.01 * 4.0 + 0.01;
        assert!(
            cpu >= cpu1 - tolerance && cpu <= cpu2 + 1e-6,
            "app CPU {cpu} vs cgroup {cpu1}..{cpu2} (tolerance {tolerance})"
        );
        assert_eq!(count, 2, "sh and the listening nc");
        if rx1 == rx2 {
            assert_eq!(rx, rx1);
            checked = true;
            break;
        }
    }
    assert!(checked, "the pod never stayed quiet over a sweep; brackets were checked but not equality");
}
