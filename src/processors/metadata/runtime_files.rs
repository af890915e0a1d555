//! `runtime_files`: container and pod names from the files the container runtimes write for
//! every container, read-only, with no socket and no API.
//!
//! Every OCI runtime starts a container from a bundle whose `config.json` the runtime manager
//! wrote, and the Kubernetes runtimes put the pod's and the container's names in its
//! `annotations`. For each container id the cgroup source found (`SweepContext::containers`,
//! which also says which runtime's layout it is in) this processor reads that file **once**,
//! keeps what it found, and forgets it when the id is gone. Reading a small local file on the
//! sweep thread once per new container costs about what the cgroup source's discovery of that
//! container costs (a few `open`/`read`s on tmpfs), so it is done there; no thread, no task.
//!
//! Where the files are and what they say:
//!
//! | runtime | bundle `config.json` | names |
//! |---|---|---|
//! | containerd (CRI plugin) | `<containerd_state>/io.containerd.runtime.v2.task/k8s.io/<id>/config.json` | annotations `io.kubernetes.cri.*` |
//! | containerd (other namespaces: nerdctl, `ctr`) | `<containerd_state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json` | `nerdctl/name` when present |
//! | CRI-O | `<storage_runroot>/<driver>-containers/<id>/userdata/config.json`, a copy in `<storage_root>/…` | annotations `io.kubernetes.cri-o.*` and the kubelet's labels |
//! | Podman | `<storage_root>/<driver>-containers/<id>/userdata/config.json` | names and image in the store's `<driver>-containers/containers.json`; the pod's name from its infra container's `hostname` |
//!
//! containerd's CRI annotations, by the release that first writes them
//! (`pkg/cri/annotations/annotations.go`): `container-type` and `sandbox-id` since the CRI
//! plugin's beginning (containerd 1.1/1.2); `container-name` since 1.4 (containerd/cri#1436);
//! `sandbox-name`, `sandbox-namespace` and `image-name` since 1.5 (containerd#4922, #5002);
//! `sandbox-uid` since 1.6.11 and 1.7.0 (containerd#7735, #7697). containerd 2.0 also writes
//! `image-name` on sandboxes (the pause image, containerd#9419) and takes it from the image the
//! kubelet asked for (`UserSpecifiedImage`, containerd#10747). With containerd older than 1.5
//! pods get no names from here (the pod UID still comes from the cgroup path).
//!
//! CRI-O writes `config.json` twice, in the container's storage directory and its run
//! directory, and puts the kubelet's labels both in `io.kubernetes.cri-o.Labels` (a JSON
//! object) and as plain annotations, the CRI metadata in `io.kubernetes.cri-o.Metadata`, its
//! own name (`k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`) in `io.kubernetes.cri-o.Name`
//! and the image in `io.kubernetes.cri-o.ImageName`.
//!
//! Podman keeps container names in the containers/storage store (`containers.json`); the pod's
//! name is only in libpod's database (BoltDB `bolt_state.db` in 4.x, SQLite `db.sql` in 5.x),
//! which this processor does not read. Podman gives the pod's infra container the pod's name
//! as its hostname unless `podman pod create --hostname` says otherwise, so `podman.pod.name`
//! is that hostname; `docker_api` reads the exact name through Podman's API.
//!
//! Bad input (unreadable, larger than `max_file_bytes`, not JSON, a CRI bundle without its
//! annotations) is logged once a minute and counted in `metadata_errors`; the container is
//! exported with its ids and the file is tried again after [`RETRY_AFTER`].

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Deserializer};

use super::{attach, AttachStats, ContainerMeta, PodMeta, Snapshot};
use crate::agent_counters::Telemetry;
use crate::model::{Attributes, ContainerInfo, PodRef, Runtime, Sweep, SweepContext};
use crate::processors::Processor;
use crate::semconv;
use crate::warn_limited;

/// Where the runtimes keep their files. Every default is where a standard node has them, so
/// `runtime_files: {}` works; in a DaemonSet mount the host's directories read-only and point
/// these at them (`/host/run/containerd`, …).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFilesConfig {
    /// containerd's state directory (`state` in its `config.toml`). Bundles are under
    /// `<containerd_state>/io.containerd.runtime.v2.task/<namespace>/<id>/`; Kubernetes pods
    /// are in namespace `k8s.io`. Default: `/run/containerd`.
    #[serde(default = "default_containerd_state")]
    pub containerd_state: PathBuf,
    /// containers/storage's run root (`runroot` in `storage.conf`), where CRI-O writes each
    /// container's `userdata/config.json`. Default: `/run/containers/storage`.
    #[serde(default = "default_storage_runroot")]
    pub storage_runroot: PathBuf,
    /// containers/storage's root (`graphroot` in `storage.conf`): Podman's bundles and the
    /// store's `containers.json` with every container's name. Default: `/var/lib/containers/storage`.
    #[serde(default = "default_storage_root")]
    pub storage_root: PathBuf,
    /// containers/storage's driver (`driver` in `storage.conf`), which names the
    /// `<driver>-containers` directory: `overlay`, `vfs`, `btrfs`, `zfs`. Default: `overlay`.
    #[serde(default = "default_storage_driver", deserialize_with = "deserialize_driver")]
    pub storage_driver: String,
    /// The largest bundle `config.json` read, in bytes; a larger file is an error (real ones
    /// are 5 to 30 KB). Podman's `containers.json` may be [`STORE_SIZE_FACTOR`] times this.
    /// Default: 1 MiB.
    #[serde(default = "default_max_file_bytes", deserialize_with = "deserialize_positive")]
    pub max_file_bytes: u64,
}

fn default_containerd_state() -> PathBuf {
    PathBuf::from("/run/containerd")
}
fn default_storage_runroot() -> PathBuf {
    PathBuf::from("/run/containers/storage")
}
fn default_storage_root() -> PathBuf {
    PathBuf::from("/var/lib/containers/storage")
}
fn default_storage_driver() -> String {
    "overlay".to_owned()
}
fn default_max_file_bytes() -> u64 {
    1024 * 1024
}

fn deserialize_driver<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let driver = String::deserialize(d)?;
    if driver.is_empty() || driver.contains('/') || driver == "." || driver == ".." {
        return Err(serde::de::Error::custom(format!(
            "`{driver}` is not a containers/storage driver name (overlay, vfs, btrfs, zfs)"
        )));
    }
    Ok(driver)
}

fn deserialize_positive<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be greater than 0"));
    }
    Ok(n)
}

impl Default for RuntimeFilesConfig {
    fn default() -> Self {
        RuntimeFilesConfig {
            containerd_state: default_containerd_state(),
            storage_runroot: default_storage_runroot(),
            storage_root: default_storage_root(),
            storage_driver: default_storage_driver(),
            max_file_bytes: default_max_file_bytes(),
        }
    }
}

/// Podman's `containers.json` lists every container of the store: it may be this many times
/// `max_file_bytes`.
pub const STORE_SIZE_FACTOR: u64 = 32;

/// A file that could not be used is tried again after this long (a runtime may still be
/// writing it; an operator may fix it).
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The containerd namespace of the CRI plugin.
const K8S_NAMESPACE: &str = "k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeFilesError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: larger than {limit} bytes, not read")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
}

/// What the pure parsers reject.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not an OCI runtime config (JSON object with string annotations): {0}")]
    Bundle(serde_json::Error),
    #[error("not an OCI runtime config: not a JSON object")]
    NotAnObject,
    #[error("not a containers/storage containers.json: {0}")]
    Store(serde_json::Error),
    #[error("a {runtime} Kubernetes bundle without the {prefix}* annotations that name it")]
    MissingAnnotations { runtime: &'static str, prefix: &'static str },
}

/// The parts of an OCI runtime `config.json` this processor uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OciBundle {
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Parses a bundle's `config.json`. Everything but `annotations` and `hostname` is skipped.
pub fn parse_bundle(text: &str) -> Result<OciBundle, ParseError> {
    // serde would also take a JSON array for a struct; a runtime config is an object.
    if !text.trim_start().starts_with('{') {
        return Err(ParseError::NotAnObject);
    }
    serde_json::from_str(text).map_err(ParseError::Bundle)
}

/// Whether a bundle is a pod's sandbox (pause, infra) or one of its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sandbox,
    Container,
}

/// Names taken from one container's files, before they become attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub kind: Option<Kind>,
    /// `container.name`: the runtime's name for the container.
    pub container_name: Option<String>,
    /// `k8s.container.name`: the name in the pod's spec.
    pub k8s_container_name: Option<String>,
    /// The image reference as the runtime recorded it (`docker.io/library/nginx:1.27`).
    pub image: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    /// `podman.pod.name`.
    pub podman_pod_name: Option<String>,
}

impl Names {
    fn is_empty(&self) -> bool {
        self.container_name.is_none()
            && self.k8s_container_name.is_none()
            && self.image.is_none()
            && self.pod_name.is_none()
            && self.pod_namespace.is_none()
            && self.podman_pod_name.is_none()
    }
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value.filter(|v| !v.is_empty()).cloned()
}

fn kind_of(value: Option<&String>) -> Option<Kind> {
    match value.map(String::as_str) {
        Some("sandbox") => Some(Kind::Sandbox),
        Some("container") => Some(Kind::Container),
        _ => None,
    }
}

/// Names from a containerd bundle. `cri` says the bundle is in the CRI plugin's namespace,
/// where the `io.kubernetes.cri.*` annotations must be present.
pub fn containerd_names(bundle: &OciBundle, cri: bool) -> Result<Names, ParseError> {
    let a = |key: &str| non_empty(bundle.annotations.get(key));
    let kind = kind_of(bundle.annotations.get("io.kubernetes.cri.container-type"));
    if kind.is_none() {
        if cri {
            return Err(ParseError::MissingAnnotations {
                runtime: "containerd",
                prefix: "io.kubernetes.cri.",
            });
        }
        // A container that nerdctl or `ctr` made: no pod, maybe a name.
        return Ok(Names { container_name: a("nerdctl/name"), ..Names::default() });
    }
    let container_name =
        if kind == Some(Kind::Container) { a("io.kubernetes.cri.container-name") } else { None };
    let names = Names {
        kind,
        container_name: container_name.clone(),
        k8s_container_name: container_name,
        image: a("io.kubernetes.cri.image-name"),
        pod_name: a("io.kubernetes.cri.sandbox-name"),
        pod_namespace: a("io.kubernetes.cri.sandbox-namespace"),
        pod_uid: a("io.kubernetes.cri.sandbox-uid"),
        podman_pod_name: None,
    };
    Ok(names)
}

/// Names from a CRI-O bundle.
pub fn crio_names(bundle: &OciBundle) -> Result<Names, ParseError> {
    let a = |key: &str| non_empty(bundle.annotations.get(key));
    // The kubelet's labels, as CRI-O recorded them; a malformed object is ignored in favour of
    // the plain annotations CRI-O also writes.
    let labels: HashMap<String, String> = bundle
        .annotations
        .get("io.kubernetes.cri-o.Labels")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let label = |key: &str| non_empty(labels.get(key)).or_else(|| a(key));
    let kind = kind_of(bundle.annotations.get("io.kubernetes.cri-o.ContainerType"));
    let Some(kind) = kind else {
        return Err(ParseError::MissingAnnotations { runtime: "CRI-O", prefix: "io.kubernetes.cri-o." });
    };
    #[derive(Deserialize)]
    struct Metadata {
        #[serde(default)]
        name: String,
    }
    let metadata_name = || {
        a("io.kubernetes.cri-o.Metadata")
            .and_then(|text| serde_json::from_str::<Metadata>(&text).ok())
            .map(|m| m.name)
            .filter(|n| !n.is_empty())
    };
    let (container_name, k8s_container_name) = match kind {
        Kind::Sandbox => (None, None),
        Kind::Container => {
            let k8s = label("io.kubernetes.container.name").or_else(metadata_name);
            (a("io.kubernetes.cri-o.Name").or_else(|| k8s.clone()), k8s)
        }
    };
    let names = Names {
        kind: Some(kind),
        container_name,
        k8s_container_name,
        image: a("io.kubernetes.cri-o.ImageName"),
        pod_name: label("io.kubernetes.pod.name").or_else(|| a("io.kubernetes.cri-o.KubeName")),
        pod_namespace: label("io.kubernetes.pod.namespace").or_else(|| a("io.kubernetes.cri-o.Namespace")),
        pod_uid: label("io.kubernetes.pod.uid"),
        podman_pod_name: None,
    };
    if names.is_empty() {
        return Err(ParseError::MissingAnnotations { runtime: "CRI-O", prefix: "io.kubernetes.cri-o." });
    }
    Ok(names)
}

/// One container of a containers/storage store (`containers.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreEntry {
    /// The first of the container's names.
    pub name: Option<String>,
    /// The image reference it was created from (`image-name` in the entry's metadata).
    pub image: Option<String>,
}

/// Parses a containers/storage `containers.json`: container id → name and image. The image
/// is in each entry's `metadata`, itself a JSON string written by Podman or CRI-O; an entry
/// whose metadata does not parse keeps its name.
pub fn parse_store(text: &str) -> Result<HashMap<String, StoreEntry>, ParseError> {
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        metadata: String,
    }
    #[derive(Deserialize)]
    struct Metadata {
        #[serde(default, rename = "image-name")]
        image_name: String,
    }
    let entries: Vec<Entry> = serde_json::from_str(text).map_err(ParseError::Store)?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let image = serde_json::from_str::<Metadata>(&e.metadata)
                .ok()
                .map(|m| m.image_name)
                .filter(|i| !i.is_empty());
            let name = e.names.into_iter().find(|n| !n.is_empty());
            (e.id, StoreEntry { name, image })
        })
        .collect())
}

/// The snapshot entries one container's names give: its own attributes, and the pod key and
/// attributes of its pod.
fn to_meta(names: &Names, info: &ContainerInfo) -> (ContainerMeta, Option<(String, Attributes)>) {
    let mut attributes: Attributes = Vec::new();
    if let Some(n) = &names.container_name {
        attributes.push((semconv::CONTAINER_NAME, n.clone().into()));
    }
    if let Some(n) = &names.k8s_container_name {
        attributes.push((semconv::K8S_CONTAINER_NAME, n.clone().into()));
    }
    if let Some(image) = &names.image {
        attributes.extend(crate::resource::image(image));
    }
    // The cgroup path's pod key names the pod resources, so it wins over the annotation's.
    let pod_key = match &info.pod {
        Some(PodRef::Kubernetes { uid, .. }) => Some(uid.clone()),
        Some(PodRef::Podman { id }) => Some(id.clone()),
        None => names.pod_uid.clone(),
    };
    let mut pod_attributes: Attributes = Vec::new();
    if let Some(n) = &names.pod_name {
        pod_attributes.push((semconv::K8S_POD_NAME, n.clone().into()));
    }
    if let Some(n) = &names.pod_namespace {
        pod_attributes.push((semconv::K8S_NAMESPACE_NAME, n.clone().into()));
    }
    if let Some(uid) = &names.pod_uid {
        pod_attributes.push((semconv::K8S_POD_UID, uid.clone().into()));
    }
    if let Some(n) = &names.podman_pod_name {
        pod_attributes.push((semconv::PODMAN_POD_NAME, n.clone().into()));
    }
    let pod = match (&pod_key, pod_attributes.is_empty()) {
        (Some(key), false) => Some((key.clone(), pod_attributes)),
        _ => None,
    };
    (ContainerMeta { pod: pod_key, attributes }, pod)
}

/// Reads a file of at most `limit` bytes as UTF-8.
fn read_bounded(path: &Path, limit: u64) -> Result<String, RuntimeFilesError> {
    let read_error = |source| RuntimeFilesError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file at the limit from a larger one, whatever its
    // size said when it was opened.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(RuntimeFilesError::TooLarge { path: path.to_owned(), limit });
    }
    String::from_utf8(bytes).map_err(|_| RuntimeFilesError::NotUtf8 { path: path.to_owned() })
}

fn read_bundle(path: &Path, limit: u64) -> Result<OciBundle, RuntimeFilesError> {
    let text = read_bounded(path, limit)?;
    parse_bundle(&text).map_err(|source| RuntimeFilesError::Parse { path: path.to_owned(), source })
}

fn is_not_found(error: &RuntimeFilesError) -> bool {
    matches!(error, RuntimeFilesError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Podman's store, re-read only when a container it does not know appears and the file has
/// changed since it was read.
#[derive(Debug, Default)]
struct Store {
    entries: HashMap<String, StoreEntry>,
    modified: Option<SystemTime>,
    /// The sweep generation of the last read attempt: at most one read per sweep.
    tried: u64,
}

/// What is known about one container id.
#[derive(Debug)]
struct Entry {
    /// The sweep generation that last saw the id.
    seen: u64,
    /// When to read the files again after a failure; `None` once read (or nothing to read).
    retry_at: Option<Instant>,
    /// The pod attributes this container contributed, to rebuild pods when containers go.
    pod: Option<(String, Attributes)>,
}

/// The `runtime_files` processor.
pub struct RuntimeFiles {
    config: RuntimeFilesConfig,
    snapshot: Snapshot,
    entries: HashMap<String, Entry>,
    store: Store,
    generation: u64,
}

impl RuntimeFiles {
    pub fn new(config: RuntimeFilesConfig) -> RuntimeFiles {
        RuntimeFiles {
            config,
            snapshot: Snapshot::default(),
            entries: HashMap::new(),
            store: Store::default(),
            generation: 0,
        }
    }

    /// The names known now (for tests and benchmarks).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn task_root(&self) -> PathBuf {
        self.config.containerd_state.join("io.containerd.runtime.v2.task")
    }

    fn storage_dir(&self, root: &Path) -> PathBuf {
        root.join(format!("{}-containers", self.config.storage_driver))
    }

    /// Reads what the files say about one container. `Ok(None)`: nothing to read for its
    /// runtime.
    fn read_names(&mut self, info: &ContainerInfo) -> Result<Option<Names>, RuntimeFilesError> {
        let limit = self.config.max_file_bytes;
        match info.runtime {
            Runtime::Containerd => {
                let root = self.task_root();
                let cri = root.join(K8S_NAMESPACE).join(&info.id).join("config.json");
                match read_bundle(&cri, limit) {
                    Ok(bundle) => containerd_names(&bundle, true)
                        .map(Some)
                        .map_err(|source| RuntimeFilesError::Parse { path: cri, source }),
                    Err(e) if is_not_found(&e) && info.pod.is_none() => {
                        // Not a Kubernetes container: look in containerd's other namespaces.
                        let namespaces = std::fs::read_dir(&root)
                            .map_err(|source| RuntimeFilesError::Read { path: root.clone(), source })?;
                        for ns in namespaces.filter_map(Result::ok) {
                            if ns.file_name() == K8S_NAMESPACE {
                                continue;
                            }
                            let path = ns.path().join(&info.id).join("config.json");
                            match read_bundle(&path, limit) {
                                Ok(bundle) => {
                                    return containerd_names(&bundle, false)
                                        .map(Some)
                                        .map_err(|source| RuntimeFilesError::Parse { path, source });
                                }
                                Err(e) if is_not_found(&e) => continue,
                                Err(e) => return Err(e),
                            }
                        }
                        Err(e)
                    }
                    Err(e) => Err(e),
                }
            }
            Runtime::CriO => {
                let run = self
                    .storage_dir(&self.config.storage_runroot)
                    .join(&info.id)
                    .join("userdata/config.json");
                let bundle = match read_bundle(&run, limit) {
                    Err(e) if is_not_found(&e) => {
                        let path = self
                            .storage_dir(&self.config.storage_root)
                            .join(&info.id)
                            .join("userdata/config.json");
                        let bundle = read_bundle(&path, limit)?;
                        return crio_names(&bundle)
                            .map(Some)
                            .map_err(|source| RuntimeFilesError::Parse { path, source });
                    }
                    other => other?,
                };
                crio_names(&bundle).map(Some).map_err(|source| RuntimeFilesError::Parse { path: run, source })
            }
            Runtime::Podman => self.podman_names(info).map(Some),
            // Docker keeps names in its own files (`config.v2.json`); `docker_api` covers it.
            Runtime::Docker => Ok(None),
        }
    }

    fn podman_names(&mut self, info: &ContainerInfo) -> Result<Names, RuntimeFilesError> {
        let dir = self.storage_dir(&self.config.storage_root);
        if !self.store.entries.contains_key(&info.id) && self.store.tried != self.generation {
            self.store.tried = self.generation;
            let path = dir.join("containers.json");
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(|source| RuntimeFilesError::Read { path: path.clone(), source })?;
            if self.store.modified != Some(modified) {
                let text = read_bounded(&path, self.config.max_file_bytes.saturating_mul(STORE_SIZE_FACTOR))?;
                self.store.entries =
                    parse_store(&text).map_err(|source| RuntimeFilesError::Parse { path, source })?;
                self.store.modified = Some(modified);
            }
        }
        let entry = self.store.entries.get(&info.id).cloned().unwrap_or_default();
        let mut names = Names { container_name: entry.name, image: entry.image, ..Names::default() };
        // The pod's infra container is named `<first 12 of the pod id>-infra`; its hostname is
        // the pod's name unless the pod was given another.
        if let (Some(PodRef::Podman { id: pod_id }), Some(name)) = (&info.pod, &names.container_name) {
            let infra_name = format!("{}-infra", pod_id.get(..12).unwrap_or(pod_id));
            if *name == infra_name {
                names.kind = Some(Kind::Sandbox);
                let path = dir.join(&info.id).join("userdata/config.json");
                let bundle = read_bundle(&path, self.config.max_file_bytes)?;
                names.podman_pod_name = non_empty(bundle.hostname.as_ref());
            }
        }
        Ok(names)
    }

    /// Adds a container's names to the snapshot; its pod's attributes fill what the pod does
    /// not have yet.
    fn insert(&mut self, info: &ContainerInfo, names: &Names) -> Option<(String, Attributes)> {
        let (meta, pod) = to_meta(names, info);
        // A sandbox has no names of its own but is known (not a miss): it carries its pod's.
        if !meta.attributes.is_empty() || pod.is_some() {
            self.snapshot.containers.insert(info.id.clone(), meta);
        }
        if let Some((key, attributes)) = &pod {
            merge_pod(&mut self.snapshot.pods, key, attributes);
        }
        pod
    }

    /// Reads the files of containers not seen before and forgets those that are gone.
    fn update(&mut self, containers: &[Arc<ContainerInfo>]) {
        self.generation += 1;
        let now = Instant::now();
        for info in containers {
            if let Some(entry) = self.entries.get_mut(&info.id) {
                entry.seen = self.generation;
                if entry.retry_at.is_none_or(|at| now < at) {
                    continue;
                }
            }
            let (retry_at, pod) = match self.read_names(info) {
                Ok(Some(names)) => (None, self.insert(info, &names)),
                Ok(None) => (None, None),
                Err(error) => {
                    Telemetry::inc(&Telemetry::global().metadata_errors);
                    warn_limited!(
                        "runtime-files-unusable",
                        container = %info.id,
                        runtime = info.runtime.as_str(),
                        %error,
                        "Cannot take names from a runtime file; the container is exported with its ids."
                    );
                    (Some(now + RETRY_AFTER), None)
                }
            };
            self.entries.insert(info.id.clone(), Entry { seen: self.generation, retry_at, pod });
        }
        // Every id of this sweep has an entry now (ids are unique), so more entries than ids
        // means some are gone.
        if self.entries.len() > containers.len() {
            self.forget_gone();
        }
    }

    fn forget_gone(&mut self) {
        let generation = self.generation;
        let before = self.entries.len();
        self.entries.retain(|_, e| e.seen == generation);
        if self.entries.len() == before {
            return;
        }
        let entries = &self.entries;
        self.snapshot.containers.retain(|id, _| entries.contains_key(id));
        self.store.entries.retain(|id, _| entries.contains_key(id));
        // Pods are rebuilt from the containers still there.
        self.snapshot.pods.clear();
        for entry in self.entries.values() {
            if let Some((key, attributes)) = &entry.pod {
                merge_pod(&mut self.snapshot.pods, key, attributes);
            }
        }
    }
}

fn merge_pod(pods: &mut HashMap<String, PodMeta>, key: &str, attributes: &Attributes) {
    let pod = pods.entry(key.to_owned()).or_default();
    for (k, v) in attributes {
        if !pod.attributes.iter().any(|(existing, _)| existing == k) {
            pod.attributes.push((k, v.clone()));
        }
    }
}

impl Processor for RuntimeFiles {
    fn process(&mut self, ctx: &SweepContext, sweep: &mut Sweep) {
        self.update(&ctx.containers);
        let AttachStats { container_misses, .. } = attach(&self.snapshot, sweep);
        Telemetry::global().metadata_misses.fetch_add(container_misses, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_sandbox_gets_pod_names_only() {
        let bundle = parse_bundle(
            r#"{"ociVersion":"1.0.2","hostname":"web-0","annotations":{
                "io.kubernetes.cri.container-type":"sandbox",
                "io.kubernetes.cri.sandbox-id":"abc",
                "io.kubernetes.cri.sandbox-name":"web-0",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.sandbox-uid":"u-1",
                "io.kubernetes.cri.sandbox-log-directory":"/var/log/pods/x"}}"#,
        )
        .unwrap();
        let names = containerd_names(&bundle, true).unwrap();
        assert_eq!(names.kind, Some(Kind::Sandbox));
        assert_eq!(names.container_name, None);
        assert_eq!(names.k8s_container_name, None);
        assert_eq!(names.pod_name.as_deref(), Some("web-0"));
        assert_eq!(names.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(names.pod_uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn containerd_bundle_without_cri_annotations_is_an_error_only_in_the_cri_namespace() {
        let bundle = parse_bundle(r#"{"annotations":{"nerdctl/name":"db"}}"#).unwrap();
        assert!(matches!(containerd_names(&bundle, true), Err(ParseError::MissingAnnotations { .. })));
        assert_eq!(containerd_names(&bundle, false).unwrap().container_name.as_deref(), Some("db"));
    }

    #[test]
    fn crio_labels_json_wins_and_plain_annotations_fill_in() {
        let bundle = parse_bundle(
            r#"{"annotations":{
                "io.kubernetes.cri-o.ContainerType":"container",
                "io.kubernetes.cri-o.Name":"k8s_app_web-0_shop_u-1_0",
                "io.kubernetes.cri-o.Labels":"{\"io.kubernetes.container.name\":\"app\",\"io.kubernetes.pod.name\":\"web-0\",\"io.kubernetes.pod.uid\":\"u-1\"}",
                "io.kubernetes.pod.namespace":"shop",
                "io.kubernetes.cri-o.ImageName":"quay.io/org/app:2.1"}}"#,
        )
        .unwrap();
        let names = crio_names(&bundle).unwrap();
        assert_eq!(names.k8s_container_name.as_deref(), Some("app"));
        assert_eq!(names.container_name.as_deref(), Some("k8s_app_web-0_shop_u-1_0"));
        assert_eq!(names.pod_name.as_deref(), Some("web-0"));
        assert_eq!(names.pod_namespace.as_deref(), Some("shop"), "from the plain annotation");
        assert_eq!(names.image.as_deref(), Some("quay.io/org/app:2.1"));
    }

    #[test]
    fn store_entries_give_names_and_images_and_tolerate_bad_metadata() {
        let store = parse_store(
            r#"[{"id":"a","names":["web"],"metadata":"{\"image-name\":\"localhost/bb:1\"}"},
                {"id":"b","names":[],"metadata":"not json"}]"#,
        )
        .unwrap();
        assert_eq!(store["a"], StoreEntry { name: Some("web".into()), image: Some("localhost/bb:1".into()) });
        assert_eq!(store["b"], StoreEntry::default());
        assert!(matches!(parse_store("{}"), Err(ParseError::Store(_))));
    }

    #[test]
    fn bundles_that_are_not_oci_configs_are_rejected() {
        for bad in ["", "[]", "{\"annotations\":{\"k\":1}}", "{\"annotations\":", "null"] {
            assert!(parse_bundle(bad).is_err(), "{bad:?} parsed");
        }
    }
}
