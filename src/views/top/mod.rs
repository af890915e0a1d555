//! `podometer top`: a live terminal view, one row per container grouped under its pod, with
//! rates between the last two sweeps (the same [`table::stats`] as `collect --format table`).
//!
//! The model (grouping, sorting, filtering) is pure and tested here; the terminal part draws
//! it with ratatui on crossterm (output only: keys are read here, see [`Key`]) and restores the
//! terminal on `q`, on SIGTERM/SIGHUP/SIGINT, when the terminal goes away, and on a panic.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{execute, terminal};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row, Table};
use ratatui::{Frame, Terminal};

mod tty;

pub use tty::{parse_keys, Key};

use crate::model::{ResourceId, Sweep};
use crate::pipeline::{self, Pipeline};
use crate::views::table::{self, container_name, pod_key, pod_name, scaled_bytes, short, Stats};
use tty::{install_handlers, leave_screen, Input, Restore, Tty, RESIZED, SAVED_MODES, SIGNALLED, TTY_FD};

/// What rows are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Cpu,
    Memory,
    Network,
    Name,
}

impl SortKey {
    fn label(self) -> &'static str {
        match self {
            SortKey::Cpu => "cpu",
            SortKey::Memory => "memory",
            SortKey::Network => "network",
            SortKey::Name => "name",
        }
    }
}

/// One container row.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub label: String,
    pub id: String,
    pub stats: Stats,
}

/// A pod (or a container outside any pod) and its containers.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub label: String,
    pub id: String,
    /// The pod's totals: its own cgroup's when the pod has one (Kubernetes), else the sum of
    /// its containers; network is the pod's, wherever the namespace's owner reported it.
    pub stats: Stats,
    pub members: Vec<Member>,
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Groups the resources of `cur` by pod, with rates against `prev`.
pub fn build(prev: &Sweep, cur: &Sweep) -> Vec<Group> {
    let seconds = table::seconds_between(prev, cur);
    let mut groups: Vec<Group> = Vec::new();
    // (group index, pod cgroup's stats) for pods that have their own cgroup.
    let mut pod_totals: Vec<Option<Stats>> = Vec::new();
    for r in &cur.resources {
        let st = table::stats(r, prev.resource(&r.id), seconds);
        let (key, standalone) = match (&r.id, pod_key(r)) {
            (_, Some(pod)) => (pod.to_owned(), false),
            (ResourceId::Container(id), None) => (id.clone(), true),
            (ResourceId::Pod(uid), None) => (uid.clone(), false),
        };
        let gi = match groups.iter().position(|g| g.id == key) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    label: String::new(),
                    id: key.clone(),
                    stats: Stats {
                        cpu: None,
                        memory: None,
                        memory_limit: None,
                        pids: None,
                        net_rx: None,
                        net_tx: None,
                        retransmits: None,
                        disk_read: None,
                        disk_write: None,
                    },
                    members: Vec::new(),
                });
                pod_totals.push(None);
                groups.len() - 1
            }
        };
        let group = &mut groups[gi];
        if group.label.is_empty() {
            if let Some(label) = pod_name(r).filter(|_| !standalone) {
                group.label = label;
            }
        }
        match &r.id {
            ResourceId::Pod(_) => pod_totals[gi] = Some(st),
            ResourceId::Container(id) if standalone => {
                group.label = container_name(r, id);
                group.stats = st;
            }
            ResourceId::Container(id) => {
                let g = &mut group.stats;
                g.cpu = add(g.cpu, st.cpu);
                g.memory = add(g.memory, st.memory);
                g.pids = add(g.pids, st.pids);
                g.net_rx = add(g.net_rx, st.net_rx);
                g.net_tx = add(g.net_tx, st.net_tx);
                g.retransmits = add(g.retransmits, st.retransmits);
                g.disk_read = add(g.disk_read, st.disk_read);
                g.disk_write = add(g.disk_write, st.disk_write);
                // Network is shown once, on the pod.
                let stats = Stats { net_rx: None, net_tx: None, retransmits: None, ..st };
                group.members.push(Member { label: container_name(r, id), id: id.clone(), stats });
            }
        }
    }
    for (group, total) in groups.iter_mut().zip(pod_totals) {
        if let Some(total) = total {
            group.stats = total;
        }
        if group.label.is_empty() {
            group.label = format!("pod {}", short(&group.id, 12));
        }
    }
    groups
}

fn sort_value(stats: &Stats, key: SortKey) -> Option<f64> {
    match key {
        SortKey::Cpu => stats.cpu,
        SortKey::Memory => stats.memory,
        SortKey::Network => add(stats.net_rx, stats.net_tx),
        SortKey::Name => None,
    }
}

/// Orders numbers descending (missing last), names ascending.
fn compare(a: (&Stats, &str), b: (&Stats, &str), key: SortKey) -> std::cmp::Ordering {
    if key == SortKey::Name {
        return a.1.cmp(b.1);
    }
    let (x, y) = (sort_value(a.0, key), sort_value(b.0, key));
    match (x, y) {
        (Some(x), Some(y)) => y.total_cmp(&x).then_with(|| a.1.cmp(b.1)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(b.1),
    }
}

/// Sorts groups and their members and keeps what matches `filter` (a case-insensitive
/// substring of a pod's or container's name or id; a matching pod keeps all its containers).
pub fn arrange(mut groups: Vec<Group>, key: SortKey, filter: &str) -> Vec<Group> {
    let needle = filter.to_lowercase();
    let hit = |label: &str, id: &str| {
        needle.is_empty() || label.to_lowercase().contains(&needle) || id.to_lowercase().contains(&needle)
    };
    groups.retain_mut(|g| {
        if hit(&g.label, &g.id) {
            return true;
        }
        g.members.retain(|m| hit(&m.label, &m.id));
        !g.members.is_empty()
    });
    for g in &mut groups {
        g.members.sort_by(|a, b| compare((&a.stats, &a.label), (&b.stats, &b.label), key));
    }
    groups.sort_by(|a, b| compare((&a.stats, &a.label), (&b.stats, &b.label), key));
    groups
}

/// Bytes in at most 7 characters: `1023.9K`.
fn compact(b: f64) -> String {
    scaled_bytes(b, ["B", "K", "M", "G", "T"])
}

fn cells(label: String, st: &Stats) -> [String; 9] {
    let dash = || "-".to_owned();
    let bytes = |v: Option<f64>| v.map(compact).unwrap_or_else(dash);
    [
        label,
        st.cpu.map(|c| format!("{:.1}", c * 100.0)).unwrap_or_else(dash),
        bytes(st.memory),
        st.pids.map(|p| format!("{p:.0}")).unwrap_or_else(dash),
        bytes(st.net_rx),
        bytes(st.net_tx),
        bytes(st.disk_read),
        bytes(st.disk_write),
        st.retransmits
            .map(|r| if r < 10.0 { format!("{r:.1}") } else { format!("{r:.0}") })
            .unwrap_or_else(dash),
    ]
}

/// `RETR/s`: TCP segments the pod's network namespace retransmitted per second.
pub const HEADER: [&str; 9] =
    ["POD / CONTAINER", "CPU%", "MEM", "PIDS", "NET RX/s", "NET TX/s", "DSK R/s", "DSK W/s", "RETR/s"];
/// Fits 80 columns with one space between columns.
const WIDTHS: [u16; 9] = [18, 6, 7, 5, 8, 8, 7, 7, 6];

/// The rows as text cells, pods first and their containers indented under them.
pub fn rows(groups: &[Group]) -> Vec<(bool, [String; 9])> {
    let mut out = Vec::new();
    for g in groups {
        out.push((true, cells(g.label.clone(), &g.stats)));
        for m in &g.members {
            out.push((false, cells(format!("  {}", m.label), &m.stats)));
        }
    }
    out
}

struct View {
    key: SortKey,
    filter: String,
    editing: bool,
    groups: Vec<Group>,
    containers: usize,
    interval: Duration,
}

fn draw(frame: &mut Frame, view: &View) {
    let [title, help, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(0)])
            .areas(frame.area());
    let filter = if view.editing {
        format!("  filter: {}_", view.filter)
    } else if view.filter.is_empty() {
        String::new()
    } else {
        format!("  filter: {}", view.filter)
    };
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "podometer top  {} pods, {} containers  every {}  sort: {}{filter}",
            view.groups.len(),
            view.containers,
            humantime::format_duration(view.interval),
            view.key.label()
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        title,
    );
    frame.render_widget(
        Paragraph::new("q quit  c cpu  m memory  n network  a name  / filter  esc clear"),
        help,
    );
    let arranged = arrange(view.groups.clone(), view.key, &view.filter);
    let rows = rows(&arranged).into_iter().map(|(is_group, cells)| {
        let row = Row::new(cells);
        if is_group {
            row.style(Style::default().add_modifier(Modifier::BOLD))
        } else {
            row
        }
    });
    let table = Table::new(rows, WIDTHS.map(Constraint::Length))
        .header(Row::new(HEADER).style(Style::default().add_modifier(Modifier::REVERSED)))
        .column_spacing(1);
    frame.render_widget(table, body);
}

/// Handles one key; returns false to quit.
fn key(view: &mut View, key: Key) -> bool {
    if key == Key::Interrupt {
        return false;
    }
    if view.editing {
        match key {
            Key::Enter => view.editing = false,
            Key::Esc => {
                view.editing = false;
                view.filter.clear();
            }
            Key::Backspace => {
                view.filter.pop();
            }
            Key::Char(c) if view.filter.len() < 64 => view.filter.push(c),
            _ => {}
        }
        return true;
    }
    match key {
        Key::Char('q') => return false,
        Key::Char('c') => view.key = SortKey::Cpu,
        Key::Char('m') => view.key = SortKey::Memory,
        Key::Char('n') => view.key = SortKey::Network,
        Key::Char('a') => view.key = SortKey::Name,
        Key::Char('/') => view.editing = true,
        Key::Esc => view.filter.clear(),
        _ => {}
    }
    true
}

fn count_containers(sweep: &Sweep) -> usize {
    sweep.resources.iter().filter(|r| matches!(r.id, ResourceId::Container(_))).count()
}

fn stop_requested() -> bool {
    SIGNALLED.load(Ordering::SeqCst) != 0
}

/// Runs the view until `q`, Ctrl-C, a stop signal (SIGTERM, SIGHUP, SIGINT) or the loss of
/// the terminal. The terminal is restored in every case; if the loop cannot get back to do it
/// within [`tty::GRACE_SECONDS`] of a signal (or at a second signal), the handler restores the
/// modes and exits with 128 + the signal.
pub fn run(pipelines: &mut [Pipeline], interval: Duration) -> io::Result<()> {
    install_handlers();
    let tty = Tty::open()?;
    let modes = tty.modes()?;
    let _ = SAVED_MODES.set(modes);
    TTY_FD.store(tty.fd, Ordering::SeqCst);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let fd = TTY_FD.load(Ordering::SeqCst);
        if let (true, Some(modes)) = (fd >= 0, SAVED_MODES.get()) {
            // SAFETY: the terminal's fd and the modes read from it.
            unsafe { libc::tcsetattr(fd, libc::TCSANOW, modes) };
        }
        leave_screen();
        previous(info);
    }));
    let mut prev = pipeline::sweep_all(pipelines, SystemTime::now());
    if stop_requested() {
        cancel_grace();
        return Ok(());
    }
    let mut raw = modes;
    // SAFETY: raw is a valid termios copied from the terminal's.
    unsafe { libc::cfmakeraw(&mut raw) };
    let restore = Restore { tty: &tty, modes };
    tty.set_modes(&raw)?;
    execute!(io::stdout(), terminal::EnterAlternateScreen)?;
    let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let result = run_loop(terminal, &tty, pipelines, interval, &mut prev);
    drop(restore);
    cancel_grace();
    result
}

/// The terminal is back as it was: what follows (the pipelines' shutdown) is the process's
/// normal exit, which a pending grace alarm must not turn into an exit with 128 + signal. A
/// second stop signal still ends the process at once.
fn cancel_grace() {
    // SAFETY: alarm has no preconditions; 0 cancels a pending alarm.
    unsafe { libc::alarm(0) };
}

fn run_loop(
    mut terminal: Terminal<CrosstermBackend<io::Stdout>>,
    tty: &Tty,
    pipelines: &mut [Pipeline],
    interval: Duration,
    prev: &mut Sweep,
) -> io::Result<()> {
    let mut view = View {
        key: SortKey::Cpu,
        filter: String::new(),
        editing: false,
        groups: build(prev, prev),
        containers: count_containers(prev),
        interval,
    };
    // The first rates come a second after the first sweep, then every interval.
    let mut next = Instant::now() + interval.min(Duration::from_secs(1));
    loop {
        terminal.draw(|f| draw(f, &view))?;
        loop {
            if stop_requested() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            match tty.wait((next - now).min(Duration::from_millis(200))) {
                Input::Gone => return Ok(()),
                Input::Keys(keys) => {
                    for k in keys {
                        if !key(&mut view, k) {
                            return Ok(());
                        }
                    }
                    terminal.draw(|f| draw(f, &view))?;
                }
                Input::Nothing => {
                    if RESIZED.swap(false, Ordering::SeqCst) {
                        // draw() asks the terminal its size and clears on a change.
                        terminal.draw(|f| draw(f, &view))?;
                    }
                }
            }
        }
        let cur = pipeline::sweep_all(pipelines, SystemTime::now());
        view.groups = build(prev, &cur);
        view.containers = count_containers(&cur);
        *prev = cur;
        next += interval;
        if next < Instant::now() {
            next = Instant::now() + interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, Value};
    use crate::semconv;
    use std::time::Duration;

    fn container(s: &mut Sweep, id: &str, pod: Option<&str>, cpu: f64, rx: Option<i64>) {
        let r = s.resource_mut(ResourceId::Container(id.into()), || {
            let mut a = vec![(semconv::CONTAINER_ID, id.into())];
            if let Some(pod) = pod {
                a.push((semconv::PODMAN_POD_ID, pod.into()));
            }
            a
        });
        r.points.push(
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(cpu)).with(semconv::CPU_MODE, "user"),
        );
        r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int((cpu * 1000.0) as i64)));
        if let Some(rx) = rx {
            r.points.push(
                Point::new(&semconv::CONTAINER_NETWORK.io, Value::Int(rx))
                    .with(semconv::NETWORK_INTERFACE_NAME, "eth0")
                    .with(semconv::NETWORK_IO_DIRECTION, "receive"),
            );
        }
    }

    fn sweeps() -> (Sweep, Sweep) {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mut a = Sweep::new(t);
        let mut b = Sweep::new(t + Duration::from_secs(2));
        for (s, k) in [(&mut a, 0.0), (&mut b, 1.0)] {
            container(s, "infra000000000", Some("podA"), 0.0, Some(1000 + (k * 2048.0) as i64));
            container(s, "busy0000000000", Some("podA"), 1.0 + k * 1.5, None);
            container(s, "idle0000000000", Some("podA"), 1.0 + k * 0.1, None);
            container(s, "alone000000000", None, 5.0 + k * 0.5, None);
        }
        (a, b)
    }

    #[test]
    fn containers_group_under_their_pod_with_pod_network_and_summed_cpu() {
        let (a, b) = sweeps();
        let groups = arrange(build(&a, &b), SortKey::Cpu, "");
        assert_eq!(groups.len(), 2);
        let pod = &groups[0];
        assert_eq!(pod.label, "pod podA");
        // 1.5 s + 0.1 s over 2 s.
        assert!((pod.stats.cpu.unwrap() - 0.8).abs() < 1e-9, "{:?}", pod.stats);
        assert_eq!(pod.stats.net_rx, Some(1024.0));
        let order: Vec<&str> = pod.members.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(order, ["busy00000000", "idle00000000", "infra0000000"]);
        assert!(pod.members.iter().all(|m| m.stats.net_rx.is_none()), "network only on the pod row");
        assert_eq!(groups[1].label, "alone0000000");
        assert!(groups[1].members.is_empty());
    }

    #[test]
    fn the_pod_row_shows_the_namespace_retransmit_rate() {
        let (mut a, mut b) = sweeps();
        // The infra container owns the Podman pod's namespace: 10 then 16 segments over 2 s.
        for (s, n) in [(&mut a, 10), (&mut b, 16)] {
            let r = s.resource_mut(ResourceId::Container("infra000000000".into()), Vec::new);
            r.points.push(Point::new(&semconv::CONTAINER_NETWORK.protocols.tcp_retransmitted, Value::Int(n)));
        }
        let groups = arrange(build(&a, &b), SortKey::Cpu, "");
        assert_eq!(groups[0].stats.retransmits, Some(3.0));
        assert!(groups[0].members.iter().all(|m| m.stats.retransmits.is_none()), "only on the pod row");
        assert_eq!(groups[1].stats.retransmits, None, "no counter, no rate");
        let cells = rows(&groups);
        assert_eq!(cells[0].1[8], "3.0");
        assert_eq!(cells.last().unwrap().1[8], "-");
    }

    #[test]
    fn sorting_by_name_and_filtering() {
        let (a, b) = sweeps();
        let by_name = arrange(build(&a, &b), SortKey::Name, "");
        assert_eq!(by_name[0].label, "alone0000000");
        let order: Vec<&str> = by_name[1].members.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(order, ["busy00000000", "idle00000000", "infra0000000"]);
        let filtered = arrange(build(&a, &b), SortKey::Cpu, "IDLE");
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].members.len(), 1);
        let whole_pod = arrange(build(&a, &b), SortKey::Cpu, "poda");
        assert_eq!(whole_pod[0].members.len(), 3);
    }

    #[test]
    fn rows_fit_80_columns() {
        let total: u16 = WIDTHS.iter().sum::<u16>() + (WIDTHS.len() as u16 - 1);
        assert!(total <= 80, "{total}");
        assert_eq!(compact(1023.9 * 1024.0), "1023.9K");
    }
}
