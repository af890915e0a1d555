//! The pods this node runs, kept as the [`Snapshot`] the sweep thread reads, with deleted ones
//! held for a grace period.
//!
//! There is one copy of the names: the snapshot itself, shared (`Arc`) with the
//! [`SharedSnapshot`](crate::processors::metadata::SharedSnapshot). A change copies it once
//! (copy-on-write, while the published one is still referenced) and the next publish replaces
//! the old one, so between changes the processor holds one snapshot, not a cache and a copy.
//! Besides it, a small index by API UID: the pod's key and when it was deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pods::CompactPod;
use crate::processors::metadata::{ContainerMeta, PodMeta, Snapshot};

#[derive(Debug)]
struct Entry {
    /// The pod's key in the snapshot (the kubelet's UID).
    key: String,
    /// When a watch event or a relist said the pod is gone.
    deleted_at: Option<Instant>,
}

/// Pods by API UID, and the snapshot built from them.
#[derive(Debug)]
pub struct PodCache {
    index: HashMap<String, Entry>,
    snapshot: Arc<Snapshot>,
    grace: Duration,
}

impl PodCache {
    pub fn new(grace: Duration) -> PodCache {
        PodCache { index: HashMap::new(), snapshot: Arc::default(), grace }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Drops a pod's names and containers from the snapshot.
    fn remove_names(snapshot: &mut Snapshot, key: &str) {
        snapshot.pods.remove(key);
        snapshot.containers.retain(|_, c| c.pod.as_deref() != Some(key));
    }

    /// An added or modified pod (a deleted pod that comes back is live again).
    pub fn upsert(&mut self, pod: CompactPod) {
        let snapshot = Arc::make_mut(&mut self.snapshot);
        if let Some(old) = self.index.get(&pod.api_uid) {
            Self::remove_names(snapshot, &old.key);
        }
        let known = self.index.get(&pod.api_uid).is_some_and(|e| e.key == pod.key);
        if !known && snapshot.pods.contains_key(&pod.key) {
            // Another API object held this key: a static pod's mirror deleted and created
            // again (same kubelet UID, new API UID). The new one replaces it, and the old
            // one's expiry must not take the names away.
            self.index.retain(|_, e| e.key != pod.key);
            Self::remove_names(snapshot, &pod.key);
        }
        // The pod's attributes have their final length: no spare capacity kept.
        let mut attributes = pod.attributes;
        attributes.shrink_to_fit();
        for c in pod.containers {
            let mut attrs = c.attributes;
            attrs.shrink_to_fit();
            snapshot.containers.insert(c.id, ContainerMeta { pod: Some(pod.key.clone()), attributes: attrs });
        }
        snapshot.pods.insert(pod.key.clone(), PodMeta { attributes });
        self.index.insert(pod.api_uid, Entry { key: pod.key, deleted_at: None });
    }

    /// A deleted pod: kept, with its names, until the grace period has passed.
    pub fn delete(&mut self, api_uid: &str, now: Instant) {
        if let Some(entry) = self.index.get_mut(api_uid) {
            entry.deleted_at.get_or_insert(now);
        }
    }

    /// A complete list replaces the cache: listed pods are live, and the ones it no longer
    /// has (deleted while no watch was open) start their grace period now.
    /// Built afresh in one pass (not pod by pod, which would scan every container per pod).
    pub fn replace_all(&mut self, listed: Vec<CompactPod>, now: Instant) {
        let listed_uids: HashSet<&str> = listed.iter().map(|p| p.api_uid.as_str()).collect();
        let old_index = std::mem::take(&mut self.index);
        let old = std::mem::take(&mut self.snapshot);
        let mut fresh = Snapshot::default();
        let mut kept_keys: HashSet<&str> = HashSet::new();
        for (uid, entry) in &old_index {
            if !listed_uids.contains(uid.as_str()) {
                kept_keys.insert(entry.key.as_str());
                if let Some(meta) = old.pods.get(&entry.key) {
                    fresh.pods.insert(entry.key.clone(), meta.clone());
                }
            }
        }
        for (id, meta) in &old.containers {
            if meta.pod.as_deref().is_some_and(|k| kept_keys.contains(k)) {
                fresh.containers.insert(id.clone(), meta.clone());
            }
        }
        drop(kept_keys);
        for (uid, mut entry) in old_index {
            if !listed_uids.contains(uid.as_str()) {
                entry.deleted_at.get_or_insert(now);
                self.index.insert(uid, entry);
            }
        }
        drop(listed_uids);
        drop(old);
        self.snapshot = Arc::new(fresh);
        for pod in listed {
            self.upsert(pod);
        }
    }

    /// Forgets pods deleted more than the grace period ago; returns whether any went.
    pub fn prune(&mut self, now: Instant) -> bool {
        let grace = self.grace;
        let expired: Vec<String> = self
            .index
            .iter()
            .filter(|(_, e)| e.deleted_at.is_some_and(|at| now.saturating_duration_since(at) >= grace))
            .map(|(uid, _)| uid.clone())
            .collect();
        if expired.is_empty() {
            return false;
        }
        let snapshot = Arc::make_mut(&mut self.snapshot);
        for uid in expired {
            if let Some(entry) = self.index.remove(&uid) {
                Self::remove_names(snapshot, &entry.key);
            }
        }
        true
    }

    /// When the next deleted pod leaves the cache, if any is waiting.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.index.values().filter_map(|e| e.deleted_at).min().map(|at| at + self.grace)
    }

    /// What the sweep thread reads: every container id and pod key with its attributes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot)
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
        assert!(cache.snapshot().pods.is_empty());
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

    #[test]
    fn a_recreated_mirror_pod_keeps_its_names_when_the_old_one_expires() {
        let t0 = Instant::now();
        let mut cache = PodCache::new(Duration::from_secs(10));
        let mirror =
            |api_uid: &str| CompactPod { api_uid: api_uid.into(), key: "hash".into(), ..pod("x", "c1") };
        cache.upsert(mirror("old"));
        cache.delete("old", t0);
        cache.upsert(mirror("new"));
        assert!(!cache.prune(t0 + Duration::from_secs(11)), "the old mirror was already replaced");
        assert!(cache.snapshot().pods.contains_key("hash"));
        assert!(cache.snapshot().containers.contains_key("c1"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_modified_pod_replaces_its_containers_and_a_published_snapshot_does_not_change() {
        let mut cache = PodCache::new(Duration::from_secs(10));
        cache.upsert(pod("u1", "c1"));
        let published = cache.snapshot();
        // The container restarted: a new id.
        cache.upsert(pod("u1", "c1-restarted"));
        let now = cache.snapshot();
        assert_eq!(now.containers.keys().collect::<Vec<_>>(), ["c1-restarted"]);
        assert_eq!(published.containers.keys().collect::<Vec<_>>(), ["c1"], "readers keep what they took");
    }
}
