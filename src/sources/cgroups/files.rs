//! The file layer under both file sets ([`super::v1::V1Files`], [`super::v2::V2Files`]): a
//! kept-open control file known by its hierarchy and a static name, read whole with `pread`
//! into a reused buffer, and what one read of one file comes to ([`FileRead`]).
//!
//! A handle keeps no path: at 500 containers, 15 heap paths per cgroup were 7,500 allocations
//! held for nothing but error messages. The path is built from the hierarchy's root, the
//! group's relative path and the file's name when a message needs it ([`FileError::path`]).

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::agent_counters::Telemetry;
use crate::fdlimit;
use crate::model::{AttrValue, MetricDesc, Point, Value};
use crate::semconv::{self, CgroupFamily};
use crate::sources::is_vanished;
use crate::warn_limited;

use super::hierarchy::Hierarchies;
use super::parse::{self, ParseError};
use super::{CgroupsError, SkipFiles};

/// The hierarchy a control file lives in. On v2 every file is in [`Dir::Unified`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    Memory,
    Cpuacct,
    Cpu,
    Blkio,
    Pids,
    /// The v2 hierarchy: the root on v2, `unified/` on hybrid.
    Unified,
}

impl Hierarchies {
    /// Where `dir` is mounted, if it is.
    pub(super) fn root_of(&self, dir: Dir) -> Option<&Path> {
        match dir {
            Dir::Memory => self.memory.as_deref(),
            Dir::Cpuacct => self.cpuacct.as_deref(),
            Dir::Cpu => self.cpu.as_deref(),
            Dir::Blkio => self.blkio.as_deref(),
            Dir::Pids => self.pids.as_deref(),
            Dir::Unified => self.unified.as_deref(),
        }
    }

    /// A group's directory in `dir`.
    pub(super) fn group_dir(&self, dir: Dir, rel: &str) -> Option<PathBuf> {
        self.root_of(dir).map(|root| root.join(rel))
    }
}

/// A kept-open control file.
pub(super) struct Handle {
    file: File,
    dir: Dir,
    name: &'static str,
}

/// Opens a group's files at a discovery: where they are (`rel` under each hierarchy), which
/// groups of files are skipped, and whether the process ran out of descriptors on the way.
pub(super) struct Opener<'a> {
    hierarchies: &'a Hierarchies,
    rel: &'a str,
    skip: &'a [SkipFiles],
    starved: Cell<bool>,
}

impl<'a> Opener<'a> {
    pub(super) fn new(hierarchies: &'a Hierarchies, rel: &'a str, skip: &'a [SkipFiles]) -> Opener<'a> {
        Opener { hierarchies, rel, skip, starved: Cell::new(false) }
    }

    /// Whether this group of files is read (not in `sources.cgroups.skip`).
    pub(super) fn wanted(&self, what: SkipFiles) -> bool {
        !self.skip.contains(&what)
    }

    /// Whether opening stopped for lack of file descriptors: nothing more is opened, and the
    /// group is retried at the next discovery.
    pub(super) fn starved(&self) -> bool {
        self.starved.get()
    }

    /// The group's directory in `dir`.
    pub(super) fn dir(&self, dir: Dir) -> Option<PathBuf> {
        self.hierarchies.group_dir(dir, self.rel)
    }

    /// Opens `name` in the group's directory of `dir`. `None` when the file does not exist
    /// (the controller is not mounted, not enabled, or the kernel lacks it), after running out
    /// of descriptors (which sets [`Opener::starved`] instead of logging: the source says it
    /// once), or after another failure (counted and logged, rate-limited).
    pub(super) fn open(&self, dir: Dir, name: &'static str) -> Option<Handle> {
        if self.starved.get() {
            return None;
        }
        let path = self.dir(dir)?.join(name);
        match File::open(&path) {
            Ok(file) => Some(Handle { file, dir, name }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if fdlimit::is_exhausted(&e) => {
                self.starved.set(true);
                None
            }
            Err(e) => {
                Telemetry::inc(&Telemetry::global().source_errors);
                warn_limited!("cgroups_open", path = %path.display(), error = %e, "Could not open a cgroup file; its metrics are left out.");
                None
            }
        }
    }

    /// Opens `name` into `slot` unless the slot holds a file already.
    pub(super) fn fill(&self, slot: &mut Option<Handle>, dir: Dir, name: &'static str) {
        if slot.is_none() {
            *slot = self.open(dir, name);
        }
    }

    /// [`Opener::fill`], unless `what` is skipped.
    pub(super) fn fill_unless_skipped(
        &self,
        what: SkipFiles,
        slot: &mut Option<Handle>,
        dir: Dir,
        name: &'static str,
    ) {
        if self.wanted(what) {
            self.fill(slot, dir, name);
        }
    }
}

/// What one read of one file came to. A vanished cgroup is not here: it ends the group's whole
/// sweep, as the `Err` of the read ([`Vanished`]).
#[derive(Debug)]
pub(super) enum FileRead<T> {
    /// The group has no such file (not opened, or PSI switched off for it): its metrics are
    /// absent, which is not an error.
    Absent,
    Value(T),
    /// The file could not be read or parsed: its metrics are left out of this sweep and the
    /// error is reported once.
    Failed(FileError),
}

/// The cgroup was removed while being read: normal, its container stopped.
#[derive(Debug)]
pub(super) struct Vanished {
    pub dir: Dir,
    pub name: &'static str,
}

/// A file that could not be read or parsed.
#[derive(Debug)]
pub(super) struct FileError {
    pub dir: Dir,
    pub name: &'static str,
    pub kind: FileErrorKind,
}

#[derive(Debug)]
pub(super) enum FileErrorKind {
    Io(io::Error),
    Parse(ParseError),
}

impl FileError {
    /// The file's path, for the message: the group `rel` in the hierarchies.
    pub(super) fn path(&self, hierarchies: &Hierarchies, rel: &str) -> PathBuf {
        file_path(hierarchies, self.dir, rel, self.name)
    }

    /// The source's error type, with the path.
    pub(super) fn into_error(self, hierarchies: &Hierarchies, rel: &str) -> CgroupsError {
        let path = self.path(hierarchies, rel);
        match self.kind {
            FileErrorKind::Io(source) => CgroupsError::Io { path, source },
            FileErrorKind::Parse(source) => CgroupsError::Parse { path, source },
        }
    }
}

impl Vanished {
    pub(super) fn path(&self, hierarchies: &Hierarchies, rel: &str) -> PathBuf {
        file_path(hierarchies, self.dir, rel, self.name)
    }
}

fn file_path(hierarchies: &Hierarchies, dir: Dir, rel: &str, name: &str) -> PathBuf {
    hierarchies.group_dir(dir, rel).unwrap_or_default().join(name)
}

/// The sweep's read buffer, reused for every file, and what the parsers need from the host.
pub(super) struct Reader {
    buf: Vec<u8>,
    /// USER_HZ, for v1 `cpuacct.stat`.
    pub clock_ticks: u64,
}

impl Reader {
    pub(super) fn new(clock_ticks: u64) -> Reader {
        Reader { buf: vec![0; 16 * 1024], clock_ticks }
    }

    /// Reads a kept-open file whole and parses it. The `Err` is the cgroup vanishing, the only
    /// outcome that ends the group's sweep early.
    /// `handle` is a `&Handle` or a `&Option<Handle>` (`None`: the group has no such file).
    pub(super) fn read<'h, T>(
        &mut self,
        handle: impl Into<Option<&'h Handle>>,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<FileRead<T>, Vanished> {
        let Some(h) = handle.into() else { return Ok(FileRead::Absent) };
        let failed = |kind| FileRead::Failed(FileError { dir: h.dir, name: h.name, kind });
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match h.file.read_at(&mut self.buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    // cgroup files are generated whole on each read from offset 0; a short read
                    // is the end, and skipping the extra read that would return 0 saves a syscall.
                    if len < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_vanished(&e) => return Err(Vanished { dir: h.dir, name: h.name }),
                // PSI switched off for this cgroup (`cgroup.pressure` 0) or the whole kernel.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(FileRead::Absent),
                Err(e) => return Ok(failed(FileErrorKind::Io(e))),
            }
        }
        let Ok(text) = std::str::from_utf8(&self.buf[..len]) else {
            return Ok(failed(FileErrorKind::Parse(ParseError::NotText)));
        };
        Ok(match parse(text) {
            Ok(value) => FileRead::Value(value),
            Err(e) => failed(FileErrorKind::Parse(e)),
        })
    }
}

/// Where a group's reading goes: its points, and the files that failed.
pub(super) struct Out<'a> {
    pub family: &'static CgroupFamily,
    pub points: &'a mut Vec<Point>,
    pub errors: &'a mut Vec<FileError>,
}

impl Out<'_> {
    /// The value of a read, or `None` (a failure is kept for the report).
    pub(super) fn take<T>(&mut self, read: FileRead<T>) -> Option<T> {
        match read {
            FileRead::Value(value) => Some(value),
            FileRead::Absent => None,
            FileRead::Failed(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    pub(super) fn push_u64(&mut self, metric: &'static MetricDesc, value: u64) {
        self.points.push(Point::new(metric, Value::from_u64(value)));
    }

    pub(super) fn push_cpu_time(&mut self, t: parse::CpuTime) {
        let f = self.family;
        self.points.push(
            Point::new(&f.cpu_time, Value::Double(t.user))
                .with(semconv::CPU_MODE, AttrValue::constant(semconv::CPU_MODE_USER)),
        );
        self.points.push(
            Point::new(&f.cpu_time, Value::Double(t.system))
                .with(semconv::CPU_MODE, AttrValue::constant(semconv::CPU_MODE_SYSTEM)),
        );
    }

    pub(super) fn push_throttling(&mut self, th: parse::Throttling) {
        let f = self.family;
        self.push_u64(&f.cpu_throttling_periods, th.periods);
        self.push_u64(&f.cpu_throttling_throttled_periods, th.throttled_periods);
        self.points.push(Point::new(&f.cpu_throttling_throttled_time, Value::Double(th.throttled_time)));
    }

    /// Usage, and from `memory.stat` the working set (when usage was read), RSS and page cache.
    pub(super) fn push_memory(&mut self, usage: Option<u64>, stat: Option<parse::MemoryStat>) {
        let f = self.family;
        if let Some(usage) = usage {
            self.push_u64(&f.memory_usage, usage);
        }
        if let Some(stat) = stat {
            if let Some(usage) = usage {
                self.push_u64(&f.memory_working_set, parse::working_set(usage, &stat));
            }
            self.push_u64(&f.memory_rss, stat.rss);
            self.push_u64(&f.memory_file, stat.file);
        }
    }

    pub(super) fn push_device_io(&mut self, metric: &'static MetricDesc, devices: &[parse::DeviceIo]) {
        for d in devices {
            for (direction, value) in [(semconv::DIRECTION_READ, d.read), (semconv::DIRECTION_WRITE, d.write)]
            {
                self.points.push(Point::new(metric, Value::from_u64(value)).with_all([
                    (semconv::DISK_IO_DIRECTION, AttrValue::constant(direction)),
                    (semconv::SYSTEM_DEVICE, AttrValue::Str(d.device.clone().into())),
                ]));
            }
        }
    }
}

/// A limit file (`memory.max`, `memory.limit_in_bytes`, `pids.max`): read only when limits are
/// due (every `limits_interval`: limits rarely change), its last value reported every sweep.
#[derive(Default)]
pub(super) struct LimitFile {
    pub(super) handle: Option<Handle>,
    /// The limit as last read; `None` for no limit, a failed read, or not read yet.
    value: Option<u64>,
}

impl LimitFile {
    pub(super) fn read(
        &mut self,
        r: &mut Reader,
        out: &mut Out<'_>,
        read_limits: bool,
        parse: fn(&str) -> Result<Option<u64>, ParseError>,
        metric: &'static MetricDesc,
    ) -> Result<(), Vanished> {
        if read_limits {
            self.value = out.take(r.read(&self.handle, parse)?).flatten();
        }
        if let Some(limit) = self.value {
            out.push_u64(metric, limit);
        }
        Ok(())
    }
}

/// How one hierarchy names and writes the memory controller's files.
pub(super) struct MemoryFormat {
    /// `memory.usage_in_bytes` (v1), `memory.current` (v2).
    pub usage: &'static str,
    /// `memory.limit_in_bytes` (v1), `memory.max` (v2).
    pub limit: &'static str,
    /// Where OOM kills are counted: `memory.oom_control` (v1), `memory.events` (v2).
    pub oom: &'static str,
    pub parse_stat: fn(&str) -> Result<parse::MemoryStat, ParseError>,
    pub parse_limit: fn(&str) -> Result<Option<u64>, ParseError>,
}

/// The memory controller's usage, `memory.stat`, limit and OOM kill count, read alike on v1
/// and v2 with the hierarchy's [`MemoryFormat`].
#[derive(Default)]
pub(super) struct MemoryFiles {
    usage: Option<Handle>,
    stat: Option<Handle>,
    limit: LimitFile,
    oom: Option<Handle>,
}

impl MemoryFiles {
    pub(super) fn open_missing(&mut self, o: &Opener<'_>, dir: Dir, format: &MemoryFormat) {
        o.fill(&mut self.usage, dir, format.usage);
        o.fill_unless_skipped(SkipFiles::MemoryStat, &mut self.stat, dir, "memory.stat");
        o.fill(&mut self.limit.handle, dir, format.limit);
        o.fill(&mut self.oom, dir, format.oom);
    }

    pub(super) fn open_files(&self) -> usize {
        [&self.usage, &self.stat, &self.limit.handle, &self.oom].iter().filter(|h| h.is_some()).count()
    }

    /// Usage, working set, RSS and page cache every sweep, the limit when `read_limits`.
    pub(super) fn read(
        &mut self,
        r: &mut Reader,
        out: &mut Out<'_>,
        read_limits: bool,
        format: &MemoryFormat,
    ) -> Result<(), Vanished> {
        let f = out.family;
        let usage = out.take(r.read(&self.usage, parse::parse_single)?);
        let stat = out.take(r.read(&self.stat, format.parse_stat)?);
        out.push_memory(usage, stat);
        self.limit.read(r, out, read_limits, format.parse_limit, &f.memory_limit)?;
        if let Some(kills) = out.take(r.read(&self.oom, parse::parse_oom_kills)?) {
            out.push_u64(&f.memory_oom_kills, kills);
        }
        Ok(())
    }
}

/// `pids.current` and `pids.max`: the same names and formats in v1's pids controller and in v2.
#[derive(Default)]
pub(super) struct PidsFiles {
    current: Option<Handle>,
    max: LimitFile,
}

impl PidsFiles {
    pub(super) fn open_missing(&mut self, o: &Opener<'_>, dir: Dir) {
        o.fill(&mut self.current, dir, "pids.current");
        o.fill(&mut self.max.handle, dir, "pids.max");
    }

    pub(super) fn open_files(&self) -> usize {
        usize::from(self.current.is_some()) + usize::from(self.max.handle.is_some())
    }

    /// Reads `pids.current`, and `pids.max` only when `read_limits`.
    pub(super) fn read(
        &mut self,
        r: &mut Reader,
        out: &mut Out<'_>,
        read_limits: bool,
    ) -> Result<(), Vanished> {
        let f = out.family;
        if let Some(count) = out.take(r.read(&self.current, parse::parse_single)?) {
            out.push_u64(&f.pids_count, count);
        }
        self.max.read(r, out, read_limits, parse::parse_max_or_number, &f.pids_limit)
    }
}

/// `cpu.pressure`, `memory.pressure`, `io.pressure` of the v2 hierarchy (hybrid: `unified/`).
#[derive(Default)]
pub(super) struct PressureFiles([Option<Handle>; 3]);

const PRESSURE_FILES: [&str; 3] = ["cpu.pressure", "memory.pressure", "io.pressure"];

impl PressureFiles {
    pub(super) fn open_missing(&mut self, o: &Opener<'_>) {
        for (slot, name) in self.0.iter_mut().zip(PRESSURE_FILES) {
            o.fill_unless_skipped(SkipFiles::Pressure, slot, Dir::Unified, name);
        }
    }

    pub(super) fn open_files(&self) -> usize {
        self.0.iter().flatten().count()
    }

    pub(super) fn read(&self, r: &mut Reader, out: &mut Out<'_>) -> Result<(), Vanished> {
        let f = out.family;
        for (handle, metric) in self.0.iter().zip([&f.cpu_pressure, &f.memory_pressure, &f.io_pressure]) {
            if let Some(p) = out.take(r.read(handle, parse::parse_pressure)?) {
                out.points.push(
                    Point::new(metric, Value::Double(p.some))
                        .with(semconv::PRESSURE_STALL_TYPE, AttrValue::constant("some")),
                );
                if let Some(full) = p.full {
                    out.points.push(
                        Point::new(metric, Value::Double(full))
                            .with(semconv::PRESSURE_STALL_TYPE, AttrValue::constant("full")),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The group's `cgroup.procs` (for the network source to find its processes): in the first of
/// `dirs` that exists, else in the first that is mounted.
pub(super) fn procs_file(o: &Opener<'_>, dirs: &[Dir]) -> PathBuf {
    let candidates = || dirs.iter().filter_map(|d| o.dir(*d));
    candidates()
        .find(|d| d.is_dir())
        .or_else(|| candidates().next())
        .map(|d| d.join("cgroup.procs"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::cgroups::CgroupMode;

    fn v2_root(path: &Path) -> Hierarchies {
        Hierarchies {
            mode: CgroupMode::V2,
            unified: Some(path.to_owned()),
            memory: None,
            cpuacct: None,
            cpu: None,
            blkio: None,
            pids: None,
        }
    }

    #[test]
    fn a_read_grows_the_buffer_for_large_files_and_rereads_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("g")).expect("mkdir");
        let path = dir.path().join("g/memory.stat");
        let text: String = (0..3000).map(|i| format!("key_{i} {i}\n")).collect();
        assert!(text.len() > 16 * 1024);
        std::fs::write(&path, &text).expect("write");
        let h = v2_root(dir.path());
        let handle = Opener::new(&h, "g", &[]).open(Dir::Unified, "memory.stat");
        assert!(handle.is_some());
        let mut r = Reader::new(100);
        let read = |r: &mut Reader| match r.read(&handle, |t| Ok(t.to_owned())).expect("not vanished") {
            FileRead::Value(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(read(&mut r), text);
        // Same file again: pread at offset 0 sees it whole, not from where the last read ended.
        std::fs::write(&path, "short 1\n").expect("rewrite");
        assert_eq!(read(&mut r), "short 1\n");
    }

    #[test]
    fn a_missing_file_is_absent_and_not_text_fails_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("g")).expect("mkdir");
        let h = v2_root(dir.path());
        let o = Opener::new(&h, "g", &[]);
        let mut r = Reader::new(100);
        assert!(o.open(Dir::Unified, "cpu.pressure").is_none());
        assert!(o.open(Dir::Memory, "memory.stat").is_none(), "no memory hierarchy on v2");
        assert!(matches!(r.read(&None, parse::parse_single), Ok(FileRead::Absent)));
        std::fs::write(dir.path().join("g/pids.current"), [0xff, 0xfe, b'\n']).expect("write");
        let handle = o.open(Dir::Unified, "pids.current");
        let Ok(FileRead::Failed(e)) = r.read(&handle, parse::parse_single) else { panic!("not UTF-8 fails") };
        let err = e.into_error(&h, "g");
        assert!(err.to_string().contains(&dir.path().join("g/pids.current").display().to_string()), "{err}");
        std::fs::write(dir.path().join("g/pids.current"), "many\n").expect("write");
        let Ok(FileRead::Failed(e)) = r.read(&handle, parse::parse_single) else {
            panic!("not a number fails")
        };
        assert!(matches!(e.kind, FileErrorKind::Parse(ParseError::BadNumber { .. })), "{e:?}");
    }
}
