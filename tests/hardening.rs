//! The agent binary under hostile or stuck surroundings: what its logs show of secrets, and
//! whether a blocked exporter stalls the others. Sweeps read a fixture cgroup tree (no root
//! needed); the OTLP receiver is an in-process HTTP server on 127.0.0.1.
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cgroup/v1-docker")
}

/// Kills the agent if the test ends before it was stopped. Its stderr is read as it comes (a
/// debug log can fill a pipe in seconds, and an agent blocked on its log never exits).
struct Agent(Child, Option<std::thread::JoinHandle<String>>);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Agent {
    fn start(config: &Path, env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podometer"));
        cmd.args(["--log", "debug", "run", "-c"]).arg(config).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the agent starts");
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            log
        });
        Agent(child, Some(reader))
    }

    /// SIGTERM, then the exit status and everything it wrote to stderr.
    fn stop(self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill with the pid of a child this test spawned.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// The exit status and everything it wrote to stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the agent did not exit within 15 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self.1.take().unwrap().join().unwrap();
        (status, stderr)
    }
}

/// At debug level, on both protocols: the exporter's endpoint and self-telemetry's (whose setup
/// fails here, for a CA file that does not exist, and says so with the endpoint) are shown
/// through the one redactor, and no password or header value reaches the log.
#[test]
fn passwords_and_header_values_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let closed = support::ClosedPort::new();
    let config = dir.path().join("agent.yaml");
    for (protocol, path) in [("grpc", ""), ("http/protobuf", "/v1/metrics")] {
        std::fs::write(
            &config,
            format!(
                "interval: 100ms\nshutdown_timeout: 500ms\nsources:\n  cgroups: {{root: {root}}}\n\
                 self_telemetry:\n  endpoint: https://self:pa55word@127.0.0.1:{port}\n  \
                 tls: {{ca_file: {missing}}}\n  headers: {{authorization: Bearer t0psecret}}\n\
                 exporters:\n  otlp:\n    protocol: {protocol}\n    \
                 endpoint: http://agent:pa55word@127.0.0.1:{port}{path}\n    \
                 headers: {{authorization: Bearer t0psecret}}\n    \
                 retry: {{initial_interval: 50ms, max_interval: 100ms}}\n\
                 pipelines:\n  p: {{sources: [cgroups], exporters: [otlp]}}\n",
                root = fixture_root().display(),
                port = closed.port(),
                missing = dir.path().join("no-such-ca.pem").display(),
            ),
        )
        .unwrap();
        let agent = Agent::start(&config, &[]);
        std::thread::sleep(Duration::from_millis(1500));
        let (_, log) = agent.stop();
        assert!(log.contains("OTLP exporter started"), "{protocol}: {log}");
        assert!(log.contains("agent:***@127.0.0.1"), "{protocol}: the endpoint without its password:\n{log}");
        let off =
            log.lines().find(|l| l.contains("Self-telemetry is off")).unwrap_or_else(|| panic!("{log}"));
        assert!(off.contains("self:***@127.0.0.1"), "{protocol}: self-telemetry's endpoint redacted: {off}");
        assert!(log.contains("retrying"), "{protocol}: the connection errors were logged:\n{log}");
        assert!(log.contains("DEBUG"), "{protocol}: not at debug level:\n{log}");
        assert!(
            !log.contains("pa55word") && !log.contains("t0psecret"),
            "{protocol}: a secret in the log:\n{log}"
        );
    }

    // A malformed OTEL_EXPORTER_OTLP_HEADERS stops the agent with an error naming the variable
    // and the entry, not echoing it.
    std::fs::write(
        &config,
        format!(
            "sources:\n  cgroups: {{root: {}}}\nexporters:\n  otlp: {{}}\npipelines:\n  p: {{sources: [cgroups], exporters: [otlp]}}\n",
            fixture_root().display()
        ),
    )
    .unwrap();
    let agent = Agent::start(
        &config,
        &[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a,authorization%3DBearer t0psecret")],
    );
    let (status, log) = agent.wait();
    assert!(!status.success(), "a bad header variable is a start-up error:\n{log}");
    assert!(log.contains("OTEL_EXPORTER_OTLP_HEADERS") && log.contains("entry 2"), "{log}");
    assert!(!log.contains("t0psecret"), "a secret in the log:\n{log}");
}

/// A FIFO whose read end this test holds open and never reads, with the smallest pipe buffer:
/// a writer blocks once it holds a page.
struct StuckFifo {
    path: PathBuf,
    reader: std::fs::File,
}

impl StuckFifo {
    fn create(dir: &Path, name: &str) -> StuckFifo {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let path = dir.join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("the read end opens without a writer when non-blocking");
        // SAFETY: fcntl on a descriptor this test owns.
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        StuckFifo { path, reader }
    }

    fn buffered(&self) -> usize {
        use std::os::unix::io::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD into a c_int on a descriptor this test owns.
        unsafe { libc::ioctl(self.reader.as_raw_fd(), libc::FIONREAD, &mut n) };
        n as usize
    }
}

#[test]
fn file_exporters_blocked_on_their_output_do_not_stall_otlp_delivery() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { "" }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    // Two stuck outputs: as many as the agent has async workers.
    let fifos = [StuckFifo::create(dir.path(), "a.fifo"), StuckFifo::create(dir.path(), "b.fifo")];
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 100ms\nshutdown_timeout: 500ms\nsources:\n  cgroups: {{root: {root}}}\n\
             exporters:\n  file/a: {{path: {a}}}\n  file/b: {{path: {b}}}\n  otlp:\n    \
             protocol: http/protobuf\n    endpoint: http://127.0.0.1:{port}/v1/metrics\n    \
             queue: {{directory: {queue}}}\n\
             pipelines:\n  p: {{sources: [cgroups], exporters: [file/a, file/b, otlp]}}\n",
            root = fixture_root().display(),
            a = fifos[0].path.display(),
            b = fifos[1].path.display(),
            queue = dir.path().join("queue").display(),
        ),
    )
    .unwrap();
    let agent = Agent::start(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fifos.iter().any(|f| f.buffered() < 2048) {
        assert!(Instant::now() < deadline, "the file exporters never filled their FIFOs");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both writers are now blocked (or about to be): give them a moment, then count.
    std::thread::sleep(Duration::from_millis(500));
    let before = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let during = received.load(Ordering::Relaxed) - before;
    let stuck: Vec<usize> = fifos.iter().map(StuckFifo::buffered).collect();
    // 2 s at a 100 ms interval is 20 sweeps; a stalled runtime delivers none (and never exits).
    assert!(during >= 10, "{during} OTLP requests in 2 s while the FIFOs were stuck ({stuck:?} bytes)");
    let (status, log) = agent.stop();
    assert!(status.success(), "the agent exits 0 even with stuck exporters:\n{log}");
    assert!(log.contains("not keeping up"), "the dropped sweeps are logged:\n{log}");
}

// ---------------------------------------------------------------- faults

/// How the misbehaving receiver answers the next request.
const GOOD: u8 = 0;
const GARBAGE: u8 = 1;
const HANG: u8 = 2;
const RESET: u8 = 3;

/// An OTLP/HTTP receiver on 127.0.0.1 that answers each request as `mode` says: a real `200`
/// after decoding the request (recording every data point's time), bytes that are not HTTP,
/// nothing at all (the connection held open), or a TCP reset. Threads end with the test.
struct FaultyReceiver {
    port: u16,
    mode: Arc<std::sync::atomic::AtomicU8>,
    /// `timeUnixNano` of every data point received in a good answer.
    times: Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
}

impl FaultyReceiver {
    fn start(mode: u8) -> FaultyReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = FaultyReceiver {
            port,
            mode: Arc::new(std::sync::atomic::AtomicU8::new(mode)),
            times: Arc::default(),
        };
        let (mode, times) = (receiver.mode.clone(), receiver.times.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (mode, times) = (mode.clone(), times.clone());
                std::thread::spawn(move || serve(conn, &mode, &times));
            }
        });
        receiver
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn received(&self) -> std::collections::HashSet<u64> {
        self.times.lock().unwrap().clone()
    }
}

/// One request: headers up to the blank line, then `content-length` bytes; `None` at EOF.
fn read_request(conn: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some(body)
}

fn serve(
    mut conn: std::net::TcpStream,
    mode: &std::sync::atomic::AtomicU8,
    times: &std::sync::Mutex<std::collections::HashSet<u64>>,
) {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message;
    use std::io::Write;
    while let Some(body) = read_request(&mut conn) {
        match mode.load(Ordering::SeqCst) {
            GARBAGE => {
                let _ = conn.write_all(b"\x16\x03\x01\x00 this is not HTTP at all\r\n\r\n\xff\xfe");
                return;
            }
            HANG => {
                // Held open without a byte of answer, longer than the agent's timeout.
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            RESET => {
                use std::os::fd::AsRawFd;
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: setsockopt on a socket this thread owns, with a valid linger struct.
                unsafe {
                    libc::setsockopt(
                        conn.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                return; // closed with an RST
            }
            _ => {
                let request =
                    ExportMetricsServiceRequest::decode(body.as_slice()).expect("a valid OTLP request");
                let mut set = times.lock().unwrap();
                for metric in
                    request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics)
                {
                    match &metric.data {
                        Some(Data::Sum(s)) => set.extend(s.data_points.iter().map(|p| p.time_unix_nano)),
                        Some(Data::Gauge(g)) => set.extend(g.data_points.iter().map(|p| p.time_unix_nano)),
                        _ => {}
                    }
                }
                drop(set);
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// The sweep times the file exporter wrote, in order.
fn file_sweep_times(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let metric = &v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0];
            let points = if metric["sum"].is_object() { &metric["sum"] } else { &metric["gauge"] };
            points["dataPoints"][0]["timeUnixNano"].as_str()?.parse().ok()
        })
        .collect()
}

/// The agent's counters from the line `run` logs when it stops.
fn counters(log: &str) -> std::collections::HashMap<String, u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("Agent counters."))
        .unwrap_or_else(|| panic!("no counters:\n{log}"));
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.trim_start_matches("stats=").trim_matches('"').split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// An agent with a file exporter and an OTLP/HTTP exporter with a disk queue in one pipeline,
/// so that every sweep the file shows must reach the receiver.
fn fault_config(dir: &Path, port: u16, queue: &Path, interval: &str) -> PathBuf {
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: {interval}\nshutdown_timeout: 5s\nsources:\n  cgroups: {{root: {root}}}\n\
             exporters:\n  file: {{path: {out}}}\n  otlp:\n    protocol: http/protobuf\n    \
             endpoint: http://127.0.0.1:{port}/v1/metrics\n    compression: none\n    timeout: 500ms\n    \
             retry: {{initial_interval: 50ms, max_interval: 200ms}}\n    queue: {{directory: {queue}}}\n\
             pipelines:\n  p: {{sources: [cgroups], exporters: [file, otlp]}}\n",
            root = fixture_root().display(),
            out = dir.join("out.jsonl").display(),
            queue = queue.display(),
        ),
    )
    .unwrap();
    config
}

/// Waits until every sweep the file exporter wrote has reached the receiver (or `timeout`).
fn wait_delivered(out: &Path, receiver: &FaultyReceiver, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let received = receiver.received();
        if file_sweep_times(out).iter().all(|t| received.contains(t)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn garbage_hung_and_reset_answers_lose_no_queued_sweep_and_are_counted() {
    let receiver = FaultyReceiver::start(GARBAGE);
    let dir = tempfile::tempdir().unwrap();
    let config = fault_config(dir.path(), receiver.port, &dir.path().join("queue"), "200ms");
    let agent = Agent::start(&config, &[]);
    for mode in [GARBAGE, HANG, RESET] {
        receiver.set(mode);
        std::thread::sleep(Duration::from_millis(2000));
    }
    receiver.set(GOOD);
    let out = dir.path().join("out.jsonl");
    wait_delivered(&out, &receiver, Duration::from_secs(30));
    let (status, log) = agent.stop();
    let sweeps = file_sweep_times(&out);
    let received = receiver.received();
    let lost: Vec<&u64> = sweeps.iter().filter(|t| !received.contains(t)).collect();
    let c = counters(&log);
    eprintln!(
        "faults: {} sweeps, {} lost; timeouts {}, connection errors {}, bad responses {}, retried {}",
        sweeps.len(),
        lost.len(),
        c["export_timeouts"],
        c["export_connection_errors"],
        c["export_bad_responses"],
        c["batches_retried"]
    );
    assert!(status.success() && !log.contains("panicked"), "the agent exits 0 without a panic:\n{log}");
    assert!(sweeps.len() >= 20, "only {} sweeps in 6 s at 200 ms", sweeps.len());
    assert!(
        lost.is_empty(),
        "{} of {} sweeps never reached the receiver: {lost:?}",
        lost.len(),
        sweeps.len()
    );
    assert!(c["export_bad_responses"] >= 1, "answers that are not HTTP are counted: {c:?}");
    assert!(c["export_timeouts"] >= 1, "requests without an answer are counted: {c:?}");
    assert!(c["export_connection_errors"] >= 1, "reset connections are counted: {c:?}");
    assert_eq!(c["batches_dropped"] + c["batches_evicted"], 0, "nothing dropped: {c:?}");
}

/// The same misbehaving receiver behind an OTLP/gRPC exporter: each kind of failure is counted
/// as what it is, one agent per kind so that no count can come from another mode. (The
/// receiver cannot answer gRPC, so nothing is delivered here; delivery through faults is
/// the HTTP test's part.)
#[test]
fn grpc_garbage_hung_and_reset_answers_are_counted_by_kind() {
    for (mode, kind) in
        [(GARBAGE, "export_bad_responses"), (HANG, "export_timeouts"), (RESET, "export_connection_errors")]
    {
        let receiver = FaultyReceiver::start(mode);
        let dir = tempfile::tempdir().unwrap();
        let config = fault_config(dir.path(), receiver.port, &dir.path().join("queue"), "200ms");
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("protocol: http/protobuf", "protocol: grpc")
            .replace("shutdown_timeout: 5s", "shutdown_timeout: 1s")
            .replace("/v1/metrics", "");
        std::fs::write(&config, text).unwrap();
        let agent = Agent::start(&config, &[]);
        std::thread::sleep(Duration::from_millis(2000));
        let (status, log) = agent.stop();
        let c = counters(&log);
        eprintln!(
            "gRPC mode {mode}: timeouts {}, connection errors {}, bad responses {}, retried {}",
            c["export_timeouts"],
            c["export_connection_errors"],
            c["export_bad_responses"],
            c["batches_retried"]
        );
        assert!(status.success() && !log.contains("panicked"), "the agent exits 0 without a panic:\n{log}");
        assert!(c[kind] >= 1, "mode {mode} is counted as {kind}: {c:?}");
        // A garbage answer may also end as a reset while the client still writes (counted as a
        // connection error); a hang or a reset is never a bad answer, and a reset never a timeout.
        if mode != GARBAGE {
            assert_eq!(c["export_bad_responses"], 0, "mode {mode}: {c:?}");
        }
        if mode == RESET {
            assert_eq!(c["export_timeouts"], 0, "mode {mode}: {c:?}");
        }
        // None of these is an answer of the receiver's: every batch stays queued for a retry.
        assert_eq!(c["batches_dropped"] + c["batches_evicted"], 0, "mode {mode} drops nothing: {c:?}");
    }
}

/// A small tmpfs mounted by the test, unmounted on drop (lazily, if something still holds it).
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Path, size: &str) -> SmallTmpfs {
        std::fs::create_dir(dir).unwrap();
        support::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
                .arg(support::unique("podometer-tmpfs"))
                .arg(dir),
        );
        SmallTmpfs(dir.to_owned())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes of the queue's segment files.
fn queue_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_full_disk_under_the_queue_costs_only_what_it_could_not_store() {
    if !support::prerequisite(support::is_root(), "root (to mount a tmpfs)") {
        return;
    }
    let receiver = FaultyReceiver::start(HANG);
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallTmpfs::mount(&dir.path().join("disk"), "96k");
    let config = fault_config(dir.path(), receiver.port, &disk.0.join("queue"), "100ms");
    let agent = Agent::start(&config, &[]);
    let out = dir.path().join("out.jsonl");
    // The receiver holds every request: batches pile up on the 96 KiB disk until it is full,
    // then a few more sweeps are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_bytes(&disk.0.join("queue")) < 80 * 1024 {
        assert!(Instant::now() < deadline, "the queue's disk never filled");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    receiver.set(GOOD);
    // Once the queue has drained, the disk must take new sweeps again: the latest ten must
    // all arrive (with the disk still full, none would).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sweeps = file_sweep_times(&out);
        let received = receiver.received();
        if sweeps.len() > 10 && sweeps[sweeps.len() - 10..].iter().all(|t| received.contains(t)) {
            break;
        }
        if Instant::now() > deadline {
            break; // asserted below, with the counters
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, log) = agent.stop();
    let sweeps = file_sweep_times(&out);
    let received = receiver.received();
    let lost = sweeps.iter().filter(|t| !received.contains(t)).count() as u64;
    let c = counters(&log);
    eprintln!(
        "disk full: {} sweeps, {lost} not delivered, queue_write_errors {}, sent {}",
        sweeps.len(),
        c["queue_write_errors"],
        c["batches_sent"]
    );
    assert!(status.success() && !log.contains("panicked"), "the agent exits 0 without a panic:\n{log}");
    assert!(c["queue_write_errors"] >= 1, "the full disk is counted: {c:?}");
    // One batch per sweep here (the fixture node is small): what is lost is at most what the
    // disk refused, and everything it took was delivered.
    assert!(
        lost <= c["queue_write_errors"],
        "{lost} sweeps lost but only {} refused: {c:?}",
        c["queue_write_errors"]
    );
    let after: Vec<&u64> = sweeps[sweeps.len() - 10..].iter().filter(|t| !received.contains(t)).collect();
    assert!(
        after.is_empty(),
        "sweeps after the queue drained were not delivered: the disk stayed full ({after:?}, {c:?})"
    );
    assert!(log.contains("could not take a sweep"), "the refused sweeps are logged:\n{log}");
}
