//! A real containerd with its CRI plugin, started by the test in its own directories, with CNI
//! (bridge + host-local + loopback) on a subnet of its own and the test images imported: a
//! kubelet-style node without the kubelet. Pods are created through [`super::cri`].
//!
//! Everything is unique per instance (directory, socket, bridge, CNI network, subnet), so tests
//! run in parallel with each other and with other containerd or Docker daemons on the machine.
//! Nothing listens on `/run/containerd/containerd.sock`, which a `dockerd` would pick up; the
//! bundles are at `<state>/io.containerd.runtime.v2.task/k8s.io/<id>/config.json`, the layout
//! of a node whose containerd `state` is `/run/containerd`.
//!
//! Drop removes every pod left (CNI DEL frees the veths), stops containerd by its pid, unmounts
//! what is left under its directory, deletes the bridge, the CNI results and the cgroup parents.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cri::{Cri, CriPod, PodRequest};
use super::{have_command, is_root, prerequisite, run};

pub const PAUSE_IMAGE: &str = "podometer.test/pause:1";
pub const BUSYBOX_IMAGE: &str = "podometer.test/busybox:1";

/// Where scripts/testbed.sh put the offline OCI image tars (pause.tar, busybox.tar).
pub fn images_dir() -> PathBuf {
    std::env::var_os("PODOMETER_CRI_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/cri-images"))
}

/// Root, containerd, runc, the CNI plugins and the images built by scripts/testbed.sh.
pub fn containerd_available() -> bool {
    prerequisite(is_root(), "root")
        && prerequisite(have_command("containerd"), "containerd (apt-get install containerd)")
        && prerequisite(have_command("runc"), "runc")
        && prerequisite(
            ["bridge", "host-local", "loopback"].iter().all(|p| Path::new("/usr/lib/cni").join(p).exists()),
            "CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)",
        )
        && prerequisite(
            images_dir().join("pause.tar").exists() && images_dir().join("busybox.tar").exists(),
            "OCI image tars in $PODOMETER_CRI_IMAGES (scripts/testbed.sh builds them)",
        )
        && prerequisite(
            Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists(),
            "cgroup v1 memory controller (this support runs runc with the cgroupfs driver)",
        )
}

pub struct Containerd {
    /// Everything of this instance lives under it.
    pub dir: PathBuf,
    /// containerd's `state` (what `runtime_files.containerd_state` points at).
    pub state: PathBuf,
    pub socket: PathBuf,
    /// The CNI bridge and network name.
    pub bridge: String,
    pub network: String,
    /// The first three octets of the pod subnet (`10.231.N`).
    pub subnet_prefix: String,
    /// The cgroup directory, relative to each hierarchy, under which the tests' pods go
    /// (`podometer-ctrd-<pid>-<n>`); `kubepods/…` is created below it.
    pub cgroup_base: String,
    child: Option<Child>,
    pub cri: Cri,
}

impl Containerd {
    pub fn start() -> Containerd {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("podometer-ctrd-{pid}-{n}");
        let dir = PathBuf::from("/run").join(&name);
        let state = dir.join("state");
        let socket = dir.join("containerd.sock");
        // IFNAMSIZ is 16.
        let bridge = format!("pmc{}x{n}", pid % 1_000_000);
        // 10.231.0.0/16, one /24 per instance; the netns tests use 10.213, podman 10.88.
        let subnet_prefix = format!("10.231.{}", (pid as usize * 7 + n as usize) % 250 + 1);
        for d in ["root", "state", "net.d", "ipam", "runc", "opt"] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd dirs");
        }
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Required here: the sandbox lacks CAP_SYS_RESOURCE, so lowering oom_score_adj fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{dir}/runc"
        SystemdCgroup = false
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let network = name.clone();
        let conflist = format!(
            r#"{{"cniVersion": "1.0.0", "name": "{network}", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {{"type": "host-local", "dataDir": "{ipam}",
              "ranges": [[{{"subnet": "{subnet_prefix}.0/24"}}]], "routes": [{{"dst": "{subnet_prefix}.0/24"}}]}}}},
  {{"type": "loopback"}}]}}"#,
            ipam = dir.join("ipam").display()
        );
        std::fs::write(dir.join("net.d/10-podometer.conflist"), conflist).expect("CNI config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        // Until the daemon answers, a panic must still stop it.
        struct KillOnDrop(Option<Child>);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                if let Some(mut c) = self.0.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let mut guard = KillOnDrop(Some(child));
        let cri = Cri::connect(&socket, Duration::from_secs(20));
        let mut node = Containerd {
            dir: dir.clone(),
            state,
            socket: socket.clone(),
            bridge,
            network,
            subnet_prefix,
            cgroup_base: name,
            child: guard.0.take(),
            cri,
        };
        for image in ["pause.tar", "busybox.tar"] {
            node.ctr(&["images", "import", &images_dir().join(image).to_string_lossy()]);
        }
        let listed = node.cri.list_images().expect("ListImages");
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            assert!(listed.iter().any(|t| t.ends_with(image)), "{image} not imported: {listed:?}");
        }
        node.child_alive();
        node
    }

    /// `ctr` against this instance, in the CRI namespace.
    pub fn ctr(&self, args: &[&str]) -> String {
        run(Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "k8s.io"]).args(args))
    }

    fn child_alive(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
                panic!("containerd exited ({status}):\n{log}");
            }
        }
    }

    /// A kubelet-style cgroup parent for a pod of this instance:
    /// `/<cgroup_base>/kubepods/besteffort/pod<uid>`.
    pub fn cgroup_parent(&self, uid: &str) -> String {
        format!("/{}/kubepods/besteffort/pod{uid}", self.cgroup_base)
    }

    /// A pod of busybox containers (name, shell script) created through this instance's CRI
    /// as the kubelet creates it, under [`Containerd::cgroup_parent`]; removed on drop.
    pub fn run_pod(&self, name: &str, namespace: &str, uid: &str, containers: &[(&str, &str)]) -> CriPod {
        let parent = self.cgroup_parent(uid);
        CriPod::run(
            &self.cri,
            &PodRequest { name, namespace, uid, cgroup_parent: &parent, image: BUSYBOX_IMAGE, containers },
        )
    }

    /// Where the bundle of a container of this instance is.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state.join("io.containerd.runtime.v2.task/k8s.io").join(id).join("config.json")
    }

    fn unmount_below(dir: &Path) {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
        let prefix = format!("{}/", dir.display());
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).stderr(Stdio::null()).status();
        }
    }

    fn remove_cgroups(&self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
        for h in hierarchies.filter_map(Result::ok) {
            let base = h.path().join(&self.cgroup_base);
            if base.is_dir() {
                remove_cgroup_tree(&base);
            }
        }
        // The unified hierarchy of a hybrid host sits one level deeper.
        let unified = Path::new("/sys/fs/cgroup/unified").join(&self.cgroup_base);
        if unified.is_dir() {
            remove_cgroup_tree(&unified);
        }
    }
}

/// Removes an empty cgroup subtree, leaves first (cgroup directories only go with `rmdir`).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.filter_map(Result::ok) {
            if c.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&c.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods the tests left (a panic before their guards ran): CNI DEL frees their veths.
        if let Ok(ids) = self.cri.list_pod_sandbox_ids() {
            for id in ids {
                let _ = self.cri.stop_and_remove_pod(&id);
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the daemon this guard started, by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Containerd::unmount_below(&self.dir);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        if let Ok(results) = std::fs::read_dir("/var/lib/cni/results") {
            for r in results.filter_map(Result::ok) {
                if r.file_name().to_string_lossy().starts_with(&format!("{}-", self.network)) {
                    let _ = std::fs::remove_file(r.path());
                }
            }
        }
        self.remove_cgroups();
        if std::env::var_os("PODOMETER_KEEP_CONTAINERD_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
