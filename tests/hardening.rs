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

/// Kills the agent if the test ends before it was stopped.
struct Agent(Child);

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
        Agent(cmd.spawn().expect("the agent starts"))
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
        let mut stderr = String::new();
        self.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status, stderr)
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn passwords_and_header_values_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 100ms\nshutdown_timeout: 500ms\nsources:\n  cgroups: {{root: {root}}}\n\
             exporters:\n  otlp:\n    protocol: http/protobuf\n    \
             endpoint: http://agent:pa55word@127.0.0.1:{port}/v1/metrics\n    \
             headers: {{authorization: Bearer t0psecret}}\n    \
             retry: {{initial_interval: 50ms, max_interval: 100ms}}\n\
             pipelines:\n  p: {{sources: [cgroups], exporters: [otlp]}}\n",
            root = fixture_root().display(),
            port = closed_port()
        ),
    )
    .unwrap();
    let agent = Agent::start(&config, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, log) = agent.stop();
    assert!(log.contains("OTLP exporter started"), "{log}");
    assert!(log.contains("agent:***@127.0.0.1"), "the endpoint is logged without its password:\n{log}");
    assert!(log.contains("retrying"), "the connection errors were logged:\n{log}");
    assert!(!log.contains("pa55word") && !log.contains("t0psecret"), "a secret in the log:\n{log}");

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
