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
/// `/host` when `/host/proc` and `/host/sys/fs/cgroup` exist; else the sidecar view inside a
/// container (`/run/.containerenv`, `/.dockerenv`, `KUBERNETES_SERVICE_HOST` or `container`
/// set); else the node view of the host the agent runs on.
pub fn choose(
    env: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
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
    let markers = [
        (exists(Path::new("/run/.containerenv")), "/run/.containerenv exists (Podman)"),
        (exists(Path::new("/.dockerenv")), "/.dockerenv exists (Docker)"),
        (env("KUBERNETES_SERVICE_HOST").is_some(), "KUBERNETES_SERVICE_HOST is set (a Kubernetes pod)"),
        (env("container").is_some(), "`container` is set in the environment"),
    ];
    if let Some((_, why)) = markers.iter().find(|(hit, _)| *hit) {
        return Ok(ViewChoice {
            view: View::Sidecar,
            reason: format!("in a container without the host's root at /host: {why}"),
        });
    }
    Ok(ViewChoice {
        view: View::Node { host_root: String::new() },
        reason: "not in a container: reading this host's /sys/fs/cgroup and /proc".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(env: &[(&str, &str)], files: &[&str]) -> Result<View, String> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        choose(&|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()), &|p| {
            files.iter().any(|f| Path::new(f) == p)
        })
        .map(|c| c.view)
    }

    #[test]
    fn views() {
        let node_host = View::Node { host_root: "/host".into() };
        let node_here = View::Node { host_root: String::new() };
        assert_eq!(
            pick(&[], &["/host/proc", "/host/sys/fs/cgroup", "/run/.containerenv"]),
            Ok(node_host.clone())
        );
        // Half a host mount is not a node view.
        assert_eq!(pick(&[], &["/host/proc", "/run/.containerenv"]), Ok(View::Sidecar));
        assert_eq!(pick(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")], &[]), Ok(View::Sidecar));
        assert_eq!(pick(&[], &[]), Ok(node_here.clone()));
        assert_eq!(pick(&[("PODOMETER_VIEW", "node")], &["/.dockerenv"]), Ok(node_here));
        assert_eq!(
            pick(&[("PODOMETER_VIEW", "sidecar")], &["/host/proc", "/host/sys/fs/cgroup"]),
            Ok(View::Sidecar)
        );
        assert!(pick(&[("PODOMETER_VIEW", "pod")], &[]).is_err());
    }
}
