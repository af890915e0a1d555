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

#[cfg(any(test, feature = "fuzzing"))]
mod replay;
mod state;
mod transport;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub use replay::{replay_answers, MAX_ATTRIBUTE_LEN};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{attach, BackgroundTask, Readiness, SharedSnapshot};
use crate::agent_counters::Telemetry;
use crate::config::duration;
use crate::model::{Sweep, SweepContext};
use crate::processors::Processor;
use transport::{follow, Client};

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
}
