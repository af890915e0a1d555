//! Steady-state cost of the cgroup source per container, next to the naive way (open, read,
//! close every file each sweep).
//!
//! As root it builds N containers' cgroups on the real cgroupfs, in a kubelet-like tree
//! (`podometer-bench-<pid>/kubepods/burstable/pod<uid>/<id>`); without root it copies a fixture
//! container N times onto tmpfs (/dev/shm), which is cheaper to read than cgroupfs and so only
//! a lower bound. Besides criterion's wall-clock numbers it prints the sweep thread's CPU time
//! per container (getrusage), the figure the budget (≤ 40 µs) is about.
//!
//! `cargo bench --bench cgroups` (about 30 s).
//!
//! `--callgrind K` (on the bench binary) sweeps K times after the first sweep and nothing else,
//! with only the bench's own tree in the layouts, for counting user-space instructions per
//! cgroup-sweep under callgrind, which is stable on a noisy shared machine where CPU times are
//! not: `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*steady_sweeps*'
//! target/release/deps/cgroups-* --callgrind 50`, then the total divided by K × the cgroups it
//! prints.

#[path = "../tests/support/cgroupfs.rs"]
#[allow(dead_code)]
mod cgroupfs;
#[path = "support/sweep_files.rs"]
#[allow(dead_code)] // HYBRID_RARE_FILES: the per-file table of bench_node only
mod sweep_files;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, Criterion, Throughput};
use podometer::model::{Sweep, SweepContext};
use podometer::sources::cgroups::{CgroupSource, CgroupsConfig, Layouts};
use podometer::sources::Source;
use sweep_files::{HYBRID_FILES, V2_FILES};

const N: usize = 100;

enum Bed {
    /// Fields drop in order: the containers' cgroups before their pod's.
    Live {
        _containers: Vec<cgroupfs::TestCgroup>,
        _pod: cgroupfs::TestCgroup,
        files: Vec<PathBuf>,
    },
    Tmpfs {
        _dir: tempfile::TempDir,
        root: PathBuf,
        files: Vec<PathBuf>,
    },
}

impl Bed {
    fn root(&self) -> &Path {
        match self {
            Bed::Live { .. } => Path::new("/sys/fs/cgroup"),
            Bed::Tmpfs { root, .. } => root,
        }
    }
    fn files(&self) -> &[PathBuf] {
        match self {
            Bed::Live { files, .. } | Bed::Tmpfs { files, .. } => files,
        }
    }
}

fn hex64(i: usize) -> String {
    format!("{:016x}{:048x}", std::process::id(), i + 1)
}

fn build() -> Bed {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if root_user && Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        let pod = format!(
            "podometer-bench-{}/kubepods/burstable/pod0f3e5a8c-1b2d-4c6e-8f90-{:012x}",
            std::process::id(),
            1
        );
        let pod_cgroup = cgroupfs::TestCgroup::create(Path::new("/sys/fs/cgroup"), &pod);
        let mut cgroups = Vec::new();
        let mut files = Vec::new();
        for i in 0..N {
            let cg =
                cgroupfs::TestCgroup::create(Path::new("/sys/fs/cgroup"), &format!("{pod}/{}", hex64(i)));
            for (h, f) in HYBRID_FILES {
                files.push(cg.dir(h).join(f));
            }
            cgroups.push(cg);
        }
        return Bed::Live { _containers: cgroups, _pod: pod_cgroup, files };
    }
    eprintln!("not root: benchmarking a fixture copy on tmpfs, a lower bound of the real cost");
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cgroup/v2-kubelet-systemd-containerd");
    let root = dir.path().to_owned();
    std::fs::copy(fixture.join("cgroup.controllers"), root.join("cgroup.controllers")).expect("copy");
    let pod = root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3e5a8c_1b2d_4c6e_8f90_a1b2c3d4e5f6.slice");
    let template = std::fs::read_dir(fixture.join(pod.strip_prefix(&root).expect("under root")))
        .expect("fixture pod")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("cri-containerd-"))
        .expect("fixture container")
        .path();
    let mut files = Vec::new();
    for i in 0..N {
        let c = pod.join(format!("cri-containerd-{}.scope", hex64(i)));
        std::fs::create_dir_all(&c).expect("mkdir");
        for f in V2_FILES.iter().chain(["cgroup.procs", "memory.max", "pids.max"].iter()) {
            std::fs::copy(template.join(f), c.join(f)).expect("copy");
        }
        files.extend(V2_FILES.iter().map(|f| c.join(f)));
    }
    Bed::Tmpfs { _dir: dir, root, files }
}

/// User and system CPU time of this thread.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: rusage is plain data; getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Runs `f` `rounds` times; CPU µs (user, system) per unit of `per`.
fn cpu_per(rounds: usize, per: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (u0, s0) = thread_cpu();
    for _ in 0..rounds {
        f();
    }
    let (u1, s1) = thread_cpu();
    let scale = 1e6 / (rounds * per) as f64;
    ((u1 - u0).as_secs_f64() * scale, (s1 - s0).as_secs_f64() * scale)
}

/// The kernel's floor: pread of the same files, kept open, no parsing.
fn floor(files: &[std::fs::File], buf: &mut [u8]) -> usize {
    use std::os::unix::fs::FileExt;
    files.iter().map(|f| f.read_at(buf, 0).unwrap_or(0)).sum()
}

fn sweep(source: &mut CgroupSource) -> usize {
    let mut ctx = SweepContext::new(SystemTime::now());
    let mut sweep = Sweep::new(SystemTime::now());
    source.collect(&mut ctx, &mut sweep).expect("collect");
    sweep.resources.len()
}

fn naive(files: &[PathBuf]) -> usize {
    files.iter().map(|f| std::fs::read_to_string(f).map(|s| s.len()).unwrap_or(0)).sum()
}

fn bench(c: &mut Criterion) {
    let bed = build();
    let mut layouts = Layouts::default();
    // The live bed's kubelet tree sits under its own top directory.
    layouts.kubelet.push(format!("podometer-bench-{}/kubepods", std::process::id()));
    let mut source = steady_source(&bed, layouts);
    // The first sweep walks the tree and opens the files; steady state is what follows.
    sweep(&mut source);
    let groups = source.last_sweep_stats().containers + source.last_sweep_stats().pods;
    let naive_containers =
        bed.files().len() / if matches!(bed, Bed::Live { .. }) { HYBRID_FILES.len() } else { V2_FILES.len() };

    // CPU time of the sweep thread, per cgroup read (the source also reads every other
    // container on the host, so divide by what it read, not by N).
    let rounds = 200;
    let (su, ss) = cpu_per(rounds, groups, || {
        sweep(&mut source);
    });
    let (nu, ns) = cpu_per(rounds, naive_containers, || {
        naive(bed.files());
    });
    let open: Vec<std::fs::File> = bed.files().iter().filter_map(|f| std::fs::File::open(f).ok()).collect();
    let mut buf = vec![0u8; 16384];
    let (fu, fs) = cpu_per(rounds, naive_containers, || {
        floor(&open, &mut buf);
    });
    eprintln!(
        "CPU per container per sweep (user + system): source {su:.1} + {ss:.1} = {:.1} µs ({groups} cgroups \
         per sweep); naive open+read+close {nu:.1} + {ns:.1} = {:.1} µs; pread floor {fu:.1} + {fs:.1} = {:.1} µs \
         ({naive_containers} containers, {} files)",
        su + ss,
        nu + ns,
        fu + fs,
        bed.files().len()
    );

    let mut g = c.benchmark_group("cgroups");
    g.sample_size(20).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(groups as u64));
    g.bench_function("steady_sweep", |b| b.iter(|| sweep(&mut source)));
    g.throughput(Throughput::Elements(naive_containers as u64));
    g.bench_function("naive_open_read_close", |b| b.iter(|| naive(bed.files())));
    g.finish();
}

/// A source over `bed` whose discoveries and limit reads fall outside any measurement (both
/// once an hour): what is measured is the steady-state sweep.
fn steady_source(bed: &Bed, layouts: Layouts) -> CgroupSource {
    let config = CgroupsConfig {
        root: bed.root().to_owned(),
        discovery_interval: Duration::from_secs(3600),
        limits_interval: Duration::from_secs(3600),
        layouts,
        ..CgroupsConfig::default()
    };
    CgroupSource::new(&config).expect("source")
}

/// The K steady-state sweeps counted under callgrind (`--toggle-collect` names this function).
#[inline(never)]
fn steady_sweeps(source: &mut CgroupSource, k: usize) -> usize {
    (0..k).map(|_| sweep(source)).sum()
}

/// `--callgrind K`: the bench's tree alone (no other runtime layout, so other processes'
/// containers on the host are not read), one sweep to discover and open, then K sweeps.
fn callgrind(k: usize) {
    let bed = build();
    let bench_root = match bed {
        Bed::Live { .. } => format!("podometer-bench-{}/kubepods", std::process::id()),
        Bed::Tmpfs { .. } => "kubepods.slice".to_owned(),
    };
    let layouts = Layouts {
        kubelet: vec![bench_root],
        docker: Vec::new(),
        podman: Vec::new(),
        containerd: Vec::new(),
        rootless: false,
    };
    let mut source = steady_source(&bed, layouts);
    sweep(&mut source);
    let stats = source.last_sweep_stats();
    let resources = steady_sweeps(&mut source, k);
    let after = source.last_sweep_stats();
    assert_eq!(
        (after.containers, after.pods, after.errors, after.vanished),
        (stats.containers, stats.pods, 0, 0),
        "the steady sweeps read what the first found, without errors"
    );
    println!(
        "{k} steady sweeps of {} cgroups ({} containers, {} pods), {resources} resources in all",
        stats.containers + stats.pods,
        stats.containers,
        stats.pods
    );
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--callgrind") {
        callgrind(args.get(i + 1).and_then(|k| k.parse().ok()).expect("--callgrind K"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
