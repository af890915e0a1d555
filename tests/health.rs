//! The health endpoint of `podometer run`, through the real binary: `/healthz` and `/readyz`
//! while it sweeps, `/healthz` failing when the sweep thread hangs, and a sweep thread that
//! panics ending the process with a non-zero exit and the panic logged.
//!
//! The hang and the panic are injected with `PODOMETER_DEBUG_FAULT`, a hook compiled only into
//! debug builds (the binary `cargo test` builds): nothing in a healthy agent panics on
//! purpose, and a hang cannot be provoked from outside without one.
mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::netns::ChildGuard;
use support::receivers::{free_port, http_get};

fn agent(dir: &std::path::Path, port: u16, fault: Option<&str>) -> ChildGuard {
    let config = dir.join("health.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 200ms\nshutdown_timeout: 1s\nhealth:\n  endpoint: 127.0.0.1:{port}\n  stale_intervals: 3\n\
             sources:\n  cgroups: {{}}\n\
             exporters:\n  file: {{path: {}}}\npipelines:\n  main: {{sources: [cgroups], exporters: [file]}}\n",
            dir.join("out.jsonl").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podometer"));
    cmd.args(["run", "-c"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(fault) = fault {
        cmd.env("PODOMETER_DEBUG_FAULT", fault);
    }
    ChildGuard::spawn(&mut cmd)
}

fn status(port: u16, path: &str) -> u16 {
    http_get(port, path).map(|(s, _)| s).unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn healthy_agent_answers_ok_and_fast() {
    if !support::live_cgroups_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _agent = agent(dir.path(), port, None);
    wait_for("/readyz 200", Duration::from_secs(20), || status(port, "/readyz") == 200);
    assert_eq!(http_get(port, "/healthz").unwrap(), (200, "sweeping\n".to_owned()));
    assert_eq!(status(port, "/nope"), 404);
    // Still healthy several intervals later: sweeps keep coming.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(port, "/healthz"), 200);
    // A probe is answered from atomics: time 50 probes over fresh connections.
    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(status(port, "/healthz"), 200);
    }
    let per_probe = start.elapsed() / 50;
    eprintln!("health probe round trip (connect, request, answer, close; debug build): {per_probe:?}");
    assert!(per_probe < Duration::from_millis(20), "a probe took {per_probe:?}");
}

#[test]
fn hung_sweep_thread_fails_healthz_and_readyz() {
    if !support::live_cgroups_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = agent(dir.path(), port, Some("hang-after:3"));
    wait_for("/healthz 200", Duration::from_secs(20), || status(port, "/healthz") == 200);
    // 3 intervals + 1 s slack = 1.6 s after the third sweep.
    let took =
        wait_for("/healthz 503 after the hang", Duration::from_secs(10), || status(port, "/healthz") == 503);
    let (code, body) = http_get(port, "/healthz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("last sweep finished"), "{body}");
    assert_eq!(status(port, "/readyz"), 503);
    assert!(took >= Duration::from_millis(1000), "healthz failed too early ({took:?}): the limit is 1.6 s");
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "a hung sweep thread does not end the process: the probe must"
    );
    // SIGTERM: the last sweep never comes; the agent waits for it until shutdown_timeout (1 s),
    // then exits with an error saying so.
    // SAFETY: kill with the pid of a child this test spawned.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let asked = Instant::now();
    assert!(
        agent.wait_exit(Duration::from_secs(10)),
        "the agent waited for its hung sweep thread without limit"
    );
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(900), "it did not wait for the last sweep ({took:?})");
    assert_eq!(agent.0.wait().unwrap().code(), Some(1), "a shutdown without the last sweep is an error");
    let mut stderr = String::new();
    agent.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("did not finish its last sweep within shutdown_timeout (1s)"), "{stderr}");
}

#[test]
fn panicking_sweep_thread_ends_the_process_with_an_error() {
    if !support::live_cgroups_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = agent(dir.path(), port, Some("panic-after:3"));
    assert!(agent.wait_exit(Duration::from_secs(30)), "the agent lived on without its sweep thread");
    let code = agent.0.wait().unwrap().code();
    assert_eq!(code, Some(1), "exit status after the sweep thread panicked");
    let mut stderr = String::new();
    agent.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("injected fault after 3 sweeps"), "panic not logged:\n{stderr}");
    assert!(stderr.contains("the sweep thread stopped: panicked"), "run's error not printed:\n{stderr}");
    // It did sweep before dying, and the endpoint is gone with the process.
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap_or_default();
    assert!(
        out.lines().count() >= 3,
        "expected 3 sweeps exported before the panic, got {}",
        out.lines().count()
    );
    assert_eq!(status(port, "/healthz"), 0);
}

/// The endpoint on its own (no agent): what probes and hostile clients get. Raw sockets, so
/// the test sees exactly what goes over the wire.
#[test]
fn endpoint_bounds_hostile_clients() {
    use std::io::Write;
    use std::net::TcpStream;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let state = std::sync::Arc::new(podometer::health::HealthState::new(Duration::from_secs(10), 3));
    let (addr, serving) = runtime
        .block_on(podometer::health::bind("127.0.0.1:0".parse().unwrap(), std::sync::Arc::clone(&state)))
        .unwrap();
    runtime.spawn(serving);
    state.set_processors(Vec::new());
    state.sweep_done();

    // Sends `request`, reads until the server closes; returns what came back and how long it took.
    let exchange = |request: &[u8]| -> (String, Duration) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let start = Instant::now();
        // The server may close before taking all of an oversized request.
        let _ = stream.write_all(request);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        (String::from_utf8_lossy(&raw).into_owned(), start.elapsed())
    };
    let status_of = |answer: &str| answer.split_whitespace().nth(1).unwrap_or("").to_owned();

    // A probe: status, plain-text body, and the connection closed after one answer.
    let (answer, _) = exchange(b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-type: text/plain; charset=utf-8"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nready\n"), "{answer}");
    // HEAD: the same status, no body.
    let (answer, _) = exchange(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "HEAD answered with a body: {answer}");
    assert_eq!(status_of(&exchange(b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0), "405");
    assert_eq!(status_of(&exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").0), "404");
    // Not HTTP at all.
    assert_eq!(status_of(&exchange(b"\x16\x03\x01garbage\r\n\r\n").0), "400");

    // A head larger than the bound: refused at once, not buffered. The 431 itself can be lost
    // to the reset the kernel sends when the server closes with the rest unread.
    let refused = |request: &[u8]| {
        let (answer, took) = exchange(request);
        assert!(answer.is_empty() || status_of(&answer) == "431", "{answer}");
        assert!(took < Duration::from_millis(1500), "refused after {took:?}");
    };
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    refused(&big);
    // Too many header lines.
    let mut many = b"GET /healthz HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend(format!("X-H{i}: 1\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    refused(&many);

    // A client that connects and sends nothing, or half a head, is dropped after the 2 s
    // head deadline, without an answer.
    for partial in [&b""[..], b"GET /healthz HTTP/1.1\r\nHost"] {
        let (answer, took) = exchange(partial);
        assert!(!answer.contains("200"), "{answer}");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
            "dropped after {took:?}"
        );
    }
}
