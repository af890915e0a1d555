//! The cgroup source on fixture trees of every layout (fixtures/cgroup/, written by
//! fixtures/cgroup/generate.py from the kernel's documented formats). Every point of every
//! resource is compared, so a wrong unit, a swapped key, a metric that should be absent, or a
//! read of the root cgroup (whose files hold garbage) fails.
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use podometer::model::{AttrValue, ContainerInfo, PodRef, ResourceId, Runtime, Sweep, SweepContext, Value};
use podometer::semconv::{self, CgroupFamily, CONTAINER, POD};
use podometer::sources::cgroups::{CgroupMode, CgroupSource, CgroupsConfig, SkipFiles, SweepStats};
use podometer::sources::Source;

const UID1: &str = "0f3e5a8c-1b2d-4c6e-8f90-a1b2c3d4e5f6";
const UID2: &str = "7c9d2e41-5a6b-4f8e-9d0c-112233445566";
const C1: &str = "1111111111111111111111111111111111111111111111111111111111111a01";
const C2: &str = "2222222222222222222222222222222222222222222222222222222222222b02";
const C3: &str = "3333333333333333333333333333333333333333333333333333333333333c03";
const C4: &str = "4444444444444444444444444444444444444444444444444444444444444d04";
const C5: &str = "5555555555555555555555555555555555555555555555555555555555555e05";
const PODMAN_POD: &str = "9999999999999999999999999999999999999999999999999999999999999f09";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cgroup").join(name)
}

fn config(root: &Path) -> CgroupsConfig {
    CgroupsConfig { root: root.to_owned(), ..CgroupsConfig::default() }
}

fn sweep_once(source: &mut CgroupSource) -> (SweepContext, Sweep) {
    let mut ctx = SweepContext::new(SystemTime::UNIX_EPOCH);
    let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
    source.collect(&mut ctx, &mut sweep).expect("collect");
    (ctx, sweep)
}

/// A point as compared: metric name, sorted point attributes, value.
type Key = (String, Vec<(String, String)>);

/// One expected point: metric name, point attributes, value.
type ExpectedPoint = (&'static str, Vec<(&'static str, &'static str)>, Value);

#[derive(Default)]
struct Expect(Vec<ExpectedPoint>);

impl Expect {
    fn int(mut self, name: &'static str, v: i64) -> Self {
        self.0.push((name, vec![], Value::Int(v)));
        self
    }
    fn cpu(mut self, f: &'static CgroupFamily, user: f64, system: f64) -> Self {
        self.0.push((f.cpu_time.name, vec![(semconv::CPU_MODE, "user")], Value::Double(user)));
        self.0.push((f.cpu_time.name, vec![(semconv::CPU_MODE, "system")], Value::Double(system)));
        self
    }
    fn throttling(self, f: &'static CgroupFamily, periods: i64, throttled: i64, time: f64) -> Self {
        let mut s = self
            .int(f.cpu_throttling_periods.name, periods)
            .int(f.cpu_throttling_throttled_periods.name, throttled);
        s.0.push((f.cpu_throttling_throttled_time.name, vec![], Value::Double(time)));
        s
    }
    fn memory(self, f: &'static CgroupFamily, usage: i64, working_set: i64, rss: i64, file: i64) -> Self {
        self.int(f.memory_usage.name, usage)
            .int(f.memory_working_set.name, working_set)
            .int(f.memory_rss.name, rss)
            .int(f.memory_file.name, file)
    }
    fn disk(
        mut self,
        f: &'static CgroupFamily,
        dev: &'static str,
        rb: i64,
        wb: i64,
        ro: i64,
        wo: i64,
    ) -> Self {
        for (name, dir, v) in [
            (f.disk_io.name, "read", rb),
            (f.disk_io.name, "write", wb),
            (f.disk_operations.name, "read", ro),
            (f.disk_operations.name, "write", wo),
        ] {
            self.0.push((
                name,
                vec![(semconv::DISK_IO_DIRECTION, dir), (semconv::SYSTEM_DEVICE, dev)],
                Value::Int(v),
            ));
        }
        self
    }
    fn psi(mut self, name: &'static str, some: f64, full: Option<f64>) -> Self {
        self.0.push((name, vec![(semconv::PRESSURE_STALL_TYPE, "some")], Value::Double(some)));
        if let Some(full) = full {
            self.0.push((name, vec![(semconv::PRESSURE_STALL_TYPE, "full")], Value::Double(full)));
        }
        self
    }
    fn into_map(self) -> BTreeMap<Key, Value> {
        let mut map = BTreeMap::new();
        for (name, attrs, v) in self.0 {
            let mut attrs: Vec<(String, String)> =
                attrs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            attrs.sort();
            assert!(map.insert((name.to_owned(), attrs), v).is_none(), "expectation lists {name} twice");
        }
        map
    }
}

fn actual(sweep: &Sweep, id: &ResourceId) -> BTreeMap<Key, Value> {
    let resource = sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?}"));
    let mut map = BTreeMap::new();
    for p in &resource.points {
        let mut attrs: Vec<(String, String)> = p
            .attributes
            .iter()
            .map(|(k, v)| match v {
                AttrValue::Str(s) => ((*k).to_owned(), s.to_string()),
                other => ((*k).to_owned(), format!("{other:?}")),
            })
            .collect();
        attrs.sort();
        assert!(
            map.insert((p.metric.name.to_owned(), attrs), p.value).is_none(),
            "{id:?} has a duplicate point"
        );
    }
    map
}

fn assert_points(sweep: &Sweep, id: ResourceId, expect: Expect) {
    assert_eq!(actual(sweep, &id), expect.into_map(), "points of {id:?}");
}

fn assert_attrs(sweep: &Sweep, id: ResourceId, expected: &[(&str, &str)]) {
    let resource = sweep.resource(&id).unwrap_or_else(|| panic!("no resource {id:?}"));
    let mut got: Vec<(String, String)> = resource
        .attributes
        .iter()
        .map(|(k, v)| {
            ((*k).to_owned(), if let AttrValue::Str(s) = v { s.to_string() } else { format!("{v:?}") })
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> =
        expected.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    want.sort();
    assert_eq!(got, want, "attributes of {id:?}");
}

fn cid(id: &str) -> ResourceId {
    ResourceId::Container(id.to_owned())
}

fn pid(uid: &str) -> ResourceId {
    ResourceId::Pod(uid.to_owned())
}

fn k8s(uid: &str, qos: &str) -> Option<PodRef> {
    Some(PodRef::Kubernetes { uid: uid.to_owned(), qos: qos.to_owned() })
}

fn info(id: &str, runtime: Runtime, pod: Option<PodRef>, procs: PathBuf) -> std::sync::Arc<ContainerInfo> {
    std::sync::Arc::new(ContainerInfo { id: id.to_owned(), runtime, pod, procs_file: procs })
}

fn stats(containers: usize, pods: usize, errors: usize) -> SweepStats {
    SweepStats { discovered: true, containers, pods, errors, ..SweepStats::default() }
}

#[test]
fn v1_kubelet_cgroupfs_containerd() {
    let root = fixture("v1-kubelet-cgroupfs-containerd");
    let mut source = CgroupSource::new(&config(&root)).expect("source");
    assert_eq!(source.mode(), CgroupMode::V1);
    let (ctx, sweep) = sweep_once(&mut source);
    assert_eq!(source.last_sweep_stats(), stats(2, 1, 0));
    assert_eq!(sweep.resources.len(), 3);

    let pod_dir = format!("kubepods/burstable/pod{UID1}");
    let procs = |id: &str| root.join("memory").join(&pod_dir).join(id).join("cgroup.procs");
    assert_eq!(
        ctx.containers,
        vec![
            info(C1, Runtime::Containerd, k8s(UID1, "burstable"), procs(C1)),
            info(C2, Runtime::Containerd, k8s(UID1, "burstable"), procs(C2)),
        ]
    );
    let c_attrs = |id| {
        [
            ("container.id", id),
            ("container.runtime.name", "containerd"),
            ("k8s.pod.uid", UID1),
            ("k8s.pod.qos_class", "burstable"),
        ]
    };
    assert_attrs(&sweep, cid(C1), &c_attrs(C1));
    assert_attrs(&sweep, cid(C2), &c_attrs(C2));
    assert_attrs(&sweep, pid(UID1), &[("k8s.pod.uid", UID1), ("k8s.pod.qos_class", "burstable")]);

    let f = &CONTAINER;
    assert_points(
        &sweep,
        cid(C1),
        Expect::default()
            // cpuacct.usage_user/usage_sys in ns
            .cpu(f, 1.23456789, 0.987654321)
            // cpu.stat throttled_time in ns
            .throttling(f, 1500, 42, 2.5)
            .memory(f, 104857600, 104857600 - 20971520, 73400320, 31457280)
            .int(f.memory_limit.name, 268435456)
            .int(f.memory_oom_kills.name, 2)
            .disk(f, "8:0", 4096000, 1024000, 100, 25)
            .disk(f, "253:0", 512, 0, 1, 0)
            .int(f.pids_count.name, 7)
            .int(f.pids_limit.name, 1024),
    );
    // No usage_user/usage_sys: cpuacct.stat in USER_HZ (100) ticks. Usage below inactive_file:
    // working set 0. Unlimited memory, no blkio, no pids controller: those metrics are absent.
    assert_points(
        &sweep,
        cid(C2),
        Expect::default()
            .cpu(f, 3.5, 1.25)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 8388608, 0, 4194304, 10485760)
            .int(f.memory_oom_kills.name, 0),
    );
    let p = &POD;
    assert_points(
        &sweep,
        pid(UID1),
        Expect::default()
            .cpu(p, 5.123456789, 1.987654321)
            .throttling(p, 3100, 57, 3.25)
            .memory(p, 125829120, 125829120 - 22020096, 77594624, 48234496)
            .int(p.memory_limit.name, 536870912)
            .int(p.memory_oom_kills.name, 3)
            .disk(p, "8:0", 4567040, 1228800, 133, 41)
            .disk(p, "253:0", 512, 0, 1, 0)
            .int(p.pids_count.name, 12)
            .int(p.pids_limit.name, 4096),
    );
}

#[test]
fn v1_docker() {
    let root = fixture("v1-docker");
    let mut source = CgroupSource::new(&config(&root)).expect("source");
    assert_eq!(source.mode(), CgroupMode::V1);
    let (ctx, sweep) = sweep_once(&mut source);
    assert_eq!(source.last_sweep_stats(), stats(2, 0, 0));
    assert_eq!(sweep.resources.len(), 2);
    let procs = |id: &str| root.join("memory/docker").join(id).join("cgroup.procs");
    assert_eq!(
        ctx.containers,
        vec![info(C3, Runtime::Docker, None, procs(C3)), info(C4, Runtime::Docker, None, procs(C4))]
    );
    assert_attrs(&sweep, cid(C3), &[("container.id", C3), ("container.runtime.name", "docker")]);
    let f = &CONTAINER;
    // Unlimited memory (9223372036854771712) and pids.max `max`: no limit points.
    assert_points(
        &sweep,
        cid(C3),
        Expect::default()
            .cpu(f, 45.0, 5.500000001)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 52428800, 52428800 - 6291456, 41943040, 10485760)
            .int(f.memory_oom_kills.name, 0)
            .disk(f, "259:0", 1048576, 2097152, 16, 32)
            .int(f.pids_count.name, 3),
    );
    // blkio files holding only `Total 0`: no device, no disk points.
    assert_points(
        &sweep,
        cid(C4),
        Expect::default()
            .cpu(f, 0.0007, 0.0003)
            .throttling(f, 10, 1, 0.0015)
            .memory(f, 2097152, 2097152, 1048576, 1048576)
            .int(f.memory_limit.name, 134217728)
            .int(f.memory_oom_kills.name, 1)
            .int(f.pids_count.name, 1)
            .int(f.pids_limit.name, 100),
    );
}

#[test]
fn v2_kubelet_systemd_containerd() {
    let root = fixture("v2-kubelet-systemd-containerd");
    let mut source = CgroupSource::new(&config(&root)).expect("source");
    assert_eq!(source.mode(), CgroupMode::V2);
    let (ctx, sweep) = sweep_once(&mut source);
    assert_eq!(source.last_sweep_stats(), stats(2, 1, 0));
    assert_eq!(sweep.resources.len(), 3);
    let uid_ = UID1.replace('-', "_");
    let pod_dir = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
    let procs = |id: &str| root.join(&pod_dir).join(format!("cri-containerd-{id}.scope/cgroup.procs"));
    assert_eq!(
        ctx.containers,
        vec![
            info(C1, Runtime::Containerd, k8s(UID1, "burstable"), procs(C1)),
            info(C2, Runtime::Containerd, k8s(UID1, "burstable"), procs(C2)),
        ]
    );
    assert_attrs(
        &sweep,
        cid(C2),
        &[
            ("container.id", C2),
            ("container.runtime.name", "containerd"),
            ("k8s.pod.uid", UID1),
            ("k8s.pod.qos_class", "burstable"),
        ],
    );
    assert_attrs(&sweep, pid(UID1), &[("k8s.pod.uid", UID1), ("k8s.pod.qos_class", "burstable")]);
    let f = &CONTAINER;
    // Recorded in the pure v2 guest (fixtures/cgroup/README.md): a systemd scope with
    // MemoryMax=200M, TasksMax=40 and CPUQuota=50% that wrote 8 MiB with O_DIRECT to the virtio
    // disk and keeps 16 MiB of shmem. cpu.stat and PSI totals in microseconds; memory.events is
    // generated (oom_kill 1). Working set = memory.current - inactive_file.
    assert_points(
        &sweep,
        cid(C1),
        Expect::default()
            .cpu(f, 0.564732, 1.261235)
            .throttling(f, 43, 32, 1.839563)
            .memory(f, 17612800, 17612800 - 16384, 319488, 16977920)
            .int(f.memory_limit.name, 209715200)
            .int(f.memory_oom_kills.name, 1)
            .disk(f, "254:0", 200704, 8388608, 6, 8)
            .int(f.pids_count.name, 3)
            .int(f.pids_limit.name, 40)
            .psi(f.cpu_pressure.name, 1.627744, Some(1.502989))
            .psi(f.memory_pressure.name, 0.0, Some(0.0))
            .psi(f.io_pressure.name, 0.001309, Some(0.001309)),
    );
    // Recorded: a scope in a slice that enables neither cpu nor io for it (systemd enables
    // controllers on demand): no throttling fields, no io.stat; memory.max `max`: no memory
    // limit; systemd's default TasksMax in pids.max. cpu.pressure is generated, without the
    // `full` line of kernels before 5.13: only `some`.
    assert_points(
        &sweep,
        cid(C2),
        Expect::default()
            .cpu(f, 0.28416, 0.292278)
            .memory(f, 184320, 184320, 106496, 0)
            .int(f.memory_oom_kills.name, 0)
            .int(f.pids_count.name, 1)
            .int(f.pids_limit.name, 2305)
            .psi(f.cpu_pressure.name, 1.999999, None)
            .psi(f.memory_pressure.name, 0.0, Some(0.0))
            .psi(f.io_pressure.name, 0.0, Some(0.0)),
    );
    // Recorded: C1's pod slice (cpu enabled, no quota: zero throttling; no memory or pids limit).
    let p = &POD;
    assert_points(
        &sweep,
        pid(UID1),
        Expect::default()
            .cpu(p, 0.564732, 1.261235)
            .throttling(p, 0, 0, 0.0)
            .memory(p, 17620992, 17620992 - 16384, 319488, 16977920)
            .int(p.memory_oom_kills.name, 1)
            .disk(p, "254:0", 200704, 8388608, 6, 8)
            .int(p.pids_count.name, 3)
            .psi(p.cpu_pressure.name, 1.672855, Some(1.550337))
            .psi(p.memory_pressure.name, 0.0, Some(0.0))
            .psi(p.io_pressure.name, 0.001306, Some(0.001306)),
    );
}

/// Collects the log lines written while `f` runs on this thread.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    (out, text)
}

#[test]
fn v2_crio_guaranteed_with_a_missing_key() {
    let root = fixture("v2-crio");
    let mut source = CgroupSource::new(&config(&root)).expect("source");
    let ((ctx, sweep), logs) = capture_logs(|| sweep_once(&mut source));
    // C4's memory.events lacks oom_kill: one error, naming file and key, and nothing else lost.
    assert_eq!(source.last_sweep_stats(), stats(2, 1, 1));
    assert!(
        logs.contains("memory.events") && logs.contains("oom_kill"),
        "warning names file and key: {logs}"
    );
    assert!(logs.contains(&format!("crio-{C4}.scope")), "warning names the cgroup: {logs}");
    // The conmon cgroup is not a container.
    assert_eq!(ctx.containers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![C3, C4]);
    assert!(ctx.containers.iter().all(|c| c.runtime == Runtime::CriO && c.pod == k8s(UID2, "guaranteed")));
    assert_eq!(sweep.resources.len(), 3);
    assert_attrs(
        &sweep,
        cid(C3),
        &[
            ("container.id", C3),
            ("container.runtime.name", "cri-o"),
            ("k8s.pod.uid", UID2),
            ("k8s.pod.qos_class", "guaranteed"),
        ],
    );
    let f = &CONTAINER;
    assert_points(
        &sweep,
        cid(C3),
        Expect::default()
            .cpu(f, 0.6, 0.05)
            .throttling(f, 400, 4, 0.06)
            .memory(f, 50331648, 50331648 - 4194304, 41943040, 8388608)
            .int(f.memory_limit.name, 268435456)
            .int(f.memory_oom_kills.name, 0)
            .disk(f, "252:0", 8192, 16384, 2, 4)
            .int(f.pids_count.name, 2)
            .int(f.pids_limit.name, 1024)
            .psi(f.cpu_pressure.name, 7e-6, Some(3e-6))
            .psi(f.memory_pressure.name, 11e-6, Some(5e-6))
            .psi(f.io_pressure.name, 13e-6, Some(7e-6)),
    );
    assert_points(
        &sweep,
        cid(C4),
        Expect::default()
            .cpu(f, 0.25, 0.04)
            .throttling(f, 400, 3, 0.03)
            .memory(f, 16777216, 16777216 - 2097152, 8388608, 8388608)
            .int(f.memory_limit.name, 268435456)
            .int(f.pids_count.name, 2)
            .int(f.pids_limit.name, 1024)
            .psi(f.cpu_pressure.name, 3e-6, Some(1e-6))
            .psi(f.memory_pressure.name, 5e-6, Some(2e-6))
            .psi(f.io_pressure.name, 0.0, Some(0.0)),
    );
    let p = &POD;
    assert_attrs(&sweep, pid(UID2), &[("k8s.pod.uid", UID2), ("k8s.pod.qos_class", "guaranteed")]);
    assert_points(
        &sweep,
        pid(UID2),
        Expect::default()
            .cpu(p, 0.9, 0.1)
            .throttling(p, 800, 8, 0.09)
            .memory(p, 73400320, 73400320 - 10485760, 52428800, 20971520)
            .int(p.memory_limit.name, 536870912)
            .int(p.memory_oom_kills.name, 0)
            .disk(p, "252:0", 8192, 16384, 2, 4)
            .int(p.pids_count.name, 4)
            .int(p.pids_limit.name, 2048)
            .psi(p.cpu_pressure.name, 10e-6, Some(5e-6))
            .psi(p.memory_pressure.name, 20e-6, Some(10e-6))
            .psi(p.io_pressure.name, 30e-6, Some(15e-6)),
    );
}

#[test]
fn hybrid_kubelet_and_podman_with_pressure_from_unified() {
    let root = fixture("hybrid");
    let mut source = CgroupSource::new(&config(&root)).expect("source");
    assert_eq!(source.mode(), CgroupMode::Hybrid);
    let (ctx, sweep) = sweep_once(&mut source);
    assert_eq!(source.last_sweep_stats(), stats(3, 1, 0));
    assert_eq!(sweep.resources.len(), 4);
    let pod_dir = format!("kubepods/besteffort/pod{UID2}");
    let podman_dir = format!("libpod_parent/{PODMAN_POD}/libpod-{C5}");
    let mem = root.join("memory");
    let mut containers = ctx.containers.clone();
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        containers,
        vec![
            info(
                C3,
                Runtime::Containerd,
                k8s(UID2, "besteffort"),
                mem.join(&pod_dir).join(C3).join("cgroup.procs")
            ),
            info(
                C4,
                Runtime::Containerd,
                k8s(UID2, "besteffort"),
                mem.join(&pod_dir).join(C4).join("cgroup.procs")
            ),
            info(
                C5,
                Runtime::Podman,
                Some(PodRef::Podman { id: PODMAN_POD.to_owned() }),
                mem.join(&podman_dir).join("cgroup.procs")
            ),
        ]
    );
    assert_attrs(
        &sweep,
        cid(C5),
        &[("container.id", C5), ("container.runtime.name", "podman"), ("podman.pod.id", PODMAN_POD)],
    );
    let f = &CONTAINER;
    // cpu and cpuacct mounted apart; CPU time and PSI from unified/ where the cgroup exists
    // there (cpu.stat user_usec 2000077, system_usec 500011; cpuacct says 2.0 and 0.5 s).
    assert_points(
        &sweep,
        cid(C3),
        Expect::default()
            .cpu(f, 2.000077, 0.500011)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 25165824, 25165824 - 2097152, 20971520, 4194304)
            .int(f.memory_oom_kills.name, 0)
            .disk(f, "8:0", 65536, 131072, 4, 8)
            .int(f.pids_count.name, 4)
            .psi(f.cpu_pressure.name, 0.5, Some(0.0))
            .psi(f.memory_pressure.name, 0.03, Some(0.015))
            .psi(f.io_pressure.name, 0.07, Some(0.05)),
    );
    // Absent from unified/: CPU time from cpuacct.usage (1 s) split 3:1 by usage_user and
    // usage_sys, no pressure points.
    assert_points(
        &sweep,
        cid(C4),
        Expect::default()
            .cpu(f, 0.75, 0.25)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 4194304, 4194304 - 1048576, 3145728, 1048576)
            .int(f.memory_oom_kills.name, 0)
            .int(f.pids_count.name, 2),
    );
    assert_points(
        &sweep,
        cid(C5),
        Expect::default()
            .cpu(f, 0.111112, 0.022223)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 1310720, 1310720 - 327680, 655360, 655360)
            .int(f.memory_limit.name, 67108864)
            .int(f.memory_oom_kills.name, 0)
            .int(f.pids_count.name, 1)
            .int(f.pids_limit.name, 2048)
            .psi(f.cpu_pressure.name, 0.0001, Some(0.00005))
            .psi(f.memory_pressure.name, 0.0, Some(0.0))
            .psi(f.io_pressure.name, 0.0, Some(0.0)),
    );
    let p = &POD;
    assert_points(
        &sweep,
        pid(UID2),
        Expect::default()
            .cpu(p, 3.000123, 1.000045)
            .throttling(p, 0, 0, 0.0)
            .memory(p, 33554432, 33554432 - 4194304, 25165824, 8388608)
            .int(p.memory_oom_kills.name, 0)
            .disk(p, "8:0", 65536, 131072, 4, 8)
            .int(p.pids_count.name, 6)
            .psi(p.cpu_pressure.name, 0.6, Some(0.0))
            .psi(p.memory_pressure.name, 0.04, Some(0.02))
            .psi(p.io_pressure.name, 0.08, Some(0.06)),
    );
}

/// Copies a fixture tree so a test can change it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn int_of(sweep: &Sweep, id: &ResourceId, metric: &str) -> Option<i64> {
    sweep.resource(id)?.points_of(metric).next().map(|p| match p.value {
        Value::Int(v) => v,
        Value::Double(v) => v as i64,
    })
}

#[test]
fn kept_open_files_see_new_values_limits_wait_for_their_interval_and_discovery_for_its() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v1-docker"), tmp.path());
    let cfg = CgroupsConfig {
        root: tmp.path().to_owned(),
        discovery_interval: Duration::from_secs(3600),
        limits_interval: Duration::from_secs(3600),
        ..CgroupsConfig::default()
    };
    let mut source = CgroupSource::new(&cfg).expect("source");
    let (_, first) = sweep_once(&mut source);
    let c4 = tmp.path().join("memory/docker").join(C4);
    assert_eq!(int_of(&first, &cid(C4), CONTAINER.memory_limit.name), Some(134217728));

    // Same inode, new contents: the kept-open usage file shows the new value, the limit is not
    // read again before limits_interval.
    std::fs::write(c4.join("memory.usage_in_bytes"), "3145728\n").expect("write");
    std::fs::write(c4.join("memory.limit_in_bytes"), "999424\n").expect("write");
    // A new container appears, but discovery_interval has not elapsed.
    let new_dir = tmp.path().join("memory/docker").join(C5);
    copy_tree(&c4, &new_dir);
    let (_, second) = sweep_once(&mut source);
    assert!(!source.last_sweep_stats().discovered);
    assert_eq!(int_of(&second, &cid(C4), CONTAINER.memory_usage.name), Some(3145728));
    assert_eq!(int_of(&second, &cid(C4), CONTAINER.memory_limit.name), Some(134217728));
    assert!(second.resource(&cid(C5)).is_none());

    // With both intervals at zero the next sweep walks the tree and re-reads limits.
    let cfg = CgroupsConfig { discovery_interval: Duration::ZERO, limits_interval: Duration::ZERO, ..cfg };
    let mut source = CgroupSource::new(&cfg).expect("source");
    let (ctx, third) = sweep_once(&mut source);
    assert_eq!(int_of(&third, &cid(C4), CONTAINER.memory_limit.name), Some(999424));
    assert_eq!(int_of(&third, &cid(C5), CONTAINER.memory_usage.name), Some(3145728));
    assert_eq!(ctx.containers.len(), 3);

    // A container directory removed: dropped at the next walk.
    std::fs::remove_dir_all(&new_dir).expect("rm");
    let (ctx, fourth) = sweep_once(&mut source);
    assert!(fourth.resource(&cid(C5)).is_none());
    assert_eq!(ctx.containers.len(), 2);
}

#[test]
fn a_root_without_cgroups_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = CgroupSource::new(&config(tmp.path())).expect_err("no hierarchy");
    assert!(err.to_string().contains(&tmp.path().display().to_string()), "{err}");
}

#[test]
fn config_reads_human_durations_and_rejects_unknown_fields() {
    let cfg: CgroupsConfig = serde_json::from_str(
        r#"{"root": "/host/sys/fs/cgroup", "discovery_interval": "5s", "limits_interval": "2m"}"#,
    )
    .expect("config");
    assert_eq!(cfg.root, PathBuf::from("/host/sys/fs/cgroup"));
    assert_eq!(cfg.discovery_interval, Duration::from_secs(5));
    assert_eq!(cfg.limits_interval, Duration::from_secs(120));
    let defaults: CgroupsConfig = serde_json::from_str("{}").expect("defaults");
    assert_eq!(defaults, CgroupsConfig::default());
    assert_eq!(defaults.discovery_interval, Duration::from_secs(10));
    assert_eq!(defaults.limits_interval, Duration::from_secs(60));
    assert!(serde_json::from_str::<CgroupsConfig>(r#"{"rooot": "/x"}"#).is_err());
    assert!(serde_json::from_str::<CgroupsConfig>(r#"{"discovery_interval": "soon"}"#).is_err());
}

fn cpu_of(sweep: &Sweep, id: &ResourceId, mode: &str) -> f64 {
    let r = sweep.resource(id).expect("resource");
    r.points_of(CONTAINER.cpu_time.name)
        .find(|p| p.attribute("cpu.mode") == Some(&podometer::model::AttrValue::Str(mode.into())))
        .map(|p| p.value.as_f64())
        .expect("cpu point")
}

/// v1's `cpuacct.usage_user`/`usage_sys` are tick samples whose sum drifts from the exact
/// `cpuacct.usage`; the reported total must be the exact one, split by the samples' ratio,
/// and neither mode may go backwards when the ratio shifts.
#[test]
fn v1_cpu_total_is_cpuacct_usage_split_by_the_sampled_ratio() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v1-docker"), tmp.path());
    let dir = tmp.path().join("cpu,cpuacct/docker").join(C3);
    let write = |name: &str, v: u64| std::fs::write(dir.join(name), format!("{v}\n")).expect("write");
    // Samples 3:1 summing to 8 s, exact total 6 s.
    write("cpuacct.usage_user", 6_000_000_000);
    write("cpuacct.usage_sys", 2_000_000_000);
    write("cpuacct.usage", 6_000_000_000);
    let mut source = CgroupSource::new(&config(tmp.path())).expect("source");
    let (_, first) = sweep_once(&mut source);
    assert_eq!((cpu_of(&first, &cid(C3), "user"), cpu_of(&first, &cid(C3), "system")), (4.5, 1.5));
    // The samples now say all user; the exact total grew by 1 s: system stays, user takes it.
    write("cpuacct.usage_user", 9_000_000_000);
    write("cpuacct.usage_sys", 0);
    write("cpuacct.usage", 7_000_000_000);
    let (_, second) = sweep_once(&mut source);
    assert_eq!((cpu_of(&second, &cid(C3), "user"), cpu_of(&second, &cid(C3), "system")), (5.5, 1.5));
}

#[test]
fn skipped_file_groups_are_not_read_and_their_metrics_only_are_gone() {
    let root = fixture("hybrid");
    let names = |sweep: &Sweep| -> std::collections::BTreeSet<String> {
        sweep.resources.iter().flat_map(|r| r.points.iter().map(|p| p.metric.name.to_owned())).collect()
    };
    let mut full = CgroupSource::new(&config(&root)).expect("source");
    let (_, all) = sweep_once(&mut full);
    let skip = vec![SkipFiles::Pressure, SkipFiles::BlockIo, SkipFiles::MemoryStat, SkipFiles::Throttling];
    let mut lean = CgroupSource::new(&CgroupsConfig { skip, ..config(&root) }).expect("source");
    let (_, some) = sweep_once(&mut lean);
    let (all, some) = (names(&all), names(&some));
    let gone: Vec<&String> = all.difference(&some).collect();
    for name in &gone {
        assert!(
            name.contains("pressure")
                || name.contains("disk.")
                || name.contains("throttling")
                || name.ends_with("memory.working_set")
                || name.ends_with("memory.rss")
                || name.ends_with("memory.file"),
            "{name} should not be lost"
        );
    }
    for kept in ["container.cpu.time", "container.memory.usage", "container.pids.count"] {
        assert!(some.contains(kept), "{kept} is kept: {some:?}");
    }
    for dropped in ["container.memory.working_set", "container.disk.io", "container.cpu.pressure.stall_time"]
    {
        assert!(all.contains(dropped) && !some.contains(dropped), "{dropped}: full {all:?}, lean {some:?}");
    }
}

/// `max_groups` bounds what is read, counted and reported in the stats; containers in their
/// runtime's tree come before a rootless one, however many the user makes; two cgroups standing
/// for one container are read once.
#[test]
fn max_groups_caps_the_groups_and_prefers_anchored_ones_over_rootless() {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v1-docker"), tmp.path());
    // A rootless Podman container (twice under other names: one identity) in a user's subtree,
    // in every controller, with the files of a real container.
    let template = tmp.path().join("memory/docker").join(C4);
    for copy in ["user.slice/libpod", "app.slice/libpod", "other.slice/libpod"] {
        for hierarchy in ["memory", "cpu,cpuacct", "blkio", "pids"] {
            let dir = tmp
                .path()
                .join(hierarchy)
                .join(format!("user.slice/user-1000.slice/user@1000.service/{copy}-{C5}.scope"));
            copy_tree(&tmp.path().join(hierarchy).join("docker").join(C4), &dir);
        }
    }
    assert!(template.is_dir());
    let rootless = ResourceId::Container(format!("{C5}@user-1000"));

    let mut source = CgroupSource::new(&config(tmp.path())).expect("source");
    let (_, all) = sweep_once(&mut source);
    let stats = source.last_sweep_stats();
    assert_eq!((stats.containers, stats.duplicates, stats.over_cap), (3, 2, 0), "{stats:?}");
    let r = all.resource(&rootless).expect("the rootless container, once");
    assert_eq!(r.attribute("podometer.container.rootless"), Some(&AttrValue::Bool(true)));
    assert_eq!(r.attribute("user.id"), Some(&AttrValue::from("1000")));

    let capped_before =
        podometer::agent_counters::Telemetry::global().cgroups_over_cap.load(Ordering::Relaxed);
    let mut capped =
        CgroupSource::new(&CgroupsConfig { max_groups: 2, ..config(tmp.path()) }).expect("source");
    let (ctx, s) = sweep_once(&mut capped);
    let stats = capped.last_sweep_stats();
    assert_eq!((stats.containers, stats.over_cap), (2, 1), "{stats:?}");
    assert!(s.resource(&cid(C3)).is_some() && s.resource(&cid(C4)).is_some(), "both Docker containers");
    assert!(s.resource(&rootless).is_none(), "the rootless one is what the cap leaves out");
    assert_eq!(ctx.containers.len(), 2);
    assert!(
        podometer::agent_counters::Telemetry::global().cgroups_over_cap.load(Ordering::Relaxed)
            > capped_before
    );

    let err = CgroupSource::new(&CgroupsConfig { max_groups: 0, ..config(tmp.path()) }).expect_err("zero");
    assert!(err.to_string().contains("max_groups"), "{err}");
}

/// A rootless cgroup (a user's delegated subtree) that names a Docker container's id is not
/// reported beside it: one container id, one resource, the runtime-owned cgroup's. The copy is
/// dropped, counted in the stats and the telemetry counter, and logged (checked through the
/// binary's `collect`), even when the copy was read before the real container appeared.
#[test]
fn a_rootless_cgroup_claiming_a_runtime_containers_id_is_dropped_counted_and_logged() {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v1-docker"), tmp.path());
    let hierarchies = ["memory", "cpu,cpuacct", "blkio", "pids"];
    let copy_of = |id: &str, to: &str| {
        for hierarchy in hierarchies {
            let dir = tmp
                .path()
                .join(hierarchy)
                .join(format!("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{to}.scope"));
            copy_tree(&tmp.path().join(hierarchy).join("docker").join(id), &dir);
        }
    };
    // The user names a scope after C4 (a Docker container's id) with C3's numbers.
    copy_of(C3, C4);
    let claims_c4 = |s: &Sweep| -> Vec<ResourceId> {
        s.resources
            .iter()
            .filter(|r| r.attribute(semconv::CONTAINER_ID) == Some(&AttrValue::from(C4)))
            .map(|r| r.id.clone())
            .collect()
    };
    let dropped =
        || podometer::agent_counters::Telemetry::global().cgroups_duplicate_identity.load(Ordering::Relaxed);

    let before = dropped();
    let mut source = CgroupSource::new(&config(tmp.path())).expect("source");
    let (ctx, s) = sweep_once(&mut source);
    assert_eq!(claims_c4(&s), [cid(C4)], "one container id, one resource");
    let r = s.resource(&cid(C4)).unwrap();
    assert_eq!(r.attribute("podometer.container.rootless"), None);
    assert_eq!(ctx.containers.iter().filter(|c| c.id == C4).count(), 1);
    let stats = source.last_sweep_stats();
    assert_eq!((stats.containers, stats.duplicates), (2, 1), "{stats:?}");
    assert!(dropped() > before, "podometer.discovery.cgroups.dropped not counted");

    // The copy known first: the real container, found later, still wins.
    let late = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v1-docker"), late.path());
    let c4_dirs: Vec<PathBuf> =
        hierarchies.iter().map(|h| late.path().join(h).join("docker").join(C4)).collect();
    for (hierarchy, dir) in hierarchies.iter().zip(&c4_dirs) {
        let copy = late
            .path()
            .join(hierarchy)
            .join(format!("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C4}.scope"));
        copy_tree(dir, &copy);
        std::fs::rename(dir, late.path().join(format!("{C4}.{hierarchy}.aside"))).unwrap();
    }
    let mut source =
        CgroupSource::new(&CgroupsConfig { discovery_interval: Duration::ZERO, ..config(late.path()) })
            .expect("source");
    let (_, first) = sweep_once(&mut source);
    let rootless = ResourceId::Container(format!("{C4}@user-1000"));
    assert_eq!(claims_c4(&first), [rootless], "alone, the rootless container is reported");
    for (hierarchy, dir) in hierarchies.iter().zip(&c4_dirs) {
        std::fs::rename(late.path().join(format!("{C4}.{hierarchy}.aside")), dir).unwrap();
    }
    let (_, second) = sweep_once(&mut source);
    assert_eq!(claims_c4(&second), [cid(C4)], "the runtime's container displaces the known copy");

    // Logged: the binary over the same tree says which cgroup it dropped and which it kept.
    let config_file = tmp.path().join("agent.yaml");
    std::fs::write(
        &config_file,
        format!(
            "sources:\n  cgroups: {{root: {}}}\nexporters:\n  file: {{path: /dev/null}}\n\
             pipelines:\n  p: {{sources: [cgroups], exporters: [file]}}\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podometer"))
        .args(["collect", "-c"])
        .arg(&config_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("claim the same container id"))
        .unwrap_or_else(|| panic!("no log line for the dropped copy:\n{stderr}"));
    assert!(line.contains("WARN") && line.contains(&format!("libpod-{C4}.scope")), "{line}");
    assert!(line.contains(&format!("docker/{C4}")), "{line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(&format!("{C4}@user-1000")), "the copy was exported");
}

/// A controller enabled after the container was found (v2: `io.stat` appears when `io` is
/// written to the parent's `cgroup.subtree_control`; crun's `container/` child appears when the
/// container starts systemd): picked up at the next discovery, not never.
#[test]
fn files_and_the_crun_child_that_appear_later_are_picked_up_at_the_next_discovery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v2-kubelet-systemd-containerd"), tmp.path());
    let uid_ = UID1.replace('-', "_");
    let dir = tmp.path().join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{C1}.scope"
    ));
    let io_stat = std::fs::read(dir.join("io.stat")).expect("fixture io.stat");
    std::fs::remove_file(dir.join("io.stat")).expect("rm io.stat");
    let cfg = CgroupsConfig { discovery_interval: Duration::ZERO, ..config(tmp.path()) };
    let mut source = CgroupSource::new(&cfg).expect("source");
    let (ctx, first) = sweep_once(&mut source);
    let r = first.resource(&cid(C1)).expect("container");
    assert!(r.points_of(CONTAINER.disk_io.name).next().is_none(), "no io.stat yet");
    let procs = |ctx: &SweepContext| ctx.containers.iter().find(|c| c.id == C1).map(|c| c.procs_file.clone());
    assert_eq!(procs(&ctx), Some(dir.join("cgroup.procs")));

    std::fs::write(dir.join("io.stat"), io_stat).expect("io.stat back");
    std::fs::create_dir(dir.join("container")).expect("crun child");
    std::fs::write(dir.join("container/cgroup.procs"), "42\n").expect("procs");
    let (ctx, second) = sweep_once(&mut source);
    let r = second.resource(&cid(C1)).expect("container");
    assert!(r.points_of(CONTAINER.disk_io.name).next().is_some(), "io.stat read now: {r:#?}");
    assert_eq!(procs(&ctx), Some(dir.join("container/cgroup.procs")), "processes looked up in crun's child");
}

fn cpu_pair(sweep: &Sweep, id: &ResourceId) -> Option<(f64, f64)> {
    let r = sweep.resource(id).expect("resource");
    r.points_of(CONTAINER.cpu_time.name).next()?;
    Some((cpu_of(sweep, id, "user"), cpu_of(sweep, id, "system")))
}

/// v1 CPU time comes from the best files a group has: `cpuacct.stat` (USER_HZ ticks), better
/// `cpuacct.usage_user`/`usage_sys`, best those two splitting `cpuacct.usage`. A group that
/// has only a lesser source is tried for a better one at every discovery (runtimes write a new
/// cgroup's files one after the other); nothing else about the group changes.
#[test]
fn v1_cpu_sources_from_cpuacct_stat_up_to_the_usage_split_as_files_appear() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("v1-docker"), tmp.path());
    let dir = tmp.path().join("cpu,cpuacct/docker").join(C3);
    for name in ["cpuacct.usage", "cpuacct.usage_user", "cpuacct.usage_sys"] {
        std::fs::remove_file(dir.join(name)).expect("rm");
    }
    let cfg = CgroupsConfig { discovery_interval: Duration::ZERO, ..config(tmp.path()) };
    let mut source = CgroupSource::new(&cfg).expect("source");
    // cpuacct.stat: `user 4500`, `system 550` at USER_HZ 100.
    let (_, first) = sweep_once(&mut source);
    assert_eq!(cpu_pair(&first, &cid(C3)), Some((45.0, 5.5)));

    let write = |name: &str, v: u64| std::fs::write(dir.join(name), format!("{v}\n")).expect("write");
    write("cpuacct.usage_user", 3_000_000_000);
    write("cpuacct.usage_sys", 1_000_000_000);
    let (_, second) = sweep_once(&mut source);
    assert_eq!(cpu_pair(&second, &cid(C3)), Some((3.0, 1.0)), "the pair, in ns");

    write("cpuacct.usage", 6_000_000_000);
    let (_, third) = sweep_once(&mut source);
    assert_eq!(cpu_pair(&third, &cid(C3)), Some((4.5, 1.5)), "6 s split 3:1");
    // The rest of the container is what the fixture says, before and after.
    for sweep in [&first, &second, &third] {
        assert_eq!(int_of(sweep, &cid(C3), CONTAINER.memory_usage.name), Some(52428800));
        assert_eq!(int_of(sweep, &cid(C3), CONTAINER.pids_count.name), Some(3));
    }
    assert_eq!(cpu_pair(&third, &cid(C4)), Some((0.0007, 0.0003)), "the other container is untouched");

    // No CPU file at all: no CPU points, the other metrics stay.
    for name in ["cpuacct.usage", "cpuacct.usage_user", "cpuacct.usage_sys", "cpuacct.stat"] {
        std::fs::remove_file(tmp.path().join("cpu,cpuacct/docker").join(C4).join(name)).expect("rm");
    }
    let mut fresh = CgroupSource::new(&cfg).expect("source");
    let (_, none) = sweep_once(&mut fresh);
    assert_eq!(cpu_pair(&none, &cid(C4)), None);
    assert_eq!(int_of(&none, &cid(C4), CONTAINER.memory_usage.name), Some(2097152));
}

/// On a hybrid host CPU time comes from the unified hierarchy's core `cpu.stat` (one file
/// instead of three, the same numbers); from cpuacct while the group is missing in `unified/`
/// (the fixture's C3 without its unified directory: `cpuacct.usage` 2.5 s split 4:1), and from
/// `unified/` once the directory appears, at the next discovery. Without cpuacct files the
/// unified file is read all the same.
#[test]
fn hybrid_cpu_time_from_unified_cpu_stat_and_from_cpuacct_while_the_unified_group_is_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture("hybrid"), tmp.path());
    let pod_dir = format!("kubepods/besteffort/pod{UID2}");
    let unified = tmp.path().join("unified").join(&pod_dir).join(C3);
    let saved = tmp.path().join("saved-unified");
    copy_tree(&unified, &saved);
    std::fs::remove_dir_all(&unified).expect("rm unified dir");
    let cfg = CgroupsConfig { discovery_interval: Duration::ZERO, ..config(tmp.path()) };
    let mut source = CgroupSource::new(&cfg).expect("source");
    let (_, first) = sweep_once(&mut source);
    let f = &CONTAINER;
    assert_points(
        &first,
        cid(C3),
        Expect::default()
            .cpu(f, 2.0, 0.5)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 25165824, 25165824 - 2097152, 20971520, 4194304)
            .int(f.memory_oom_kills.name, 0)
            .disk(f, "8:0", 65536, 131072, 4, 8)
            .int(f.pids_count.name, 4),
    );
    copy_tree(&saved, &unified);
    let (_, second) = sweep_once(&mut source);
    assert_points(
        &second,
        cid(C3),
        Expect::default()
            .cpu(f, 2.000077, 0.500011)
            .throttling(f, 0, 0, 0.0)
            .memory(f, 25165824, 25165824 - 2097152, 20971520, 4194304)
            .int(f.memory_oom_kills.name, 0)
            .disk(f, "8:0", 65536, 131072, 4, 8)
            .int(f.pids_count.name, 4)
            .psi(f.cpu_pressure.name, 0.5, Some(0.0))
            .psi(f.memory_pressure.name, 0.03, Some(0.015))
            .psi(f.io_pressure.name, 0.07, Some(0.05)),
    );

    // No cpuacct directory at all: the unified file still gives the time.
    std::fs::remove_dir_all(tmp.path().join("cpuacct").join(&pod_dir).join(C3)).expect("rm cpuacct dir");
    let mut fresh = CgroupSource::new(&cfg).expect("source");
    let (_, third) = sweep_once(&mut fresh);
    assert_eq!(cpu_pair(&third, &cid(C3)), Some((2.000077, 0.500011)));
}
