//! The agent's own data model: what sources produce, processors change and exporters encode.
//!
//! It is deliberately smaller than OTLP: a sweep is a list of resources (one per container,
//! one per pod), each with points that name a static [`MetricDesc`]. The encoder turns a sweep
//! into an `ExportMetricsServiceRequest`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// Whether `s` is a container id as runtimes write it and cgroup paths carry it: 64 lowercase
/// hex digits. Ids are map keys across sources and processors; an id of another shape (upper
/// case, short, a path) would never meet the cgroup's.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How a metric behaves over time; decides its OTLP shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Cumulative monotonic sum.
    Counter,
    /// Instantaneous value.
    Gauge,
}

/// Name, unit and shape of one metric; instances live in [`crate::semconv`].
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDesc {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub kind: MetricKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    Double(f64),
}

impl Value {
    /// Kernel counters are u64; OTLP carries i64. Saturate rather than wrap to a negative.
    pub fn from_u64(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Double(v) => v,
        }
    }
}

/// Stable identity of a resource across sweeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceId {
    /// Keyed by the full 64-hex container id.
    Container(String),
    /// Keyed by the Kubernetes pod UID.
    Pod(String),
}

/// A string attribute value. Sources build their points anew every sweep, and most values
/// are constants (`cpu.mode` "user", a direction) or repeat on every point of a resource (an
/// interface name on its eight points): a constant is kept as a `&'static str` and anything
/// else in one shared allocation, so building or cloning a value allocates nothing.
/// Equality, ordering and hashing are those of the text, whichever form holds it.
#[derive(Clone)]
pub enum AttrStr {
    /// A constant (a semantic-convention value, a runtime name).
    Static(&'static str),
    /// Text known only at run time; clones share it.
    Shared(Arc<str>),
}

impl AttrStr {
    pub fn as_str(&self) -> &str {
        match self {
            AttrStr::Static(s) => s,
            AttrStr::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for AttrStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for AttrStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for AttrStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for AttrStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for AttrStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for AttrStr {
    fn eq(&self, other: &AttrStr) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for AttrStr {}

impl std::hash::Hash for AttrStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq<str> for AttrStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for AttrStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
impl PartialEq<String> for AttrStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}
impl PartialEq<AttrStr> for str {
    fn eq(&self, other: &AttrStr) -> bool {
        self == other.as_str()
    }
}
impl PartialEq<AttrStr> for &str {
    fn eq(&self, other: &AttrStr) -> bool {
        *self == other.as_str()
    }
}
impl PartialEq<AttrStr> for String {
    fn eq(&self, other: &AttrStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<&str> for AttrStr {
    fn from(s: &str) -> Self {
        AttrStr::Shared(Arc::from(s))
    }
}
impl From<String> for AttrStr {
    fn from(s: String) -> Self {
        AttrStr::Shared(Arc::from(s))
    }
}
impl From<Arc<str>> for AttrStr {
    fn from(s: Arc<str>) -> Self {
        AttrStr::Shared(s)
    }
}

/// Attribute values the agent emits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttrValue {
    Str(AttrStr),
    Int(i64),
    Bool(bool),
    /// An array of strings (`container.image.tags`).
    StrArray(Vec<String>),
}

impl AttrValue {
    /// A constant string value, kept without copying (`From<&str>` copies, since it cannot
    /// tell a constant from borrowed text).
    pub const fn constant(s: &'static str) -> AttrValue {
        AttrValue::Str(AttrStr::Static(s))
    }

    /// A string value copied from borrowed text into a shared allocation.
    pub fn text(s: &str) -> AttrValue {
        AttrValue::Str(AttrStr::Shared(Arc::from(s)))
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::text(s)
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s.into())
    }
}
impl From<AttrStr> for AttrValue {
    fn from(s: AttrStr) -> Self {
        AttrValue::Str(s)
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

pub type Attributes = Vec<(&'static str, AttrValue)>;

/// One data point of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: &'static MetricDesc,
    pub attributes: Attributes,
    pub value: Value,
    /// Set by [`StartTimes`] for counters; `None` until then and for gauges.
    pub start_time: Option<SystemTime>,
}

impl Point {
    pub fn new(metric: &'static MetricDesc, value: Value) -> Point {
        Point { metric, attributes: Vec::new(), value, start_time: None }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<AttrValue>) -> Point {
        // Most points carry one attribute: size it exactly (a first `push` would make room
        // for four, 192 bytes, on every point of every sweep).
        if self.attributes.is_empty() {
            self.attributes = vec![(key, value.into())];
        } else {
            self.attributes.push((key, value.into()));
        }
        self
    }

    /// The point with these attributes added, in one allocation of the exact size when it
    /// had none.
    pub fn with_all<const N: usize>(mut self, attributes: [(&'static str, AttrValue); N]) -> Point {
        if self.attributes.is_empty() {
            self.attributes = Vec::from(attributes);
        } else {
            self.attributes.extend(attributes);
        }
        self
    }

    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// The points of one container or pod in one sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: ResourceId,
    pub attributes: Attributes,
    pub points: Vec<Point>,
}

impl Resource {
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Sets an attribute unless the resource already has one under `key`: a later metadata
    /// processor fills only what the earlier ones left empty. Returns whether it was set.
    pub fn set_attribute_if_absent(&mut self, key: &'static str, value: &AttrValue) -> bool {
        if self.attributes.iter().any(|(k, _)| *k == key) {
            return false;
        }
        self.attributes.push((key, value.clone()));
        true
    }

    /// Sets an attribute, replacing an earlier value of the same key.
    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }

    pub fn points_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Point> + 'a {
        self.points.iter().filter(move |p| p.metric.name == name)
    }
}

/// Everything collected at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// When the sweep started; every point is stamped with it.
    pub time: SystemTime,
    pub resources: Vec<Resource>,
}

impl Sweep {
    pub fn new(time: SystemTime) -> Sweep {
        Sweep { time, resources: Vec::new() }
    }

    /// The resource with this id, created with `attributes` if the sweep has none yet.
    pub fn resource_mut(&mut self, id: ResourceId, attributes: impl FnOnce() -> Attributes) -> &mut Resource {
        match self.resources.iter().position(|r| r.id == id) {
            Some(i) => &mut self.resources[i],
            None => {
                self.resources.push(Resource { id, attributes: attributes(), points: Vec::new() });
                self.resources.last_mut().expect("just pushed")
            }
        }
    }

    pub fn resource(&self, id: &ResourceId) -> Option<&Resource> {
        self.resources.iter().find(|r| &r.id == id)
    }

    pub fn point_count(&self) -> usize {
        self.resources.iter().map(|r| r.points.len()).sum()
    }
}

/// Container runtimes recognised from cgroup paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    /// The `container.runtime.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// The pod a container belongs to, as far as the cgroup path tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PodRef {
    /// A Kubernetes pod: UID (dashed form) and QoS class (`guaranteed`, `burstable`, `besteffort`).
    Kubernetes { uid: String, qos: String },
    /// A Podman pod (`libpod_parent/<pod-id>`).
    Podman { id: String },
}

/// A container the cgroup source found this sweep. Later sources in the same pipeline (the
/// network namespace resolver) and processors (metadata enrichers) work from this inventory
/// instead of walking the cgroup tree again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full 64-hex container id.
    pub id: String,
    pub runtime: Runtime,
    pub pod: Option<PodRef>,
    /// A `cgroup.procs` file of the container, to find its live processes.
    pub procs_file: PathBuf,
}

impl ContainerInfo {
    pub fn resource_id(&self) -> ResourceId {
        ResourceId::Container(self.id.clone())
    }
}

/// What the sources of one pipeline share during a sweep.
#[derive(Debug)]
pub struct SweepContext {
    pub time: SystemTime,
    /// Shared with the cgroup source, which keeps them from one discovery to the next: handing
    /// them over costs a reference count, not four strings, per container and sweep.
    pub containers: Vec<Arc<ContainerInfo>>,
}

impl SweepContext {
    pub fn new(time: SystemTime) -> SweepContext {
        SweepContext { time, containers: Vec::new() }
    }
}

/// The attribute set of a point, shared by every series that has it.
type AttributeSet = Arc<[(&'static str, AttrValue)]>;

/// One counter series of a resource, as [`StartTimes`] remembers it. There is one per counter
/// point of every resource, so it is kept small: the attributes are an interned set (most are
/// the same on every resource, `cpu.mode` "user", an interface and direction), and the time of
/// the last sighting is the previous sweep's for every series (a series missing from a sweep
/// is forgotten), so it is kept once in [`StartTimes`].
#[derive(Debug, Clone)]
struct Series {
    metric: &'static str,
    attributes: AttributeSet,
    start: SystemTime,
    last: f64,
    /// The `StartTimes::generation` of the last sweep that had this series.
    seen: u64,
    /// The origin the source gave with the point (see [`StartTimes`]).
    origin: Option<SystemTime>,
}

/// Gives every counter point its start time.
///
/// A series starts when it is first seen. A series missing from a sweep is forgotten, so a
/// container id, interface or device that comes back is a new series. A counter that goes
/// backwards was reset between the previous sweep and this one; its new start is the previous
/// sweep's time, the latest instant known to precede the reset.
///
/// A source that knows its counters were replaced (a pod's new network namespace starts from
/// zero, and may already be past the old values) says so by setting a point's `start_time` to
/// the origin of its counters, e.g. when it first saw that namespace; when a series' origin
/// changes, the series restarts as after a reset. The stamped `start_time` replaces it.
///
/// This runs for every point of every sweep, so lookups allocate nothing: series are kept per
/// resource in the order the source emits them, and the next point is checked against the
/// next remembered series before any search.
#[derive(Debug, Default)]
pub struct StartTimes {
    resources: HashMap<ResourceId, Vec<Series>>,
    /// Every attribute set some series has: a series holds a reference, not a copy. Series
    /// are matched by comparing the point's attributes with the set itself, never by a hash
    /// alone, so two series cannot be merged.
    attribute_sets: HashSet<AttributeSet>,
    generation: u64,
    /// The previous sweep's time: when every remembered series was last seen.
    previous: Option<SystemTime>,
}

impl StartTimes {
    pub fn new() -> StartTimes {
        StartTimes::default()
    }

    pub fn apply(&mut self, sweep: &mut Sweep) {
        self.generation += 1;
        let generation = self.generation;
        let now = sweep.time;
        let previous = self.previous.unwrap_or(now);
        let attribute_sets = &mut self.attribute_sets;
        for resource in &mut sweep.resources {
            let series = match self.resources.get_mut(&resource.id) {
                Some(series) => series,
                None => {
                    // Sized once for the counters of its first sweep: a resource's series
                    // rarely change, and growth by doubling would keep up to half unused.
                    let counters =
                        resource.points.iter().filter(|p| p.metric.kind == MetricKind::Counter).count();
                    self.resources.entry(resource.id.clone()).or_insert_with(|| Vec::with_capacity(counters))
                }
            };
            let mut hint = 0;
            for point in &mut resource.points {
                if point.metric.kind != MetricKind::Counter {
                    continue;
                }
                let value = point.value.as_f64();
                let origin = point.start_time;
                let same = |s: &Series| s.metric == point.metric.name && *s.attributes == *point.attributes;
                let found = match series.get(hint) {
                    Some(s) if same(s) => Some(hint),
                    _ => series.iter().position(same),
                };
                let index = match found {
                    Some(i) => {
                        let s = &mut series[i];
                        let replaced = origin.is_some() && s.origin.is_some() && origin != s.origin;
                        if value < s.last || replaced {
                            s.start = previous;
                        }
                        s.origin = origin;
                        s.last = value;
                        s.seen = generation;
                        i
                    }
                    None => {
                        let attributes = match attribute_sets.get(point.attributes.as_slice()) {
                            Some(set) => set.clone(),
                            None => {
                                let set: AttributeSet = point.attributes.as_slice().into();
                                attribute_sets.insert(set.clone());
                                set
                            }
                        };
                        series.push(Series {
                            metric: point.metric.name,
                            attributes,
                            start: now,
                            last: value,
                            seen: generation,
                            origin,
                        });
                        series.len() - 1
                    }
                };
                point.start_time = Some(series[index].start);
                hint = index + 1;
            }
        }
        self.resources.retain(|_, series| {
            series.retain(|s| s.seen == generation);
            !series.is_empty()
        });
        // A set no series refers to any more is dropped.
        self.attribute_sets.retain(|set| Arc::strong_count(set) > 1);
        self.previous = Some(now);
    }

    /// How many series are remembered.
    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semconv;
    use std::time::Duration;

    fn sweep_at(secs: u64, value: i64) -> Sweep {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        sweep.resource_mut(ResourceId::Container("a".into()), Vec::new).points.push(
            Point::new(&semconv::CONTAINER.disk_io, Value::Int(value)).with(semconv::SYSTEM_DEVICE, "8:0"),
        );
        sweep
    }

    fn start_of(sweep: &Sweep) -> SystemTime {
        sweep.resources[0].points[0].start_time.expect("counter gets a start time")
    }

    #[test]
    fn first_sighting_starts_the_series_and_later_sweeps_keep_it() {
        let mut st = StartTimes::new();
        let mut s1 = sweep_at(100, 5);
        st.apply(&mut s1);
        let mut s2 = sweep_at(110, 9);
        st.apply(&mut s2);
        assert_eq!(start_of(&s1), SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(start_of(&s2), SystemTime::UNIX_EPOCH + Duration::from_secs(100));
    }

    #[test]
    fn counter_going_backwards_restarts_at_previous_sweep() {
        let mut st = StartTimes::new();
        st.apply(&mut sweep_at(100, 50));
        st.apply(&mut sweep_at(110, 60));
        let mut s3 = sweep_at(120, 3);
        st.apply(&mut s3);
        assert_eq!(start_of(&s3), SystemTime::UNIX_EPOCH + Duration::from_secs(110));
        let mut s4 = sweep_at(130, 4);
        st.apply(&mut s4);
        assert_eq!(start_of(&s4), SystemTime::UNIX_EPOCH + Duration::from_secs(110));
    }

    #[test]
    fn series_absent_for_a_sweep_starts_anew() {
        let mut st = StartTimes::new();
        st.apply(&mut sweep_at(100, 5));
        st.apply(&mut Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(110)));
        assert!(st.is_empty());
        let mut s3 = sweep_at(120, 7);
        st.apply(&mut s3);
        assert_eq!(start_of(&s3), SystemTime::UNIX_EPOCH + Duration::from_secs(120));
    }

    #[test]
    fn series_are_told_apart_by_metric_and_attributes_in_any_order_of_points() {
        let mut st = StartTimes::new();
        let point = |device: &str, v: i64| {
            Point::new(&semconv::CONTAINER.disk_io, Value::Int(v))
                .with(semconv::SYSTEM_DEVICE, device.to_owned())
        };
        let mut s1 = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        s1.resource_mut(ResourceId::Container("a".into()), Vec::new)
            .points
            .extend([point("8:0", 5), point("8:16", 7)]);
        st.apply(&mut s1);
        let mut s2 = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(110));
        s2.resource_mut(ResourceId::Container("a".into()), Vec::new)
            .points
            .extend([point("8:0", 6), point("8:16", 8)]);
        st.apply(&mut s2);
        // The second device reset; the points arrive in the other order.
        let mut s3 = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(120));
        s3.resource_mut(ResourceId::Container("a".into()), Vec::new)
            .points
            .extend([point("8:16", 1), point("8:0", 9)]);
        st.apply(&mut s3);
        let starts: Vec<_> = s3.resources[0].points.iter().map(|p| p.start_time.unwrap()).collect();
        assert_eq!(
            starts[0],
            SystemTime::UNIX_EPOCH + Duration::from_secs(110),
            "8:16 restarts at the previous sweep"
        );
        assert_eq!(starts[1], SystemTime::UNIX_EPOCH + Duration::from_secs(100), "8:0 keeps its first start");
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn a_new_origin_from_the_source_restarts_the_series_even_when_the_counter_grew() {
        let t = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let at = |secs: u64, value: i64, origin: u64| {
            let mut sweep = sweep_at(secs, value);
            sweep.resources[0].points[0].start_time = Some(t(origin));
            sweep
        };
        let mut st = StartTimes::new();
        st.apply(&mut at(100, 50, 100));
        let mut s2 = at(110, 60, 100);
        st.apply(&mut s2);
        assert_eq!(start_of(&s2), t(100), "same origin: same series");
        // A new namespace whose counter is already above the old one's.
        let mut s3 = at(120, 900, 120);
        st.apply(&mut s3);
        assert_eq!(start_of(&s3), t(110), "restarted at the previous sweep");
        let mut s4 = at(130, 950, 120);
        st.apply(&mut s4);
        assert_eq!(start_of(&s4), t(110), "and kept while the origin stays");
    }

    #[test]
    fn attribute_sets_are_shared_across_resources_and_dropped_with_their_last_series() {
        let t = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let point = |device: &str, v: i64| {
            Point::new(&semconv::CONTAINER.disk_io, Value::Int(v))
                .with(semconv::SYSTEM_DEVICE, device.to_owned())
        };
        let mut st = StartTimes::new();
        let mut s1 = Sweep::new(t(100));
        for id in ["a", "b"] {
            s1.resource_mut(ResourceId::Container(id.into()), Vec::new)
                .points
                .extend([point("8:0", 5), point("8:16", 7)]);
        }
        st.apply(&mut s1);
        assert_eq!(st.len(), 4, "one series per resource and device");
        assert_eq!(st.attribute_sets.len(), 2, "one set per device, shared by both resources");
        // "b" goes away and "a" loses 8:16: only 8:0's set is still referred to.
        let mut s2 = Sweep::new(t(110));
        s2.resource_mut(ResourceId::Container("a".into()), Vec::new).points.push(point("8:0", 6));
        st.apply(&mut s2);
        assert_eq!((st.len(), st.attribute_sets.len()), (1, 1));
        assert_eq!(s2.resources[0].points[0].start_time, Some(t(100)));
        // 8:16 comes back on "a": a new series, whose set is made again.
        let mut s3 = Sweep::new(t(120));
        s3.resource_mut(ResourceId::Container("a".into()), Vec::new)
            .points
            .extend([point("8:0", 1), point("8:16", 9)]);
        st.apply(&mut s3);
        let starts: Vec<_> = s3.resources[0].points.iter().map(|p| p.start_time.unwrap()).collect();
        assert_eq!(starts, [t(110), t(120)], "8:0 reset after the previous sweep; 8:16 starts now");
        assert_eq!((st.len(), st.attribute_sets.len()), (2, 2));
    }

    #[test]
    fn gauges_get_no_start_time() {
        let mut st = StartTimes::new();
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
        sweep
            .resource_mut(ResourceId::Pod("p".into()), Vec::new)
            .points
            .push(Point::new(&semconv::POD.memory_usage, Value::Int(1)));
        st.apply(&mut sweep);
        assert_eq!(sweep.resources[0].points[0].start_time, None);
    }
}
