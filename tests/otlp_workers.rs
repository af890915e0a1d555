//! `export()` of the otlp exporter keeps the async workers free: splitting, encoding and gzip of
//! a sweep of 1,000 containers run on the blocking pool, so the real `/healthz` endpoint on the
//! same runtime keeps answering meanwhile. One worker thread makes any CPU work on it visible
//! as probe latency. Alone in its test binary, so no other test competes for the CPU.
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podometer::exporters::otlp::{OtlpExporter, OtlpExporterConfig};
use podometer::exporters::Exporter;

const CONTAINERS: u64 = 1000;

#[test]
fn export_encodes_off_the_async_workers() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // Nothing listens: the batches stay queued, in memory; export() only encodes and queues.
    let closed = support::ClosedPort::new();
    let config: OtlpExporterConfig =
        serde_saphyr::from_str(&format!("endpoint: http://127.0.0.1:{}\ncompression: gzip", closed.port()))
            .unwrap();
    let resolved = config.resolve(|_| None).unwrap();
    let sweep = Arc::new(support::sweeps::synthetic(CONTAINERS, &["8:0", "253:0"], None));
    runtime.block_on(async {
        let exporter = OtlpExporter::from_resolved("workers", resolved).unwrap();
        // The agent's health endpoint on the only worker; a client thread probes /healthz over
        // fresh connections and keeps the worst round trip.
        let state = Arc::new(podometer::health::HealthState::new(Duration::from_secs(10), 3));
        state.sweep_done();
        let (addr, serving) = podometer::health::bind("127.0.0.1:0".parse().unwrap(), state).await.unwrap();
        let server = tokio::spawn(serving);
        let (late_us, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let prober = std::thread::spawn({
            let (late_us, stop) = (Arc::clone(&late_us), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let (status, _) = support::receivers::http_get(addr.port(), "/healthz").unwrap();
                    assert_eq!(status, 200);
                    late_us.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        late_us.store(0, Ordering::Relaxed);
        // On the worker, as the pipeline's exporter tasks run (block_on's own future runs on
        // this thread instead).
        let export = tokio::spawn(async move {
            let mut exporter = exporter;
            let start = Instant::now();
            exporter.export(sweep).await.unwrap();
            (exporter, start.elapsed())
        });
        let (mut exporter, took) = export.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.store(true, Ordering::Relaxed);
        prober.join().unwrap();
        server.abort();
        let worst = Duration::from_micros(late_us.load(Ordering::Relaxed));
        eprintln!(
            "export of {CONTAINERS} containers took {took:?}; the slowest /healthz probe meanwhile {worst:?}"
        );
        assert!(exporter.queued() > 0, "the sweep was not queued");
        assert!(took >= Duration::from_millis(20), "export took {took:?}: too little work to tell");
        assert!(worst < took / 2, "a /healthz probe took {worst:?} during an export of {took:?}");
        exporter.shutdown(Instant::now()).await.unwrap();
    });
}
