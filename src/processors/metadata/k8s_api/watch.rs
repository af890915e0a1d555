//! The list-then-watch loop, on the processor's background task.
//!
//! 1. List the node's pods (pages of 500, `fieldSelector=spec.nodeName=<node>`), replace the
//!    cache, publish a snapshot, mark the processor ready.
//! 2. Watch from the list's `resourceVersion` with bookmarks, applying events in batches and
//!    publishing once per batch; a bookmark moves the resume point without a change.
//! 3. When the watch ends (the server's timeout, a dropped connection, a dead connection no
//!    event came on for longer than the timeout), watch again from the last version seen.
//! 4. `410 Gone` (as a watch ERROR event or an HTTP status): the version is too old, go back
//!    to 1. Deleted pods the new list no longer has keep their names for the grace period.
//!
//! Every failure is counted in `metadata_errors` and logged at most once a minute per kind,
//! then retried after an exponential backoff (250 ms doubling to 30 s, with jitter), which is
//! reset only once a watch has delivered something, so a server that answers every watch
//! with `410` or garbage is not hammered.
//!
//! Why not `kube::runtime::watcher`: it handles 410 and reconnects, but on any other failed
//! watch it watches again from the same version. At a watch event over `max_event_bytes`
//! that means the same event, failing, forever: `tests/k8s_api_watcher.rs` runs both on the
//! stand-in API server with one 512 KiB event against a 256 KiB bound, and in the 8 s after
//! it the watcher listed 0 times and never delivered the pod (3 watches, each failing on it),
//! while this loop listed once and named it. Making the watcher do that means dropping it on
//! that error to force a list, and keeping around it the failure sorting, the rate-limited
//! messages, the backoff reset on progress and the page bound this loop has: little would
//! be left to delete. The test fails when the watcher starts relisting there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use tracing::{debug, error, warn};

use super::cache::PodCache;
use super::pods::{compact, Allowlist};
use crate::agent_counters::{RateLimiter, Telemetry};
use crate::processors::metadata::{Readiness, SharedSnapshot};

/// Pods per list page (client-go's default too).
const PAGE_SIZE: u32 = 500;
/// Pages one list may take (a million pods): past that the answer is not a real list.
const MAX_PAGES: usize = 2000;
/// The server closes a watch after this many seconds (it picks a random time up to it when
/// unset); the client then resumes from the last version, as client-go's reflector does.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch that has said nothing for this much longer than its timeout is a dead connection.
const WATCH_IDLE_MARGIN: Duration = Duration::from_secs(30);
/// Events applied before a snapshot is published, when they arrive faster than that.
const EVENT_BATCH: usize = 256;

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Everything the loop needs, owned by the background task.
pub struct Watch {
    pub api: Api<Pod>,
    /// `spec.nodeName=<node>`, or `None` for a cluster-wide watch.
    pub node_name: Option<String>,
    pub allow: Allowlist,
    pub cache: PodCache,
    pub shared: Arc<SharedSnapshot>,
    pub readiness: Readiness,
    /// The API server's address, for messages.
    pub server: String,
}

/// What a failed request was doing, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    List,
    Watch,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Watch => "watch",
        }
    }
}

/// What went wrong, by what the operator should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 403: RBAC.
    Forbidden,
    /// 401: the token or certificate.
    Unauthorized,
    /// 410: the version is too old; relist.
    Gone,
    /// An answer that is not what the API serves (not JSON, not a Pod list).
    BadAnswer,
    /// A list page or a watch event larger than its bound (`max_list_bytes`,
    /// `max_event_bytes`): stopped reading; a watch relists, where the bound is the page's.
    TooLarge,
    /// No connection, or the connection broke.
    Unreachable,
    /// Any other error status.
    Status,
}

/// Sorts a client error into a [`Failure`].
pub fn classify(error: &kube::Error) -> Failure {
    if super::bounded::BoundError::find(error).is_some() {
        return Failure::TooLarge;
    }
    match error {
        kube::Error::Api(status) => match status.code {
            403 => Failure::Forbidden,
            401 => Failure::Unauthorized,
            410 => Failure::Gone,
            _ => Failure::Status,
        },
        kube::Error::SerdeError(_)
        | kube::Error::FromUtf8(_)
        | kube::Error::LinesCodecMaxLineLengthExceeded => Failure::BadAnswer,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Failure::Unreachable
        }
        _ => Failure::Status,
    }
}

/// One log line a minute per kind of failure: a broken API must not flood the log.
static LIMITER: RateLimiter = RateLimiter::new(Duration::from_secs(60));

impl Watch {
    fn scope(&self) -> String {
        match &self.node_name {
            Some(node) => format!("on node `{node}` (fieldSelector=spec.nodeName={node})"),
            None => "in all namespaces (cluster-wide)".to_owned(),
        }
    }

    /// Counts and logs (rate-limited) one failure.
    fn report(&self, verb: Verb, failure: Failure, error: &dyn std::fmt::Display) {
        Telemetry::inc(&Telemetry::global().metadata_errors);
        let key = match (failure, verb) {
            (Failure::Forbidden, _) => "k8s-api-forbidden",
            (Failure::Unauthorized, _) => "k8s-api-unauthorized",
            (Failure::Gone, _) => "k8s-api-gone",
            (Failure::BadAnswer, _) => "k8s-api-bad-answer",
            // Two bounds: a list page's and a watch event's, each said once a minute.
            (Failure::TooLarge, Verb::List) => "k8s-api-list-too-large",
            (Failure::TooLarge, Verb::Watch) => "k8s-api-watch-too-large",
            (Failure::Unreachable, _) => "k8s-api-unreachable",
            (Failure::Status, _) => "k8s-api-error",
        };
        let Some(suppressed) = LIMITER.allow(key) else { return };
        let verb = verb.as_str();
        let scope = self.scope();
        let server = &self.server;
        let overlay = super::RBAC_OVERLAY;
        match failure {
            Failure::Forbidden => error!(
                suppressed, %error, %server,
                "The Kubernetes API refused to {verb} pods {scope} (403 Forbidden). Bind the agent's service \
                 account to a ClusterRole that allows the verbs get, list and watch on the resource `pods` \
                 (apiGroups: [\"\"]), as the ClusterRole `podometer` of {overlay} does. Exporting with ids only; \
                 retrying."
            ),
            Failure::Unauthorized => error!(
                suppressed, %error, %server,
                "The Kubernetes API did not accept the agent's credentials to {verb} pods (401 Unauthorized): \
                 check the service account token or the KUBECONFIG user. Exporting with ids only; retrying."
            ),
            Failure::Gone => {
                debug!(%error, "The watch's resourceVersion is too old (410 Gone); listing again.")
            }
            Failure::BadAnswer => warn!(
                suppressed, %error, %server,
                "The Kubernetes API answered {verb} pods with something that is not a Kubernetes JSON answer; \
                 exporting with ids only; retrying."
            ),
            Failure::TooLarge => warn!(
                suppressed, %error, %server,
                "The Kubernetes API's answer to {verb} pods passed its bound; what was read of it is dropped, \
                 names already known stay, and it is listed again after the backoff (raise k8s_api.max_list_bytes \
                 or max_event_bytes if pods this large are real)."
            ),
            Failure::Unreachable => warn!(
                suppressed, %error, %server,
                "Cannot reach the Kubernetes API to {verb} pods; exporting with ids only; retrying."
            ),
            Failure::Status => warn!(
                suppressed, %error, %server,
                "The Kubernetes API failed to {verb} pods; exporting with ids only; retrying."
            ),
        }
    }

    fn publish(&mut self) {
        self.shared.store_arc(self.cache.snapshot());
    }

    /// Applies one pod from a list page or an event; a pod on another node (a server that
    /// ignored the selector) or without a UID is skipped.
    fn compact_pod(&self, pod: &Pod) -> Option<super::pods::CompactPod> {
        match compact(pod, &self.allow) {
            Ok(c) if self.node_name.is_none() || c.node_name == self.node_name => Some(c),
            Ok(_) => None,
            Err(error) => {
                Telemetry::inc(&Telemetry::global().metadata_errors);
                if let Some(suppressed) = LIMITER.allow("k8s-api-bad-pod") {
                    warn!(suppressed, %error, "The Kubernetes API sent a pod the agent cannot use; skipping it.");
                }
                None
            }
        }
    }

    /// Lists every page; returns the list's resourceVersion.
    async fn list(&mut self) -> Result<String, kube::Error> {
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(node) = &self.node_name {
            params = params.fields(&format!("spec.nodeName={node}"));
        }
        let mut listed = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self.api.list(&params).await?;
            listed.extend(page.items.iter().filter_map(|p| self.compact_pod(p)));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => {
                    self.cache.replace_all(listed, Instant::now());
                    self.cache.prune(Instant::now());
                    self.publish();
                    return Ok(page.metadata.resource_version.unwrap_or_default());
                }
            }
        }
        // A server that hands out continue tokens forever.
        let message = format!("the pod list did not end after {MAX_PAGES} pages");
        Err(kube::Error::Api(kube::core::Status::failure(&message, "TooManyPages").boxed()))
    }

    /// Applies one watch event; returns the new resume version, or the failure that ends
    /// this watch.
    fn apply(&mut self, event: WatchEvent<Pod>) -> Result<Option<String>, (Failure, String)> {
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                if let Some(c) = self.compact_pod(&pod) {
                    self.cache.upsert(c);
                }
                Ok(pod.metadata.resource_version)
            }
            WatchEvent::Deleted(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.cache.delete(uid, Instant::now());
                }
                Ok(pod.metadata.resource_version)
            }
            WatchEvent::Bookmark(bookmark) => Ok(Some(bookmark.metadata.resource_version)),
            WatchEvent::Error(status) => {
                let failure = match status.code {
                    410 => Failure::Gone,
                    403 => Failure::Forbidden,
                    401 => Failure::Unauthorized,
                    _ => Failure::Status,
                };
                Err((failure, format!("{} ({}): {}", status.code, status.reason, status.message)))
            }
        }
    }

    /// Reads one watch until it ends; returns the version to resume from and whether to
    /// relist (410) and whether anything arrived.
    async fn follow(
        &mut self,
        stream: impl Stream<Item = Result<WatchEvent<Pod>, kube::Error>>,
        mut version: String,
    ) -> (String, bool, bool) {
        let idle = Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + WATCH_IDLE_MARGIN;
        let mut stream = std::pin::pin!(stream.ready_chunks(EVENT_BATCH));
        let mut progressed = false;
        loop {
            let expiry = self.cache.next_expiry();
            let batch = tokio::select! {
                batch = tokio::time::timeout(idle, stream.next()) => batch,
                _ = sleep_until(expiry) => {
                    if self.cache.prune(Instant::now()) {
                        self.publish();
                    }
                    continue;
                }
            };
            let batch = match batch {
                Ok(Some(batch)) => batch,
                // The server closed the watch (its timeout), or nothing came for too long.
                Ok(None) | Err(_) => return (version, false, progressed),
            };
            let mut end = None;
            for item in batch {
                match item {
                    Ok(event) => match self.apply(event) {
                        Ok(v) => {
                            progressed = true;
                            if let Some(v) = v.filter(|v| !v.is_empty()) {
                                version = v;
                            }
                        }
                        Err((failure, message)) => {
                            self.report(Verb::Watch, failure, &message);
                            end = Some(failure == Failure::Gone);
                            break;
                        }
                    },
                    Err(error) => {
                        let failure = classify(&error);
                        self.report(Verb::Watch, failure, &error);
                        // Watching again from the same version would meet the same event:
                        // a list reads it under the page's bound and moves past it.
                        end = Some(matches!(failure, Failure::Gone | Failure::TooLarge));
                        break;
                    }
                }
            }
            self.cache.prune(Instant::now());
            self.publish();
            if let Some(relist) = end {
                return (version, relist, progressed);
            }
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let version = match self.list().await {
                Ok(version) => version,
                Err(error) => {
                    self.report(Verb::List, classify(&error), &error);
                    self.wait(backoff.next_delay()).await;
                    continue;
                }
            };
            self.readiness.set_ready();
            debug!(pods = self.cache.len(), %version, "Listed pods.");
            let mut version = version;
            loop {
                let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                if let Some(node) = &self.node_name {
                    params = params.fields(&format!("spec.nodeName={node}"));
                }
                let stream = match self.api.watch(&params, &version).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        let failure = classify(&error);
                        self.report(Verb::Watch, failure, &error);
                        self.wait(backoff.next_delay()).await;
                        if failure == Failure::Gone {
                            break;
                        }
                        continue;
                    }
                };
                let (resume, relist, progressed) = self.follow(stream, version).await;
                version = resume;
                if progressed {
                    backoff.reset();
                }
                if relist {
                    self.wait(backoff.next_delay()).await;
                    break;
                }
                if !progressed {
                    // An empty watch that ended at once: do not spin on it.
                    self.wait(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Sleeps, still expiring deleted pods on time.
    async fn wait(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            let expiry = self.cache.next_expiry().filter(|e| *e < until);
            match expiry {
                Some(expiry) => {
                    sleep_until(Some(expiry)).await;
                    if self.cache.prune(Instant::now()) {
                        self.publish();
                    }
                }
                None => {
                    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        // A little past the expiry so the prune that follows sees it expired.
        Some(at) => tokio::time::sleep_until((at + Duration::from_millis(1)).into()).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with ±25 % jitter.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let base = BACKOFF_FIRST.saturating_mul(1u32 << self.attempt.min(16)).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = 0.75 + 0.5 * fastrand::f64();
        base.mul_f64(jitter).min(BACKOFF_MAX)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(187) && first <= Duration::from_millis(313), "{first:?}");
        let second = b.next_delay();
        assert!(second >= Duration::from_millis(375), "{second:?}");
        for _ in 0..20 {
            assert!(b.next_delay() <= BACKOFF_MAX);
        }
        assert!(b.next_delay() >= BACKOFF_MAX.mul_f64(0.75));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(313));
    }

    #[test]
    fn errors_sort_by_what_to_do() {
        let status =
            |code: u16| kube::Error::Api(kube::core::Status::failure("x", "y").with_code(code).boxed());
        assert_eq!(classify(&status(403)), Failure::Forbidden);
        assert_eq!(classify(&status(401)), Failure::Unauthorized);
        assert_eq!(classify(&status(410)), Failure::Gone);
        assert_eq!(classify(&status(500)), Failure::Status);
        let serde = serde_json::from_str::<serde_json::Value>("<html>").unwrap_err();
        assert_eq!(classify(&kube::Error::SerdeError(serde)), Failure::BadAnswer);
    }
}
