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

use super::files::{Dir, Handle, Opener, Out, PidsFiles, PressureFiles, Reader, Vanished};
use super::parse;
use super::SkipFiles;

/// The files of one cgroup on a v2 host; each is `None` while the group has no such file (a
/// controller not enabled for it yet: tried again at every discovery).
#[derive(Default)]
pub(super) struct V2Files {
    /// CPU time, and throttling when the cpu controller is enabled (so `skip: throttling`
    /// saves nothing here).
    cpu_stat: Option<Handle>,
    memory_current: Option<Handle>,
    memory_stat: Option<Handle>,
    memory_max: Option<Handle>,
    memory_events: Option<Handle>,
    io_stat: Option<Handle>,
    pids: PidsFiles,
    pressure: PressureFiles,
    /// `memory.max` as last read (every `limits_interval`).
    memory_limit_value: Option<u64>,
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
        o.fill(&mut self.memory_current, u, "memory.current");
        o.fill_unless_skipped(SkipFiles::MemoryStat, &mut self.memory_stat, u, "memory.stat");
        o.fill(&mut self.memory_max, u, "memory.max");
        o.fill(&mut self.memory_events, u, "memory.events");
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
        let single = [
            &self.cpu_stat,
            &self.memory_current,
            &self.memory_stat,
            &self.memory_max,
            &self.memory_events,
            &self.io_stat,
        ];
        (single.iter().filter(|h| h.is_some()).count() + self.pids.open_files() + self.pressure.open_files())
            as u64
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

        let usage = out.take(r.read(&self.memory_current, parse::parse_single)?);
        let stat = out.take(r.read(&self.memory_stat, parse::parse_v2_memory_stat)?);
        out.push_memory(usage, stat);
        if read_limits {
            self.memory_limit_value =
                out.take(r.read(&self.memory_max, parse::parse_max_or_number)?).flatten();
        }
        if let Some(limit) = self.memory_limit_value {
            out.push_u64(&f.memory_limit, limit);
        }
        if let Some(kills) = out.take(r.read(&self.memory_events, parse::parse_oom_kills)?) {
            out.push_u64(&f.memory_oom_kills, kills);
        }

        if let Some(stat) = out.take(r.read(&self.io_stat, parse::parse_v2_io_stat)?) {
            out.push_device_io(&f.disk_io, &stat.bytes);
            out.push_device_io(&f.disk_operations, &stat.operations);
        }

        self.pids.read(r, out, read_limits)?;

        self.pressure.read(r, out)
    }
}
