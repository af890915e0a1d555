//! `prometheus`: a `/metrics` endpoint for Prometheus to scrape (pull), in the OpenTelemetry
//! naming or in cAdvisor's.
//!
//! `export()` only stores the sweep (an `Arc`, no copy); a scrape renders the latest sweep on
//! the blocking pool, once per sweep and format: scrapes that arrive while it renders wait for
//! that text instead of rendering their own, and later scrapes of the same sweep get it cached,
//! all sharing one buffer. At most [`MAX_CONCURRENT_SCRAPES`] scrapes are handled at once; more
//! are answered 503 at once (as node_exporter's `--web.max-requests`). Scrapes never delay
//! sweeps and sweeps never wait for scrapes. The HTTP server is a task on the agent's tokio
//! runtime, bound when the exporter is built so a taken port fails start-up.
//!
//! Samples carry the sweep's time as their timestamp (`timestamps: true`, the default), as
//! cAdvisor's do: a rate over two scrapes is then the rate between two readings, whatever the
//! scrape jitter. Counter start times are not exposed (no `_created` series); a reset shows as
//! a counter going down, which `rate()` handles.

pub mod cadvisor;
pub mod otel;
pub mod text;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::debug;

use super::{BoxError, BoxFuture, Exporter};
use crate::model::Sweep;
use crate::semconv;
use text::Format;

/// The naming scheme of the exposition.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// The OpenTelemetry → Prometheus compatibility rules (`container_cpu_time_seconds_total`).
    #[default]
    Otel,
    /// cAdvisor's names and labels (`container_cpu_usage_seconds_total{namespace,pod,container}`).
    Cadvisor,
}

/// Serves the latest sweep on `http://<endpoint>/metrics`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusExporterConfig {
    /// `host:port` to listen on; `0.0.0.0:9464` for every interface. Default `localhost:9464`
    /// (the port the OpenTelemetry specification gives Prometheus exporters).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// `otel` (default) or `cadvisor`.
    #[serde(default)]
    pub naming: Naming,
    /// `naming: otel` only: resource attributes copied onto every series as labels (all of
    /// them are in `target_info`). `container.id` and `k8s.pod.uid` are always labels.
    #[serde(default = "default_promoted")]
    pub promote_resource_attributes: Vec<String>,
    /// Stamp samples with the sweep's time (default `true`). With `false` Prometheus uses the
    /// scrape's time and marks vanished containers stale at once.
    #[serde(default = "default_true")]
    pub timestamps: bool,
    /// `naming: otel` only: write the `target_info` family (default `true`).
    #[serde(default = "default_true")]
    pub target_info: bool,
}

fn default_endpoint() -> String {
    "localhost:9464".to_owned()
}
fn default_promoted() -> Vec<String> {
    vec![
        semconv::K8S_NAMESPACE_NAME.to_owned(),
        semconv::K8S_POD_NAME.to_owned(),
        semconv::K8S_CONTAINER_NAME.to_owned(),
    ]
}
fn default_true() -> bool {
    true
}

impl Default for PrometheusExporterConfig {
    fn default() -> Self {
        PrometheusExporterConfig {
            endpoint: default_endpoint(),
            naming: Naming::default(),
            promote_resource_attributes: default_promoted(),
            timestamps: true,
            target_info: true,
        }
    }
}

impl PrometheusExporterConfig {
    /// Problems as `(key, reason)`, checked before anything starts.
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        match self.endpoint.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => problems.push((
                "endpoint".to_owned(),
                format!("`{}` is not `host:port` (e.g. `0.0.0.0:9464`)", self.endpoint),
            )),
        }
        for (i, key) in self.promote_resource_attributes.iter().enumerate() {
            if key.is_empty() {
                problems.push((format!("promote_resource_attributes[{i}]"), "is empty".to_owned()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve { endpoint: String, source: std::io::Error },
    #[error("cannot listen on {endpoint}: {source}")]
    Bind { endpoint: String, source: std::io::Error },
}

/// The latest sweeps (one per pipeline feeding this exporter, all of one instant) and the
/// texts rendered from them.
#[derive(Default)]
struct Latest {
    sweeps: Vec<Arc<Sweep>>,
    /// Bumped on every change of `sweeps`, to tell a stale cached text.
    generation: u64,
    cache: [Option<(u64, Bytes)>; 2],
}

/// Scrapes handled at once; one more is answered `503 Service Unavailable` at once.
pub const MAX_CONCURRENT_SCRAPES: usize = 40;

struct Shared {
    config: PrometheusExporterConfig,
    latest: Mutex<Latest>,
    /// Held while a text is rendered: a scrape that finds no text for the latest sweeps waits
    /// here, and finds the text the scrape before it rendered.
    rendering: tokio::sync::Mutex<()>,
    /// Permits for the scrapes being handled.
    scrapes: Arc<tokio::sync::Semaphore>,
    /// Texts rendered so far.
    renders: AtomicU64,
}

impl Shared {
    fn new(config: &PrometheusExporterConfig) -> Shared {
        Shared {
            config: config.clone(),
            latest: Mutex::new(Latest::default()),
            rendering: tokio::sync::Mutex::new(()),
            scrapes: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCRAPES)),
            renders: AtomicU64::new(0),
        }
    }

    fn store(&self, sweep: Arc<Sweep>) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        // Pipelines sweep at the same instant; a newer instant replaces them all.
        if latest.sweeps.first().is_some_and(|s| s.time != sweep.time) {
            latest.sweeps.clear();
        }
        latest.sweeps.push(sweep);
        latest.generation += 1;
    }

    /// The cached text of the latest sweeps, or what to render it from.
    fn cached(&self, format: Format) -> Result<Bytes, (Vec<Arc<Sweep>>, u64)> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        match &latest.cache[format as usize] {
            Some((g, text)) if *g == latest.generation => Ok(text.clone()),
            _ => Err((latest.sweeps.clone(), latest.generation)),
        }
    }

    /// The text of the latest sweeps, rendered at most once per sweep and format however many
    /// scrapes ask at once.
    async fn rendered(self: &Arc<Self>, format: Format) -> Option<Bytes> {
        if let Ok(text) = self.cached(format) {
            return Some(text);
        }
        let _one_at_a_time = self.rendering.lock().await;
        let (sweeps, generation) = match self.cached(format) {
            Ok(text) => return Some(text),
            Err(source) => source,
        };
        let shared = Arc::clone(self);
        let text = tokio::task::spawn_blocking(move || {
            shared.renders.fetch_add(1, Ordering::Relaxed);
            Bytes::from(render(&shared.config, &sweeps, format))
        })
        .await
        .ok()?;
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.generation == generation {
            latest.cache[format as usize] = Some((generation, text.clone()));
        }
        Some(text)
    }
}

/// Renders sweeps in the configured naming (also used by the benchmark).
pub fn render(config: &PrometheusExporterConfig, sweeps: &[Arc<Sweep>], format: Format) -> String {
    match config.naming {
        Naming::Otel => otel::render(
            sweeps,
            format,
            &config.promote_resource_attributes,
            config.timestamps,
            config.target_info,
        ),
        Naming::Cadvisor => cadvisor::render(sweeps, format, config.timestamps),
    }
}

pub struct PrometheusExporter {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl PrometheusExporter {
    /// Binds the endpoint and starts serving. Must run inside the tokio runtime.
    pub fn new(config: &PrometheusExporterConfig) -> Result<PrometheusExporter, PrometheusError> {
        let endpoint = config.endpoint.clone();
        let addr = endpoint
            .to_socket_addrs()
            .map_err(|source| PrometheusError::Resolve { endpoint: endpoint.clone(), source })?
            .next()
            .ok_or_else(|| PrometheusError::Resolve {
                endpoint: endpoint.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        let bind = |source| PrometheusError::Bind { endpoint: endpoint.clone(), source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = std_listener.local_addr().map_err(bind)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind)?;
        let shared = Arc::new(Shared::new(config));
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(scrape))
            .route("/", axum::routing::get(|| async { "podometer: metrics at /metrics\n" }))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "The Prometheus endpoint stopped.");
            }
        });
        debug!(%local_addr, "Prometheus endpoint listening.");
        Ok(PrometheusExporter { shared, local_addr, stop: Some(stop) })
    }

    /// The address actually bound (port 0 in the config picks a free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many texts scrapes have rendered so far (one per sweep and format scraped).
    pub fn renders(&self) -> u64 {
        self.shared.renders.load(Ordering::Relaxed)
    }
}

async fn scrape(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Ok(_permit) = Arc::clone(&shared.scrapes).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent scrapes\n",
        )
            .into_response();
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    match shared.rendered(format).await {
        Some(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response(),
    }
}

impl Exporter for PrometheusExporter {
    fn export(&mut self, sweep: Arc<Sweep>) -> BoxFuture<'_, Result<(), BoxError>> {
        self.shared.store(sweep);
        Box::pin(async { Ok(()) })
    }

    fn shutdown(&mut self, _deadline: Instant) -> BoxFuture<'_, Result<(), BoxError>> {
        // Keep serving the last sweep until the runtime ends would outlive the agent's
        // "flushed" promise for nothing: Prometheus scrapes again from the next instance.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past MAX_CONCURRENT_SCRAPES scrapes in progress, one more is answered 503 at once; a
    /// freed permit lets the next one through.
    #[tokio::test]
    async fn scrapes_beyond_the_limit_are_refused_at_once() {
        let shared = Arc::new(Shared::new(&PrometheusExporterConfig::default()));
        shared.store(Arc::new(Sweep::new(std::time::SystemTime::UNIX_EPOCH)));
        let held: Vec<_> = (0..MAX_CONCURRENT_SCRAPES)
            .map(|_| Arc::clone(&shared.scrapes).try_acquire_owned().unwrap())
            .collect();
        let refused = scrape(State(Arc::clone(&shared)), HeaderMap::new()).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shared.renders.load(Ordering::Relaxed), 0, "a refused scrape renders nothing");
        drop(held);
        let served = scrape(State(Arc::clone(&shared)), HeaderMap::new()).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(shared.renders.load(Ordering::Relaxed), 1);
    }
}
