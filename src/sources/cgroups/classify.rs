//! Which cgroups are containers and pods, from their path alone, and only where their runtime
//! puts them.
//!
//! A cgroup path is trusted only as far as who could have created it. The top of the hierarchy
//! and the runtimes' own trees are root's; a user's `user.slice/user-<uid>.slice/user@<uid>.service`
//! subtree is delegated to that user (rootless Podman and Docker live there), who can create any
//! name in it, `kubepods/pod<victim-uid>/<id>` included. So each layout is anchored at the roots
//! its runtime uses ([`Layouts`], `sources.cgroups.layouts`), and a container found in a delegated
//! subtree is reported as rootless: keyed by its owner too, never with pod attributes.
//!
//! Recognised layouts (`<root>` is one of the configured roots; `<id>` a full 64-hex id):
//!
//! | Layout | Path | Runtime |
//! |---|---|---|
//! | kubelet, cgroupfs driver | `<kubelet>[/burstable\|/besteffort]/pod<uid>/<id>` | containerd |
//! | kubelet, cgroupfs driver, CRI-O | `<kubelet>/.../pod<uid>/crio-<id>` | cri-o |
//! | kubelet, systemd driver | `<kubelet>/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/{cri-containerd,crio,docker}-<id>.scope` | by prefix |
//! | kubelet, systemd driver, guaranteed | `<kubelet>/kubepods-pod<uid_>.slice/...` | by prefix |
//! | containerd's systemd driver without systemd (kind, k3s) | `<containerd>/kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>` | by prefix |
//! | Docker | `<docker>/<id>`, `<docker>/docker-<id>.scope` | docker |
//! | Podman pod | `<podman>/<pod-id>/libpod-<id>`, `<podman>/machine-libpod_pod_<pod-id>.slice/libpod-<id>.scope` | podman |
//! | Podman, no pod | `<podman>/libpod-<id>`, `<podman>/libpod-<id>.scope` | podman |
//! | containerd (`ctr`, nerdctl) | `<containerd>/<id>`, `<containerd>/nerdctl-<id>.scope` | containerd |
//! | rootless (any runtime prefix) | `user.slice/user-<uid>.slice/user@<uid>.service/…/<prefix>-<id>[.scope]` | by prefix |
//!
//! Default roots: kubelet `kubepods` (cgroupfs driver) and `kubepods.slice` (systemd driver);
//! Docker `docker` and `system.slice`; Podman `libpod_parent` and `machine.slice`; containerd
//! `default` and `k8s.io` (its namespaces, cgroupfs), `system.slice` (nerdctl) and
//! `system.slice/containerd.service`. The kubelet's cgroupfs layout names no runtime;
//! containerd is the runtime that produces it (CRI-O prefixes `crio-`, and dockershim is gone
//! since Kubernetes 1.24). Monitors (`conmon`, `libpod-conmon-<id>`, `crio-conmon-<id>.scope`)
//! are not containers.

use serde::Deserialize;

use crate::model::{is_container_id, PodRef, ResourceId, Runtime};

/// What a cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    Container {
        id: String,
        runtime: Runtime,
        pod: Option<PodRef>,
        /// The uid whose delegated subtree holds the container (rootless Podman or Docker);
        /// `None` for a container in its runtime's own tree.
        rootless: Option<u32>,
    },
    /// A Kubernetes pod's own cgroup, the parent of its containers.
    Pod { uid: String, qos: String },
}

impl Classified {
    /// The resource this cgroup reports on. A rootless container's id was written by an
    /// unprivileged user, who may have copied another container's: its identity carries the
    /// owner (`<id>@user-<uid>`) so that it can never stand for a rootful container, and the
    /// metadata processors (keyed by runtime ids) never name it after one.
    pub fn identity(&self) -> ResourceId {
        match self {
            Classified::Container { id, rootless: None, .. } => ResourceId::Container(id.clone()),
            Classified::Container { id, rootless: Some(uid), .. } => {
                ResourceId::Container(format!("{id}@user-{uid}"))
            }
            Classified::Pod { uid, .. } => ResourceId::Pod(uid.clone()),
        }
    }

    /// The container id or pod uid this cgroup claims, whoever wrote it. Only one cgroup per
    /// claim is read: a container id is one resource downstream (anything keyed by
    /// `container.id` would otherwise see two), so a rootless cgroup that names a container of
    /// a runtime's own tree is left out rather than reported beside it.
    pub fn claim(&self) -> ResourceId {
        match self {
            Classified::Container { id, .. } => ResourceId::Container(id.clone()),
            Classified::Pod { uid, .. } => ResourceId::Pod(uid.clone()),
        }
    }

    pub fn is_rootless(&self) -> bool {
        matches!(self, Classified::Container { rootless: Some(_), .. })
    }
}

pub const QOS_GUARANTEED: &str = "guaranteed";
pub const QOS_BURSTABLE: &str = "burstable";
pub const QOS_BESTEFFORT: &str = "besteffort";

/// Where each runtime creates its cgroups (`sources.cgroups.layouts`): paths relative to the
/// hierarchy root, `/`-separated. A container or pod is recognised only directly below one of
/// its runtime's roots, in that runtime's shape; the same shape anywhere else is ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Layouts {
    /// The kubelet's cgroup trees: where `[<qos>/]pod<uid>/<container>` (cgroupfs driver) or
    /// `[kubepods-<qos>.slice/]kubepods-<qos>-pod<uid_>.slice/<container>.scope` (systemd
    /// driver) start. Add the kubelet's `--cgroup-root` here when it is set.
    /// Default: `[kubepods, kubepods.slice]`.
    #[serde(default = "default_kubelet")]
    pub kubelet: Vec<String>,
    /// Docker's parents: `<root>/<id>` (cgroupfs driver, `--cgroup-parent`) and
    /// `<root>/docker-<id>.scope` (systemd driver). Default: `[docker, system.slice]`.
    #[serde(default = "default_docker")]
    pub docker: Vec<String>,
    /// Podman's parents: `<root>/[<pod-id>/]libpod-<id>` (cgroupfs manager) and
    /// `<root>/[machine-libpod_pod_<pod-id>.slice/]libpod-<id>.scope` (systemd manager).
    /// Default: `[libpod_parent, machine.slice]`.
    #[serde(default = "default_podman")]
    pub podman: Vec<String>,
    /// containerd without Kubernetes: `<root>/<id>` (cgroupfs, one root per containerd
    /// namespace), `<root>/nerdctl-<id>.scope` (nerdctl, systemd), and
    /// `<root>/<pod slice>:cri-containerd:<id>` (CRI with the systemd driver but no systemd).
    /// Default: `[default, k8s.io, system.slice, system.slice/containerd.service]`.
    #[serde(default = "default_containerd")]
    pub containerd: Vec<String>,
    /// Report containers found in a user's delegated subtree
    /// (`user.slice/user-<uid>.slice/user@<uid>.service/…`, where rootless Podman and Docker put
    /// them) as rootless: `podometer.container.rootless = true` and `user.id = <uid>` next to
    /// `container.id`, keyed by owner and id so that they never merge with a rootful container,
    /// with no pod attributes and no network or metadata lookups (their ids and pods are the
    /// user's word). `false`: ignore them. Default: `true`.
    #[serde(default = "default_rootless")]
    pub rootless: bool,
}

fn default_kubelet() -> Vec<String> {
    vec!["kubepods".into(), "kubepods.slice".into()]
}

fn default_docker() -> Vec<String> {
    vec!["docker".into(), "system.slice".into()]
}

fn default_podman() -> Vec<String> {
    vec!["libpod_parent".into(), "machine.slice".into()]
}

fn default_containerd() -> Vec<String> {
    vec!["default".into(), "k8s.io".into(), "system.slice".into(), "system.slice/containerd.service".into()]
}

fn default_rootless() -> bool {
    true
}

impl Default for Layouts {
    fn default() -> Self {
        Layouts {
            kubelet: default_kubelet(),
            docker: default_docker(),
            podman: default_podman(),
            containerd: default_containerd(),
            rootless: default_rootless(),
        }
    }
}

impl Layouts {
    /// Problems as (key, reason): a root must be a relative path of plain names, and must not
    /// lie in `user.slice`, whose users' subtrees are delegated to them.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, roots) in [
            ("kubelet", &self.kubelet),
            ("docker", &self.docker),
            ("podman", &self.podman),
            ("containerd", &self.containerd),
        ] {
            for (i, root) in roots.iter().enumerate() {
                let key = format!("layouts.{key}[{i}]");
                let parts = segments(root);
                if parts.is_empty() {
                    problems.push((key, "is empty: a root is a directory below the hierarchy root".into()));
                } else if parts.iter().any(|p| *p == "." || *p == "..") {
                    problems.push((key, format!("`{root}` contains `.` or `..`")));
                } else if parts[0] == "user.slice" {
                    problems.push((
                        key,
                        format!(
                            "`{root}` is under user.slice, where users own delegated subtrees and can \
                             create any cgroup name; rootless containers there are found by `layouts.rootless`"
                        ),
                    ));
                }
            }
        }
        problems
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|p| !p.is_empty()).collect()
}

/// Classifies cgroup paths by the configured [`Layouts`].
#[derive(Debug, Clone)]
pub struct Classifier {
    kubelet: Vec<Vec<String>>,
    docker: Vec<Vec<String>>,
    podman: Vec<Vec<String>>,
    containerd: Vec<Vec<String>>,
    rootless: bool,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(&Layouts::default())
    }
}

impl Classifier {
    pub fn new(layouts: &Layouts) -> Classifier {
        let split = |roots: &[String]| -> Vec<Vec<String>> {
            roots.iter().map(|r| segments(r).into_iter().map(str::to_owned).collect()).collect()
        };
        Classifier {
            kubelet: split(&layouts.kubelet),
            docker: split(&layouts.docker),
            podman: split(&layouts.podman),
            containerd: split(&layouts.containerd),
            rootless: layouts.rootless,
        }
    }

    /// Classifies a cgroup by its path relative to the hierarchy root (`/` separated, no leading
    /// slash needed).
    pub fn classify(&self, relative_path: &str) -> Option<Classified> {
        let parts = segments(relative_path);
        if let Some((uid, below)) = delegated(&parts) {
            return if self.rootless { rootless(uid, below) } else { None };
        }
        let below = |roots: &[Vec<String>]| -> Vec<&[&str]> {
            roots
                .iter()
                .filter_map(|root| {
                    let n = root.len();
                    (parts.len() > n && parts[..n].iter().zip(root).all(|(a, b)| a == b)).then(|| &parts[n..])
                })
                .collect()
        };
        below(&self.kubelet)
            .into_iter()
            .find_map(kubelet)
            .or_else(|| below(&self.docker).into_iter().find_map(docker))
            .or_else(|| below(&self.podman).into_iter().find_map(podman))
            .or_else(|| below(&self.containerd).into_iter().find_map(containerd))
    }
}

/// `user.slice/user-<uid>.slice/user@<uid>.service/<rest>`: the owner and `rest`.
fn delegated<'p>(parts: &'p [&'p str]) -> Option<(u32, &'p [&'p str])> {
    match parts {
        ["user.slice", slice, service, rest @ ..] => {
            let uid = slice.strip_prefix("user-")?.strip_suffix(".slice")?;
            let same = service.strip_prefix("user@")?.strip_suffix(".service")? == uid;
            let uid: u32 = uid.parse().ok()?;
            same.then_some((uid, rest))
        }
        _ => None,
    }
}

/// Only a runtime-prefixed name counts in a delegated subtree: rootless runtimes name their
/// scopes so, and a bare id or a pod directory there is anybody's invention.
fn rootless(uid: u32, below: &[&str]) -> Option<Classified> {
    let last = below.last()?;
    let name = last.strip_suffix(".scope").unwrap_or(last);
    let (prefix, id) = name.rsplit_once('-')?;
    let runtime = runtime_of_prefix(prefix)?;
    is_container_id(id).then(|| Classified::Container {
        id: id.to_owned(),
        runtime,
        pod: None,
        rootless: Some(uid),
    })
}

/// Below a kubelet root: `[<qos>/]<pod>[/<container>]`, in cgroupfs or systemd names.
fn kubelet(rest: &[&str]) -> Option<Classified> {
    let (qos, rest) = match rest.split_first() {
        Some((q, tail)) => match qos_dir(q) {
            Some(qos) => (qos, tail),
            None => (QOS_GUARANTEED, rest),
        },
        None => return None,
    };
    match rest {
        [pod] => Some(Classified::Pod { uid: kubelet_pod(pod, qos)?, qos: qos.to_owned() }),
        [pod, name] => {
            let uid = kubelet_pod(pod, qos)?;
            let (id, runtime) = container_name(name)?;
            container(id, runtime, Some(PodRef::Kubernetes { uid, qos: qos.to_owned() }))
        }
        _ => None,
    }
}

fn qos_dir(name: &str) -> Option<&'static str> {
    match name {
        "burstable" | "kubepods-burstable.slice" => Some(QOS_BURSTABLE),
        "besteffort" | "kubepods-besteffort.slice" => Some(QOS_BESTEFFORT),
        _ => None,
    }
}

/// A pod directory in a QoS directory (`qos`): `pod<uid>` or `kubepods[-<qos>]-pod<uid_>.slice`,
/// whose QoS must be its parent's.
fn kubelet_pod(name: &str, qos: &str) -> Option<String> {
    if let Some(uid) = name.strip_prefix("pod") {
        return is_uid(uid).then(|| uid.to_owned());
    }
    match pod_of_systemd_slice(name)? {
        PodRef::Kubernetes { uid, qos: q } if q == qos => Some(uid),
        _ => None,
    }
}

/// A container's directory in a pod: a bare id (containerd, cgroupfs driver) or
/// `<runtime prefix>-<id>[.scope]`. Monitors (`crio-conmon-<id>`) have no runtime prefix.
fn container_name(last: &str) -> Option<(&str, Runtime)> {
    let name = last.strip_suffix(".scope").unwrap_or(last);
    if is_container_id(name) {
        return Some((name, Runtime::Containerd));
    }
    let (prefix, id) = name.rsplit_once('-')?;
    let runtime = runtime_of_prefix(prefix)?;
    is_container_id(id).then_some((id, runtime))
}

/// Below a Docker root: `<id>` or `docker-<id>.scope`.
fn docker(rest: &[&str]) -> Option<Classified> {
    let [name] = rest else { return None };
    let id =
        if is_container_id(name) { name } else { name.strip_prefix("docker-")?.strip_suffix(".scope")? };
    container(id, Runtime::Docker, None)
}

/// Below a Podman root: `[<pod>/]libpod-<id>[.scope]`, the pod `<pod-id>` (cgroupfs) or
/// `machine-libpod_pod_<pod-id>.slice` (systemd). A pod's own directory is not a container.
fn podman(rest: &[&str]) -> Option<Classified> {
    let libpod = |name: &str| {
        let name = name.strip_suffix(".scope").unwrap_or(name);
        name.strip_prefix("libpod-").filter(|id| is_container_id(id)).map(str::to_owned)
    };
    match rest {
        [name] => container(&libpod(name)?, Runtime::Podman, None),
        [pod, name] => {
            let pod_id = match pod.strip_prefix("machine-libpod_pod_") {
                Some(slice) => slice.strip_suffix(".slice")?,
                None => pod,
            };
            if !is_container_id(pod_id) {
                return None;
            }
            container(&libpod(name)?, Runtime::Podman, Some(PodRef::Podman { id: pod_id.to_owned() }))
        }
        _ => None,
    }
}

/// Below a containerd root: `<id>`, `nerdctl-<id>.scope`, or `<pod slice>:<prefix>:<id>`
/// (containerd's systemd driver when systemd is not reachable).
fn containerd(rest: &[&str]) -> Option<Classified> {
    let [name] = rest else { return None };
    if let Some((slice, tail)) = name.split_once(':') {
        let (prefix, id) = tail.split_once(':')?;
        let runtime = runtime_of_prefix(prefix)?;
        return container(id, runtime, Some(pod_of_systemd_slice(slice)?));
    }
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let id = if is_container_id(name) { name } else { name.strip_prefix("nerdctl-")? };
    container(id, Runtime::Containerd, None)
}

fn container(id: &str, runtime: Runtime, pod: Option<PodRef>) -> Option<Classified> {
    is_container_id(id).then(|| Classified::Container { id: id.to_owned(), runtime, pod, rootless: None })
}

/// The container a cgroup path names in its last component, wherever the path is: for paths
/// the layouts cannot anchor, as a process sees them from inside a cgroup namespace
/// (`/../cri-containerd-<id>.scope`). The runtime when a prefix names it; `None` for a bare id,
/// which several runtimes write.
pub fn named_container(path: &str) -> Option<(&str, Option<Runtime>)> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    let name = last.strip_suffix(".scope").unwrap_or(last);
    if is_container_id(name) {
        return Some((name, None));
    }
    let (prefix, id) = name.rsplit_once('-')?;
    is_container_id(id).then(|| (id, runtime_of_prefix(prefix)))
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

/// Pod UIDs are dashed UUIDs, except static pods' which are 32 hex digits (a config hash).
fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(path: &str) -> Option<Classified> {
        Classifier::default().classify(path)
    }

    const ID: &str = "4f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";
    const UID: &str = "0f3e5a8c-1b2d-4c6e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "0f3e5a8c_1b2d_4c6e_8f90_a1b2c3d4e5f6";
    const POD: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

    fn k8s(runtime: Runtime, qos: &str) -> Option<Classified> {
        Some(Classified::Container {
            id: ID.into(),
            runtime,
            pod: Some(PodRef::Kubernetes { uid: UID.into(), qos: qos.into() }),
            rootless: None,
        })
    }

    fn pod(qos: &str) -> Option<Classified> {
        Some(Classified::Pod { uid: UID.into(), qos: qos.into() })
    }

    fn bare(runtime: Runtime) -> Option<Classified> {
        Some(Classified::Container { id: ID.into(), runtime, pod: None, rootless: None })
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
        // A tree nested elsewhere (kind) is found once its root is configured, not before.
        let kind = format!("kubelet.slice/kubelet-kubepods.slice/{base}/cri-containerd-{ID}.scope");
        assert_eq!(classify(&kind), None);
        let layouts = Layouts {
            kubelet: vec!["kubelet.slice/kubelet-kubepods.slice/kubepods.slice".into()],
            ..Layouts::default()
        };
        assert_eq!(Classifier::new(&layouts).classify(&kind), k8s(Runtime::Containerd, "burstable"));
        // The QoS of a pod slice must be its parent's.
        let mixed = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(classify(&mixed), None);
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
            rootless: None,
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

    #[test]
    fn layouts_are_anchored_at_their_roots() {
        // The same shapes below any other parent are not containers or pods.
        for spoof in [
            format!("evil/kubepods/pod{UID}/{ID}"),
            format!("evil/kubepods/burstable/pod{UID}"),
            format!("system.slice/foo.service/kubepods/pod{UID}/{ID}"),
            format!("system.slice/foo.service/docker-{ID}.scope"),
            format!("system.slice/foo.service/libpod-{ID}.scope"),
            format!("machine.slice/x/y/libpod-{ID}.scope"),
            format!("evil/docker/{ID}"),
            format!("evil/libpod_parent/{POD}/libpod-{ID}"),
            format!("evil/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"),
            format!("kubepods/burstable/pod{UID}/{ID}/{ID}"),
        ] {
            assert_eq!(classify(&spoof), None, "{spoof}");
        }
    }

    #[test]
    fn delegated_subtrees_hold_only_rootless_containers_keyed_by_owner() {
        let user = "user.slice/user-1000.slice/user@1000.service";
        let rootless = Some(Classified::Container {
            id: ID.into(),
            runtime: Runtime::Podman,
            pod: None,
            rootless: Some(1000),
        });
        assert_eq!(classify(&format!("{user}/user.slice/libpod-{ID}.scope")), rootless);
        let podded = format!("{user}/user.slice/user-libpod_pod_{POD}.slice/libpod-{ID}.scope");
        assert_eq!(classify(&podded), rootless, "no pod attributes from a user's names");
        let id = rootless.as_ref().map(Classified::identity);
        assert_eq!(id, Some(ResourceId::Container(format!("{ID}@user-1000"))));
        assert_ne!(id, Some(ResourceId::Container(ID.into())));
        // A kubelet or bare-id layout copied into the subtree is nothing.
        assert_eq!(classify(&format!("{user}/kubepods/burstable/pod{UID}/{ID}")), None);
        assert_eq!(classify(&format!("{user}/kubepods/burstable/pod{UID}")), None);
        assert_eq!(classify(&format!("{user}/docker/{ID}")), None);
        assert_eq!(classify(&format!("{user}/user.slice/libpod-conmon-{ID}.scope")), None);
        // Mismatched owners are not a delegated subtree, nor anything else.
        assert_eq!(classify(&format!("user.slice/user-1000.slice/user@0.service/libpod-{ID}.scope")), None);
        let off = Classifier::new(&Layouts { rootless: false, ..Layouts::default() });
        assert_eq!(off.classify(&format!("{user}/user.slice/libpod-{ID}.scope")), None);
    }

    #[test]
    fn roots_are_validated() {
        assert!(Layouts::default().validate().is_empty());
        let bad = Layouts {
            kubelet: vec!["".into(), "a/../kubepods".into()],
            docker: vec!["user.slice/user-1000.slice/user@1000.service/docker".into()],
            ..Layouts::default()
        };
        let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["layouts.kubelet[0]", "layouts.kubelet[1]", "layouts.docker[0]"]);
    }
}
