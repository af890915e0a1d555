//! What a scrape of the `prometheus` exporter costs: rendering 500 containers' metrics (in
//! 167 three-container pods, with names, the points the cgroups and netns sources emit) in
//! each naming and format; and what the sweep pays for it: `export()` storing the sweep.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, Criterion, Throughput};
use podometer::exporters::prometheus::text::Format;
use podometer::exporters::prometheus::{render, Naming, PrometheusExporterConfig};
use podometer::exporters::Exporter;
use podometer::model::{AttrValue, Point, Resource, ResourceId, Sweep, Value};
use podometer::semconv::{self, CgroupFamily};

const CONTAINERS: u64 = 500;

fn cgroup_points(r: &mut Resource, f: &'static CgroupFamily, n: u64, t: SystemTime) {
    let start = Some(t - Duration::from_secs(3600));
    let mut push = |p: Point| {
        let mut p = p;
        if p.metric.kind == podometer::model::MetricKind::Counter {
            p.start_time = start;
        }
        r.points.push(p);
    };
    push(Point::new(&f.cpu_time, Value::Double(n as f64 * 1.37)).with(semconv::CPU_MODE, "user"));
    push(Point::new(&f.cpu_time, Value::Double(n as f64 * 0.21)).with(semconv::CPU_MODE, "system"));
    push(Point::new(&f.cpu_throttling_periods, Value::Int(n as i64 * 100)));
    push(Point::new(&f.cpu_throttling_throttled_periods, Value::Int(n as i64)));
    push(Point::new(&f.cpu_throttling_throttled_time, Value::Double(n as f64 * 0.001)));
    for (i, m) in [&f.memory_usage, &f.memory_working_set, &f.memory_rss, &f.memory_file, &f.memory_limit]
        .into_iter()
        .enumerate()
    {
        push(Point::new(m, Value::Int(((n + 1) << 20) as i64 + i as i64)));
    }
    push(Point::new(&f.memory_oom_kills, Value::Int(0)));
    for dev in ["8:0", "253:0"] {
        for dir in ["read", "write"] {
            push(
                Point::new(&f.disk_io, Value::Int(n as i64 * 4096))
                    .with(semconv::DISK_IO_DIRECTION, dir)
                    .with(semconv::SYSTEM_DEVICE, dev),
            );
            push(
                Point::new(&f.disk_operations, Value::Int(n as i64))
                    .with(semconv::DISK_IO_DIRECTION, dir)
                    .with(semconv::SYSTEM_DEVICE, dev),
            );
        }
    }
    push(Point::new(&f.pids_count, Value::Int(3)));
    push(Point::new(&f.pids_limit, Value::Int(4096)));
    for m in [&f.cpu_pressure, &f.memory_pressure, &f.io_pressure] {
        for ty in ["some", "full"] {
            push(Point::new(m, Value::Double(n as f64 * 0.0001)).with(semconv::PRESSURE_STALL_TYPE, ty));
        }
    }
}

/// 500 containers in 167 pods, with metadata names, as a busy node's sweep.
fn node_sweep() -> Sweep {
    let t = SystemTime::now();
    let mut sweep = Sweep::new(t);
    for c in 0..CONTAINERS {
        let pod = c / 3;
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", pod, pod * 31);
        let common = |extra: Vec<(&'static str, AttrValue)>| {
            let mut a: Vec<(&'static str, AttrValue)> = vec![
                (semconv::K8S_POD_UID, uid.clone().into()),
                (semconv::K8S_POD_NAME, format!("web-{pod}").into()),
                (semconv::K8S_NAMESPACE_NAME, "shop".into()),
                (semconv::HOST_NAME, "node-1".into()),
            ];
            a.extend(extra);
            a
        };
        if c % 3 == 0 {
            let r = sweep.resource_mut(ResourceId::Pod(uid.clone()), || common(Vec::new()));
            cgroup_points(r, &semconv::POD, c, t);
            for dir in ["receive", "transmit"] {
                for m in [
                    &semconv::POD_NETWORK.io,
                    &semconv::POD_NETWORK.packets,
                    &semconv::POD_NETWORK.dropped,
                    &semconv::POD_NETWORK.errors,
                ] {
                    let mut p = Point::new(m, Value::Int(c as i64 * 1500))
                        .with(semconv::NETWORK_INTERFACE_NAME, "eth0")
                        .with(semconv::NETWORK_IO_DIRECTION, dir)
                        .with(semconv::NETWORK_INTERFACE_HOST_PEER, format!("veth{pod:08x}"));
                    p.start_time = Some(t);
                    r.points.push(p);
                }
            }
        }
        let id = format!("{:064x}", c * 7919 + 1);
        let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
            common(vec![
                (semconv::CONTAINER_ID, id.clone().into()),
                (semconv::CONTAINER_RUNTIME_NAME, "containerd".into()),
                (semconv::K8S_CONTAINER_NAME, format!("app{}", c % 3).into()),
                (semconv::CONTAINER_NAME, format!("app{}", c % 3).into()),
                (semconv::CONTAINER_IMAGE_NAME, "registry.example/shop/app".into()),
            ])
        });
        cgroup_points(r, &semconv::CONTAINER, c, t);
    }
    sweep
}

fn config(naming: Naming) -> PrometheusExporterConfig {
    PrometheusExporterConfig { naming, ..PrometheusExporterConfig::default() }
}

fn benches(c: &mut Criterion) {
    let sweeps = vec![Arc::new(node_sweep())];
    let points = sweeps[0].point_count() as u64;
    let mut group = c.benchmark_group("prometheus");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(points));
    for (naming, label) in [(Naming::Otel, "otel"), (Naming::Cadvisor, "cadvisor")] {
        for (format, f) in [(Format::Text, "text"), (Format::OpenMetrics, "openmetrics")] {
            let config = config(naming);
            group.bench_function(format!("render_500_containers_{label}_{f}"), |b| {
                b.iter(|| render(&config, &sweeps, format).len())
            });
        }
    }
    // The sweep's share: export() stores the Arc (the server runs on a runtime).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut exporter = rt.block_on(async {
        podometer::exporters::prometheus::PrometheusExporter::new(&PrometheusExporterConfig {
            endpoint: "127.0.0.1:0".into(),
            ..PrometheusExporterConfig::default()
        })
        .unwrap()
    });
    group.bench_function("export_stores_the_sweep", |b| {
        b.iter(|| rt.block_on(exporter.export(Arc::clone(&sweeps[0]))).unwrap())
    });
    // The sweep's share of self-telemetry: counting the sweep and one histogram record.
    let rt2 = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _provider = rt2.block_on(async {
        podometer::self_telemetry_otlp::start(
            &podometer::self_telemetry_otlp::Target::plain("http://127.0.0.1:9"),
            Duration::from_secs(3600),
            podometer::resource::Common::default().sdk_resource(),
        )
        .unwrap()
    });
    group.bench_function("self_telemetry_per_sweep", |b| {
        b.iter(|| {
            let mut counts = podometer::pipeline::SweepCounts::default();
            counts.add(&sweeps[0]);
            counts.store(podometer::agent_counters::Telemetry::global());
            podometer::self_telemetry_otlp::record_sweep(Duration::from_millis(30));
        })
    });
    group.finish();
}

criterion_group!(prometheus, benches);

/// `cargo bench` passes `--bench`; under `cargo test --all-targets` each rendering runs once
/// as a smoke test and checks that it holds every point.
fn main() {
    // `--render NAMING FORMAT N`: only N renders, for counting instructions under callgrind
    // (stable on a noisy shared machine, unlike wall time): run with N and N+k, the
    // difference over k is one render.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--render") {
        let naming = if args[i + 1] == "otel" { Naming::Otel } else { Naming::Cadvisor };
        let format = if args[i + 2] == "text" { Format::Text } else { Format::OpenMetrics };
        let n: usize = args[i + 3].parse().expect("N");
        let sweeps = vec![Arc::new(node_sweep())];
        let bytes: usize = (0..n).map(|_| render(&config(naming), &sweeps, format).len()).sum();
        println!("{n} renders, {bytes} bytes");
        return;
    }
    if std::env::args().any(|a| a == "--bench") {
        prometheus();
        Criterion::default().configure_from_args().final_summary();
        return;
    }
    let sweeps = vec![Arc::new(node_sweep())];
    let points = sweeps[0].point_count();
    for naming in [Naming::Otel, Naming::Cadvisor] {
        let started = Instant::now();
        let text = render(&config(naming), &sweeps, Format::Text);
        let elapsed = started.elapsed();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert!(samples >= points, "{naming:?}: {samples} samples for {points} points");
        println!(
            "prometheus: smoke run {naming:?}: {samples} samples, {} KiB, {elapsed:?} (debug build)",
            text.len() / 1024
        );
    }
}
