//! The `podometer` command: `run`, `collect`, `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing::info;

use podometer::config::{self, Config};
use podometer::exporters::otlp::encode;
use podometer::pipeline;
use podometer::views::table;

#[derive(Parser)]
#[command(name = "podometer", version, about = "Per-container and per-pod metrics, pushed as OTLP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Sweep every `interval` and export, until SIGINT or SIGTERM.
    Run {
        /// Config file; the built-in default (config/podometer.yaml) when left out.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Sweep the sources once (twice for `table`) and print the result.
    Collect {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Time between the two sweeps the table's rates come from.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Table: show the container and pod ids beside the names.
        #[arg(long)]
        ids: bool,
    },
    /// A live view of every pod and container (q quits; c, m, n, a sort; / filters).
    Top {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Time between refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Validate a config file and print the resolved pipelines.
    CheckConfig {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One line holding an OTLP ExportMetricsServiceRequest in OTLP/JSON.
    Json,
    /// A human table in the spirit of `docker stats`.
    Table,
}

/// glibc's malloc, bounded: without this the agent held 32.5 MiB RSS at 500 containers, 23.7 MiB
/// with it (`scripts/bench-node.sh`, same run conditions; measured with the `MALLOC_*_`
/// variables first). Two things keep freed memory: each thread that allocates gets its own
/// arena (the sweep thread, the runtime's workers, the blocking pool), and after the first large
/// buffer (a sweep's requests are hundreds of KiB) is freed, glibc raises its mmap threshold up
/// to 32 MiB, so later large buffers come from the heap and fragment it. Fixed thresholds keep
/// large buffers in mmap (returned on free) and trim the heap; two arenas keep the threads from
/// contending on one lock. A `MALLOC_*_` variable the user set wins (glibc reads them at start).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_malloc() {
    let set = |var: &str, param: libc::c_int, value: libc::c_int| {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only sets allocator parameters; called before any other thread.
            unsafe { libc::mallopt(param, value) };
        }
    };
    set("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2);
    set("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 * 1024);
    set("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 128 * 1024);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc() {}

fn main() -> ExitCode {
    bound_malloc();
    let cli = Cli::parse();
    // `top` owns the screen: a log line on stderr would tear it, so it logs nothing.
    if !matches!(cli.command, Command::Top { .. }) {
        init_logging(&cli.log);
    }
    match cli.command {
        Command::CheckConfig { config } => match config::load(config.as_deref()) {
            Ok(cfg) => {
                print!("{}", cfg.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                for line in e.lines() {
                    println!("{line}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Collect { config, format, window, ids } => {
            report(load(config).and_then(|c| collect(&c, format, window, ids)))
        }
        Command::Run { config } => report(load(config).and_then(run)),
        Command::Top { config, interval } => report(load(config).and_then(|c| top(&c, interval))),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podometer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    // RUST_LOG wins over --log; either way kube's own targets stay quiet unless named.
    let parse =
        |text: &str| tracing_subscriber::EnvFilter::try_new(podometer::agent_counters::log_filter(text));
    let filter = std::env::var("RUST_LOG")
        .map_err(|_| ())
        .and_then(|text| parse(&text).map_err(|_| ()))
        .or_else(|_| parse(default))
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(podometer::agent_counters::log_filter("info"))
        });
    // Logs go to stderr so that `collect` output on stdout stays machine-readable.
    // Colours only on a terminal: container logs (`kubectl logs`, journald) get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let config = config::load(path.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{}", e.lines().join("\n")))?;
    if let Some(choice) = &config.view {
        let view = match &choice.view {
            config::view::View::Node { .. } => "node",
            config::view::View::Sidecar => "sidecar",
        };
        info!(view, reason = %choice.reason, "Built-in configuration chosen.");
    }
    Ok(config)
}

/// Raises the soft open-file limit to the hard one: every container keeps a dozen cgroup files
/// open, and the usual soft limit of 1,024 would cap the agent at about 70 containers.
fn raise_fd_limit() {
    match podometer::fdlimit::raise_soft_to_hard() {
        Ok((before, after)) if after.soft > before.soft => {
            info!(from = before.soft, to = after.soft, "Raised the open-file limit to the hard limit.")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Keeping the open-file limit as it is."),
    }
}

fn collect(config: &Config, format: Format, window: Duration, ids: bool) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut pipelines = pipeline::build_pipelines(config)?;
    for p in &pipelines {
        p.wait_for_processors();
    }
    match format {
        Format::Json => {
            let sweep = pipeline::sweep_all(&mut pipelines, SystemTime::now());
            println!("{}", encode::to_json_line(&encode::encode_sweep(&sweep)));
        }
        Format::Table => {
            let first = pipeline::sweep_all(&mut pipelines, SystemTime::now());
            std::thread::sleep(window);
            let second = pipeline::sweep_all(&mut pipelines, SystemTime::now());
            print!("{}", table::render(&first, &second, ids));
        }
    }
    Ok(())
}

fn top(config: &Config, interval: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(!interval.is_zero(), "--interval must be more than 0");
    let mut pipelines = pipeline::build_pipelines(config)?;
    for p in &pipelines {
        p.wait_for_processors();
    }
    podometer::views::top::run(&mut pipelines, interval).context("running the terminal view")
}

fn run(config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let pipelines = pipeline::build_pipelines(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("podometer-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        info!(interval = %humantime::format_duration(config.interval), pipelines = pipelines.len(), "podometer is running.");
        pipeline::run(&config, pipelines, shutdown_signal()).await
    });
    // Dropping the runtime would wait for blocking work that may never end (a write to a
    // stuck disk): the exporters have had their shutdown_timeout already.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    info!("podometer stopped.");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGTERM; only SIGINT will stop the agent.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("Received SIGTERM."),
        _ = tokio::signal::ctrl_c() => info!("Received SIGINT."),
    }
}
