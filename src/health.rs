//! The health endpoint: `/healthz` (sweeps are happening) and `/readyz` (the first sweep is
//! done and every metadata processor has synced), for Kubernetes probes and load balancers.
//!
//! Both answer from atomics the sweep thread stores after each sweep; the server never takes
//! a lock the sweep thread holds, so a stuck sweep cannot stall a probe, and a probe costs a
//! few atomic loads. The HTTP side is hyper's HTTP/1 server held short: one request per
//! connection, a bounded head read within a deadline, no body read; probes send
//! `GET /healthz HTTP/1.1` and look at the status code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::processors::metadata::Readiness;

/// `health:` in the config. Absent: no endpoint (the default, and always for `collect`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `host:port` to listen on, e.g. `0.0.0.0:13133` (the Collector's health_check port).
    pub endpoint: String,
    /// How many intervals may pass without a finished sweep before `/healthz` fails.
    #[serde(default = "default_stale_intervals")]
    pub stale_intervals: u32,
}

fn default_stale_intervals() -> u32 {
    3
}

impl HealthConfig {
    /// The listen address, or why `endpoint` is not one.
    pub fn address(&self) -> Result<SocketAddr, String> {
        self.endpoint
            .parse()
            .map_err(|e| format!("`{}` is not an IP:port socket address ({e})", self.endpoint))
    }

    /// Every problem with this section, as (key, reason).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(reason) = self.address() {
            problems.push(("endpoint".to_owned(), reason));
        }
        if self.stale_intervals == 0 {
            problems.push(("stale_intervals".to_owned(), "must be at least 1".to_owned()));
        }
        problems
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen for health checks on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// What the probes read. The sweep thread writes it; the server only loads.
#[derive(Debug)]
pub struct HealthState {
    started: Instant,
    /// A sweep is due this often.
    interval: Duration,
    /// `/healthz` fails when no sweep finished within this long.
    stale_after: Duration,
    /// Milliseconds after `started` when the latest sweep finished; `u64::MAX`: none yet.
    last_sweep_done_ms: AtomicU64,
    /// Cleared when the sweep thread ends for any reason, panics included.
    sweeper_alive: AtomicBool,
    /// The metadata processors' readiness, published once before the first sweep.
    processors: OnceLock<Vec<Readiness>>,
    /// Milliseconds after `started` when the sweep thread stopped waiting for the metadata
    /// processors and began sweeping; `u64::MAX`: still waiting (each processor bounds its
    /// own wait, so that phase cannot fail liveness and get the agent restarted in a loop).
    sweeping_since_ms: AtomicU64,
}

/// The answer to one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: String,
}

impl HealthState {
    pub fn new(interval: Duration, stale_intervals: u32) -> HealthState {
        HealthState {
            started: Instant::now(),
            interval,
            // At least a second of slack so a short interval does not flap under load.
            stale_after: interval * stale_intervals.max(1) + Duration::from_secs(1),
            last_sweep_done_ms: AtomicU64::new(u64::MAX),
            sweeper_alive: AtomicBool::new(true),
            processors: OnceLock::new(),
            sweeping_since_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Called by the sweep thread after every sweep.
    pub fn sweep_done(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_sweep_done_ms.store(ms, Ordering::Release);
    }

    /// Called once, by the sweep thread, before its first sweep.
    pub fn set_processors(&self, readiness: Vec<Readiness>) {
        let _ = self.processors.set(readiness);
        self.sweeping_since_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Called when the sweep thread ends (from a drop guard, so also on panic).
    pub fn sweeper_stopped(&self) {
        self.sweeper_alive.store(false, Ordering::Release);
    }

    /// `/healthz`: the sweep thread lives and finished a sweep recently (or, before its first
    /// one, began sweeping less than `stale_after` ago; the metadata wait before that counts
    /// as alive).
    pub fn liveness(&self) -> Verdict {
        self.liveness_at(self.started.elapsed())
    }

    fn liveness_at(&self, now: Duration) -> Verdict {
        if !self.sweeper_alive.load(Ordering::Acquire) {
            return Verdict { ok: false, reason: "the sweep thread has stopped".into() };
        }
        let began = self.sweeping_since_ms.load(Ordering::Acquire);
        if began == u64::MAX {
            return Verdict { ok: true, reason: "waiting for metadata processors".into() };
        }
        let last = self.last_sweep_done_ms.load(Ordering::Acquire);
        let since = now.saturating_sub(Duration::from_millis(if last == u64::MAX { began } else { last }));
        if since > self.stale_after {
            let what = if last == u64::MAX { "no sweep has finished" } else { "the last sweep finished" };
            return Verdict {
                ok: false,
                reason: format!(
                    "{what} {} ago (interval {}, limit {})",
                    humantime::format_duration(Duration::from_millis(since.as_millis() as u64)),
                    humantime::format_duration(self.interval),
                    humantime::format_duration(self.stale_after)
                ),
            };
        }
        Verdict { ok: true, reason: "sweeping".into() }
    }

    /// `/readyz`: alive, the first sweep is done and every metadata processor has synced.
    pub fn readiness(&self) -> Verdict {
        let live = self.liveness();
        if !live.ok {
            return live;
        }
        if self.last_sweep_done_ms.load(Ordering::Acquire) == u64::MAX {
            return Verdict { ok: false, reason: "the first sweep has not finished".into() };
        }
        let waiting = self.processors.get().map_or(0, |p| p.iter().filter(|r| !r.is_ready()).count());
        if waiting > 0 {
            return Verdict { ok: false, reason: format!("{waiting} metadata processor(s) not synced yet") };
        }
        Verdict { ok: true, reason: "ready".into() }
    }
}

/// Marks the sweep thread stopped when dropped: put one in the sweep thread so a panic
/// (which unwinds through it) fails `/healthz` at once.
pub struct SweeperGuard(pub Arc<HealthState>);

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        self.0.sweeper_stopped();
    }
}

/// hyper's read buffer, and so the longest request head accepted (its minimum, 8 KiB; probes
/// send under 100 bytes). A longer head gets 431 and the connection closed.
const MAX_REQUEST: usize = 8192;
/// At most this many header lines; probes send two or three.
const MAX_HEADERS: usize = 32;
/// A client must send its whole head within this, and the whole exchange (answer written
/// included) must end within twice this: a slow or silent client holds a task and a socket
/// for no longer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the endpoint now (so a taken port fails start-up) and returns the serving future.
pub async fn bind(
    address: SocketAddr,
    state: Arc<HealthState>,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), HealthError> {
    let listener =
        TcpListener::bind(address).await.map_err(|source| HealthError::Bind { address, source })?;
    let local = listener.local_addr().map_err(|source| HealthError::Bind { address, source })?;
    info!(address = %local, "Health endpoint listening (/healthz, /readyz).");
    Ok((local, serve(listener, state)))
}

async fn serve(listener: TcpListener, state: Arc<HealthState>) {
    // HTTP/1 only, one request per connection: probes open a connection per probe, and
    // keep-alive would let an idle client hold a socket open.
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(%error, "Health endpoint accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request: Request<Incoming>| {
                let (status, body) = respond(request.method(), request.uri().path(), &state);
                let response = Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from(body)));
                std::future::ready(response)
            }),
        );
        tokio::spawn(async move {
            // The head timeout does not cover a client that never reads the answer.
            if let Ok(Err(error)) = tokio::time::timeout(READ_TIMEOUT * 2, connection).await {
                debug!(%error, "Health endpoint connection failed.");
            }
        });
    }
}

/// The status and body for one request. Pure, for tests. HEAD gets GET's status and headers
/// (hyper drops the body).
pub fn respond(method: &Method, path: &str, state: &HealthState) -> (StatusCode, String) {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let verdict = match path {
        "/healthz" | "/livez" => state.liveness(),
        "/readyz" => state.readiness(),
        _ => return (StatusCode::NOT_FOUND, "try /healthz or /readyz\n".into()),
    };
    let status = if verdict.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, format!("{}\n", verdict.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HealthState {
        HealthState::new(Duration::from_secs(10), 3)
    }

    #[test]
    fn fresh_agent_is_live_but_not_ready() {
        let s = state();
        assert!(s.liveness().ok);
        let r = s.readiness();
        assert!(!r.ok);
        assert!(r.reason.contains("first sweep"), "{}", r.reason);
    }

    #[test]
    fn ready_after_a_sweep_when_processors_synced() {
        let s = state();
        let flag = Readiness::new();
        s.set_processors(vec![flag.clone()]);
        s.sweep_done();
        let r = s.readiness();
        assert!(!r.ok && r.reason.contains("1 metadata processor"), "{}", r.reason);
        flag.set_ready();
        assert_eq!(s.readiness(), Verdict { ok: true, reason: "ready".into() });
    }

    #[test]
    fn stale_sweeps_fail_liveness() {
        let s = state();
        // Waiting for metadata processors, however long, is alive.
        assert!(s.liveness_at(Duration::from_secs(600)).ok);
        s.set_processors(Vec::new());
        s.sweep_done();
        // 3 intervals + 1 s of slack = 31 s.
        assert!(s.liveness_at(Duration::from_secs(30)).ok);
        let v = s.liveness_at(Duration::from_secs(32));
        assert!(!v.ok);
        assert!(v.reason.contains("last sweep finished"), "{}", v.reason);
        // Sweeping began but no sweep ever finished fails too.
        let never = state();
        never.set_processors(Vec::new());
        assert!(!never.liveness_at(Duration::from_secs(40)).ok);
    }

    #[test]
    fn stopped_sweeper_fails_both() {
        let s = Arc::new(state());
        s.sweep_done();
        drop(SweeperGuard(Arc::clone(&s)));
        assert!(!s.liveness().ok);
        assert!(!s.readiness().ok);
    }

    #[test]
    fn requests() {
        let s = state();
        s.sweep_done();
        assert_eq!(respond(&Method::GET, "/healthz", &s).0, StatusCode::OK);
        assert_eq!(respond(&Method::HEAD, "/readyz", &s).0, StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/metrics", &s).0, StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/healthz", &s).0, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn config_validation() {
        let ok = HealthConfig { endpoint: "0.0.0.0:13133".into(), stale_intervals: 3 };
        assert!(ok.validate().is_empty());
        let bad = HealthConfig { endpoint: "localhost".into(), stale_intervals: 0 };
        let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["endpoint", "stale_intervals"]);
    }
}
