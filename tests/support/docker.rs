//! Real Docker Engine API servers for the `docker_api` tests, each on a socket of its own and
//! stopped by pid on drop: Podman's API service (`podman system service`) and Debian's
//! `dockerd` 20.10 with its own data, exec and pid paths (scripts/testbed.sh installs it and
//! saves the busybox image as a docker-archive).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::engine_daemon::{self, DOCKER_KEY_JSON};
use super::podman::podman;
use super::{have_command, is_root, prerequisite, run};

/// Sends SIGTERM to a child we started, waits up to `grace`, then kills it.
fn stop_child(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until something accepts connections on the socket.
fn wait_for_socket(socket: &Path, child: &mut Child, what: &str) {
    if let Err(e) = engine_daemon::wait_for_socket(socket, child, what, Duration::from_secs(30)) {
        panic!("{e}");
    }
}

/// `podman system service --time=0 unix://<socket>`: the Docker Engine API as Podman serves it.
pub struct PodmanService {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn serve(socket: &Path) -> Child {
    let mut child = podman()
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start podman system service");
    wait_for_socket(socket, &mut child, "podman system service");
    child
}

impl PodmanService {
    pub fn start() -> PodmanService {
        let dir = tempfile::Builder::new().prefix("podometer-podsvc").tempdir().expect("tempdir");
        let socket = dir.path().join("podman.sock");
        PodmanService { child: serve(&socket), socket, _dir: dir }
    }

    /// Stops the service; `start_again` serves the same socket again (a daemon restart).
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn start_again(&mut self) {
        self.child = serve(&self.socket);
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// A plain Podman container (no pod), removed on drop.
pub struct PodmanContainer {
    pub id: String,
}

impl PodmanContainer {
    /// `podman run -d --name <name> <extra...> localhost/bb:1 sh -c <script>`.
    pub fn run(name: &str, extra: &[&str], script: &str) -> PodmanContainer {
        let mut cmd = podman();
        cmd.args(["run", "-d", "--name", name]).args(extra).args(["localhost/bb:1", "sh", "-c", script]);
        let id = run(&mut cmd).trim().to_owned();
        PodmanContainer { id }
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        // By id: a test may have renamed it.
        let _ = podman().args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}

/// The docker-archive of `localhost/bb:1` that scripts/testbed.sh saves.
fn bb_docker_tar() -> Option<PathBuf> {
    std::env::var_os("PODOMETER_BB_DOCKER_TAR").map(PathBuf::from).filter(|p| p.is_file())
}

pub fn dockerd_available() -> bool {
    prerequisite(is_root(), "root")
        && prerequisite(have_command("dockerd"), "dockerd (apt-get install docker.io; scripts/testbed.sh)")
        && prerequisite(
            bb_docker_tar().is_some(),
            "PODOMETER_BB_DOCKER_TAR, the busybox docker-archive (eval \"$(scripts/testbed.sh)\")",
        )
}

/// A `dockerd` of the test's own: its own data root, exec root, pid file and socket; no
/// iptables, no bridge (containers run with `--network none`); cgroupfs driver, so its
/// containers sit at `/docker/<id>` in every hierarchy. Containers, the daemon, the
/// containerd it started and `/etc/docker/key.json` (when it wrote it) go on drop.
pub struct Dockerd {
    child: Child,
    pub socket: PathBuf,
    dir: tempfile::TempDir,
    wrote_key: bool,
    /// The `/docker` parent cgroups that did not exist before this daemon: dockerd makes them
    /// for its first container and leaves them, empty, when it stops.
    parent_cgroups: Vec<PathBuf>,
}

/// `<hierarchy>/docker` in every mounted hierarchy (v1 controllers, `unified`, `systemd`).
fn docker_parent_cgroups() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|h| h.join("cgroup.procs").exists())
        .map(|h| h.join("docker"))
        .collect()
}

impl Dockerd {
    pub fn start() -> Dockerd {
        let dir = tempfile::Builder::new().prefix("podometer-dockerd").tempdir().expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let wrote_key = !Path::new(DOCKER_KEY_JSON).exists();
        let parent_cgroups = docker_parent_cgroups().into_iter().filter(|d| !d.exists()).collect();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log file");
        let mut cmd = Command::new("dockerd");
        engine_daemon::dockerd_args(&mut cmd, dir.path(), &socket);
        let mut child = cmd
            // --debug: the log names every API call ("Calling GET /v1.41/..."), which the
            // tests count.
            .arg("--debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        wait_for_socket(&socket, &mut child, "dockerd");
        let dockerd = Dockerd { child, socket, dir, wrote_key, parent_cgroups };
        let tar = bb_docker_tar().expect("checked by dockerd_available");
        run(dockerd.docker().arg("load").arg("-q").arg("-i").arg(tar));
        dockerd
    }

    /// The daemon's own client (Debian's `/usr/bin/docker`) when installed, on our socket.
    pub fn docker(&self) -> Command {
        engine_daemon::docker_cli(&self.socket)
    }

    /// `docker run -d --network none --name <name> <extra...> localhost/bb:1 sh -c <script>`;
    /// returns the full id. Removed when the daemon is stopped.
    pub fn run(&self, name: &str, extra: &[&str], script: &str) -> String {
        let mut cmd = self.docker();
        cmd.args(["run", "-d", "--network", "none", "--name", name]).args(extra).args([
            "localhost/bb:1",
            "sh",
            "-c",
            script,
        ]);
        run(&mut cmd).trim().to_owned()
    }

    /// The API calls the daemon logged so far, as `METHOD /path?query` without the version
    /// prefix (`GET /containers/json?all=1&filters=...`).
    pub fn api_calls(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| {
                let call = line.split("msg=\"Calling ").nth(1)?.split('"').next()?;
                let (method, target) = call.split_once(' ')?;
                let target = match target.strip_prefix("/v") {
                    Some(rest) => rest.find('/').map_or(target, |i| &rest[i..]),
                    None => target,
                };
                Some(format!("{method} {target}"))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(out) = self.docker().args(["ps", "-aq", "--no-trunc"]).output() {
            let ids: Vec<String> =
                String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
            if !ids.is_empty() {
                let _ = self.docker().args(["rm", "-f"]).args(&ids).output();
            }
        }
        stop_child(&mut self.child, Duration::from_secs(15));
        // dockerd stops the containerd it started; if it could not, that one goes by its pid.
        engine_daemon::clean_up_after_dockerd(self.dir.path(), self.wrote_key);
        // Only an empty cgroup can go: another test's daemon still using it keeps it.
        for parent in &self.parent_cgroups {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
