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
        let _ = podman().args(["pod", "rm", "-f", "-t", "0", &self.name]).output();
    }
}

/// One container of `podman stats --no-stream --format json`, the reference for our numbers.
#[derive(Debug, Clone)]
pub struct PodmanStats {
    pub id: String,
    /// Cumulative CPU time, seconds.
    pub cpu_seconds: f64,
    pub mem_usage_bytes: u64,
    pub net_input_bytes: u64,
    pub net_output_bytes: u64,
}

/// Reads `podman stats` for the given containers (full ids).
///
/// Podman 4.3's `--format json` prints humanised strings (`"cpu_time": "997.89ms"`,
/// `"mem_usage": "466.9kB / 25.28GB"`) and 12-character ids, so the raw numbers are taken from
/// the stats struct through a Go template instead.
pub fn podman_stats(ids: &[String]) -> Vec<PodmanStats> {
    let mut cmd = podman();
    cmd.args([
        "stats",
        "--no-stream",
        "--no-reset",
        "--format",
        "{{.ContainerStats.ContainerID}} {{.ContainerStats.CPUNano}} {{.ContainerStats.MemUsage}} \
         {{.ContainerStats.NetInput}} {{.ContainerStats.NetOutput}}",
    ]);
    cmd.args(ids);
    let text = run(&mut cmd);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> u64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("podman stats field {i} is not a number: {line}"))
            };
            PodmanStats {
                id: f.first().map(|s| (*s).to_owned()).unwrap_or_default(),
                cpu_seconds: num(1) as f64 / 1e9,
                mem_usage_bytes: num(2),
                net_input_bytes: num(3),
                net_output_bytes: num(4),
            }
        })
        .collect()
}
