//! The names the `docker_api` task keeps and how the API's answers change them: list entries
//! checked and turned into attributes, the cache's two copies (one published, one changed),
//! and what each event asks of the cache.

use std::sync::Arc;

use bollard::models::{ContainerSummary, EventMessage, EventMessageTypeEnum};
use serde::Deserialize;

use super::ApiError;
use crate::agent_counters::Telemetry;
use crate::model::{AttrValue, Attributes};
use crate::processors::metadata::{ContainerMeta, PodMeta, SharedSnapshot, Snapshot};
use crate::semconv;
use crate::warn_limited;

/// Longest name, image or label value kept; longer ones are left out (a hostile or broken
/// daemon cannot make every series carry kilobytes).
pub(super) const MAX_VALUE_LEN: usize = 1024;
/// Most containers the cache holds; past it new containers are exported with ids only.
pub(super) const MAX_CONTAINERS: usize = 65_536;

/// A container's own name (after its leading `/`): not a link alias (`other/alias`), and
/// short enough to keep.
pub(super) fn own_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_VALUE_LEN && !name.contains('/')
}

/// The attributes of one container from its list entry.
pub(super) fn container_attributes(
    summary: &ContainerSummary,
    labels: &[(String, &'static str)],
) -> Attributes {
    let mut attributes: Attributes = Vec::new();
    let fits = |s: &str| !s.is_empty() && s.len() <= MAX_VALUE_LEN;
    // Docker lists names with a leading `/` (and links as `/other/alias`): the first name
    // without a second `/` is the container's own.
    let name =
        summary.names.iter().flatten().map(|n| n.strip_prefix('/').unwrap_or(n)).find(|n| !n.contains('/'));
    if let Some(name) = name.filter(|n| own_name(n)) {
        attributes.push((semconv::CONTAINER_NAME, AttrValue::text(name)));
    }
    if let Some(image) = summary.image.as_deref().filter(|i| fits(i)) {
        attributes.extend(crate::resource::image(image));
    }
    if let Some(values) = &summary.labels {
        for (key, attribute) in labels {
            if let Some(value) = values.get(key).filter(|v| v.len() <= MAX_VALUE_LEN) {
                attributes.push((attribute, AttrValue::text(value)));
            }
        }
    }
    attributes
}

/// A full container id, or nothing: ids are map keys and must match the cgroup's.
pub(super) fn valid_id(id: Option<&str>) -> Option<&str> {
    id.filter(|id| crate::model::is_container_id(id))
}

/// One entry of Podman's `/libpod/containers/json`: only what the pod name needs.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LibpodContainer {
    #[serde(rename = "Id")]
    pub(super) id: String,
    #[serde(rename = "Pod", default)]
    pod: String,
    #[serde(rename = "PodName", default)]
    pod_name: String,
}

/// One change to the names, kept so that it can be applied to the cache's second copy too.
#[derive(Debug, Clone)]
pub(super) enum Change {
    /// A container as the list gave it (id checked, attributes built).
    Put { id: String, attributes: Attributes },
    /// The container is gone (and pods left without containers with it).
    Forget(String),
    /// A cached container's new name.
    Rename { id: String, name: String },
    /// Podman's pods of listed containers: (container id, pod id, pod name).
    PodmanPods(Vec<(String, String, String)>),
}

/// Applies one change; `report` is false when it is applied again to the second copy, so that
/// a rejected entry is counted and logged once.
pub(super) fn apply_change(snapshot: &mut Snapshot, change: &Change, report: bool) {
    match change {
        Change::Put { id, attributes } => {
            if snapshot.containers.len() >= MAX_CONTAINERS && !snapshot.containers.contains_key(id) {
                if report {
                    count_error();
                    warn_limited!(
                        "docker-api-full",
                        limit = MAX_CONTAINERS,
                        "The docker_api cache is full; new containers are exported with ids only."
                    );
                }
                return;
            }
            let pod = snapshot.containers.get(id).and_then(|m| m.pod.clone());
            snapshot.containers.insert(id.clone(), ContainerMeta { pod, attributes: attributes.clone() });
        }
        Change::Forget(id) => {
            if let Some(gone) = snapshot.containers.remove(id) {
                if gone.pod.is_some() {
                    prune_pods(snapshot);
                }
            }
        }
        Change::Rename { id, name } => {
            let Some(meta) = snapshot.containers.get_mut(id) else { return };
            let value = AttrValue::text(name);
            match meta.attributes.iter_mut().find(|(key, _)| *key == semconv::CONTAINER_NAME) {
                Some((_, old)) => *old = value,
                None => meta.attributes.insert(0, (semconv::CONTAINER_NAME, value)),
            }
        }
        Change::PodmanPods(entries) => {
            let mut moved = false;
            for (id, pod, pod_name) in entries {
                // Only a pod a cached container names is kept: the pods are never more than
                // the containers, which MAX_CONTAINERS bounds.
                let Some(meta) = snapshot.containers.get_mut(id) else { continue };
                moved |= meta.pod.as_ref().is_some_and(|old| old != pod);
                meta.pod = Some(pod.clone());
                if !pod_name.is_empty() {
                    snapshot.pods.insert(
                        pod.clone(),
                        PodMeta { attributes: vec![(semconv::PODMAN_POD_NAME, AttrValue::text(pod_name))] },
                    );
                }
            }
            if moved {
                prune_pods(snapshot);
            }
        }
    }
}

/// Drops pods no cached container belongs to any more.
pub(super) fn prune_pods(snapshot: &mut Snapshot) {
    let live: std::collections::HashSet<&str> =
        snapshot.containers.values().filter_map(|m| m.pod.as_deref()).collect();
    snapshot.pods.retain(|k, _| live.contains(k.as_str()));
}

/// The task's names in two copies, so that publishing a batch of events copies nothing: the
/// sweep thread reads `front` (through the [`SharedSnapshot`]); changes go to `back`, which is
/// then published and becomes `front`, and the old front, no longer published, gets the same
/// changes before the next batch (by then no sweep holds it, so it is changed in place).
#[derive(Default)]
pub(super) struct Cache {
    /// The copy published last.
    pub(super) front: Arc<Snapshot>,
    /// The copy changes are applied to.
    pub(super) back: Arc<Snapshot>,
    /// Changes `back` has not had yet: the batch published last.
    pub(super) behind: Vec<Change>,
    /// Changes in `back` and not yet published.
    pub(super) pending: Vec<Change>,
}

impl Cache {
    /// Brings `back` up to date: copied only if a sweep still holds it from two publications
    /// ago.
    pub(super) fn catch_up(&mut self) {
        if self.behind.is_empty() {
            return;
        }
        let back = Arc::make_mut(&mut self.back);
        for change in self.behind.drain(..) {
            apply_change(back, &change, false);
        }
    }

    /// The names as they are now, published or not.
    pub(super) fn view(&mut self) -> &Snapshot {
        self.catch_up();
        &self.back
    }

    pub(super) fn change(&mut self, change: Change) {
        self.catch_up();
        apply_change(Arc::make_mut(&mut self.back), &change, true);
        self.pending.push(change);
    }

    /// Publishes what changed since the last publication, if anything did.
    pub(super) fn publish(&mut self, shared: &SharedSnapshot) {
        if self.pending.is_empty() {
            return;
        }
        shared.store_arc(Arc::clone(&self.back));
        std::mem::swap(&mut self.front, &mut self.back);
        self.behind = std::mem::take(&mut self.pending);
    }

    /// Replaces everything (a fresh list) and publishes it.
    pub(super) fn reset(&mut self, snapshot: Snapshot, shared: &SharedSnapshot) {
        self.front = Arc::new(snapshot);
        self.back = Arc::clone(&self.front);
        self.behind.clear();
        self.pending.clear();
        shared.store_arc(Arc::clone(&self.front));
    }

    /// Whether both copies hold the same names once `back` has caught up (for the fuzz target).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn in_step(&mut self) -> bool {
        self.catch_up();
        self.pending.is_empty() && self.front == self.back
    }

    pub(super) fn contains(&mut self, id: &str) -> bool {
        self.view().containers.contains_key(id)
    }
}

/// The change a list entry makes, or `None` (counted and logged) without a valid id.
pub(super) fn put(summary: &ContainerSummary, labels: &[(String, &'static str)]) -> Option<Change> {
    let Some(id) = valid_id(summary.id.as_deref()) else {
        count_error();
        warn_limited!("docker-api-bad-id", id = ?summary.id, "The Docker API listed a container without a valid 64-hex id; ignored.");
        return None;
    };
    Some(Change::Put { id: id.to_owned(), attributes: container_attributes(summary, labels) })
}

/// The change Podman's list makes: pod ids and names of well-formed entries.
pub(super) fn podman_pods(entries: &[LibpodContainer]) -> Change {
    Change::PodmanPods(
        entries
            .iter()
            .filter(|e| {
                valid_id(Some(&e.id)).is_some()
                    && !e.pod.is_empty()
                    && e.pod.len() <= MAX_VALUE_LEN
                    && e.pod_name.len() <= MAX_VALUE_LEN
            })
            .map(|e| (e.id.clone(), e.pod.clone(), e.pod_name.clone()))
            .collect(),
    )
}

/// Where the task's answers come from: the daemon over its socket, or recorded answers (the
/// fuzz target), so that both go through the same code.
pub(super) trait Answers {
    fn labels(&self) -> &[(String, &'static str)];
    /// `/containers/json`, every container or one.
    async fn list(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, ApiError>;
    /// Podman's `/libpod/containers/json`, every container or one.
    async fn list_libpod(&self, id: Option<&str>) -> Result<Vec<LibpodContainer>, ApiError>;
}

/// Pod ids and names from Podman's own list. A failure costs only the pod names (counted and
/// logged), not the names the Docker-compatible list gave.
pub(super) async fn read_podman_pods(api: &impl Answers, id: Option<&str>) -> Option<Change> {
    match api.list_libpod(id).await {
        Ok(entries) => Some(podman_pods(&entries)),
        Err(error) => {
            count_error();
            warn_limited!("docker-api-libpod", %error, "docker_api: Podman's libpod list failed; containers keep their names, without podman.pod.name.");
            None
        }
    }
}

/// Every container (and with Podman, its pod), as a fresh snapshot.
pub(super) async fn list_all(api: &impl Answers, podman: bool) -> Result<Snapshot, ApiError> {
    let mut fresh = Snapshot::default();
    for summary in &api.list(None).await? {
        if let Some(change) = put(summary, api.labels()) {
            apply_change(&mut fresh, &change, true);
        }
    }
    if podman {
        if let Some(change) = read_podman_pods(api, None).await {
            apply_change(&mut fresh, &change, true);
        }
    }
    Ok(fresh)
}

pub(super) fn count_error() {
    Telemetry::inc(&Telemetry::global().metadata_errors);
}

/// What one event asks of the cache; shared by the task and the fuzz replay.
#[derive(Debug, PartialEq)]
pub(super) enum EventAction<'a> {
    /// The container is gone: forget it (and pods left without containers).
    Forget(&'a str),
    /// Read this one container from the API.
    Read(&'a str),
    /// The container got this name (a `rename` event, whose `name` attribute is the new one).
    Rename(&'a str, &'a str),
    /// Nothing to do, no request.
    Nothing,
}

pub(super) fn event_action<'a>(cache: &mut Cache, event: &'a EventMessage) -> EventAction<'a> {
    if event.typ.is_some_and(|t| t != EventMessageTypeEnum::CONTAINER) {
        return EventAction::Nothing;
    }
    let Some(id) = valid_id(event.actor.as_ref().and_then(|a| a.id.as_deref())) else {
        return EventAction::Nothing;
    };
    match event.action.as_deref().unwrap_or_default() {
        "destroy" | "remove" => EventAction::Forget(id),
        // Names stay while the container exists: a stopped container's cgroup lingers for
        // its last sweep.
        "die" | "died" => EventAction::Nothing,
        // Name, image and labels are fixed at create (only a rename changes the name): a create
        // or start of a container already read (the list, or the replay of the second before
        // it) costs nothing.
        "create" | "start" if cache.contains(id) => EventAction::Nothing,
        // The event names the new name; the list is no witness: dockerd 20.10 can list a
        // container under both its old and new names when the event arrives (seen once in
        // 59 renames), and nothing says which is which. Read the container only when the
        // event carries no usable name or the container is not cached.
        "rename" if cache.contains(id) => {
            let name = event
                .actor
                .as_ref()
                .and_then(|a| a.attributes.as_ref())
                .and_then(|a| a.get("name"))
                .map(|n| n.strip_prefix('/').unwrap_or(n))
                .filter(|n| own_name(n));
            name.map_or(EventAction::Read(id), |name| EventAction::Rename(id, name))
        }
        // create, rename, or a start of a container created before the list: read this one.
        "create" | "start" | "rename" => EventAction::Read(id),
        // Anything else (the filter asks for none) costs no request.
        _ => EventAction::Nothing,
    }
}

/// Applies one event to the cache, reading the one container it names when needed.
pub(super) async fn apply_event(
    api: &impl Answers,
    cache: &mut Cache,
    podman: bool,
    event: &EventMessage,
) -> Result<(), ApiError> {
    match event_action(cache, event) {
        EventAction::Forget(id) => cache.change(Change::Forget(id.to_owned())),
        EventAction::Rename(id, name) => {
            cache.change(Change::Rename { id: id.to_owned(), name: name.to_owned() })
        }
        EventAction::Read(id) => {
            for summary in api.list(Some(id)).await? {
                if let Some(change) = put(&summary, api.labels()) {
                    cache.change(change);
                }
            }
            if podman {
                if let Some(change) = read_podman_pods(api, Some(id)).await {
                    cache.change(change);
                }
            }
        }
        EventAction::Nothing => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::metadata::docker_api::replay::replay_answers;
    use crate::processors::metadata::{allowlisted_key, SharedSnapshot};
    use std::sync::Arc;

    #[test]
    fn a_list_entry_gives_name_image_tags_and_only_allowlisted_labels() {
        let summary: ContainerSummary = serde_json::from_str(&format!(
            r#"{{"Id":"{}","Names":["/web/db-alias","/shop-web-1"],"Image":"registry.example:5000/shop/web:2.1",
                "Labels":{{"com.docker.compose.project":"shop","secret":"x"}}}}"#,
            "a".repeat(64)
        ))
        .unwrap();
        let labels = vec![(
            "com.docker.compose.project".to_owned(),
            allowlisted_key(semconv::CONTAINER_LABEL_PREFIX, "com.docker.compose.project"),
        )];
        let attrs = container_attributes(&summary, &labels);
        assert_eq!(
            attrs,
            vec![
                (semconv::CONTAINER_NAME, "shop-web-1".into()),
                (semconv::CONTAINER_IMAGE_NAME, "registry.example:5000/shop/web".into()),
                (semconv::CONTAINER_IMAGE_TAGS, AttrValue::StrArray(vec!["2.1".into()])),
                ("container.label.com.docker.compose.project", "shop".into()),
            ]
        );
    }

    fn put_summary(cache: &mut Cache, json: &str) {
        let summary: ContainerSummary = serde_json::from_str(json).unwrap();
        if let Some(change) = put(&summary, &[]) {
            cache.change(change);
        }
    }

    #[test]
    fn entries_without_a_valid_id_or_with_oversized_values_are_left_out() {
        let mut cache = Cache::default();
        put_summary(&mut cache, r#"{"Id":"../../etc","Names":["/x"]}"#);
        // Runtimes and cgroup paths write ids in lower case: an upper-case id would never meet
        // a cgroup's.
        put_summary(&mut cache, &format!(r#"{{"Id":"{}","Names":["/x"]}}"#, "B".repeat(64)));
        assert!(cache.view().containers.is_empty());
        let long = "n".repeat(MAX_VALUE_LEN + 1);
        put_summary(
            &mut cache,
            &format!(r#"{{"Id":"{}","Names":["/{long}"],"Image":"bb:1"}}"#, "b".repeat(64)),
        );
        let attrs = &cache.view().containers[&"b".repeat(64)].attributes;
        assert!(attrs.iter().all(|(k, _)| *k != semconv::CONTAINER_NAME), "{attrs:?}");
        assert!(attrs.iter().any(|(k, _)| *k == semconv::CONTAINER_IMAGE_NAME));
    }

    #[test]
    fn podman_pods_are_kept_only_for_cached_containers_and_pruned_with_their_last_one() {
        let mut cache = Cache::default();
        let (id, pod) = ("c".repeat(64), "d".repeat(64));
        put_summary(&mut cache, &format!(r#"{{"Id":"{id}","Names":["p-app"]}}"#));
        let entry = |id: &str, pod: &str, name: &str| LibpodContainer {
            id: id.to_owned(),
            pod: pod.to_owned(),
            pod_name: name.to_owned(),
        };
        // Podman's list names many pods; only the one a cached container belongs to is kept.
        let mut entries = vec![entry(&id, &pod, "mypod")];
        entries.extend((0..1000).map(|i| entry(&format!("{i:064x}"), &format!("{i:064x}"), "other")));
        cache.change(podman_pods(&entries));
        let view = cache.view();
        assert_eq!(view.containers[&id].pod.as_deref(), Some(pod.as_str()));
        assert_eq!(view.pods.len(), 1, "pods of containers not cached are kept");
        assert_eq!(view.pods[&pod].attributes, vec![(semconv::PODMAN_POD_NAME, "mypod".into())]);
        cache.change(Change::Forget(id.clone()));
        assert!(cache.view().pods.is_empty());
    }

    /// Publishing a batch copies nothing: the copy published before is brought up to date in
    /// place once no sweep holds it, and both copies agree.
    #[test]
    fn a_published_batch_is_not_a_copy_of_the_cache() {
        let shared = SharedSnapshot::new();
        let mut cache = Cache::default();
        let id = |i: u32| format!("{i:064x}");
        let mut fresh = Snapshot::default();
        for i in 0..100 {
            apply_change(
                &mut fresh,
                &Change::Put { id: id(i), attributes: vec![(semconv::CONTAINER_NAME, "x".into())] },
                true,
            );
        }
        cache.reset(fresh, &shared);
        for batch in 0..10u32 {
            cache.change(Change::Rename { id: id(batch), name: format!("renamed-{batch}") });
            let before = Arc::as_ptr(&cache.back);
            cache.publish(&shared);
            assert_eq!(Arc::as_ptr(&shared.load()), before, "the published snapshot is the changed copy");
            if batch > 0 {
                // The next change lands in the copy published before, in place.
                let old_front = Arc::as_ptr(&cache.back);
                cache.catch_up();
                assert_eq!(Arc::as_ptr(&cache.back), old_front, "batch {batch}: the copy was copied again");
            }
            assert!(cache.in_step());
        }
        let names = shared.load();
        assert_eq!(names.containers[&id(9)].attributes, vec![(semconv::CONTAINER_NAME, "renamed-9".into())]);
    }

    #[test]
    fn a_rename_takes_the_name_the_event_carries_not_the_list_that_races_it() {
        let id = "e".repeat(64);
        let name_of = |list: &str, events: &str| {
            let version = br#"{"Components":[{"Name":"Engine"}]}"#;
            let snapshot = replay_answers(version, list.as_bytes(), b"[]", events.as_bytes(), &[]);
            let attrs = snapshot.containers.get(&id).map(|m| m.attributes.clone()).unwrap_or_default();
            attrs.into_iter().find(|(k, _)| *k == semconv::CONTAINER_NAME).map(|(_, v)| v)
        };
        let rename = |attributes: &str| {
            format!(
                r#"{{"Type":"container","Action":"rename","Actor":{{"ID":"{id}","Attributes":{attributes}}}}}"#
            )
        };
        // What dockerd 20.10 answered once in 59 renames, right after the rename event.
        let both = format!(r#"[{{"Id":"{id}","Names":["/old","/new"],"Image":"bb:1"}}]"#);
        assert_eq!(name_of(&both, ""), Some("old".into()), "the list alone cannot tell");
        let event = rename(r#"{"name":"new","oldName":"/old"}"#);
        assert_eq!(name_of(&both, &event), Some("new".into()));
        // A rename of a container not cached reads it.
        let mut cache = Cache::default();
        let parse = |text: &str| serde_json::from_str::<EventMessage>(text).unwrap();
        assert_eq!(event_action(&mut cache, &parse(&event)), EventAction::Read(&id));
        let summary: ContainerSummary =
            serde_json::from_str(&both).map(|v: Vec<_>| v.into_iter().next().unwrap()).unwrap();
        cache.change(put(&summary, &[]).unwrap());
        // A cached one takes the event's name, with or without the leading `/`.
        assert_eq!(event_action(&mut cache, &parse(&event)), EventAction::Rename(&id, "new"));
        let slashed = rename(r#"{"name":"/new"}"#);
        assert_eq!(event_action(&mut cache, &parse(&slashed)), EventAction::Rename(&id, "new"));
        // No usable name in the event: the container is read again.
        let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(MAX_VALUE_LEN + 1));
        for attributes in [r#"{}"#, r#"{"name":""}"#, r#"{"name":"other/alias"}"#, long.as_str()] {
            assert_eq!(
                event_action(&mut cache, &parse(&rename(attributes))),
                EventAction::Read(&id),
                "{attributes}"
            );
        }
    }
}
