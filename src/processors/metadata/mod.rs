//! What the metadata processors share: names for containers and pods, kept in a snapshot
//! that a background task (or, for local files, the processor itself) replaces, and attached
//! to the sweep's resources by one function.
//!
//! Every metadata processor (`k8s_api`, `runtime_files`, `docker_api`) produces the same
//! [`Snapshot`]: attribute lists per container id and per pod key, already in semantic
//! convention names. [`attach`] puts them on the resources, filling only keys a resource does
//! not have yet, so processors chain in the order the pipeline lists them and a later one
//! fills only what the earlier ones left empty.
//!
//! The sweep thread never waits on the network: it takes the current `Arc<Snapshot>` from a
//! [`SharedSnapshot`] (a read lock held for one `Arc` clone) and works from that.

mod background;
pub mod docker_api;
pub mod image_ref;
pub mod k8s_api;
pub mod runtime_files;

pub use background::BackgroundTask;
pub use image_ref::{parse_image_reference, ImageRef};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Instant;

use crate::model::{AttrValue, Attributes, ResourceId, Sweep};
use crate::semconv;

/// Names of one container, in semantic-convention attribute names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerMeta {
    /// The key of the pod the container belongs to in [`Snapshot::pods`] (a Kubernetes pod
    /// UID or a Podman pod id), when the processor knows it. The cgroup path's `k8s.pod.uid`
    /// or `podman.pod.id` on the resource is used otherwise.
    pub pod: Option<String>,
    /// `container.name`, `k8s.container.name`, `container.image.name`, …
    pub attributes: Attributes,
}

/// Names of one pod (Kubernetes or Podman): put on the pod's resource and on every container
/// resource of the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMeta {
    /// `k8s.pod.name`, `k8s.namespace.name`, owners, allowlisted labels, …
    pub attributes: Attributes,
}

/// One processor's view of the node at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// By full 64-hex container id.
    pub containers: HashMap<String, ContainerMeta>,
    /// By Kubernetes pod UID, or Podman pod id.
    pub pods: HashMap<String, PodMeta>,
}

/// What [`attach`] did with one sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachStats {
    /// Container resources the snapshot knew.
    pub containers_named: u64,
    /// Container resources the snapshot did not know (exported with ids only).
    pub container_misses: u64,
}

/// The pod key a resource's own attributes carry (from the cgroup path).
fn pod_key_of(attributes: &Attributes) -> Option<&str> {
    attributes.iter().find_map(|(k, v)| match v {
        AttrValue::Str(s) if *k == semconv::K8S_POD_UID || *k == semconv::PODMAN_POD_ID => Some(s.as_str()),
        _ => None,
    })
}

/// Puts the snapshot's names on the sweep's resources, never replacing an attribute a
/// resource already has. Container resources get their pod's attributes too; pod resources
/// (keyed by UID) get the pod's.
pub fn attach(snapshot: &Snapshot, sweep: &mut Sweep) -> AttachStats {
    let mut stats = AttachStats::default();
    for resource in &mut sweep.resources {
        match &resource.id {
            ResourceId::Container(id) => {
                let meta = snapshot.containers.get(id);
                if meta.is_some() {
                    stats.containers_named += 1;
                } else {
                    stats.container_misses += 1;
                }
                let pod = meta
                    .and_then(|m| m.pod.as_deref())
                    .or_else(|| pod_key_of(&resource.attributes))
                    .and_then(|key| snapshot.pods.get(key));
                // Own attributes first: `container.name` from the container wins over nothing
                // the pod could say, and the pod's cannot clash with them.
                if let Some(meta) = meta {
                    for (key, value) in &meta.attributes {
                        resource.set_attribute_if_absent(key, value);
                    }
                }
                if let Some(pod) = pod {
                    for (key, value) in &pod.attributes {
                        resource.set_attribute_if_absent(key, value);
                    }
                }
            }
            ResourceId::Pod(uid) => {
                if let Some(pod) = snapshot.pods.get(uid) {
                    for (key, value) in &pod.attributes {
                        resource.set_attribute_if_absent(key, value);
                    }
                }
            }
        }
    }
    stats
}

/// The current snapshot, replaced whole by its writer and read by the sweep thread.
#[derive(Debug, Default)]
pub struct SharedSnapshot {
    current: RwLock<Arc<Snapshot>>,
}

impl SharedSnapshot {
    pub fn new() -> Arc<SharedSnapshot> {
        Arc::new(SharedSnapshot::default())
    }

    /// The snapshot in force; holds the lock only for the `Arc` clone.
    pub fn load(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.store_arc(Arc::new(snapshot));
    }

    /// Publishes a snapshot its writer keeps too (a copy-on-write cache: one copy of the
    /// names between changes instead of a cache and a published copy).
    pub fn store_arc(&self, snapshot: Arc<Snapshot>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

/// Set once a processor's cache has been filled for the first time (a first list answered).
/// `/readyz` reads it without a lock; start-up waits on it, up to a configured time, so a
/// restart does not export nameless series.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    ready: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        let _guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.ready.store(true, Ordering::Release);
        self.inner.changed.notify_all();
    }

    /// Blocks until ready or until `deadline`; returns whether it is ready.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !self.is_ready() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.inner.changed.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

/// An attribute key built from a prefix and a key from the config's allowlist
/// (`k8s.pod.label.app`). Keys are `&'static str` in the data model; allowlisted keys are few
/// and fixed at start, so each distinct one is leaked once and reused.
pub fn allowlisted_key(prefix: &str, key: &str) -> &'static str {
    static KEYS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let full = format!("{prefix}{key}");
    let mut keys = KEYS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = keys.get(full.as_str()) {
        return existing;
    }
    let leaked: &'static str = Box::leak(full.into_boxed_str());
    keys.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, Value};
    use std::time::Duration;
    use std::time::SystemTime;

    fn sweep_with(resources: Vec<(ResourceId, Attributes)>) -> Sweep {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
        for (id, attrs) in resources {
            let r = sweep.resource_mut(id, || attrs);
            r.points.push(Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.0)));
        }
        sweep
    }

    fn str_attr<'a>(sweep: &'a Sweep, id: &ResourceId, key: &str) -> Option<&'a str> {
        match sweep.resource(id)?.attribute(key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn containers_get_their_own_and_their_pods_names_pods_get_theirs_unknown_counts_a_miss() {
        let a = ResourceId::Container("a".into());
        let b = ResourceId::Container("b".into());
        let pod = ResourceId::Pod("uid-1".into());
        let mut sweep = sweep_with(vec![
            (a.clone(), vec![(semconv::K8S_POD_UID, "uid-1".into())]),
            (b.clone(), vec![(semconv::K8S_POD_UID, "uid-1".into())]),
            (pod.clone(), vec![(semconv::K8S_POD_UID, "uid-1".into())]),
        ]);
        let mut snapshot = Snapshot::default();
        snapshot.containers.insert(
            "a".into(),
            ContainerMeta { pod: None, attributes: vec![(semconv::K8S_CONTAINER_NAME, "web".into())] },
        );
        snapshot.pods.insert(
            "uid-1".into(),
            PodMeta {
                attributes: vec![
                    (semconv::K8S_POD_NAME, "web-7d4b9c-x2x".into()),
                    (semconv::K8S_NAMESPACE_NAME, "shop".into()),
                ],
            },
        );
        let stats = attach(&snapshot, &mut sweep);
        assert_eq!(stats, AttachStats { containers_named: 1, container_misses: 1 });
        assert_eq!(str_attr(&sweep, &a, semconv::K8S_CONTAINER_NAME), Some("web"));
        assert_eq!(str_attr(&sweep, &a, semconv::K8S_POD_NAME), Some("web-7d4b9c-x2x"));
        // b is unknown to the snapshot but its cgroup path names the pod: it gets the pod's names.
        assert_eq!(str_attr(&sweep, &b, semconv::K8S_NAMESPACE_NAME), Some("shop"));
        assert_eq!(str_attr(&sweep, &b, semconv::K8S_CONTAINER_NAME), None);
        assert_eq!(str_attr(&sweep, &pod, semconv::K8S_POD_NAME), Some("web-7d4b9c-x2x"));
    }

    #[test]
    fn a_later_snapshot_fills_only_what_an_earlier_one_left_empty() {
        let a = ResourceId::Container("a".into());
        let mut sweep = sweep_with(vec![(a.clone(), vec![])]);
        let first = Snapshot {
            containers: [(
                "a".to_owned(),
                ContainerMeta { pod: None, attributes: vec![(semconv::CONTAINER_NAME, "from-first".into())] },
            )]
            .into(),
            pods: HashMap::new(),
        };
        let second = Snapshot {
            containers: [(
                "a".to_owned(),
                ContainerMeta {
                    pod: None,
                    attributes: vec![
                        (semconv::CONTAINER_NAME, "from-second".into()),
                        (semconv::CONTAINER_IMAGE_NAME, "busybox".into()),
                    ],
                },
            )]
            .into(),
            pods: HashMap::new(),
        };
        attach(&first, &mut sweep);
        attach(&second, &mut sweep);
        assert_eq!(str_attr(&sweep, &a, semconv::CONTAINER_NAME), Some("from-first"));
        assert_eq!(str_attr(&sweep, &a, semconv::CONTAINER_IMAGE_NAME), Some("busybox"));
        let names: Vec<_> = sweep.resource(&a).unwrap().attributes.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, [semconv::CONTAINER_NAME, semconv::CONTAINER_IMAGE_NAME], "no duplicate keys");
    }

    #[test]
    fn readiness_wait_returns_false_at_the_deadline_and_true_once_set() {
        let r = Readiness::new();
        assert!(!r.wait_until(Instant::now() + Duration::from_millis(20)));
        let setter = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            setter.set_ready();
        });
        assert!(r.wait_until(Instant::now() + Duration::from_secs(5)));
        t.join().unwrap();
    }

    #[test]
    fn allowlisted_keys_are_interned() {
        let a = allowlisted_key(semconv::K8S_POD_LABEL_PREFIX, "app");
        let b = allowlisted_key(semconv::K8S_POD_LABEL_PREFIX, "app");
        assert_eq!(a, "k8s.pod.label.app");
        assert!(std::ptr::eq(a, b));
    }
}
