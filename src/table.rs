//! The `collect --format table` view: one line per pod and per container, in the spirit of
//! `docker stats`, with rates computed between two sweeps.

use std::fmt::Write;

use crate::model::{AttrValue, Resource, ResourceId, Sweep};
use crate::semconv::{self, CgroupFamily, NetworkFamily};

const HEADER: [&str; 8] =
    ["CONTAINER", "POD", "RUNTIME", "CPU %", "MEM USAGE / LIMIT", "PIDS", "NET RX/s", "NET TX/s"];
const WIDTHS: [usize; 8] = [14, 14, 11, 8, 23, 6, 11, 11];

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
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
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

/// Renders the table for `cur`, with rates against `prev`.
pub fn render(prev: &Sweep, cur: &Sweep) -> String {
    let seconds = seconds_between(prev, cur);
    let mut rows: Vec<(String, u8, [String; 8])> = Vec::new();
    for r in &cur.resources {
        let st = stats(r, prev.resource(&r.id), seconds);
        let (name, pod_key, order) = match &r.id {
            ResourceId::Pod(uid) => ("(pod total)".to_owned(), uid.clone(), 0u8),
            ResourceId::Container(id) => {
                (short(id, 12), pod_key(r).map(str::to_owned).unwrap_or_else(|| format!("~{id}")), 1u8)
            }
        };
        let pod_col = if pod_key.starts_with('~') { "-".to_owned() } else { short(&pod_key, 12) };
        let runtime = str_attr(r, semconv::CONTAINER_RUNTIME_NAME).unwrap_or("-").to_owned();
        let dash = || "-".to_owned();
        let cells = [
            name,
            pod_col,
            runtime,
            st.cpu.map(|c| format!("{:.2}", c * 100.0)).unwrap_or_else(dash),
            match (st.memory, st.memory_limit) {
                (Some(m), Some(l)) => format!("{} / {}", human_bytes(m), human_bytes(l)),
                (Some(m), None) => format!("{} / -", human_bytes(m)),
                _ => dash(),
            },
            st.pids.map(|p| format!("{p:.0}")).unwrap_or_else(dash),
            st.net_rx.map(|v| format!("{}/s", human_bytes(v))).unwrap_or_else(dash),
            st.net_tx.map(|v| format!("{}/s", human_bytes(v))).unwrap_or_else(dash),
        ];
        rows.push((pod_key, order, cells));
    }
    rows.sort_by(|a, b| (&a.0, a.1, &a.2[0]).cmp(&(&b.0, b.1, &b.2[0])));
    let mut out = String::new();
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (cell, width) in cells.iter().zip(WIDTHS) {
            let _ = write!(l, "{cell:<width$}");
        }
        l.trim_end().to_owned()
    };
    out.push_str(&line(&HEADER.map(str::to_owned)));
    out.push('\n');
    for (_, _, cells) in &rows {
        out.push_str(&line(cells));
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
        let text = render(&sweep(10, 1.0, 1000), &sweep(12, 1.5, 3048));
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("CONTAINER"));
        let row = lines[1];
        assert!(row.starts_with(&"a".repeat(12)), "{row}");
        // user and system each grew 0.5 s over 2 s: 50 % in total.
        assert!(row.contains(" 50.00 "), "{row}");
        assert!(row.contains("3.0MiB / -"), "{row}");
        assert!(row.contains("1.0KiB/s"), "{row}");
        assert!(lines.iter().all(|l| l.len() <= 120), "{text}");
    }

    #[test]
    fn a_counter_that_went_backwards_shows_no_rate() {
        let text = render(&sweep(10, 5.0, 1000), &sweep(12, 1.0, 10));
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<_> = row.split_whitespace().collect();
        assert_eq!(cells[3], "-", "{row}");
    }
}
