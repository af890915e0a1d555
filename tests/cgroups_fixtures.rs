//! The cgroup source on fixture trees of every layout (fixtures/cgroup/, written by
//! fixtures/cgroup/generate.py from the kernel's documented formats). Every point of every
//! resource is compared, so a wrong unit, a swapped key, a metric that should be absent, or a
//! read of the root cgroup (whose files hold garbage) fails.
#[path = "support/cgroup_fixtures.rs"]
mod cgroup_fixtures;

use std::sync::{Arc, Mutex};

use podometer::model::{PodRef, Runtime};
use podometer::semconv::{CONTAINER, POD};
use podometer::sources::cgroups::{CgroupMode, CgroupSource};

use cgroup_fixtures::*;

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
