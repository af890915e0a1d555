//! The tables and data files: `node.md`, `node.csv`, `node.dat`, the per-file table.

use super::*;

pub(crate) struct Row {
    pub(crate) n: usize,
    pub(crate) agent: AgentResult,
    pub(crate) floor: f64,
    pub(crate) naive: f64,
    pub(crate) netdata: Option<(f64, usize)>,
    /// The agent with the lean config, and the pread floor of the files it reads.
    pub(crate) lean: Option<(AgentResult, f64)>,
    pub(crate) protocols: Option<Added>,
}

/// What the TCP/UDP counters add per pod and sweep (µs): the whole agent's and the sweep
/// thread's difference to the agent without them, and the pread floor of their files.
pub(crate) struct Added {
    pub(crate) whole: f64,
    pub(crate) sweep_thread: f64,
    pub(crate) floor: f64,
}

impl Added {
    /// The difference of two runs cannot be below what the kernel alone spends on the files
    /// the counters read: when it is, the runs' noise is larger than the counters' cost, and
    /// the figure is no result (short or loaded runs: the smoke run's 3 sweeps of a debug build).
    pub(crate) fn noise_note(&self) -> &'static str {
        if self.whole < self.floor {
            " (below the files' floor: noise, not a result)"
        } else {
            ""
        }
    }
}

pub(crate) fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let mode = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "hybrid cgroups"
    } else {
        "cgroup v1"
    };
    // The agent's discovery walks this whole tree, the host's own cgroups too: part of its
    // fixed cost per sweep, so the table says how many there were.
    let walked = if mode == "hybrid cgroups" { "/sys/fs/cgroup/unified" } else { "/sys/fs/cgroup" };
    format!("{cpu}, {cores} cores, kernel {kernel}, {mode}; {} cgroups of the host's own in the tree the agent walks", count_dirs(Path::new(walked)))
}

/// Directories under `dir` (not counting it), not following symlinks.
pub(crate) fn count_dirs(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + count_dirs(&e.path()))
        .sum()
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
pub(crate) fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A cost over its pread floor. Below 1.0 the floor was mismeasured (nothing reads the same
/// files for less than the kernel's own cost of them), so such a cell is marked invalid, never
/// read as a target met.
pub(crate) fn ratio(cost: f64, floor: f64) -> String {
    let r = cost / floor;
    if r < 1.0 {
        format!("{r:.2}× (invalid: below the floor)")
    } else {
        format!("{r:.2}×")
    }
}

/// What moves the floor, for the table: memory cgroups the kernel still holds that no directory
/// shows (dying ones, whose pages are still charged; each makes the memory files dearer) and the
/// cadence the floor was read at.
pub(crate) fn floor_conditions() -> String {
    let kernel = fs::read_to_string("/proc/cgroups")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&"memory"))
                    .then(|| f.get(2).and_then(|n| n.parse::<usize>().ok()))
                    .flatten()
            })
        })
        .unwrap_or(0);
    let visible = 1 + count_dirs(Path::new("/sys/fs/cgroup/memory"));
    format!(
        "floor read with `pread` of kept-open files at the agent's 1 s cadence, between its sweeps; memory cgroups: {kernel} in the kernel, {visible} visible ({} dying)",
        kernel.saturating_sub(visible)
    )
}

pub(crate) fn write_results(
    args: &Args,
    machine: &str,
    rows: &[Row],
    podman: Option<f64>,
) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}. {} s per measurement, interval 1 s.\n", args.sweeps);
    let _ = writeln!(md, "Floor conditions: {}. A ratio below 1.0 is marked invalid.\n", floor_conditions());
    let _ = writeln!(
        md,
        "CPU per container-sweep (µs, user + system); podometer ratios are to the pread floor of the same run.\n"
    );
    let _ = writeln!(
        md,
        "| N | pread floor | naive open+read+close | podometer | containers read | ratio | user | system | sweep thread | I/O threads | netdata cgroups | RSS MiB | fds | threads | OTLP bytes/sweep |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut csv = String::from(
        "n,agent_containers,floor_us,naive_us,agent_us,agent_user_us,agent_system_us,sweep_thread_us,io_threads_us,netdata_us,netdata_cgroups,podman_us,rss_mib,fds,threads,bytes_per_sweep,lean_us,lean_floor_us,lean_rss_mib\n",
    );
    let mut dat = String::from("# n floor naive podometer netdata podman podometer-lean\n");
    for r in rows {
        let a = &r.agent;
        let nd = r.netdata.map(|(v, c)| format!("{v:.1} ({c} cgroups)")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {:.0} |",
            r.n,
            r.floor,
            r.naive,
            a.per_container_sweep,
            a.containers,
            ratio(a.per_container_sweep, r.floor),
            a.user,
            a.system,
            a.sweep_thread,
            a.io_threads,
            nd,
            a.rss_mib,
            a.fds,
            a.threads,
            a.bytes_per_sweep
        );
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "NaN".into());
        let _ = writeln!(
            csv,
            "{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{},{},{},{:.1},{},{},{:.0},{},{},{}",
            r.n,
            a.containers,
            r.floor,
            r.naive,
            a.per_container_sweep,
            a.user,
            a.system,
            a.sweep_thread,
            a.io_threads,
            opt(r.netdata.map(|x| x.0)),
            r.netdata.map(|x| x.1).unwrap_or(0),
            opt(podman),
            a.rss_mib,
            a.fds,
            a.threads,
            a.bytes_per_sweep,
            opt(r.lean.as_ref().map(|l| l.0.per_container_sweep)),
            opt(r.lean.as_ref().map(|l| l.1)),
            opt(r.lean.as_ref().map(|l| l.0.rss_mib)),
        );
        let _ = writeln!(
            dat,
            "{} {:.2} {:.2} {:.2} {} {} {}",
            r.n,
            r.floor,
            r.naive,
            a.per_container_sweep,
            opt(r.netdata.map(|x| x.0)),
            opt(podman),
            opt(r.lean.as_ref().map(|l| l.0.per_container_sweep)),
        );
    }
    if let Some(p) = podman {
        let _ = writeln!(
            md,
            "\n`podman stats --interval 1` streaming over {} Podman containers: {p:.1} µs per container-sample.",
            args.podman
        );
    }
    if rows.iter().any(|r| r.lean.is_some()) {
        let config = args.lean_config.as_deref().unwrap_or(Path::new("?")).display().to_string();
        let _ = writeln!(
            md,
            "\nLean profile (`{config}`: the same agent, `skip` leaving pressure, block I/O, `memory.stat` and throttling unread), on the same node in the same run; its floor is the pread floor of the files it still reads.\n"
        );
        let _ = writeln!(
            md,
            "| N | lean floor | podometer lean | ratio | sweep thread | I/O threads | RSS MiB | netdata ÷ lean | podman ÷ lean |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            let Some((l, floor)) = &r.lean else { continue };
            let times = |other: Option<f64>| {
                other.map(|v| format!("{:.2}×", v / l.per_container_sweep)).unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                md,
                "| {} | {floor:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                r.n,
                l.per_container_sweep,
                ratio(l.per_container_sweep, *floor),
                l.sweep_thread,
                l.io_threads,
                l.rss_mib,
                times(r.netdata.map(|x| x.0)),
                times(podman),
            );
        }
    }
    if rows.iter().any(|r| r.protocols.is_some()) {
        let config = args.protocols_off_config.as_deref().unwrap_or(Path::new("?")).display().to_string();
        let _ = writeln!(
            md,
            "\nTCP/UDP counters (default set: `{}` once per pod): what they add per pod-sweep (µs), the agent with them (the default) minus the agent without them (`{config}`) on the same node in the same run, beside the pread floor of those files measured with the agent.\n",
            PROTOCOL_FILES.join("`, `")
        );
        let _ = writeln!(
            md,
            "| N | pods | floor of the files | added, whole agent | ratio | added, sweep thread | ratio |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for r in rows {
            let Some(p) = &r.protocols else { continue };
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1}{} | {} | {:.1} | {} |",
                r.n,
                r.n.div_ceil(3),
                p.floor,
                p.whole,
                p.noise_note(),
                ratio(p.whole, p.floor),
                p.sweep_thread,
                ratio(p.sweep_thread, p.floor)
            );
        }
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let _ = writeln!(
            md,
            "\nFlatness: podometer at N={} costs {:.2}× its per-container cost at N={}.",
            last.n,
            last.agent.per_container_sweep / first.agent.per_container_sweep,
            first.n
        );
    }
    let suffix = &args.label;
    fs::write(args.out.join(format!("node{suffix}.md")), md)?;
    fs::write(args.out.join(format!("node{suffix}.csv")), csv)?;
    fs::write(args.out.join(format!("node{suffix}.dat")), dat)?;
    Ok(())
}

/// The kernel's cost of each file, per read, at each size: the lean profile's table.
pub(crate) fn write_per_file(
    args: &Args,
    machine: &str,
    per_file: &[(usize, PerFile)],
) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}. CPU (µs, user + system) of one `pread` at offset 0 of a kept-open file, by file; mean over every cgroup of the node and {} sweeps.\n", args.sweeps);
    let sizes: Vec<usize> = per_file.iter().map(|(n, _)| *n).collect();
    let _ = write!(md, "| file |");
    for n in &sizes {
        let _ = write!(md, " N={n} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---|".repeat(sizes.len()));
    if let Some((_, first)) = per_file.first() {
        for (label, _, _) in first {
            let _ = write!(md, "| `{label}` |");
            for (_, files) in per_file {
                let v = files.iter().find(|(l, _, _)| l == label).map(|(_, v, _)| *v);
                let _ = write!(md, " {} |", v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()));
            }
            let _ = writeln!(md);
        }
    }
    fs::write(args.out.join(format!("node-files{}.md", args.label)), md)?;
    Ok(())
}
