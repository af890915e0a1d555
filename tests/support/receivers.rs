//! Real OTLP receivers for live tests: VictoriaMetrics (OTLP/HTTP in, raw samples out) and
//! rotel (an OTLP collector: gRPC and HTTP in, OTLP/HTTP out to VictoriaMetrics). Binaries come
//! from `$PODOMETER_VICTORIA_METRICS` and `$PODOMETER_ROTEL` (scripts/testbed.sh installs
//! them). Each process is stopped by its pid on drop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::prerequisite;

pub const VM_ENV: &str = "PODOMETER_VICTORIA_METRICS";
pub const ROTEL_ENV: &str = "PODOMETER_ROTEL";

fn binary(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file())
}

pub fn victoria_available() -> bool {
    prerequisite(binary(VM_ENV).is_some(), "VictoriaMetrics binary in $PODOMETER_VICTORIA_METRICS")
}

pub fn rotel_available() -> bool {
    prerequisite(binary(ROTEL_ENV).is_some(), "rotel-agent binary in $PODOMETER_ROTEL")
}

pub use super::free_port;

/// Minimal HTTP/1.0 GET on loopback; the tests need no more, and it keeps them synchronous.
/// Returns (status, body).
pub fn http_get(port: u16, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "{what} not ready after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGTERM by pid so the process flushes, then SIGKILL if it lingers.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One raw series from `/api/v1/export`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub timestamps_ms: Vec<i64>,
    pub values: Vec<f64>,
}

impl Series {
    pub fn name(&self) -> &str {
        self.labels.get("__name__").map(String::as_str).unwrap_or("")
    }
}

pub struct VictoriaMetrics {
    pub port: u16,
    pub data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Owns the data directory when the helper made it.
    _dir: Option<tempfile::TempDir>,
}

impl VictoriaMetrics {
    pub fn start() -> VictoriaMetrics {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let log = dir.path().join("vm.log");
        let mut vm = VictoriaMetrics { port: free_port(), data, log, child: None, _dir: Some(dir) };
        vm.resume();
        vm
    }

    /// Starts (again) on the same port and data directory.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "VictoriaMetrics already running");
        let bin = binary(VM_ENV).expect("checked by victoria_available()");
        let log = std::fs::File::create(&self.log).expect("vm log file");
        let child = Command::new(bin)
            .arg(format!("-storageDataPath={}", self.data.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg("-search.latencyOffset=0s")
            // At-least-once delivery may send a sweep twice; identical samples collapse.
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=WARN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start VictoriaMetrics");
        self.child = Some(child);
        let port = self.port;
        wait_until("VictoriaMetrics", Duration::from_secs(30), || {
            matches!(http_get(port, "/health"), Ok((200, _)))
        });
    }

    /// Stops gracefully (SIGTERM by pid) so ingested samples are on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(15));
        }
    }

    pub fn otlp_url(&self) -> String {
        format!("http://127.0.0.1:{}/opentelemetry/v1/metrics", self.port)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/opentelemetry", self.port)
    }

    /// Raw samples of the series matching a selector, e.g. `{__name__=~"container.*"}`.
    pub fn export(&self, selector: &str) -> Vec<Series> {
        // Freshly ingested samples sit in memory buffers that searches do not see for a
        // second or so; flushing makes the answer complete.
        let (status, body) = http_get(self.port, "/internal/force_flush").expect("flush VictoriaMetrics");
        assert_eq!(status, 200, "force_flush: {body}");
        let query = format!("/api/v1/export?match[]={}&start=0", urlencode(selector));
        let (status, body) = http_get(self.port, &query).expect("query VictoriaMetrics");
        assert_eq!(status, 200, "export {selector}: {body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("export line is JSON");
                let labels = v["metric"]
                    .as_object()
                    .expect("metric labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let timestamps_ms = v["timestamps"]
                    .as_array()
                    .expect("timestamps")
                    .iter()
                    .filter_map(|t| t.as_i64())
                    .collect();
                let values = v["values"].as_array().expect("values").iter().filter_map(json_number).collect();
                Series { labels, timestamps_ms, values }
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// VictoriaMetrics writes NaN and Inf as strings in JSON.
fn json_number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// rotel-agent forwarding everything it receives to one VictoriaMetrics.
pub struct Rotel {
    pub grpc_port: u16,
    pub http_port: u16,
    forward_to: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Rotel {
    pub fn start(vm: &VictoriaMetrics) -> Rotel {
        let mut rotel = Rotel {
            grpc_port: free_port(),
            http_port: free_port(),
            forward_to: vm.base_url(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        rotel.resume();
        rotel
    }

    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "rotel already running");
        let bin = binary(ROTEL_ENV).expect("checked by rotel_available()");
        let log = std::fs::File::create(self.log_path()).expect("rotel log file");
        let child = Command::new(bin)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--exporter", "otlp", "--otlp-exporter-protocol", "http"])
            .args(["--otlp-exporter-endpoint", &self.forward_to])
            .arg("--pid-file")
            .arg(self.dir.path().join("rotel.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start rotel");
        self.child = Some(child);
        let port = self.grpc_port;
        wait_until("rotel", Duration::from_secs(30), || {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200))
                .is_ok()
        });
    }

    /// Stops gracefully so what rotel holds is forwarded first.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(15));
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("rotel.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        self.stop();
    }
}
