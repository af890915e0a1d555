//! How the `docker_api` task talks to the daemon: a bounded transport on the unix socket under
//! bollard, the version handshake, and the session that lists and then follows events, with
//! backoff between sessions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::ContainerSummary;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::{BollardRequest, Docker};
use futures_util::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::state::{apply_event, count_error, list_all, Answers, Cache, LibpodContainer};
use super::{ApiError, DockerApiConfig, DockerApiError};
use crate::processors::metadata::{allowlisted_key, Readiness, SharedSnapshot};
use crate::semconv;
use crate::warn_limited;

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
pub(super) fn api_version(daemon: Option<&str>) -> bollard::ClientVersion {
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
pub(super) struct Client {
    docker: Docker,
    socket: Arc<PathBuf>,
    limit: u64,
    timeout: Duration,
    labels: Vec<(String, &'static str)>,
}

impl Client {
    pub(super) fn new(config: &DockerApiConfig, socket: PathBuf) -> Result<Client, DockerApiError> {
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

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) async fn follow(mut client: Client, shared: Arc<SharedSnapshot>, readiness: Readiness) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
