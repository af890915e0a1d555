//! What one sweep costs the OTLP exporter on the sweep's path: split + encode, `export()`
//! into the memory queue, and an append to the on-disk queue (with its fdatasync).
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use podometer::exporters::otlp::batcher::Batcher;
use podometer::exporters::otlp::queue::{DiskQueue, Queue};
use podometer::exporters::otlp::{OtlpExporter, OtlpExporterConfig};
use podometer::exporters::Exporter;
use podometer::model::{Point, ResourceId, Sweep, Value};
use podometer::semconv;
use prost::Message;

/// 300 containers with 30 points each: a busy node.
fn node_sweep() -> Sweep {
    let t = SystemTime::now();
    let mut sweep = Sweep::new(t);
    for c in 0..300u64 {
        let id = format!("{:064x}", c * 7919);
        let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
            vec![
                (semconv::CONTAINER_ID, id.into()),
                (semconv::CONTAINER_RUNTIME_NAME, "containerd".into()),
                (semconv::K8S_POD_UID, format!("pod-{}", c / 3).into()),
            ]
        });
        for i in 0..10u64 {
            let mut p = Point::new(&semconv::CONTAINER.cpu_time, Value::Double((c * i) as f64 * 0.01))
                .with(semconv::CPU_MODE, if i % 2 == 0 { "user" } else { "system" });
            p.start_time = Some(t - Duration::from_secs(3600));
            r.points.push(p);
            r.points.push(
                Point::new(&semconv::CONTAINER.disk_io, Value::Int((c * 4096 * i) as i64))
                    .with(semconv::SYSTEM_DEVICE, format!("8:{i}"))
                    .with(semconv::DISK_IO_DIRECTION, "read"),
            );
            r.points
                .push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int((c << 20) as i64 + i as i64)));
        }
    }
    sweep
}

fn benches(c: &mut Criterion) {
    let sweep = node_sweep();
    let points = sweep.point_count() as u64;
    let mut group = c.benchmark_group("otlp");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(points));

    group.bench_function("encode_whole_sweep_reference", |b| {
        b.iter(|| podometer::exporters::otlp::encode::encode_sweep(&sweep).encode_to_vec().len())
    });

    group.bench_function("split_and_encode_9000_points", |b| {
        let batcher = Batcher::default();
        b.iter(|| batcher.split(&sweep).iter().map(|r| r.encode_to_vec().len()).sum::<usize>())
    });

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sweep_arc = Arc::new(sweep.clone());
    group.bench_function("export_into_memory_queue_receiver_down", |b| {
        let mut exporter = rt.block_on(async {
            let config: OtlpExporterConfig = serde_saphyr::from_str("endpoint: http://127.0.0.1:9").unwrap();
            OtlpExporter::from_resolved("bench", config.resolve(|_| None).unwrap()).unwrap()
        });
        b.iter(|| rt.block_on(exporter.export(sweep_arc.clone())).unwrap())
    });

    let batch = Bytes::from(Batcher::default().split(&sweep)[0].encode_to_vec());
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("disk_queue_append_fdatasync", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = DiskQueue::open(dir.path(), 64 << 20).unwrap();
        let mut q = Queue::Disk(q);
        b.iter(|| q.push(batch.clone()).unwrap())
    });
    group.finish();
}

criterion_group!(otlp, benches);

/// `cargo bench` passes `--bench`; `cargo test --all-targets -- --test-threads=N` does not, and
/// passes libtest flags criterion's parser rejects. Then each step runs once as a smoke test.
fn main() {
    if std::env::args().any(|a| a == "--bench") {
        otlp();
        Criterion::default().configure_from_args().final_summary();
        return;
    }
    let sweep = node_sweep();
    let requests = Batcher::default().split(&sweep);
    let points: usize = requests.iter().map(podometer::exporters::otlp::batcher::request_point_count).sum();
    assert_eq!(points, sweep.point_count(), "the split keeps every point");
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = DiskQueue::open(dir.path(), 64 << 20).expect("open queue");
    let mut q = Queue::Disk(q);
    q.push(Bytes::from(requests[0].encode_to_vec())).expect("append");
    assert_eq!(q.len(), 1);
    println!("otlp_export: smoke run ok ({points} points in {} requests)", requests.len());
}
