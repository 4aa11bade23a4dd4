//! Spans from the kernel's records: a trace per pipeline process, its root span covering the
//! process's life, a child span per codec stream covering the stream's life, and sampled or
//! slow frames as children of their stream.
//!
//! A stream's span is exported when it ends, with its totals; what happened on the way
//! (failed calls, changed parameters, packet loss on the input feeding it) becomes span
//! events, stamped with the collection that saw it.

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use observer_common::{
    frame::{FRAME_KEY, FRAME_SAMPLED, FRAME_SLOW, FrameSpan},
    stream::Direction,
};

use super::Queue;
use crate::{
    ffmpeg,
    io::{IoRecord, IoRegistry},
    metrics::{call_name, direction_name, media_name},
    procfs, redact,
    streams::{self, Record, Registry, StreamId},
    tracker::Tracker,
};

/// Span events kept per stream span; more are counted as dropped.
const MAX_EVENTS: usize = 128;

/// How long a gone process's trace id is remembered, for frame spans and log messages the
/// daemon reads after it saw the exit.
const PROCESS_LINGER: Duration = Duration::from_secs(30);

struct ProcessSpan {
    trace_id: TraceId,
    span_id: SpanId,
    start: SystemTime,
    pid: u32,
    name: String,
    command_line: Option<String>,
    container_id: Option<String>,
    streams: u64,
    /// Streams of it whose span is still open.
    open_streams: usize,
    ended: Option<std::time::Instant>,
}

/// Loss seen on the io that feeds or takes a stream.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Loss {
    rtp_lost: u64,
    continuity_errors: u64,
    kernel_drops: u64,
    corrupt_packets: u64,
    tcp_retransmits: u64,
}

impl Loss {
    fn of(io: &IoRecord) -> Self {
        Loss {
            rtp_lost: io.rtp_lost,
            continuity_errors: io.io.ts_cc_errors,
            kernel_drops: io.kernel_drops(),
            corrupt_packets: io.io.corrupt_packets,
            tcp_retransmits: io.io.tcp_retransmits,
        }
    }

    fn attributes(&self, prefix: &str, base: &Loss) -> Vec<KeyValue> {
        [
            ("rtp_lost", self.rtp_lost, base.rtp_lost),
            (
                "continuity_errors",
                self.continuity_errors,
                base.continuity_errors,
            ),
            ("kernel_drops", self.kernel_drops, base.kernel_drops),
            (
                "corrupt_packets",
                self.corrupt_packets,
                base.corrupt_packets,
            ),
            (
                "tcp_retransmits",
                self.tcp_retransmits,
                base.tcp_retransmits,
            ),
        ]
        .into_iter()
        .filter(|(_, now, then)| now > then)
        .map(|(k, now, then)| KeyValue::new(format!("{prefix}{k}"), (now - then) as i64))
        .collect()
    }
}

struct StreamSpan {
    span_id: SpanId,
    shape: (u32, u32, i32),
    errors: HashMap<(u32, i32), u64>,
    loss: Loss,
    events: Vec<Event>,
    dropped_events: u32,
    done: bool,
}

impl StreamSpan {
    fn event(&mut self, name: &'static str, at: SystemTime, attrs: Vec<KeyValue>) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(Event::new(name, at, attrs, 0));
        } else {
            self.dropped_events += 1;
        }
    }
}

pub struct Traces {
    /// Spans of processes and streams.
    queue: Queue<SpanData>,
    /// Frame spans: apart, so they never crowd out the spans above.
    frames: Queue<SpanData>,
    scope: InstrumentationScope,
    clock_offset_ns: i128,
    /// From the boot id: ids differ across nodes and boots, agree across daemon restarts.
    seed: u64,
    processes: HashMap<u32, ProcessSpan>,
    streams: HashMap<StreamId, StreamSpan>,
    frame_ids: u64,
    /// This node's pods, on Kubernetes: their identity goes on the spans of their containers.
    pods: Option<crate::kubernetes::PodIndex>,
}

/// splitmix64's finalizer: a cheap, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn nonzero(v: u64) -> u64 {
    if v == 0 { 1 } else { v }
}

fn boot_seed() -> u64 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    id.bytes().fold(0u64, |h, b| mix(h ^ b as u64))
}

impl Traces {
    pub fn new(queue: Queue<SpanData>, frames: Queue<SpanData>) -> Self {
        let seed = boot_seed();
        Traces {
            queue,
            frames,
            scope: InstrumentationScope::builder("observer")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            clock_offset_ns: streams::clock_offset_ns(),
            seed,
            processes: HashMap::new(),
            streams: HashMap::new(),
            frame_ids: mix(seed ^ streams::clock_offset_ns() as u64),
            pods: None,
        }
    }

    pub fn set_pods(&mut self, pods: Option<crate::kubernetes::PodIndex>) {
        self.pods = pods;
    }

    /// OpenTelemetry's `k8s.*` resource attributes of a container, when a pod of this node
    /// lists it.
    fn k8s(&self, container: Option<&str>) -> Vec<KeyValue> {
        let (Some(pods), Some(c)) = (&self.pods, container) else {
            return Vec::new();
        };
        let Some(pc) = pods.container(c) else {
            return Vec::new();
        };
        let workload = match pc.workload_kind.as_str() {
            "Deployment" => Some("k8s.deployment.name"),
            "StatefulSet" => Some("k8s.statefulset.name"),
            "DaemonSet" => Some("k8s.daemonset.name"),
            "ReplicaSet" => Some("k8s.replicaset.name"),
            "Job" => Some("k8s.job.name"),
            "CronJob" => Some("k8s.cronjob.name"),
            _ => None,
        };
        let mut v = vec![
            KeyValue::new("k8s.namespace.name", pc.namespace),
            KeyValue::new("k8s.pod.name", pc.pod),
            KeyValue::new("k8s.container.name", pc.container),
            KeyValue::new("k8s.node.name", pods.node.clone()),
        ];
        if let Some(k) = workload {
            v.push(KeyValue::new(k, pc.workload_name));
        }
        v
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = (ktime_ns as i128 - self.clock_offset_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    fn stream_span_id(&self, tgid: u32, ctx: u64, opened_ns: u64) -> SpanId {
        let h = mix(self.seed ^ mix(tgid as u64 ^ mix(ctx ^ mix(opened_ns))));
        SpanId::from(nonzero(h))
    }

    /// The process's trace: known, or made from its start time (from the tracker, which read
    /// it while the process ran, or from /proc now).
    fn process(&mut self, pid: u32, tracker: &Tracker, first_ns: u64) -> &mut ProcessSpan {
        let seed = self.seed;
        let offset = self.clock_offset_ns;
        self.processes.entry(pid).or_insert_with(|| {
            let known = tracker.process(pid);
            let start_ns = known
                .and_then(|p| p.start_ns)
                .or_else(|| procfs::stat(pid).map(|s| s.start_ns))
                .unwrap_or(first_ns);
            let hi = mix(seed ^ mix(pid as u64));
            let lo = mix(hi ^ mix(start_ns));
            let wall = (start_ns as i128 - offset).max(0) as u64;
            ProcessSpan {
                trace_id: TraceId::from(((hi as u128) << 64) | nonzero(lo) as u128),
                span_id: SpanId::from(nonzero(mix(lo ^ 0x5eed))),
                start: UNIX_EPOCH + Duration::from_nanos(wall),
                pid,
                name: tracker.process_name(pid).unwrap_or_default(),
                command_line: known
                    .and_then(|p| p.command_line.clone())
                    .or_else(|| procfs::cmdline(pid).map(|c| redact::redact_text(&c))),
                container_id: tracker.container_id(pid),
                streams: 0,
                open_streams: 0,
                ended: None,
            }
        })
    }

    /// The trace and span a stream's log messages belong to.
    pub fn context(
        &mut self,
        pid: u32,
        tracker: &Tracker,
        ctx: u64,
        opened_ns: u64,
    ) -> (TraceId, SpanId) {
        let trace = self.process(pid, tracker, opened_ns).trace_id;
        (trace, self.stream_span_id(pid, ctx, opened_ns))
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        trace_id: TraceId,
        span_id: SpanId,
        parent: SpanId,
        name: impl Into<Cow<'static, str>>,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        events: Vec<Event>,
        dropped_events: u32,
        status: Status,
    ) -> SpanData {
        let mut ev = SpanEvents::default();
        ev.events = events;
        ev.dropped_count = dropped_events;
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: ev,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// One sampled or slow frame, as a child of its stream's span.
    pub fn frame(&mut self, f: &FrameSpan, tracker: &Tracker) {
        let trace_id = self.process(f.tgid, tracker, f.opened_ns).trace_id;
        let parent = self.stream_span_id(f.tgid, f.ctx, f.opened_ns);
        self.frame_ids = self.frame_ids.wrapping_add(1);
        let span_id = SpanId::from(nonzero(mix(self.frame_ids)));
        let name = match Direction::from_u32(f.direction) {
            Direction::Decode => "decode frame",
            Direction::Encode => "encode frame",
            Direction::Filter => "filter frame",
            Direction::Unknown => "frame",
        };
        let mut attrs = vec![
            KeyValue::new("media.stream", streams::label(f.tgid, f.opened_ns)),
            KeyValue::new("media.frame.key", f.flags & FRAME_KEY != 0),
            KeyValue::new("media.frame.sampled", f.flags & FRAME_SAMPLED != 0),
            KeyValue::new("media.frame.slow", f.flags & FRAME_SLOW != 0),
        ];
        if f.pts != observer_common::stream::NOPTS {
            attrs.push(KeyValue::new("media.frame.pts", f.pts));
        }
        if f.size > 0 {
            attrs.push(KeyValue::new("media.packet.size", f.size as i64));
        }
        let span = self.span(
            trace_id,
            span_id,
            parent,
            name,
            self.wall(f.start_ns),
            self.wall(f.end_ns),
            attrs,
            Vec::new(),
            0,
            Status::Unset,
        );
        self.frames.push(span);
    }

    /// After each collection: opens spans for new streams, records what changed as events,
    /// exports the spans of streams that ended and of processes that are gone.
    pub fn observe(&mut self, registry: &Registry, ios: &IoRegistry, tracker: &Tracker) {
        let now = SystemTime::now();
        for (id, r) in registry.all() {
            if !self.streams.contains_key(id) {
                let span_id = self.stream_span_id(id.0, id.1, id.2);
                let p = self.process(r.pid(), tracker, id.2);
                p.streams += 1;
                p.open_streams += 1;
                let loss = io_of(ios, r).map(Loss::of).unwrap_or_default();
                self.streams.insert(
                    *id,
                    StreamSpan {
                        span_id,
                        shape: shape(r),
                        errors: HashMap::new(),
                        loss,
                        events: Vec::new(),
                        dropped_events: 0,
                        done: false,
                    },
                );
            }
            let Some(st) = self.streams.get_mut(id) else {
                continue;
            };
            if st.done {
                continue;
            }
            changes(st, r, ios, now);
            if r.ended.is_some() {
                st.done = true;
                let end = if r.stream.closed_ns != 0 {
                    self.wall(r.stream.closed_ns)
                } else {
                    now
                };
                self.end_stream(*id, r, ios, end, false);
            }
        }
        // Spans of streams the registry forgot (after their grace period) are no longer
        // needed to tell new from known.
        self.streams
            .retain(|id, s| !s.done || registry.get(id).is_some());
        self.end_gone_processes(now);
    }

    fn end_stream(
        &mut self,
        id: StreamId,
        r: &Record,
        ios: &IoRegistry,
        end: SystemTime,
        unfinished: bool,
    ) {
        let Some(p) = self.processes.get_mut(&id.0) else {
            return;
        };
        p.open_streams = p.open_streams.saturating_sub(1);
        let trace_id = p.trace_id;
        let parent = p.span_id;
        let pid = p.pid;
        let pname = p.name.clone();
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        let span_id = st.span_id;
        let events = std::mem::take(&mut st.events);
        let dropped = st.dropped_events;
        let mut attrs = stream_attributes(r, ios);
        attrs.push(KeyValue::new("process.pid", pid as i64));
        attrs.push(KeyValue::new("process.executable.name", pname));
        if let Some(c) = &r.container_id {
            attrs.push(KeyValue::new("container.id", c.clone()));
        }
        attrs.extend(self.k8s(r.container_id.as_deref()));
        if r.direction() == Direction::Filter {
            attrs.push(KeyValue::new("media.frames_in", r.stream.in_count as i64));
            attrs.push(KeyValue::new("media.frames_out", r.stream.out_count as i64));
        } else {
            let (frames, packets, bytes) = r.totals();
            attrs.push(KeyValue::new("media.frames", frames as i64));
            attrs.push(KeyValue::new("media.packets", packets as i64));
            attrs.push(KeyValue::new("media.packet_bytes", bytes as i64));
            attrs.push(KeyValue::new("media.keyframes", r.stream.keyframes as i64));
        }
        let errors = r.errors();
        attrs.push(KeyValue::new("media.errors", errors as i64));
        if let Some(io) = io_of(ios, r) {
            attrs.extend(Loss::of(io).attributes("media.io.", &Loss::default()));
        }
        if unfinished {
            attrs.push(KeyValue::new("media.unfinished", true));
        }
        let status = if errors > 0 {
            Status::error(format!("{errors} failed codec calls"))
        } else {
            Status::Unset
        };
        let name = match r.direction() {
            Direction::Filter => "filter graph".to_string(),
            d => format!("{} {}", direction_name(d), r.codec()),
        };
        let span = self.span(
            trace_id,
            span_id,
            parent,
            name,
            self.wall(r.stream.opened_ns),
            end,
            attrs,
            events,
            dropped,
            status,
        );
        self.queue.push(span);
    }

    /// Root spans of processes that have no open stream and no longer run.
    fn end_gone_processes(&mut self, now: SystemTime) {
        let mut done = Vec::new();
        for (pid, p) in &self.processes {
            if p.ended.is_none() && p.open_streams == 0 && !running(*pid, p.start, self) {
                done.push(*pid);
            }
        }
        for pid in done {
            self.end_process(pid, now, false);
        }
        let linger = std::time::Instant::now();
        self.processes.retain(|_, p| {
            p.ended
                .is_none_or(|t| linger.duration_since(t) < PROCESS_LINGER)
        });
    }

    fn end_process(&mut self, pid: u32, end: SystemTime, unfinished: bool) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        p.ended = Some(std::time::Instant::now());
        let mut attrs = vec![
            KeyValue::new("process.pid", p.pid as i64),
            KeyValue::new("process.executable.name", p.name.clone()),
            KeyValue::new("media.streams", p.streams as i64),
        ];
        if let Some(c) = &p.command_line {
            attrs.push(KeyValue::new("process.command_line", c.clone()));
        }
        if let Some(c) = &p.container_id {
            attrs.push(KeyValue::new("container.id", c.clone()));
        }
        let container = p.container_id.clone();
        if unfinished {
            attrs.push(KeyValue::new("media.unfinished", true));
        }
        let (trace_id, span_id, start, name) = (
            p.trace_id,
            p.span_id,
            p.start,
            format!("pipeline {}", p.name),
        );
        attrs.extend(self.k8s(container.as_deref()));
        let span = self.span(
            trace_id,
            span_id,
            SpanId::INVALID,
            name,
            start,
            end,
            attrs,
            Vec::new(),
            0,
            Status::Unset,
        );
        self.queue.push(span);
    }

    /// At shutdown: every open span ends now, marked `media.unfinished`.
    pub fn close_all(mut self, registry: &Registry, ios: &IoRegistry) {
        let now = SystemTime::now();
        let open: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.done)
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            if let Some(r) = registry.get(&id) {
                self.end_stream(id, r, ios, now, true);
            }
        }
        let pids: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.ended.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            self.end_process(pid, now, true);
        }
    }
}

/// Whether the process that started at `start` still runs (a reused pid does not count).
fn running(pid: u32, start: SystemTime, t: &Traces) -> bool {
    match procfs::stat(pid) {
        Some(st) if !st.zombie => t.wall(st.start_ns) <= start + Duration::from_millis(50),
        _ => false,
    }
}

fn io_of<'a>(ios: &'a IoRegistry, r: &Record) -> Option<&'a IoRecord> {
    (r.stream.io != 0)
        .then(|| ios.get(r.pid(), r.stream.io))
        .flatten()
}

fn shape(r: &Record) -> (u32, u32, i32) {
    (r.stream.width, r.stream.height, r.stream.format)
}

/// Span events for what changed since the last collection.
fn changes(st: &mut StreamSpan, r: &Record, ios: &IoRegistry, now: SystemTime) {
    let sh = shape(r);
    if sh != st.shape {
        let (w, h, f) = st.shape;
        let mut attrs = Vec::new();
        if (w, h) != (sh.0, sh.1) {
            attrs.push(KeyValue::new("media.previous.width", w as i64));
            attrs.push(KeyValue::new("media.previous.height", h as i64));
            attrs.push(KeyValue::new("media.width", sh.0 as i64));
            attrs.push(KeyValue::new("media.height", sh.1 as i64));
        }
        if f != sh.2 {
            attrs.push(KeyValue::new("media.previous.format", f as i64));
            attrs.push(KeyValue::new("media.format", sh.2 as i64));
        }
        st.shape = sh;
        st.event("parameters changed", now, attrs);
    }
    for e in r
        .stream
        .errors
        .iter()
        .filter(|e| e.code != 0 && e.count > 0)
    {
        let seen = st.errors.entry((e.call, e.code)).or_insert(0);
        if e.count > *seen {
            let n = e.count - *seen;
            *seen = e.count;
            st.event(
                "codec error",
                now,
                vec![
                    KeyValue::new("media.call", call_name(e.call)),
                    KeyValue::new("error.type", ffmpeg::error_name(e.code)),
                    KeyValue::new("media.errors", n as i64),
                ],
            );
        }
    }
    if let Some(io) = io_of(ios, r) {
        let loss = Loss::of(io);
        if loss != st.loss {
            let attrs = loss.attributes("media.io.", &st.loss);
            st.loss = loss;
            if !attrs.is_empty() {
                st.event("packet loss", now, attrs);
            }
        }
    }
}

/// What a stream is, as span attributes.
fn stream_attributes(r: &Record, ios: &IoRegistry) -> Vec<KeyValue> {
    let s = &r.stream;
    let mut a = vec![
        KeyValue::new("media.stream", r.label.clone()),
        KeyValue::new("media.direction", direction_name(r.direction())),
        KeyValue::new("media.codec", r.codec()),
        KeyValue::new("media.type", media_name(s.media)),
        KeyValue::new(
            "media.hwaccel",
            ffmpeg::hwaccel(&r.codec(), s.hw_device_type),
        ),
        KeyValue::new("media.libavcodec", r.lavc_major as i64),
    ];
    if s.media == 1 {
        a.push(KeyValue::new("media.sample_rate", s.sample_rate as i64));
        a.push(KeyValue::new("media.channels", s.channels as i64));
        if let Some(f) = ffmpeg::sample_format_name(s.format) {
            a.push(KeyValue::new("media.sample_format", f));
        }
    } else if s.width > 0 {
        a.push(KeyValue::new("media.width", s.width as i64));
        a.push(KeyValue::new("media.height", s.height as i64));
        if let Some(f) = ffmpeg::pixel_format_name(r.lavc_major, s.format) {
            a.push(KeyValue::new("media.pixel_format", f));
        }
    }
    if s.bit_rate > 0 {
        a.push(KeyValue::new("media.bit_rate", s.bit_rate));
    }
    if let Some(io) = io_of(ios, r) {
        a.push(KeyValue::new("media.io", io.label.clone()));
        a.push(KeyValue::new("media.io.direction", io.direction()));
        a.push(KeyValue::new("url.full", io.url.clone()));
        a.push(KeyValue::new("url.scheme", io.protocol.clone()));
    }
    a
}
