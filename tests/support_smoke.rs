//! The test helpers themselves work against the real machine.
mod support;

use support::cgroupfs::TestCgroup;

#[test]
fn test_cgroup_is_created_joined_and_removed() {
    if !support::live_cgroups_available() {
        return;
    }
    let name = support::unique("podometer-smoke");
    let path;
    {
        let mut cg = TestCgroup::create(std::path::Path::new("/sys/fs/cgroup"), &name);
        let pid = cg.spawn("sleep 30");
        path = cg.dir("memory");
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "pid {pid} not in {procs}");
    }
    assert!(!path.exists(), "{} left behind", path.display());
}
