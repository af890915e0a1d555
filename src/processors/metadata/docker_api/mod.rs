//! `docker_api`: container names, images, allowlisted labels and Podman pod names from the
//! Docker Engine API over a unix socket (Docker's `dockerd`, or Podman's
//! `podman system service`, which speaks the same API).
//!
//! A [`BackgroundTask`] lists every container once, then follows the `/events` stream
//! (`create`, `start`, `rename`, `destroy`) and re-reads only the container an event names.
//! After a reconnect (with backoff) it lists again. The sweep thread only reads the
//! [`SharedSnapshot`]; it never touches the socket.
//!
//! Podman pods: the Docker-compatible `/containers/json` does not say which pod a container
//! belongs to. When `/version` names a "Podman Engine" component, the task also reads
//! Podman's own endpoint on the same socket, `/v4.0.0/libpod/containers/json`, whose entries
//! carry `Pod` (the pod id, the same id the cgroup path has) and `PodName`.
//!
//! Hostile answers are bounded: bollard talks through a transport of our own that dials the
//! socket with a timeout and stops reading a connection after `max_response_bytes`
//! (the events connection is then re-opened and the containers listed again), and every
//! request that is not a stream has `request_timeout` as a whole. Errors are logged at most
//! once a minute and counted in `metadata_errors`; metrics keep flowing with ids.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerSummary, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::{BollardRequest, Docker};
use futures_util::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Response;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::{
    allowlisted_key, attach, BackgroundTask, ContainerMeta, PodMeta, Readiness, SharedSnapshot, Snapshot,
};
use crate::config::duration;
use crate::model::{AttrValue, Attributes, Sweep, SweepContext};
use crate::processors::Processor;
use crate::semconv;
use crate::agent_counters::Telemetry;
use crate::warn_limited;

/// Where the Docker daemon listens when neither the config nor `DOCKER_HOST` says.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Reads names from the Docker Engine API (Docker or Podman) over a unix socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerApiConfig {
    /// The API's unix socket, as a path or a `unix://` URL. Default: `DOCKER_HOST` when it is
    /// a `unix://` URL, else `/var/run/docker.sock`.
    #[serde(default, deserialize_with = "deserialize_socket")]
    pub socket: Option<String>,
    /// Container label keys copied as `container.label.<key>` (nothing by default: labels are
    /// cardinality). Compose's `com.docker.compose.project` and `com.docker.compose.service`
    /// are typical.
    #[serde(default)]
    pub labels: Vec<String>,
    /// How long start-up waits for the first list before the first export.
    #[serde(default = "default_startup_wait", deserialize_with = "duration::deserialize")]
    pub startup_wait: Duration,
    /// Limit for one request that is not a stream (connect, headers and whole body), and for
    /// connecting and getting the headers of the events stream.
    #[serde(default = "default_request_timeout", deserialize_with = "duration::deserialize_positive")]
    pub request_timeout: Duration,
    /// Most bytes read from one connection; a larger answer is an error, and the events
    /// connection is re-opened (and the containers listed again) after this many bytes.
    #[serde(default = "default_max_response_bytes", deserialize_with = "deserialize_limit")]
    pub max_response_bytes: u64,
}

fn default_startup_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_response_bytes() -> u64 {
    32 << 20
}

/// Checked while the config is read, so `check-config` reports it.
fn deserialize_socket<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let address = String::deserialize(d)?;
    socket_path(Some(&address), None).map_err(serde::de::Error::custom)?;
    Ok(Some(address))
}

fn deserialize_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let limit = u64::deserialize(d)?;
    if limit < MIN_RESPONSE_BYTES {
        return Err(serde::de::Error::custom(DockerApiError::TooSmallLimit));
    }
    Ok(limit)
}

/// Smaller than any real `/version` answer.
const MIN_RESPONSE_BYTES: u64 = 4096;

impl Default for DockerApiConfig {
    fn default() -> Self {
        DockerApiConfig {
            socket: None,
            labels: Vec::new(),
            startup_wait: default_startup_wait(),
            request_timeout: default_request_timeout(),
            max_response_bytes: default_max_response_bytes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerApiError {
    #[error("`{0}` is not a unix socket address (a path or unix:///path); only unix sockets are supported")]
    NotUnix(String),
    #[error("max_response_bytes must be at least 4096")]
    TooSmallLimit,
    #[error("cannot start the docker_api task: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot make the Docker API client: {0}")]
    Client(#[source] bollard::errors::Error),
}

/// A failure talking to the API, with the socket it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{socket}: {what}: {message}")]
struct ApiError {
    socket: PathBuf,
    what: &'static str,
    message: String,
}

/// The socket path for a configured address and `DOCKER_HOST`.
pub fn socket_path(configured: Option<&str>, docker_host: Option<&str>) -> Result<PathBuf, DockerApiError> {
    let unix = |address: &str| -> Option<PathBuf> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        path.starts_with('/').then(|| PathBuf::from(path))
    };
    match configured {
        Some(address) => unix(address).ok_or_else(|| DockerApiError::NotUnix(address.to_owned())),
        // A tcp:// DOCKER_HOST is not for us (no TLS here): fall back to the standard socket.
        None => Ok(docker_host
            .filter(|h| h.starts_with("unix://"))
            .and_then(unix)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))),
    }
}

/// An image reference split into its parts: `registry:port/path/name:tag@digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Registry and repository, as written (`registry:5000/team/app`, `busybox`).
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Splits an image reference. The tag is after the last `:` of the last path component, so a
/// registry port (`host:5000/app`) is not taken for a tag. `None` for an empty reference or
/// a bare image id (`sha256:…`, or 64 hex digits), which names no image.
pub fn parse_image_reference(reference: &str) -> Option<ImageRef<'_>> {
    let reference = reference.trim();
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if rest.is_empty()
        || rest.starts_with("sha256:")
        || (rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if name.is_empty() || name.ends_with('/') {
        return None;
    }
    Some(ImageRef { name, tag: tag.filter(|t| !t.is_empty()), digest: digest.filter(|d| !d.is_empty()) })
}

/// Longest name, image or label value kept; longer ones are left out (a hostile or broken
/// daemon cannot make every series carry kilobytes).
const MAX_VALUE_LEN: usize = 1024;
/// Most containers the cache holds; past it new containers are exported with ids only.
const MAX_CONTAINERS: usize = 65_536;

/// A container's own name (after its leading `/`): not a link alias (`other/alias`), and
/// short enough to keep.
fn own_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_VALUE_LEN && !name.contains('/')
}

/// The attributes of one container from its list entry.
fn container_attributes(summary: &ContainerSummary, labels: &[(String, &'static str)]) -> Attributes {
    let mut attributes: Attributes = Vec::new();
    let fits = |s: &str| !s.is_empty() && s.len() <= MAX_VALUE_LEN;
    // Docker lists names with a leading `/` (and links as `/other/alias`): the first name
    // without a second `/` is the container's own.
    let name =
        summary.names.iter().flatten().map(|n| n.strip_prefix('/').unwrap_or(n)).find(|n| !n.contains('/'));
    if let Some(name) = name.filter(|n| own_name(n)) {
        attributes.push((semconv::CONTAINER_NAME, AttrValue::text(name)));
    }
    if let Some(image) = summary.image.as_deref().filter(|i| fits(i)).and_then(parse_image_reference) {
        attributes.push((semconv::CONTAINER_IMAGE_NAME, AttrValue::text(image.name)));
        if let Some(tag) = image.tag {
            attributes.push((semconv::CONTAINER_IMAGE_TAGS, AttrValue::StrArray(vec![tag.to_owned()])));
        }
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

/// A full 64-hex container id, or nothing: ids are map keys and must match the cgroup's.
fn valid_id(id: Option<&str>) -> Option<&str> {
    id.filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One entry of Podman's `/libpod/containers/json`: only what the pod name needs.
#[derive(Debug, Clone, Deserialize)]
struct LibpodContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Pod", default)]
    pod: String,
    #[serde(rename = "PodName", default)]
    pod_name: String,
}

/// One change to the names, kept so that it can be applied to the cache's second copy too.
#[derive(Debug, Clone)]
enum Change {
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
fn apply_change(snapshot: &mut Snapshot, change: &Change, report: bool) {
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
fn prune_pods(snapshot: &mut Snapshot) {
    let live: std::collections::HashSet<&str> =
        snapshot.containers.values().filter_map(|m| m.pod.as_deref()).collect();
    snapshot.pods.retain(|k, _| live.contains(k.as_str()));
}

/// The task's names in two copies, so that publishing a batch of events copies nothing: the
/// sweep thread reads `front` (through the [`SharedSnapshot`]); changes go to `back`, which is
/// then published and becomes `front`, and the old front, no longer published, gets the same
/// changes before the next batch (by then no sweep holds it, so it is changed in place).
#[derive(Default)]
struct Cache {
    /// The copy published last.
    front: Arc<Snapshot>,
    /// The copy changes are applied to.
    back: Arc<Snapshot>,
    /// Changes `back` has not had yet: the batch published last.
    behind: Vec<Change>,
    /// Changes in `back` and not yet published.
    pending: Vec<Change>,
}

impl Cache {
    /// Brings `back` up to date: copied only if a sweep still holds it from two publications
    /// ago.
    fn catch_up(&mut self) {
        if self.behind.is_empty() {
            return;
        }
        let back = Arc::make_mut(&mut self.back);
        for change in self.behind.drain(..) {
            apply_change(back, &change, false);
        }
    }

    /// The names as they are now, published or not.
    fn view(&mut self) -> &Snapshot {
        self.catch_up();
        &self.back
    }

    fn change(&mut self, change: Change) {
        self.catch_up();
        apply_change(Arc::make_mut(&mut self.back), &change, true);
        self.pending.push(change);
    }

    /// Publishes what changed since the last publication, if anything did.
    fn publish(&mut self, shared: &SharedSnapshot) {
        if self.pending.is_empty() {
            return;
        }
        shared.store_arc(Arc::clone(&self.back));
        std::mem::swap(&mut self.front, &mut self.back);
        self.behind = std::mem::take(&mut self.pending);
    }

    /// Replaces everything (a fresh list) and publishes it.
    fn reset(&mut self, snapshot: Snapshot, shared: &SharedSnapshot) {
        self.front = Arc::new(snapshot);
        self.back = Arc::clone(&self.front);
        self.behind.clear();
        self.pending.clear();
        shared.store_arc(Arc::clone(&self.front));
    }

    /// Whether both copies hold the same names once `back` has caught up (for the fuzz target).
    fn in_step(&mut self) -> bool {
        self.catch_up();
        self.pending.is_empty() && self.front == self.back
    }

    fn contains(&mut self, id: &str) -> bool {
        self.view().containers.contains_key(id)
    }
}

/// The change a list entry makes, or `None` (counted and logged) without a valid id.
fn put(summary: &ContainerSummary, labels: &[(String, &'static str)]) -> Option<Change> {
    let Some(id) = valid_id(summary.id.as_deref()) else {
        count_error();
        warn_limited!("docker-api-bad-id", id = ?summary.id, "The Docker API listed a container without a valid 64-hex id; ignored.");
        return None;
    };
    Some(Change::Put { id: id.to_owned(), attributes: container_attributes(summary, labels) })
}

/// The change Podman's list makes: pod ids and names of well-formed entries.
fn podman_pods(entries: &[LibpodContainer]) -> Change {
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
trait Answers {
    fn labels(&self) -> &[(String, &'static str)];
    /// `/containers/json`, every container or one.
    async fn list(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, ApiError>;
    /// Podman's `/libpod/containers/json`, every container or one.
    async fn list_libpod(&self, id: Option<&str>) -> Result<Vec<LibpodContainer>, ApiError>;
}

/// Pod ids and names from Podman's own list. A failure costs only the pod names (counted and
/// logged), not the names the Docker-compatible list gave.
async fn read_podman_pods(api: &impl Answers, id: Option<&str>) -> Option<Change> {
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
async fn list_all(api: &impl Answers, podman: bool) -> Result<Snapshot, ApiError> {
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

fn count_error() {
    Telemetry::inc(&Telemetry::global().metadata_errors);
}

/// A unix stream that fails a read once `left` bytes have been read from it.
struct Bounded {
    inner: UnixStream,
    left: u64,
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::other("answer larger than max_response_bytes")));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        this.left = this.left.saturating_sub(read);
        poll
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request on a fresh connection to the socket, read through [`Bounded`]. Bollard puts
/// its own timeout around this (connect and headers); bodies are timed by the callers.
async fn send_on_socket<B>(
    socket: Arc<PathBuf>,
    limit: u64,
    request: hyper::Request<B>,
) -> Result<Response<Incoming>, bollard::errors::Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = UnixStream::connect(socket.as_path()).await?;
    let io = hyper_util::rt::TokioIo::new(Bounded { inner: stream, left: limit });
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        // Ends with the response body (or with an error the body's reader sees too).
        let _ = connection.await;
    });
    let (mut parts, body) = request.into_parts();
    // The daemon wants an origin-form target and a Host header, as the docker CLI sends.
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    parts.uri = target.parse().map_err(|e: http::uri::InvalidUri| std::io::Error::other(e.to_string()))?;
    parts.headers.insert(http::header::HOST, http::HeaderValue::from_static("docker"));
    Ok(sender.send_request(hyper::Request::from_parts(parts, body)).await?)
}

/// A bollard client over [`send_on_socket`], speaking API `version`.
fn docker_client(
    socket: &Arc<PathBuf>,
    limit: u64,
    timeout: Duration,
    version: &bollard::ClientVersion,
) -> Result<Docker, bollard::errors::Error> {
    let socket = Arc::clone(socket);
    let transport = move |request: BollardRequest| send_on_socket(Arc::clone(&socket), limit, request);
    Docker::connect_with_custom_transport(transport, Some("http://docker"), timeout.as_secs().max(1), version)
}

/// The API version to speak: the daemon's own (`ApiVersion` of `/version`) up to bollard's.
fn api_version(daemon: Option<&str>) -> bollard::ClientVersion {
    let ours = *bollard::API_DEFAULT_VERSION;
    let parsed = daemon.and_then(|v| {
        let (major, minor) = v.split_once('.')?;
        Some(bollard::ClientVersion {
            major_version: major.parse().ok()?,
            minor_version: minor.parse().ok()?,
        })
    });
    match parsed {
        Some(v) if (v.major_version, v.minor_version) < (ours.major_version, ours.minor_version) => v,
        _ => ours,
    }
}

/// What the task needs, shared by its steps.
struct Client {
    docker: Docker,
    socket: Arc<PathBuf>,
    limit: u64,
    timeout: Duration,
    labels: Vec<(String, &'static str)>,
}

impl Client {
    fn new(config: &DockerApiConfig, socket: PathBuf) -> Result<Client, DockerApiError> {
        let labels = config
            .labels
            .iter()
            .map(|key| (key.clone(), allowlisted_key(semconv::CONTAINER_LABEL_PREFIX, key)))
            .collect();
        let socket = Arc::new(socket);
        let docker = docker_client(
            &socket,
            config.max_response_bytes,
            config.request_timeout,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(DockerApiError::Client)?;
        Ok(Client {
            docker,
            socket,
            limit: config.max_response_bytes,
            timeout: config.request_timeout,
            labels,
        })
    }

    fn error(&self, what: &'static str, message: impl ToString) -> ApiError {
        ApiError { socket: self.socket.as_ref().clone(), what, message: message.to_string() }
    }

    /// A whole request (not a stream) within `request_timeout`.
    async fn timed<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.error(what, error)),
            Err(_) => {
                Err(self
                    .error(what, format!("no answer within {}", humantime::format_duration(self.timeout))))
            }
        }
    }

    /// Picks the API version from one unversioned `/version` (Podman answers it in about a
    /// second, so it is asked once) and says whether the daemon is Podman.
    async fn hello(&mut self) -> Result<bool, ApiError> {
        let version: bollard::models::SystemVersion =
            self.get_json("GET /version", "/version".to_owned()).await?;
        self.docker = docker_client(
            &self.socket,
            self.limit,
            self.timeout,
            &api_version(version.api_version.as_deref()),
        )
        .map_err(|e| self.error("GET /version", e))?;
        Ok(version.components.iter().flatten().any(|c| c.name.to_ascii_lowercase().contains("podman")))
    }

    /// A GET outside bollard's typed calls, on the same bounded transport, decoded as JSON.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: String,
    ) -> Result<T, ApiError> {
        let request = hyper::Request::get(path)
            .body(bollard::body_full(bytes::Bytes::new()))
            .map_err(|e| self.error(what, e))?;
        let fetch = async {
            let response = send_on_socket(Arc::clone(&self.socket), self.limit, request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, bollard::errors::Error>((status, body))
        };
        let (status, body) = self.timed(what, fetch).await?;
        if !status.is_success() {
            return Err(self.error(what, format!("status {status}")));
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.error(what, format!("answer is not the expected JSON: {e}")))
    }
}

impl Answers for Client {
    fn labels(&self) -> &[(String, &'static str)] {
        &self.labels
    }

    async fn list(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, ApiError> {
        let filters = id.map(|id| HashMap::from([("id".to_owned(), vec![id.to_owned()])]));
        let options = ListContainersOptions { all: true, filters, ..Default::default() };
        self.timed("GET /containers/json", self.docker.list_containers(Some(options))).await
    }

    /// Podman's own container list, for pod ids and names.
    async fn list_libpod(&self, id: Option<&str>) -> Result<Vec<LibpodContainer>, ApiError> {
        let mut path = "/v4.0.0/libpod/containers/json?all=true".to_owned();
        if let Some(id) = id {
            // A 64-hex id needs no escaping besides the JSON's braces and quotes.
            path.push_str(&format!("&filters=%7B%22id%22%3A%5B%22{id}%22%5D%7D"));
        }
        self.get_json("GET /libpod/containers/json", path).await
    }
}

/// Lists everything, then follows events until the stream fails or ends.
async fn session(
    client: &mut Client,
    cache: &mut Cache,
    shared: &SharedSnapshot,
    readiness: &Readiness,
    backoff: &mut Duration,
) -> Result<(), ApiError> {
    let podman = client.hello().await?;
    // Events from one second before the list on, so nothing between list and stream is lost
    // (the daemon replays them; applying one twice is harmless).
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).saturating_sub(1);
    let fresh = list_all(client, podman).await?;
    cache.reset(fresh, shared);
    readiness.set_ready();
    *backoff = INITIAL_BACKOFF;
    tracing::debug!(socket = %client.socket.display(), containers = cache.view().containers.len(), podman, "docker_api listed the containers.");

    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("event".to_owned(), ["create", "start", "rename", "die", "destroy"].map(str::to_owned).to_vec()),
    ]);
    let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
    let mut events = client.docker.events(Some(options));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| client.error("GET /events", e))?;
        apply_event(client, cache, podman, &event).await?;
        // A burst (a Compose project starting) is applied whole before it is published.
        while let Some(Some(event)) = events.next().now_or_never() {
            let event = event.map_err(|e| client.error("GET /events", e))?;
            apply_event(client, cache, podman, &event).await?;
        }
        cache.publish(shared);
    }
    Err(client.error("GET /events", "the daemon closed the events stream"))
}

/// What one event asks of the cache; shared by the task and the fuzz replay.
#[derive(Debug, PartialEq)]
enum EventAction<'a> {
    /// The container is gone: forget it (and pods left without containers).
    Forget(&'a str),
    /// Read this one container from the API.
    Read(&'a str),
    /// The container got this name (a `rename` event, whose `name` attribute is the new one).
    Rename(&'a str, &'a str),
    /// Nothing to do, no request.
    Nothing,
}

fn event_action<'a>(cache: &mut Cache, event: &'a EventMessage) -> EventAction<'a> {
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
async fn apply_event(
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

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

async fn follow(mut client: Client, shared: Arc<SharedSnapshot>, readiness: Readiness) {
    let mut cache = Cache::default();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        if let Err(error) = session(&mut client, &mut cache, &shared, &readiness, &mut backoff).await {
            count_error();
            warn_limited!("docker-api", %error, retry_in = %humantime::format_duration(backoff), "docker_api: the Docker API failed; names stay as they were, metrics are exported with ids meanwhile.");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

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

/// The processor: attaches the latest snapshot; the background task keeps it current.
pub struct DockerApi {
    shared: Arc<SharedSnapshot>,
    readiness: Readiness,
    startup_wait: Duration,
    _task: BackgroundTask,
}

impl DockerApi {
    pub fn new(config: &DockerApiConfig) -> Result<DockerApi, DockerApiError> {
        let socket = socket_path(config.socket.as_deref(), std::env::var("DOCKER_HOST").ok().as_deref())?;
        DockerApi::with_socket(config, socket)
    }

    fn with_socket(config: &DockerApiConfig, socket: PathBuf) -> Result<DockerApi, DockerApiError> {
        if config.max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(DockerApiError::TooSmallLimit);
        }
        let shared = SharedSnapshot::new();
        let readiness = Readiness::new();
        let client = Client::new(config, socket)?;
        let (task_shared, task_readiness) = (Arc::clone(&shared), readiness.clone());
        let task = BackgroundTask::spawn("docker-api", move || follow(client, task_shared, task_readiness))
            .map_err(DockerApiError::Spawn)?;
        Ok(DockerApi { shared, readiness, startup_wait: config.startup_wait, _task: task })
    }
}

impl Processor for DockerApi {
    fn process(&mut self, _ctx: &SweepContext, sweep: &mut Sweep) {
        let stats = attach(&self.shared.load(), sweep);
        Telemetry::global()
            .metadata_misses
            .fetch_add(stats.container_misses, std::sync::atomic::Ordering::Relaxed);
    }

    fn readiness(&self) -> Option<(Readiness, Duration)> {
        Some((self.readiness.clone(), self.startup_wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_tag_and_digest() {
        type Parts<'a> = Option<(&'a str, Option<&'a str>, Option<&'a str>)>;
        let cases: &[(&str, Parts)] = &[
            ("busybox", Some(("busybox", None, None))),
            ("busybox:1.36", Some(("busybox", Some("1.36"), None))),
            ("localhost/bb:1", Some(("localhost/bb", Some("1"), None))),
            ("registry.example:5000/team/app", Some(("registry.example:5000/team/app", None, None))),
            ("registry.example:5000/team/app:v2", Some(("registry.example:5000/team/app", Some("v2"), None))),
            ("ghcr.io/o/app:v1@sha256:abcd", Some(("ghcr.io/o/app", Some("v1"), Some("sha256:abcd")))),
            ("ghcr.io/o/app@sha256:abcd", Some(("ghcr.io/o/app", None, Some("sha256:abcd")))),
            ("sha256:0123abcd", None),
            (&"a".repeat(64), None),
            ("", None),
            (":tag", None),
            ("host:5000/", None),
        ];
        for (input, expected) in cases {
            let got = parse_image_reference(input).map(|r| (r.name, r.tag, r.digest));
            assert_eq!(got, *expected, "{input}");
        }
    }

    #[test]
    fn config_defaults_and_bad_values_are_reported_when_read() {
        let empty: DockerApiConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, DockerApiConfig::default());
        assert_eq!(empty.startup_wait, Duration::from_secs(5));
        let bad_socket =
            serde_json::from_str::<DockerApiConfig>(r#"{"socket":"tcp://10.0.0.1:2375"}"#).unwrap_err();
        assert!(bad_socket.to_string().contains("not a unix socket address"), "{bad_socket}");
        let small = serde_json::from_str::<DockerApiConfig>(r#"{"max_response_bytes":100}"#).unwrap_err();
        assert!(small.to_string().contains("at least 4096"), "{small}");
        let unknown = serde_json::from_str::<DockerApiConfig>(r#"{"sockets":"/x"}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
    }

    #[test]
    fn api_version_is_the_daemons_up_to_bollards() {
        let v = |s: Option<&str>| {
            let c = api_version(s);
            (c.major_version, c.minor_version)
        };
        assert_eq!(v(Some("1.41")), (1, 41));
        let ours = (bollard::API_DEFAULT_VERSION.major_version, bollard::API_DEFAULT_VERSION.minor_version);
        assert_eq!(v(Some("1.99")), ours);
        assert_eq!(v(Some("garbage")), ours);
        assert_eq!(v(None), ours);
    }

    #[test]
    fn socket_from_config_then_unix_docker_host_then_the_default() {
        assert_eq!(socket_path(Some("/run/x.sock"), None).unwrap(), PathBuf::from("/run/x.sock"));
        assert_eq!(
            socket_path(Some("unix:///run/x.sock"), Some("unix:///y")).unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(matches!(socket_path(Some("tcp://1.2.3.4:2375"), None), Err(DockerApiError::NotUnix(_))));
        assert_eq!(
            socket_path(None, Some("unix:///run/podman/podman.sock")).unwrap(),
            PathBuf::from("/run/podman/podman.sock")
        );
        assert_eq!(socket_path(None, Some("tcp://1.2.3.4:2375")).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(socket_path(None, None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
    }

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
