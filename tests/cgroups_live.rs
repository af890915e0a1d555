//! The cgroup source on this machine's real cgroupfs (hybrid: v1 controllers plus `unified/`),
//! with cgroups the tests create and with real Podman pods. Root only; skipped elsewhere, fails
//! under CI=true when a prerequisite is missing.
mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use podometer::agent_counters::Telemetry;
use podometer::model::{PodRef, ResourceId, Runtime, Sweep, SweepContext, Value};
use podometer::semconv::{CONTAINER, POD};
use podometer::sources::cgroups::{CgroupMode, CgroupSource, CgroupsConfig, Layouts};
use podometer::sources::Source;
use support::cgroupfs::TestCgroup;
use support::podman::{podman, podman_available, podman_stats, PodmanPod};

const ROOT: &str = "/sys/fs/cgroup";

/// The clock tick the kernel samples `cpuacct.usage_user`/`usage_sys` on (CONFIG_HZ=250 here; a
/// tick is 4 ms). Those two counters are tick-sampled while `cpuacct.usage` (and podman's
/// CPUNano, read from it) is the scheduler's exact runtime, so their sum can be a few ticks off
/// either way: observed here, 12 ms over 2 s of CPU. The CPU bound is that slack: 50 ms + 2 %.
fn cpu_slack(seconds: f64) -> f64 {
    0.05 + 0.02 * seconds
}

/// v1 `memory.usage_in_bytes` is the page counter including per-CPU charge batches of up to 64
/// pages (256 KiB) per CPU that a task may hold uncharged or precharged; with 2 CPUs the number
/// can move by 512 KiB without the workload changing.
const MEMORY_SLACK: f64 = 512.0 * 1024.0;

fn random_hex64() -> String {
    format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..))
}

fn random_uid() -> String {
    let h = format!("{:032x}", fastrand::u128(..));
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A unique kubelet-like tree per test: `podometer-<unique>/kubepods/burstable/pod<uid>`, and
/// its kubelet root `podometer-<unique>/kubepods` for [`config`]. The unique top directory keeps
/// parallel tests (and other worktrees' tests) from sharing parents.
fn pod_path(uid: &str) -> (String, String) {
    let kubelet = format!("{}/kubepods", support::unique("podometer-cgtest"));
    let pod = format!("{kubelet}/burstable/pod{uid}");
    (kubelet, pod)
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn sweep(source: &mut CgroupSource) -> (SweepContext, Sweep) {
    let mut ctx = SweepContext::new(SystemTime::now());
    let mut sweep = Sweep::new(SystemTime::now());
    source.collect(&mut ctx, &mut sweep).expect("collect");
    (ctx, sweep)
}

fn cpu_seconds(sweep: &Sweep, id: &ResourceId, metric: &str) -> f64 {
    let r = sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?}"));
    let points: Vec<_> = r.points_of(metric).collect();
    assert_eq!(points.len(), 2, "user and system points of {metric}");
    points.iter().map(|p| p.value.as_f64()).sum()
}

fn int_value(sweep: &Sweep, id: &ResourceId, metric: &str) -> i64 {
    let r = sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?}"));
    match r.points_of(metric).next().map(|p| p.value) {
        Some(Value::Int(v)) => v,
        other => panic!("{metric} of {id:?}: {other:?}"),
    }
}

/// The host's cgroups, with the test's own kubelet root (if any) added to the default layouts.
/// With `kubelet_root`, the source reads this test's tree only: other tests and sessions create
/// and remove containers on this host meanwhile, and a test that counts vanished groups or errors
/// must count its own (one such count failed while this binary's spoof test removed its rootless
/// cgroups).
fn config(discovery: Duration, kubelet_root: Option<&str>) -> CgroupsConfig {
    let layouts = match kubelet_root {
        Some(root) => Layouts {
            kubelet: vec![root.to_owned()],
            docker: Vec::new(),
            podman: Vec::new(),
            containerd: Vec::new(),
            // Delegated subtrees are found wherever they are, other tests' too: only the spoof
            // test, which makes one, turns this on.
            rootless: false,
        },
        None => Layouts::default(),
    };
    CgroupsConfig { root: ROOT.into(), discovery_interval: discovery, layouts, ..CgroupsConfig::default() }
}

/// Waits until the cgroup's processes have run for a while, so the counters are well above noise.
fn wait_for_cpu(cg: &TestCgroup, at_least_ns: u64) {
    let usage = cg.dir("cpuacct").join("cpuacct.usage");
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_u64(&usage) < at_least_ns {
        assert!(Instant::now() < deadline, "the burner never used {at_least_ns} ns of CPU");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A shell script that waits until it is in the test cgroup (spawn moves it right after start),
/// then burns CPU in user space and touches 16 MiB of memory in a loop (`dd` reads zeros into a
/// 16 MiB buffer: system time and resident memory).
fn burner(id: &str) -> String {
    once_inside(id, "dd if=/dev/zero of=/dev/null bs=16M count=100000000 2>/dev/null & while :; do :; done")
}

/// `script`, started only once the shell is in the cgroup named by `id` (`spawn` moves it just
/// after it starts; anything forked before that would stay outside, and outlive the test).
fn once_inside(id: &str, script: &str) -> String {
    format!("until grep -q '^0::.*{id}$' /proc/self/cgroup; do sleep 0.01; done; {script}")
}

#[test]
fn cpu_and_memory_lie_between_the_kernels_counters_read_before_and_after() {
    if !support::live_cgroups_available() {
        return;
    }
    let uid = random_uid();
    let id = random_hex64();
    let (kubelet, pod) = pod_path(&uid);
    let pod_cg = TestCgroup::create(Path::new(ROOT), &pod);
    let mut cg = TestCgroup::create(Path::new(ROOT), &format!("{pod}/{id}"));
    let pid = cg.spawn(&burner(&id));
    wait_for_cpu(&cg, 500_000_000);

    let mut source = CgroupSource::new(&config(Duration::from_secs(10), Some(&kubelet))).expect("source");
    assert_eq!(source.mode(), CgroupMode::Hybrid);
    let usage = cg.dir("cpuacct").join("cpuacct.usage");
    let memory = cg.dir("memory").join("memory.usage_in_bytes");
    let cpu_before = read_u64(&usage) as f64 / 1e9;
    let mem_before = read_u64(&memory) as f64;
    let (ctx, s) = sweep(&mut source);
    let cpu_after = read_u64(&usage) as f64 / 1e9;
    let mem_after = read_u64(&memory) as f64;

    let cid = ResourceId::Container(id.clone());
    let cpu = cpu_seconds(&s, &cid, CONTAINER.cpu_time.name);
    let slack = cpu_slack(cpu_after);
    assert!(
        cpu >= cpu_before - slack && cpu <= cpu_after + slack,
        "reported {cpu} s, cpuacct.usage {cpu_before}..{cpu_after} s (slack {slack})"
    );
    let mem = int_value(&s, &cid, CONTAINER.memory_usage.name) as f64;
    eprintln!(
        "live: cpu {cpu:.6} s within cpuacct.usage {cpu_before:.6}..{cpu_after:.6} s; \
         memory {mem} B within {mem_before}..{mem_after} B"
    );
    let (lo, hi) = (mem_before.min(mem_after), mem_before.max(mem_after));
    assert!(
        mem >= lo - MEMORY_SLACK && mem <= hi + MEMORY_SLACK,
        "reported {mem} B, memory.usage_in_bytes {mem_before}..{mem_after} B"
    );
    // dd's 16 MiB buffer is resident: the reading is of this workload, not of an empty cgroup.
    assert!(mem >= 16.0 * 1024.0 * 1024.0, "memory usage {mem} B below dd's buffer");

    let r = s.resource(&cid).expect("container resource");
    assert_eq!(r.attribute("container.runtime.name"), Some(&"containerd".into()));
    assert_eq!(r.attribute("k8s.pod.uid"), Some(&uid.as_str().into()));
    assert_eq!(r.attribute("k8s.pod.qos_class"), Some(&"burstable".into()));
    // Hybrid: the cgroup exists in unified/, so PSI is read from there.
    assert_eq!(r.points_of(CONTAINER.cpu_pressure.name).count(), 2, "cpu pressure some and full");

    let info = ctx.containers.iter().find(|c| c.id == id).expect("container published");
    assert_eq!(info.runtime, Runtime::Containerd);
    assert_eq!(info.pod, Some(PodRef::Kubernetes { uid: uid.clone(), qos: "burstable".into() }));
    let procs = std::fs::read_to_string(&info.procs_file).expect("procs file");
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{} lists {pid}: {procs}",
        info.procs_file.display()
    );

    // The pod cgroup holds the container: its CPU is at least the container's.
    let pod_cpu = cpu_seconds(&s, &ResourceId::Pod(uid.clone()), POD.cpu_time.name);
    assert!(pod_cpu + cpu_slack(pod_cpu) >= cpu, "pod {pod_cpu} s < container {cpu} s");
    drop(cg);
    drop(pod_cg);
}

#[test]
fn a_removed_container_vanishes_quietly_and_a_new_one_appears_after_the_discovery_interval() {
    if !support::live_cgroups_available() {
        return;
    }
    let uid = random_uid();
    let (kubelet, pod) = pod_path(&uid);
    // Declared first, dropped last: the pod directory outlives its containers.
    let _pod_cg = TestCgroup::create(Path::new(ROOT), &pod);
    let (a, b) = (random_hex64(), random_hex64());
    let mut cg_a = Some(TestCgroup::create(Path::new(ROOT), &format!("{pod}/{a}")));
    if let Some(cg) = cg_a.as_mut() {
        cg.spawn(&once_inside(&a, "exec sleep 1000"));
    }
    let discovery = Duration::from_secs(2);
    let mut source = CgroupSource::new(&config(discovery, Some(&kubelet))).expect("source");
    let started = Instant::now();
    let (_, s1) = sweep(&mut source);
    assert!(s1.resource(&ResourceId::Container(a.clone())).is_some(), "container a found");

    let vanished_before = Telemetry::global().containers_vanished.load(Ordering::Relaxed);
    let _cg_b = TestCgroup::create(Path::new(ROOT), &format!("{pod}/{b}"));
    drop(cg_a.take()); // kills the process and removes a's cgroup in every hierarchy
    let (ctx, s2) = sweep(&mut source);
    assert!(started.elapsed() < discovery, "the second sweep must come before the discovery interval");
    let stats = source.last_sweep_stats();
    assert!(!stats.discovered);
    assert_eq!(stats.vanished, 1, "{stats:?}");
    assert_eq!(stats.errors, 0, "vanishing is not an error: {stats:?}");
    assert!(Telemetry::global().containers_vanished.load(Ordering::Relaxed) > vanished_before);
    assert!(s2.resource(&ResourceId::Container(a.clone())).is_none());
    assert!(ctx.containers.iter().all(|c| c.id != a));
    assert!(s2.resource(&ResourceId::Container(b.clone())).is_none(), "b not walked for yet");
    assert!(s2.resource(&ResourceId::Pod(uid.clone())).is_some(), "the pod is still read");

    std::thread::sleep(discovery.saturating_sub(started.elapsed()) + Duration::from_millis(50));
    let (ctx, s3) = sweep(&mut source);
    assert!(source.last_sweep_stats().discovered);
    assert!(s3.resource(&ResourceId::Container(b.clone())).is_some(), "b found after the discovery interval");
    assert!(ctx.containers.iter().any(|c| c.id == b));
    assert!(s3.resource(&ResourceId::Container(a)).is_none());
}

#[test]
fn podman_pod_containers_are_found_and_agree_with_podman_stats() {
    if !podman_available() {
        return;
    }
    let pod = PodmanPod::start("podometer-cg", &["while :; do :; done", "sleep 1000000"]);
    let listed = support::run(podman().args([
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("pod={}", pod.pod_id),
        "--format",
        "{{.ID}}",
    ]));
    let mut expected: Vec<String> =
        listed.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
    expected.sort();
    let mut all = pod.all_ids();
    all.sort();
    assert_eq!(expected, all, "podman ps lists infra and both apps");

    let burner = ResourceId::Container(pod.app_ids[0].clone());
    let mut source = CgroupSource::new(&config(Duration::from_secs(10), None)).expect("source");
    // Let the burner accumulate CPU, so the comparison is of a number well above the slack.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, s) = sweep(&mut source);
        if s.resource(&burner).is_some() && cpu_seconds(&s, &burner, CONTAINER.cpu_time.name) > 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "burner never reached 1 s of CPU");
        std::thread::sleep(Duration::from_millis(200));
    }

    // podman stats is bracketed by two sweeps; its CPU must lie between them and its memory
    // within the range the two sweeps saw.
    let (ctx, s1) = sweep(&mut source);
    let stats = podman_stats(&all);
    let (_, s2) = sweep(&mut source);

    let ours: Vec<_> = ctx.containers.iter().filter(|c| all.contains(&c.id)).collect();
    assert_eq!(ours.len(), 3, "infra and both apps found: {ours:?}");
    for c in &ours {
        assert_eq!(c.runtime, Runtime::Podman);
        assert_eq!(c.pod, Some(PodRef::Podman { id: pod.pod_id.clone() }));
        let r = s1.resource(&c.resource_id()).expect("resource");
        assert_eq!(r.attribute("container.runtime.name"), Some(&"podman".into()));
        assert_eq!(r.attribute("podman.pod.id"), Some(&pod.pod_id.as_str().into()));
    }
    assert_eq!(stats.len(), 3, "{stats:?}");
    for st in &stats {
        let id = ResourceId::Container(st.id.clone());
        let (c1, c2) =
            (cpu_seconds(&s1, &id, CONTAINER.cpu_time.name), cpu_seconds(&s2, &id, CONTAINER.cpu_time.name));
        let slack = cpu_slack(c2);
        assert!(
            st.cpu_seconds >= c1 - slack && st.cpu_seconds <= c2 + slack,
            "{}: podman {} s, sweeps {c1}..{c2} s (slack {slack})",
            st.id,
            st.cpu_seconds
        );
        let (m1, m2) = (
            int_value(&s1, &id, CONTAINER.memory_usage.name) as f64,
            int_value(&s2, &id, CONTAINER.memory_usage.name) as f64,
        );
        let mem = st.mem_usage_bytes as f64;
        eprintln!(
            "podman {}: cpu {} s within sweeps {c1:.6}..{c2:.6} s; memory {mem} B vs sweeps {m1}..{m2} B",
            &st.id[..12],
            st.cpu_seconds
        );
        assert!(
            mem >= m1.min(m2) - MEMORY_SLACK && mem <= m1.max(m2) + MEMORY_SLACK,
            "{}: podman {mem} B, sweeps {m1}..{m2} B",
            st.id
        );
    }
    let burned = cpu_seconds(&s2, &burner, CONTAINER.cpu_time.name);
    let idle = cpu_seconds(&s2, &ResourceId::Container(pod.app_ids[1].clone()), CONTAINER.cpu_time.name);
    assert!(burned > 1.0 && idle < 0.5, "burner {burned} s, sleeper {idle} s");
}

/// A user with a delegated subtree (`user@<n>.service`, which rootless Podman uses) copies a real
/// pod's kubelet path and a real container's id into it. Only the anchored cgroup may speak for
/// the victim: one container id, one resource. The rootless copies are dropped and counted,
/// while a rootless container with an id of its own is still reported as the user's.
#[test]
fn a_spoof_in_a_delegated_subtree_never_takes_the_victims_identity() {
    if !support::live_cgroups_available() {
        return;
    }
    let (victim_uid, victim_id) = (random_uid(), random_hex64());
    let (kubelet, pod) = pod_path(&victim_uid);
    let _pod_cg = TestCgroup::create(Path::new(ROOT), &pod);
    let real = TestCgroup::create(Path::new(ROOT), &format!("{pod}/{victim_id}"));

    // A uid no real user has, unique per test process, so parallel runs do not share it.
    let n = 3_000_000_000u32 + std::process::id() % 1_000_000;
    let user = format!("user.slice/user-{n}.slice/user@{n}.service");
    let _user_cg = TestCgroup::create(Path::new(ROOT), &user);
    // The kubelet's layout copied into the user's subtree, with processes in it so that its
    // numbers differ from the real (empty) container's.
    let mut spoof = TestCgroup::create(
        Path::new(ROOT),
        &format!("{user}/kubepods/burstable/pod{victim_uid}/{victim_id}"),
    );
    spoof.spawn(&once_inside(&victim_id, "exec sleep 1000"));
    spoof.spawn(&once_inside(&victim_id, "exec sleep 1000"));
    // A rootless Podman scope with the victim's id, twice, and one with an id of its own.
    let _rootless_a =
        TestCgroup::create(Path::new(ROOT), &format!("{user}/user.slice/libpod-{victim_id}.scope"));
    let _rootless_b =
        TestCgroup::create(Path::new(ROOT), &format!("{user}/app.slice/libpod-{victim_id}.scope"));
    let own_id = random_hex64();
    let _rootless_own =
        TestCgroup::create(Path::new(ROOT), &format!("{user}/user.slice/libpod-{own_id}.scope"));
    // Same shape outside any configured root, by root itself: not a container either.
    let top = kubelet.trim_end_matches("/kubepods");
    let _stray =
        TestCgroup::create(Path::new(ROOT), &format!("{top}/elsewhere/kubepods/pod{victim_uid}/{victim_id}"));
    let spoof_pids = spoof.dir("pids").join("pids.current");
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_u64(&spoof_pids) < 2 {
        assert!(Instant::now() < deadline, "the spoof's processes never joined it");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut spoof_config = config(Duration::from_secs(10), Some(&kubelet));
    spoof_config.layouts.rootless = true;
    let mut source = CgroupSource::new(&spoof_config).expect("source");
    let (ctx, s) = sweep(&mut source);

    // The victim container: once in the inventory, from the anchored cgroup, with its numbers.
    let victims: Vec<_> = ctx.containers.iter().filter(|c| c.id == victim_id).collect();
    assert_eq!(victims.len(), 1, "{victims:?}");
    assert_eq!(victims[0].procs_file, real.dir("memory").join("cgroup.procs"));
    let cid = ResourceId::Container(victim_id.clone());
    assert_eq!(int_value(&s, &cid, CONTAINER.pids_count.name), 0, "the real container has no process");
    let r = s.resource(&cid).expect("victim resource");
    assert_eq!(r.attribute("k8s.pod.uid"), Some(&victim_uid.as_str().into()));
    assert_eq!(r.attribute("podometer.container.rootless"), None);
    // Every resource naming the victim's pod is the victim's container or pod, nothing else.
    let mut claiming: Vec<_> = s
        .resources
        .iter()
        .filter(|r| r.attribute("k8s.pod.uid") == Some(&victim_uid.as_str().into()))
        .map(|r| r.id.clone())
        .collect();
    claiming.sort();
    let mut expected = vec![ResourceId::Pod(victim_uid.clone()), cid.clone()];
    expected.sort();
    assert_eq!(claiming, expected);

    // One container id, one resource: nothing else carries the victim's container.id.
    let with_victims_id: Vec<_> = s
        .resources
        .iter()
        .filter(|r| r.attribute("container.id") == Some(&victim_id.as_str().into()))
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(
        with_victims_id,
        std::slice::from_ref(&cid),
        "the rootless copies are reported beside the victim"
    );
    let stats = source.last_sweep_stats();
    assert!(stats.duplicates >= 2, "both rootless copies are dropped and counted: {stats:?}");

    // A rootless container with an id of its own: the user's, keyed by owner and id.
    let rootless_id = ResourceId::Container(format!("{own_id}@user-{n}"));
    let rootless = s.resource(&rootless_id).unwrap_or_else(|| panic!("rootless container: {s:#?}"));
    assert_eq!(rootless.attribute("podometer.container.rootless"), Some(&true.into()));
    assert_eq!(rootless.attribute("user.id"), Some(&n.to_string().as_str().into()));
    assert_eq!(rootless.attribute("container.id"), Some(&own_id.as_str().into()));
    assert_eq!(rootless.attribute("k8s.pod.uid"), None);
    eprintln!("spoof: victim {victim_id} reported once from the anchored cgroup; {stats:?}");
}

/// Removes a directory this test made by hand, after whatever was created inside it.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runtimes create a container's controller directories one after the other (and `unified/`,
/// and crun its `container/` child later still): a group found with only some of them gets the
/// others' metrics at the next discovery, not never.
#[test]
fn controller_directories_created_after_discovery_are_picked_up_at_the_next_one() {
    if !support::live_cgroups_available() {
        return;
    }
    let (uid, id) = (random_uid(), random_hex64());
    let (kubelet, pod) = pod_path(&uid);
    let _pod_cg = TestCgroup::create(Path::new(ROOT), &pod);
    let rel = format!("{pod}/{id}");
    // Only the memory controller's directory exists at first.
    let memory_dir = Path::new(ROOT).join("memory").join(&rel);
    std::fs::create_dir(&memory_dir).expect("mkdir memory");
    let _memory_guard = RemoveDir(memory_dir);

    let mut source = CgroupSource::new(&config(Duration::ZERO, Some(&kubelet))).expect("source");
    let cid = ResourceId::Container(id.clone());
    let (_, first) = sweep(&mut source);
    let r = first.resource(&cid).expect("found through its memory directory");
    assert!(r.points_of(CONTAINER.memory_usage.name).next().is_some(), "memory read: {r:#?}");
    assert!(r.points_of(CONTAINER.cpu_time.name).next().is_none(), "no cpuacct directory yet");
    assert!(r.points_of(CONTAINER.pids_count.name).next().is_none(), "no pids directory yet");

    // The other controllers (and unified/) appear now, with a process in them.
    let mut cg = TestCgroup::create(Path::new(ROOT), &rel);
    let pid = cg.spawn(&once_inside(&id, "exec sleep 1000"));
    // Until the shell has exec'd `sleep`, the `grep` and `sleep 0.01` children of its wait loop
    // come and go in the cgroup (pids.current flickers between 1 and 2).
    let comm = format!("/proc/{pid}/comm");
    support::wait_until(
        "the shell to exec sleep",
        Duration::from_secs(10),
        || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep"),
        || format!("{comm}: {:?}", std::fs::read_to_string(&comm)),
    );
    let (_, second) = sweep(&mut source);
    let r = second.resource(&cid).expect("still there");
    assert_eq!(r.points_of(CONTAINER.cpu_time.name).count(), 2, "cpu time now read: {r:#?}");
    assert_eq!(int_value(&second, &cid, CONTAINER.pids_count.name), 1, "pids now read");
    let psi = std::fs::read_to_string(cg.dir("unified").join("cpu.pressure")).is_ok();
    assert_eq!(
        r.points_of(CONTAINER.cpu_pressure.name).next().is_some(),
        psi,
        "cpu pressure read exactly when unified/<path>/cpu.pressure is readable"
    );
    eprintln!(
        "late directories: cpu, pids{} picked up at the next discovery",
        if psi { ", pressure" } else { "" }
    );
}
