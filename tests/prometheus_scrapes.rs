//! Fifty scrapes at once of a large sweep (several MB of text) over real sockets: one render
//! serves them all, the process' peak memory grows by a few texts, not fifty, and every scrape
//! gets the whole text or a 503 from the concurrency limit. Alone in its test binary, so that
//! the process' peak resident memory is this test's.
mod support;

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use podometer::exporters::prometheus::text::Format;
use podometer::exporters::prometheus::{render, PrometheusExporter, PrometheusExporterConfig};
use podometer::exporters::Exporter;

const CONTAINERS: u64 = 4000;
const SCRAPES: usize = 50;

/// VmHWM (peak resident) and VmRSS of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// One scrape: the status and the body's length and FNV-1a hash, read in small chunks so that
/// the client holds no copy of the text.
fn scrape(port: u16) -> (u16, usize, u64) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "connection closed in the head: {head:?}");
        head.push(byte[0]);
    }
    let status: u16 = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap().parse().unwrap();
    let (mut len, mut hash) = (0usize, 0xcbf2_9ce4_8422_2325u64);
    let mut chunk = [0u8; 16384];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        len += n;
        for b in &chunk[..n] {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    (status, len, hash)
}

#[test]
fn fifty_concurrent_scrapes_share_one_render_with_bounded_memory() {
    let sweep = Arc::new(support::sweeps::synthetic(CONTAINERS, &["8:0", "253:0", "253:1"], Some("shop")));
    let config = PrometheusExporterConfig { endpoint: "127.0.0.1:0".into(), ..Default::default() };
    let text = render(&config, std::slice::from_ref(&sweep), Format::Text);
    let size = text.len();
    let expected_hash =
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    drop(text);
    assert!(size > 2 << 20, "the text is {size} bytes: not a large sweep");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut exporter = runtime.block_on(async { PrometheusExporter::new(&config) }).unwrap();
    let port = exporter.local_addr().port();
    runtime.block_on(exporter.export(Arc::clone(&sweep))).unwrap();

    // The peak from here on: `5` resets VmHWM to the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (_, before) = memory();
    let start = Arc::new(Barrier::new(SCRAPES));
    let clients: Vec<_> = (0..SCRAPES)
        .map(|_| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                scrape(port)
            })
        })
        .collect();
    let results: Vec<(u16, usize, u64)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let (peak, _) = memory();
    let grown = peak.saturating_sub(before);

    let served: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let refused = results.iter().filter(|r| r.0 == 503).count();
    eprintln!(
        "{SCRAPES} scrapes of {size} bytes: {} served, {refused} refused (limit), {} render(s), peak +{} KiB",
        served.len(),
        exporter.renders(),
        grown / 1024
    );
    assert_eq!(served.len() + refused, SCRAPES, "only 200 and 503 expected: {results:?}");
    assert!(!served.is_empty());
    for r in &served {
        assert_eq!((r.1, r.2), (size, expected_hash), "a scrape got another or a partial text");
    }
    assert_eq!(exporter.renders(), 1, "one render per sweep, whatever the number of scrapes");
    assert!(
        grown < 6 * size as u64,
        "the peak grew by {grown} bytes for {SCRAPES} scrapes of a {size}-byte text"
    );
    runtime.block_on(exporter.shutdown(std::time::Instant::now())).unwrap();
}
