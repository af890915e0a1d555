//! What naming costs per sweep: the `runtime_files` processor on a node of 500 containers
//! (167 Kubernetes pods of a sandbox and two containers, one left over), in steady state —
//! every bundle already read, so a sweep is the lookup of each id and the attach of the
//! names to the sweep's resources (what any metadata processor does every sweep).
//!
//! The sweep's resources carry what the sources give them (container id, runtime, pod UID and
//! QoS class, host name) and 30 points each, so the attach scans realistic attribute lists.
//! `cargo bench --bench metadata` (about 10 s); the budget is 2 µs per container per sweep.
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use podometer::model::{ContainerInfo, PodRef, Point, ResourceId, Runtime, Sweep, SweepContext, Value};
use podometer::processors::metadata::runtime_files::{RuntimeFiles, RuntimeFilesConfig};
use podometer::processors::Processor;
use podometer::semconv;

const CONTAINERS: usize = 500;

struct Node {
    _dir: tempfile::TempDir,
    ctx: SweepContext,
    sweep: Sweep,
    processor: RuntimeFiles,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("containerd");
    let now = SystemTime::now();
    let mut ctx = SweepContext::new(now);
    let mut sweep = Sweep::new(now);
    for c in 0..CONTAINERS {
        let pod = c / 3;
        let uid = format!("{pod:08x}-0000-4000-8000-000000000000");
        let id = format!("{:064x}", c * 7919 + 1);
        let sandbox = c % 3 == 0;
        let bundle = if sandbox {
            format!(
                r#"{{"annotations":{{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-name":"web-{pod}-7d4b9c-x2x","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"{uid}"}}}}"#
            )
        } else {
            format!(
                r#"{{"annotations":{{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app-{}","io.kubernetes.cri.image-name":"registry.example/shop/web:2.4.{c}","io.kubernetes.cri.sandbox-name":"web-{pod}-7d4b9c-x2x","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"{uid}"}}}}"#,
                c % 3
            )
        };
        let path = state.join("io.containerd.runtime.v2.task/k8s.io").join(&id);
        std::fs::create_dir_all(&path).expect("bundle dir");
        std::fs::write(path.join("config.json"), bundle).expect("bundle");
        ctx.containers.push(std::sync::Arc::new(ContainerInfo {
            id: id.clone(),
            runtime: Runtime::Containerd,
            pod: Some(PodRef::Kubernetes { uid: uid.clone(), qos: "burstable".into() }),
            procs_file: PathBuf::from("/nonexistent"),
        }));
        let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
            vec![
                (semconv::CONTAINER_ID, id.into()),
                (semconv::CONTAINER_RUNTIME_NAME, "containerd".into()),
                (semconv::K8S_POD_UID, uid.clone().into()),
                (semconv::K8S_POD_QOS_CLASS, "burstable".into()),
                (semconv::HOST_NAME, "node-1".into()),
            ]
        });
        for i in 0..30 {
            r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(i)));
        }
        if sandbox {
            let p = sweep.resource_mut(ResourceId::Pod(uid.clone()), || {
                vec![
                    (semconv::K8S_POD_UID, uid.clone().into()),
                    (semconv::K8S_POD_QOS_CLASS, "burstable".into()),
                    (semconv::HOST_NAME, "node-1".into()),
                ]
            });
            for i in 0..30 {
                p.points.push(Point::new(&semconv::POD.memory_usage, Value::Int(i)));
            }
        }
    }
    let config = RuntimeFilesConfig { containerd_state: state, ..RuntimeFilesConfig::default() };
    let mut processor = RuntimeFiles::new(config);
    // The first sweep reads every bundle; the ones after only attach.
    processor.process(&ctx, &mut sweep.clone());
    Node { _dir: dir, ctx, sweep, processor }
}

fn check(node: &mut Node) {
    let mut sweep = node.sweep.clone();
    node.processor.process(&node.ctx, &mut sweep);
    let named = sweep.resources.iter().filter(|r| r.attribute(semconv::K8S_POD_NAME).is_some()).count();
    assert_eq!(named, sweep.resources.len(), "every container and pod named");
    assert_eq!(node.processor.snapshot().containers.len(), CONTAINERS);
}

fn bench(c: &mut Criterion) {
    let mut node = node();
    check(&mut node);
    let mut group = c.benchmark_group("metadata");
    group.sample_size(30).measurement_time(Duration::from_secs(6)).warm_up_time(Duration::from_secs(1));
    // Per container: criterion divides the sweep's time by this.
    group.throughput(Throughput::Elements(CONTAINERS as u64));
    group.bench_function("runtime_files_steady_sweep_500_containers", |b| {
        b.iter_batched_ref(
            || node.sweep.clone(),
            |sweep| node.processor.process(&node.ctx, sweep),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(metadata, bench);

/// This thread's CPU time: on a shared machine wall time also counts the time other processes
/// had the core, CPU time does not.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the processor alone per container per sweep, over `sweeps` steady sweeps.
fn cpu_per_container(node: &mut Node, sweeps: u32) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..sweeps {
        let mut sweep = node.sweep.clone();
        let t = thread_cpu();
        node.processor.process(&node.ctx, &mut sweep);
        total += thread_cpu() - t;
    }
    total / (sweeps * CONTAINERS as u32)
}

/// `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs once as a smoke
/// test (criterion's parser rejects libtest's flags).
fn main() {
    if std::env::args().any(|a| a == "--bench") {
        metadata();
        criterion::Criterion::default().configure_from_args().final_summary();
        let mut node = node();
        let cpu = cpu_per_container(&mut node, 2000);
        println!(
            "metadata: runtime_files steady sweep, CPU time per container per sweep: {cpu:?} (2000 sweeps)"
        );
        return;
    }
    let mut node = node();
    check(&mut node);
    println!("metadata: smoke run ok ({CONTAINERS} containers named)");
}
