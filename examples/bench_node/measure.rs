//! Measuring a process (CPU from `/proc/<pid>/stat`, per thread, RSS, fds), the agent over the
//! node, and the readers beside it (the pread floor and the naive open + read + close).

use super::*;

pub(crate) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in seconds from a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` text.
pub(crate) fn stat_cpu(text: &str) -> Option<(f64, f64)> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / clk_tck(), stime / clk_tck()))
}

pub(crate) fn process_cpu(pid: u32) -> anyhow::Result<(f64, f64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat_cpu(&text).context("parse /proc/<pid>/stat")
}

/// CPU seconds by thread name, summed, from each thread's `schedstat` (nanoseconds, where
/// `stat` counts 10 ms ticks).
pub(crate) fn thread_cpu(pid: u32, filter: impl Fn(&str) -> bool) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
        if !filter(&comm) {
            continue;
        }
        let ns: Option<f64> = fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
        if let Some(ns) = ns {
            *out.entry(comm).or_insert(0.0) += ns / 1e9;
        }
    }
    out
}

/// Threads of the process (`thread_cpu` sums by name, and two I/O threads share one).
pub(crate) fn task_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| tasks.count()).unwrap_or(0)
}

pub(crate) fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .unwrap_or(0)
}

pub(crate) fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct AgentResult {
    /// Containers the agent delivered per sweep (ours and any other on the machine).
    pub(crate) containers: usize,
    pub(crate) per_container_sweep: f64,
    pub(crate) user: f64,
    pub(crate) system: f64,
    /// Per container-sweep, by thread kind: the sweep thread (sources, processors) and the
    /// I/O threads (encode, compress, export).
    pub(crate) sweep_thread: f64,
    pub(crate) io_threads: f64,
    pub(crate) rss_mib: f64,
    pub(crate) fds: usize,
    pub(crate) threads: usize,
    pub(crate) bytes_per_sweep: f64,
}

/// The agent over `args.sweeps` sweeps of the containers `ids` (the synthetic node's, or an
/// engine's real ones; `tag` names its log), with its built-in configuration or `config`.
/// With `floor`, the pread floor of that node is measured over the same window, between the
/// agent's sweeps (see [`measure_reader`]): agent and floor see the same machine, so their ratio
/// does not move with what the rest of the machine did between two measurements.
pub(crate) fn measure_agent(
    args: &Args,
    ids: &[String],
    tag: &str,
    receiver: &Receiver,
    config: Option<&Path>,
    floor: Option<&Node>,
) -> anyhow::Result<(AgentResult, Option<ReaderCost>)> {
    let n = ids.len();
    let kind =
        config.and_then(|c| c.file_stem()).map(|s| format!("-{}", s.to_string_lossy())).unwrap_or_default();
    let log = args.out.join(format!("agent-{tag}{n}{kind}{}.log", args.label));
    let child = Command::new(&args.agent)
        .arg("run")
        .args(config.map(|c| [Path::new("-c"), c]).into_iter().flatten())
        .env("PODOMETER_INTERVAL", "1s")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port))
        .env("NO_COLOR", "1")
        .envs(args.agent_env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {}", args.agent.display()))?;
    let agent = Killed(child);
    let pid = agent.0.id();
    // Warm up: discovery done, every container delivered, two more sweeps.
    let deadline = Instant::now() + Duration::from_secs(90);
    let start_requests = receiver.requests.load(Ordering::Relaxed);
    receiver.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let ours = |r: &Receiver| {
        let seen = r.seen.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter(|id| seen.contains(*id)).count()
    };
    loop {
        let got = receiver.requests.load(Ordering::Relaxed) - start_requests;
        // 98 %: at N = 1,000 the hard open-file limit here (20,000) leaves a few cgroups unread
        // (the agent says so in its log); the table shows how many it delivered.
        if got >= 3 && ours(receiver) * 100 >= n * 98 {
            // Two more sweeps past the one that completed the set.
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent delivered {got} requests with {} of our {n} containers in 90 s; see {}",
                ours(receiver),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (u0, s0) = process_cpu(pid)?;
    let t0 = thread_cpu(pid, |_| true);
    let b0 = receiver.bytes.load(Ordering::Relaxed);
    let c0 = receiver.container_resources.load(Ordering::Relaxed);
    receiver.clear_sweeps();
    let w0 = Instant::now();
    // BENCH_NODE_PERF=DIR: a CPU profile of the agent over the measured sweeps (perf's software
    // clock; it adds a little to the agent's CPU, so profile runs are not the reported ones).
    let perf = std::env::var_os("BENCH_NODE_PERF").map(|dir| {
        Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-g", "-p", &pid.to_string(), "-o"])
            .arg(Path::new(&dir).join(format!("perf-{n}.data")))
            .args(["--", "sleep", &args.sweeps.to_string()])
            .stdout(Stdio::null())
            .spawn()
    });
    // BENCH_NODE_INSPECT=COMMAND: a shell command run over the measured sweeps with the agent's
    // pid in AGENT_PID and N in NODE_N (smaps, strace, heaptrack attach); like the profile, it
    // adds to the agent's cost, so inspection runs are not the reported ones.
    let inspect = std::env::var_os("BENCH_NODE_INSPECT").map(|command| {
        Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("AGENT_PID", pid.to_string())
            .env("NODE_N", n.to_string())
            .spawn()
    });
    let floor = std::thread::scope(|scope| {
        // Two sweeps fewer than the window, so that the reader is done within it.
        let reader = floor.map(|node| {
            scope.spawn(move || {
                measure_reader(
                    node,
                    args.sweeps.saturating_sub(2).max(1),
                    ReadMode::Pread,
                    Some(&receiver.requests),
                )
            })
        });
        std::thread::sleep(Duration::from_secs(args.sweeps));
        reader
            .map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the floor reader panicked"))))
            .transpose()
    })?;
    if let Some(Ok(mut i)) = inspect {
        let _ = i.wait();
    }
    let (u1, s1) = process_cpu(pid)?;
    let t1 = thread_cpu(pid, |_| true);
    if let Some(Ok(mut p)) = perf {
        let _ = p.wait();
    }
    let wall = w0.elapsed().as_secs_f64();
    let b1 = receiver.bytes.load(Ordering::Relaxed);
    let c1 = receiver.container_resources.load(Ordering::Relaxed);
    // The agent sweeps on a fixed 1 s cadence. It reads every container on the machine, ours
    // and any other: its cost is divided by the containers it delivered.
    let sweeps = wall.round().max(1.0);
    // A sweep in flight at either end of the window would move a count over the wall clock by
    // one sweep's worth (a third at 3 sweeps): count by the sweeps' own timestamps instead.
    let read = receiver.containers_per_sweep().unwrap_or(0) as usize;
    if read * 10 < n * 8 {
        bail!(
            "the agent delivered {read} containers per sweep ({} in {sweeps} s), fewer than our {n}; see {}",
            c1 - c0,
            log.display()
        );
    }
    let per = |secs: f64| secs * 1e6 / (sweeps * read as f64);
    let delta = |name: &dyn Fn(&str) -> bool| -> f64 {
        t1.iter().filter(|(k, _)| name(k)).map(|(k, v)| v - t0.get(k).copied().unwrap_or(0.0)).sum()
    };
    // The total from the threads' schedstat (ns) rather than the process's stat (10 ms ticks,
    // too coarse at N=100); a thread that ended inside the window would be missed, so the stat
    // total is the floor under it.
    let threads_total = delta(&|_| true);
    let stat_total = (u1 - u0) + (s1 - s0);
    let total = if threads_total + 0.02 >= stat_total { threads_total } else { stat_total };
    let result = AgentResult {
        containers: read,
        per_container_sweep: per(total),
        user: per(u1 - u0),
        system: per(s1 - s0),
        sweep_thread: per(delta(&|k| k == "podometer-sweep")),
        io_threads: per(delta(&|k| k == "podometer-io")),
        rss_mib: status_kib(pid, "VmRSS:") as f64 / 1024.0,
        fds: open_fds(pid),
        threads: task_count(pid),
        bytes_per_sweep: (b1 - b0) as f64 / sweeps,
    };
    Ok((result, floor))
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum ReadMode {
    Pread,
    OpenReadClose,
}

/// What reading the agent's files costs the kernel, per container-sweep (this thread's CPU time,
/// user + system), and for `Pread` each file's cost per read, by file.
pub(crate) struct ReaderCost {
    pub(crate) per_container_sweep: f64,
    pub(crate) per_file: PerFile,
}

/// (file, µs per read, copies read per sweep).
pub(crate) type PerFile = Vec<(String, f64, usize)>;

/// `paced_by`: the receiver's request count while the agent runs; each sweep then starts 400 ms
/// after one of the agent's requests arrives, so that the reader works in the agent's idle half
/// of each second, at its cadence, under the same load from the rest of the machine. Without it
/// (the naive reader, run on its own) sweeps are 200 ms apart.
pub(crate) fn measure_reader(
    node: &Node,
    sweeps: u64,
    mode: ReadMode,
    paced_by: Option<&AtomicU64>,
) -> anyhow::Result<ReaderCost> {
    // Grouped by file so that one clock reading covers all the cgroups' copies of a file.
    // The extra files would take the floor past a 20,000 descriptor limit at N = 1,000.
    let extra = mode == ReadMode::Pread && node.containers() <= 500;
    let mut groups: BTreeMap<String, (Vec<PathBuf>, Vec<File>, f64)> = BTreeMap::new();
    for (label, path) in node.sweep_files(extra) {
        let g = groups.entry(label).or_default();
        if mode == ReadMode::Pread {
            g.1.push(File::open(&path)?);
        }
        g.0.push(path);
    }
    let agent_set: std::collections::BTreeSet<String> =
        node.sweep_files(false).into_iter().map(|(l, _)| l).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_request = paced_by.map(|r| r.load(Ordering::Relaxed));
    for _ in 0..sweeps {
        if let (Some(requests), Some(last)) = (paced_by, last_request.as_mut()) {
            let deadline = Instant::now() + Duration::from_millis(2500);
            while requests.load(Ordering::Relaxed) == *last && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            *last = requests.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(400));
        }
        for (_, (paths, files, spent)) in groups.iter_mut() {
            let start = thread_cpu_now();
            match mode {
                ReadMode::Pread => {
                    for f in files.iter() {
                        let _ = f.read_at(&mut buf, 0)?;
                    }
                }
                ReadMode::OpenReadClose => {
                    for p in paths.iter() {
                        let mut f = File::open(p)?;
                        let _ = f.read(&mut buf)?;
                    }
                }
            }
            *spent += thread_cpu_now() - start;
        }
        if paced_by.is_none() {
            // Between sweeps, like the agent: caches cool down a little.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let total: f64 = groups.iter().filter(|(l, _)| agent_set.contains(*l)).map(|(_, g)| g.2).sum();
    let per_file = groups
        .iter()
        .map(|(l, (paths, _, spent))| {
            (l.clone(), spent * 1e6 / (sweeps as f64 * paths.len() as f64), paths.len())
        })
        .collect();
    Ok(ReaderCost { per_container_sweep: total * 1e6 / (sweeps as f64 * node.containers() as f64), per_file })
}

pub(crate) fn thread_cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
