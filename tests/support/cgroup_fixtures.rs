//! What the cgroup source tests share: the fixture trees' ids, a source over a tree, and the
//! expected points of a resource compared with every point it has.
// Included by path by the two test crates that use it; each uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use podometer::model::{AttrValue, ContainerInfo, PodRef, ResourceId, Runtime, Sweep, SweepContext, Value};
use podometer::semconv::{self, CgroupFamily};
use podometer::sources::cgroups::{CgroupSource, CgroupsConfig, SweepStats};
use podometer::sources::Source;

pub const UID1: &str = "0f3e5a8c-1b2d-4c6e-8f90-a1b2c3d4e5f6";
pub const UID2: &str = "7c9d2e41-5a6b-4f8e-9d0c-112233445566";
pub const C1: &str = "1111111111111111111111111111111111111111111111111111111111111a01";
pub const C2: &str = "2222222222222222222222222222222222222222222222222222222222222b02";
pub const C3: &str = "3333333333333333333333333333333333333333333333333333333333333c03";
pub const C4: &str = "4444444444444444444444444444444444444444444444444444444444444d04";
pub const C5: &str = "5555555555555555555555555555555555555555555555555555555555555e05";
pub const PODMAN_POD: &str = "9999999999999999999999999999999999999999999999999999999999999f09";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cgroup").join(name)
}

pub fn config(root: &Path) -> CgroupsConfig {
    CgroupsConfig { root: root.to_owned(), ..CgroupsConfig::default() }
}

pub fn sweep_once(source: &mut CgroupSource) -> (SweepContext, Sweep) {
    let mut ctx = SweepContext::new(SystemTime::UNIX_EPOCH);
    let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
    source.collect(&mut ctx, &mut sweep).expect("collect");
    (ctx, sweep)
}

/// A point as compared: metric name, sorted point attributes, value.
pub type Key = (String, Vec<(String, String)>);

/// One expected point: metric name, point attributes, value.
pub type ExpectedPoint = (&'static str, Vec<(&'static str, &'static str)>, Value);

#[derive(Default)]
pub struct Expect(pub Vec<ExpectedPoint>);

impl Expect {
    pub fn int(mut self, name: &'static str, v: i64) -> Self {
        self.0.push((name, vec![], Value::Int(v)));
        self
    }
    pub fn cpu(mut self, f: &'static CgroupFamily, user: f64, system: f64) -> Self {
        self.0.push((f.cpu_time.name, vec![(semconv::CPU_MODE, "user")], Value::Double(user)));
        self.0.push((f.cpu_time.name, vec![(semconv::CPU_MODE, "system")], Value::Double(system)));
        self
    }
    pub fn throttling(self, f: &'static CgroupFamily, periods: i64, throttled: i64, time: f64) -> Self {
        let mut s = self
            .int(f.cpu_throttling_periods.name, periods)
            .int(f.cpu_throttling_throttled_periods.name, throttled);
        s.0.push((f.cpu_throttling_throttled_time.name, vec![], Value::Double(time)));
        s
    }
    pub fn memory(self, f: &'static CgroupFamily, usage: i64, working_set: i64, rss: i64, file: i64) -> Self {
        self.int(f.memory_usage.name, usage)
            .int(f.memory_working_set.name, working_set)
            .int(f.memory_rss.name, rss)
            .int(f.memory_file.name, file)
    }
    pub fn disk(
        mut self,
        f: &'static CgroupFamily,
        dev: &'static str,
        rb: i64,
        wb: i64,
        ro: i64,
        wo: i64,
    ) -> Self {
        for (name, dir, v) in [
            (f.disk_io.name, "read", rb),
            (f.disk_io.name, "write", wb),
            (f.disk_operations.name, "read", ro),
            (f.disk_operations.name, "write", wo),
        ] {
            self.0.push((
                name,
                vec![(semconv::DISK_IO_DIRECTION, dir), (semconv::SYSTEM_DEVICE, dev)],
                Value::Int(v),
            ));
        }
        self
    }
    pub fn psi(mut self, name: &'static str, some: f64, full: Option<f64>) -> Self {
        self.0.push((name, vec![(semconv::PRESSURE_STALL_TYPE, "some")], Value::Double(some)));
        if let Some(full) = full {
            self.0.push((name, vec![(semconv::PRESSURE_STALL_TYPE, "full")], Value::Double(full)));
        }
        self
    }
    pub fn into_map(self) -> BTreeMap<Key, Value> {
        let mut map = BTreeMap::new();
        for (name, attrs, v) in self.0 {
            let mut attrs: Vec<(String, String)> =
                attrs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            attrs.sort();
            assert!(map.insert((name.to_owned(), attrs), v).is_none(), "expectation lists {name} twice");
        }
        map
    }
}

pub fn actual(sweep: &Sweep, id: &ResourceId) -> BTreeMap<Key, Value> {
    let resource = sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?}"));
    let mut map = BTreeMap::new();
    for p in &resource.points {
        let mut attrs: Vec<(String, String)> = p
            .attributes
            .iter()
            .map(|(k, v)| match v {
                AttrValue::Str(s) => ((*k).to_owned(), s.to_string()),
                other => ((*k).to_owned(), format!("{other:?}")),
            })
            .collect();
        attrs.sort();
        assert!(
            map.insert((p.metric.name.to_owned(), attrs), p.value).is_none(),
            "{id:?} has a duplicate point"
        );
    }
    map
}

pub fn assert_points(sweep: &Sweep, id: ResourceId, expect: Expect) {
    assert_eq!(actual(sweep, &id), expect.into_map(), "points of {id:?}");
}

pub fn assert_attrs(sweep: &Sweep, id: ResourceId, expected: &[(&str, &str)]) {
    let resource = sweep.resource(&id).unwrap_or_else(|| panic!("no resource {id:?}"));
    let mut got: Vec<(String, String)> = resource
        .attributes
        .iter()
        .map(|(k, v)| {
            ((*k).to_owned(), if let AttrValue::Str(s) = v { s.to_string() } else { format!("{v:?}") })
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> =
        expected.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    want.sort();
    assert_eq!(got, want, "attributes of {id:?}");
}

pub fn cid(id: &str) -> ResourceId {
    ResourceId::Container(id.to_owned())
}

pub fn pid(uid: &str) -> ResourceId {
    ResourceId::Pod(uid.to_owned())
}

pub fn k8s(uid: &str, qos: &str) -> Option<PodRef> {
    Some(PodRef::Kubernetes { uid: uid.to_owned(), qos: qos.to_owned() })
}

pub fn info(
    id: &str,
    runtime: Runtime,
    pod: Option<PodRef>,
    procs: PathBuf,
) -> std::sync::Arc<ContainerInfo> {
    std::sync::Arc::new(ContainerInfo { id: id.to_owned(), runtime, pod, procs_file: procs })
}

pub fn stats(containers: usize, pods: usize, errors: usize) -> SweepStats {
    SweepStats { discovered: true, containers, pods, errors, ..SweepStats::default() }
}

/// Copies a fixture tree so a test can change it.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

pub fn int_of(sweep: &Sweep, id: &ResourceId, metric: &str) -> Option<i64> {
    sweep.resource(id)?.points_of(metric).next().map(|p| match p.value {
        Value::Int(v) => v,
        Value::Double(v) => v as i64,
    })
}
