//! An OTLP receiver for the tests: a gRPC server (tonic, OpenTelemetry's own service
//! definitions) and an HTTP/protobuf server on loopback, keeping every span and log record
//! they are sent. It can be stopped and started again on the same ports, to play a
//! collector that goes away.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::LogRecord,
    metrics::v1::Metric,
    trace::v1::Span,
};
use prost::Message as _;

/// What the receiver was sent.
#[derive(Default, Clone)]
pub struct Received {
    pub spans: Vec<Span>,
    pub logs: Vec<LogRecord>,
    /// The metrics of the last metrics request.
    pub metrics: Vec<Metric>,
    /// Resource attributes of the last request.
    pub resource: Vec<KeyValue>,
    /// The `authorization` header of each request, on a receiver started with TLS.
    pub authorization: Vec<String>,
}

type Store = Arc<Mutex<Received>>;

fn keep_spans(store: &Store, req: ExportTraceServiceRequest) {
    let mut r = store.lock().unwrap();
    for rs in req.resource_spans {
        if let Some(res) = rs.resource {
            r.resource = res.attributes;
        }
        for ss in rs.scope_spans {
            r.spans.extend(ss.spans);
        }
    }
}

fn keep_logs(store: &Store, req: ExportLogsServiceRequest) {
    let mut r = store.lock().unwrap();
    for rl in req.resource_logs {
        for sl in rl.scope_logs {
            r.logs.extend(sl.log_records);
        }
    }
}

fn keep_metrics(store: &Store, req: ExportMetricsServiceRequest) {
    let mut r = store.lock().unwrap();
    r.metrics = req
        .resource_metrics
        .into_iter()
        .flat_map(|rm| rm.scope_metrics)
        .flat_map(|sm| sm.metrics)
        .collect();
}

struct Grpc(Store);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        keep_metrics(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep_spans(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        keep_logs(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    store: Store,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    /// Serving TLS with this configuration (which may require client certificates).
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Receiver {
    pub fn start() -> Self {
        Receiver::start_with(None)
    }

    /// A receiver that serves TLS only, with `tls` (see `tls::Pki::server_config`): `https://`
    /// URLs, gRPC and HTTP on the same configuration.
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Receiver::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut r = Receiver {
            grpc: free_port(),
            http: free_port(),
            store: Store::default(),
            rt,
            stop: None,
            tls,
        };
        r.resume();
        r
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// URL of the gRPC server (`https://localhost:PORT` with TLS: the name its certificate
    /// carries).
    pub fn grpc_url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.grpc.port()),
            None => format!("{}://{}", self.scheme(), self.grpc),
        }
    }

    /// The URL for an `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`.
    pub fn url(&self, protocol: &str) -> String {
        if protocol == "grpc" {
            self.grpc_url()
        } else {
            self.http_url()
        }
    }

    pub fn http_url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.http.port()),
            None => format!("{}://{}", self.scheme(), self.http),
        }
    }

    /// Starts serving (again) on the same ports.
    pub fn resume(&mut self) {
        if let Some(tls) = self.tls.clone() {
            self.resume_tls(tls);
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let store = self.store.clone();
        let (grpc, http) = (self.grpc, self.http);
        let mut grpc_stop = rx.clone();
        let s1 = store.clone();
        let s2 = store.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::bind(grpc).await.unwrap();
            ready_tx.send(()).unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Grpc(s1.clone())))
                .add_service(LogsServiceServer::new(Grpc(s1.clone())))
                .add_service(MetricsServiceServer::new(Grpc(s1)))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        let mut http_stop = rx;
        let (ready_tx2, ready_rx2) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            use axum::{body::Bytes, extract::State, routing::post};
            let app = axum::Router::new()
                .route(
                    "/v1/traces",
                    post(|State(s): State<Store>, body: Bytes| async move {
                        let req = ExportTraceServiceRequest::decode(body).unwrap();
                        keep_spans(&s, req);
                        ExportTraceServiceResponse::default().encode_to_vec()
                    }),
                )
                .route(
                    "/v1/logs",
                    post(|State(s): State<Store>, body: Bytes| async move {
                        let req = ExportLogsServiceRequest::decode(body).unwrap();
                        keep_logs(&s, req);
                        ExportLogsServiceResponse::default().encode_to_vec()
                    }),
                )
                .route(
                    "/v1/metrics",
                    post(|State(s): State<Store>, body: Bytes| async move {
                        let req = ExportMetricsServiceRequest::decode(body).unwrap();
                        keep_metrics(&s, req);
                        ExportMetricsServiceResponse::default().encode_to_vec()
                    }),
                )
                .with_state(s2);
            let listener = tokio::net::TcpListener::bind(http).await.unwrap();
            ready_tx2.send(()).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        ready_rx.recv().unwrap();
        ready_rx2.recv().unwrap();
        self.stop = Some(tx);
    }

    /// Both servers over TLS: gRPC's routes and the HTTP routes as one axum router each,
    /// every connection's handshake first (a refused client certificate ends it there).
    fn resume_tls(&mut self, tls: Arc<rustls::ServerConfig>) {
        use axum::{body::Bytes, extract::State, routing::post};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let store = self.store.clone();
        let grpc_app = tonic::service::Routes::new(TraceServiceServer::new(Grpc(store.clone())))
            .add_service(LogsServiceServer::new(Grpc(store.clone())))
            .add_service(MetricsServiceServer::new(Grpc(store.clone())))
            .into_axum_router();
        let http_app = axum::Router::new()
            .route(
                "/v1/traces",
                post(|State(s): State<Store>, body: Bytes| async move {
                    keep_spans(&s, ExportTraceServiceRequest::decode(body).unwrap());
                    ExportTraceServiceResponse::default().encode_to_vec()
                }),
            )
            .route(
                "/v1/logs",
                post(|State(s): State<Store>, body: Bytes| async move {
                    keep_logs(&s, ExportLogsServiceRequest::decode(body).unwrap());
                    ExportLogsServiceResponse::default().encode_to_vec()
                }),
            )
            .route(
                "/v1/metrics",
                post(|State(s): State<Store>, body: Bytes| async move {
                    keep_metrics(&s, ExportMetricsServiceRequest::decode(body).unwrap());
                    ExportMetricsServiceResponse::default().encode_to_vec()
                }),
            )
            .with_state(store.clone());
        for (addr, app) in [(self.grpc, grpc_app), (self.http, http_app)] {
            let app = app.layer(axum::middleware::from_fn_with_state(
                store.clone(),
                |State(s): State<Store>,
                 req: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    if let Some(v) = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                    {
                        s.lock().unwrap().authorization.push(v.to_string());
                    }
                    next.run(req).await
                },
            ));
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            let mut stop = rx.clone();
            let listener = self
                .rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .unwrap();
            self.rt.spawn(async move {
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        r = listener.accept() => match r {
                            Ok(c) => c,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                    });
                }
            });
        }
        self.stop = Some(tx);
    }

    /// Stops serving: connections are refused until [`Receiver::resume`].
    pub fn pause(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        // Wait until the ports refuse.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && (std::net::TcpStream::connect(self.grpc).is_ok()
                || std::net::TcpStream::connect(self.http).is_ok())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn received(&self) -> Received {
        self.store.lock().unwrap().clone()
    }

    /// Waits until `check` finds what it wants in what was received; None after `timeout`.
    pub fn try_wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Received) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(&self.store.lock().unwrap()) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `check` finds what it wants in what was received.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Received) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(&self.store.lock().unwrap()) {
                return v;
            }
            if Instant::now() > deadline {
                let r = self.received();
                panic!(
                    "timed out waiting for {what}: {} spans, {} logs received; names: {:?}\nlogs: {:?}",
                    r.spans.len(),
                    r.logs.len(),
                    r.spans
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<std::collections::BTreeSet<_>>(),
                    r.logs
                        .iter()
                        .map(|l| (
                            format!("{:?}", l.body),
                            attr_str(&l.attributes, "media.stream"),
                            l.span_id.len()
                        ))
                        .take(30)
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An attribute's value, if present.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

pub fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(v) => Some(*v),
        _ => None,
    }
}

pub fn attr_bool(attrs: &[KeyValue], key: &str) -> Option<bool> {
    match attr(attrs, key)? {
        Value::BoolValue(v) => Some(*v),
        _ => None,
    }
}
