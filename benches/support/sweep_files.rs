//! The files the cgroup source reads every sweep, in one place: `benches/cgroups.rs` and
//! `examples/bench_node/measure.rs` (the pread floor and the naive reader) both include this module
//! with `#[path]`, so the floor and the agent-side benches can never measure different files.

/// Per container on a hybrid host, as (v1 hierarchy or `unified`, file); limits are left out
/// (read once a minute). CPU time comes from the unified hierarchy's core `cpu.stat` (the
/// cgroup exists there: runc joins it), not from the three cpuacct files.
pub const HYBRID_FILES: &[(&str, &str)] = &[
    ("unified", "cpu.stat"),
    ("cpu", "cpu.stat"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.stat"),
    ("memory", "memory.oom_control"),
    ("blkio", "blkio.throttle.io_service_bytes_recursive"),
    ("blkio", "blkio.throttle.io_serviced_recursive"),
    ("pids", "pids.current"),
    ("unified", "cpu.pressure"),
    ("unified", "memory.pressure"),
    ("unified", "io.pressure"),
];

/// What the lean profile (`config/lean.yaml`: `skip: [pressure, block_io, memory_stat,
/// throttling]`) still reads per container on a hybrid host: `HYBRID_FILES` without the
/// skipped groups' files.
pub const HYBRID_LEAN_FILES: &[(&str, &str)] = &[
    ("unified", "cpu.stat"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.oom_control"),
    ("pids", "pids.current"),
];

/// Files read rarely (limits) or only for cgroups missing from `unified/` (the cpuacct files,
/// `cpuacct.stat` on older kernels): in the per-file cost table, not in the floor.
pub const HYBRID_RARE_FILES: &[(&str, &str)] = &[
    ("memory", "memory.limit_in_bytes"),
    ("pids", "pids.max"),
    ("cpuacct", "cpuacct.usage"),
    ("cpuacct", "cpuacct.usage_user"),
    ("cpuacct", "cpuacct.usage_sys"),
    ("cpuacct", "cpuacct.stat"),
];

/// Per container on a cgroup v2 host.
pub const V2_FILES: &[&str] = &[
    "cpu.stat",
    "memory.current",
    "memory.stat",
    "memory.events",
    "io.stat",
    "pids.current",
    "cpu.pressure",
    "memory.pressure",
    "io.pressure",
];
