//! The `collect --format table` view: one line per pod and per container, in the spirit of
//! `docker stats`, with rates computed between two sweeps.

use std::fmt::Write;

use crate::model::{AttrValue, Resource, ResourceId, Sweep};
use crate::semconv::{self, CgroupFamily, NetworkFamily};

/// The id columns, shown with `--ids`.
const ID_HEADER: [&str; 2] = ["CONTAINER", "POD"];
const ID_WIDTHS: [usize; 2] = [14, 14];
/// The name columns: as wide as their longest cell.
const NAME_HEADER: [&str; 2] = ["NAMESPACE/POD", "NAME"];
/// The runtime and the numbers.
const HEADER: [&str; 6] = ["RUNTIME", "CPU %", "MEM USAGE / LIMIT", "PIDS", "NET RX/s", "NET TX/s"];
const WIDTHS: [usize; 6] = [11, 8, 23, 6, 11, 11];

pub fn str_attr<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
    match r.attribute(key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

pub fn short(id: &str, n: usize) -> String {
    id.chars().take(n).collect()
}

fn families(r: &Resource) -> (&'static CgroupFamily, &'static NetworkFamily) {
    match r.id {
        ResourceId::Pod(_) => (&semconv::POD, &semconv::POD_NETWORK),
        ResourceId::Container(_) => (&semconv::CONTAINER, &semconv::CONTAINER_NETWORK),
    }
}

fn sum(r: &Resource, name: &str, filter: impl Fn(&crate::model::Point) -> bool) -> Option<f64> {
    let mut points = r.points_of(name).filter(|p| filter(p)).peekable();
    points.peek()?;
    Some(points.map(|p| p.value.as_f64()).sum())
}

/// Per-second rate of a counter between two sweeps; `None` when either side lacks it or the
/// counter went backwards (the container restarted in between).
fn rate(prev: Option<f64>, cur: Option<f64>, seconds: f64) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    (c >= p && seconds > 0.0).then(|| (c - p) / seconds)
}

pub fn human_bytes(b: f64) -> String {
    scaled_bytes(b, ["B", "KiB", "MiB", "GiB", "TiB"])
}

/// Bytes in powers of 1024 with the given unit names, one decimal above bytes.
pub fn scaled_bytes(b: f64, units: [&str; 5]) -> String {
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit < units.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}{}", units[unit])
    } else {
        format!("{v:.1}{}", units[unit])
    }
}

/// What the table and `podometer top` show for one container or pod: current values and
/// per-second rates between two sweeps. `None` where the host or either sweep lacks it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// CPU time per second of wall time (1.0 = one core busy).
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub memory_limit: Option<f64>,
    pub pids: Option<f64>,
    pub net_rx: Option<f64>,
    pub net_tx: Option<f64>,
    /// TCP segments retransmitted per second, in the resource's network namespace.
    pub retransmits: Option<f64>,
    pub disk_read: Option<f64>,
    pub disk_write: Option<f64>,
}

/// Seconds between two sweeps (0 when the clock went backwards).
pub fn seconds_between(prev: &Sweep, cur: &Sweep) -> f64 {
    cur.time.duration_since(prev.time).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The stats of `r` (from `cur`), with rates against the same resource in `before`.
pub fn stats(r: &Resource, before: Option<&Resource>, seconds: f64) -> Stats {
    let (cg, net) = families(r);
    let value = |res: Option<&Resource>, name: &str| res.and_then(|res| sum(res, name, |_| true));
    let counter_rate = |name: &str, key: &str, want: &str| {
        let matching =
            |p: &crate::model::Point| matches!(p.attribute(key), Some(AttrValue::Str(d)) if d == want);
        rate(before.and_then(|b| sum(b, name, matching)), sum(r, name, matching), seconds)
    };
    Stats {
        cpu: rate(value(before, cg.cpu_time.name), value(Some(r), cg.cpu_time.name), seconds),
        memory: value(Some(r), cg.memory_usage.name),
        memory_limit: value(Some(r), cg.memory_limit.name),
        pids: value(Some(r), cg.pids_count.name),
        net_rx: counter_rate(net.io.name, semconv::NETWORK_IO_DIRECTION, semconv::DIRECTION_RECEIVE),
        net_tx: counter_rate(net.io.name, semconv::NETWORK_IO_DIRECTION, semconv::DIRECTION_TRANSMIT),
        retransmits: rate(
            value(before, net.protocols.tcp_retransmitted.name),
            value(Some(r), net.protocols.tcp_retransmitted.name),
            seconds,
        ),
        disk_read: counter_rate(cg.disk_io.name, semconv::DISK_IO_DIRECTION, semconv::DIRECTION_READ),
        disk_write: counter_rate(cg.disk_io.name, semconv::DISK_IO_DIRECTION, semconv::DIRECTION_WRITE),
    }
}

/// The pod a resource belongs to, as a grouping key: the Kubernetes pod UID or the Podman
/// pod id; `None` for a container outside any pod.
pub fn pod_key(r: &Resource) -> Option<&str> {
    match &r.id {
        ResourceId::Pod(uid) => Some(uid),
        ResourceId::Container(_) => {
            str_attr(r, semconv::K8S_POD_UID).or_else(|| str_attr(r, semconv::PODMAN_POD_ID))
        }
    }
}

/// The pod's name as a metadata processor attached it: `namespace/pod` for Kubernetes, the
/// Podman pod's name; `None` when no processor named it.
pub fn pod_name(r: &Resource) -> Option<String> {
    match (str_attr(r, semconv::K8S_NAMESPACE_NAME), str_attr(r, semconv::K8S_POD_NAME)) {
        (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
        (None, Some(pod)) => Some(pod.to_owned()),
        _ => str_attr(r, semconv::PODMAN_POD_NAME).map(str::to_owned),
    }
}

/// A container's name in its pod, else its runtime name, else its short id.
pub fn container_name(r: &Resource, id: &str) -> String {
    str_attr(r, semconv::K8S_CONTAINER_NAME)
        .or_else(|| str_attr(r, semconv::CONTAINER_NAME))
        .map(str::to_owned)
        .unwrap_or_else(|| short(id, 12))
}

/// What the NAMESPACE/POD column shows: the pod's name, else the pod id from the cgroup path
/// (shortened), else nothing.
pub fn pod_cell(r: &Resource) -> Option<String> {
    pod_name(r).or_else(|| match &r.id {
        ResourceId::Pod(uid) => Some(short(uid, 12)),
        ResourceId::Container(_) => str_attr(r, semconv::K8S_POD_UID)
            .or_else(|| str_attr(r, semconv::PODMAN_POD_ID))
            .map(|id| short(id, 12)),
    })
}

/// What the NAME column shows: the container's name (see [`container_name`]).
pub fn name_cell(r: &Resource) -> String {
    match &r.id {
        ResourceId::Pod(_) => "(pod total)".to_owned(),
        ResourceId::Container(id) => container_name(r, id),
    }
}

/// Renders the table for `cur`, with rates against `prev`; names where known, ids too with
/// `ids`.
pub fn render(prev: &Sweep, cur: &Sweep, ids: bool) -> String {
    let seconds = seconds_between(prev, cur);
    struct Row {
        sort: (String, String, u8, String),
        ids: [String; 2],
        names: [String; 2],
        cells: [String; 6],
    }
    let mut rows: Vec<Row> = Vec::new();
    for r in &cur.resources {
        let st = stats(r, prev.resource(&r.id), seconds);
        let (id_cell, pod_key, order) = match &r.id {
            ResourceId::Pod(uid) => ("-".to_owned(), Some(uid.clone()), 0u8),
            ResourceId::Container(id) => (short(id, 12), pod_key(r).map(str::to_owned), 1u8),
        };
        let pod_col = pod_cell(r);
        let name = name_cell(r);
        let dash = || "-".to_owned();
        // Pods by what the table shows, then their key; containers without a pod last.
        let sort = match &pod_key {
            Some(key) => (pod_col.clone().unwrap_or_default(), key.clone(), order, name.clone()),
            None => ("~".to_owned(), name.clone(), order, id_cell.clone()),
        };
        rows.push(Row {
            sort,
            ids: [id_cell, pod_key.as_deref().map(|k| short(k, 12)).unwrap_or_else(dash)],
            names: [pod_col.unwrap_or_else(dash), name],
            cells: [
                str_attr(r, semconv::CONTAINER_RUNTIME_NAME).unwrap_or("-").to_owned(),
                st.cpu.map(|c| format!("{:.2}", c * 100.0)).unwrap_or_else(dash),
                match (st.memory, st.memory_limit) {
                    (Some(m), Some(l)) => format!("{} / {}", human_bytes(m), human_bytes(l)),
                    (Some(m), None) => format!("{} / -", human_bytes(m)),
                    _ => dash(),
                },
                st.pids.map(|p| format!("{p:.0}")).unwrap_or_else(dash),
                st.net_rx.map(|v| format!("{}/s", human_bytes(v))).unwrap_or_else(dash),
                st.net_tx.map(|v| format!("{}/s", human_bytes(v))).unwrap_or_else(dash),
            ],
        });
    }
    rows.sort_by(|a, b| a.sort.cmp(&b.sort));
    let name_widths: [usize; 2] = std::array::from_fn(|i| {
        rows.iter().map(|r| r.names[i].chars().count()).chain([NAME_HEADER[i].len()]).max().unwrap_or(0) + 2
    });
    let line = |ids_cells: [&str; 2], names: [&str; 2], cells: [&str; 6]| {
        let mut l = String::new();
        if ids {
            for (cell, width) in ids_cells.iter().zip(ID_WIDTHS) {
                let _ = write!(l, "{cell:<width$}");
            }
        }
        for (cell, width) in names.iter().zip(name_widths) {
            let _ = write!(l, "{cell:<width$}");
        }
        for (cell, width) in cells.iter().zip(WIDTHS) {
            let _ = write!(l, "{cell:<width$}");
        }
        l.trim_end().to_owned()
    };
    let mut out = line(ID_HEADER, NAME_HEADER, HEADER);
    out.push('\n');
    for row in &rows {
        out.push_str(&line(
            row.ids.each_ref().map(String::as_str),
            row.names.each_ref().map(String::as_str),
            row.cells.each_ref().map(String::as_str),
        ));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, Value};
    use std::time::{Duration, SystemTime};

    fn sweep(secs: u64, cpu: f64, rx: i64) -> Sweep {
        let mut s = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let c = s.resource_mut(ResourceId::Container("a".repeat(64)), || {
            vec![
                (semconv::CONTAINER_RUNTIME_NAME, "podman".into()),
                (semconv::PODMAN_POD_ID, "b".repeat(64).into()),
            ]
        });
        c.points.push(
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(cpu)).with(semconv::CPU_MODE, "user"),
        );
        c.points.push(
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(cpu)).with(semconv::CPU_MODE, "system"),
        );
        c.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(3 * 1024 * 1024)));
        c.points.push(Point::new(&semconv::CONTAINER.pids_count, Value::Int(2)));
        c.points.push(
            Point::new(&semconv::CONTAINER_NETWORK.io, Value::Int(rx))
                .with(semconv::NETWORK_INTERFACE_NAME, "eth0")
                .with(semconv::NETWORK_IO_DIRECTION, "receive"),
        );
        s
    }

    #[test]
    fn rates_come_from_the_difference_between_two_sweeps() {
        let text = render(&sweep(10, 1.0, 1000), &sweep(12, 1.5, 3048), false);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("NAMESPACE/POD"));
        let row = lines[1];
        // Without names: the short pod id and the short container id.
        assert!(row.starts_with(&format!("{}   {}", "b".repeat(12), "a".repeat(12))), "{row}");
        // user and system each grew 0.5 s over 2 s: 50 % in total.
        assert!(row.contains(" 50.00 "), "{row}");
        assert!(row.contains("3.0MiB / -"), "{row}");
        assert!(row.contains("1.0KiB/s"), "{row}");
        assert!(lines.iter().all(|l| l.len() <= 120), "{text}");
    }

    #[test]
    fn a_counter_that_went_backwards_shows_no_rate() {
        let text = render(&sweep(10, 5.0, 1000), &sweep(12, 1.0, 10), false);
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<_> = row.split_whitespace().collect();
        assert_eq!(cells[3], "-", "{row}");
    }

    /// A Kubernetes pod (pod row, a named container, a nameless sandbox), a named Podman
    /// container and a container the metadata processors know nothing about.
    fn named_sweep(secs: u64) -> Sweep {
        let mut s = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let uid = "0f7e3c1a-5b2d-4c8e-9a6f-1d2e3f4a5b6c";
        let k8s_pod = || -> Vec<(&'static str, AttrValue)> {
            vec![
                (semconv::K8S_POD_UID, uid.into()),
                (semconv::K8S_POD_NAME, "web-7d4b9c-x2x".into()),
                (semconv::K8S_NAMESPACE_NAME, "shop".into()),
            ]
        };
        s.resource_mut(ResourceId::Pod(uid.into()), k8s_pod);
        s.resource_mut(ResourceId::Container("1".repeat(64)), || {
            let mut a = k8s_pod();
            a.push((semconv::CONTAINER_RUNTIME_NAME, "containerd".into()));
            a.push((semconv::K8S_CONTAINER_NAME, "app".into()));
            a
        });
        s.resource_mut(ResourceId::Container("2".repeat(64)), || {
            let mut a = k8s_pod();
            a.push((semconv::CONTAINER_RUNTIME_NAME, "containerd".into()));
            a
        });
        s.resource_mut(ResourceId::Container("3".repeat(64)), || {
            vec![
                (semconv::CONTAINER_RUNTIME_NAME, "podman".into()),
                (semconv::PODMAN_POD_ID, "4".repeat(64).into()),
                (semconv::PODMAN_POD_NAME, "blog".into()),
                (semconv::CONTAINER_NAME, "blog-web".into()),
            ]
        });
        s.resource_mut(ResourceId::Container("5".repeat(64)), || {
            vec![(semconv::CONTAINER_RUNTIME_NAME, "docker".into())]
        });
        for r in &mut s.resources {
            r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(1024)));
        }
        s
    }

    /// Columns are separated by at least two spaces; `(pod total)` has one inside.
    fn cells(line: &str) -> Vec<&str> {
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
    }

    #[test]
    fn names_replace_ids_where_known_and_ids_come_back_with_the_flag() {
        let text = render(&named_sweep(10), &named_sweep(12), false);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(cells(lines[0])[..3], ["NAMESPACE/POD", "NAME", "RUNTIME"], "{text}");
        // Podman's pod sorts before shop/…; the pod total leads its pod; no pod comes last.
        let firsts: Vec<_> = lines[1..].iter().map(|l| cells(l)[..2].join(" ")).collect();
        assert_eq!(
            firsts,
            [
                "blog blog-web",
                "shop/web-7d4b9c-x2x (pod total)",
                "shop/web-7d4b9c-x2x 222222222222",
                "shop/web-7d4b9c-x2x app",
                "- 555555555555",
            ],
            "{text}"
        );
        assert!(!text.contains("0f7e3c1a"), "no pod uid when the pod has a name: {text}");
        assert!(!text.contains("111111111111"), "no id for a named container: {text}");

        let text = render(&named_sweep(10), &named_sweep(12), true);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(cells(lines[0])[..4], ["CONTAINER", "POD", "NAMESPACE/POD", "NAME"], "{text}");
        let app = lines.iter().find(|l| l.contains(" app ")).expect("app row");
        assert_eq!(cells(app)[..4], ["111111111111", "0f7e3c1a-5b2", "shop/web-7d4b9c-x2x", "app"], "{text}");
        let pod_total = lines.iter().find(|l| l.contains("(pod total)")).expect("pod row");
        assert_eq!(cells(pod_total)[..2], ["-", "0f7e3c1a-5b2"], "{text}");
    }
}
