//! The `docker_api` task's handling of recorded answers, without a socket: for the fuzz target
//! and the tests.

use bollard::models::{ContainerSummary, EventMessage};
use futures_util::FutureExt;

use super::state::{apply_event, list_all, Answers, Cache, LibpodContainer, MAX_VALUE_LEN};
use super::ApiError;
use crate::processors::metadata::{allowlisted_key, SharedSnapshot, Snapshot};
use crate::semconv;

/// Answers recorded beforehand: a request for one container gets that container's entries.
struct Recorded {
    listed: Vec<ContainerSummary>,
    libpod: Vec<LibpodContainer>,
    labels: Vec<(String, &'static str)>,
}

impl Answers for Recorded {
    fn labels(&self) -> &[(String, &'static str)] {
        &self.labels
    }

    async fn list(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, ApiError> {
        Ok(self.listed.iter().filter(|s| id.is_none() || s.id.as_deref() == id).cloned().collect())
    }

    async fn list_libpod(&self, id: Option<&str>) -> Result<Vec<LibpodContainer>, ApiError> {
        Ok(self.libpod.iter().filter(|e| id.is_none_or(|id| e.id == id)).cloned().collect())
    }
}

/// The task's handling of each kind of answer without a socket, for the fuzz target
/// `docker_api` (`podometer::fuzzing`); not an API. Each answer is decoded as bollard and
/// `get_json` decode it (`/version`, `/containers/json` and Podman's list as one JSON document,
/// `/events` as JSON lines) and goes through the task's own code (`list_all`, `apply_event`,
/// the cache's publication), each event line a batch; an event that re-reads one container
/// gets that container's entries of the lists. Panics if the cache's two copies disagree.
#[doc(hidden)]
pub fn replay_answers(
    version: &[u8],
    list: &[u8],
    libpod: &[u8],
    events: &[u8],
    labels: &[String],
) -> Snapshot {
    let labels: Vec<(String, &'static str)> = labels
        .iter()
        .map(|key| (key.clone(), allowlisted_key(semconv::CONTAINER_LABEL_PREFIX, key)))
        .collect();
    let podman = serde_json::from_slice::<bollard::models::SystemVersion>(version)
        .is_ok_and(|v| v.components.iter().flatten().any(|c| c.name.to_ascii_lowercase().contains("podman")));
    let api = Recorded {
        listed: serde_json::from_slice(list).unwrap_or_default(),
        libpod: serde_json::from_slice(libpod).unwrap_or_default(),
        labels,
    };
    let ready = "recorded answers are ready at once";
    let shared = SharedSnapshot::new();
    let mut cache = Cache::default();
    let fresh = list_all(&api, podman).now_or_never().expect(ready).expect("recorded answers do not fail");
    cache.reset(fresh, &shared);
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(event) = serde_json::from_slice::<EventMessage>(line) else { continue };
        apply_event(&api, &mut cache, podman, &event)
            .now_or_never()
            .expect(ready)
            .expect("recorded answers do not fail");
        cache.publish(&shared);
    }
    assert!(cache.in_step(), "the cache's two copies differ");
    let published = shared.load();
    assert!(*published == *cache.front, "the published snapshot is not the cache's");
    published.as_ref().clone()
}

/// Longest attribute value `docker_api` keeps (for the fuzz target's invariant).
#[doc(hidden)]
pub const MAX_ATTRIBUTE_LEN: usize = MAX_VALUE_LEN;
