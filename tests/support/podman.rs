//! Real Podman pods for live tests (see scripts/testbed.sh for the images and config).

use std::process::Command;

use super::{have_command, prerequisite, run, unique};

/// `podman` with the project's containers.conf (runc, no default ulimits, local pause image).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/containers.conf");
        cmd.env("CONTAINERS_CONF", conf);
    }
    cmd
}

pub fn podman_available() -> bool {
    prerequisite(super::is_root(), "root")
        && prerequisite(have_command("podman"), "podman (apt-get install podman runc)")
        && prerequisite(
            podman()
                .args(["image", "exists", "localhost/bb:1"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            "image localhost/bb:1 (scripts/testbed.sh builds it)",
        )
}

/// A pod with an infra container and app containers, removed with all its containers on drop.
pub struct PodmanPod {
    pub name: String,
    pub pod_id: String,
    pub infra_id: String,
    /// Full ids of the app containers, in the order given.
    pub app_ids: Vec<String>,
}

impl PodmanPod {
    /// Starts a pod whose app containers run the given shell scripts (busybox `sh -c`).
    pub fn start(prefix: &str, app_scripts: &[&str]) -> PodmanPod {
        let name = unique(prefix);
        let pod_id = run(podman().args(["pod", "create", "--name", &name])).trim().to_owned();
        // From here on, Drop cleans up even if starting a container fails.
        let mut pod = PodmanPod { name, pod_id, infra_id: String::new(), app_ids: Vec::new() };
        for (i, script) in app_scripts.iter().enumerate() {
            let cname = format!("{}-app{i}", pod.name);
            let id = run(podman().args([
                "run",
                "-d",
                "--pod",
                &pod.name,
                "--name",
                &cname,
                "localhost/bb:1",
                "sh",
                "-c",
                script,
            ]));
            pod.app_ids.push(id.trim().to_owned());
        }
        let inspect = run(podman().args(["pod", "inspect", &pod.name, "--format", "{{.InfraContainerID}}"]));
        pod.infra_id = inspect.trim().to_owned();
        pod
    }

    pub fn all_ids(&self) -> Vec<String> {
        let mut ids = vec![self.infra_id.clone()];
        ids.extend(self.app_ids.iter().cloned());
        ids
    }
}

impl Drop for PodmanPod {
    fn drop(&mut self) {
        remove_pod(&self.name);
    }
}

/// Removes a pod and its containers, then the pod's cgroup where Podman left it: Podman 4.3
/// with the cgroupfs manager on a hybrid host removes the containers' cgroups but leaves the
/// pod's own, empty, in the `systemd` and `unified` hierarchies (10 per test run here, 340
/// after a day of runs), and every later discovery walk covers them. `rmdir` removes only an
/// empty cgroup, so nothing live can go.
pub fn remove_pod(name: &str) {
    let id = podman().args(["pod", "inspect", name, "--format", "{{.Id}}"]).output().ok();
    let id = id.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let _ = podman().args(["pod", "rm", "-f", "-t", "0", name]).output();
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten();
        for dir in hierarchies.map(|h| h.path()).chain([std::path::PathBuf::from("/sys/fs/cgroup")]) {
            let _ = std::fs::remove_dir(dir.join("libpod_parent").join(&id));
        }
    }
}

/// One container as `podman stats` reports it: the reference for our numbers.
#[derive(Debug, Clone)]
pub struct PodmanStats {
    pub id: String,
    /// Cumulative CPU time, seconds.
    pub cpu_seconds: f64,
    pub mem_usage_bytes: u64,
    /// Bytes the container's network namespace received (its view).
    pub net_input_bytes: u64,
    /// Bytes the container's network namespace transmitted (its view).
    pub net_output_bytes: u64,
}

/// Reads `podman stats` for the given containers (full ids), one JSON object per container.
/// `--format json` prints rounded human strings in Podman 4.3 (`"mem_usage": "340kB / 25GB"`);
/// the template over `.ContainerStats` gives the exact counters. Before 4.4 podman swapped the
/// network directions (`NetInput` was eth0's transmit bytes, containers/podman#16618), so they
/// are put back in the container's view here.
pub fn podman_stats(ids: &[String]) -> Vec<PodmanStats> {
    let mut cmd = podman();
    cmd.args(["stats", "--no-stream", "--no-reset", "--format", "{{json .ContainerStats}}"]);
    cmd.args(ids);
    let text = run(&mut cmd);
    let swapped = podman_swaps_net_io();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let c: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("podman stats json: {e}: {line}"));
            let field = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("podman stats has no {k}: {line}"));
            let (input, output) = (field("NetInput"), field("NetOutput"));
            let (net_input_bytes, net_output_bytes) = if swapped { (output, input) } else { (input, output) };
            PodmanStats {
                id: c["ContainerID"].as_str().unwrap_or_default().to_owned(),
                cpu_seconds: field("CPUNano") as f64 / 1e9,
                mem_usage_bytes: field("MemUsage"),
                net_input_bytes,
                net_output_bytes,
            }
        })
        .collect()
}

fn podman_swaps_net_io() -> bool {
    let version = run(podman().args(["version", "--format", "{{.Client.Version}}"]));
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (4, 4)
}
