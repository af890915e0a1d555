//! A CRI client for live tests: creates pods the way the kubelet does (RunPodSandbox,
//! CreateContainer, StartContainer with the kubelet's labels and a `kubepods` cgroup parent),
//! through the runtime's unix socket. Synchronous: each call runs on the client's own small
//! tokio runtime, so tests and Drop guards need no async context.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connection to a CRI runtime service; cheap to clone.
#[derive(Clone)]
pub struct Cri {
    rt: Arc<tokio::runtime::Runtime>,
    channel: Channel,
}

type CriResult<T> = Result<T, tonic::Status>;

impl Cri {
    /// Connects to the CRI socket, retrying for up to `timeout` while the runtime starts.
    pub fn connect(socket: &Path, timeout: Duration) -> Cri {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime for the CRI client"),
        );
        let socket: PathBuf = socket.to_owned();
        let channel = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let path = socket.clone();
                // The authority is ignored: the connector always dials the unix socket.
                let attempt = Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await;
                match attempt {
                    Ok(channel) => {
                        let mut probe = RuntimeServiceClient::new(channel.clone());
                        if probe.version(VersionRequest { version: "v1".into() }).await.is_ok() {
                            break channel;
                        }
                    }
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        panic!("CRI socket {} did not answer: {e}", socket.display())
                    }
                    Err(_) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    panic!("CRI socket {} did not answer Version", socket.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Cri { rt, channel }
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn version(&self) -> CriResult<VersionResponse> {
        let mut c = self.runtime();
        self.rt.block_on(async move {
            c.version(VersionRequest { version: "v1".into() }).await.map(|r| r.into_inner())
        })
    }

    pub fn list_images(&self) -> CriResult<Vec<String>> {
        let mut c = ImageServiceClient::new(self.channel.clone());
        self.rt.block_on(async move {
            let images = c.list_images(ListImagesRequest::default()).await?.into_inner().images;
            Ok(images.into_iter().flat_map(|i| i.repo_tags).collect())
        })
    }

    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> CriResult<String> {
        let mut c = self.runtime();
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        self.rt
            .block_on(async move { c.run_pod_sandbox(request).await.map(|r| r.into_inner().pod_sandbox_id) })
    }

    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> CriResult<String> {
        let mut c = self.runtime();
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        };
        self.rt
            .block_on(async move { c.create_container(request).await.map(|r| r.into_inner().container_id) })
    }

    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime();
        let request = StartContainerRequest { container_id: id.to_owned() };
        self.rt.block_on(async move { c.start_container(request).await.map(|_| ()) })
    }

    /// The pod's IP address as the CNI plugin assigned it.
    pub fn pod_ip(&self, pod_id: &str) -> CriResult<String> {
        let mut c = self.runtime();
        let request = PodSandboxStatusRequest { pod_sandbox_id: pod_id.to_owned(), verbose: false };
        self.rt.block_on(async move {
            let status = c.pod_sandbox_status(request).await?.into_inner().status;
            Ok(status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default())
        })
    }

    pub fn list_pod_sandbox_ids(&self) -> CriResult<Vec<String>> {
        let mut c = self.runtime();
        self.rt.block_on(async move {
            let pods = c.list_pod_sandbox(ListPodSandboxRequest::default()).await?.into_inner().items;
            Ok(pods.into_iter().map(|p| p.id).collect())
        })
    }

    /// StopPodSandbox (stops its containers and tears down its network through CNI DEL), then
    /// RemovePodSandbox.
    pub fn stop_and_remove_pod(&self, pod_id: &str) -> CriResult<()> {
        let mut c = self.runtime();
        let id = pod_id.to_owned();
        self.rt.block_on(async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
            Ok(())
        })
    }
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// What a test asks for: a pod and its app containers (name, shell script), as a kubelet
/// would request them.
pub struct PodRequest<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    /// `/…/kubepods/besteffort/pod<uid>`: where the runtime puts the pod's cgroups.
    pub cgroup_parent: &'a str,
    pub image: &'a str,
    pub containers: &'a [(&'a str, &'a str)],
}

/// A pod created through the CRI, stopped and removed on drop.
pub struct CriPod {
    cri: Cri,
    pub sandbox_id: String,
    /// (container name, container id), in the order requested.
    pub containers: Vec<(String, String)>,
    pub config: PodSandboxConfig,
}

impl CriPod {
    pub fn run(cri: &Cri, request: &PodRequest) -> CriPod {
        let labels = map(&[
            ("io.kubernetes.pod.name", request.name),
            ("io.kubernetes.pod.namespace", request.namespace),
            ("io.kubernetes.pod.uid", request.uid),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: request.name.to_owned(),
                uid: request.uid.to_owned(),
                namespace: request.namespace.to_owned(),
                attempt: 0,
            }),
            hostname: request.name.to_owned(),
            log_directory: String::new(),
            labels: labels.clone(),
            annotations: map(&[("kubernetes.io/config.source", "api")]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: request.cgroup_parent.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_id = cri.run_pod_sandbox(&config).unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
        // From here on, Drop removes the pod even if a container fails to start.
        let mut pod = CriPod { cri: cri.clone(), sandbox_id, containers: Vec::new(), config };
        for (name, script) in request.containers {
            let mut container_labels = labels.clone();
            container_labels.insert("io.kubernetes.container.name".into(), (*name).to_owned());
            let container = ContainerConfig {
                metadata: Some(ContainerMetadata { name: (*name).to_owned(), attempt: 0 }),
                image: Some(ImageSpec { image: request.image.to_owned(), ..Default::default() }),
                command: vec!["sh".into(), "-c".into()],
                args: vec![(*script).to_owned()],
                labels: container_labels,
                annotations: map(&[("io.kubernetes.container.restartCount", "0")]),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            };
            let id = cri
                .create_container(&pod.sandbox_id, &pod.config, &container)
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
            pod.containers.push(((*name).to_owned(), id.clone()));
            cri.start_container(&id).unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        }
        pod
    }

    pub fn container_id(&self, name: &str) -> &str {
        &self.containers.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no container {name}")).1
    }
}

impl Drop for CriPod {
    fn drop(&mut self) {
        if let Err(e) = self.cri.stop_and_remove_pod(&self.sandbox_id) {
            eprintln!("removing pod {}: {e}", self.sandbox_id);
        }
    }
}

/// A pod UID in the kubelet's form, unique per test process and call; `variant` (a hex digit)
/// keeps the UIDs of different test files apart.
pub fn kubelet_pod_uid(variant: char) -> String {
    let seq: u64 = super::unique("uid").rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    format!("{:08x}-0000-4000-{variant}000-{seq:012x}", std::process::id())
}
