//! A kubelet-shaped pod on the real cgroupfs without a kubelet, for the netns tests: one cgroup
//! per container under `<base>/kubepods/burstable/pod<uid>/`, processes started in them, and a
//! sweep of the netns source over its containers.

use std::path::Path;
use std::time::{Duration, SystemTime};

use podometer::model::{ContainerInfo, PodRef, ResourceId, Runtime, Sweep, SweepContext};
use podometer::sources::netns::NetnsSource;
use podometer::sources::Source;

use super::cgroupfs::TestCgroup;

/// One sweep of `source` over `containers`, as the cgroup source would publish them.
pub fn sweep(source: &mut NetnsSource, containers: &[ContainerInfo]) -> Sweep {
    let now = SystemTime::now();
    let mut ctx = SweepContext::new(now);
    ctx.containers = containers.iter().cloned().map(std::sync::Arc::new).collect();
    let mut sweep = Sweep::new(now);
    source.collect(&mut ctx, &mut sweep).expect("collect");
    sweep
}

/// Waits until `pid` has exec'ed `comm`, i.e. `ip netns exec` has switched namespaces.
pub fn wait_for_comm(pid: u32, comm: &str) {
    for _ in 0..250 {
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == comm).unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("pid {pid} never became {comm}");
}

pub fn hex_id(seed: &str) -> String {
    use std::hash::{Hash, Hasher};
    // 64 hex chars, different for every unique() seed.
    (0..4u8)
        .map(|salt| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, salt).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// A kubelet-shaped pod: `<base>/kubepods/burstable/pod<uid>/<id>` per container.
pub struct KubePod {
    pub uid: String,
    /// Container 0 (the sandbox) created the shared parent cgroups, so it is dropped last.
    pub containers: Vec<(String, TestCgroup)>,
}

impl KubePod {
    pub fn new(n_containers: usize) -> KubePod {
        let base = super::unique("podometer-netns");
        let n = std::process::id();
        let seq = base.rsplit('-').next().unwrap_or("0").parse::<u64>().unwrap_or(0);
        let uid = format!("{n:08x}-0000-4000-8000-{seq:012x}");
        let mut containers = Vec::new();
        for i in 0..n_containers {
            let id = hex_id(&format!("{base}-{i}"));
            let cg = TestCgroup::create(
                Path::new("/sys/fs/cgroup"),
                &format!("{base}/kubepods/burstable/pod{uid}/{id}"),
            );
            containers.push((id, cg));
        }
        KubePod { uid, containers }
    }

    /// A pod of `n` containers, each a `sleep` in the network namespace `netns`
    /// (`/run/netns/<netns>`), as a sandbox and the containers that join it.
    pub fn in_netns(netns: &str, n: usize) -> KubePod {
        let mut pod = KubePod::new(n);
        for i in 0..n {
            pod.start(i, &format!("exec ip netns exec {netns} sleep 300"), "sleep");
        }
        pod
    }

    /// Starts `script` in container `i` and waits until it runs `comm`.
    pub fn start(&mut self, i: usize, script: &str, comm: &str) -> u32 {
        let pid = self.containers[i].1.spawn(script);
        wait_for_comm(pid, comm);
        pid
    }

    pub fn infos(&self) -> Vec<ContainerInfo> {
        self.containers
            .iter()
            .map(|(id, cg)| ContainerInfo {
                id: id.clone(),
                runtime: Runtime::Containerd,
                pod: Some(PodRef::Kubernetes { uid: self.uid.clone(), qos: "burstable".into() }),
                procs_file: cg.dir("memory").join("cgroup.procs"),
            })
            .collect()
    }

    pub fn resource_id(&self) -> ResourceId {
        ResourceId::Pod(self.uid.clone())
    }
}

impl Drop for KubePod {
    fn drop(&mut self) {
        // Deepest-created last: drop the later containers first, the one that made the parents last.
        while let Some((_, cg)) = self.containers.pop() {
            drop(cg);
        }
    }
}
