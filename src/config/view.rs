//! Which built-in configuration the agent runs without `-c`: the node view (every container
//! on the host, from cgroupfs and the host's procfs) or the sidecar view (one pod, from its
//! own procfs). One image serves the DaemonSet, the sidecar and a plain host this way.

use std::path::Path;

/// Where the DaemonSet mounts the host's root.
pub const HOST_ROOT: &str = "/host";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Cgroups and network namespaces of every container; paths under `host_root` (`/host`
    /// in a DaemonSet, empty on the host itself).
    Node { host_root: String },
    /// One pod, seen from inside it, without privilege.
    Sidecar,
}

/// The view and why it was chosen, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewChoice {
    pub view: View,
    pub reason: String,
}

/// Chooses the view: `PODOMETER_VIEW` (`node`, `sidecar`) when set; else the node view under
/// `/host` when `/host/proc` and `/host/sys/fs/cgroup` exist; else the sidecar view when the
/// cgroup mounted at `/sys/fs/cgroup` is the agent's own container's (`own_cgroup`: it lists
/// the agent's pid and is not the host's root), since nothing of the node is visible then;
/// else the node view of the machine the agent runs on (a host, or a container that sees the
/// host's cgroup tree). Container markers such as `/.dockerenv` are not used: a privileged
/// container with the host's tree is a node view.
pub fn choose(
    env: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
    own_cgroup: &dyn Fn() -> bool,
) -> Result<ViewChoice, String> {
    let host_mounted = exists(Path::new("/host/proc")) && exists(Path::new("/host/sys/fs/cgroup"));
    match env("PODOMETER_VIEW").as_deref() {
        Some("node") => {
            let host_root = if host_mounted { HOST_ROOT.to_owned() } else { String::new() };
            let reason =
                format!("PODOMETER_VIEW=node (host root: {})", if host_mounted { "/host" } else { "/" });
            return Ok(ViewChoice { view: View::Node { host_root }, reason });
        }
        Some("sidecar") => {
            return Ok(ViewChoice { view: View::Sidecar, reason: "PODOMETER_VIEW=sidecar".into() })
        }
        Some(other) if !other.is_empty() => {
            return Err(format!("PODOMETER_VIEW=`{other}`: expected `node` or `sidecar`"));
        }
        _ => {}
    }
    if host_mounted {
        return Ok(ViewChoice {
            view: View::Node { host_root: HOST_ROOT.to_owned() },
            reason: "/host/proc and /host/sys/fs/cgroup exist: the host's root is mounted at /host".into(),
        });
    }
    if own_cgroup() {
        return Ok(ViewChoice {
            view: View::Sidecar,
            reason: "no host root at /host, and /sys/fs/cgroup is this container's own cgroup (it lists the agent's pid)"
                .into(),
        });
    }
    Ok(ViewChoice {
        view: View::Node { host_root: String::new() },
        reason: "/sys/fs/cgroup is the host's tree: reading it and /proc".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(env: &[(&str, &str)], files: &[&str]) -> Result<View, String> {
        let own = files.contains(&"own-cgroup");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        choose(
            &|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &|p| files.iter().any(|f| Path::new(f) == p),
            &|| own,
        )
        .map(|c| c.view)
    }

    #[test]
    fn views() {
        let node_host = View::Node { host_root: "/host".into() };
        let node_here = View::Node { host_root: String::new() };
        assert_eq!(pick(&[], &["/host/proc", "/host/sys/fs/cgroup", "own-cgroup"]), Ok(node_host.clone()));
        // Half a host mount is not a node view.
        assert_eq!(pick(&[], &["/host/proc", "own-cgroup"]), Ok(View::Sidecar));
        // A container that sees the host's tree (this CI machine has /.dockerenv) is a node.
        assert_eq!(pick(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")], &["/.dockerenv"]), Ok(node_here.clone()));
        assert_eq!(pick(&[], &[]), Ok(node_here.clone()));
        assert_eq!(pick(&[("PODOMETER_VIEW", "node")], &["own-cgroup"]), Ok(node_here));
        assert_eq!(
            pick(&[("PODOMETER_VIEW", "sidecar")], &["/host/proc", "/host/sys/fs/cgroup"]),
            Ok(View::Sidecar)
        );
        assert!(pick(&[("PODOMETER_VIEW", "pod")], &[]).is_err());
    }
}
