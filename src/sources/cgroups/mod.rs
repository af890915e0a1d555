//! `cgroups`: every container's CPU, memory, block I/O, PIDs and pressure from cgroup v1, v2
//! and hybrid hosts.

pub mod classify;
pub mod parse;

use std::path::PathBuf;
use serde::Deserialize;
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct CgroupsConfig { pub root: PathBuf }
