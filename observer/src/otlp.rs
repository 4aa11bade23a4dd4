//! OpenTelemetry export over OTLP (gRPC or HTTP/protobuf, through `opentelemetry-otlp`).
//!
//! Spans are not made by instrumented code here: they are built from what the kernel
//! recorded, with its timestamps, so they go straight to the OTLP exporter as `SpanData`. Ids
//! are derived from identities (boot, process, stream), so a frame span read from the kernel
//! names its stream's span without a lookup, and a restarted daemon continues the same traces.
//!
//! Every signal has a bounded queue in front of its exporter: a collector that is down or slow
//! costs at most the queue's memory, and what does not fit or fails to export is counted
//! (`observer_otlp_dropped_total{signal}`); nothing ever waits on the network.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord, SdkLoggerProvider},
    trace::{SpanData, SpanExporter as _},
};
use tokio::sync::mpsc;

use crate::{
    config::{Options, OtlpProtocol},
    io::IoRegistry,
    streams::Registry,
};

pub mod metrics;
pub mod traces;
pub mod transport;

/// The signals, as the `signal` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// What happened to one signal's items.
#[derive(Debug, Default)]
pub struct SignalStats {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Not exported: the queue was full, or the request carrying them failed.
    pub dropped: AtomicU64,
    /// Waiting in the queue now.
    pub queued: AtomicU64,
    /// Export requests that failed (refused, timed out, unreachable).
    pub failed_requests: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub traces: SignalStats,
    pub logs: SignalStats,
    /// Counted in data points.
    pub metrics: SignalStats,
}

impl Stats {
    pub fn of(&self, signal: Signal) -> &SignalStats {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
            Signal::Metrics => &self.metrics,
        }
    }
}

/// The producing end of a signal's bounded queue.
pub struct Queue<T> {
    tx: mpsc::Sender<T>,
    stats: Arc<Stats>,
    signal: Signal,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
            signal: self.signal,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("signal", &self.signal)
            .finish()
    }
}

impl<T> Queue<T> {
    /// Queues an item, or drops and counts it if the queue is full. Never waits.
    pub fn push(&self, item: T) {
        let st = self.stats.of(self.signal);
        match self.tx.try_send(item) {
            Ok(()) => st.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => st.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn queue<T>(stats: &Arc<Stats>, signal: Signal, size: usize) -> (Queue<T>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel(size);
    (
        Queue {
            tx,
            stats: stats.clone(),
            signal,
        },
        rx,
    )
}

/// Where a drain takes items from.
trait Source<T>: Send {
    /// The next item; None once every producer is gone and nothing is left.
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send;
}

impl<T: Send> Source<T> for mpsc::Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }
}

/// Two queues, the first always served before the second: the spans of processes and streams
/// before frame spans, so a flood of frames can never crowd out the spans that give a trace
/// its shape (each has its own bound and drops).
struct Prioritized<T> {
    first: mpsc::Receiver<T>,
    second: mpsc::Receiver<T>,
}

impl<T: Send> Source<T> for Prioritized<T> {
    async fn recv(&mut self) -> Option<T> {
        tokio::select! {
            biased;
            Some(x) = self.first.recv() => Some(x),
            Some(x) = self.second.recv() => Some(x),
            else => None,
        }
    }
}

/// How batches are made and sent.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub max_batch: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Takes items off a queue in batches (full, or after `interval`) and exports each; counts
/// what was exported and what was lost. Ends when every producer is gone and the queue is
/// drained.
async fn drain<T, F, Fut>(
    mut rx: impl Source<T>,
    stats: Arc<Stats>,
    signal: Signal,
    b: Batching,
    mut export: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = OTelSdkResult>,
{
    let st = stats.of(signal);
    let mut failing = false;
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(b.max_batch);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + b.interval;
        while batch.len() < b.max_batch {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(x) => batch.push(x),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let n = batch.len() as u64;
        let result = match tokio::time::timeout(b.timeout, export(batch)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer in {:?}", b.timeout)),
        };
        // Counted as queued until sent, so a shutdown can wait for the queue to drain.
        st.queued.fetch_sub(n, Ordering::Relaxed);
        match result {
            Ok(()) => {
                st.exported.fetch_add(n, Ordering::Relaxed);
                if failing {
                    failing = false;
                    tracing::info!(signal = signal.name(), "OTLP export works again");
                }
            }
            Err(e) => {
                st.dropped.fetch_add(n, Ordering::Relaxed);
                st.failed_requests.fetch_add(1, Ordering::Relaxed);
                // One line per outage, not one per batch.
                if !failing {
                    failing = true;
                    tracing::warn!(signal = signal.name(), error = %e, dropped = n,
                        "OTLP export failed; dropping and counting until it works again");
                }
            }
        }
    }
}

/// The log side, made before the runtime starts so the daemon's own log can feed it from its
/// first line: a logger provider whose one processor fills the bounded queue.
pub struct LogPipe {
    pub provider: SdkLoggerProvider,
    rx: mpsc::Receiver<(SdkLogRecord, InstrumentationScope)>,
}

#[derive(Debug)]
struct QueueProcessor(Queue<(SdkLogRecord, InstrumentationScope)>);

impl LogProcessor for QueueProcessor {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.push((record.clone(), scope.clone()));
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Where a captured message came from.
#[derive(Clone, Copy, Debug)]
pub struct LogOrigin<'a> {
    pub process: &'a str,
    /// The `AVClass` context that logged it.
    pub ctx: u64,
    /// The generation of the stream on that context, if it is one.
    pub stream_opened: Option<u64>,
    /// The `stream` and `io` labels ("" if none).
    pub stream: &'a str,
    pub io: &'a str,
}

/// Everything OTLP, once running.
pub struct Otlp {
    pub stats: Arc<Stats>,
    pub traces: traces::Traces,
    /// Emits FFmpeg's messages as log records (None with `--otlp-logs false`).
    pub logger: Option<opentelemetry_sdk::logs::SdkLogger>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _provider: Option<SdkLoggerProvider>,
    /// For the metrics export, started once the shared state exists.
    metrics: Option<metrics::Settings>,
}

/// The resource of everything exported: the node and the daemon, after OpenTelemetry's
/// conventions; `OTEL_RESOURCE_ATTRIBUTES` adds to it. The pipelines' own identity (process,
/// pid, stream) travels on their spans and logs, since one export carries many processes.
pub fn resource(service_name: &str) -> Resource {
    use opentelemetry::KeyValue;
    let mut attrs = vec![
        KeyValue::new("service.name", service_name.to_string()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(host) = hostname() {
        attrs.push(KeyValue::new("host.name", host));
    }
    if let Ok(node) = std::env::var("NODE_NAME")
        && !node.is_empty()
    {
        attrs.push(KeyValue::new("k8s.node.name", node));
    }
    Resource::builder().with_attributes(attrs).build()
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// The endpoint to export to, if any (an empty `OTEL_EXPORTER_OTLP_ENDPOINT` is none).
pub fn endpoint(opts: &Options) -> Option<&str> {
    opts.otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

impl LogPipe {
    /// Made only when an endpoint is set and logs are on.
    pub fn new(opts: &Options) -> Option<(Self, Arc<Stats>)> {
        let stats = Arc::new(Stats::default());
        endpoint(opts)?;
        if !opts.otlp_logs {
            return None;
        }
        let (q, rx) = queue(&stats, Signal::Logs, opts.otlp_queue_size);
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource(&opts.service_name))
            .with_log_processor(QueueProcessor(q))
            .build();
        Some((LogPipe { provider, rx }, stats))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP {signal} exporter for {endpoint}: {source}")]
    Build {
        signal: &'static str,
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("OTLP {signal} TLS: {message}")]
    Tls {
        signal: &'static str,
        message: String,
    },
}

impl Otlp {
    /// Starts the export tasks; must run inside the Tokio runtime. `logs` is what
    /// [`LogPipe::new`] made before the runtime started.
    pub fn start(
        opts: &Options,
        logs: Option<(LogPipe, Arc<Stats>)>,
    ) -> Result<Option<Self>, OtlpError> {
        let Some(endpoint) = endpoint(opts) else {
            return Ok(None);
        };
        let base = endpoint.trim_end_matches('/').to_string();
        let batching = Batching {
            max_batch: opts.otlp_batch_size,
            interval: opts.otlp_export_interval,
            timeout: opts.otlp_timeout,
        };
        let res = resource(&opts.service_name);
        let build_err = |signal, source| OtlpError::Build {
            signal,
            endpoint: base.clone(),
            source,
        };
        let (stats, log_pipe) = match logs {
            Some((pipe, stats)) => (stats, Some(pipe)),
            None => (Arc::new(Stats::default()), None),
        };
        let mut tasks = Vec::new();

        // The span and log exporters' builders are different types with the same methods.
        // The connection (TLS, its files) is built here, per signal; the SDK adds the
        // headers of OTEL_EXPORTER_OTLP_HEADERS itself.
        macro_rules! exporter {
            ($builder:expr, $path:literal, $signal:expr) => {
                match opts.otlp_protocol {
                    OtlpProtocol::Grpc => $builder
                        .with_tonic()
                        .with_endpoint(&base)
                        .with_timeout(opts.otlp_timeout)
                        .with_channel(transport::grpc_channel(&base, $signal, opts.otlp_timeout)?)
                        .build(),
                    OtlpProtocol::HttpProtobuf => $builder
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_endpoint(format!("{base}{}", $path))
                        .with_timeout(opts.otlp_timeout)
                        .with_http_client(transport::http_client(
                            &base,
                            $signal,
                            opts.otlp_timeout,
                        )?)
                        .build(),
                }
            };
        }
        let mut spans = exporter!(
            opentelemetry_otlp::SpanExporter::builder(),
            "/v1/traces",
            Signal::Traces
        )
        .map_err(|e| build_err("traces", e))?;
        spans.set_resource(&res);
        let spans = Arc::new(spans);
        let (span_queue, first) = queue::<SpanData>(&stats, Signal::Traces, opts.otlp_queue_size);
        let (frame_queue, second) = queue::<SpanData>(&stats, Signal::Traces, opts.otlp_queue_size);
        tasks.push(tokio::spawn(drain(
            Prioritized { first, second },
            stats.clone(),
            Signal::Traces,
            batching,
            move |batch| {
                let e = spans.clone();
                async move { e.export(batch).await }
            },
        )));

        let mut logger = None;
        let mut provider = None;
        if let Some(pipe) = log_pipe {
            let mut exporter = exporter!(
                opentelemetry_otlp::LogExporter::builder(),
                "/v1/logs",
                Signal::Logs
            )
            .map_err(|e| build_err("logs", e))?;
            opentelemetry_sdk::logs::LogExporter::set_resource(&mut exporter, &res);
            let exporter = Arc::new(exporter);
            tasks.push(tokio::spawn(drain(
                pipe.rx,
                stats.clone(),
                Signal::Logs,
                batching,
                move |batch: Vec<(SdkLogRecord, InstrumentationScope)>| {
                    let e = exporter.clone();
                    async move {
                        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                            batch.iter().map(|(r, s)| (r, s)).collect();
                        e.export(LogBatch::new(&refs)).await
                    }
                },
            )));
            use opentelemetry::logs::LoggerProvider as _;
            logger = Some(pipe.provider.logger("ffmpeg"));
            provider = Some(pipe.provider);
        }
        tracing::info!(
            endpoint = %base,
            protocol = ?opts.otlp_protocol,
            tls = base.starts_with("https://"),
            frame_sample_ratio = opts.frame_sample_ratio,
            slow_frame = ?opts.slow_frame.0,
            logs = logger.is_some(),
            "exporting spans over OTLP"
        );
        let metrics = opts.otlp_metrics.then(|| metrics::Settings {
            base: base.clone(),
            protocol: opts.otlp_protocol,
            interval: opts.otlp_metrics_interval,
            timeout: opts.otlp_timeout,
            resource: res.clone(),
        });
        Ok(Some(Otlp {
            stats,
            traces: traces::Traces::new(span_queue, frame_queue),
            logger,
            tasks,
            _provider: provider,
            metrics,
        }))
    }

    /// Starts exporting `/metrics` as OTLP metrics, if `--otlp-metrics` asked for it.
    pub fn start_metrics(&mut self, shared: crate::state::SharedState) -> Result<(), String> {
        if let Some(settings) = self.metrics.take() {
            self.tasks
                .push(metrics::start(settings, shared, self.stats.clone())?);
        }
        Ok(())
    }

    /// One of FFmpeg's messages as a log record, in its stream's trace when the stream is
    /// known.
    pub fn log(
        &mut self,
        m: &crate::logs::Message,
        ktime_ns: u64,
        from: &LogOrigin<'_>,
        tracker: &crate::tracker::Tracker,
    ) {
        use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
        let Some(logger) = &self.logger else { return };
        let LogOrigin {
            process,
            ctx,
            stream_opened,
            stream,
            io,
        } = *from;
        let context = stream_opened.map(|opened| self.traces.context(m.pid, tracker, ctx, opened));
        let mut rec = logger.create_log_record();
        rec.set_timestamp(self.traces.wall(ktime_ns));
        rec.set_observed_timestamp(std::time::SystemTime::now());
        let severity = match m.av_level {
            i32::MIN..=7 => Severity::Fatal2,
            8..=15 => Severity::Fatal,
            16..=23 => Severity::Error,
            24..=31 => Severity::Warn,
            32..=39 => Severity::Info,
            40..=47 => Severity::Debug2,
            48..=55 => Severity::Debug,
            _ => Severity::Trace,
        };
        rec.set_severity_number(severity);
        rec.set_severity_text(m.level);
        rec.set_body(AnyValue::from(m.message.clone()));
        rec.add_attribute("media.log.template", m.template.clone());
        rec.add_attribute(
            "media.log.args",
            AnyValue::ListAny(Box::new(
                m.args.iter().map(|a| AnyValue::from(a.clone())).collect(),
            )),
        );
        rec.add_attribute("process.pid", m.pid as i64);
        rec.add_attribute("process.executable.name", process.to_string());
        if !stream.is_empty() {
            rec.add_attribute("media.stream", stream.to_string());
        }
        if !io.is_empty() {
            rec.add_attribute("media.io", io.to_string());
        }
        if let Some((trace, span)) = context {
            rec.set_trace_context(trace, span, Some(opentelemetry::trace::TraceFlags::SAMPLED));
        }
        logger.emit(rec);
    }

    /// Ends every open span (pipelines still running: their spans end now, marked
    /// `media.unfinished`) and waits up to `timeout` for the queues to drain.
    pub async fn shutdown(self, registry: &Registry, ios: &IoRegistry, timeout: Duration) {
        let Otlp {
            traces,
            stats,
            tasks,
            ..
        } = self;
        traces.close_all(registry, ios);
        let deadline = tokio::time::Instant::now() + timeout;
        while stats.traces.queued.load(Ordering::Relaxed)
            + stats.logs.queued.load(Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in tasks {
            t.abort();
        }
    }
}
