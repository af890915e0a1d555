//! What the export path costs per container and sweep, stage by stage, on a sweep shaped like the
//! agent's on a hybrid node (per container: CPU user/system, throttling, memory, OOM kills, two
//! block devices, PIDs, pressure; per pod: the same plus network on two interfaces): split and
//! encode into requests, then each compression the exporter can use, with the bytes it leaves.
//! The times are this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), the median of `--reps` runs.
//!
//!   cargo run --release --example export_cost -- [--containers 300] [--reps 30] [--dump FILE]
//!
//! `--dump FILE` writes the sweep's encoded requests (each as a little-endian u32 length and
//! the bytes) for comparing compressors outside the agent's build.

use std::io::Write;
use std::time::{Duration, SystemTime};

use podometer::exporters::otlp::batcher::Batcher;
use podometer::model::{Point, ResourceId, Sweep, Value};
use podometer::semconv;
use prost::Message;

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Counter values that look like a kernel's: large, distinct, not compressible by repetition.
struct Rng(u64);
impl Rng {
    fn next(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max.max(1)
    }
}

fn node_sweep(containers: usize, rng: &mut Rng) -> Sweep {
    let t = SystemTime::now();
    let start = Some(t - Duration::from_secs(86_400));
    let mut sweep = Sweep::new(t);
    let pods = containers.div_ceil(3);
    for p in 0..pods {
        let uid = format!("{:08x}-1b2d-4c6e-8f90-{:012x}", p * 7919, p);
        for c in 0..3.min(containers - p * 3) {
            let id = format!("{:064x}", ((p * 3 + c) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
                vec![
                    (semconv::CONTAINER_ID, id.into()),
                    (semconv::CONTAINER_RUNTIME_NAME, "containerd".into()),
                    (semconv::K8S_POD_UID, uid.as_str().into()),
                    (semconv::K8S_POD_QOS_CLASS, "besteffort".into()),
                ]
            });
            push_cgroup_points(&semconv::CONTAINER, &mut r.points, rng, start);
        }
        let r = sweep.resource_mut(ResourceId::Pod(uid.clone()), || {
            vec![
                (semconv::K8S_POD_UID, uid.as_str().into()),
                (semconv::K8S_POD_QOS_CLASS, "besteffort".into()),
            ]
        });
        push_cgroup_points(&semconv::POD, &mut r.points, rng, start);
        for iface in ["eth0", "lo"] {
            for (m, dir) in [
                (&semconv::POD_NETWORK.io, "receive"),
                (&semconv::POD_NETWORK.io, "transmit"),
                (&semconv::POD_NETWORK.packets, "receive"),
                (&semconv::POD_NETWORK.packets, "transmit"),
                (&semconv::POD_NETWORK.errors, "receive"),
                (&semconv::POD_NETWORK.errors, "transmit"),
                (&semconv::POD_NETWORK.dropped, "receive"),
                (&semconv::POD_NETWORK.dropped, "transmit"),
            ] {
                let mut pt = Point::new(m, Value::from_u64(rng.next(1 << 40)))
                    .with(semconv::NETWORK_INTERFACE_NAME, iface)
                    .with(semconv::NETWORK_IO_DIRECTION, dir);
                pt.start_time = start;
                r.points.push(pt);
            }
        }
    }
    sweep
}

fn push_cgroup_points(
    f: &'static semconv::CgroupFamily,
    points: &mut Vec<Point>,
    rng: &mut Rng,
    start: Option<SystemTime>,
) {
    let counter = |p: Point| Point { start_time: start, ..p };
    points.push(counter(
        Point::new(&f.cpu_time, Value::Double(rng.next(1 << 30) as f64 / 1e3))
            .with(semconv::CPU_MODE, "user"),
    ));
    points.push(counter(
        Point::new(&f.cpu_time, Value::Double(rng.next(1 << 30) as f64 / 1e3))
            .with(semconv::CPU_MODE, "system"),
    ));
    points.push(counter(Point::new(&f.cpu_throttling_periods, Value::from_u64(rng.next(1 << 20)))));
    points.push(counter(Point::new(&f.cpu_throttling_throttled_periods, Value::from_u64(rng.next(1 << 10)))));
    points.push(counter(Point::new(
        &f.cpu_throttling_throttled_time,
        Value::Double(rng.next(1 << 20) as f64 / 1e3),
    )));
    for m in [&f.memory_usage, &f.memory_working_set, &f.memory_rss, &f.memory_file, &f.memory_limit] {
        points.push(Point::new(m, Value::from_u64(rng.next(1 << 32))));
    }
    points.push(counter(Point::new(&f.memory_oom_kills, Value::from_u64(0))));
    for dev in ["8:0", "253:0"] {
        for m in [&f.disk_io, &f.disk_operations] {
            for dir in ["read", "write"] {
                points.push(counter(
                    Point::new(m, Value::from_u64(rng.next(1 << 36)))
                        .with(semconv::DISK_IO_DIRECTION, dir)
                        .with(semconv::SYSTEM_DEVICE, dev),
                ));
            }
        }
    }
    points.push(Point::new(&f.pids_count, Value::from_u64(rng.next(64))));
    points.push(Point::new(&f.pids_limit, Value::from_u64(4096)));
    for m in [&f.cpu_pressure, &f.memory_pressure, &f.io_pressure] {
        for kind in ["some", "full"] {
            points.push(counter(
                Point::new(m, Value::Double(rng.next(1 << 24) as f64 / 1e6))
                    .with(semconv::PRESSURE_STALL_TYPE, kind),
            ));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut containers = 300;
    let mut reps = 30;
    let mut dump = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let raw = args.next();
        let v = raw.as_deref().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--containers", Some(v)) => containers = v,
            ("--reps", Some(v)) => reps = v,
            ("--dump", _) if raw.is_some() => dump = raw,
            _ => {
                eprintln!("usage: export_cost [--containers N] [--reps N] [--dump FILE]");
                std::process::exit(2);
            }
        }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let sweep = node_sweep(containers, &mut rng);
    let mut batcher = Batcher::default();
    let per = |secs: f64| secs * 1e6 / containers as f64;

    let mut times = Vec::new();
    let mut payloads = Vec::new();
    for _ in 0..reps {
        let t = thread_cpu();
        payloads = batcher.split(&sweep).iter().map(|r| r.encode_to_vec()).collect::<Vec<_>>();
        times.push(thread_cpu() - t);
    }
    let raw: usize = payloads.iter().map(Vec::len).sum();
    if let Some(path) = dump {
        let mut out = Vec::new();
        for p in &payloads {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        std::fs::write(&path, out).expect("write the dump");
    }
    println!(
        "{containers} containers + {} pods, {} points, {} requests",
        containers.div_ceil(3),
        sweep.point_count(),
        payloads.len()
    );
    println!("| stage | µs per container-sweep | bytes per container |");
    println!("|---|---|---|");
    println!(
        "| split + encode via prost messages | {:.2} | {:.0} |",
        per(median(times)),
        raw as f64 / containers as f64
    );
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = thread_cpu();
        let encoded = batcher.split_encoded(&sweep).expect("encodes");
        times.push(thread_cpu() - t);
        assert_eq!(encoded.iter().map(|b| b.len()).sum::<usize>(), raw, "same bytes either way");
    }
    println!(
        "| split + encode, wire writer (`split_encoded`) | {:.2} | {:.0} |",
        per(median(times)),
        raw as f64 / containers as f64
    );
    // What the OTLP exporter does at enqueue with the default gzip level: each request is
    // compressed as it is written, in chunks, never whole.
    let mut streaming = batcher.clone().with_gzip(Some(1));
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..reps {
        let t = thread_cpu();
        let encoded = streaming.split_encoded(&sweep).expect("encodes");
        times.push(thread_cpu() - t);
        bytes = encoded.iter().map(|b| b.len()).sum::<usize>();
    }
    println!(
        "| split + encode + gzip 1 streamed (`split_encoded`, what the exporter runs) | {:.2} | {:.0} |",
        per(median(times)),
        bytes as f64 / containers as f64
    );

    for level in [1, 3, 6, 9] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..reps {
            let t = thread_cpu();
            bytes = 0;
            for p in &payloads {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(p.len() / 4),
                    flate2::Compression::new(level),
                );
                enc.write_all(p).expect("gzip");
                bytes += enc.finish().expect("gzip").len();
            }
            times.push(thread_cpu() - t);
        }
        println!(
            "| gzip level {level} (flate2) | {:.2} | {:.0} |",
            per(median(times)),
            bytes as f64 / containers as f64
        );
    }
    for level in [1, 3] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..reps {
            let t = thread_cpu();
            bytes = 0;
            for p in &payloads {
                bytes += zstd::bulk::compress(p, level).expect("zstd").len();
            }
            times.push(thread_cpu() - t);
        }
        println!(
            "| zstd level {level} | {:.2} | {:.0} |",
            per(median(times)),
            bytes as f64 / containers as f64
        );
    }
}
