//! From a Pod object to the little the cache keeps: pure functions, no I/O.
//!
//! What is kept: the pod's names, its owners (by the rules below), the allowlisted labels
//! and annotations, and for every container that has an id (init, regular and ephemeral) its
//! name, image and restart count. Everything else in the Pod (spec, managedFields, other
//! status) is dropped as soon as it is read.
//!
//! # Owner rules (no extra watches: only the pod's own `ownerReferences` and labels)
//! The controller reference (`controller: true`, else the first reference) names the owner:
//! - `ReplicaSet` R → `k8s.replicaset.name` = R; when the pod's `pod-template-hash` label is H
//!   and R is `<D>-<H>`, also `k8s.deployment.name` = D (the Deployment controller names its
//!   ReplicaSets so and puts the hash on their pods).
//! - `StatefulSet` S → `k8s.statefulset.name` = S.
//! - `DaemonSet` D → `k8s.daemonset.name` = D.
//! - `Job` J → `k8s.job.name` = J; when J is `<C>-<digits>`, also `k8s.cronjob.name` = C (the
//!   CronJob controller names its Jobs `<cronjob>-<scheduled time in minutes>`). A plain Job
//!   named like that is reported as a CronJob's too: the same rule the OpenTelemetry
//!   Collector's k8sattributes processor applies.
//! - `Node` (a static pod's mirror) and anything else: no owner attribute.
//!
//! # Static pods
//! The API server gives a static pod's mirror its own `metadata.uid`, but the kubelet (and so
//! the cgroup path) uses the pod's config hash, which the mirror carries in its
//! `kubernetes.io/config.mirror` annotation. The cache keys such a pod by that hash so the
//! cgroup's `k8s.pod.uid` finds it.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::model::{AttrValue, Attributes};
use crate::processors::metadata::allowlisted_key;
use crate::semconv;

/// Longest string value kept from an API answer; longer ones (an annotation can hold
/// hundreds of KiB) are cut at a character boundary so one pod cannot blow up the cache.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The annotation a static pod's mirror carries: the kubelet's own UID for the pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Which labels and annotations become attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allowlist {
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
}

/// One container of a pod, as the cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactContainer {
    /// The 64-hex id the runtime gave it (the cgroup path's id).
    pub id: String,
    pub attributes: Attributes,
}

/// One pod, as the cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactPod {
    /// The API's `metadata.uid`: what watch events identify the pod by.
    pub api_uid: String,
    /// The kubelet's UID for the pod (the cgroup path's): `api_uid`, or a static pod's
    /// config hash.
    pub key: String,
    /// `spec.nodeName`, to drop a pod the server sent although the selector excludes it.
    pub node_name: Option<String>,
    pub attributes: Attributes,
    pub containers: Vec<CompactContainer>,
}

/// Why a Pod object cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("the pod has no metadata.uid")]
    NoUid,
    #[error("the pod {namespace}/{name} has no metadata.uid")]
    NoUidNamed { namespace: String, name: String },
}

/// `s` cut to at most [`MAX_VALUE_BYTES`] at a character boundary.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_VALUE_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The 64-hex id in a status's `containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`); `None` for a container not started yet or an id of another shape.
pub fn container_id(container_id: &str) -> Option<&str> {
    let (scheme, id) = container_id.split_once("://")?;
    if !matches!(scheme, "containerd" | "cri-o" | "docker") {
        return None;
    }
    crate::model::is_container_id(id).then_some(id)
}

/// `<prefix>-<suffix>` → `<prefix>` when the suffix is exactly `suffix`.
fn strip_dash_suffix<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let prefix = name.strip_suffix(suffix)?.strip_suffix('-')?;
    (!prefix.is_empty()).then_some(prefix)
}

/// `<prefix>-<digits>` → `<prefix>`.
fn cronjob_of(job: &str) -> Option<&str> {
    let (prefix, digits) = job.rsplit_once('-')?;
    (!prefix.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(prefix)
}

/// The owner attributes of a pod, by the rules in the module docs.
pub fn owner_attributes(pod: &Pod) -> Attributes {
    let mut out: Attributes = Vec::new();
    let refs = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first()) else {
        return out;
    };
    let name = owner.name.as_str();
    if name.is_empty() {
        return out;
    }
    match owner.kind.as_str() {
        "ReplicaSet" => {
            out.push((semconv::K8S_REPLICASET_NAME, bounded(name).into()));
            let hash = pod.metadata.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
            if let Some(deployment) = hash.filter(|h| !h.is_empty()).and_then(|h| strip_dash_suffix(name, h))
            {
                out.push((semconv::K8S_DEPLOYMENT_NAME, bounded(deployment).into()));
            }
        }
        "StatefulSet" => out.push((semconv::K8S_STATEFULSET_NAME, bounded(name).into())),
        "DaemonSet" => out.push((semconv::K8S_DAEMONSET_NAME, bounded(name).into())),
        "Job" => {
            out.push((semconv::K8S_JOB_NAME, bounded(name).into()));
            if let Some(cronjob) = cronjob_of(name) {
                out.push((semconv::K8S_CRONJOB_NAME, bounded(cronjob).into()));
            }
        }
        _ => {}
    }
    out
}

/// The attributes of one container status, with the image from the pod spec when it names
/// the container (what the user wrote: `nginx:1.25`), else from the status (what the runtime
/// resolved).
fn container_attributes(status: &ContainerStatus, spec_image: Option<&str>) -> Attributes {
    let mut attrs: Attributes = vec![(semconv::K8S_CONTAINER_NAME, bounded(&status.name).into())];
    let image = spec_image.filter(|i| !i.is_empty()).unwrap_or(status.image.as_str());
    // Bounded before it is parsed: name and tag are then bounded too.
    attrs.extend(crate::resource::image(&bounded(image)));
    attrs.push((semconv::K8S_CONTAINER_RESTART_COUNT, AttrValue::Int(i64::from(status.restart_count))));
    attrs
}

/// Keeps what the processor needs of a Pod.
pub fn compact(pod: &Pod, allow: &Allowlist) -> Result<CompactPod, PodError> {
    let meta = &pod.metadata;
    let name = meta.name.as_deref().unwrap_or_default();
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let api_uid = match meta.uid.as_deref() {
        Some(uid) if !uid.is_empty() => bounded(uid),
        _ if name.is_empty() => return Err(PodError::NoUid),
        _ => {
            return Err(PodError::NoUidNamed { namespace: bounded(namespace), name: bounded(name) });
        }
    };
    let mirror = meta.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION)).filter(|h| !h.is_empty());
    let key = mirror.map(|h| bounded(h)).unwrap_or_else(|| api_uid.clone());

    let mut attributes: Attributes = Vec::new();
    if !name.is_empty() {
        attributes.push((semconv::K8S_POD_NAME, bounded(name).into()));
    }
    if !namespace.is_empty() {
        attributes.push((semconv::K8S_NAMESPACE_NAME, bounded(namespace).into()));
    }
    attributes.push((semconv::K8S_POD_UID, key.clone().into()));
    attributes.extend(owner_attributes(pod));
    if let Some(labels) = &meta.labels {
        for key in &allow.labels {
            if let Some(value) = labels.get(key) {
                attributes.push((allowlisted_key(semconv::K8S_POD_LABEL_PREFIX, key), bounded(value).into()));
            }
        }
    }
    if let Some(annotations) = &meta.annotations {
        for key in &allow.annotations {
            if let Some(value) = annotations.get(key) {
                attributes
                    .push((allowlisted_key(semconv::K8S_POD_ANNOTATION_PREFIX, key), bounded(value).into()));
            }
        }
    }

    let spec = pod.spec.as_ref();
    let spec_image = |container: &str| -> Option<&str> {
        let spec = spec?;
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == container)
            .and_then(|c| c.image.as_deref())
            .or_else(|| {
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == container)
                    .and_then(|c| c.image.as_deref())
            })
    };
    let mut containers = Vec::new();
    if let Some(status) = &pod.status {
        let all = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten());
        for cs in all {
            let Some(id) = cs.container_id.as_deref().and_then(container_id) else { continue };
            containers.push(CompactContainer {
                id: id.to_owned(),
                attributes: container_attributes(cs, spec_image(&cs.name)),
            });
        }
    }
    let node_name = spec.and_then(|s| s.node_name.as_deref()).map(bounded);
    attributes.shrink_to_fit();
    containers.shrink_to_fit();
    Ok(CompactPod { api_uid, key, node_name, attributes, containers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, owner: Option<(&str, &str)>, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some("0b8a4a52-5e0c-4d8e-9d31-6a3c1f1b2c3d".into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: kind.into(),
                        name: name.into(),
                        uid: "x".into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn get<'a>(attrs: &'a Attributes, key: &str) -> Option<&'a AttrValue> {
        attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    #[test]
    fn container_ids_of_every_runtime_scheme_and_nothing_else() {
        let id = "a".repeat(64);
        for scheme in ["containerd", "cri-o", "docker"] {
            assert_eq!(container_id(&format!("{scheme}://{id}")), Some(id.as_str()));
        }
        assert_eq!(container_id(&format!("rkt://{id}")), None);
        assert_eq!(container_id("containerd://abc"), None);
        assert_eq!(container_id(&format!("containerd://{}", "A".repeat(64))), None);
        assert_eq!(container_id(""), None);
    }

    #[test]
    fn an_image_reference_past_the_bound_is_cut_before_it_is_parsed() {
        let status = ContainerStatus { name: "app".into(), ..Default::default() };
        let long = format!("registry.example/{}:v1", "x".repeat(2 * MAX_VALUE_BYTES));
        let attrs = container_attributes(&status, Some(&long));
        match get(&attrs, semconv::CONTAINER_IMAGE_NAME) {
            Some(AttrValue::Str(s)) => assert_eq!(s.len(), MAX_VALUE_BYTES),
            other => panic!("{other:?}"),
        }
        // The tag was past the bound: what is left names no tag, and the runtime's default
        // applies, as for any reference without one.
        assert_eq!(
            get(&attrs, semconv::CONTAINER_IMAGE_TAGS),
            Some(&AttrValue::StrArray(vec!["latest".into()]))
        );
        let short = container_attributes(&status, Some("nginx:1.25"));
        assert_eq!(get(&short, semconv::CONTAINER_IMAGE_NAME), Some(&"nginx".into()));
    }

    #[test]
    fn owner_rules() {
        let rs = pod(
            "web-7d4b9c8f5-x2x9z",
            Some(("ReplicaSet", "web-7d4b9c8f5")),
            &[("pod-template-hash", "7d4b9c8f5")],
        );
        let a = owner_attributes(&rs);
        assert_eq!(get(&a, semconv::K8S_REPLICASET_NAME), Some(&"web-7d4b9c8f5".into()));
        assert_eq!(get(&a, semconv::K8S_DEPLOYMENT_NAME), Some(&"web".into()));
        // A ReplicaSet made by hand: its name does not end with the pod's hash label.
        let bare = pod("cache-abcde", Some(("ReplicaSet", "cache")), &[("pod-template-hash", "zzz")]);
        let a = owner_attributes(&bare);
        assert_eq!(get(&a, semconv::K8S_REPLICASET_NAME), Some(&"cache".into()));
        assert_eq!(get(&a, semconv::K8S_DEPLOYMENT_NAME), None);
        let job = pod("backup-29384710-abcde", Some(("Job", "backup-29384710")), &[]);
        let a = owner_attributes(&job);
        assert_eq!(get(&a, semconv::K8S_JOB_NAME), Some(&"backup-29384710".into()));
        assert_eq!(get(&a, semconv::K8S_CRONJOB_NAME), Some(&"backup".into()));
        let plain = pod("migrate-abcde", Some(("Job", "migrate-db")), &[]);
        let a = owner_attributes(&plain);
        assert_eq!(get(&a, semconv::K8S_JOB_NAME), Some(&"migrate-db".into()));
        assert_eq!(get(&a, semconv::K8S_CRONJOB_NAME), None);
        let ss = owner_attributes(&pod("db-0", Some(("StatefulSet", "db")), &[]));
        assert_eq!(ss, vec![(semconv::K8S_STATEFULSET_NAME, "db".into())]);
        let ds = owner_attributes(&pod("agent-q", Some(("DaemonSet", "agent")), &[]));
        assert_eq!(ds, vec![(semconv::K8S_DAEMONSET_NAME, "agent".into())]);
        assert!(owner_attributes(&pod("etcd-n1", Some(("Node", "n1")), &[])).is_empty());
        assert!(owner_attributes(&pod("lonely", None, &[])).is_empty());
    }

    #[test]
    fn compact_keeps_allowlisted_keys_only_and_every_kind_of_container() {
        let mut p = pod("web-1", None, &[("app", "web"), ("tier", "front")]);
        p.metadata.annotations = Some([("team".to_string(), "x".repeat(5000))].into());
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("nginx:1.25".into()),
                ..Default::default()
            }],
            init_containers: Some(vec![Container {
                name: "init".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }]),
            node_name: Some("n1".into()),
            ..Default::default()
        });
        let status = |name: &str, id: Option<String>, restarts: i32| ContainerStatus {
            name: name.into(),
            container_id: id,
            image: "docker.io/library/other:9".into(),
            restart_count: restarts,
            ..Default::default()
        };
        p.status = Some(PodStatus {
            container_statuses: Some(vec![status(
                "app",
                Some(format!("containerd://{}", "1".repeat(64))),
                3,
            )]),
            init_container_statuses: Some(vec![status(
                "init",
                Some(format!("cri-o://{}", "2".repeat(64))),
                0,
            )]),
            ephemeral_container_statuses: Some(vec![
                status("debug", Some(format!("docker://{}", "3".repeat(64))), 0),
                status("pending", None, 0),
            ]),
            ..Default::default()
        });
        let allow =
            Allowlist { labels: vec!["app".into(), "absent".into()], annotations: vec!["team".into()] };
        let c = compact(&p, &allow).unwrap();
        assert_eq!(c.key, "0b8a4a52-5e0c-4d8e-9d31-6a3c1f1b2c3d");
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert_eq!(get(&c.attributes, "k8s.pod.label.app"), Some(&"web".into()));
        assert_eq!(get(&c.attributes, "k8s.pod.label.tier"), None);
        match get(&c.attributes, "k8s.pod.annotation.team") {
            Some(AttrValue::Str(s)) => assert_eq!(s.len(), MAX_VALUE_BYTES),
            other => panic!("{other:?}"),
        }
        let ids: Vec<_> = c.containers.iter().map(|c| c.id.chars().next().unwrap()).collect();
        assert_eq!(ids, ['2', '1', '3'], "init, regular, ephemeral; not the one without an id");
        let app = &c.containers[1].attributes;
        assert_eq!(get(app, semconv::K8S_CONTAINER_NAME), Some(&"app".into()));
        assert_eq!(get(app, semconv::CONTAINER_IMAGE_NAME), Some(&"nginx".into()));
        assert_eq!(get(app, semconv::CONTAINER_IMAGE_TAGS), Some(&AttrValue::StrArray(vec!["1.25".into()])));
        assert_eq!(get(app, semconv::K8S_CONTAINER_RESTART_COUNT), Some(&AttrValue::Int(3)));
        // No spec entry for the ephemeral one: the status's image.
        let debug = &c.containers[2].attributes;
        assert_eq!(get(debug, semconv::CONTAINER_IMAGE_NAME), Some(&"docker.io/library/other".into()));
    }

    #[test]
    fn a_static_pods_mirror_is_keyed_by_the_kubelets_uid() {
        let mut p = pod("etcd-n1", Some(("Node", "n1")), &[]);
        p.metadata.annotations =
            Some([(MIRROR_ANNOTATION.to_string(), "5d7d4c6f0e1a2b3c".to_string())].into());
        let c = compact(&p, &Allowlist::default()).unwrap();
        assert_eq!(c.key, "5d7d4c6f0e1a2b3c");
        assert_eq!(c.api_uid, "0b8a4a52-5e0c-4d8e-9d31-6a3c1f1b2c3d");
        assert_eq!(get(&c.attributes, semconv::K8S_POD_UID), Some(&"5d7d4c6f0e1a2b3c".into()));
    }

    #[test]
    fn a_pod_without_uid_is_an_error_not_a_panic() {
        let mut p = pod("x", None, &[]);
        p.metadata.uid = None;
        assert_eq!(
            compact(&p, &Allowlist::default()),
            Err(PodError::NoUidNamed { namespace: "shop".into(), name: "x".into() })
        );
        assert_eq!(compact(&Pod::default(), &Allowlist::default()), Err(PodError::NoUid));
    }
}
