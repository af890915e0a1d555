//! Which cgroup hierarchies a root holds, told from the files under it rather than from statfs,
//! so a copy of a host's tree (a fixture, a DaemonSet's hostPath mount) is read like the host.

use std::path::{Path, PathBuf};

use super::CgroupsError;

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// One controller (or co-mounted group) per directory under the root.
    V1,
    /// One unified hierarchy at the root.
    V2,
    /// v1 controllers plus a v2 hierarchy at `unified/`, which has no controllers but the core
    /// files, PSI among them.
    Hybrid,
}

/// The directories the source reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    pub mode: CgroupMode,
    /// The v2 hierarchy: the root itself (v2) or `unified/` (hybrid).
    pub unified: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
    pub pids: Option<PathBuf>,
}

impl Hierarchies {
    pub fn detect(root: &Path) -> Result<Hierarchies, CgroupsError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(Hierarchies {
                mode: CgroupMode::V2,
                unified: Some(root.to_owned()),
                memory: None,
                cpuacct: None,
                cpu: None,
                blkio: None,
                pids: None,
            });
        }
        // Most distributions co-mount cpu and cpuacct (`cpu,cpuacct`, with `cpu` and `cpuacct`
        // symlinks to it); some mount them apart. Either way each name resolves to a directory.
        let first = |names: &[&str]| names.iter().map(|n| root.join(n)).find(|p| p.is_dir());
        let memory = first(&["memory"]);
        let cpuacct = first(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]);
        let cpu = first(&["cpu", "cpu,cpuacct", "cpuacct,cpu"]);
        let blkio = first(&["blkio"]);
        let pids = first(&["pids"]);
        if memory.is_none() && cpuacct.is_none() && cpu.is_none() && blkio.is_none() && pids.is_none() {
            return Err(CgroupsError::NoHierarchy { path: root.to_owned() });
        }
        let unified = root.join("unified");
        let (mode, unified) = if unified.join("cgroup.controllers").is_file() {
            (CgroupMode::Hybrid, Some(unified))
        } else {
            (CgroupMode::V1, None)
        };
        Ok(Hierarchies { mode, unified, memory, cpuacct, cpu, blkio, pids })
    }

    /// The hierarchy walked to discover containers. Runtimes create a container's cgroup in
    /// every controller under the same relative path, so one hierarchy is enough.
    pub fn discovery_root(&self) -> Option<&Path> {
        match self.mode {
            CgroupMode::V2 => self.unified.as_deref(),
            CgroupMode::V1 | CgroupMode::Hybrid => {
                [&self.memory, &self.pids, &self.cpuacct, &self.cpu, &self.blkio]
                    .into_iter()
                    .find_map(|h| h.as_deref())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(dirs: &[&str], files: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for d in dirs {
            fs::create_dir_all(t.path().join(d)).expect("mkdir");
        }
        for f in files {
            fs::write(t.path().join(f), "").expect("write");
        }
        t
    }

    #[test]
    fn v2_is_cgroup_controllers_at_the_root() {
        let t = tree(&["memory"], &["cgroup.controllers"]);
        let h = Hierarchies::detect(t.path()).expect("v2");
        assert_eq!(h.mode, CgroupMode::V2);
        assert_eq!(h.unified.as_deref(), Some(t.path()));
        assert_eq!(h.memory, None);
    }

    #[test]
    fn v1_with_cpu_and_cpuacct_co_mounted() {
        let t = tree(&["memory", "cpu,cpuacct", "blkio", "pids"], &[]);
        let h = Hierarchies::detect(t.path()).expect("v1");
        assert_eq!(h.mode, CgroupMode::V1);
        assert_eq!(h.cpu, Some(t.path().join("cpu,cpuacct")));
        assert_eq!(h.cpuacct, Some(t.path().join("cpu,cpuacct")));
        assert_eq!(h.discovery_root(), Some(t.path().join("memory").as_path()));
    }

    #[test]
    fn hybrid_with_cpu_and_cpuacct_apart() {
        let t = tree(&["cpu", "cpuacct", "pids", "unified"], &["unified/cgroup.controllers"]);
        let h = Hierarchies::detect(t.path()).expect("hybrid");
        assert_eq!(h.mode, CgroupMode::Hybrid);
        assert_eq!(h.cpu, Some(t.path().join("cpu")));
        assert_eq!(h.cpuacct, Some(t.path().join("cpuacct")));
        assert_eq!(h.unified, Some(t.path().join("unified")));
        assert_eq!(h.discovery_root(), Some(t.path().join("pids").as_path()));
    }

    #[test]
    fn nothing_known_is_an_error_naming_the_root() {
        let t = tree(&["unrelated"], &[]);
        let err = Hierarchies::detect(t.path()).expect_err("no hierarchy");
        assert!(err.to_string().contains(&t.path().display().to_string()), "{err}");
    }
}
