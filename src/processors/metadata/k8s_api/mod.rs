//! `k8s_api`: pod, namespace, container, image and owner names from the Kubernetes API.
//!
//! A background task ([`BackgroundTask`]) lists and watches the Pods of this node
//! (`fieldSelector=spec.nodeName=<node_name>`, see [`watch`]) and keeps a compact cache
//! ([`cache`], built by [`pods`]); the sweep thread only reads the snapshot it publishes.
//! Credentials are found as `kubectl` and client-go find them (`kube::Config::infer`): the
//! pod's service account in a cluster, else `KUBECONFIG` or `~/.kube/config`. Nothing is
//! required in the config: `k8s_api: {}` works given the top-level `node_name`.
//!
//! The API needs: a ClusterRole with `get`, `list`, `watch` on `pods`, bound to the agent's
//! service account ([`RBAC_OVERLAY`]).

pub mod bounded;
pub mod cache;
pub mod pods;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use super::{attach, BackgroundTask, Readiness, SharedSnapshot};
use crate::agent_counters::Telemetry;
use crate::config::duration;
use crate::model::{Sweep, SweepContext};
use crate::processors::Processor;
use cache::PodCache;
use pods::Allowlist;

/// The kustomize overlay (relative to the repository) that binds that ClusterRole to the
/// DaemonSet's service account, in the DaemonSet's namespace, and turns `k8s_api` on. The
/// 403 error names it.
pub const RBAC_OVERLAY: &str = "deploy/kubernetes/overlays/k8s-api";

/// Settings of the `k8s_api` processor; every one has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sApiConfig {
    /// Watch the pods of every node instead of this node's. Without it the top-level
    /// `node_name` is required: a node agent that watched the whole cluster would cost the API
    /// server and its own memory in proportion to the cluster.
    #[serde(default)]
    pub cluster_wide: bool,
    /// Pod label keys whose values become `k8s.pod.label.<key>`. None by default: every
    /// distinct value is a new series.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Pod annotation keys whose values become `k8s.pod.annotation.<key>`. None by default.
    #[serde(default)]
    pub annotations: Vec<String>,
    /// How long a deleted pod keeps its names, so the last sweeps of its containers (whose
    /// cgroups outlive the API object for a moment) still carry them.
    #[serde(default = "default_deleted_pod_grace", deserialize_with = "duration::deserialize")]
    pub deleted_pod_grace: Duration,
    /// How long start-up waits for the first list before the first sweep is exported, so a
    /// restart does not export nameless series. After it the agent exports with ids until
    /// the list arrives.
    #[serde(default = "default_initial_sync_timeout", deserialize_with = "duration::deserialize")]
    pub initial_sync_timeout: Duration,
    /// The largest answer to a list request (one page of 500 pods) read, in bytes; a larger
    /// one fails, is counted and logged, and the list is retried after the backoff. Default
    /// 64 MiB.
    #[serde(default = "default_max_list_bytes")]
    pub max_list_bytes: u64,
    /// The largest watch event (one line of the watch) read, in bytes; at a larger one the
    /// watch fails, is counted and logged, and the pods are listed again. Default 8 MiB
    /// (etcd's largest object is 1.5 MiB).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u64,
}

fn default_max_list_bytes() -> u64 {
    64 << 20
}
fn default_max_event_bytes() -> u64 {
    8 << 20
}

fn default_deleted_pod_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_initial_sync_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for K8sApiConfig {
    fn default() -> Self {
        K8sApiConfig {
            cluster_wide: false,
            labels: Vec::new(),
            annotations: Vec::new(),
            deleted_pod_grace: default_deleted_pod_grace(),
            initial_sync_timeout: default_initial_sync_timeout(),
            max_list_bytes: default_max_list_bytes(),
            max_event_bytes: default_max_event_bytes(),
        }
    }
}

impl K8sApiConfig {
    /// Problems as (key, reason); `node_name` is the top-level setting.
    pub fn validate(&self, node_name: Option<&str>) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        if !self.cluster_wide && node_name.is_none_or(|n| n.trim().is_empty()) {
            problems.push((
                String::new(),
                "needs the top-level `node_name` to watch only this node's pods (in a DaemonSet: \
                 `node_name: ${env:NODE_NAME}` with NODE_NAME from the downward API's spec.nodeName); \
                 set `cluster_wide: true` to watch every pod of the cluster instead"
                    .to_owned(),
            ));
        }
        for (field, keys) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            for (i, key) in keys.iter().enumerate() {
                if key.is_empty()
                    || key.len() > 317
                    || key.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    problems
                        .push((format!("{field}[{i}]"), format!("`{key}` is not a Kubernetes {field} key")));
                }
            }
        }
        for (key, value) in
            [("max_list_bytes", self.max_list_bytes), ("max_event_bytes", self.max_event_bytes)]
        {
            if value < 4096 {
                problems.push((key.to_owned(), "must be at least 4096".to_owned()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum K8sApiError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no Kubernetes credentials: not in a pod with a service account, and no usable KUBECONFIG or \
         ~/.kube/config ({0})"
    )]
    Credentials(#[source] kube::config::InferConfigError),
    #[error("cannot start the k8s_api watch thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The processor: attaches the latest snapshot the watch published.
pub struct K8sApiProcessor {
    shared: Arc<SharedSnapshot>,
    readiness: Readiness,
    wait: Duration,
    /// Stops the watch when the processor is dropped.
    _task: BackgroundTask,
}

impl K8sApiProcessor {
    /// Finds the credentials (fails at once without any) and starts the watch.
    pub fn new(config: &K8sApiConfig, node_name: Option<&str>) -> Result<K8sApiProcessor, K8sApiError> {
        if let Err(problems) = config.validate(node_name) {
            let text = problems.into_iter().map(|(_, reason)| reason).collect::<Vec<_>>().join("; ");
            return Err(K8sApiError::Invalid(text));
        }
        let kube_config = infer_config()?;
        let node_name = if config.cluster_wide { None } else { node_name.map(|n| n.trim().to_owned()) };
        let shared = SharedSnapshot::new();
        let readiness = Readiness::new();
        let allow = Allowlist { labels: config.labels.clone(), annotations: config.annotations.clone() };
        let grace = config.deleted_pod_grace;
        let limits =
            bounded::Limits { list_bytes: config.max_list_bytes, event_bytes: config.max_event_bytes };
        let (task_shared, task_readiness) = (Arc::clone(&shared), readiness.clone());
        let task = BackgroundTask::spawn("podometer-k8s-api", move || async move {
            let server = kube_config.cluster_url.to_string();
            let client = match kube::client::ClientBuilder::try_from(kube_config) {
                Ok(builder) => builder.with_layer(&bounded::BoundLayer(limits)).build(),
                Err(error) => {
                    Telemetry::inc(&Telemetry::global().metadata_errors);
                    tracing::error!(%error, "Cannot build a Kubernetes client; k8s_api adds no names.");
                    return;
                }
            };
            let watch = watch::Watch {
                api: kube::Api::<Pod>::all(client),
                node_name,
                allow,
                cache: PodCache::new(grace),
                shared: task_shared,
                readiness: task_readiness,
                server,
            };
            watch.run().await;
        })
        .map_err(K8sApiError::Thread)?;
        Ok(K8sApiProcessor { shared, readiness, wait: config.initial_sync_timeout, _task: task })
    }
}

/// `kube::Config::infer` is async (it may read files through tokio); run it on a scratch
/// runtime on its own thread, so this works whether or not the caller is inside a runtime.
fn infer_config() -> Result<kube::Config, K8sApiError> {
    let thread = std::thread::Builder::new().name("podometer-k8s-infer".into()).spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(kube::Config::infer()))
    });
    match thread.map_err(K8sApiError::Thread)?.join() {
        Ok(Ok(result)) => result.map_err(K8sApiError::Credentials),
        Ok(Err(io)) => Err(K8sApiError::Thread(io)),
        Err(_) => Err(K8sApiError::Thread(std::io::Error::other("the credentials lookup panicked"))),
    }
}

impl Processor for K8sApiProcessor {
    fn process(&mut self, _ctx: &SweepContext, sweep: &mut Sweep) {
        let snapshot = self.shared.load();
        let stats = attach(&snapshot, sweep);
        Telemetry::global()
            .metadata_misses
            .fetch_add(stats.container_misses, std::sync::atomic::Ordering::Relaxed);
    }

    fn readiness(&self) -> Option<(Readiness, Duration)> {
        Some((self.readiness.clone(), self.wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_required_unless_cluster_wide() {
        let c = K8sApiConfig::default();
        assert!(c.validate(Some("n1")).is_ok());
        let err = c.validate(None).unwrap_err();
        assert!(err[0].1.contains("node_name"), "{err:?}");
        assert!(c.validate(Some(" ")).is_err());
        let wide = K8sApiConfig { cluster_wide: true, ..K8sApiConfig::default() };
        assert!(wide.validate(None).is_ok());
        let bad =
            K8sApiConfig { labels: vec!["".into(), "a b".into(), "app".into()], ..K8sApiConfig::default() };
        let err = bad.validate(Some("n1")).unwrap_err();
        assert_eq!(err.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["labels[0]", "labels[1]"]);
    }

    #[test]
    fn the_processor_refuses_to_start_without_a_node_name() {
        match K8sApiProcessor::new(&K8sApiConfig::default(), None) {
            Err(K8sApiError::Invalid(msg)) => assert!(msg.contains("cluster_wide"), "{msg}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("started without node_name"),
        }
    }
}
