//! What the processes view (sidecar) pays per process to parse `/proc/<pid>/stat` and
//! `/proc/<pid>/status`: the `procfs` crate's `Stat` and `Status` parsers beside podometer's
//! scans (`stat`: the hand-written scan `procfs` replaced, kept here as the baseline; `status`:
//! the `VmRSS:` scan `src/sources/processes.rs` keeps, because `procfs`'s `Status` costs more
//! than reading the files).
//! The texts are `fixtures/proc/{stat,status}`, a shell's files on kernel 6.18; beside them,
//! what reading one process's three files costs.
use std::hint::black_box;
use std::io::Cursor;

use criterion::{criterion_group, Criterion};
use procfs::{FromBufRead, FromRead};

fn fixture(file: &str) -> String {
    let path = format!("{}/fixtures/proc/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The replaced scan of `stat`: utime, stime, cutime, cstime.
fn hand_written_stat(text: &str) -> Option<[u64; 4]> {
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok().map(|v| v.max(0) as u64);
    Some([field(14)?, field(15)?, field(16)?, field(17)?])
}

fn parsers(c: &mut Criterion) {
    let (stat, status) = (fixture("stat"), fixture("status"));
    let mut g = c.benchmark_group("processes_parse");
    g.bench_function("stat/hand-written", |b| b.iter(|| hand_written_stat(black_box(&stat)).expect("parse")));
    g.bench_function("stat/procfs", |b| {
        b.iter(|| procfs::process::Stat::from_read(black_box(stat.as_bytes())).expect("parse"))
    });
    g.bench_function("status/podometer", |b| {
        b.iter(|| podometer::sources::processes::parse_status_rss(black_box(&status)).expect("parse"))
    });
    g.bench_function("status/procfs", |b| {
        b.iter(|| {
            procfs::process::Status::from_buf_read(Cursor::new(black_box(status.as_bytes()))).expect("parse")
        })
    });
    g.bench_function("read_pid/podometer", |b| {
        b.iter(|| {
            (
                podometer::sources::processes::parse_stat_times(black_box(&stat)).expect("stat"),
                podometer::sources::processes::parse_status_rss(black_box(&status)).expect("status"),
            )
        })
    });
    g.finish();

    // What the parse sits beside: reading the three files of one process, as the source does.
    let mut g = c.benchmark_group("processes_read");
    let dir = std::path::Path::new("/proc/self");
    g.bench_function("cgroup+stat+status/read_to_string", |b| {
        b.iter(|| {
            for f in ["cgroup", "stat", "status"] {
                black_box(std::fs::read_to_string(dir.join(f)).expect("read"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, parsers);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
