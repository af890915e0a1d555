//! The cgroup source over fixture trees that a test changes while the source runs: kept-open
//! files, limits and discovery on their intervals, files and groups that appear later, the CPU
//! sources of v1 and hybrid, caps and claimed ids; and its configuration.
#[path = "support/cgroup_fixtures.rs"]
mod cgroup_fixtures;

use std::path::PathBuf;
use std::time::Duration;

use podometer::model::{AttrValue, ResourceId, Sweep, SweepContext};
use podometer::semconv::{self, CONTAINER};
use podometer::sources::cgroups::{CgroupSource, CgroupsConfig, SkipFiles};

use cgroup_fixtures::*;

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
