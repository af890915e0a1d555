//! The real one-node Kubernetes cluster of `scripts/kube-node.sh` for a live test: `up` on
//! creation, `down` on drop (also after a panic), a lock held for the node's life so that two
//! test processes on one machine never share or tear down each other's node.
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{have_command, is_root, prerequisite};

pub const BUSYBOX_IMAGE: &str = "podometer.test/busybox:1";

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-node.sh")
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/podometer-kube"))
}

pub fn kube_node_available() -> bool {
    prerequisite(is_root(), "root")
        && ["go", "ip", "nsenter", "openssl", "containerd", "ctr", "runc", "kubectl", "python3", "flock"]
            .iter()
            .all(|c| prerequisite(have_command(c), c))
        && ["bridge", "host-local", "loopback"].iter().all(|p| {
            prerequisite(
                Path::new("/usr/lib/cni").join(p).exists(),
                "CNI plugins (containernetworking-plugins)",
            )
        })
        && prerequisite(Path::new("/bin/busybox").exists(), "busybox-static (the test images)")
}

/// The node for one test: `up` on creation, `down` on drop (also after a panic). The node's
/// names and addresses are fixed, so a lock held for the test's whole life keeps another test
/// process on this machine from taking it down underneath.
pub struct KubeNode {
    pub env: HashMap<String, String>,
    _lock: File,
}

impl KubeNode {
    pub fn up() -> KubeNode {
        std::fs::create_dir_all(cache_dir()).expect("kube-node cache dir");
        let lock = File::create(cache_dir().join("test.lock")).expect("kube-node test lock");
        // SAFETY: flock on a descriptor this function owns; blocks until other holders end.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
        let mut node = KubeNode { env: HashMap::new(), _lock: lock };
        let out = Command::new("bash").arg(script()).arg("up").output().expect("run scripts/kube-node.sh up");
        assert!(
            out.status.success(),
            "scripts/kube-node.sh up failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                node.env.insert(k.to_string(), v.to_string());
            }
        }
        for k in ["KUBECONFIG", "KUBE_NODE_NAME", "KUBE_AUDIT_LOG"] {
            assert!(
                node.env.contains_key(k),
                "up printed no {k}: {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        node
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let kubeconfig = Path::new(&self.env["KUBECONFIG"]);
        // The discovery cache beside the kubeconfig, in the node's run directory that `down`
        // removes, not in ~/.kube.
        let cache = kubeconfig.parent().expect("kubeconfig directory").join("kubectl-cache");
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", kubeconfig).arg("--cache-dir").arg(cache).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl")
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(out.status.success(), "kubectl {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports an image archive (docker or OCI) into the node's containerd.
    pub fn load_image(&self, archive: &Path) {
        let out =
            Command::new("bash").arg(script()).arg("load-image").arg(archive).output().expect("load-image");
        assert!(
            out.status.success(),
            "load-image {archive:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl wait` that must succeed; on failure the panic shows `describe` of `what`.
    pub fn wait(&self, namespace: &str, what: &str, condition: &str, timeout: &str) {
        let out = self.kubectl(
            &["-n", namespace, "wait", &format!("--for={condition}"), what, &format!("--timeout={timeout}")],
            None,
        );
        if !out.status.success() {
            let describe = self.kubectl(&["-n", namespace, "describe", what], None);
            panic!(
                "{what} in {namespace}: not {condition} within {timeout}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&describe.stdout)
            );
        }
    }

    /// `kubectl rollout status` that must succeed.
    pub fn rollout(&self, namespace: &str, what: &str, timeout: &str) {
        let out = self
            .kubectl(&["-n", namespace, "rollout", "status", what, &format!("--timeout={timeout}")], None);
        if !out.status.success() {
            let describe = self.kubectl(&["-n", namespace, "describe", "pods"], None);
            panic!(
                "{what} in {namespace}: no rollout within {timeout}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&describe.stdout)
            );
        }
    }

    /// `kubectl exec` into one container; its stdout.
    pub fn exec(&self, namespace: &str, pod: &str, container: &str, cmd: &[&str]) -> String {
        let mut args = vec!["-n", namespace, "exec", pod, "-c", container, "--"];
        args.extend_from_slice(cmd);
        self.kubectl_ok(&args, None)
    }

    /// `kubectl get -o json` of `what`.
    pub fn get_json(&self, namespace: &str, what: &[&str]) -> serde_json::Value {
        let mut args = vec!["-n", namespace, "get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&args, None)).expect("kubectl json")
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        let out = Command::new("bash").arg(script()).arg("down").output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("scripts/kube-node.sh down failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("scripts/kube-node.sh down: {e}"),
        }
    }
}

/// A live node test's progress on stderr: seconds since `start`, then what was reached.
pub fn elapsed(start: std::time::Instant, what: &str) {
    eprintln!("[{:6.1} s] {what}", start.elapsed().as_secs_f64());
}
