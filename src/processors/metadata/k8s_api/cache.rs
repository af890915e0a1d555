//! The pods this node runs, kept compact, with deleted ones held for a grace period, and the
//! [`Snapshot`] the sweep thread reads built from them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::pods::CompactPod;
use crate::processors::metadata::{ContainerMeta, PodMeta, Snapshot};

#[derive(Debug)]
struct Entry {
    pod: CompactPod,
    /// When a watch event or a relist said the pod is gone.
    deleted_at: Option<Instant>,
}

/// Pods by API UID.
#[derive(Debug)]
pub struct PodCache {
    pods: HashMap<String, Entry>,
    grace: Duration,
}

impl PodCache {
    pub fn new(grace: Duration) -> PodCache {
        PodCache { pods: HashMap::new(), grace }
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// An added or modified pod (a deleted pod that comes back is live again).
    pub fn upsert(&mut self, pod: CompactPod) {
        self.pods.insert(pod.api_uid.clone(), Entry { pod, deleted_at: None });
    }

    /// A deleted pod: kept, with its names, until the grace period has passed.
    pub fn delete(&mut self, api_uid: &str, now: Instant) {
        if let Some(entry) = self.pods.get_mut(api_uid) {
            entry.deleted_at.get_or_insert(now);
        }
    }

    /// A complete list replaces the cache: listed pods are live, and the ones it no longer
    /// has (deleted while no watch was open) start their grace period now.
    pub fn replace_all(&mut self, listed: Vec<CompactPod>, now: Instant) {
        let mut old = std::mem::take(&mut self.pods);
        for pod in listed {
            old.remove(&pod.api_uid);
            self.upsert(pod);
        }
        for (uid, mut entry) in old {
            entry.deleted_at.get_or_insert(now);
            self.pods.insert(uid, entry);
        }
    }

    /// Forgets pods deleted more than the grace period ago; returns whether any went.
    pub fn prune(&mut self, now: Instant) -> bool {
        let before = self.pods.len();
        let grace = self.grace;
        self.pods.retain(|_, e| e.deleted_at.is_none_or(|at| now.saturating_duration_since(at) < grace));
        self.pods.len() != before
    }

    /// When the next deleted pod leaves the cache, if any is waiting.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.pods.values().filter_map(|e| e.deleted_at).min().map(|at| at + self.grace)
    }

    /// What the sweep thread reads: every container id and pod key with its attributes.
    pub fn snapshot(&self) -> Snapshot {
        let containers = self.pods.values().map(|e| e.pod.containers.len()).sum();
        let mut snapshot = Snapshot {
            containers: HashMap::with_capacity(containers),
            pods: HashMap::with_capacity(self.pods.len()),
        };
        for Entry { pod, .. } in self.pods.values() {
            for c in &pod.containers {
                snapshot.containers.insert(
                    c.id.clone(),
                    ContainerMeta { pod: Some(pod.key.clone()), attributes: c.attributes.clone() },
                );
            }
            snapshot.pods.insert(pod.key.clone(), PodMeta { attributes: pod.attributes.clone() });
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::metadata::k8s_api::pods::CompactContainer;
    use crate::semconv;

    fn pod(uid: &str, container: &str) -> CompactPod {
        CompactPod {
            api_uid: uid.into(),
            key: uid.into(),
            node_name: None,
            attributes: vec![(semconv::K8S_POD_NAME, format!("pod-{uid}").into())],
            containers: vec![CompactContainer {
                id: container.into(),
                attributes: vec![(semconv::K8S_CONTAINER_NAME, "c".into())],
            }],
        }
    }

    #[test]
    fn a_deleted_pod_stays_for_the_grace_period_then_goes() {
        let t0 = Instant::now();
        let mut cache = PodCache::new(Duration::from_secs(60));
        cache.upsert(pod("u1", "c1"));
        cache.delete("u1", t0);
        assert!(!cache.prune(t0 + Duration::from_secs(59)));
        assert!(cache.snapshot().containers.contains_key("c1"));
        assert_eq!(cache.next_expiry(), Some(t0 + Duration::from_secs(60)));
        assert!(cache.prune(t0 + Duration::from_secs(60)));
        assert!(cache.snapshot().containers.is_empty());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_relist_keeps_listed_pods_live_and_starts_the_grace_of_missing_ones() {
        let t0 = Instant::now();
        let mut cache = PodCache::new(Duration::from_secs(10));
        cache.upsert(pod("u1", "c1"));
        cache.upsert(pod("u2", "c2"));
        cache.delete("u2", t0);
        cache.replace_all(vec![pod("u2", "c2"), pod("u3", "c3")], t0 + Duration::from_secs(5));
        cache.prune(t0 + Duration::from_secs(14));
        let s = cache.snapshot();
        assert!(s.containers.contains_key("c1"), "missing from the relist: in its grace period");
        assert!(s.containers.contains_key("c2"), "listed again: live");
        assert!(s.containers.contains_key("c3"));
        cache.prune(t0 + Duration::from_secs(15));
        let s = cache.snapshot();
        assert!(!s.containers.contains_key("c1"));
        assert_eq!(s.containers.len(), 2);
        assert_eq!(s.containers["c2"].pod.as_deref(), Some("u2"));
        assert_eq!(s.pods["u3"].attributes, vec![(semconv::K8S_POD_NAME, "pod-u3".into())]);
    }
}
