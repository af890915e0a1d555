//! The OTLP exporter against in-process receivers whose answers each test scripts: a tonic
//! `MetricsService` server and an axum HTTP server, both on 127.0.0.1:0.
#[path = "support/scripted_otlp.rs"]
mod scripted_otlp;
mod support;
use scripted_otlp::*;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use podometer::exporters::otlp::config::{Jitter, RetryConfig};
use podometer::exporters::otlp::encode::encode_sweep;
use podometer::exporters::otlp::{ExporterStats, OtlpExporter, OtlpExporterConfig};
use podometer::exporters::Exporter;
use podometer::model::{Point, ResourceId, Sweep, Value};
use podometer::semconv;
use prost::Message;
use support::tls::{openssl_available, serve_grpc_mutual_tls, TestPki};
// A local port nobody listens on, held for the whole test so that no server of a test running
// in parallel can be given it.
use support::ClosedPort;

// ---------- sweeps ----------

fn sweep(secs: u64, containers: usize) -> Sweep {
    let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs));
    for c in 0..containers {
        let id = format!("{c:064x}");
        let r = sweep
            .resource_mut(ResourceId::Container(id.clone()), || vec![(semconv::CONTAINER_ID, id.into())]);
        r.points
            .push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int((secs * 1000 + c as u64) as i64)));
        let mut cpu = Point::new(&semconv::CONTAINER.cpu_time, Value::Double(secs as f64 / 2.0))
            .with(semconv::CPU_MODE, semconv::CPU_MODE_USER);
        cpu.start_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        r.points.push(cpu);
    }
    sweep
}

fn time_of(req: &ExportMetricsServiceRequest) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points[0].time_unix_nano,
        Some(Data::Sum(s)) => s.data_points[0].time_unix_nano,
        other => panic!("unexpected metric data {other:?}"),
    }
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(200),
        max_requested_delay: Some(Duration::from_millis(1500)),
        multiplier: 2.0,
        jitter: Jitter::None,
    }
}

fn config(yaml: &str) -> OtlpExporterConfig {
    let mut c: OtlpExporterConfig = serde_saphyr::from_str(yaml).expect("test config parses");
    if !yaml.contains("retry") {
        c.retry = fast_retry();
    }
    c
}

/// Resolves without the process env so the tests do not depend on it.
fn exporter(c: &OtlpExporterConfig) -> OtlpExporter {
    let resolved = c.resolve(|_| None).expect("test config resolves");
    OtlpExporter::from_resolved(&support::unique("otlp-test"), resolved).expect("exporter starts")
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    ExporterStats::get(c)
}

/// After one exported batch: a retryable answer is followed by a second attempt that
/// delivers it; a permanent one drops it after the first attempt.
async fn assert_retried_or_dropped(
    answer: &str,
    retried: bool,
    exp: &OtlpExporter,
    attempts: impl Fn() -> usize,
) {
    let stats = exp.stats();
    wait_for(&format!("{answer} settles"), Duration::from_secs(10), || {
        get(&stats.batches_sent) + get(&stats.batches_dropped) == 1
    })
    .await;
    if retried {
        assert_eq!((get(&stats.batches_retried), get(&stats.batches_sent)), (1, 1), "{answer} is retried");
        assert_eq!(attempts(), 2, "{answer}");
    } else {
        assert_eq!((get(&stats.batches_dropped), get(&stats.batches_retried)), (1, 0), "{answer} is dropped");
        assert_eq!(attempts(), 1, "{answer}");
    }
}

// ---------- gRPC ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_twice_then_ok_delivers_exactly_once_after_two_retries() {
    let server = GrpcServer::start(vec![
        GrpcReply::Status(tonic::Status::unavailable("starting")),
        GrpcReply::Status(tonic::Status::unavailable("starting")),
    ])
    .await;
    let mut exp =
        exporter(&config(&format!("endpoint: {}\nheaders: {{x-tenant: team-a}}", server.endpoint())));
    let stats = exp.stats();
    let s = sweep(1, 3);
    exp.export(Arc::new(s.clone())).await.unwrap();
    wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.attempts(), 3, "two refused attempts and one delivery");
    assert_eq!(get(&stats.batches_retried), 2);
    assert_eq!(get(&stats.batches_sent), 1, "delivered exactly once");
    assert_eq!(get(&stats.batches_dropped), 0);
    {
        let received = server.script.received.lock().unwrap();
        let (_, last, metadata) = received.last().unwrap();
        assert_eq!(last, &encode_sweep(&s), "the receiver got the sweep as encoded");
        assert_eq!(metadata.get("x-tenant").unwrap(), "team-a");
        assert_eq!(metadata.get("grpc-encoding").unwrap(), "gzip", "gzip is the default");
    }
    exp.shutdown(Instant::now() + Duration::from_secs(2)).await.unwrap();
}

/// The gzip level is ours (tonic's own compression is fixed at 6): each level arrives as a
/// gzip message the receiver's stock decoder turns back into the request as encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gzip_level_arrives_decodable_over_grpc_and_http() {
    for level in [1, 9] {
        let grpc = GrpcServer::start(vec![]).await;
        let http = HttpServer::start(vec![]).await;
        for yaml in [
            format!("endpoint: {}\ncompression_level: {level}", grpc.endpoint()),
            format!("protocol: http/protobuf\nendpoint: {}\ncompression_level: {level}", http.url()),
        ] {
            let mut exp = exporter(&config(&yaml));
            let stats = exp.stats();
            exp.export(Arc::new(sweep(7, 50))).await.unwrap();
            wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
            exp.shutdown(Instant::now() + Duration::from_secs(2)).await.unwrap();
        }
        let expected = encode_sweep(&sweep(7, 50));
        let received = grpc.script.received.lock().unwrap();
        assert_eq!(received[0].1, expected, "gRPC, level {level}");
        assert_eq!(received[0].2.get("grpc-encoding").unwrap(), "gzip");
        let received = http.script.received.lock().unwrap();
        assert_eq!(received[0].headers.get("content-encoding").unwrap(), "gzip");
        assert_eq!(received[0].request, expected, "HTTP, level {level}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invalid_argument_drops_the_batch_and_moves_on() {
    let server = GrpcServer::start(vec![GrpcReply::Status(tonic::Status::invalid_argument("bad"))]).await;
    let mut exp = exporter(&config(&format!("endpoint: {}\ncompression: none", server.endpoint())));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 1))).await.unwrap();
    exp.export(Arc::new(sweep(2, 1))).await.unwrap();
    wait_for("drop and delivery", Duration::from_secs(10), || {
        get(&stats.batches_dropped) == 1 && get(&stats.batches_sent) == 1
    })
    .await;
    assert_eq!(server.attempts(), 2, "the refused batch is not retried");
    assert_eq!(get(&stats.batches_retried), 0);
    let reqs = server.requests();
    assert_eq!(time_of(&reqs[1]), time_of(&encode_sweep(&sweep(2, 1))), "the next sweep went through");
    assert!(server.script.received.lock().unwrap()[0].2.get("grpc-encoding").is_none(), "compression: none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_honours_retry_info_and_is_dropped_without_it() {
    use tonic_types::{ErrorDetails, StatusExt};
    let delay = Duration::from_millis(1200);
    let server = GrpcServer::start(vec![
        GrpcReply::Status(tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(delay)),
        )),
        GrpcReply::Ok,
        GrpcReply::Status(tonic::Status::resource_exhausted("quota, no retry info")),
    ])
    .await;
    let mut exp = exporter(&config(&format!("endpoint: {}", server.endpoint())));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 1))).await.unwrap();
    wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    {
        let received = server.script.received.lock().unwrap();
        let gap = received[1].0 - received[0].0;
        assert!(gap >= delay, "retried after {gap:?}, server asked for {delay:?}");
        assert!(
            gap < delay + Duration::from_secs(1),
            "retried after {gap:?}: the backoff (20ms) did not add up"
        );
    }
    exp.export(Arc::new(sweep(2, 1))).await.unwrap();
    wait_for("drop", Duration::from_secs(10), || get(&stats.batches_dropped) == 1).await;
    assert_eq!(server.attempts(), 3);
    assert_eq!(get(&stats.batches_retried), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_partial_success_counts_rejected_points() {
    let server = GrpcServer::start(vec![GrpcReply::Partial(3, "3 points too old")]).await;
    let mut exp = exporter(&config(&format!("endpoint: {}", server.endpoint())));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 2))).await.unwrap();
    wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    assert_eq!(get(&stats.points_rejected), 3);
    assert_eq!(get(&stats.batches_dropped), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_order_and_loses_nothing() {
    // Reserve a port, start the exporter against it while nobody listens, then listen.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut exp = exporter(&config(&format!("endpoint: http://{addr}")));
    let stats = exp.stats();
    for i in 0..8 {
        exp.export(Arc::new(sweep(i, 2))).await.unwrap();
    }
    wait_for("retries while down", Duration::from_secs(10), || get(&stats.batches_retried) >= 2).await;
    assert_eq!(get(&stats.batches_sent), 0);
    assert_eq!(exp.queued(), 8);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = GrpcServer::serve(listener, Vec::new());
    wait_for("all delivered", Duration::from_secs(10), || get(&stats.batches_sent) == 8).await;
    let times: Vec<u64> = server.requests().iter().map(time_of).collect();
    let expected: Vec<u64> = (0..8).map(|i| time_of(&encode_sweep(&sweep(i, 2)))).collect();
    assert_eq!(times, expected, "each sweep once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_never_delays_export() {
    let server = GrpcServer::start((0..50).map(|_| GrpcReply::Hang(Duration::from_secs(30))).collect()).await;
    let mut exp = exporter(&config(&format!("endpoint: {}\ntimeout: 500ms", server.endpoint())));
    let stats = exp.stats();
    let start = Instant::now();
    for i in 0..20 {
        exp.export(Arc::new(sweep(i, 50))).await.unwrap();
    }
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "20 exports took {took:?} against a hanging receiver");
    wait_for("timeouts are retried", Duration::from_secs(10), || get(&stats.batches_retried) >= 2).await;
    assert_eq!(get(&stats.batches_sent), 0);
    let start = Instant::now();
    exp.shutdown(Instant::now() + Duration::from_millis(300)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown keeps its deadline: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_bound_evicts_the_oldest_batches() {
    // Uncompressed, so the bound below counts the encoded request's own bytes.
    let closed = ClosedPort::new();
    let c = config(&format!("endpoint: http://127.0.0.1:{}\ncompression: none", closed.port()));
    let mut resolved = c.resolve(|_| None).unwrap();
    // Each batch is one sweep of 40 containers; room for three and a half. The bound is
    // below what validate() accepts, so it is set after resolving.
    let one = encode_sweep(&sweep(0, 40)).encoded_len() as u64 + 8;
    resolved.queue.max_bytes = one * 3 + one / 2;
    let mut exp = OtlpExporter::from_resolved("evict", resolved).unwrap();
    let stats = exp.stats();
    for i in 0..10 {
        exp.export(Arc::new(sweep(i, 40))).await.unwrap();
    }
    assert_eq!(exp.queued(), 3);
    assert_eq!(get(&stats.batches_evicted), 7);
    exp.shutdown(Instant::now()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_queue_before_the_deadline() {
    let server = GrpcServer::start(vec![GrpcReply::Status(tonic::Status::unavailable("x"))]).await;
    let mut exp = exporter(&config(&format!("endpoint: {}", server.endpoint())));
    let stats = exp.stats();
    for i in 0..5 {
        exp.export(Arc::new(sweep(i, 2))).await.unwrap();
    }
    exp.shutdown(Instant::now() + Duration::from_secs(5)).await.unwrap();
    assert_eq!(get(&stats.batches_sent), 5);
    assert_eq!(exp.queued(), 0);
    assert!(exp.export(Arc::new(sweep(9, 1))).await.is_err(), "a shut-down exporter refuses sweeps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_disk_queue_survives_a_restart_and_delivers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let closed = ClosedPort::new();
    let port = closed.port();
    let yaml = format!("endpoint: http://127.0.0.1:{port}\nqueue: {{directory: {}}}", dir.path().display());
    {
        let mut exp = exporter(&config(&yaml));
        for i in 0..6 {
            exp.export(Arc::new(sweep(i, 3))).await.unwrap();
        }
        exp.shutdown(Instant::now() + Duration::from_millis(100)).await.unwrap();
        assert_eq!(exp.queued(), 6, "nothing could be sent");
    }
    let listener = tokio::net::TcpListener::from_std(closed.listen()).unwrap();
    let server = GrpcServer::serve(listener, Vec::new());
    let mut exp = exporter(&config(&yaml));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(6, 3))).await.unwrap();
    wait_for("recovered batches delivered", Duration::from_secs(10), || get(&stats.batches_sent) == 7).await;
    let times: Vec<u64> = server.requests().iter().map(time_of).collect();
    let expected: Vec<u64> = (0..7).map(|i| time_of(&encode_sweep(&sweep(i, 3)))).collect();
    assert_eq!(times, expected);
    exp.shutdown(Instant::now() + Duration::from_secs(1)).await.unwrap();
    drop(exp);
    // Everything acked: a third start sends nothing again.
    let exp = exporter(&config(&yaml));
    assert_eq!(exp.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_gzip_the_queue_holds_compressed_batches() {
    // Nothing listens: every batch stays queued, in the form it was queued in.
    let closed = ClosedPort::new();
    let c = config(&format!("endpoint: http://127.0.0.1:{}\ncompression_level: 1", closed.port()));
    let mut exp = exporter(&c);
    let stats = exp.stats();
    let mut raw = 0;
    for i in 0..5 {
        let s = sweep(i, 200);
        raw += encode_sweep(&s).encoded_len() as u64 + 8;
        exp.export(Arc::new(s)).await.unwrap();
    }
    assert_eq!(exp.queued(), 5);
    let held = get(&stats.queue_bytes);
    eprintln!("queue holds {held} bytes for {raw} uncompressed");
    assert!(held > 0 && held * 4 < raw, "gzip at enqueue: {held} bytes queued for {raw} uncompressed");
    exp.shutdown(Instant::now()).await.unwrap();
}

/// A disk queue outlives its configuration: batches queued with compression on are sent by a
/// later start with it off, and the other way round, each as the receiver is told to expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_queue_written_under_one_compression_is_sent_under_the_other() {
    for (before, after) in [("gzip", "none"), ("none", "gzip")] {
        for protocol in ["grpc", "http/protobuf"] {
            let dir = tempfile::tempdir().unwrap();
            let closed = ClosedPort::new();
            let port = closed.port();
            let path = if protocol == "grpc" { "" } else { "/v1/metrics" };
            let yaml = |compression: &str| {
                format!(
                    "endpoint: http://127.0.0.1:{port}{path}\nprotocol: {protocol}\ncompression: {compression}\n\
                     queue: {{directory: {}}}",
                    dir.path().display()
                )
            };
            {
                let mut exp = exporter(&config(&yaml(before)));
                for i in 0..3 {
                    exp.export(Arc::new(sweep(i, 4))).await.unwrap();
                }
                exp.shutdown(Instant::now() + Duration::from_millis(100)).await.unwrap();
                assert_eq!(exp.queued(), 3, "nothing could be sent");
            }
            let listener = tokio::net::TcpListener::from_std(closed.listen()).unwrap();
            let expected: Vec<ExportMetricsServiceRequest> =
                (0..4).map(|i| encode_sweep(&sweep(i, 4))).collect();
            let what = format!("{protocol}, queued with {before}, sent with {after}");
            // Each request the receiver got, and whether it came gzipped.
            type Seen = Box<dyn Fn() -> Vec<(ExportMetricsServiceRequest, bool)>>;
            let (_server, seen): (Box<dyn std::any::Any>, Seen) = if protocol == "grpc" {
                let server = GrpcServer::serve(listener, Vec::new());
                let script = server.script.clone();
                let seen = move || {
                    let received = script.received.lock().unwrap();
                    let gzip = |m: &tonic::metadata::MetadataMap| {
                        m.get("grpc-encoding").is_some_and(|v| v == "gzip")
                    };
                    received.iter().map(|(_, r, m)| (r.clone(), gzip(m))).collect()
                };
                (Box::new(server), Box::new(seen))
            } else {
                let server = HttpServer::serve(listener, Vec::new());
                let script = server.script.clone();
                let seen = move || {
                    let received = script.received.lock().unwrap();
                    let gzip = |h: &http::HeaderMap| h.get("content-encoding").is_some_and(|v| v == "gzip");
                    received.iter().map(|a| (a.request.clone(), gzip(&a.headers))).collect()
                };
                (Box::new(server), Box::new(seen))
            };
            let mut exp = exporter(&config(&yaml(after)));
            exp.export(Arc::new(sweep(3, 4))).await.unwrap();
            let stats = exp.stats();
            wait_for(&what, Duration::from_secs(10), || get(&stats.batches_sent) == 4).await;
            let (got, encodings): (Vec<ExportMetricsServiceRequest>, Vec<bool>) = seen().into_iter().unzip();
            assert_eq!(got, expected, "{what}: every batch arrives whole, in order");
            assert_eq!(encodings, vec![after == "gzip"; 4], "{what}: each is sent as now configured");
            assert_eq!(get(&exp.stats().batches_dropped), 0, "{what}");
            exp.shutdown(Instant::now() + Duration::from_secs(1)).await.unwrap();
        }
    }
}

// ---------- HTTP/protobuf ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_with_retry_after_then_200_and_the_gzip_body_is_the_request() {
    let server =
        HttpServer::start(vec![HttpReply { status: 503, retry_after: Some("1"), body: b"busy".to_vec() }])
            .await;
    let mut exp = exporter(&config(&format!(
        "protocol: http/protobuf\nendpoint: {}\nheaders: {{authorization: Bearer t0ken}}",
        server.url()
    )));
    let stats = exp.stats();
    let s = sweep(5, 4);
    exp.export(Arc::new(s.clone())).await.unwrap();
    wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    let received = server.script.received.lock().unwrap();
    assert_eq!(received.len(), 2);
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(1), "Retry-After: 1 honoured, retried after {gap:?}");
    let last = &received[1];
    assert_eq!(last.path, "/opentelemetry/v1/metrics", "the configured URL is used as given");
    assert_eq!(last.headers.get("content-type").unwrap(), "application/x-protobuf");
    assert_eq!(last.headers.get("content-encoding").unwrap(), "gzip");
    assert_eq!(last.headers.get("authorization").unwrap(), "Bearer t0ken");
    assert_eq!(last.request, encode_sweep(&s));
    assert_eq!(get(&stats.batches_retried), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_drops_and_429_retries() {
    let server = HttpServer::start(vec![
        HttpReply::status(400),
        HttpReply::status(429),
        HttpReply::status(502),
        HttpReply::status(200),
    ])
    .await;
    let mut exp =
        exporter(&config(&format!("protocol: http/protobuf\nendpoint: {}\ncompression: none", server.url())));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 1))).await.unwrap();
    exp.export(Arc::new(sweep(2, 1))).await.unwrap();
    wait_for("drop then delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    assert_eq!(get(&stats.batches_dropped), 1, "400 drops the first sweep");
    assert_eq!(get(&stats.batches_retried), 2, "429 and 502 retry the second");
    assert_eq!(server.attempts(), 4);
    let received = server.script.received.lock().unwrap();
    assert!(received[0].headers.get("content-encoding").is_none());
    assert_eq!(time_of(&received[3].request), time_of(&encode_sweep(&sweep(2, 1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_partial_success_body_is_decoded() {
    let body = ExportMetricsServiceResponse {
        partial_success: Some(ExportMetricsPartialSuccess {
            rejected_data_points: 2,
            error_message: "dup".into(),
        }),
    }
    .encode_to_vec();
    let server = HttpServer::start(vec![HttpReply { status: 200, retry_after: None, body }]).await;
    let mut exp = exporter(&config(&format!("protocol: http/protobuf\nendpoint: {}", server.url())));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 2))).await.unwrap();
    wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    assert_eq!(get(&stats.points_rejected), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_sweeps_are_split_and_arrive_complete() {
    let server = HttpServer::start(Vec::new()).await;
    let mut exp = exporter(&config(&format!(
        "protocol: http/protobuf\nendpoint: {}\nmax_batch_points: 50",
        server.url()
    )));
    let stats = exp.stats();
    let s = sweep(3, 120); // 240 points
    exp.export(Arc::new(s.clone())).await.unwrap();
    wait_for("delivery", Duration::from_secs(10), || get(&stats.batches_sent) >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = server.script.received.lock().unwrap();
    assert_eq!(received.len(), 5, "240 points at 50 per request");
    let merged: Vec<_> = received.iter().flat_map(|a| a.request.resource_metrics.clone()).collect();
    assert_eq!(merged, encode_sweep(&s).resource_metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_http_receiver_is_retried() {
    let closed = ClosedPort::new();
    let mut exp = exporter(&config(&format!(
        "protocol: http/protobuf\nendpoint: http://127.0.0.1:{}/v1/metrics",
        closed.port()
    )));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 1))).await.unwrap();
    wait_for("retries", Duration::from_secs(10), || get(&stats.batches_retried) >= 2).await;
    assert_eq!(get(&stats.batches_dropped), 0, "connection refused is not a reason to drop");
    assert_eq!(exp.queued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_the_error_names_the_location() {
    use podometer::exporters::otlp::transport::{Outcome, Transport};
    // The redirect target is a working receiver: following the 307 would deliver the batch
    // there, with the secret header.
    let target = HttpServer::start(Vec::new()).await;
    for status in [301u16, 302, 307, 308] {
        let (addr, task) =
            start_answering(status, vec![("location", target.url())], axum::body::Body::empty()).await;
        let url = format!("http://{addr}/v1/metrics");
        let c = config(&format!(
            "protocol: http/protobuf\nendpoint: {url}\nheaders: {{authorization: Bearer s3cret}}"
        ));
        let mut exp = exporter(&c);
        let stats = exp.stats();
        exp.export(Arc::new(sweep(1, 1))).await.unwrap();
        wait_for("the redirect settles", Duration::from_secs(10), || {
            get(&stats.batches_sent) + get(&stats.batches_dropped) == 1
        })
        .await;
        assert_eq!(get(&stats.batches_dropped), 1, "{status} drops the batch");
        assert_eq!(get(&stats.batches_retried), 0, "{status} is not retried");
        assert_eq!(target.attempts(), 0, "{status}: nothing reaches the redirect target");

        let mut transport = Transport::new(&c.resolve(|_| None).unwrap()).unwrap();
        let payload = bytes::Bytes::from(encode_sweep(&sweep(1, 1)).encode_to_vec());
        match transport.send(&payload).await {
            Outcome::Failed { detail, .. } => {
                assert!(detail.contains(&target.url()), "{status}: the error names the location: {detail}")
            }
            other => panic!("{status} counted as {other:?}"),
        }
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_asking_for_a_day_is_retried_after_the_configured_cap() {
    use tonic_types::{ErrorDetails, StatusExt};
    let day = Duration::from_secs(86_400);
    let http =
        HttpServer::start(vec![HttpReply { status: 503, retry_after: Some("86400"), body: Vec::new() }])
            .await;
    let grpc = GrpcServer::start(vec![GrpcReply::Status(tonic::Status::with_error_details(
        tonic::Code::Unavailable,
        "come back tomorrow",
        ErrorDetails::with_retry_info(Some(day)),
    ))])
    .await;
    let retry = "retry: {initial_interval: 10ms, max_interval: 300ms, jitter: none}";
    let mut to_http =
        exporter(&config(&format!("protocol: http/protobuf\nendpoint: {}\n{retry}", http.url())));
    let mut to_grpc = exporter(&config(&format!("endpoint: {}\n{retry}", grpc.endpoint())));
    let started = Instant::now();
    to_http.export(Arc::new(sweep(1, 1))).await.unwrap();
    to_grpc.export(Arc::new(sweep(1, 1))).await.unwrap();
    let (hs, gs) = (to_http.stats(), to_grpc.stats());
    wait_for("both delivered despite asking for a day", Duration::from_secs(10), || {
        get(&hs.batches_sent) == 1 && get(&gs.batches_sent) == 1
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let gap = |a: Instant, b: Instant| b - a;
    let h = http.script.received.lock().unwrap();
    let g = grpc.script.received.lock().unwrap();
    for (what, d) in [("HTTP", gap(h[0].at, h[1].at)), ("gRPC", gap(g[0].0, g[1].0))] {
        // The cap (max_interval, 300ms) is honoured as a delay, not skipped.
        assert!(d >= Duration::from_millis(300) && d < Duration::from_secs(3), "{what} retried after {d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_not_read_to_its_end() {
    for (status, delivered) in [(200u16, true), (400, false), (503, false)] {
        let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (addr, task) = start_answering(status, Vec::new(), endless_body(produced.clone())).await;
        // The request timeout is long: an unbounded read would hold the batch for 60 s.
        let mut exp = exporter(&config(&format!(
            "protocol: http/protobuf\nendpoint: http://{addr}/v1/metrics\ntimeout: 60s"
        )));
        let stats = exp.stats();
        exp.export(Arc::new(sweep(1, 1))).await.unwrap();
        wait_for(&format!("HTTP {status} with an endless body settles"), Duration::from_secs(10), || {
            get(&stats.batches_sent) + get(&stats.batches_dropped) + get(&stats.batches_retried) >= 1
        })
        .await;
        assert_eq!(get(&stats.batches_sent) == 1, delivered, "HTTP {status}");
        task.abort();
        let read = produced.load(std::sync::atomic::Ordering::Relaxed);
        // What the server managed to push into socket buffers, not what the agent read.
        assert!(read < 32 << 20, "HTTP {status}: the server produced {read} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_is_a_constructor_error_naming_it() {
    let c = config("endpoint: https://127.0.0.1:4317\ntls: {ca_file: /nonexistent/ca.pem}");
    let err = OtlpExporter::from_resolved("tls", c.resolve(|_| None).unwrap()).err().expect("fails");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

// ---------- every code and status, end to end through the exporter ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_code_is_retried_or_dropped_as_the_spec_says() {
    use tonic::Code;
    let retryable = [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::Cancelled,
        Code::OutOfRange,
        Code::DataLoss,
    ];
    let permanent = [
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::NotFound,
        Code::Unimplemented,
        Code::Internal,
        Code::FailedPrecondition,
        Code::AlreadyExists,
        Code::Unknown,
        Code::ResourceExhausted,
    ];
    let mut cases = Vec::new();
    for (code, retried) in retryable.iter().map(|c| (*c, true)).chain(permanent.iter().map(|c| (*c, false))) {
        let server =
            GrpcServer::start(vec![GrpcReply::Status(tonic::Status::new(code, "scripted")), GrpcReply::Ok])
                .await;
        let mut exp = exporter(&config(&format!("endpoint: {}", server.endpoint())));
        exp.export(Arc::new(sweep(1, 1))).await.unwrap();
        cases.push((code, retried, server, exp));
    }
    for (code, retried, server, exp) in &cases {
        assert_retried_or_dropped(&format!("{code:?}"), *retried, exp, || server.attempts()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_status_is_retried_or_dropped_as_the_spec_says() {
    let mut cases = Vec::new();
    for (status, retried) in [
        (429, true),
        (502, true),
        (503, true),
        (504, true),
        (400, false),
        (401, false),
        (403, false),
        (404, false),
        (413, false),
        (415, false),
        (500, false),
        (501, false),
    ] {
        let server = HttpServer::start(vec![HttpReply::status(status)]).await;
        let mut exp = exporter(&config(&format!("protocol: http/protobuf\nendpoint: {}", server.url())));
        exp.export(Arc::new(sweep(1, 1))).await.unwrap();
        cases.push((status, retried, server, exp));
    }
    for (status, retried, server, exp) in &cases {
        assert_retried_or_dropped(&status.to_string(), *retried, exp, || server.attempts()).await;
    }
}

// ---------- TLS and mutual TLS ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_mutual_tls_delivers_and_refuses_an_unknown_server() {
    if !openssl_available() {
        return;
    }
    let pki = TestPki::create();
    let script = Arc::new(GrpcScript::default());
    let (addr, server) = serve_grpc_mutual_tls(&pki, GrpcReceiver(script.clone())).await;

    let good = format!(
        "endpoint: https://127.0.0.1:{}\ntls: {{ca_file: {}, cert_file: {}, key_file: {}}}",
        addr.port(),
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key")
    );
    let mut exp = exporter(&config(&good));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 2))).await.unwrap();
    wait_for("delivery over mTLS", Duration::from_secs(10), || get(&stats.batches_sent) == 1).await;
    assert_eq!(script.received.lock().unwrap()[0].1, encode_sweep(&sweep(1, 2)));

    // A server whose certificate does not chain to the configured CA is never sent to.
    let wrong_ca = good.replace(&pki.path("ca.pem"), &pki.path("other-ca.pem"));
    let mut exp = exporter(&config(&wrong_ca));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(2, 1))).await.unwrap();
    wait_for("retries", Duration::from_secs(10), || get(&stats.batches_retried) >= 2).await;
    assert_eq!(get(&stats.batches_sent), 0);
    assert_eq!(script.received.lock().unwrap().len(), 1, "nothing reached the server");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_over_mutual_tls_delivers_and_needs_the_client_certificate() {
    if !openssl_available() {
        return;
    }
    let pki = TestPki::create();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let script = Arc::new(HttpScript::default());
    let app = axum::Router::new()
        .route("/v1/metrics", axum::routing::post(http_handler))
        .with_state(script.clone());
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(pki.rustls_server_config()) };
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let base = format!(
        "protocol: http/protobuf\nendpoint: https://127.0.0.1:{}/v1/metrics\ntls: {{ca_file: {}",
        addr.port(),
        pki.path("ca.pem")
    );
    let with_cert =
        format!("{base}, cert_file: {}, key_file: {}}}", pki.path("client.pem"), pki.path("client.key"));
    let mut exp = exporter(&config(&with_cert));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(1, 2))).await.unwrap();
    wait_for("delivery over HTTPS with mTLS", Duration::from_secs(10), || get(&stats.batches_sent) == 1)
        .await;
    assert_eq!(script.received.lock().unwrap()[0].request, encode_sweep(&sweep(1, 2)));

    let mut exp = exporter(&config(&format!("{base}}}")));
    let stats = exp.stats();
    exp.export(Arc::new(sweep(2, 1))).await.unwrap();
    wait_for("retries", Duration::from_secs(10), || get(&stats.batches_retried) >= 2).await;
    assert_eq!(get(&stats.batches_sent), 0, "the server demands a client certificate");
    assert_eq!(script.received.lock().unwrap().len(), 1);
    server.abort();
}
