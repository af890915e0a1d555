//! `podometer run`: sweeps on its interval, and on SIGTERM does one last sweep, flushes and
//! exits 0. Driven on the real cgroupfs with a Docker-layout cgroup the test creates.
mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::cgroupfs::TestCgroup;

fn fake_container_id() -> String {
    let seed = format!(
        "{:016x}{:08x}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
        std::process::id()
    );
    seed.repeat(3).chars().take(64).collect()
}

fn sweep_times(text: &str, container_id: &str) -> Vec<u64> {
    let mut times = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is one JSON request");
        for rm in v["resourceMetrics"].as_array().unwrap() {
            let is_ours = rm["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kv| kv["key"] == "container.id" && kv["value"]["stringValue"] == container_id);
            if is_ours {
                let t = &rm["scopeMetrics"][0]["metrics"][0];
                let dp = if t["sum"].is_object() {
                    &t["sum"]["dataPoints"][0]
                } else {
                    &t["gauge"]["dataPoints"][0]
                };
                times.push(dp["timeUnixNano"].as_str().unwrap().parse().unwrap());
            }
        }
    }
    times
}

#[test]
fn sigterm_does_a_last_sweep_flushes_and_exits_zero() {
    if !support::live_cgroups_available() {
        return;
    }
    let id = fake_container_id();
    let mut cg = TestCgroup::create(std::path::Path::new("/sys/fs/cgroup"), &format!("docker/{id}"));
    cg.spawn("exec sleep 60");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 300ms\nsources:\n  cgroups: {{}}\nexporters:\n  file: {{path: {}}}\npipelines:\n  main: {{sources: [cgroups], exporters: [file]}}\n",
            out.display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_podometer"))
        .args(["run", "-c"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it sweep a few times.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sweep_times(&std::fs::read_to_string(&out).unwrap_or_default(), &id).len() < 3 {
        assert!(Instant::now() < deadline, "agent wrote fewer than 3 sweeps in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before_signal = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline + Duration::from_secs(10) {
            let _ = agent.kill();
            panic!("agent did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    agent.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "exit status {status:?}; stderr:\n{stderr}");
    let times = sweep_times(&std::fs::read_to_string(&out).unwrap(), &id);
    let last = *times.last().unwrap();
    assert!(
        last >= before_signal,
        "no sweep after SIGTERM: last sweep {last} < signal {before_signal}; stderr:\n{stderr}"
    );
    assert!(times.windows(2).all(|w| w[0] < w[1]), "sweep times not increasing: {times:?}");
}
