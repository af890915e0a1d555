//! A cgroup's files on a v2 host: one directory in the unified hierarchy.
//!
//! | file | metrics |
//! |---|---|
//! | `cpu.stat` | `cpu.time` (`user_usec`, `system_usec`); `cpu.throttling_data.*` when the cpu controller is enabled for the group |
//! | `memory.current`, `memory.stat` | `memory.usage`, `memory.working_set`, `memory.rss`, `memory.file` |
//! | `memory.max`, `pids.max` (every `limits_interval`) | `memory.usage.limit`, `pids.limit` |
//! | `memory.events` | `memory.oom_kills` |
//! | `io.stat` | `disk.io`, `disk.operations` |
//! | `pids.current` | `pids.count` |
//! | `{cpu,memory,io}.pressure` | `*.pressure.stall_time` |

use std::path::PathBuf;

use super::files::{
    Dir, Handle, MemoryFiles, MemoryFormat, Opener, Out, PidsFiles, PressureFiles, Reader, Vanished,
};
use super::parse;
use super::SkipFiles;

/// v2's memory controller: `memory.current`, `memory.max`, OOM kills in `memory.events`.
const MEMORY: MemoryFormat = MemoryFormat {
    usage: "memory.current",
    limit: "memory.max",
    oom: "memory.events",
    parse_stat: parse::parse_v2_memory_stat,
    parse_limit: parse::parse_max_or_number,
};

/// The files of one cgroup on a v2 host; each is `None` while the group has no such file (a
/// controller not enabled for it yet: tried again at every discovery).
#[derive(Default)]
pub(super) struct V2Files {
    /// CPU time, and throttling when the cpu controller is enabled (so `skip: throttling`
    /// saves nothing here).
    cpu_stat: Option<Handle>,
    memory: MemoryFiles,
    io_stat: Option<Handle>,
    pids: PidsFiles,
    pressure: PressureFiles,
}

impl V2Files {
    /// Files one group holds at most.
    pub(super) const MAX_FILES: u64 = 11;

    /// Opens every file the group does not hold yet (see [`super::v1::V1Files::open_missing`]):
    /// on v2 a controller's files appear when the parent enables it in
    /// `cgroup.subtree_control`, which systemd does on demand.
    pub(super) fn open_missing(&mut self, o: &Opener<'_>) {
        let u = Dir::Unified;
        o.fill(&mut self.cpu_stat, u, "cpu.stat");
        self.memory.open_missing(o, u, &MEMORY);
        o.fill_unless_skipped(SkipFiles::BlockIo, &mut self.io_stat, u, "io.stat");
        self.pids.open_missing(o, u);
        self.pressure.open_missing(o);
    }

    /// The group's `cgroup.procs`. crun moves a container's processes into a `container`
    /// child when the container runs systemd; the group's own `cgroup.procs` is then empty.
    pub(super) fn procs_file(o: &Opener<'_>) -> PathBuf {
        let Some(dir) = o.dir(Dir::Unified) else { return PathBuf::new() };
        let nested = dir.join("container/cgroup.procs");
        if nested.is_file() {
            nested
        } else {
            dir.join("cgroup.procs")
        }
    }

    pub(super) fn open_files(&self) -> u64 {
        let single = [&self.cpu_stat, &self.io_stat];
        (single.iter().filter(|h| h.is_some()).count()
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
        if let Some(stat) = out.take(r.read(&self.cpu_stat, parse::parse_v2_cpu_stat)?) {
            out.push_cpu_time(stat.time);
            if let Some(th) = stat.throttling {
                out.push_throttling(th);
            }
        }

        self.memory.read(r, out, read_limits, &MEMORY)?;

        if let Some(stat) = out.take(r.read(&self.io_stat, parse::parse_v2_io_stat)?) {
            out.push_device_io(&f.disk_io, &stat.bytes);
            out.push_device_io(&f.disk_operations, &stat.operations);
        }

        self.pids.read(r, out, read_limits)?;

        self.pressure.read(r, out)
    }
}
