//! A cgroup's files on a v1 host: one directory per controller (`cpuacct`, `cpu`, `memory`,
//! `blkio`, `pids`, with `cpu` and `cpuacct` mounted together or apart). On a hybrid host the
//! same, plus what the unified hierarchy (`unified/`, which has no controllers) adds: pressure,
//! and its core `cpu.stat`, which the kernel keeps for every v2 cgroup and which is then where
//! CPU time comes from.
//!
//! Why `unified/…/cpu.stat` before cpuacct on hybrid: it has the same numbers in one file.
//! `usage_usec` is the scheduler's exact runtime, like `cpuacct.usage`, and `user_usec` /
//! `system_usec` are that total split by the kernel's `cputime_adjust`, the split this source
//! otherwise computes itself from `cpuacct.usage_user`/`usage_sys` (tick samples). Measured on
//! runc containers of a hybrid 6.18 host (busy in user and in system mode): total within 1 µs
//! of `cpuacct.usage`, the split within 0.01 ms of ours. One `pread` instead of three, two
//! descriptors fewer per cgroup (docs/performance.md, "Lean profile"). A group missing from `unified/`
//! (a runtime that does not join it) is read from cpuacct, and looked for in `unified/` again
//! at every discovery.
//!
//! | file | metrics |
//! |---|---|
//! | hybrid: `unified/…/cpu.stat` `user_usec`/`system_usec`; else `cpuacct.usage` split by `cpuacct.usage_user`/`usage_sys`; else those two; else `cpuacct.stat` | `cpu.time` |
//! | `cpu.stat` | `cpu.throttling_data.*` |
//! | `memory.usage_in_bytes`, `memory.stat` (`total_*`) | `memory.usage`, `memory.working_set`, `memory.rss`, `memory.file` |
//! | `memory.limit_in_bytes`, `pids.max` (every `limits_interval`) | `memory.usage.limit`, `pids.limit` |
//! | `memory.oom_control` | `memory.oom_kills` |
//! | `blkio.throttle.io_service_bytes_recursive`, `blkio.throttle.io_serviced_recursive` | `disk.io`, `disk.operations` |
//! | `pids.current` | `pids.count` |
//! | hybrid: `unified/…/{cpu,memory,io}.pressure` | `*.pressure.stall_time` |

use std::path::PathBuf;

use super::files::{
    procs_file, Dir, Handle, MemoryFiles, MemoryFormat, Opener, Out, PidsFiles, PressureFiles, Reader,
    Vanished,
};
use super::parse;
use super::SkipFiles;

/// v1's memory controller: its own names for usage and limit, OOM kills in `oom_control`.
const MEMORY: MemoryFormat = MemoryFormat {
    usage: "memory.usage_in_bytes",
    limit: "memory.limit_in_bytes",
    oom: "memory.oom_control",
    parse_stat: parse::parse_v1_memory_stat,
    parse_limit: parse::parse_v1_memory_limit,
};

/// The files of one cgroup on a v1 or hybrid host; each is `None` while the group has no such
/// file (tried again at every discovery).
#[derive(Default)]
pub(super) struct V1Files {
    cpu_time: CpuTimeFiles,
    /// `cpu/…/cpu.stat`: CFS throttling.
    cpu_stat: Option<Handle>,
    memory: MemoryFiles,
    blkio_bytes: Option<Handle>,
    blkio_ops: Option<Handle>,
    pids: PidsFiles,
    /// Hybrid only: `unified/…/*.pressure`.
    pressure: PressureFiles,
}

/// Where CPU time comes from, best first.
#[derive(Default)]
enum CpuTimeFiles {
    /// Hybrid: the unified hierarchy's core `cpu.stat` (`user_usec`, `system_usec`),
    /// microseconds, split by the kernel.
    UnifiedStat(Handle),
    /// `cpuacct.usage` (the scheduler's exact total) split by the ratio of
    /// `cpuacct.usage_user` and `cpuacct.usage_sys` (tick samples), nanoseconds. `split` is the
    /// last split reported, so that neither mode goes backwards when the ratio shifts.
    UsageSplit { total: Handle, user: Handle, sys: Handle, split: (u64, u64) },
    /// `cpuacct.usage_user` and `cpuacct.usage_sys` without `cpuacct.usage`, nanoseconds.
    UsagePair { user: Handle, sys: Handle },
    /// `cpuacct.stat`, USER_HZ ticks.
    AcctStat(Handle),
    #[default]
    Missing,
}

impl CpuTimeFiles {
    fn open_files(&self) -> usize {
        match self {
            CpuTimeFiles::UsageSplit { .. } => 3,
            CpuTimeFiles::UsagePair { .. } => 2,
            CpuTimeFiles::AcctStat(_) | CpuTimeFiles::UnifiedStat(_) => 1,
            CpuTimeFiles::Missing => 0,
        }
    }

    /// The best source the group has now. The best one is kept as it is; anything less is
    /// tried for better at every discovery, since a runtime creates a container's directories
    /// and files one after another. On v1 there is no unified hierarchy: nothing is tried there.
    fn open_better(self, o: &Opener<'_>) -> CpuTimeFiles {
        use CpuTimeFiles::*;
        let lesser = match self {
            best @ UnifiedStat(_) => return best,
            lesser => match o.open(Dir::Unified, "cpu.stat") {
                Some(stat) => return UnifiedStat(stat),
                None => lesser,
            },
        };
        match lesser {
            kept @ UsageSplit { .. } => kept,
            UsagePair { user, sys } => with_total(o, user, sys),
            lesser => {
                let user = o.open(Dir::Cpuacct, "cpuacct.usage_user");
                let sys = o.open(Dir::Cpuacct, "cpuacct.usage_sys");
                match (user, sys, lesser) {
                    (Some(user), Some(sys), _) => with_total(o, user, sys),
                    (_, _, kept @ AcctStat(_)) => kept,
                    _ => o.open(Dir::Cpuacct, "cpuacct.stat").map_or(Missing, AcctStat),
                }
            }
        }
    }

    /// CPU time in seconds, `None` when the group has no CPU file or one failed (kept in
    /// `out`); `throttling` tells whether the group's unified `cpu.stat` may report throttling
    /// (only when it has no v1 `cpu.stat`, which is read for that).
    fn read(
        &mut self,
        r: &mut Reader,
        out: &mut Out<'_>,
        throttling: bool,
    ) -> Result<Option<parse::CpuTime>, Vanished> {
        Ok(match self {
            CpuTimeFiles::UsageSplit { total, user, sys, split } => {
                let total = out.take(r.read(&*total, parse::parse_single)?);
                let user = out.take(r.read(&*user, parse::parse_single)?);
                let sys = out.take(r.read(&*sys, parse::parse_single)?);
                match (total, user, sys) {
                    (Some(total), Some(user), Some(sys)) => {
                        *split = parse::adjust_cputime(total, user, sys, *split);
                        Some(parse::CpuTime { user: split.0 as f64 / 1e9, system: split.1 as f64 / 1e9 })
                    }
                    _ => None,
                }
            }
            CpuTimeFiles::UsagePair { user, sys } => {
                let user = out.take(r.read(&*user, parse::parse_single)?);
                let sys = out.take(r.read(&*sys, parse::parse_single)?);
                match (user, sys) {
                    (Some(user), Some(sys)) => {
                        Some(parse::CpuTime { user: user as f64 / 1e9, system: sys as f64 / 1e9 })
                    }
                    _ => None,
                }
            }
            CpuTimeFiles::AcctStat(stat) => {
                let hz = r.clock_ticks;
                out.take(r.read(&*stat, |t| parse::parse_cpuacct_stat(t, hz))?)
            }
            CpuTimeFiles::UnifiedStat(stat) => out.take(r.read(&*stat, parse::parse_v2_cpu_stat)?).map(|s| {
                if let (true, Some(th)) = (throttling, s.throttling) {
                    out.push_throttling(th);
                }
                s.time
            }),
            CpuTimeFiles::Missing => None,
        })
    }
}

/// The usage pair, splitting `cpuacct.usage` when the group has it.
fn with_total(o: &Opener<'_>, user: Handle, sys: Handle) -> CpuTimeFiles {
    match o.open(Dir::Cpuacct, "cpuacct.usage") {
        Some(total) => CpuTimeFiles::UsageSplit { total, user, sys, split: (0, 0) },
        None => CpuTimeFiles::UsagePair { user, sys },
    }
}

impl V1Files {
    /// Files one group holds at most: cpuacct 3, cpu 1, memory 4, blkio 2, pids 2. Hybrid adds
    /// the 3 pressure files of `unified/`; its `cpu.stat` stands in for cpuacct's 3, so a group
    /// in `unified/` holds 13, one missing there 12, and 15 only on a kernel without the core
    /// `cpu.stat` (before 4.15): the budget counts the most.
    pub(super) const MAX_FILES_V1: u64 = 12;
    pub(super) const MAX_FILES_HYBRID: u64 = 15;

    /// Opens every file the group does not hold yet: all of them at its discovery, then, at each
    /// later discovery, what was missing, since runtimes create a container's controller
    /// directories (and `unified/`) one after the other, and a controller's files appear only
    /// once it is enabled. Costs a failed `open` per missing file per discovery, nothing per
    /// sweep. Stops at the first file refused for lack of descriptors ([`Opener::starved`]).
    pub(super) fn open_missing(&mut self, o: &Opener<'_>) {
        self.cpu_time = std::mem::take(&mut self.cpu_time).open_better(o);
        o.fill_unless_skipped(SkipFiles::Throttling, &mut self.cpu_stat, Dir::Cpu, "cpu.stat");
        self.memory.open_missing(o, Dir::Memory, &MEMORY);
        o.fill_unless_skipped(
            SkipFiles::BlockIo,
            &mut self.blkio_bytes,
            Dir::Blkio,
            "blkio.throttle.io_service_bytes_recursive",
        );
        o.fill_unless_skipped(
            SkipFiles::BlockIo,
            &mut self.blkio_ops,
            Dir::Blkio,
            "blkio.throttle.io_serviced_recursive",
        );
        self.pids.open_missing(o, Dir::Pids);
        self.pressure.open_missing(o);
    }

    /// The group's `cgroup.procs`, where its processes are listed.
    pub(super) fn procs_file(o: &Opener<'_>) -> PathBuf {
        procs_file(o, &[Dir::Memory, Dir::Pids, Dir::Cpuacct, Dir::Unified])
    }

    pub(super) fn open_files(&self) -> u64 {
        let single = [&self.cpu_stat, &self.blkio_bytes, &self.blkio_ops];
        let single = single.iter().filter(|h| h.is_some()).count();
        (self.cpu_time.open_files()
            + single
            + self.memory.open_files()
            + self.pids.open_files()
            + self.pressure.open_files()) as u64
    }

    /// Reads every file once into `out`; limits only when `read_limits`.
    pub(super) fn read(
        &mut self,
        r: &mut Reader,
        out: &mut Out<'_>,
        read_limits: bool,
    ) -> Result<(), Vanished> {
        let f = out.family;
        if let Some(time) = self.cpu_time.read(r, out, self.cpu_stat.is_none())? {
            out.push_cpu_time(time);
        }
        if let Some(th) = out.take(r.read(&self.cpu_stat, parse::parse_v1_cpu_stat)?) {
            out.push_throttling(th);
        }

        self.memory.read(r, out, read_limits, &MEMORY)?;

        for (handle, metric) in [(&self.blkio_bytes, &f.disk_io), (&self.blkio_ops, &f.disk_operations)] {
            if let Some(devices) = out.take(r.read(handle, parse::parse_v1_blkio)?) {
                out.push_device_io(metric, &devices);
            }
        }

        self.pids.read(r, out, read_limits)?;

        self.pressure.read(r, out)
    }
}
