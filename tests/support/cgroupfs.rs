//! Real cgroups made by a test in every v1 controller and in the v2 `unified` hierarchy of
//! this (hybrid) machine, removed on drop after their processes are killed.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "blkio", "pids", "cpuset", "systemd"];

/// Every directory a `TestCgroup` of this test process created and not yet removed. Tests
/// run in parallel and share parents (`docker/`, `kubepods/`): the parent is created by
/// whichever test comes first, and cannot go while another test's cgroup is below it, so the
/// last test out removes it. Directories that existed before the tests are never in here.
static CREATED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn created_set<T>(f: impl FnOnce(&mut HashSet<PathBuf>) -> T) -> T {
    let mut guard = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashSet::new))
}

/// One cgroup path (relative to the root, e.g. `kubepods/burstable/pod<uid>/<id>`), created in
/// every hierarchy that is mounted, parents included. Processes started with `spawn` join it.
pub struct TestCgroup {
    pub root: PathBuf,
    pub relative: PathBuf,
    /// Every directory we created, deepest last, so drop can remove them in reverse.
    created: Vec<PathBuf>,
    children: Vec<Child>,
}

impl TestCgroup {
    pub fn create(root: &Path, relative: &str) -> TestCgroup {
        let mut cg = TestCgroup {
            root: root.to_owned(),
            relative: PathBuf::from(relative),
            created: Vec::new(),
            children: Vec::new(),
        };
        for hierarchy in cg.hierarchies() {
            let mut dir = hierarchy.clone();
            for part in Path::new(relative).components() {
                dir.push(part);
                if !dir.exists() {
                    fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                    if hierarchy.ends_with("cpuset") {
                        inherit_cpuset(&dir);
                    }
                    cg.created.push(dir.clone());
                    created_set(|set| set.insert(dir.clone()));
                }
            }
        }
        cg
    }

    fn hierarchies(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = V1_CONTROLLERS
            .iter()
            .map(|c| self.root.join(c))
            .filter(|p| p.join("cgroup.procs").exists())
            .collect();
        let unified = self.root.join("unified");
        if unified.join("cgroup.procs").exists() {
            out.push(unified);
        }
        out
    }

    /// The directory of this cgroup in one hierarchy (`memory`, `cpuacct`, `unified`, ...).
    pub fn dir(&self, hierarchy: &str) -> PathBuf {
        self.root.join(hierarchy).join(&self.relative)
    }

    /// Starts `sh -c script` inside the cgroup (in every hierarchy) and returns its pid.
    pub fn spawn(&mut self, script: &str) -> u32 {
        let child = Command::new("sh").arg("-c").arg(script).spawn().expect("spawn sh");
        let pid = child.id();
        self.children.push(child);
        for h in self.hierarchies() {
            let procs = h.join(&self.relative).join("cgroup.procs");
            fs::write(&procs, pid.to_string()).unwrap_or_else(|e| panic!("join {}: {e}", procs.display()));
        }
        pid
    }

    /// Kills one process started by `spawn`.
    pub fn kill(&mut self, pid: u32) {
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A new cpuset cgroup has empty cpus/mems and refuses tasks until they are copied down.
fn inherit_cpuset(dir: &Path) {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Some(parent) = dir.parent() {
            if let Ok(v) = fs::read_to_string(parent.join(file)) {
                let _ = fs::write(dir.join(file), v.trim());
            }
        }
    }
}

impl TestCgroup {
    /// Pids in this cgroup or below it, from the first hierarchy that lists them.
    fn member_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        if let Some(h) = self.hierarchies().first() {
            collect_pids(&h.join(&self.relative), &mut pids);
        }
        pids
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Grandchildren of `spawn` (a backgrounded command, a forked sleep) outlive the shell;
        // every process still in the cgroup was started by this test, so end them by pid.
        for _ in 0..50 {
            let pids = self.member_pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions; the pid is in our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Processes leave a cgroup asynchronously after exit; rmdir fails with EBUSY until then.
        // A cgroup with a child cgroup (another test's, below a shared parent) stays busy: it is
        // left to the ancestors' pass below.
        let has_child =
            |dir: &Path| fs::read_dir(dir).is_ok_and(|mut e| e.any(|e| e.is_ok_and(|e| e.path().is_dir())));
        for dir in self.created.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && dir.exists() && !has_child(dir) && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !dir.exists() {
                created_set(|set| set.remove(dir));
            }
        }
        // Parents any test of this process created: removed by the last test below them.
        created_set(|set| {
            for hierarchy in self.hierarchies() {
                let mut dir = hierarchy.join(&self.relative);
                while dir.pop() && dir != hierarchy {
                    if !set.contains(&dir) || fs::remove_dir(&dir).is_err() {
                        break;
                    }
                    set.remove(&dir);
                }
            }
        });
    }
}
