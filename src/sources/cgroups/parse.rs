//! Pure parsers of cgroup control files, and of `/proc/<pid>/cgroup` (where a process sits in
//! the hierarchies). Each takes the file's text and returns values in the units the agent emits
//! (seconds, bytes), so every conversion is tested on literal strings.

use std::sync::Arc;

pub use crate::sources::ParseError;

fn number(key: &str, text: &str) -> Result<u64, ParseError> {
    let text = text.trim_ascii();
    text.parse().map_err(|_| ParseError::BadNumber { key: key.to_owned(), text: text.to_owned() })
}

/// The non-empty lines of a control file, without surrounding ASCII whitespace. A plain byte
/// loop: control files are short lines, for which `str::lines` and `trim` (a `memchr` set-up
/// and a Unicode whitespace test per call) cost more than the scan itself; a sweep parses
/// about a hundred lines per cgroup (docs/performance.md, "Stage benchmarks": instructions per sweep).
fn lines(text: &str) -> Lines<'_> {
    Lines { rest: text }
}

struct Lines<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while !self.rest.is_empty() {
            let end = self.rest.bytes().position(|b| b == b'\n').unwrap_or(self.rest.len());
            let line = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or("");
            let line = line.trim_ascii();
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    }
}

/// `line` split at its first space.
fn split_space(line: &str) -> Option<(&str, &str)> {
    let at = line.bytes().position(|b| b == b' ')?;
    Some((&line[..at], &line[at + 1..]))
}

/// Values of `keys` in a file of `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`,
/// `cpuacct.stat`, `memory.oom_control`). Only wanted values are parsed, so a sweep does not pay
/// for the forty other keys of `memory.stat`; a line that is not `key value` is an error all the
/// same, so garbage is never read as "key missing".
pub fn scan_keys<const N: usize>(
    text: &str,
    keys: [&'static str; N],
) -> Result<[Option<u64>; N], ParseError> {
    let mut out = [None; N];
    for line in lines(text) {
        let Some((key, value)) = split_space(line) else {
            return Err(ParseError::BadLine(line.to_owned()));
        };
        if let Some(i) = keys.iter().position(|k| *k == key) {
            out[i] = Some(number(key, value)?);
        }
    }
    Ok(out)
}

fn need(value: Option<u64>, key: &'static str) -> Result<u64, ParseError> {
    value.ok_or(ParseError::MissingKey(key))
}

/// A file holding one number (`memory.usage_in_bytes`, `memory.current`, `pids.current`,
/// `cpuacct.usage_user`).
pub fn parse_single(text: &str) -> Result<u64, ParseError> {
    let t = text.trim_ascii();
    if t.is_empty() {
        return Err(ParseError::Empty);
    }
    number("value", t)
}

/// A limit file that says `max` when unlimited (`memory.max`, `pids.max`): `None` when unlimited.
pub fn parse_max_or_number(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim_ascii() {
        "max" => Ok(None),
        _ => parse_single(text).map(Some),
    }
}

/// At or above this, a v1 `memory.limit_in_bytes` means "no limit": the kernel reports
/// `PAGE_COUNTER_MAX` pages rounded down to a page, 9223372036854771712 with 4 KiB pages, and
/// a little less with larger pages.
pub const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// v1 `memory.limit_in_bytes`: `None` when unlimited.
pub fn parse_v1_memory_limit(text: &str) -> Result<Option<u64>, ParseError> {
    let v = parse_single(text)?;
    Ok((v < V1_UNLIMITED_THRESHOLD).then_some(v))
}

/// CPU time by mode, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

/// v1 `cpuacct.usage_user` and `cpuacct.usage_sys`: nanoseconds.
pub fn parse_cpuacct_usage_pair(user: &str, sys: &str) -> Result<CpuTime, ParseError> {
    Ok(CpuTime { user: parse_single(user)? as f64 / 1e9, system: parse_single(sys)? as f64 / 1e9 })
}

/// Splits a precise CPU total into user and system the way the kernel's `cputime_adjust` does
/// for cgroup v2 and `/proc/<pid>/stat`.
///
/// cgroup v1's `cpuacct.usage_user`/`usage_sys` (and `cpuacct.stat`) come from tick sampling:
/// their sum drifts from the exact `cpuacct.usage` by tens of milliseconds per second of CPU on
/// a busy VM. The total must be exact, so it comes from `cpuacct.usage` and the samples only
/// give the ratio. `prev` is the split reported last time (nanoseconds); the result never goes
/// below it in either mode, so both counters stay monotonic, and always sums to `total_ns`
/// (unless the total itself went backwards, which is a counter reset the caller handles).
pub fn adjust_cputime(total_ns: u64, user_sample: u64, sys_sample: u64, prev: (u64, u64)) -> (u64, u64) {
    let (prev_user, prev_sys) = prev;
    if prev_user.saturating_add(prev_sys) > total_ns {
        // The cgroup's counters were reset (or this is a different cgroup): start over.
        return adjust_cputime(total_ns, user_sample, sys_sample, (0, 0));
    }
    let mut sys = match (user_sample, sys_sample) {
        (_, 0) => 0,
        (0, _) => total_ns,
        (u, s) => (u128::from(total_ns) * u128::from(s) / (u128::from(u) + u128::from(s))) as u64,
    };
    sys = sys.max(prev_sys);
    let mut user = total_ns - sys.min(total_ns);
    if user < prev_user {
        user = prev_user;
        sys = total_ns - user;
    }
    (user, sys)
}

/// v1 `cpuacct.stat`: `user` and `system` in USER_HZ ticks (`clock_ticks` per second).
pub fn parse_cpuacct_stat(text: &str, clock_ticks: u64) -> Result<CpuTime, ParseError> {
    let [user, system] = scan_keys(text, ["user", "system"])?;
    let hz = clock_ticks.max(1) as f64;
    Ok(CpuTime { user: need(user, "user")? as f64 / hz, system: need(system, "system")? as f64 / hz })
}

/// CFS bandwidth counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    /// Seconds.
    pub throttled_time: f64,
}

/// v1 `cpu.stat` (cpu controller): `nr_periods`, `nr_throttled`, `throttled_time` in ns.
pub fn parse_v1_cpu_stat(text: &str) -> Result<Throttling, ParseError> {
    let [p, t, time] = scan_keys(text, ["nr_periods", "nr_throttled", "throttled_time"])?;
    Ok(Throttling {
        periods: need(p, "nr_periods")?,
        throttled_periods: need(t, "nr_throttled")?,
        throttled_time: need(time, "throttled_time")? as f64 / 1e9,
    })
}

/// v2 `cpu.stat`: CPU time always (`user_usec`, `system_usec`); throttling only when the cpu
/// controller is enabled for the group, which is when the kernel writes `nr_periods`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct V2CpuStat {
    pub time: CpuTime,
    pub throttling: Option<Throttling>,
}

pub fn parse_v2_cpu_stat(text: &str) -> Result<V2CpuStat, ParseError> {
    let [user, system, periods, throttled, throttled_usec] =
        scan_keys(text, ["user_usec", "system_usec", "nr_periods", "nr_throttled", "throttled_usec"])?;
    let time = CpuTime {
        user: need(user, "user_usec")? as f64 / 1e6,
        system: need(system, "system_usec")? as f64 / 1e6,
    };
    let throttling = match periods {
        Some(periods) => Some(Throttling {
            periods,
            throttled_periods: need(throttled, "nr_throttled")?,
            throttled_time: need(throttled_usec, "throttled_usec")? as f64 / 1e6,
        }),
        None => None,
    };
    Ok(V2CpuStat { time, throttling })
}

/// The `memory.stat` values the agent emits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryStat {
    pub inactive_file: u64,
    pub rss: u64,
    pub file: u64,
}

/// v1 `memory.stat`: the hierarchical `total_*` keys, so a pod's numbers include its containers.
pub fn parse_v1_memory_stat(text: &str) -> Result<MemoryStat, ParseError> {
    let [inactive, rss, file] = scan_keys(text, ["total_inactive_file", "total_rss", "total_cache"])?;
    Ok(MemoryStat {
        inactive_file: need(inactive, "total_inactive_file")?,
        rss: need(rss, "total_rss")?,
        file: need(file, "total_cache")?,
    })
}

/// v2 `memory.stat` (always hierarchical).
pub fn parse_v2_memory_stat(text: &str) -> Result<MemoryStat, ParseError> {
    let [inactive, rss, file] = scan_keys(text, ["inactive_file", "anon", "file"])?;
    Ok(MemoryStat {
        inactive_file: need(inactive, "inactive_file")?,
        rss: need(rss, "anon")?,
        file: need(file, "file")?,
    })
}

/// The kubelet's working set: usage minus inactive page cache, never below zero.
pub fn working_set(usage: u64, stat: &MemoryStat) -> u64 {
    usage.saturating_sub(stat.inactive_file)
}

/// `oom_kill` from v1 `memory.oom_control` or v2 `memory.events`.
pub fn parse_oom_kills(text: &str) -> Result<u64, ParseError> {
    let [kills] = scan_keys(text, ["oom_kill"])?;
    need(kills, "oom_kill")
}

/// Read and write counters of one block device (`MAJ:MIN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIo {
    /// Shared: it becomes the `system.device` attribute of two points (read and write).
    pub device: Arc<str>,
    pub read: u64,
    pub write: u64,
}

/// v1 `blkio.throttle.io_service_bytes_recursive` or `..._io_serviced_recursive`:
/// `MAJ:MIN Op value` lines, then a `Total value` line that is skipped. Devices keep the order of
/// their first line.
pub fn parse_v1_blkio(text: &str) -> Result<Vec<DeviceIo>, ParseError> {
    let mut out: Vec<DeviceIo> = Vec::new();
    for line in lines(text) {
        if line.starts_with("Total") {
            continue;
        }
        let mut parts = line.split_ascii_whitespace();
        let (Some(device), Some(op), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseError::BadLine(line.to_owned()));
        };
        if !is_device(device) {
            return Err(ParseError::BadLine(line.to_owned()));
        }
        let slot = match op {
            "Read" => 0,
            "Write" => 1,
            // Sync, Async, Discard and the per-device Total repeat Read and Write.
            _ => continue,
        };
        let value = number(op, value)?;
        let entry = match out.iter_mut().position(|d| &*d.device == device) {
            Some(i) => &mut out[i],
            None => {
                out.push(DeviceIo { device: Arc::from(device), read: 0, write: 0 });
                out.last_mut().ok_or(ParseError::Empty)?
            }
        };
        if slot == 0 {
            entry.read = value;
        } else {
            entry.write = value;
        }
    }
    Ok(out)
}

fn is_device(s: &str) -> bool {
    match s.split_once(':') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// v2 `io.stat`, split into bytes and operations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IoStat {
    pub bytes: Vec<DeviceIo>,
    pub operations: Vec<DeviceIo>,
}

/// v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..` per device.
pub fn parse_v2_io_stat(text: &str) -> Result<IoStat, ParseError> {
    let mut out = IoStat::default();
    for line in lines(text) {
        let mut parts = line.split_ascii_whitespace();
        let device =
            parts.next().filter(|d| is_device(d)).ok_or_else(|| ParseError::BadLine(line.to_owned()))?;
        let (mut rbytes, mut wbytes, mut rios, mut wios) = (None, None, None, None);
        for kv in parts {
            let (k, v) = kv.split_once('=').ok_or_else(|| ParseError::BadLine(line.to_owned()))?;
            let slot = match k {
                "rbytes" => &mut rbytes,
                "wbytes" => &mut wbytes,
                "rios" => &mut rios,
                "wios" => &mut wios,
                _ => continue,
            };
            *slot = Some(number(k, v)?);
        }
        let device: Arc<str> = Arc::from(device);
        out.bytes.push(DeviceIo {
            device: device.clone(),
            read: rbytes.ok_or(ParseError::MissingKey("rbytes"))?,
            write: wbytes.ok_or(ParseError::MissingKey("wbytes"))?,
        });
        out.operations.push(DeviceIo {
            device,
            read: rios.ok_or(ParseError::MissingKey("rios"))?,
            write: wios.ok_or(ParseError::MissingKey("wios"))?,
        });
    }
    Ok(out)
}

/// Total stall time of one PSI file, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    pub some: f64,
    /// Absent from `cpu.pressure` before Linux 5.13.
    pub full: Option<f64>,
}

/// `cpu.pressure`, `memory.pressure`, `io.pressure`: `total=` is in microseconds.
pub fn parse_pressure(text: &str) -> Result<Pressure, ParseError> {
    let mut some = None;
    let mut full = None;
    for line in lines(text) {
        let slot = match split_space(line) {
            Some(("some", _)) => &mut some,
            Some(("full", _)) => &mut full,
            _ => return Err(ParseError::BadLine(line.to_owned())),
        };
        // The kernel writes `total=` last; any field is accepted all the same.
        let last = line.bytes().rposition(|b| b == b' ').map_or(line, |at| &line[at + 1..]);
        let total = match last.strip_prefix("total=") {
            Some(total) => total,
            None => line
                .split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix("total="))
                .ok_or(ParseError::MissingKey("total"))?,
        };
        *slot = Some(number("total", total)? as f64 / 1e6);
    }
    Ok(Pressure { some: some.ok_or(ParseError::MissingKey("some"))?, full })
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-ID:controller-list:cgroup-path`. The v2
/// line is `0::<path>`; a v1 line lists its controllers (`cpu,cpuacct`) or names its hierarchy
/// (`name=systemd`). The path is relative to the reader's cgroup namespace: `/` at its root,
/// `/../<name>` for a cgroup beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcCgroup<'a> {
    pub hierarchy: u32,
    pub controllers: &'a str,
    pub path: &'a str,
}

impl ProcCgroup<'_> {
    /// The v2 (unified) hierarchy's line.
    pub fn is_unified(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers.split(',').any(|c| c == name)
    }
}

/// Parses `/proc/<pid>/cgroup`, one [`ProcCgroup`] per line in the kernel's order.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup<'_>>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || ParseError::at_line(n + 1, format!("`{line}` is not `id:controllers:path`"));
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hierarchy = hierarchy.parse().map_err(|_| bad())?;
        if !path.starts_with('/') {
            return Err(bad());
        }
        out.push(ProcCgroup { hierarchy, controllers, path });
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod adjust_tests {
    use super::adjust_cputime;

    #[test]
    fn the_split_always_sums_to_the_precise_total() {
        // Samples say 3:1, their sum (0.62 s) overshoots the exact total (0.555 s).
        let (u, s) = adjust_cputime(555_000_000, 465_000_000, 155_000_000, (0, 0));
        assert_eq!(u + s, 555_000_000);
        assert_eq!(s, 138_750_000);
        assert_eq!((adjust_cputime(10, 0, 5, (0, 0))), (0, 10));
        assert_eq!((adjust_cputime(10, 5, 0, (0, 0))), (10, 0));
    }

    #[test]
    fn neither_mode_goes_backwards_when_the_sample_ratio_shifts() {
        let first = adjust_cputime(1_000, 1, 1, (0, 0));
        assert_eq!(first, (500, 500));
        // Now the samples say almost all user: system may not drop below 500.
        let second = adjust_cputime(1_100, 99, 1, first);
        assert_eq!(second, (600, 500));
        // And back to all system: user may not drop below 600.
        let third = adjust_cputime(1_200, 0, 1, second);
        assert_eq!(third, (600, 600));
    }

    #[test]
    fn a_total_below_the_last_split_starts_over() {
        assert_eq!(adjust_cputime(100, 1, 1, (500, 500)), (50, 50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines_of_v1_hybrid_and_v2() {
        let hybrid = "12:cpu,cpuacct:/kubepods/pod1/abc\n1:name=systemd:/a:b\n0::/x\n";
        assert_eq!(
            parse_proc_cgroup(hybrid).unwrap(),
            vec![
                ProcCgroup { hierarchy: 12, controllers: "cpu,cpuacct", path: "/kubepods/pod1/abc" },
                ProcCgroup { hierarchy: 1, controllers: "name=systemd", path: "/a:b" },
                ProcCgroup { hierarchy: 0, controllers: "", path: "/x" },
            ]
        );
        let lines = parse_proc_cgroup(hybrid).unwrap();
        assert!(lines[0].has_controller("cpuacct") && !lines[0].has_controller("cpu,cpuacct"));
        assert!(!lines[0].is_unified() && lines[2].is_unified());
        assert_eq!(parse_proc_cgroup("0::/../crio-1.scope\n").unwrap()[0].path, "/../crio-1.scope");
        assert_eq!(parse_proc_cgroup(""), Err(ParseError::Empty));
        assert_eq!(
            parse_proc_cgroup("garbage"),
            Err(ParseError::at_line(1, "`garbage` is not `id:controllers:path`"))
        );
        assert!(matches!(parse_proc_cgroup("0::/\nx::/\n"), Err(ParseError::AtLine { line: 2, .. })));
        assert!(parse_proc_cgroup("0::relative").is_err());
    }

    #[test]
    fn cpuacct_usage_pair_is_nanoseconds_to_seconds() {
        let t = parse_cpuacct_usage_pair("1500000000\n", "250000000\n").unwrap();
        assert_eq!(t, CpuTime { user: 1.5, system: 0.25 });
    }

    #[test]
    fn cpuacct_stat_is_ticks_to_seconds() {
        let t = parse_cpuacct_stat("user 250\nsystem 75\n", 100).unwrap();
        assert_eq!(adjust_cputime(1_000, 0, 0, (0, 0)), (1_000, 0));
        assert_eq!(t, CpuTime { user: 2.5, system: 0.75 });
        assert_eq!(parse_cpuacct_stat("user 250\n", 100), Err(ParseError::MissingKey("system")));
    }

    #[test]
    fn v1_cpu_stat_throttled_time_is_nanoseconds() {
        let t = parse_v1_cpu_stat(
            "nr_periods 120\nnr_throttled 7\nthrottled_time 3500000000\nnr_bursts 0\nburst_time 0\n",
        )
        .unwrap();
        assert_eq!(t, Throttling { periods: 120, throttled_periods: 7, throttled_time: 3.5 });
        assert_eq!(
            parse_v1_cpu_stat("nr_periods 1\nthrottled_time 0\n"),
            Err(ParseError::MissingKey("nr_throttled"))
        );
    }

    #[test]
    fn v2_cpu_stat_is_microseconds_and_throttling_needs_the_cpu_controller() {
        let full = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 50\nnr_throttled 4\nthrottled_usec 2500000\nnr_bursts 0\nburst_usec 0\n";
        let s = parse_v2_cpu_stat(full).unwrap();
        assert_eq!(s.time, CpuTime { user: 1.0, system: 0.234567 });
        assert_eq!(s.throttling, Some(Throttling { periods: 50, throttled_periods: 4, throttled_time: 2.5 }));
        let core = "usage_usec 10\nuser_usec 6\nsystem_usec 4\n";
        assert_eq!(parse_v2_cpu_stat(core).unwrap().throttling, None);
        assert_eq!(
            parse_v2_cpu_stat("usage_usec 10\nuser_usec 6\n"),
            Err(ParseError::MissingKey("system_usec"))
        );
        assert_eq!(
            parse_v2_cpu_stat("user_usec 6\nsystem_usec 4\nnr_periods 1\nnr_throttled 0\n"),
            Err(ParseError::MissingKey("throttled_usec"))
        );
    }

    #[test]
    fn memory_stat_v1_uses_total_keys_and_v2_plain_keys() {
        let v1 =
            "cache 1\nrss 2\ninactive_file 3\ntotal_cache 40960\ntotal_rss 81920\ntotal_inactive_file 8192\n";
        assert_eq!(
            parse_v1_memory_stat(v1).unwrap(),
            MemoryStat { inactive_file: 8192, rss: 81920, file: 40960 }
        );
        assert_eq!(
            parse_v1_memory_stat("cache 1\nrss 2\n"),
            Err(ParseError::MissingKey("total_inactive_file"))
        );
        let v2 = "anon 4096\nfile 12288\nkernel 100\ninactive_file 8192\nactive_file 4096\n";
        assert_eq!(
            parse_v2_memory_stat(v2).unwrap(),
            MemoryStat { inactive_file: 8192, rss: 4096, file: 12288 }
        );
        assert_eq!(parse_v2_memory_stat("file 1\ninactive_file 1\n"), Err(ParseError::MissingKey("anon")));
    }

    #[test]
    fn working_set_saturates_at_zero() {
        let stat = MemoryStat { inactive_file: 5000, rss: 0, file: 0 };
        assert_eq!(working_set(12000, &stat), 7000);
        assert_eq!(working_set(3000, &stat), 0);
    }

    #[test]
    fn limits_unlimited_are_none() {
        assert_eq!(parse_v1_memory_limit("9223372036854771712\n"), Ok(None));
        assert_eq!(parse_v1_memory_limit("268435456\n"), Ok(Some(268435456)));
        assert_eq!(parse_max_or_number("max\n"), Ok(None));
        assert_eq!(parse_max_or_number("4096\n"), Ok(Some(4096)));
        assert_eq!(
            parse_max_or_number("lots\n"),
            Err(ParseError::BadNumber { key: "value".into(), text: "lots".into() })
        );
        assert_eq!(parse_single(""), Err(ParseError::Empty));
    }

    #[test]
    fn oom_kills_from_v1_oom_control_and_v2_events() {
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), Ok(3));
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 2\noom 2\noom_kill 1\noom_group_kill 0\n"), Ok(1));
        assert_eq!(
            parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n"),
            Err(ParseError::MissingKey("oom_kill"))
        );
    }

    #[test]
    fn v1_blkio_reads_read_and_write_and_skips_totals() {
        let text =
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 12288\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 12288\n\
                    253:1 Read 512\n253:1 Write 0\n253:1 Total 512\nTotal 12800\n";
        assert_eq!(
            parse_v1_blkio(text).unwrap(),
            vec![
                DeviceIo { device: "8:0".into(), read: 4096, write: 8192 },
                DeviceIo { device: "253:1".into(), read: 512, write: 0 },
            ]
        );
        assert_eq!(parse_v1_blkio("Total 0\n").unwrap(), vec![]);
        assert!(matches!(parse_v1_blkio("sda Read 1\n"), Err(ParseError::BadLine(_))));
    }

    #[test]
    fn v2_io_stat_splits_bytes_and_operations() {
        let text = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n";
        let s = parse_v2_io_stat(text).unwrap();
        assert_eq!(s.bytes, vec![DeviceIo { device: "8:16".into(), read: 1459200, write: 314773504 }]);
        assert_eq!(s.operations, vec![DeviceIo { device: "8:16".into(), read: 192, write: 353 }]);
        assert_eq!(parse_v2_io_stat("8:16 rbytes=1 rios=1 wios=1\n"), Err(ParseError::MissingKey("wbytes")));
    }

    #[test]
    fn lines_skip_blank_ones_and_trim_ascii_whitespace_with_or_without_a_final_newline() {
        let got: Vec<&str> = lines("a 1\n\n  b 2 \r\n\t\nc 3").collect();
        assert_eq!(got, vec!["a 1", "b 2", "c 3"]);
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\n\n").count(), 0);
        assert_eq!(scan_keys("x 1\ny 2\n", ["y", "z"]), Ok([Some(2), None]));
        assert_eq!(scan_keys("x 1\nnospace\n", ["x"]), Err(ParseError::BadLine("nospace".into())));
    }

    #[test]
    fn pressure_total_is_found_wherever_it_stands() {
        let p = parse_pressure("some total=250 avg10=0.00\nfull avg10=0.00 total=125\n").expect("parse");
        assert_eq!(p, Pressure { some: 0.00025, full: Some(0.000125) });
        assert_eq!(parse_pressure("some avg10=0.00\n"), Err(ParseError::MissingKey("total")));
        assert!(parse_pressure("none total=1\n").is_err());
    }

    #[test]
    fn pressure_total_is_microseconds_and_full_may_be_absent() {
        let text = "some avg10=0.00 avg60=0.10 avg300=0.05 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1250000\n";
        assert_eq!(parse_pressure(text).unwrap(), Pressure { some: 2.5, full: Some(1.25) });
        let old_cpu = "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n";
        assert_eq!(parse_pressure(old_cpu).unwrap(), Pressure { some: 0.000042, full: None });
        assert_eq!(parse_pressure("full avg10=0 total=1\n"), Err(ParseError::MissingKey("some")));
        assert_eq!(parse_pressure("some avg10=0.00\n"), Err(ParseError::MissingKey("total")));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(scan_keys("\u{0}\u{1}garbage###!!\n", ["x"]), Err(ParseError::BadLine(_))));
        assert!(parse_v1_memory_stat("total_rss twelve\n").is_err());
        assert!(parse_pressure("\n\nsome total=-1\n").is_err());
    }
}
