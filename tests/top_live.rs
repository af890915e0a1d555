//! `podometer top` for real, in tmux at 80×30: rows appear for a Podman pod, sorting by CPU
//! and by name changes the order, `q` exits 0 and SIGTERM too, and the screen is restored; and
//! `top` exits when its terminal disappears (the tmux server killed under it).
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::podman::{podman, podman_available, PodmanPod};
use support::{have_command, prerequisite, run, unique};

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux { socket: unique("podo-top") };
        run(Command::new("tmux").args([
            "-L",
            &tmux.socket,
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "80",
            "-y",
            "30",
            command,
        ]));
        tmux
    }

    fn capture(&self) -> String {
        run(Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"]))
    }

    fn keys(&self, keys: &[&str]) {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "send-keys", "-t", "top"]).args(keys);
        run(&mut cmd);
    }

    /// Waits until the screen satisfies `ok`; returns it.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.capture();
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what} not on screen in 20 s:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn format(&self, format: &str) -> i32 {
        let out = run(Command::new("tmux").args([
            "-L",
            &self.socket,
            "display-message",
            "-p",
            "-t",
            "top",
            format,
        ]));
        out.trim().parse().unwrap_or_else(|_| panic!("{format}: {out}"))
    }

    /// The pid of `podometer top`: the child of the pane's shell.
    fn top_pid(&self) -> Process {
        let shell = self.format("#{pane_pid}");
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        Process(children.split_whitespace().next().expect("top runs under the pane's shell").parse().unwrap())
    }

    fn server_pid(&self) -> i32 {
        self.format("#{pid}")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

/// A `podometer top` process by pid, SIGKILLed on drop if it is still there (so a failed
/// test leaves nothing behind).
struct Process(i32);

impl Process {
    /// Running (not a zombie) and still our binary, so a reused pid is not mistaken for it.
    fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.0)).unwrap_or_default();
        state.is_some_and(|s| s != 'Z') && exe.ends_with("podometer")
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a process this test started.
        unsafe { libc::kill(self.0, sig) };
    }

    /// Waits up to `limit` for the process to end; returns how long it took.
    fn gone_within(&self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !self.alive() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
    }
}

/// A config without metadata processors and with a source that needs no pods.
fn plain_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("top.yaml");
    std::fs::write(
        &config,
        "sources:\n  cgroups: {}\n  netns: {}\nexporters:\n  file: {path: /dev/null}\n\
         pipelines:\n  top: {sources: [cgroups, netns], exporters: [file]}\n",
    )
    .unwrap();
    config
}

/// Row index of the line that starts with `label` after indentation.
fn row_of(screen: &str, label: &str) -> usize {
    screen
        .lines()
        .position(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no row for {label}:\n{screen}"))
}

/// The CPU % column of the row of `label`.
fn cpu_of(screen: &str, label: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.trim_start().starts_with(label))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn top_shows_the_pod_sorts_filters_and_restores_the_screen() {
    if !support::live_cgroups_available()
        || !podman_available()
        || !prerequisite(have_command("tmux"), "tmux (apt-get install tmux)")
    {
        return;
    }
    let pod = PodmanPod::start("podo-top", &["exec sleep 600", "exec sleep 600"]);
    let short = |id: &str| id[..12].to_owned();
    // Burn CPU in the app whose id sorts last, so sorting by name and by CPU disagree.
    let mut apps: Vec<String> = pod.app_ids.iter().map(|id| short(id)).collect();
    apps.sort();
    let (idle, busy) = (apps[0].clone(), apps[1].clone());
    let busy_full = pod.app_ids.iter().find(|id| id.starts_with(&busy)).unwrap();
    run(podman().args(["exec", "-d", busy_full, "sh", "-c", "while :; do :; done"]));

    let bin = env!("CARGO_BIN_EXE_podometer");
    // Without a metadata processor, so rows carry the ids this test knows (the built-in config
    // names Podman containers through `runtime_files`).
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path());
    let top = format!("{bin} top -c {} --interval 1s", config.display());
    let tmux = Tmux::start(&format!("{top}; echo EXIT=$?; sleep 120"));
    tmux.wait_for("the title", |s| s.contains("podometer top"));
    // Only this pod: filter on its id.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &short(&pod.pod_id)]);
    tmux.keys(&["Enter"]);
    let pod_row = format!("pod {}", short(&pod.pod_id));
    let screen = tmux.wait_for("the pod's rows with CPU rates", |s| {
        s.contains(&pod_row) && cpu_of(s, &busy).is_some_and(|c| c > 20.0) && cpu_of(s, &idle).is_some()
    });
    assert!(screen.contains(&short(&pod.infra_id)), "infra container row:\n{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "wider than 80 columns:\n{screen}");
    let other_pods = screen.lines().filter(|l| l.starts_with("pod ") && !l.starts_with(&pod_row)).count();
    assert_eq!(other_pods, 0, "the filter keeps only this pod:\n{screen}");

    tmux.keys(&["c"]);
    let by_cpu = tmux.wait_for("sort: cpu", |s| s.contains("sort: cpu"));
    assert!(row_of(&by_cpu, &busy) < row_of(&by_cpu, &idle), "busy first by CPU:\n{by_cpu}");
    tmux.keys(&["a"]);
    let by_name = tmux.wait_for("sort: name", |s| s.contains("sort: name"));
    assert!(row_of(&by_name, &idle) < row_of(&by_name, &busy), "alphabetical by name:\n{by_name}");

    tmux.keys(&["q"]);
    let after = tmux.wait_for("the exit status", |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(
        !after.contains("podometer top") && !after.contains("POD / CONTAINER"),
        "screen not restored:\n{after}"
    );
    drop(tmux);

    // SIGTERM: the same clean exit.
    let tmux = Tmux::start(&format!("{top}; echo EXIT=$?; sleep 120"));
    tmux.wait_for("the title", |s| s.contains("podometer top"));
    let process = tmux.top_pid();
    process.signal(libc::SIGTERM);
    assert!(process.gone_within(Duration::from_secs(5)).is_some(), "top still runs 5 s after SIGTERM");
    let after = tmux.wait_for("the exit status", |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(!after.contains("POD / CONTAINER"), "screen not restored after SIGTERM:\n{after}");
}

fn tmux_available() -> bool {
    support::live_cgroups_available() && prerequisite(have_command("tmux"), "tmux (apt-get install tmux)")
}

/// Starts `top` in a fresh tmux server, waits for its screen and kills the server with
/// SIGKILL (no goodbye to its panes: the terminal's other side just closes). `exec`: top is
/// the pane's session leader, so the kernel also sends it SIGHUP; else only its shell gets
/// one, and top learns from its reads (end of file) alone.
fn terminal_disappears(exec: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path());
    let bin = env!("CARGO_BIN_EXE_podometer");
    let top = format!("{bin} top -c {} --interval 1s", config.display());
    let tmux = if exec {
        Tmux::start(&format!("exec {top}"))
    } else {
        Tmux::start(&format!("{top}; echo EXIT=$?; sleep 120"))
    };
    tmux.wait_for("the title", |s| s.contains("podometer top"));
    let process = if exec { Process(tmux.format("#{pane_pid}")) } else { tmux.top_pid() };
    assert!(process.alive(), "top is running before the terminal goes");
    // SAFETY: kill(2) on the pid of the tmux server this test started.
    unsafe { libc::kill(tmux.server_pid(), libc::SIGKILL) };
    let took = process.gone_within(Duration::from_secs(5));
    assert!(took.is_some(), "top (pid {}) still runs 5 s after its terminal went away", process.0);
    eprintln!("top exited {:?} after its terminal went away (session leader: {exec})", took.unwrap());
}

#[test]
fn top_exits_when_its_terminal_disappears() {
    if !tmux_available() {
        return;
    }
    terminal_disappears(false);
}

#[test]
fn top_exits_on_sighup_as_session_leader() {
    if !tmux_available() {
        return;
    }
    terminal_disappears(true);
}

/// SIGTERM ends top while its terminal is frozen (the tmux server stopped: nobody reads the
/// pane, as over a stalled SSH link), and top still restores the screen when it comes back.
#[test]
fn sigterm_ends_top_while_its_terminal_is_frozen() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path());
    let bin = env!("CARGO_BIN_EXE_podometer");
    let tmux =
        Tmux::start(&format!("{bin} top -c {} --interval 1s; echo EXIT=$?; sleep 120", config.display()));
    tmux.wait_for("the title", |s| s.contains("podometer top"));
    let process = tmux.top_pid();
    let server = Process(tmux.server_pid());
    server.signal(libc::SIGSTOP);
    process.signal(libc::SIGTERM);
    let took = process.gone_within(Duration::from_secs(5));
    server.signal(libc::SIGCONT);
    std::mem::forget(server); // the server is not ours to SIGKILL: Tmux's drop ends it.
    assert!(took.is_some(), "top (pid {}) still runs 5 s after SIGTERM", process.0);
    let after = tmux.wait_for("the exit status", |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(!after.contains("POD / CONTAINER"), "screen not restored after SIGTERM:\n{after}");
}
