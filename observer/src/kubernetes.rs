//! Kubernetes identity of a pipeline: which pod, namespace and container a stream's process
//! runs in, from the API server.
//!
//! The daemon watches only the pods of its own node (`spec.nodeName`, from `NODE_NAME`), with
//! `kube`'s watcher (list, then watch, relisting after a lost watch). It keeps, per
//! container id (the 64-hex id the cgroup path names, see `container`), the pod's namespace
//! and name, the container's name and the pod's owning workload. A restarted container gets
//! a new id in the pod's status and is found under it; a deleted pod's containers are
//! forgotten. Without `NODE_NAME`, or without a reachable API server, nothing is watched and
//! the labels are simply absent.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures_util::TryStreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

/// What the API server says about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet`, ... (the pod's
    /// controller; a ReplicaSet made by a Deployment is reported as the Deployment).
    pub workload_kind: String,
    pub workload_name: String,
}

/// Containers of this node's pods, by container id; shared with the collection loop.
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<Index>>,
    pub node: String,
}

#[derive(Default)]
struct Index {
    /// Container id -> its pod's identity.
    containers: HashMap<String, PodContainer>,
    /// Pod uid -> the container ids it listed, to forget them when it goes.
    pods: HashMap<String, Vec<String>>,
}

/// `containerd://ID`, `cri-o://ID`, `docker://ID` -> `ID`.
fn container_id(status_id: &str) -> Option<&str> {
    let id = status_id.split_once("://").map_or(status_id, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

/// The pod's controller, with a Deployment's ReplicaSet named as the Deployment (the
/// ReplicaSet's name is the Deployment's plus `-` and the pod's `pod-template-hash`).
fn workload(pod: &Pod) -> (String, String) {
    let Some(owner) = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)).or(o.first()))
    else {
        return ("Pod".into(), pod.metadata.name.clone().unwrap_or_default());
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return ("Deployment".into(), deployment.to_string());
    }
    (owner.kind.clone(), owner.name.clone())
}

impl PodIndex {
    pub fn new(node: &str) -> Self {
        PodIndex {
            inner: Arc::default(),
            node: node.to_string(),
        }
    }

    /// The pod container with this id, if a pod of this node lists it.
    pub fn container(&self, id: &str) -> Option<PodContainer> {
        self.inner.read().ok()?.containers.get(id).cloned()
    }

    /// A pod added or changed: its containers, current and previous (a restarted container's
    /// old id stays until the pod goes, so its last streams keep their names).
    pub fn apply(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (workload_kind, workload_name) = workload(pod);
        let Ok(mut idx) = self.inner.write() else {
            return;
        };
        let status = pod.status.as_ref();
        let statuses = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
                    .chain(s.ephemeral_container_statuses.iter().flatten())
            })
            .collect::<Vec<_>>();
        let mut ids = idx.pods.remove(&uid).unwrap_or_default();
        for cs in statuses {
            let current = cs.container_id.as_deref().and_then(container_id);
            let previous = cs
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .and_then(|t| t.container_id.as_deref())
                .and_then(container_id);
            for id in current.into_iter().chain(previous) {
                idx.containers.insert(
                    id.to_string(),
                    PodContainer {
                        namespace: namespace.clone(),
                        pod: name.clone(),
                        container: cs.name.clone(),
                        workload_kind: workload_kind.clone(),
                        workload_name: workload_name.clone(),
                    },
                );
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                }
            }
        }
        idx.pods.insert(uid, ids);
    }

    /// A pod deleted: its containers are forgotten.
    pub fn delete(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_ref() else {
            return;
        };
        if let Ok(mut idx) = self.inner.write()
            && let Some(ids) = idx.pods.remove(uid)
        {
            for id in ids {
                idx.containers.remove(&id);
            }
        }
    }

    /// A relist: pods missing from it are gone.
    fn retain(&self, uids: &std::collections::HashSet<String>) {
        if let Ok(mut idx) = self.inner.write() {
            let gone: Vec<String> = idx
                .pods
                .keys()
                .filter(|u| !uids.contains(*u))
                .cloned()
                .collect();
            for uid in gone {
                if let Some(ids) = idx.pods.remove(&uid) {
                    for id in ids {
                        idx.containers.remove(&id);
                    }
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("no Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Starts watching this node's pods; must run inside the Tokio runtime. The watch runs for
/// the daemon's life and reconnects by itself; errors are logged, never fatal.
pub async fn start(node: &str) -> Result<PodIndex, KubernetesError> {
    let config = kube::Config::infer().await?;
    let client = Client::try_from(config)?;
    let index = PodIndex::new(node);
    let pods: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let idx = index.clone();
    tokio::spawn(async move {
        let mut listed = std::collections::HashSet::new();
        let stream = watcher(pods, cfg).default_backoff();
        futures_util::pin_mut!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => match ev {
                    watcher::Event::Apply(p) => idx.apply(&p),
                    watcher::Event::Delete(p) => idx.delete(&p),
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(p) => {
                        if let Some(uid) = &p.metadata.uid {
                            listed.insert(uid.clone());
                        }
                        idx.apply(&p);
                    }
                    watcher::Event::InitDone => idx.retain(&listed),
                },
                Ok(None) => break,
                Err(e) => {
                    // The backoff retries; say so once per error.
                    tracing::warn!(error = %e, "watching this node's pods");
                }
            }
        }
    });
    tracing::info!(node, "watching this node's pods for Kubernetes labels");
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_deployments_replicaset_is_named_as_the_deployment() {
        let p = pod(serde_json::json!({
            "metadata": {
                "name": "web-5d9f8b7c4-x2x9z", "namespace": "media", "uid": "u1",
                "labels": {"pod-template-hash": "5d9f8b7c4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d9f8b7c4", "uid": "r1", "controller": true}]
            }
        }));
        assert_eq!(workload(&p), ("Deployment".into(), "web".into()));
        let p = pod(serde_json::json!({
            "metadata": {"name": "db-0", "uid": "u2",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "db", "uid": "s1", "controller": true}]}
        }));
        assert_eq!(workload(&p), ("StatefulSet".into(), "db".into()));
        let p = pod(serde_json::json!({"metadata": {"name": "bare", "uid": "u3"}}));
        assert_eq!(workload(&p), ("Pod".into(), "bare".into()));
    }

    #[test]
    fn a_restarted_container_is_found_under_both_ids_until_its_pod_goes() {
        let idx = PodIndex::new("n1");
        let p = pod(serde_json::json!({
            "metadata": {"name": "enc", "namespace": "media", "uid": "u1"},
            "status": {"containerStatuses": [{
                "name": "ffmpeg", "image": "i", "imageID": "", "ready": true,
                "restartCount": 1,
                "containerID": "containerd://bbbb",
                "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://aaaa"}}
            }]}
        }));
        idx.apply(&p);
        assert_eq!(idx.container("bbbb").unwrap().container, "ffmpeg");
        assert_eq!(idx.container("aaaa").unwrap().pod, "enc");
        idx.delete(&p);
        assert_eq!(idx.container("bbbb"), None);
        assert_eq!(idx.container("aaaa"), None);
    }
}
