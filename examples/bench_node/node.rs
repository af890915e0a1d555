//! The synthetic node: N containers in the kubelet layout on the real cgroupfs, a live `sleep`
//! in each, one network namespace with a veth per pod; removed on drop.

use super::*;

pub(crate) struct Pod {
    /// Relative cgroup paths: the pod, then its sandbox and two containers.
    pub(crate) pod_cgroup: String,
    pub(crate) containers: Vec<String>,
    pub(crate) netns: String,
    /// The sandbox's `sleep`, whose `/proc/<pid>/net/dev` is the pod's.
    pub(crate) sandbox_pid: u32,
}

/// Containers, namespaces and processes; removed on drop.
pub(crate) struct Node {
    pub(crate) pods: Vec<Pod>,
    pub(crate) children: Vec<Child>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) qos_dirs: Vec<PathBuf>,
}

impl Node {
    pub(crate) fn build(n: usize) -> anyhow::Result<Node> {
        static BUILDS: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        // Deleted namespaces take their veths with them a moment later: new names every build.
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let pods_n = n.div_ceil(3);
        let mut node =
            Node { pods: Vec::new(), children: Vec::new(), dirs: Vec::new(), qos_dirs: Vec::new() };
        for h in HIERARCHIES {
            for part in ["kubepods", "kubepods/besteffort"] {
                let dir = Path::new("/sys/fs/cgroup").join(h).join(part);
                if Path::new("/sys/fs/cgroup").join(h).join("cgroup.procs").exists() && !dir.exists() {
                    fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                    inherit_cpuset(h, &dir);
                    node.qos_dirs.push(dir);
                }
            }
        }
        let mut batch = String::new();
        for p in 0..pods_n {
            let netns = format!("bn{pid}b{build}p{p}");
            let _ = writeln!(batch, "netns add {netns}");
            let _ = writeln!(batch, "link add b{pid:x}{build}v{p} type veth peer name eth0 netns {netns}");
            let _ = writeln!(batch, "link set b{pid:x}{build}v{p} up");
            let uid = format!("{pid:08x}-{p:04x}-4{build:03x}-8000-{:012x}", p * 7919 + 1);
            let pod_cgroup = format!("kubepods/besteffort/pod{uid}");
            let members = if p + 1 == pods_n && n % 3 != 0 { n % 3 } else { 3 };
            let containers = (0..members)
                .map(|c| {
                    let seed = format!("{pid:08x}{build:02x}{p:06x}{c:02x}");
                    format!("{seed}{}", "ab".repeat(32))[..64].to_owned()
                })
                .collect();
            node.pods.push(Pod { pod_cgroup, containers, netns, sandbox_pid: 0 });
        }
        // Netns first, so that a failure leaves nothing half-made in cgroups; removed on drop.
        let mut ip = Command::new("ip").args(["-batch", "-"]).stdin(Stdio::piped()).spawn()?;
        ip.stdin.take().context("ip stdin")?.write_all(batch.as_bytes())?;
        if !ip.wait()?.success() {
            bail!("ip -batch failed to create namespaces and veths");
        }
        for i in 0..node.pods.len() {
            let (pod_cgroup, containers, netns) = {
                let p = &node.pods[i];
                (p.pod_cgroup.clone(), p.containers.clone(), p.netns.clone())
            };
            node.mkdir_all(&pod_cgroup)?;
            for (c, id) in containers.iter().enumerate() {
                let rel = format!("{pod_cgroup}/{id}");
                node.mkdir_all(&rel)?;
                let child = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .args(["sleep", "1000000"])
                    .stdin(Stdio::null())
                    .spawn()
                    .context("nsenter sleep")?;
                let child_pid = child.id();
                node.children.push(child);
                for h in HIERARCHIES {
                    let procs = Path::new("/sys/fs/cgroup").join(h).join(&rel).join("cgroup.procs");
                    if procs.exists() {
                        fs::write(&procs, child_pid.to_string())
                            .with_context(|| format!("join {}", procs.display()))?;
                    }
                }
                if c == 0 {
                    node.pods[i].sandbox_pid = child_pid;
                }
            }
        }
        // nsenter execs sleep: wait until every process runs in its namespace.
        std::thread::sleep(Duration::from_millis(300));
        Ok(node)
    }

    pub(crate) fn mkdir_all(&mut self, rel: &str) -> anyhow::Result<()> {
        for h in HIERARCHIES {
            let base = Path::new("/sys/fs/cgroup").join(h);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            // Parents too: another session's cleanup may remove an empty `kubepods/besteffort`
            // between two of our builds.
            let mut dir = base.clone();
            for part in Path::new(rel).components() {
                dir.push(part);
                if !dir.exists() {
                    fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                    inherit_cpuset(h, &dir);
                    self.dirs.push(dir.clone());
                }
            }
        }
        Ok(())
    }

    /// The containers' ids (the leaf cgroups' names), as the agent reports them.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.pods.iter().flat_map(|p| p.containers.iter().cloned()).collect()
    }

    pub(crate) fn containers(&self) -> usize {
        self.pods.iter().map(|p| p.containers.len()).sum()
    }

    /// The files the agent reads every sweep (limits are read once a minute and left out), as
    /// (label, path); with `extra`, also files it reads rarely or only on other hosts, for the
    /// per-file cost table.
    pub(crate) fn sweep_files(&self, extra: bool) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let set: Vec<&(&str, &str)> =
            HYBRID_FILES.iter().chain(if extra { HYBRID_RARE_FILES } else { &[] }).collect();
        for pod in &self.pods {
            let groups = std::iter::once(pod.pod_cgroup.clone())
                .chain(pod.containers.iter().map(|c| format!("{}/{c}", pod.pod_cgroup)));
            for rel in groups {
                for (h, f) in &set {
                    let path = Path::new("/sys/fs/cgroup").join(h).join(&rel).join(f);
                    if path.exists() {
                        out.push((format!("{h}/{f}"), path));
                    }
                }
            }
            for file in std::iter::once("net/dev").chain(PROTOCOL_FILES) {
                out.push((
                    format!("/proc/<pid>/{file} (per pod)"),
                    PathBuf::from(format!("/proc/{}/{file}", pod.sandbox_pid)),
                ));
            }
        }
        out
    }
}

pub(crate) fn inherit_cpuset(h: &str, dir: &Path) {
    if h != "cpuset" {
        return;
    }
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Some(v) = dir.parent().and_then(|p| fs::read_to_string(p.join(file)).ok()) {
            let _ = fs::write(dir.join(file), v.trim());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let batch: String = self.pods.iter().map(|p| format!("netns del {}\n", p.netns)).collect();
        if let Ok(mut ip) = Command::new("ip").args(["-force", "-batch", "-"]).stdin(Stdio::piped()).spawn() {
            if let Some(mut stdin) = ip.stdin.take() {
                let _ = stdin.write_all(batch.as_bytes());
            }
            let _ = ip.wait();
        }
        // Processes leave their cgroups a moment after they exit: rmdir retries on EBUSY.
        for dir in self.dirs.iter().rev().chain(self.qos_dirs.iter().rev()) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
