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
use crate::telemetry::Telemetry;
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
#[derive(Debug, Deserialize)]
struct LibpodContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Pod", default)]
    pod: String,
    #[serde(rename = "PodName", default)]
    pod_name: String,
}

/// The task's cache, published whole as a [`Snapshot`] after every change.
#[derive(Default)]
struct Cache {
    containers: HashMap<String, ContainerMeta>,
    pods: HashMap<String, PodMeta>,
}

impl Cache {
    fn snapshot(&self) -> Snapshot {
        Snapshot { containers: self.containers.clone(), pods: self.pods.clone() }
    }

    fn put(&mut self, summary: &ContainerSummary, labels: &[(String, &'static str)]) {
        let Some(id) = valid_id(summary.id.as_deref()) else {
            count_error();
            warn_limited!("docker-api-bad-id", id = ?summary.id, "The Docker API listed a container without a valid 64-hex id; ignored.");
            return;
        };
        if self.containers.len() >= MAX_CONTAINERS && !self.containers.contains_key(id) {
            count_error();
            warn_limited!(
                "docker-api-full",
                limit = MAX_CONTAINERS,
                "The docker_api cache is full; new containers are exported with ids only."
            );
            return;
        }
        let pod = self.containers.get(id).and_then(|m| m.pod.clone());
        self.containers
            .insert(id.to_owned(), ContainerMeta { pod, attributes: container_attributes(summary, labels) });
    }

    fn forget(&mut self, id: &str) {
        self.containers.remove(id);
        self.prune_pods();
    }

    /// Replaces a cached container's `container.name` (callers check the name with
    /// [`own_name`]).
    fn rename(&mut self, id: &str, name: &str) {
        let Some(meta) = self.containers.get_mut(id) else { return };
        let value = AttrValue::text(name);
        match meta.attributes.iter_mut().find(|(key, _)| *key == semconv::CONTAINER_NAME) {
            Some((_, old)) => *old = value,
            None => meta.attributes.insert(0, (semconv::CONTAINER_NAME, value)),
        }
    }

    fn put_podman_pods(&mut self, entries: &[LibpodContainer]) {
        for entry in entries {
            if entry.pod.is_empty() || entry.pod.len() > MAX_VALUE_LEN || entry.pod_name.len() > MAX_VALUE_LEN
            {
                continue;
            }
            if let Some(meta) = self.containers.get_mut(&entry.id) {
                meta.pod = Some(entry.pod.clone());
            }
            if !entry.pod_name.is_empty() {
                self.pods.insert(
                    entry.pod.clone(),
                    PodMeta {
                        attributes: vec![(semconv::PODMAN_POD_NAME, AttrValue::text(&entry.pod_name))],
                    },
                );
            }
        }
    }

    /// Drops pods no cached container belongs to any more.
    fn prune_pods(&mut self) {
        let live: std::collections::HashSet<&str> =
            self.containers.values().filter_map(|m| m.pod.as_deref()).collect();
        self.pods.retain(|k, _| live.contains(k.as_str()));
    }
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

    async fn list(&self, id: Option<&str>) -> Result<Vec<ContainerSummary>, ApiError> {
        let filters = id.map(|id| HashMap::from([("id".to_owned(), vec![id.to_owned()])]));
        let options = ListContainersOptions { all: true, filters, ..Default::default() };
        self.timed("GET /containers/json", self.docker.list_containers(Some(options))).await
    }

    /// Pod ids and names from Podman's own list. A failure costs only the pod names (counted
    /// and logged), not the names the Docker-compatible list gave.
    async fn podman_pods(&self, cache: &mut Cache, id: Option<&str>) {
        match self.list_libpod(id).await {
            Ok(entries) => cache.put_podman_pods(&entries),
            Err(error) => {
                count_error();
                warn_limited!("docker-api-libpod", %error, "docker_api: Podman's libpod list failed; containers keep their names, without podman.pod.name.");
            }
        }
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
    let listed = client.list(None).await?;
    let mut fresh = Cache::default();
    for summary in &listed {
        fresh.put(summary, &client.labels);
    }
    if podman {
        client.podman_pods(&mut fresh, None).await;
    }
    *cache = fresh;
    shared.store(cache.snapshot());
    readiness.set_ready();
    *backoff = INITIAL_BACKOFF;
    tracing::debug!(socket = %client.socket.display(), containers = cache.containers.len(), podman, "docker_api listed the containers.");

    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("event".to_owned(), ["create", "start", "rename", "die", "destroy"].map(str::to_owned).to_vec()),
    ]);
    let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
    let mut events = client.docker.events(Some(options));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| client.error("GET /events", e))?;
        apply_event(client, cache, podman, &event).await?;
        // A burst (a Compose project starting) is applied whole before one snapshot is
        // published: each publication copies the cache.
        while let Some(Some(event)) = events.next().now_or_never() {
            let event = event.map_err(|e| client.error("GET /events", e))?;
            apply_event(client, cache, podman, &event).await?;
        }
        shared.store(cache.snapshot());
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

fn event_action<'a>(cache: &Cache, event: &'a EventMessage) -> EventAction<'a> {
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
        "create" | "start" if cache.containers.contains_key(id) => EventAction::Nothing,
        // The event names the new name; the list is no witness: dockerd 20.10 can list a
        // container under both its old and new names when the event arrives (seen once in
        // 59 renames), and nothing says which is which. Read the container only when the
        // event carries no usable name or the container is not cached.
        "rename" if cache.containers.contains_key(id) => {
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

async fn apply_event(
    client: &Client,
    cache: &mut Cache,
    podman: bool,
    event: &EventMessage,
) -> Result<(), ApiError> {
    match event_action(cache, event) {
        EventAction::Forget(id) => cache.forget(id),
        EventAction::Rename(id, name) => cache.rename(id, name),
        EventAction::Read(id) => {
            for summary in client.list(Some(id)).await? {
                cache.put(&summary, &client.labels);
            }
            if podman {
                client.podman_pods(cache, Some(id)).await;
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

/// The task's handling of each kind of answer without a socket, for the fuzz target
/// `docker_api` (`podometer::fuzzing`); not an API. Each answer is decoded as bollard and
/// `get_json` decode it (`/version`, `/containers/json` and Podman's list as one JSON document,
/// `/events` as JSON lines) and applied to a fresh cache as `session` and `apply_event` apply
/// it; an event that would re-read one container takes that container's entry of `list`.
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
    let listed: Vec<ContainerSummary> = serde_json::from_slice(list).unwrap_or_default();
    let libpod: Vec<LibpodContainer> = serde_json::from_slice(libpod).unwrap_or_default();
    let mut cache = Cache::default();
    for summary in &listed {
        cache.put(summary, &labels);
    }
    if podman {
        cache.put_podman_pods(&libpod);
    }
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(event) = serde_json::from_slice::<EventMessage>(line) else { continue };
        match event_action(&cache, &event) {
            EventAction::Forget(id) => cache.forget(id),
            EventAction::Rename(id, name) => cache.rename(id, name),
            EventAction::Read(id) => {
                for summary in listed.iter().filter(|s| s.id.as_deref() == Some(id)) {
                    cache.put(summary, &labels);
                }
                if podman {
                    for entry in libpod.iter().filter(|e| e.id == id) {
                        cache.put_podman_pods(std::slice::from_ref(entry));
                    }
                }
            }
            EventAction::Nothing => {}
        }
    }
    cache.snapshot()
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

    #[test]
    fn entries_without_a_valid_id_or_with_oversized_values_are_left_out() {
        let mut cache = Cache::default();
        let bad: ContainerSummary = serde_json::from_str(r#"{"Id":"../../etc","Names":["/x"]}"#).unwrap();
        cache.put(&bad, &[]);
        assert!(cache.containers.is_empty());
        let long = "n".repeat(MAX_VALUE_LEN + 1);
        let big: ContainerSummary = serde_json::from_str(&format!(
            r#"{{"Id":"{}","Names":["/{long}"],"Image":"bb:1"}}"#,
            "b".repeat(64)
        ))
        .unwrap();
        cache.put(&big, &[]);
        let attrs = &cache.containers[&"b".repeat(64)].attributes;
        assert!(attrs.iter().all(|(k, _)| *k != semconv::CONTAINER_NAME), "{attrs:?}");
        assert!(attrs.iter().any(|(k, _)| *k == semconv::CONTAINER_IMAGE_NAME));
    }

    #[test]
    fn podman_pods_are_named_and_pruned_with_their_last_container() {
        let mut cache = Cache::default();
        let id = "c".repeat(64);
        let summary: ContainerSummary =
            serde_json::from_str(&format!(r#"{{"Id":"{id}","Names":["p-app"]}}"#)).unwrap();
        cache.put(&summary, &[]);
        cache.put_podman_pods(&[LibpodContainer {
            id: id.clone(),
            pod: "d".repeat(64),
            pod_name: "mypod".into(),
        }]);
        assert_eq!(cache.containers[&id].pod.as_deref(), Some("d".repeat(64).as_str()));
        assert_eq!(cache.pods[&"d".repeat(64)].attributes, vec![(semconv::PODMAN_POD_NAME, "mypod".into())]);
        cache.containers.remove(&id);
        cache.prune_pods();
        assert!(cache.pods.is_empty());
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
        assert_eq!(event_action(&cache, &parse(&event)), EventAction::Read(&id));
        let summary: ContainerSummary =
            serde_json::from_str(&both).map(|v: Vec<_>| v.into_iter().next().unwrap()).unwrap();
        cache.put(&summary, &[]);
        // A cached one takes the event's name, with or without the leading `/`.
        assert_eq!(event_action(&cache, &parse(&event)), EventAction::Rename(&id, "new"));
        let slashed = rename(r#"{"name":"/new"}"#);
        assert_eq!(event_action(&cache, &parse(&slashed)), EventAction::Rename(&id, "new"));
        // No usable name in the event: the container is read again.
        let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(MAX_VALUE_LEN + 1));
        for attributes in [r#"{}"#, r#"{"name":""}"#, r#"{"name":"other/alias"}"#, long.as_str()] {
            assert_eq!(
                event_action(&cache, &parse(&rename(attributes))),
                EventAction::Read(&id),
                "{attributes}"
            );
        }
    }
}
