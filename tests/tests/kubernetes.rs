//! Kubernetes labels through the real `kube` client: the daemon's watcher talks to a local
//! HTTP server that answers as the API server does (a pod list, then a watch streaming
//! recorded events: pod added, container restarted, pod deleted), while real pipelines run
//! in cgroups laid out as containerd lays out those pods' containers.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use observer_tests::{
    ContainerCgroup, Daemon, Scrape, media,
    otlp::{Receiver, attr_int, attr_str},
    run, tempdir,
};

const NODE: &str = "node-1";
const ID_A1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const ID_A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const ID_B: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const UID_A: &str = "0b2f6a1e-9c4d-4e7a-8f3b-2c1d0e9f8a7b";
const UID_B: &str = "1c3e7b2f-0d5e-4f8b-9a4c-3d2e1f0a9b8c";

/// A pod as the API server returns it (the fields a kubelet and controllers fill in).
fn pod(
    uid: &str,
    name: &str,
    owner: (&str, &str),
    labels: serde_json::Value,
    status: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "media", "uid": uid, "resourceVersion": "1",
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                "uid": "owner-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "ffmpeg", "image": "ffmpeg:7"}]},
        "status": status
    })
}

fn running(name: &str, id: &str, previous: Option<&str>) -> serde_json::Value {
    let mut cs = serde_json::json!({
        "name": name, "image": "ffmpeg:7", "imageID": "sha256:0", "ready": true,
        "restartCount": if previous.is_some() { 1 } else { 0 },
        "containerID": format!("containerd://{id}"),
        "state": {"running": {"startedAt": "2026-11-21T10:00:00Z"}}
    });
    if let Some(prev) = previous {
        cs["lastState"] = serde_json::json!({"terminated": {"exitCode": 137,
            "containerID": format!("containerd://{prev}")}});
    }
    serde_json::json!({"phase": "Running", "containerStatuses": [cs]})
}

/// The fake API server: the pod list, and watch events appended by the test. A watch from
/// resourceVersion R gets every event after R, then waits for more.
#[derive(Clone, Default)]
struct Api {
    list: Arc<Mutex<Vec<serde_json::Value>>>,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    requests: Arc<Mutex<Vec<String>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Api {
    fn push(&self, kind: &str, object: serde_json::Value) {
        let mut ev = self.events.lock().unwrap();
        let mut object = object;
        object["metadata"]["resourceVersion"] = (100 + ev.len() + 1).to_string().into();
        ev.push(serde_json::json!({"type": kind, "object": object}));
        self.notify.notify_waiters();
    }
}

async fn pods(
    axum::extract::State(api): axum::extract::State<Api>,
    uri: axum::http::Uri,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    api.requests.lock().unwrap().push(uri.to_string());
    if q.get("watch").map(String::as_str) != Some("true") {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "100"},
            "items": *api.list.lock().unwrap(),
        });
        return axum::Json(body).into_response();
    }
    let from: usize = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let stream = futures_util::stream::unfold((api, from), |(api, seen)| async move {
        loop {
            let notify = api.notify.clone();
            let notified = notify.notified();
            let next = {
                let ev = api.events.lock().unwrap();
                ev.get(seen.saturating_sub(100)).cloned()
            };
            if let Some(e) = next {
                let line = format!("{e}\n");
                return Some((Ok::<_, std::io::Error>(line), (api, seen + 1)));
            }
            notified.await;
        }
    });
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
}

fn serve(api: Api) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/api/v1/pods", axum::routing::get(pods))
        .with_state(api);
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rt)
}

/// The k8s_* labels of the pipeline's decoder.
fn k8s_labels(s: &Scrape, pid: u32) -> Vec<(String, String)> {
    let x = s
        .one(
            "media_frames_total",
            &[
                ("pid", &pid.to_string()),
                ("direction", "decode"),
                ("codec", "h264"),
            ],
        )
        .expect("the decoder");
    let mut l: Vec<(String, String)> = x
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with("k8s_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.sort();
    l
}

fn want(pod: &str, container: &str, kind: &str, workload: &str) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = [
        ("k8s_container_name", container),
        ("k8s_namespace_name", "media"),
        ("k8s_node_name", NODE),
        ("k8s_pod_name", pod),
        ("k8s_workload_kind", kind),
        ("k8s_workload_name", workload),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    l.sort();
    l
}

#[test]
fn streams_carry_their_pods_identity_through_list_watch_restart_and_delete() {
    let api = Api::default();
    let pod_a = |status| {
        pod(
            UID_A,
            "encoder-7d4b9c-x2x9z",
            ("ReplicaSet", "encoder-7d4b9c"),
            serde_json::json!({"app": "encoder", "pod-template-hash": "7d4b9c"}),
            status,
        )
    };
    // Listed at start: pod A, its container running as ID_A1.
    api.list
        .lock()
        .unwrap()
        .push(pod_a(running("ffmpeg", ID_A1, None)));
    let (addr, _rt) = serve(api.clone());
    let dir = tempdir("kubeconfig");
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let otlp = Receiver::start();
    let d = Daemon::start_env(
        &[],
        &[
            ("NODE_NAME", NODE),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.http_url()),
        ],
    );
    let input = media::h264_aac_mp4();
    let decode = |id: &str, uid: &str| {
        let cg = ContainerCgroup::new(id, uid);
        let (pid, _) = run(&mut cg.ffmpeg(&[
            "-threads",
            "1",
            "-i",
            input.to_str().unwrap(),
            "-f",
            "null",
            "-",
        ]));
        d.wait_ended(pid);
        pid
    };
    let pid = decode(ID_A1, UID_A);
    let s = d.scrape();
    assert_eq!(
        k8s_labels(&s, pid),
        want("encoder-7d4b9c-x2x9z", "ffmpeg", "Deployment", "encoder"),
        "from the list"
    );
    // The same identity, in OpenTelemetry's words, on the pipeline's spans.
    let root = otlp.wait_for("the pipeline's root span", Duration::from_secs(30), |r| {
        r.spans
            .iter()
            .find(|s| {
                s.parent_span_id.is_empty()
                    && attr_int(&s.attributes, "process.pid") == Some(pid as i64)
            })
            .cloned()
    });
    for (k, v) in [
        ("k8s.namespace.name", "media"),
        ("k8s.pod.name", "encoder-7d4b9c-x2x9z"),
        ("k8s.container.name", "ffmpeg"),
        ("k8s.node.name", NODE),
        ("k8s.deployment.name", "encoder"),
        ("container.id", ID_A1),
    ] {
        assert_eq!(attr_str(&root.attributes, k).as_deref(), Some(v), "{k}");
    }
    // Only this node's pods were asked for.
    let requests = api.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|r| r.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"))),
        "{requests:?}"
    );

    // Watch: pod B added, owned by a Job.
    api.push(
        "ADDED",
        pod(
            UID_B,
            "nightly-transcode-28911",
            ("Job", "nightly-transcode-28911"),
            serde_json::json!({"job-name": "nightly-transcode-28911"}),
            running("transcode", ID_B, None),
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let pid = decode(ID_B, UID_B);
    assert_eq!(
        k8s_labels(&d.scrape(), pid),
        want(
            "nightly-transcode-28911",
            "transcode",
            "Job",
            "nightly-transcode-28911"
        ),
        "from a watch event"
    );

    // Pod A's container restarted: a new container id, the old one in lastState.
    api.push("MODIFIED", pod_a(running("ffmpeg", ID_A2, Some(ID_A1))));
    std::thread::sleep(Duration::from_secs(1));
    let pid = decode(ID_A2, UID_A);
    assert_eq!(
        k8s_labels(&d.scrape(), pid),
        want("encoder-7d4b9c-x2x9z", "ffmpeg", "Deployment", "encoder"),
        "after a restart"
    );

    // Pod B deleted: its container is no longer a pod's.
    api.push(
        "DELETED",
        pod(
            UID_B,
            "nightly-transcode-28911",
            ("Job", "nightly-transcode-28911"),
            serde_json::json!({}),
            running("transcode", ID_B, None),
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let pid = decode(ID_B, UID_B);
    let s = d.scrape();
    assert_eq!(
        k8s_labels(&s, pid),
        Vec::<(String, String)>::new(),
        "after delete"
    );
    // The cgroup still names the container.
    let x = s
        .one(
            "media_frames_total",
            &[
                ("pid", &pid.to_string()),
                ("direction", "decode"),
                ("codec", "h264"),
            ],
        )
        .unwrap();
    assert_eq!(x.label("container_id").map(String::as_str), Some(ID_B));
}
