//! The peers' section of `node.md` (the engines' stats APIs through the Collector, and the real
//! node), with `node-peers.csv` and `node-peers.dat` for the plot. A peer that did not run has
//! its row, saying why.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;

use super::engines::EngineRow;
use super::kube::KubeResult;
use super::{Args, Row};

fn not_run(why: &str) -> String {
    // One line in a table cell: no pipes, no newlines, bounded.
    let mut s: String = why.replace(['|', '\n'], " ").chars().take(160).collect();
    if s.len() < why.len() {
        s.push('…');
    }
    format!("not run: {s}")
}

fn times(a: f64, b: f64) -> String {
    format!("{:.1}×", a / b)
}

pub fn write(
    args: &Args,
    conditions: &str,
    rows: &[Row],
    engines: &[EngineRow],
    kube: Option<&Result<KubeResult, String>>,
) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Peers: the OpenTelemetry Collector's receivers over real containers, and the real node\n"
    );
    let _ = writeln!(md, "Same run ({conditions}); every peer at the agent's 1 s cadence.\n");
    let _ = writeln!(
        md,
        "Real containers (`busybox sleep`, `--network none`) of an engine of the bench's own. podometer: the agent over the same containers (built-in config), µs per container-sweep. Collector: only that receiver, `collection_interval: 1s`, OTLP gRPC to the bench's receiver, µs per container-sample delivered (its process, user + system). Engine above idle: what the engine's daemons (dockerd with its containerd and shims; the Podman API service) spent above their idle CPU while the receiver asked for stats, per container-sample.\n"
    );
    let _ = writeln!(
        md,
        "| engine | N | podometer | podometer RSS MiB | Collector receiver | samples/s | Collector | Collector RSS MiB | engine above idle | Collector ÷ podometer | (Collector + engine) ÷ podometer |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut csv = String::from(
        "engine,n,agent_us,agent_rss_mib,receiver,samples_per_s,collector_us,collector_rss_mib,engine_added_us\n",
    );
    if engines.is_empty() {
        let _ =
            writeln!(md, "| - | - | {} | | | | | | | | |", not_run("no engine asked for (--engines none)"));
    }
    for e in engines {
        let receiver = if e.kind == "docker" { "`docker_stats`" } else { "`podman_stats`" };
        let (agent, agent_rss) = match &e.agent {
            Ok(a) => (format!("{:.1}", a.per_container_sweep), format!("{:.1}", a.rss_mib)),
            Err(why) => (not_run(why), "-".into()),
        };
        let (rate, coll, coll_rss) = match &e.collector {
            Ok(c) => {
                (format!("{:.0}", c.delivered), format!("{:.1}", c.per_sample), format!("{:.1}", c.rss_mib))
            }
            Err(why) => ("-".into(), not_run(why), "-".into()),
        };
        let added = e.engine_added();
        let (r1, r2) = match (&e.agent, &e.collector) {
            (Ok(a), Ok(c)) => (
                times(c.per_sample, a.per_container_sweep),
                added.map_or("-".into(), |x| times(c.per_sample + x, a.per_container_sweep)),
            ),
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {agent} | {agent_rss} | {receiver} | {rate} | {coll} | {coll_rss} | {} | {r1} | {r2} |",
            e.kind,
            e.n,
            added.map_or("-".into(), |x| format!("{x:.1}"))
        );
        let opt = |v: Option<f64>| v.map_or("NaN".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{}",
            e.kind,
            e.n,
            opt(e.agent.as_ref().ok().map(|a| a.per_container_sweep)),
            opt(e.agent.as_ref().ok().map(|a| a.rss_mib)),
            receiver.trim_matches('`'),
            opt(e.collector.as_ref().ok().map(|c| c.delivered)),
            opt(e.collector.as_ref().ok().map(|c| c.per_sample)),
            opt(e.collector.as_ref().ok().map(|c| c.rss_mib)),
            opt(added),
        );
    }

    let _ = writeln!(md);
    match kube {
        None => {
            let _ = writeln!(
                md,
                "Real node (kubeletstats, /metrics/cadvisor): {}.",
                not_run("measured only with --kube (the full run; the CI smoke leaves the real node out to stay short)")
            );
        }
        Some(Err(why)) => {
            let _ = writeln!(md, "Real node (kubeletstats, /metrics/cadvisor): {}.", not_run(why));
        }
        Some(Ok(k)) => write_kube(&mut md, k),
    }
    if let Ok(p) = &args.otelcol {
        let _ = writeln!(md, "\nCollector: `{}`.", p.display());
    }

    let path = args.out.join(format!("node{}.md", args.label));
    fs::OpenOptions::new().append(true).open(&path)?.write_all(md.as_bytes())?;
    fs::write(args.out.join(format!("node-peers{}.csv", args.label)), csv)?;

    // The plot's data: per N, the agent on the synthetic node, then per engine the agent over
    // its containers, its receiver, and receiver + engine.
    let mut ns: Vec<usize> = rows.iter().map(|r| r.n).chain(engines.iter().map(|e| e.n)).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut dat = String::from(
        "# n podometer-synthetic podometer-docker docker_stats docker_stats+engine podometer-podman podman_stats podman_stats+engine\n",
    );
    for n in ns {
        let synthetic = rows.iter().find(|r| r.n == n).map(|r| r.agent.per_container_sweep);
        let mut cols = vec![synthetic];
        for kind in ["docker", "podman"] {
            let e = engines.iter().find(|e| e.n == n && e.kind == kind);
            let agent = e.and_then(|e| e.agent.as_ref().ok()).map(|a| a.per_container_sweep);
            let coll = e.and_then(|e| e.collector.as_ref().ok()).map(|c| c.per_sample);
            let with_engine = e.and_then(|e| Some(e.collector.as_ref().ok()?.per_sample + e.engine_added()?));
            cols.extend([agent, coll, with_engine]);
        }
        let cells: Vec<String> = cols.iter().map(|v| v.map_or("NaN".into(), |v| format!("{v:.2}"))).collect();
        let _ = writeln!(dat, "{n} {}", cells.join(" "));
    }
    fs::write(args.out.join(format!("node-peers{}.dat", args.label)), dat)?;
    Ok(())
}

fn write_kube(md: &mut String, k: &KubeResult) {
    let _ = writeln!(
        md,
        "Real node (`scripts/kube-node.sh`: kubelet over containerd): {} one-container pods (maxPods {}), windows of {} s one after another. Kubelet CPU is its process' user + system; \"above idle\" subtracts the mean of an idle window before and after, per pod and second (µs per pod-sample). The scraper's cost is per pod-sample it delivered.\n",
        k.pods, k.max_pods, k.seconds
    );
    let _ = writeln!(
        md,
        "| what asks the kubelet | kubelet CPU ms/s | kubelet above idle, µs per pod-sample | scraper | scraper µs per pod-sample | scraper RSS MiB | pods/s delivered |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let _ = writeln!(md, "| nothing (idle) | {:.2} | - | - | - | - | - |", k.kubelet_idle * 1e3);
    match &k.kubeletstats {
        Ok(c) => {
            let busy = c.other_per_sec.unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| Collector `kubeletstats` (/stats/summary) | {:.2} | {:.1} | Collector | {:.1} | {:.1} | {:.1} |",
                busy * 1e3,
                k.kubelet_added(busy),
                c.per_sample,
                c.rss_mib,
                c.delivered
            );
        }
        Err(why) => {
            let _ = writeln!(
                md,
                "| Collector `kubeletstats` (/stats/summary) | {} | - | - | - | - | - |",
                not_run(why)
            );
        }
    }
    match &k.cadvisor {
        Ok((busy, pods)) => {
            let _ = writeln!(
                md,
                "| `/metrics/cadvisor` once a second (one curl, connection kept) | {:.2} | {:.1} | curl | - | - | {pods} per scrape |",
                busy * 1e3,
                k.kubelet_added(*busy)
            );
        }
        Err(why) => {
            let _ = writeln!(md, "| `/metrics/cadvisor` | {} | - | - | - | - | - |", not_run(why));
        }
    }
    match &k.agent {
        Ok((a, busy)) => {
            let per_pod = a.per_container_sweep * a.containers as f64 / k.pods as f64;
            let _ = writeln!(
                md,
                "| nothing: podometer reads the cgroups | {:.2} | {:.1} | podometer | {per_pod:.1} ({:.1} per container-sweep, {} containers) | {:.1} | - |",
                busy * 1e3,
                k.kubelet_added(*busy),
                a.per_container_sweep,
                a.containers,
                a.rss_mib
            );
        }
        Err(why) => {
            let _ = writeln!(md, "| podometer | {} | - | - | - | - | - |", not_run(why));
        }
    }
    match &k.profile {
        Ok(p) => {
            let _ = writeln!(
                md,
                "\nThe idle kubelet under its own CPU profiler (`/debug/pprof/profile`, one more window of {} s): {:.2} ms/s, of which {:.1} % of the samples in cAdvisor's code (`github.com/google/cadvisor/`: housekeeping of the {} cgroups its `/metrics/cadvisor` reports, the node's own among them), **{:.2} ms/s, {:.1} µs per pod and second** — what the kubelet spends collecting with nobody asking (profile: `kubelet-cpu.pprof`).",
                k.seconds,
                p.cpu * 1e3,
                100.0 * p.cadvisor / p.sampled,
                p.cgroups,
                p.cadvisor_cpu() * 1e3,
                p.cadvisor_cpu() * 1e6 / k.pods as f64
            );
        }
        Err(why) => {
            let _ = writeln!(md, "\nThe idle kubelet's CPU profile: {}.", not_run(why));
        }
    }
}
