//! The YAML configuration, in the OpenTelemetry Collector's shape: `sources`, `processors`
//! and `exporters` keyed by `type` or `type/name`, and `pipelines` that wire them.
//!
//! Loading is: read the file, substitute `${env:NAME}` / `${env:NAME:-default}`, parse with
//! locations, validate everything, and only then build anything. Every problem is reported as
//! `FILE:LINE:COLUMN: key.path: reason`.

pub mod duration;
mod env;
pub mod view;

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::exporters::file::FileExporterConfig;
use crate::exporters::otlp::OtlpExporterConfig;
use crate::exporters::prometheus::PrometheusExporterConfig;
use crate::health::HealthConfig;
use crate::processors::filter::FilterConfig;
use crate::processors::metadata::docker_api::DockerApiConfig;
use crate::processors::metadata::k8s_api::K8sApiConfig;
use crate::processors::metadata::runtime_files::RuntimeFilesConfig;
use crate::sources::cgroups::CgroupsConfig;
use crate::sources::netns::NetnsConfig;
use crate::sources::processes::{PodNetworkConfig, ProcessesConfig};

/// The built-in configuration used without `-c`; `config/podometer.yaml` is the same file.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/podometer.yaml");
/// How the built-in configuration is named in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<built-in config/podometer.yaml>";
/// The built-in configuration of the sidecar view; `config/sidecar.yaml` is the same file.
pub const SIDECAR_CONFIG: &str = include_str!("../../config/sidecar.yaml");
/// How the built-in sidecar configuration is named in messages.
pub const SIDECAR_CONFIG_NAME: &str = "<built-in config/sidecar.yaml>";

/// The whole agent configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How often every pipeline sweeps its sources.
    #[serde(default = "default_interval", deserialize_with = "duration::deserialize_positive")]
    pub interval: Duration,
    /// How long `run` may spend flushing exporters after SIGTERM or SIGINT before it exits.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration::deserialize")]
    pub shutdown_timeout: Duration,
    /// How often `run` logs the agent's own counters at info level.
    #[serde(default = "default_stats_log_interval", deserialize_with = "duration::deserialize")]
    pub stats_log_interval: Duration,
    /// The `host.name` put on every resource; the kernel's hostname when left out or empty.
    #[serde(default)]
    pub host_name: Option<String>,
    /// The `k8s.node.name` put on every resource, when set (in a DaemonSet, from the
    /// downward API: `${env:NODE_NAME}`).
    #[serde(default)]
    pub node_name: Option<String>,
    /// The agent's own metrics over OTLP/gRPC (`enabled`, `endpoint`, `interval`).
    #[serde(default)]
    pub self_telemetry: crate::self_telemetry_otlp::SelfTelemetryConfig,
    /// Sources by `type[/name]`: `cgroups`, `netns` (node view), `processes`, `pod_network`
    /// (sidecar view).
    #[serde(default)]
    pub sources: Components<SourceConfig>,
    /// Processors by `type[/name]`: `filter`, `k8s_api`, `runtime_files`, `docker_api`.
    #[serde(default)]
    pub processors: Components<ProcessorConfig>,
    /// Exporters by `type[/name]`: `file`, `otlp`, `prometheus`.
    #[serde(default)]
    pub exporters: Components<ExporterConfig>,
    /// Pipelines by name; each lists the components it uses, in order.
    pub pipelines: Spanned<Pipelines>,
    /// Attributes put on every resource (the agent's own self-telemetry resource too), e.g.
    /// `k8s.pod.name: ${env:K8S_POD_NAME:-}` in a sidecar; keys with an empty value are left out. They win over `OTEL_RESOURCE_ATTRIBUTES`,
    /// which is honoured too (as the OpenTelemetry SDKs do) but never replaces an attribute a
    /// source set.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// The `/healthz` and `/readyz` endpoint of `run`; none when left out.
    #[serde(default)]
    pub health: Option<Spanned<HealthConfig>>,
    /// Without `-c`: which built-in view was chosen and why (for the start-up log).
    #[serde(skip)]
    pub view: Option<view::ViewChoice>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_stats_log_interval() -> Duration {
    Duration::from_secs(300)
}

/// One pipeline: sources run in this order (the `netns` source reads what `cgroups` found),
/// then processors in this order, then every exporter gets the sweep.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Source ids, in the order they run.
    pub sources: Vec<Spanned<String>>,
    /// Processor ids, in the order they run.
    #[serde(default)]
    pub processors: Vec<Spanned<String>>,
    /// Exporter ids; each gets every sweep of this pipeline.
    pub exporters: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Cgroups(CgroupsConfig),
    Netns(NetnsConfig),
    Processes(ProcessesConfig),
    PodNetwork(PodNetworkConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProcessorConfig {
    Filter(FilterConfig),
    K8sApi(K8sApiConfig),
    DockerApi(DockerApiConfig),
    RuntimeFiles(RuntimeFilesConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExporterConfig {
    File(FileExporterConfig),
    Otlp(OtlpExporterConfig),
    Prometheus(PrometheusExporterConfig),
}

/// A component section: every kind of component config knows which `type`s exist and how to
/// read each one. A component whose value is empty (`cgroups:`) takes all defaults.
pub trait ComponentKind: Sized {
    /// `source`, `processor`, `exporter`: for messages.
    const KIND: &'static str;
    /// The section's key in the file.
    const SECTION: &'static str;
    const TYPES: &'static [&'static str];
    fn deserialize_type<'de, D: Deserializer<'de>>(ty: &str, d: D) -> Result<Self, D::Error>;
}

fn or_default<'de, T: Deserialize<'de> + Default, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

impl ComponentKind for SourceConfig {
    const KIND: &'static str = "source";
    const SECTION: &'static str = "sources";
    const TYPES: &'static [&'static str] = &["cgroups", "netns", "processes", "pod_network"];
    fn deserialize_type<'de, D: Deserializer<'de>>(ty: &str, d: D) -> Result<Self, D::Error> {
        match ty {
            "cgroups" => or_default(d).map(SourceConfig::Cgroups),
            "netns" => or_default(d).map(SourceConfig::Netns),
            "processes" => or_default(d).map(SourceConfig::Processes),
            "pod_network" => or_default(d).map(SourceConfig::PodNetwork),
            _ => Err(unknown_type::<Self, D::Error>(ty)),
        }
    }
}

impl ComponentKind for ProcessorConfig {
    const KIND: &'static str = "processor";
    const SECTION: &'static str = "processors";
    const TYPES: &'static [&'static str] = &["filter", "k8s_api", "runtime_files", "docker_api"];
    fn deserialize_type<'de, D: Deserializer<'de>>(ty: &str, d: D) -> Result<Self, D::Error> {
        match ty {
            "filter" => or_default(d).map(ProcessorConfig::Filter),
            "k8s_api" => or_default(d).map(ProcessorConfig::K8sApi),
            "runtime_files" => or_default(d).map(ProcessorConfig::RuntimeFiles),
            "docker_api" => or_default(d).map(ProcessorConfig::DockerApi),
            _ => Err(unknown_type::<Self, D::Error>(ty)),
        }
    }
}

impl ComponentKind for ExporterConfig {
    const KIND: &'static str = "exporter";
    const SECTION: &'static str = "exporters";
    const TYPES: &'static [&'static str] = &["file", "otlp", "prometheus"];
    fn deserialize_type<'de, D: Deserializer<'de>>(ty: &str, d: D) -> Result<Self, D::Error> {
        match ty {
            "file" => or_default(d).map(ExporterConfig::File),
            "otlp" => or_default(d).map(ExporterConfig::Otlp),
            "prometheus" => or_default(d).map(ExporterConfig::Prometheus),
            _ => Err(unknown_type::<Self, D::Error>(ty)),
        }
    }
}

fn unknown_type<K: ComponentKind, E: serde::de::Error>(ty: &str) -> E {
    E::custom(format!("unknown {} type `{ty}`; known types: {}", K::KIND, K::TYPES.join(", ")))
}

/// Components of one section by id, with where each id was written.
#[derive(Debug)]
pub struct Components<T> {
    pub entries: BTreeMap<String, (Location, T)>,
}

impl<T> Default for Components<T> {
    fn default() -> Self {
        Components { entries: BTreeMap::new() }
    }
}

impl<T> Components<T> {
    pub fn get(&self, id: &str) -> Option<&T> {
        self.entries.get(id).map(|(_, c)| c)
    }
}

thread_local! {
    /// The map key being read when a component or pipeline fails to parse: the path tracker
    /// cannot see keys read with their location, so the error path gets it from here.
    static CURRENT_KEY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn remember_key(key: &str) {
    CURRENT_KEY.with(|k| *k.borrow_mut() = Some(key.to_owned()));
}

/// Splits `type/name` into its type; the name is free text but may not be empty.
pub fn component_type(id: &str) -> Result<&str, String> {
    match id.split_once('/') {
        None if !id.is_empty() => Ok(id),
        Some((ty, name)) if !ty.is_empty() && !name.is_empty() => Ok(ty),
        _ => Err(format!("`{id}` is not a component id of the form `type` or `type/name`")),
    }
}

impl<'de, T: ComponentKind> Deserialize<'de> for Components<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ComponentsVisitor<T>(PhantomData<T>);
        struct TypeSeed<'a, T>(&'a str, PhantomData<T>);

        impl<'de, T: ComponentKind> DeserializeSeed<'de> for TypeSeed<'_, T> {
            type Value = T;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
                T::deserialize_type(self.0, d)
            }
        }

        impl<'de, T: ComponentKind> Visitor<'de> for ComponentsVisitor<T> {
            type Value = Components<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a map of {} ids (`type` or `type/name`) to their settings", T::KIND)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Components::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    remember_key(&key.value);
                    let ty = component_type(&key.value).map_err(serde::de::Error::custom)?;
                    let config = map.next_value_seed(TypeSeed::<T>(ty, PhantomData))?;
                    if entries.insert(key.value.clone(), (key.referenced, config)).is_some() {
                        return Err(serde::de::Error::custom(format!("`{}` is defined twice", key.value)));
                    }
                }
                Ok(Components { entries })
            }
        }
        d.deserialize_any(ComponentsVisitor(PhantomData))
    }
}

/// Pipelines by name, with where each name was written.
#[derive(Debug, Default)]
pub struct Pipelines {
    pub entries: BTreeMap<String, (Location, PipelineConfig)>,
}

impl<'de> Deserialize<'de> for Pipelines {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PipelinesVisitor;
        impl<'de> Visitor<'de> for PipelinesVisitor {
            type Value = Pipelines;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of pipeline names to their sources, processors and exporters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pipelines, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    remember_key(&key.value);
                    let pipeline: PipelineConfig = map.next_value()?;
                    if entries.insert(key.value.clone(), (key.referenced, pipeline)).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "pipeline `{}` is defined twice",
                            key.value
                        )));
                    }
                }
                Ok(Pipelines { entries })
            }
        }
        d.deserialize_map(PipelinesVisitor)
    }
}

/// One problem in a config file, printed as `FILE:LINE:COLUMN: key.path: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub key_path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let key = if self.key_path.is_empty() { "(top level)" } else { &self.key_path };
        write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, key, self.reason)
    }
}

/// Everything wrong with a config file; never empty.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// One line per problem, for `check-config` and start-up failures.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Reads and validates a config file, or the built-in default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        None => {
            let env = |name: &str| std::env::var(name).ok();
            let own_cgroup = || {
                crate::sources::processes::own_cgroup_mounted(Path::new("/sys/fs/cgroup"), Path::new("/proc"))
            };
            let choice = view::choose(&env, &|p: &Path| p.exists(), &own_cgroup).map_err(|reason| {
                ConfigError::Invalid(vec![Problem {
                    file: "<environment>".into(),
                    line: 0,
                    column: 0,
                    key_path: "PODOMETER_VIEW".into(),
                    reason,
                }])
            })?;
            let mut config = match &choice.view {
                view::View::Sidecar => parse(SIDECAR_CONFIG_NAME, SIDECAR_CONFIG, env)?,
                view::View::Node { host_root } => {
                    // Under /host the roots default there; explicit variables still win.
                    let defaults = [
                        ("PODOMETER_CGROUP_ROOT", format!("{host_root}/sys/fs/cgroup")),
                        ("PODOMETER_PROC_ROOT", format!("{host_root}/proc")),
                    ];
                    parse(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG, |name| {
                        env(name).or_else(|| {
                            defaults
                                .iter()
                                .find(|(n, _)| *n == name && !host_root.is_empty())
                                .map(|(_, v)| v.clone())
                        })
                    })?
                }
            };
            config.view = Some(choice);
            Ok(config)
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            parse(&path.display().to_string(), &text, |name| std::env::var(name).ok())
        }
    }
}

/// Parses and validates config text; `file` names it in messages, `env` looks up variables.
pub fn parse(file: &str, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    CURRENT_KEY.with(|k| k.borrow_mut().take());
    let text = env::substitute(text, &env).map_err(|e| {
        ConfigError::Invalid(vec![Problem {
            file: file.to_owned(),
            line: e.line,
            column: e.column,
            key_path: String::new(),
            reason: e.reason,
        }])
    })?;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    // The path of a failing key is only known inside the closure; the YAML error (with its
    // location) must still leave through the closure so the parser reports it, not a
    // complaint about unread trailing content.
    let failed_path = std::cell::RefCell::new(String::new());
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(&text, options, |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
            *failed_path.borrow_mut() = e.path().to_string();
            e.into_inner()
        })
    });
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            let mut path = failed_path.into_inner();
            if let Some(key) = CURRENT_KEY.with(|k| k.borrow_mut().take()) {
                path = path.replacen('?', &key, 1);
            }
            let problem = problem_from_yaml(file, path, &e);
            return Err(ConfigError::Invalid(vec![problem]));
        }
    };
    let problems = validate(file, &config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn problem_from_yaml(file: &str, key_path: String, e: &serde_saphyr::Error) -> Problem {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let key_path = if key_path == "." { String::new() } else { key_path };
    Problem { file: file.to_owned(), line, column, key_path, reason: yaml_reason(e) }
}

/// The error's message without the location suffix the YAML crate appends (we print our own).
fn yaml_reason(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    text.trim().to_owned()
}

/// Cross-references the pipelines with the component sections and asks each component to
/// check itself. Returns every problem found, not just the first.
fn validate(file: &str, config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |loc: Location, key_path: String, reason: String| {
        problems.push(Problem {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            key_path,
            reason,
        });
    };

    if config.pipelines.value.entries.is_empty() {
        problem(config.pipelines.referenced, "pipelines".into(), "at least one pipeline is required".into());
    }

    let mut used_sources: BTreeMap<&str, &str> = BTreeMap::new();
    let mut used_processors: BTreeMap<&str, ()> = BTreeMap::new();
    let mut used_exporters: BTreeMap<&str, ()> = BTreeMap::new();
    for (pname, (name_loc, pipeline)) in &config.pipelines.value.entries {
        let pname = pname.as_str();
        if pipeline.sources.is_empty() {
            problem(*name_loc, format!("pipelines.{pname}.sources"), "lists no source".into());
        }
        if pipeline.exporters.is_empty() {
            problem(*name_loc, format!("pipelines.{pname}.exporters"), "lists no exporter".into());
        }
        let mut seen_cgroups = false;
        for (i, id) in pipeline.sources.iter().enumerate() {
            let key = format!("pipelines.{pname}.sources[{i}]");
            match config.sources.get(&id.value) {
                None => problem(
                    id.referenced,
                    key,
                    format!("source `{}` is not defined under `sources`", id.value),
                ),
                Some(source) => {
                    if let Some(other) = used_sources.insert(&id.value, pname) {
                        if other != pname {
                            problem(
                                id.referenced,
                                key.clone(),
                                format!(
                                    "source `{}` is already used by pipeline `{other}`; a source feeds one \
                                     pipeline (give a pipeline several exporters instead)",
                                    id.value
                                ),
                            );
                        } else {
                            problem(
                                id.referenced,
                                key.clone(),
                                format!("source `{}` is listed twice", id.value),
                            );
                        }
                    }
                    match source {
                        SourceConfig::Cgroups(_) => seen_cgroups = true,
                        SourceConfig::Netns(_) if !seen_cgroups => problem(
                            id.referenced,
                            key,
                            format!(
                                "source `{}` reads the containers a `cgroups` source found: list a cgroups \
                                 source before it in this pipeline",
                                id.value
                            ),
                        ),
                        SourceConfig::Netns(_) | SourceConfig::Processes(_) | SourceConfig::PodNetwork(_) => {
                        }
                    }
                }
            }
        }
        for (i, id) in pipeline.processors.iter().enumerate() {
            used_processors.insert(&id.value, ());
            if config.processors.get(&id.value).is_none() {
                problem(
                    id.referenced,
                    format!("pipelines.{pname}.processors[{i}]"),
                    format!("processor `{}` is not defined under `processors`", id.value),
                );
            }
        }
        for (i, id) in pipeline.exporters.iter().enumerate() {
            used_exporters.insert(&id.value, ());
            if config.exporters.get(&id.value).is_none() {
                problem(
                    id.referenced,
                    format!("pipelines.{pname}.exporters[{i}]"),
                    format!("exporter `{}` is not defined under `exporters`", id.value),
                );
            }
        }
    }

    for (id, (loc, source)) in &config.sources.entries {
        if !used_sources.contains_key(id.as_str()) {
            problem(*loc, format!("sources.{id}"), "defined but used by no pipeline".into());
        }
        for (key, reason) in source_problems(source) {
            problem(*loc, format!("sources.{id}.{key}"), reason);
        }
    }
    for (id, (loc, processor)) in &config.processors.entries {
        if !used_processors.contains_key(id.as_str()) {
            problem(*loc, format!("processors.{id}"), "defined but used by no pipeline".into());
        }
        for (key, reason) in processor_problems(processor, config.node_name.as_deref()) {
            let key =
                if key.is_empty() { format!("processors.{id}") } else { format!("processors.{id}.{key}") };
            problem(*loc, key, reason);
        }
    }
    for (id, (loc, exporter)) in &config.exporters.entries {
        if !used_exporters.contains_key(id.as_str()) {
            problem(*loc, format!("exporters.{id}"), "defined but used by no pipeline".into());
        }
        for (key, reason) in exporter_problems(exporter) {
            let key =
                if key.is_empty() { format!("exporters.{id}") } else { format!("exporters.{id}.{key}") };
            problem(*loc, key, reason);
        }
    }
    for (key, reason) in config.self_telemetry.validate() {
        problem(Location::UNKNOWN, format!("self_telemetry.{key}"), reason);
    }
    if let Some(health) = &config.health {
        for (key, reason) in health.value.validate() {
            problem(health.referenced, format!("health.{key}"), reason);
        }
    }
    problems
}

/// Source checks that need more than types.
fn source_problems(source: &SourceConfig) -> Vec<(String, String)> {
    match source {
        SourceConfig::Cgroups(cgroups) => cgroups.validate(),
        SourceConfig::Netns(netns) => netns.validate(),
        SourceConfig::Processes(_) | SourceConfig::PodNetwork(_) => Vec::new(),
    }
}

/// Processor checks that need more than types, some against top-level settings.
fn processor_problems(processor: &ProcessorConfig, node_name: Option<&str>) -> Vec<(String, String)> {
    match processor {
        ProcessorConfig::Filter(_) | ProcessorConfig::RuntimeFiles(_) | ProcessorConfig::DockerApi(_) => {
            Vec::new()
        }
        ProcessorConfig::K8sApi(k8s) => k8s.validate(node_name).err().unwrap_or_default(),
    }
}

/// Decodes with the `percent-encoding` crate, which passes a `%` not followed by two hex digits
/// through unchanged; the specification calls that malformed, so it is checked first. `None`
/// for a malformed escape or a text that does not decode to UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let well_formed = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(text).decode_utf8().ok().map(|s| s.into_owned())
}

/// Checks that need more than types: contradictory or incomplete settings.
fn exporter_problems(exporter: &ExporterConfig) -> Vec<(String, String)> {
    match exporter {
        ExporterConfig::File(_) => Vec::new(),
        ExporterConfig::Otlp(otlp) => otlp.validate().err().unwrap_or_default(),
        ExporterConfig::Prometheus(prometheus) => prometheus.validate().err().unwrap_or_default(),
    }
}

impl Config {
    /// A readable summary of the resolved pipelines, for `check-config`.
    pub fn describe(&self) -> String {
        let mut out = format!("interval: {}\n", humantime::format_duration(self.interval));
        for (name, (_, p)) in &self.pipelines.value.entries {
            let ids =
                |v: &[Spanned<String>]| v.iter().map(|s| s.value.as_str()).collect::<Vec<_>>().join(" -> ");
            out.push_str(&format!("pipeline {name}:\n"));
            out.push_str(&format!("  sources:    {}\n", ids(&p.sources)));
            if !p.processors.is_empty() {
                out.push_str(&format!("  processors: {}\n", ids(&p.processors)));
            }
            out.push_str(&format!("  exporters:  {}\n", ids(&p.exporters)));
        }
        out
    }
}
