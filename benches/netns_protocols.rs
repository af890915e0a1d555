//! What a namespace's TCP/UDP counter files cost per sweep: reading them (a kept-open file
//! re-read with `pread` against open + read + close, on this process's `/proc/self/net/*`), and
//! parsing them (podometer's by-name scan beside the `procfs` crate's `Snmp`/`Snmp6` parsers of
//! the same texts; `procfs` has no `netstat` parser). The parsed texts are this repository's
//! fixtures from kernel 6.18. The results are why `src/sources/netns/protocols.rs` does not use
//! `procfs` for these files and why the files are kept open.
use std::fs::File;
use std::hint::black_box;
use std::io::{Cursor, Read};
use std::os::unix::fs::FileExt;

use criterion::{criterion_group, Criterion};
use podometer::sources::netns::protocols::{parse_netstat, parse_snmp, parse_snmp6, TcpExtWanted};
use procfs::FromBufRead;

fn fixture(file: &str) -> String {
    let path = format!("{}/fixtures/net_protocols/linux-6.18/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parsers(c: &mut Criterion) {
    let (snmp, netstat, snmp6) = (fixture("snmp"), fixture("netstat"), fixture("snmp6"));
    let mut g = c.benchmark_group("net_protocols");
    g.bench_function("snmp/podometer", |b| b.iter(|| parse_snmp(black_box(&snmp)).expect("parse")));
    g.bench_function("snmp/procfs", |b| {
        b.iter(|| procfs::net::Snmp::from_buf_read(Cursor::new(black_box(snmp.as_bytes()))).expect("parse"))
    });
    g.bench_function("netstat/podometer, all four", |b| {
        b.iter(|| parse_netstat(black_box(&netstat), TcpExtWanted::ALL).expect("parse"))
    });
    let listen = TcpExtWanted { listen: true, syn_retrans: false, timeouts: false };
    g.bench_function("netstat/podometer, default set", |b| {
        b.iter(|| parse_netstat(black_box(&netstat), listen).expect("parse"))
    });
    g.bench_function("snmp6/podometer", |b| b.iter(|| parse_snmp6(black_box(&snmp6)).expect("parse")));
    g.bench_function("snmp6/procfs", |b| {
        b.iter(|| procfs::net::Snmp6::from_buf_read(Cursor::new(black_box(snmp6.as_bytes()))).expect("parse"))
    });
    g.finish();

    let mut g = c.benchmark_group("net_protocols_read");
    let mut buf = vec![0u8; 16 * 1024];
    for file in ["snmp", "netstat", "snmp6"] {
        let path = format!("/proc/self/net/{file}");
        let kept = File::open(&path).expect("open");
        g.bench_function(format!("{file}/pread kept open"), |b| {
            b.iter(|| kept.read_at(black_box(&mut buf), 0).expect("pread"))
        });
        g.bench_function(format!("{file}/open read close"), |b| {
            b.iter(|| File::open(black_box(&path)).and_then(|mut f| f.read(&mut buf)).expect("read"))
        });
    }
    g.finish();
}

criterion_group!(benches, parsers);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
