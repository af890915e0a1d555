//! Starting and stopping a container engine daemon of our own — Debian's `dockerd` with its own
//! data root, exec root, pid file and socket, or `podman system service` on its own socket — for
//! the live tests (`tests/support/docker.rs`) and the node bench's engine peers
//! (`examples/bench_node/engines.rs`, which includes this file by path). Plain std and libc, no
//! test harness: each caller turns an `Err` into its own failure (a panic, an `anyhow` error).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// dockerd writes its key here when there is none; whoever started the daemon that wrote it
/// removes it again.
pub const DOCKER_KEY_JSON: &str = "/etc/docker/key.json";

/// The dockerd arguments of a daemon of our own under `dir`, listening on `socket`: no iptables,
/// no bridge (containers run with `--network none`), overlay2, and the cgroupfs driver, so its
/// containers sit at `/docker/<id>` in every hierarchy.
pub fn dockerd_args(cmd: &mut Command, dir: &Path, socket: &Path) {
    cmd.arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none"])
        .args(["--storage-driver=overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs"]);
}

/// Debian's `/usr/bin/docker` when installed (the machine image may have another client in
/// /usr/local/bin that speaks a newer API than dockerd 20.10), on `socket`.
pub fn docker_cli(socket: &Path) -> Command {
    let cli = if Path::new("/usr/bin/docker").exists() { "/usr/bin/docker" } else { "docker" };
    let mut cmd = Command::new(cli);
    cmd.arg("-H").arg(format!("unix://{}", socket.display()));
    cmd
}

/// Waits until something accepts connections on `socket`, or the daemon exits, or `limit`.
pub fn wait_for_socket(socket: &Path, child: &mut Child, what: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited before listening on {}: {status}", socket.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on {} in {limit:?}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// After our dockerd under `dir` has stopped: the containerd it started (if it outlived
/// dockerd, by the pid dockerd recorded), the mounts left under `dir` (overlay layers, netns
/// files), and the key file when this daemon wrote it.
pub fn clean_up_after_dockerd(dir: &Path, wrote_key: bool) {
    let containerd_pid = dir.join("exec/containerd/containerd.pid");
    if let Some(pid) = std::fs::read_to_string(containerd_pid).ok().and_then(|s| s.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) on the pid dockerd recorded for the containerd it started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let base = dir.to_string_lossy().into_owned();
        let mut ours: Vec<PathBuf> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&base))
            .map(PathBuf::from)
            .collect();
        // Deepest first: a mount inside another goes before it.
        ours.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for mount in ours {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
    if wrote_key {
        let _ = std::fs::remove_file(DOCKER_KEY_JSON);
        let _ = std::fs::remove_dir("/etc/docker");
    }
}
