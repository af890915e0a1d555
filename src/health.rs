//! The health endpoint: `/healthz` (sweeps are happening) and `/readyz` (the first sweep is
//! done and every metadata processor has synced), for Kubernetes probes and load balancers.
//!
//! Both answer from atomics the sweep thread stores after each sweep; the server never takes
//! a lock the sweep thread holds, so a stuck sweep cannot stall a probe, and a probe costs a
//! few atomic loads. The HTTP side is deliberately tiny (one request per connection, the
//! request line only, bounded reads): probes send `GET /healthz HTTP/1.1` and look at the
//! status code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The longest request head read; probes send far less.
const MAX_REQUEST: usize = 2048;
/// A client that sends nothing for this long is dropped.
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
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &state)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, state: &HealthState) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    // Read the whole head (only the request line matters): closing a socket with unread
    // bytes makes the kernel send a reset, which can destroy the answer before the client reads it.
    let head_done = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n") || b.windows(2).any(|w| w == b"\n\n");
    while !head_done(&buf[..len]) && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let (status, body) = respond(head.lines().next().unwrap_or(""), state);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The status line and body for one request line. Pure, for tests.
pub fn respond(request_line: &str, state: &HealthState) -> (&'static str, String) {
    let mut parts = request_line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    let verdict = match path {
        "/healthz" | "/livez" => state.liveness(),
        "/readyz" => state.readiness(),
        _ => return ("404 Not Found", "try /healthz or /readyz\n".into()),
    };
    let status = if verdict.ok { "200 OK" } else { "503 Service Unavailable" };
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
    fn request_lines() {
        let s = state();
        s.sweep_done();
        assert_eq!(respond("GET /healthz HTTP/1.1", &s).0, "200 OK");
        assert_eq!(respond("GET /readyz?verbose HTTP/1.1", &s).0, "200 OK");
        assert_eq!(respond("GET /metrics HTTP/1.1", &s).0, "404 Not Found");
        assert_eq!(respond("POST /healthz HTTP/1.1", &s).0, "405 Method Not Allowed");
        assert_eq!(respond("", &s).0, "405 Method Not Allowed");
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
