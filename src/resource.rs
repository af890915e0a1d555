//! Resource attributes, built in one place so that every resource of a kind carries the same
//! ones, whichever source or view made it.
//!
//! Layers, in the order they are applied:
//! 1. **Identifying**, from the cgroup path: [`container`] and [`pod`], or [`classified`] for
//!    whatever the cgroup classifier recognised. The cgroups and netns sources and the
//!    processes view all build with them, so a container is one resource with one attribute set
//!    whichever source reports it first.
//! 2. **Common** ([`Common`]): `host.name`, `k8s.node.name` and the config's
//!    `resource_attributes`, on every resource, replacing what a source set.
//! 3. **Defaults**: `OTEL_RESOURCE_ATTRIBUTES`, only where a resource has no such attribute
//!    (the SDKs merge it under what the code sets, too).
//!
//! The metadata processors come after these and fill only what is still absent
//! ([`crate::processors::metadata::attach`]); `runtime_files` and `docker_api` name images with
//! [`image`]. The agent's own resource (self-telemetry) gets
//! the same common and default layers under `service.name` and `service.version`
//! ([`Common::sdk_resource`]).

use std::collections::BTreeMap;

use crate::model::{AttrValue, Attributes, PodRef, Resource, Runtime};
use crate::processors::metadata::allowlisted_key;
use crate::semconv;
use crate::sources::cgroups::classify::Classified;

/// What is wrong with `OTEL_RESOURCE_ATTRIBUTES`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("`{0}` is not key=value")]
    NotKeyValue(String),
    #[error("`{0}` has an empty key")]
    EmptyKey(String),
    #[error("`{0}`: bad percent-encoding")]
    BadEncoding(String),
}

/// A container's identifying attributes: `container.id`, `container.runtime.name`, and its
/// pod's (`k8s.pod.uid` and `k8s.pod.qos_class`, or `podman.pod.id`).
pub fn container(id: &str, runtime: Runtime, pod: Option<&PodRef>) -> Attributes {
    let mut attrs: Attributes = vec![
        (semconv::CONTAINER_ID, AttrValue::text(id)),
        (semconv::CONTAINER_RUNTIME_NAME, AttrValue::constant(runtime.as_str())),
    ];
    match pod {
        Some(PodRef::Kubernetes { uid, qos }) => attrs.extend(self::pod(uid, qos)),
        Some(PodRef::Podman { id }) => attrs.push((semconv::PODMAN_POD_ID, AttrValue::text(id))),
        None => {}
    }
    attrs
}

/// A container whose cgroup path the classifier could not anchor (the processes view, inside a
/// cgroup namespace, sees `/../<name>`): `container.id`, and `container.runtime.name` when the
/// name's prefix tells it. Its pod is unknown.
pub fn unanchored_container(id: &str, runtime: Option<Runtime>) -> Attributes {
    let mut attrs: Attributes = vec![(semconv::CONTAINER_ID, AttrValue::text(id))];
    if let Some(runtime) = runtime {
        attrs.push((semconv::CONTAINER_RUNTIME_NAME, AttrValue::constant(runtime.as_str())));
    }
    attrs
}

/// A Kubernetes pod's identifying attributes: `k8s.pod.uid` and `k8s.pod.qos_class`.
pub fn pod(uid: &str, qos: &str) -> Attributes {
    vec![(semconv::K8S_POD_UID, AttrValue::text(uid)), (semconv::K8S_POD_QOS_CLASS, AttrValue::text(qos))]
}

/// The identifying attributes of a classified cgroup: [`container`] or [`pod`], and for a
/// rootless container `podometer.container.rootless` and its owner's `user.id` (its pod, if its
/// path named one, is its user's word and was never classified).
pub fn classified(what: &Classified) -> Attributes {
    match what {
        Classified::Container { id, runtime, pod, rootless } => {
            let mut attrs = container(id, *runtime, pod.as_ref());
            if let Some(uid) = rootless {
                attrs.push((semconv::PODOMETER_CONTAINER_ROOTLESS, AttrValue::Bool(true)));
                attrs.push((semconv::USER_ID, AttrValue::from(uid.to_string())));
            }
            attrs
        }
        Classified::Pod { uid, qos } => pod(uid, qos),
    }
}

/// A container's image as the metadata processors name it: `container.image.name` and, when
/// the reference has a tag (or the runtime's default, `latest`), `container.image.tags`. Nothing
/// for a reference that names no image (an image id).
pub fn image(reference: &str) -> Attributes {
    let Some(image) = crate::processors::metadata::parse_image_reference(reference) else {
        return Vec::new();
    };
    let mut attrs: Attributes = vec![(semconv::CONTAINER_IMAGE_NAME, AttrValue::text(image.name))];
    if let Some(tag) = image.tag {
        attrs.push((semconv::CONTAINER_IMAGE_TAGS, AttrValue::StrArray(vec![tag.to_owned()])));
    }
    attrs
}

/// The attributes every resource the agent sends gets, its own included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Common {
    /// `host.name`, `k8s.node.name`, the config's `resource_attributes`: replace a source's.
    set: Attributes,
    /// `OTEL_RESOURCE_ATTRIBUTES`: only where a resource has no such attribute.
    defaults: Attributes,
}

impl Common {
    /// `host_name` (the kernel's hostname when `None` or empty), `node_name` when not empty,
    /// the config's `configured` attributes that are not empty (`${env:X:-}` of an unset
    /// variable), and `env`, the parsed `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn new(
        host_name: Option<&str>,
        node_name: Option<&str>,
        configured: &BTreeMap<String, String>,
        env: &[(String, String)],
    ) -> Common {
        let mut set: Attributes = Vec::new();
        let host = host_name.filter(|h| !h.is_empty()).map(str::to_owned).or_else(kernel_hostname);
        if let Some(host) = host {
            set.push((semconv::HOST_NAME, host.into()));
        }
        if let Some(node) = node_name.filter(|n| !n.is_empty()) {
            set.push((semconv::K8S_NODE_NAME, node.into()));
        }
        for (key, value) in configured.iter().filter(|(_, v)| !v.is_empty()) {
            push_or_replace(&mut set, allowlisted_key("", key), value.as_str().into());
        }
        let mut defaults: Attributes = Vec::new();
        for (key, value) in env {
            // A later pair of the same key wins, as in the SDKs.
            push_or_replace(&mut defaults, allowlisted_key("", key), value.as_str().into());
        }
        Common { set, defaults }
    }

    /// [`Common::new`] from the config and the process environment. A malformed
    /// `OTEL_RESOURCE_ATTRIBUTES` is ignored whole, with a warning, as the SDKs do.
    pub fn from_config(config: &crate::config::Config) -> Common {
        let env = match std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
            Ok(text) => parse_otel_resource_attributes(&text).unwrap_or_else(|reason| {
                tracing::warn!(%reason, "OTEL_RESOURCE_ATTRIBUTES is malformed; ignoring all of it, as the SDKs do.");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        Common::new(
            config.host_name.as_deref(),
            config.node_name.as_deref(),
            &config.resource_attributes,
            &env,
        )
    }

    /// Puts the common attributes on a sweep's resource.
    pub fn apply(&self, resource: &mut Resource) {
        for (key, value) in &self.set {
            resource.set_attribute(key, value.clone());
        }
        for (key, value) in &self.defaults {
            resource.set_attribute_if_absent(key, value);
        }
    }

    /// The agent's own resource, for self-telemetry: `service.name=podometer`,
    /// `service.version`, the SDK's `telemetry.sdk.*`, and the common attributes with the same
    /// precedence as on a sweep's resources.
    ///
    /// Not `Resource::builder()`: its `EnvResourceDetector` reads `OTEL_RESOURCE_ATTRIBUTES`
    /// with a parser of its own that does not percent-decode values and keeps the well-formed
    /// pairs of a malformed value, so the agent's resource would say `a%2Cb` where its
    /// containers' say `a,b`.
    pub fn sdk_resource(&self) -> opentelemetry_sdk::Resource {
        use opentelemetry::KeyValue;
        let kv = |(key, value): &(&'static str, AttrValue)| match value {
            AttrValue::Str(s) => KeyValue::new(*key, s.to_string()),
            AttrValue::Int(i) => KeyValue::new(*key, *i),
            AttrValue::Bool(b) => KeyValue::new(*key, *b),
            AttrValue::StrArray(a) => KeyValue::new(
                *key,
                opentelemetry::Value::Array(opentelemetry::Array::String(
                    a.iter().cloned().map(Into::into).collect(),
                )),
            ),
        };
        // Later attributes replace earlier ones of the same key.
        opentelemetry_sdk::Resource::builder_empty()
            .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
            .with_attributes(self.defaults.iter().map(kv))
            .with_attributes(self.set.iter().map(kv))
            .with_service_name("podometer")
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .build()
    }
}

fn push_or_replace(attrs: &mut Attributes, key: &'static str, value: AttrValue) {
    match attrs.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => attrs.push((key, value)),
    }
}

/// The kernel's hostname, read the way `hostname` does (`uname`'s node name is what
/// `gethostname` returns on Linux).
pub fn kernel_hostname() -> Option<String> {
    let name = rustix::system::uname();
    let name = name.nodename().to_string_lossy();
    Some(name.into_owned())
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` as the OpenTelemetry specification says: `key=value`
/// pairs separated by commas, values percent-encoded. Any malformed pair rejects the whole
/// value (the specification: discard it and report an error).
///
/// Ours, not `opentelemetry_sdk`'s: the SDK exposes only `EnvResourceDetector`, which reads the
/// variable itself (no text to test or share), does not percent-decode, and drops a malformed
/// pair while keeping the rest.
pub fn parse_otel_resource_attributes(text: &str) -> Result<Vec<(String, String)>, ResourceError> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| ResourceError::NotKeyValue(pair.to_owned()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ResourceError::EmptyKey(pair.to_owned()));
        }
        let value = crate::config::percent_decode(value.trim())
            .ok_or_else(|| ResourceError::BadEncoding(pair.to_owned()))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResourceId;
    use opentelemetry::{Key, Value};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn str_of<'a>(attrs: &'a Attributes, key: &str) -> Option<&'a str> {
        attrs.iter().find(|(k, _)| *k == key).and_then(|(_, v)| match v {
            AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn otel_resource_attributes() {
        assert_eq!(
            parse_otel_resource_attributes("service.name=agent, k8s.cluster.name = a%2Cb%20c ,").unwrap(),
            vec![
                ("service.name".to_owned(), "agent".to_owned()),
                ("k8s.cluster.name".to_owned(), "a,b c".to_owned())
            ]
        );
        assert_eq!(parse_otel_resource_attributes("").unwrap(), vec![]);
        assert_eq!(parse_otel_resource_attributes("a=1,b"), Err(ResourceError::NotKeyValue("b".into())));
        assert_eq!(parse_otel_resource_attributes("=1"), Err(ResourceError::EmptyKey("=1".into())));
        assert!(parse_otel_resource_attributes("a=%zz").is_err());
        assert!(parse_otel_resource_attributes("a=%4").is_err());
        assert!(parse_otel_resource_attributes("a=%ff").is_err(), "not UTF-8");
        assert_eq!(
            parse_otel_resource_attributes("a=%C3%A9").unwrap(),
            vec![("a".to_owned(), "é".to_owned())]
        );
    }

    #[test]
    fn a_rootless_container_says_so_and_names_no_pod() {
        let rootful = Classified::Container {
            id: ID.into(),
            runtime: Runtime::Containerd,
            pod: Some(PodRef::Kubernetes { uid: "u1".into(), qos: "burstable".into() }),
            rootless: None,
        };
        let attrs = classified(&rootful);
        assert_eq!(str_of(&attrs, semconv::CONTAINER_ID), Some(ID));
        assert_eq!(str_of(&attrs, semconv::CONTAINER_RUNTIME_NAME), Some("containerd"));
        assert_eq!(str_of(&attrs, semconv::K8S_POD_UID), Some("u1"));
        assert_eq!(str_of(&attrs, semconv::K8S_POD_QOS_CLASS), Some("burstable"));
        assert_eq!(attrs.len(), 4);

        let rootless = Classified::Container {
            id: ID.into(),
            runtime: Runtime::Podman,
            pod: None,
            rootless: Some(1000),
        };
        let attrs = classified(&rootless);
        assert_eq!(str_of(&attrs, semconv::USER_ID), Some("1000"));
        assert!(attrs.contains(&(semconv::PODOMETER_CONTAINER_ROOTLESS, AttrValue::Bool(true))));
        assert_eq!(str_of(&attrs, semconv::K8S_POD_UID), None);

        let podman = container(ID, Runtime::Podman, Some(&PodRef::Podman { id: "p".into() }));
        assert_eq!(str_of(&podman, semconv::PODMAN_POD_ID), Some("p"));
        assert_eq!(
            classified(&Classified::Pod { uid: "u1".into(), qos: "guaranteed".into() }),
            pod("u1", "guaranteed")
        );
    }

    #[test]
    fn configured_attributes_replace_a_sources_and_the_environment_fills_only_gaps() {
        let configured = BTreeMap::from([
            ("k8s.cluster.name".to_owned(), "prod".to_owned()),
            ("k8s.pod.name".to_owned(), String::new()),
        ]);
        let env = vec![
            ("k8s.cluster.name".to_owned(), "from-env".to_owned()),
            ("deployment.environment.name".to_owned(), "first".to_owned()),
            ("deployment.environment.name".to_owned(), "staging".to_owned()),
            (semconv::CONTAINER_RUNTIME_NAME.to_owned(), "from-env".to_owned()),
        ];
        let common = Common::new(Some("node-a"), Some(""), &configured, &env);
        let mut r = Resource {
            id: ResourceId::Container(ID.into()),
            attributes: container(ID, Runtime::Docker, None),
            points: Vec::new(),
        };
        r.set_attribute(semconv::HOST_NAME, "set-by-a-source");
        common.apply(&mut r);
        assert_eq!(str_of(&r.attributes, semconv::HOST_NAME), Some("node-a"));
        assert_eq!(str_of(&r.attributes, semconv::K8S_NODE_NAME), None, "empty: left out");
        assert_eq!(str_of(&r.attributes, "k8s.pod.name"), None, "empty: left out");
        assert_eq!(str_of(&r.attributes, "k8s.cluster.name"), Some("prod"));
        assert_eq!(str_of(&r.attributes, "deployment.environment.name"), Some("staging"));
        assert_eq!(str_of(&r.attributes, semconv::CONTAINER_RUNTIME_NAME), Some("docker"));
        assert_eq!(r.attributes.iter().filter(|(k, _)| *k == "deployment.environment.name").count(), 1);
    }

    #[test]
    fn image_name_and_tag() {
        assert_eq!(
            image("registry:5000/team/app:1.2@sha256:abc"),
            vec![
                (semconv::CONTAINER_IMAGE_NAME, AttrValue::text("registry:5000/team/app")),
                (semconv::CONTAINER_IMAGE_TAGS, AttrValue::StrArray(vec!["1.2".into()])),
            ]
        );
        assert_eq!(
            image("nginx")[1],
            (semconv::CONTAINER_IMAGE_TAGS, AttrValue::StrArray(vec!["latest".into()]))
        );
        assert_eq!(image("app@sha256:abc"), vec![(semconv::CONTAINER_IMAGE_NAME, AttrValue::text("app"))]);
        assert_eq!(image(ID), vec![], "an image id names no image");
    }

    #[test]
    fn an_empty_host_name_is_the_kernels() {
        let common = Common::new(Some(""), None, &BTreeMap::new(), &[]);
        assert_eq!(str_of(&common.set, semconv::HOST_NAME), kernel_hostname().as_deref());
    }

    #[test]
    fn the_agents_own_resource_gets_the_same_attributes_under_its_service_name() {
        let configured = BTreeMap::from([("k8s.cluster.name".to_owned(), "prod".to_owned())]);
        let env = parse_otel_resource_attributes(
            "k8s.cluster.name=from-env,team=a%2Cb,service.name=other,host.name=from-env",
        )
        .unwrap();
        let resource = Common::new(Some("node-a"), Some("node-a"), &configured, &env).sdk_resource();
        let get = |key: &'static str| resource.get(&Key::from_static_str(key));
        assert_eq!(get("service.name"), Some(Value::from("podometer")));
        assert_eq!(get("service.version"), Some(Value::from(env!("CARGO_PKG_VERSION"))));
        assert_eq!(get("host.name"), Some(Value::from("node-a")));
        assert_eq!(get("k8s.node.name"), Some(Value::from("node-a")));
        assert_eq!(get("k8s.cluster.name"), Some(Value::from("prod")));
        assert_eq!(get("team"), Some(Value::from("a,b")), "percent-decoded like a container's");
        assert!(get("telemetry.sdk.name").is_some());
    }

    #[test]
    fn the_hostname_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(kernel_hostname().as_deref(), Some(kernel.trim_end_matches('\n')));
    }
}
