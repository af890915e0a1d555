//! `podometer top` for real, in tmux at 80×30: rows appear for a Podman pod, sorting by CPU
//! and by name changes the order, `q` exits 0 and SIGTERM too, and the screen is restored.
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

    /// The pid of `podometer top`: the child of the pane's shell.
    fn top_pid(&self) -> i32 {
        let shell = run(Command::new("tmux").args([
            "-L",
            &self.socket,
            "list-panes",
            "-t",
            "top",
            "-F",
            "#{pane_pid}",
        ]));
        let shell = shell.trim();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        children.split_whitespace().next().expect("top runs under the pane's shell").parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
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
    let config = dir.path().join("top.yaml");
    std::fs::write(
        &config,
        "sources:\n  cgroups: {}\n  netns: {}\nexporters:\n  file: {path: /dev/null}\n\
         pipelines:\n  top: {sources: [cgroups, netns], exporters: [file]}\n",
    )
    .unwrap();
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
    // SAFETY: kill(2) on the pid of the top process this test started.
    unsafe { libc::kill(tmux.top_pid(), libc::SIGTERM) };
    let after = tmux.wait_for("the exit status", |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(!after.contains("POD / CONTAINER"), "screen not restored after SIGTERM:\n{after}");
}
