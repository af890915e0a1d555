//! Which cgroups are containers and pods, from their path alone.
//!
//! Recognised layouts (path relative to the hierarchy root; `<id>` is a full 64-hex id):
//!
//! | Layout | Path | Runtime |
//! |---|---|---|
//! | kubelet, cgroupfs driver | `kubepods[/burstable\|/besteffort]/pod<uid>/<id>` | containerd |
//! | kubelet, cgroupfs driver, CRI-O | `kubepods/.../pod<uid>/crio-<id>` | cri-o |
//! | kubelet, systemd driver | `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/{cri-containerd,crio,docker}-<id>.scope` | by prefix |
//! | kubelet, systemd driver, guaranteed | `kubepods.slice/kubepods-pod<uid_>.slice/...` | by prefix |
//! | containerd's systemd driver inside a cgroup namespace (kind, k3s) | `.../kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>` | by prefix |
//! | Docker, cgroupfs | `docker/<id>` | docker |
//! | Docker, systemd | `system.slice/docker-<id>.scope` | docker |
//! | Podman pod, cgroupfs | `libpod_parent/<pod-id>/libpod-<id>` | podman |
//! | Podman, cgroupfs, no pod | `libpod_parent/libpod-<id>` | podman |
//! | Podman, systemd | `machine.slice/libpod-<id>.scope`, `machine.slice/machine-libpod_pod_<pod-id>.slice/libpod-<id>.scope` | podman |
//! | nerdctl, systemd | `system.slice/nerdctl-<id>.scope` | containerd |
//! | containerd, cgroupfs (`ctr`, nerdctl) | `<namespace>/<id>` directly under the root | containerd |
//!
//! The kubelet's cgroupfs layout names no runtime; containerd is the runtime that produces it
//! (CRI-O prefixes `crio-`, and dockershim is gone since Kubernetes 1.24). Monitors (`conmon`,
//! `libpod-conmon-<id>`, `crio-conmon-<id>.scope`) are not containers. The `kubepods` part may sit
//! below other directories (kind nests it under `kubelet.slice`), so it is searched for, not
//! expected at the top.

use crate::model::{PodRef, Runtime};

/// What a cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    Container {
        id: String,
        runtime: Runtime,
        pod: Option<PodRef>,
    },
    /// A Kubernetes pod's own cgroup, the parent of its containers.
    Pod {
        uid: String,
        qos: String,
    },
}

pub const QOS_GUARANTEED: &str = "guaranteed";
pub const QOS_BURSTABLE: &str = "burstable";
pub const QOS_BESTEFFORT: &str = "besteffort";

/// Classifies a cgroup by its path relative to the hierarchy root (`/` separated, no leading
/// slash needed).
pub fn classify(relative_path: &str) -> Option<Classified> {
    let parts: Vec<&str> = relative_path.split('/').filter(|p| !p.is_empty()).collect();
    let (&last, parents) = parts.split_last()?;

    if let Some(pod) = kubernetes_pod(parents, last) {
        return match pod {
            PodRef::Kubernetes { uid, qos } => Some(Classified::Pod { uid, qos }),
            PodRef::Podman { .. } => None,
        };
    }
    // `<pod slice>:<prefix>:<id>`: containerd's systemd driver when systemd is not reachable.
    if let Some((slice, rest)) = last.split_once(':') {
        let (prefix, id) = rest.split_once(':')?;
        let runtime = runtime_of_prefix(prefix)?;
        let pod = pod_of_systemd_slice(slice)?;
        return container(id, runtime, Some(pod));
    }
    let name = last.strip_suffix(".scope").unwrap_or(last);
    if is_monitor(name) {
        return None;
    }
    let parent = parents.last().copied();
    if is_hex64(name) {
        let pod = parent.and_then(|p| kubernetes_pod(&parents[..parents.len() - 1], p));
        return match (pod, parent) {
            (Some(pod), _) => container(name, Runtime::Containerd, Some(pod)),
            (None, Some("docker")) => container(name, Runtime::Docker, None),
            // A Podman pod's own cgroup, not a container.
            (None, Some("libpod_parent")) => None,
            (None, Some(_)) if parents.len() == 1 => container(name, Runtime::Containerd, None),
            _ => None,
        };
    }
    let (prefix, id) = name.rsplit_once('-')?;
    let runtime = runtime_of_prefix(prefix)?;
    if !is_hex64(id) {
        return None;
    }
    let pod = match parent {
        Some(p) => kubernetes_pod(&parents[..parents.len() - 1], p).or_else(|| podman_pod(parents)),
        None => None,
    };
    container(id, runtime, pod)
}

fn container(id: &str, runtime: Runtime, pod: Option<PodRef>) -> Option<Classified> {
    is_hex64(id).then(|| Classified::Container { id: id.to_owned(), runtime, pod })
}

fn runtime_of_prefix(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" | "nerdctl" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    }
}

fn is_monitor(name: &str) -> bool {
    name == "conmon" || name.starts_with("libpod-conmon-") || name.starts_with("crio-conmon-")
}

/// The pod of a kubelet cgroup named `name` whose ancestors are `ancestors`.
fn kubernetes_pod(ancestors: &[&str], name: &str) -> Option<PodRef> {
    if name.ends_with(".slice") {
        return pod_of_systemd_slice(name);
    }
    let uid = name.strip_prefix("pod")?;
    if !is_uid(uid) {
        return None;
    }
    let kubepods = ancestors.iter().rposition(|a| *a == "kubepods")?;
    let qos = match &ancestors[kubepods + 1..] {
        [] => QOS_GUARANTEED,
        [q] if *q == QOS_BURSTABLE || *q == QOS_BESTEFFORT => q,
        _ => return None,
    };
    Some(PodRef::Kubernetes { uid: uid.to_owned(), qos: qos.to_owned() })
}

/// `kubepods-<qos>-pod<uid_>.slice` or `kubepods-pod<uid_>.slice` (guaranteed).
fn pod_of_systemd_slice(name: &str) -> Option<PodRef> {
    let inner = name.strip_suffix(".slice")?.strip_prefix("kubepods-")?;
    let (qos, uid) = match inner.split_once("-pod") {
        Some((q, uid)) if q == QOS_BURSTABLE || q == QOS_BESTEFFORT => (q, uid),
        Some(_) => return None,
        None => (QOS_GUARANTEED, inner.strip_prefix("pod")?),
    };
    // systemd reserves `-` as the slice separator, so the kubelet writes the UID's dashes as `_`.
    let uid = uid.replace('_', "-");
    is_uid(&uid).then(|| PodRef::Kubernetes { uid, qos: qos.to_owned() })
}

fn podman_pod(parents: &[&str]) -> Option<PodRef> {
    match parents {
        [.., "libpod_parent", pod] if is_hex64(pod) => Some(PodRef::Podman { id: (*pod).to_owned() }),
        [.., slice] => {
            let id = slice.strip_prefix("machine-libpod_pod_")?.strip_suffix(".slice")?;
            is_hex64(id).then(|| PodRef::Podman { id: id.to_owned() })
        }
        [] => None,
    }
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Pod UIDs are dashed UUIDs, except static pods' which are 32 hex digits (a config hash).
fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";
    const UID: &str = "0f3e5a8c-1b2d-4c6e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "0f3e5a8c_1b2d_4c6e_8f90_a1b2c3d4e5f6";
    const POD: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

    fn k8s(runtime: Runtime, qos: &str) -> Option<Classified> {
        Some(Classified::Container {
            id: ID.into(),
            runtime,
            pod: Some(PodRef::Kubernetes { uid: UID.into(), qos: qos.into() }),
        })
    }

    fn pod(qos: &str) -> Option<Classified> {
        Some(Classified::Pod { uid: UID.into(), qos: qos.into() })
    }

    fn bare(runtime: Runtime) -> Option<Classified> {
        Some(Classified::Container { id: ID.into(), runtime, pod: None })
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        assert_eq!(
            classify(&format!("kubepods/burstable/pod{UID}/{ID}")),
            k8s(Runtime::Containerd, "burstable")
        );
        assert_eq!(
            classify(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            k8s(Runtime::Containerd, "besteffort")
        );
        assert_eq!(classify(&format!("kubepods/pod{UID}/{ID}")), k8s(Runtime::Containerd, "guaranteed"));
        assert_eq!(
            classify(&format!("kubepods/burstable/pod{UID}/crio-{ID}")),
            k8s(Runtime::CriO, "burstable")
        );
        assert_eq!(classify(&format!("kubepods/burstable/pod{UID}")), pod("burstable"));
        assert_eq!(classify(&format!("kubepods/pod{UID}")), pod("guaranteed"));
        assert_eq!(classify("kubepods/burstable"), None);
        assert_eq!(classify("kubepods"), None);
        assert_eq!(classify(&format!("kubepods/weird/pod{UID}/{ID}")), None);
        assert_eq!(classify(&format!("kubepods/burstable/pod{UID}/crio-conmon-{ID}")), None);
    }

    #[test]
    fn kubelet_systemd_driver() {
        let base = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(
            classify(&format!("{base}/cri-containerd-{ID}.scope")),
            k8s(Runtime::Containerd, "burstable")
        );
        assert_eq!(classify(&format!("{base}/crio-{ID}.scope")), k8s(Runtime::CriO, "burstable"));
        assert_eq!(classify(&format!("{base}/docker-{ID}.scope")), k8s(Runtime::Docker, "burstable"));
        assert_eq!(classify(&format!("{base}/crio-conmon-{ID}.scope")), None);
        assert_eq!(classify(&base), pod("burstable"));
        let be = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
        assert_eq!(classify(&format!("{be}/crio-{ID}.scope")), k8s(Runtime::CriO, "besteffort"));
        let g = format!("kubepods.slice/kubepods-pod{UID_}.slice");
        assert_eq!(
            classify(&format!("{g}/cri-containerd-{ID}.scope")),
            k8s(Runtime::Containerd, "guaranteed")
        );
        assert_eq!(classify(&g), pod("guaranteed"));
        assert_eq!(classify("kubepods.slice"), None);
        assert_eq!(classify("kubepods.slice/kubepods-burstable.slice"), None);
        // kind nests the kubelet's tree.
        let kind = format!("kubelet.slice/kubelet-kubepods.slice/{base}/cri-containerd-{ID}.scope");
        assert_eq!(classify(&kind), k8s(Runtime::Containerd, "burstable"));
    }

    #[test]
    fn containerd_systemd_driver_without_systemd() {
        let p =
            format!("system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}");
        assert_eq!(classify(&p), k8s(Runtime::Containerd, "burstable"));
        assert_eq!(classify(&format!("x/kubepods-burstable-pod{UID_}.slice:unknown:{ID}")), None);
    }

    #[test]
    fn docker() {
        assert_eq!(classify(&format!("docker/{ID}")), bare(Runtime::Docker));
        assert_eq!(classify(&format!("system.slice/docker-{ID}.scope")), bare(Runtime::Docker));
        assert_eq!(classify("system.slice/docker.service"), None);
    }

    #[test]
    fn podman() {
        let in_pod = Some(Classified::Container {
            id: ID.into(),
            runtime: Runtime::Podman,
            pod: Some(PodRef::Podman { id: POD.into() }),
        });
        assert_eq!(classify(&format!("libpod_parent/{POD}/libpod-{ID}")), in_pod);
        assert_eq!(
            classify(&format!("machine.slice/machine-libpod_pod_{POD}.slice/libpod-{ID}.scope")),
            in_pod
        );
        assert_eq!(classify(&format!("libpod_parent/libpod-{ID}")), bare(Runtime::Podman));
        assert_eq!(classify(&format!("machine.slice/libpod-{ID}.scope")), bare(Runtime::Podman));
        assert_eq!(classify(&format!("libpod_parent/{POD}/libpod-conmon-{ID}")), None);
        assert_eq!(classify(&format!("libpod_parent/{POD}/conmon")), None);
        assert_eq!(classify(&format!("machine.slice/libpod-conmon-{ID}.scope")), None);
        assert_eq!(classify(&format!("libpod_parent/{POD}")), None);
    }

    #[test]
    fn containerd_without_kubernetes() {
        assert_eq!(classify(&format!("default/{ID}")), bare(Runtime::Containerd));
        assert_eq!(classify(&format!("k8s.io/{ID}")), bare(Runtime::Containerd));
        assert_eq!(classify(&format!("system.slice/nerdctl-{ID}.scope")), bare(Runtime::Containerd));
        // A bare id deeper down, outside every known layout, is not guessed at.
        assert_eq!(classify(&format!("a/b/{ID}")), None);
        assert_eq!(classify(ID), None);
    }

    #[test]
    fn ids_must_be_full_lowercase_hex() {
        assert_eq!(classify(&format!("docker/{}", &ID[..63])), None);
        assert_eq!(classify(&format!("docker/{}", ID.to_uppercase())), None);
        assert_eq!(classify(&format!("system.slice/docker-{}x.scope", &ID[..63])), None);
        assert_eq!(classify("process_api/2282c53b033d2cfd647d6b83106f7c28"), None);
        assert_eq!(classify(""), None);
    }

    #[test]
    fn static_pod_uid_without_dashes() {
        let uid = "6f0a0d3f8b2c4e1a9d7c5b3a1f0e2d4c";
        assert_eq!(
            classify(&format!("kubepods/burstable/pod{uid}")),
            Some(Classified::Pod { uid: uid.into(), qos: "burstable".into() })
        );
    }
}
