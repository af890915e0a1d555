//! A synthetic kubelet node for churn and fault tests: pods in the cgroupfs layout
//! (`kubepods/besteffort/pod<uid>/<64 hex>`), each with its own network namespace joined to the
//! host by a veth, a live `sleep` per container inside that namespace, created and removed
//! while an agent sweeps.
//!
//! Everything lives under a private parent (`podometer-churn-<pid>-<n>`) in every hierarchy of
//! the real cgroupfs, so that the test's agent sees only this node: [`AgentRoot`] bind-mounts
//! that parent of each hierarchy into a directory of its own, inside a mount namespace that
//! only the agent process has (`unshare -m`), so the mounts vanish with it whatever happens.
//! The agent's `sources.cgroups.root` points there, as a DaemonSet's points at
//! `/host/sys/fs/cgroup`. Other tests' containers on this host never reach its counts.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::cgroupfs::V1_CONTROLLERS;
use super::unique;

/// The hierarchies this machine mounts among those the agent reads (v1 controllers, `unified`).
pub fn hierarchies() -> Vec<&'static str> {
    V1_CONTROLLERS
        .iter()
        .copied()
        .chain(["unified"])
        .filter(|h| Path::new("/sys/fs/cgroup").join(h).join("cgroup.procs").exists())
        .collect()
}

/// The private parent cgroup (`podometer-churn-<pid>-<n>/kubepods/besteffort` in every
/// hierarchy), removed on drop once empty.
pub struct ChurnNode {
    /// `podometer-churn-<pid>-<n>`, the parent in each hierarchy.
    pub name: String,
    hierarchies: Vec<&'static str>,
    created: Vec<PathBuf>,
    next_pod: u32,
}

/// One pod: a sandbox and `containers - 1` more containers, a namespace and a veth.
pub struct ChurnPod {
    pub uid: String,
    /// 64-hex container ids, the sandbox first.
    pub ids: Vec<String>,
    pub netns: String,
    pub host_if: String,
    /// Every cgroup directory of the pod, deepest last.
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
    removed: bool,
}

impl ChurnNode {
    pub fn create() -> ChurnNode {
        let name = unique("podometer-churn");
        let mut node = ChurnNode { name, hierarchies: hierarchies(), created: Vec::new(), next_pod: 0 };
        for h in node.hierarchies.clone() {
            let mut dir = Path::new("/sys/fs/cgroup").join(h);
            for part in [node.name.as_str(), "kubepods", "besteffort"] {
                dir.push(part);
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                inherit_cpuset(h, &dir);
                node.created.push(dir.clone());
            }
        }
        node
    }

    /// The node's parent in one hierarchy, what the agent sees as that hierarchy's root.
    pub fn parent(&self, hierarchy: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup").join(hierarchy).join(&self.name)
    }

    pub fn hierarchies(&self) -> &[&'static str] {
        &self.hierarchies
    }

    /// A new pod with `containers` containers (the first is the sandbox), each running a
    /// `sleep` inside the pod's network namespace.
    pub fn add_pod(&mut self, containers: usize) -> ChurnPod {
        static PODS: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let k = PODS.fetch_add(1, Ordering::Relaxed);
        let n = self.next_pod;
        self.next_pod += 1;
        let mut pod = ChurnPod {
            uid: format!("{pid:08x}-c0de-4000-8000-{k:012x}"),
            ids: (0..containers).map(|c| format!("{pid:08x}{k:08x}{c:04x}{}", "5eed".repeat(11))).collect(),
            netns: format!("{}-p{n}", self.name),
            // IFNAMSIZ is 16: the pid and a counter in hex.
            host_if: format!("ch{pid:x}x{k:x}"),
            dirs: Vec::new(),
            children: Vec::new(),
            removed: false,
        };
        // The namespace and the veth in one `ip -batch` (one process, not three).
        let mut batch = String::new();
        let _ = writeln!(batch, "netns add {}", pod.netns);
        let _ = writeln!(batch, "link add {} type veth peer name eth0 netns {}", pod.host_if, pod.netns);
        let _ = writeln!(batch, "link set {} up", pod.host_if);
        let mut ip = Command::new("ip").args(["-batch", "-"]).stdin(Stdio::piped()).spawn().expect("ip");
        ip.stdin.take().unwrap().write_all(batch.as_bytes()).unwrap();
        assert!(ip.wait().unwrap().success(), "ip -batch failed:\n{batch}");
        let pod_rel = format!("{}/kubepods/besteffort/pod{}", self.name, pod.uid);
        for h in &self.hierarchies {
            let dir = Path::new("/sys/fs/cgroup").join(h).join(&pod_rel);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            inherit_cpuset(h, &dir);
            pod.dirs.push(dir);
        }
        for id in pod.ids.clone() {
            let child = Command::new("ip")
                .args(["netns", "exec", &pod.netns, "sleep", "3600"])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            let child_pid = child.id();
            pod.children.push(child);
            for h in &self.hierarchies {
                let dir = Path::new("/sys/fs/cgroup").join(h).join(&pod_rel).join(&id);
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                inherit_cpuset(h, &dir);
                pod.dirs.push(dir.clone());
                // `ip netns exec` execs sleep in the same process: the pid is the container's.
                fs::write(dir.join("cgroup.procs"), child_pid.to_string())
                    .unwrap_or_else(|e| panic!("join {}: {e}", dir.display()));
            }
        }
        pod
    }
}

impl ChurnPod {
    /// Kills the processes, removes the cgroups and the namespace; returns when every cgroup
    /// directory is gone (the moment after which no sweep may report the pod).
    pub fn remove(&mut self) -> SystemTime {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        for dir in self.dirs.iter().rev() {
            // A killed process leaves its cgroup a moment after it is reaped: EBUSY until then.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let gone = SystemTime::now();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).stderr(Stdio::null()).status();
        self.removed = true;
        gone
    }
}

impl Drop for ChurnPod {
    fn drop(&mut self) {
        if !self.removed {
            self.remove();
        }
    }
}

impl Drop for ChurnNode {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A new cpuset cgroup has empty cpus/mems and refuses tasks until they are copied down.
fn inherit_cpuset(hierarchy: &str, dir: &Path) {
    if hierarchy != "cpuset" {
        return;
    }
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Some(v) = dir.parent().and_then(|p| fs::read_to_string(p.join(file)).ok()) {
            let _ = fs::write(dir.join(file), v.trim());
        }
    }
}

/// A directory whose subdirectories are the node's parents bind-mounted, one per hierarchy,
/// in the mount namespace of the agent only. Use [`AgentRoot::command`] to start the agent.
pub struct AgentRoot {
    pub dir: tempfile::TempDir,
    binds: Vec<(PathBuf, PathBuf)>,
}

impl AgentRoot {
    pub fn new(node: &ChurnNode) -> AgentRoot {
        let dir = tempfile::tempdir().unwrap();
        let mut binds = Vec::new();
        for h in node.hierarchies() {
            let target = dir.path().join(h);
            fs::create_dir(&target).unwrap();
            binds.push((node.parent(h), target));
        }
        AgentRoot { dir, binds }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `unshare -m sh -c 'mount --bind …; exec PROGRAM ARGS'`: the same process becomes the
    /// program (its pid is the agent's), and the mounts end with it.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut script = String::from("set -e; ");
        for (source, target) in &self.binds {
            let _ = write!(script, "mount --bind '{}' '{}'; ", source.display(), target.display());
        }
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"]).arg(program).args(args);
        cmd
    }
}

/// The agent's resident set (`VmRSS`, KiB) and open descriptors, from `/proc/<pid>`.
pub fn rss_kib_and_fds(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}
