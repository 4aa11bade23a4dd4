//! `/metrics`: built at scrape time from the stream registry, so a scrape costs one pass over
//! the streams and nothing between scrapes.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use indexmap::IndexMap;

use observer_common::stream::{Call, Direction, HIST_BUCKETS, Histogram};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use crate::{ffmpeg, state::Shared, streams::Record, tracker::Skip};

/// Exported bucket ranges, as kernel log2 bucket indexes `lo..=hi`: bucket `i` ends at
/// `2^(i+1)` ns. Frame latency: 16 µs to 8.6 s; call duration: 1 µs to 0.54 s. The kernel keeps
/// the full range; these bound the exposition's size (20 buckets a series).
const LATENCY_BUCKETS: (usize, usize) = (13, 32);
const CALL_BUCKETS: (usize, usize) = (9, 28);

pub fn call_name(call: u32) -> &'static str {
    match Call::from_u32(call) {
        Some(Call::SendPacket) => "avcodec_send_packet",
        Some(Call::ReceiveFrame) => "avcodec_receive_frame",
        Some(Call::SendFrame) => "avcodec_send_frame",
        Some(Call::ReceivePacket) => "avcodec_receive_packet",
        Some(Call::DecodeSubtitle) => "avcodec_decode_subtitle2",
        Some(Call::EncodeSubtitle) => "avcodec_encode_subtitle",
        Some(Call::EncodeLegacy) => "avcodec_encode_video2",
        Some(Call::BuffersrcAddFrame) => "av_buffersrc_add_frame_flags",
        Some(Call::BuffersinkGetFrame) => "av_buffersink_get_frame_flags",
        None => "unknown",
    }
}

pub fn media_name(media: i32) -> &'static str {
    match media {
        0 => "video",
        1 => "audio",
        3 => "subtitle",
        4 => "attachment",
        _ => "data",
    }
}

pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Decode => "decode",
        Direction::Encode => "encode",
        Direction::Filter => "filter",
        Direction::Unknown => "unknown",
    }
}

fn label(name: &str, value: impl Into<String>) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.into());
    l
}

/// Series of one family, by their labels, in the order they were first added (a stream's
/// series stay together).
type Series = IndexMap<LabelSet, Value, foldhash::fast::FixedState>;

/// A series' labels as the text format writes them, `a="x",b="y"`, values escaped. A
/// stream's labels are rendered once and extended per series, so a scrape escapes each value
/// once, not once per line, and a series' key is one string: per-label allocations,
/// reference counts and escaping were most of a scrape at 1,000 streams (BENCHMARKS.md,
/// "Scale"). Equal label sets are equal strings: the same code pushes the same names in the
/// same order.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
struct LabelSet(String);

impl LabelSet {
    fn push(&mut self, name: &str, value: impl AsRef<str>) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(name);
        self.0.push_str("=\"");
        escape(&mut self.0, value.as_ref(), true);
        self.0.push('"');
    }

    /// The pairs back, unescaped, for the protobuf model (OTLP and the encoder test).
    fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        let mut rest = self.0.as_str();
        while let Some((name, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => {}
                    },
                    c => value.push(c),
                }
            }
            pairs.push((name.to_string(), value));
            rest = after[end..].strip_prefix(',').unwrap_or("");
        }
        pairs
    }
}

/// A label set from literal pairs.
fn set(pairs: &[(&str, &str)]) -> LabelSet {
    let mut l = LabelSet::default();
    for (k, v) in pairs {
        l.push(k, v);
    }
    l
}

/// Families under construction, keyed by name; series with equal labels are summed (the
/// aggregation mode drops the per-stream labels and folds streams together).
#[derive(Default)]
struct Families {
    /// name -> (type, help, series)
    map: BTreeMap<&'static str, (MetricType, &'static str, Series)>,
    /// Room a family gets at first use: the streams exported, so the per-stream families
    /// are not rehashed ten times as they fill.
    room: usize,
}

enum Value {
    Scalar(f64),
    Hist {
        buckets: Vec<u64>,
        sum: f64,
        lo: usize,
        hi: usize,
        scale: f64,
    },
}

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        kind: MetricType,
        help: &'static str,
        labels: &LabelSet,
        v: f64,
    ) {
        match self
            .series(name, kind, help, labels)
            .or_insert(Value::Scalar(0.0))
        {
            Value::Scalar(x) => {
                if matches!(kind, MetricType::GAUGE) {
                    *x = x.max(v);
                } else {
                    *x += v;
                }
            }
            Value::Hist { .. } => {}
        }
    }

    /// The entry of one series, creating its family on first use.
    fn series(
        &mut self,
        name: &'static str,
        kind: MetricType,
        help: &'static str,
        labels: &LabelSet,
    ) -> indexmap::map::Entry<'_, LabelSet, Value> {
        self.map
            .entry(name)
            .or_insert_with(|| {
                (
                    kind,
                    help,
                    Series::with_capacity_and_hasher(self.room, Default::default()),
                )
            })
            .2
            .entry(labels.clone())
    }

    /// Room for `n` more series in a declared family.
    fn reserve(&mut self, name: &'static str, n: usize) {
        if let Some((_, _, series)) = self.map.get_mut(name) {
            series.reserve(n);
        }
    }

    fn declare(&mut self, name: &'static str, kind: MetricType, help: &'static str) {
        self.map
            .entry(name)
            .or_insert_with(|| (kind, help, Series::default()));
    }

    fn hist(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &LabelSet,
        h: &Histogram,
        range: (usize, usize),
    ) {
        self.hist_scaled(name, help, labels, h, range, 1e9);
    }

    /// A histogram whose kernel values are divided by `scale` for the exposition (1e9 turns
    /// nanoseconds into seconds; 1 keeps bytes).
    fn hist_scaled(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &LabelSet,
        h: &Histogram,
        (lo, hi): (usize, usize),
        scale: f64,
    ) {
        let v = self
            .series(name, MetricType::HISTOGRAM, help, labels)
            .or_insert_with(|| Value::Hist {
                buckets: vec![0; HIST_BUCKETS],
                sum: 0.0,
                lo,
                hi,
                scale,
            });
        if let Value::Hist { buckets, sum, .. } = v {
            for (b, n) in buckets.iter_mut().zip(h.buckets.iter()) {
                *b += n;
            }
            *sum += h.sum_ns as f64 / scale;
        }
    }

    /// Writes the text exposition in pieces of about `chunk` bytes, handing each to `send`,
    /// so the first bytes leave while the rest is written and no scrape holds the whole text
    /// (14 MB at 1,000 streams); stops when `send` returns false (the scraper went away).
    fn write_text(&self, chunk: usize, send: &mut dyn FnMut(String) -> bool) {
        let mut out = String::with_capacity(chunk + chunk / 4);
        let mut number = itoa::Buffer::new();
        for (name, (kind, help, series)) in &self.map {
            if series.is_empty() {
                continue;
            }
            if !help.is_empty() {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push(' ');
                escape(&mut out, help, false);
                out.push('\n');
            }
            let kind = match kind {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            // Bucket bounds as text, shared by a family's series.
            let mut bounds: (usize, usize, f64, Vec<String>) = (0, 0, 0.0, Vec::new());
            for (labels, v) in series {
                let set = labels.0.as_str();
                match v {
                    Value::Scalar(x) => sample(&mut out, &mut number, name, "", set, None, *x),
                    Value::Hist {
                        buckets,
                        sum,
                        lo,
                        hi,
                        scale,
                    } => {
                        if (bounds.0, bounds.1, bounds.2) != (*lo, *hi, *scale) {
                            bounds = (
                                *lo,
                                *hi,
                                *scale,
                                (*lo..=*hi)
                                    .map(|i| ((1u64 << (i + 1)) as f64 / scale).to_string())
                                    .collect(),
                            );
                        }
                        let total: u64 = buckets.iter().sum();
                        let mut line = |suffix, le, v| {
                            sample(&mut out, &mut number, name, suffix, set, le, v);
                        };
                        for (j, _, cum) in cumulative(buckets, *lo, *hi, *scale) {
                            if let Some(le) = bounds.3.get(j) {
                                line("_bucket", Some(le), cum as f64);
                            }
                        }
                        line("_bucket", Some("+Inf"), total as f64);
                        line("_sum", None, *sum);
                        line("_count", None, total as f64);
                    }
                }
                if out.len() >= chunk
                    && !send(std::mem::replace(
                        &mut out,
                        String::with_capacity(chunk + chunk / 4),
                    ))
                {
                    return;
                }
            }
        }
        if !out.is_empty() {
            send(out);
        }
    }

    fn finish(self) -> Vec<MetricFamily> {
        self.map
            .into_iter()
            // The text encoder refuses a family without series.
            .filter(|(_, (_, _, series))| !series.is_empty())
            .map(|(name, (kind, help, series))| {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(kind);
                for (labels, v) in series {
                    let mut m = proto::Metric::default();
                    m.set_label(
                        labels
                            .pairs()
                            .into_iter()
                            .map(|(k, v)| label(&k, v))
                            .collect(),
                    );
                    match (kind, v) {
                        (MetricType::COUNTER, Value::Scalar(x)) => {
                            let mut c = proto::Counter::default();
                            c.set_value(x);
                            m.set_counter(c);
                        }
                        (_, Value::Scalar(x)) => {
                            let mut g = proto::Gauge::default();
                            g.set_value(x);
                            m.set_gauge(g);
                        }
                        (
                            _,
                            Value::Hist {
                                buckets,
                                sum,
                                lo,
                                hi,
                                scale,
                            },
                        ) => {
                            let mut h = proto::Histogram::default();
                            let total: u64 = buckets.iter().sum();
                            h.set_bucket(
                                cumulative(&buckets, lo, hi, scale)
                                    .map(|(_, bound, cum)| {
                                        let mut b = proto::Bucket::default();
                                        b.set_upper_bound(bound);
                                        b.set_cumulative_count(cum);
                                        b
                                    })
                                    .collect(),
                            );
                            h.set_sample_count(total);
                            h.set_sample_sum(sum);
                            m.set_histogram(h);
                        }
                    }
                    f.mut_metric().push(m);
                }
                f
            })
            .collect()
    }
}

/// A histogram's exported buckets, kernel buckets `lo..=hi`: (index from `lo`, upper bound
/// in exported units, cumulative count, which includes every bucket below `lo`).
fn cumulative(
    buckets: &[u64],
    lo: usize,
    hi: usize,
    scale: f64,
) -> impl Iterator<Item = (usize, f64, u64)> + '_ {
    buckets
        .iter()
        .take(hi + 1)
        .scan(0u64, |cum, n| {
            *cum += n;
            Some(*cum)
        })
        .enumerate()
        .skip(lo)
        .map(move |(i, cum)| (i - lo, (1u64 << (i + 1)) as f64 / scale, cum))
}

/// One exposition line, as the text format (and the prometheus crate) writes it; `set` is
/// the series' rendered labels.
fn sample(
    out: &mut String,
    number: &mut itoa::Buffer,
    name: &str,
    suffix: &str,
    set: &str,
    le: Option<&str>,
    v: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !set.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(set);
        if let Some(le) = le {
            out.push_str(if set.is_empty() { "le=\"" } else { ",le=\"" });
            out.push_str(le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    // Counts are whole numbers: printed as integers, the same digits as f64's Display, which
    // costs several times more.
    if v.is_sign_positive() && v.fract() == 0.0 && v < 1e15 {
        out.push_str(number.format(v as u64));
        out.push('\n');
    } else {
        let _ = writeln!(out, "{v}");
    }
}

/// Backslash and newline escaped (and double quotes, in label values).
fn escape(out: &mut String, v: &str, quotes: bool) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quotes && b == b'"');
    // Most label values are short, where a plain scan beats memchr's dispatch; log templates
    // are long, where memchr's vector search wins. Both showed in a scrape's profile.
    let found = if v.len() < 24 {
        v.bytes().any(special)
    } else if quotes {
        memchr::memchr3(b'\\', b'\n', b'"', v.as_bytes()).is_some()
    } else {
        memchr::memchr2(b'\\', b'\n', v.as_bytes()).is_some()
    };
    if !found {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        if c.is_ascii() && special(c as u8) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

const STREAM_HELP: &str = "1 while the stream is open, 0 in the grace period after it ended";

fn stream_families(
    f: &mut Families,
    records: &[&Record],
    aggregate: bool,
    ios: &crate::io::IoRegistry,
    pods: Option<&crate::kubernetes::PodIndex>,
) {
    for kind in [
        (
            "media_frames_total",
            MetricType::COUNTER,
            "Frames returned by a decoder or accepted by an encoder",
        ),
        (
            "media_packets_total",
            MetricType::COUNTER,
            "Packets accepted by a decoder or returned by an encoder; flush calls are not packets",
        ),
        (
            "media_packet_bytes_total",
            MetricType::COUNTER,
            "Payload bytes of the packets in media_packets_total",
        ),
        (
            "media_keyframes_total",
            MetricType::COUNTER,
            "Key frames returned by a decoder, key packets returned by an encoder",
        ),
    ] {
        f.declare(kind.0, kind.1, kind.2);
    }
    for r in records {
        let s = &r.stream;
        let dir = r.direction();
        let mut labels = LabelSet::default();
        if !aggregate {
            labels.push("stream", r.label.as_str());
            labels.push("pid", r.pid().to_string());
        }
        labels.push("process", r.process.as_str());
        if let Some(c) = &r.container_id {
            labels.push("container_id", c.as_str());
            if let Some(k) = pods.and_then(|p| p.container(c).map(|k| (k, &p.node))) {
                let (pc, node) = k;
                labels.push("k8s_namespace_name", pc.namespace);
                labels.push("k8s_pod_name", pc.pod);
                labels.push("k8s_container_name", pc.container);
                labels.push("k8s_node_name", node.as_str());
                labels.push("k8s_workload_kind", pc.workload_kind);
                labels.push("k8s_workload_name", pc.workload_name);
            }
        }
        if dir == Direction::Filter {
            filter_families(f, r, labels);
            continue;
        }
        labels.push("direction", direction_name(dir));
        labels.push("media", media_name(s.media));
        labels.push("codec", r.codec());
        let (frames, packets, bytes) = r.totals();
        f.add(
            "media_frames_total",
            MetricType::COUNTER,
            "",
            &labels,
            frames as f64,
        );
        f.add(
            "media_packets_total",
            MetricType::COUNTER,
            "",
            &labels,
            packets as f64,
        );
        f.add(
            "media_packet_bytes_total",
            MetricType::COUNTER,
            "",
            &labels,
            bytes as f64,
        );
        f.add(
            "media_keyframes_total",
            MetricType::COUNTER,
            "",
            &labels,
            s.keyframes as f64,
        );
        f.add(
            "media_frame_latency_unmatched_total",
            MetricType::COUNTER,
            "Outputs whose pts matched no input in flight, so they have no latency sample",
            &labels,
            s.latency_unmatched as f64,
        );
        f.hist(
            "media_frame_latency_seconds",
            "Decode: packet submitted to frame with that pts returned. Encode: frame submitted to packet with that pts returned",
            &labels,
            &s.latency,
            LATENCY_BUCKETS,
        );
        call_histograms(
            f,
            "media_codec_call_duration_seconds",
            "Time spent inside each libavcodec API call",
            &labels,
            s,
        );
        f.declare(
            "media_codec_errors_total",
            MetricType::COUNTER,
            "API calls that failed with anything but EAGAIN or EOF, by call and AVERROR name",
        );
        for e in s.errors.iter().filter(|e| e.code != 0 && e.count > 0) {
            let mut l = labels.clone();
            l.push("call", call_name(e.call));
            l.push("error", ffmpeg::error_name(e.code));
            f.add(
                "media_codec_errors_total",
                MetricType::COUNTER,
                "",
                &l,
                e.count as f64,
            );
        }
        f.add(
            "media_stream_up",
            MetricType::GAUGE,
            STREAM_HELP,
            &labels,
            if r.ended.is_none() { 1.0 } else { 0.0 },
        );
        let [num, den] = s.frame_rate;
        if !aggregate && num > 0 && den > 0 {
            f.add(
                "media_stream_nominal_frame_rate",
                MetricType::GAUGE,
                "The codec context's framerate at open: an encoder's output rate, a decoder's where its caller set one (frames per second)",
                &labels,
                num as f64 / den as f64,
            );
        }
        if !aggregate && s.bit_rate > 0 {
            f.add(
                "media_stream_bitrate_target_bits_per_second",
                MetricType::GAUGE,
                "The codec context's bit_rate at open: an encoder's configured target, a decoder's declared rate",
                &labels,
                s.bit_rate as f64,
            );
        }
        if !aggregate {
            f.add(
                "media_stream_last_activity_timestamp_seconds",
                MetricType::GAUGE,
                "Wall-clock time of the stream's last packet or frame",
                &labels,
                r.last_activity,
            );
            let mut l = labels.clone();
            if s.media == 1 {
                l.push("sample_rate", s.sample_rate.to_string());
                l.push("channels", s.channels.to_string());
                l.push(
                    "sample_format",
                    ffmpeg::sample_format_name(s.format)
                        .map_or_else(|| format!("id:{}", s.format), Into::into),
                );
            } else {
                l.push("width", s.width.to_string());
                l.push("height", s.height.to_string());
                l.push(
                    "pixel_format",
                    ffmpeg::pixel_format_name(r.lavc_major, s.format)
                        .map_or_else(|| format!("id:{}", s.format), Into::into),
                );
            }
            l.push("libavcodec", r.lavc_major.to_string());
            l.push("hwaccel", ffmpeg::hwaccel(&r.codec(), s.hw_device_type));
            l.push("io", ios.label_of(s.tgid, s.io).unwrap_or_default());
            f.add(
                "media_stream_info",
                MetricType::GAUGE,
                "A stream's parameters, as labels",
                &l,
                1.0,
            );
        }
    }
}

/// The time-in-call histograms of a stream, one series per call it used.
fn call_histograms(
    f: &mut Families,
    name: &'static str,
    help: &'static str,
    labels: &LabelSet,
    s: &observer_common::stream::Stream,
) {
    for (h, call) in s.calls.iter().zip(s.side_call) {
        if h.buckets.iter().all(|&b| b == 0) {
            continue;
        }
        let mut l = labels.clone();
        l.push("call", call_name(call));
        f.hist(name, help, &l, h, CALL_BUCKETS);
    }
}

fn filter_families(f: &mut Families, r: &Record, mut labels: LabelSet) {
    let s = &r.stream;
    labels.push("media", media_name(s.media));
    f.add(
        "media_filter_frames_in_total",
        MetricType::COUNTER,
        "Frames pushed into a filter graph's buffer sources",
        &labels,
        s.in_count as f64,
    );
    f.add(
        "media_filter_frames_out_total",
        MetricType::COUNTER,
        "Frames pulled out of a filter graph's buffer sinks",
        &labels,
        s.out_count as f64,
    );
    f.hist(
        "media_filter_frame_latency_seconds",
        "Time a frame spends in a filter graph: pushed in to pulled out with the same pts",
        &labels,
        &s.latency,
        LATENCY_BUCKETS,
    );
    f.add(
        "media_filter_frame_latency_unmatched_total",
        MetricType::COUNTER,
        "Frames out of a graph whose pts matched no frame in (filters that retime frames)",
        &labels,
        s.latency_unmatched as f64,
    );
    call_histograms(
        f,
        "media_filter_call_duration_seconds",
        "Time spent inside buffer source and sink calls",
        &labels,
        s,
    );
}

/// `media_log_messages_total`: FFmpeg's own messages by level and template, on the stream
/// whose codec context logged them where there is one.
fn log_families(f: &mut Families, shared: &Shared) {
    f.declare(
        "media_log_messages_total",
        MetricType::COUNTER,
        "Messages FFmpeg logged (at any level, printed or not), by level and message template",
    );
    f.reserve("media_log_messages_total", shared.logs.len());
    // A context logs several templates: its labels before `level` are looked up and rendered
    // once per scrape, not once per template.
    let mut contexts: HashMap<(u32, u64), LabelSet, foldhash::fast::FixedState> =
        HashMap::default();
    for r in shared.logs.records() {
        let mut labels = contexts
            .entry((r.key.tgid, r.key.avcl))
            .or_insert_with(|| {
                let mut labels = LabelSet::default();
                if !shared.aggregate {
                    let stream = shared
                        .registry
                        .of_message(
                            r.key.tgid,
                            r.key.avcl,
                            shared.logs.thread_codec(r.key.tgid, r.key.avcl),
                        )
                        .map_or("", |r| r.label.as_str());
                    labels.push("stream", stream);
                    labels.push(
                        "io",
                        shared
                            .ios
                            .label_of_context(r.key.tgid, r.key.avcl)
                            .unwrap_or(""),
                    );
                    labels.push("pid", itoa::Buffer::new().format(r.key.tgid));
                }
                labels
            })
            .clone();
        labels.push("process", r.process.as_str());
        labels.push("level", ffmpeg::log_level_name(r.key.level));
        labels.push("template", r.template.as_str());
        f.add(
            "media_log_messages_total",
            MetricType::COUNTER,
            "",
            &labels,
            r.count as f64,
        );
    }
}

fn daemon_families(f: &mut Families, shared: &Shared) {
    f.add(
        "observer_build_info",
        MetricType::GAUGE,
        "observer's version",
        &set(&[("version", env!("CARGO_PKG_VERSION"))]),
        1.0,
    );
    f.add(
        "observer_ready",
        MetricType::GAUGE,
        "1 once the initial scan has attached",
        &LabelSet::default(),
        if shared.ready { 1.0 } else { 0.0 },
    );
    f.add(
        "observer_attached_files",
        MetricType::GAUGE,
        "FFmpeg files (libraries or executables) with probes attached",
        &LabelSet::default(),
        shared.attached.len() as f64,
    );
    for a in &shared.attached {
        f.add(
            "observer_attached_file_info",
            MetricType::GAUGE,
            "An attached FFmpeg file and the library versions it carries",
            &set(&[("path", a.path.as_str()), ("versions", a.versions.as_str())]),
            1.0,
        );
    }
    f.declare(
        "observer_unsupported_files",
        MetricType::GAUGE,
        "FFmpeg files found but not probed, by reason",
    );
    for (reason, n) in &shared.unsupported {
        f.add(
            "observer_unsupported_files",
            MetricType::GAUGE,
            "",
            &set(&[("reason", *reason)]),
            *n as f64,
        );
    }
    f.declare(
        "observer_inspections_skipped_total",
        MetricType::COUNTER,
        "Files a process maps whose inspection was cut short, by reason; each is inspected again when a process maps it next",
    );
    for skip in [Skip::ProcessExited, Skip::Unreadable] {
        f.add(
            "observer_inspections_skipped_total",
            MetricType::COUNTER,
            "",
            &set(&[("reason", skip.reason())]),
            shared.skipped.get(skip.reason()).copied().unwrap_or(0) as f64,
        );
    }
    use observer_common::stream::counter as c;
    let k = |i| shared.kernel_counters.get(&i).copied().unwrap_or(0) as f64;
    f.add(
        "observer_events_lost_total",
        MetricType::COUNTER,
        "Process events the kernel could not queue (ring buffer full)",
        &LabelSet::default(),
        k(c::EVENTS_LOST),
    );
    f.declare(
        "observer_kernel_map_full_total",
        MetricType::COUNTER,
        "Inserts that failed because a kernel map was full, by map",
    );
    for (map, i) in [
        ("streams", c::STREAMS_FULL),
        ("ended_streams", c::ENDED_FULL),
        ("calls", c::CALLS_FULL),
        ("ios", c::IOS_FULL),
    ] {
        f.add(
            "observer_kernel_map_full_total",
            MetricType::COUNTER,
            "",
            &set(&[("map", map)]),
            k(i),
        );
    }
    f.add(
        "observer_frame_spans_lost_total",
        MetricType::COUNTER,
        "Sampled or slow frames whose span the kernel could not queue (ring buffer full); the frames are still counted",
        &LabelSet::default(),
        k(c::FRAMES_LOST),
    );
    if let Some(o) = &shared.otlp {
        otlp_families(f, o);
    }
    if let Some(w) = &shared.web {
        web_families(f, w);
    }
    f.add(
        "observer_log_keys_dropped_total",
        MetricType::COUNTER,
        "Log messages not counted because the kernel's log map was full",
        &LabelSet::default(),
        k(c::LOGS_FULL),
    );
    f.add(
        "observer_read_failures_total",
        MetricType::COUNTER,
        "Reads of pipeline memory that failed or failed their sanity check",
        &LabelSet::default(),
        k(c::READ_FAILED),
    );
    let st = &shared.registry.stats;
    f.add(
        "observer_streams",
        MetricType::GAUGE,
        "Streams known to the daemon, by state",
        &set(&[("state", "live")]),
        st.live as f64,
    );
    f.add(
        "observer_streams",
        MetricType::GAUGE,
        "",
        &set(&[("state", "ended")]),
        st.ended as f64,
    );
    f.add(
        "observer_streams_over_limit",
        MetricType::GAUGE,
        "Streams not exported because of --max-streams",
        &LabelSet::default(),
        st.over_limit as f64,
    );
    f.add(
        "observer_streams_evicted_total",
        MetricType::COUNTER,
        "Ended streams dropped before their grace period ran out, to stay under --max-streams",
        &LabelSet::default(),
        shared.registry.evicted_total as f64,
    );
    f.add(
        "observer_kernel_map_entries",
        MetricType::GAUGE,
        "Entries in the kernel's stream maps after the last collection",
        &set(&[("map", "streams")]),
        st.kernel_streams as f64,
    );
    f.add(
        "observer_kernel_map_capacity",
        MetricType::GAUGE,
        "Entries a kernel map holds (--kernel-max-streams for the stream maps)",
        &set(&[("map", "streams")]),
        shared.registry.kernel_capacity as f64,
    );
    f.add(
        "observer_kernel_map_evicted_total",
        MetricType::COUNTER,
        "Idle live streams evicted from a kernel map above its high-water mark, so new streams find room; each ends with its counts as last read",
        &set(&[("map", "streams")]),
        shared.registry.kernel_evicted_total as f64,
    );
    let (ios, fds, sockets) = shared.io_map_entries;
    for (map, n) in [("ios", ios), ("fds", fds), ("sockets", sockets)] {
        f.add(
            "observer_kernel_map_entries",
            MetricType::GAUGE,
            "",
            &set(&[("map", map)]),
            n as f64,
        );
    }
    f.add(
        "observer_kernel_info",
        MetricType::GAUGE,
        "The running kernel's release",
        &set(&[("release", shared.kernel_release.as_str())]),
        1.0,
    );
    f.declare(
        "observer_feature_available",
        MetricType::GAUGE,
        "1 where this kernel runs the job, 0 where it cannot (the daemon logs why once); jobs turned off by a flag are left out",
    );
    for (feature, why) in &shared.features {
        f.add(
            "observer_feature_available",
            MetricType::GAUGE,
            "",
            &set(&[("feature", *feature)]),
            if why.is_none() { 1.0 } else { 0.0 },
        );
    }
    f.add(
        "observer_processes_held_total",
        MetricType::COUNTER,
        "Processes stopped when they mapped an executable file not yet inspected, until its probes were in (--hold-new-files)",
        &LabelSet::default(),
        shared.holds as f64,
    );
    f.add(
        "observer_process_held_seconds_total",
        MetricType::COUNTER,
        "Time those processes spent stopped, in all",
        &LabelSet::default(),
        shared.held_seconds,
    );
    f.add(
        "observer_processes",
        MetricType::GAUGE,
        "Processes mapping an attached FFmpeg file",
        &LabelSet::default(),
        shared.processes as f64,
    );
    f.add(
        "observer_collect_duration_seconds",
        MetricType::GAUGE,
        "Duration of the last read of the kernel maps",
        &LabelSet::default(),
        st.duration.as_secs_f64(),
    );
    f.add(
        "observer_process_scans_total",
        MetricType::COUNTER,
        "Reads of a process's mappings",
        &LabelSet::default(),
        shared.scans as f64,
    );
}

/// Byte-size buckets for segment sizes: 1 KiB to 512 MiB (kernel-style log2 buckets of
/// bytes; the exposition divides by 1e9 for seconds, so sizes use their own scale).
const SEGMENT_BYTE_BUCKETS: (usize, usize) = (9, 28);

/// Inputs and outputs: `media_io_*`, labelled `io`/`pid`/`process`/`direction`; the URL only
/// on `media_io_info`.
fn otlp_families(f: &mut Families, stats: &crate::otlp::Stats) {
    use crate::otlp::Signal;
    use std::sync::atomic::Ordering::Relaxed;
    for (name, kind, help) in [
        (
            "observer_otlp_exported_total",
            MetricType::COUNTER,
            "Spans and log records the OTLP collector accepted, by signal",
        ),
        (
            "observer_otlp_dropped_total",
            MetricType::COUNTER,
            "Spans and log records not exported: the queue was full or their export request failed",
        ),
        (
            "observer_otlp_failed_requests_total",
            MetricType::COUNTER,
            "OTLP export requests that failed (refused, unreachable, timed out)",
        ),
        (
            "observer_otlp_queue_length",
            MetricType::GAUGE,
            "Spans and log records waiting for export",
        ),
    ] {
        f.declare(name, kind, help);
        for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
            let st = stats.of(signal);
            let v = match name {
                "observer_otlp_exported_total" => st.exported.load(Relaxed),
                "observer_otlp_dropped_total" => st.dropped.load(Relaxed),
                "observer_otlp_failed_requests_total" => st.failed_requests.load(Relaxed),
                _ => st.queued.load(Relaxed),
            };
            f.add(name, kind, "", &set(&[("signal", signal.name())]), v as f64);
        }
    }
}

/// The web configuration's reloads and what the endpoints refused (`--web-config-file`).
fn web_families(f: &mut Families, w: &crate::web::Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    let none = LabelSet::default();
    f.add(
        "observer_web_config_last_reload_successful",
        MetricType::GAUGE,
        "1 if the web configuration file's current content is in force, 0 if it failed to load (the last good one stays in force)",
        &none,
        w.last_reload_ok.load(Relaxed) as f64,
    );
    f.add(
        "observer_web_config_last_reload_success_timestamp_seconds",
        MetricType::GAUGE,
        "When the web configuration was last loaded successfully",
        &none,
        w.last_success_seconds.load(Relaxed) as f64,
    );
    let name = "observer_web_config_reloads_total";
    f.declare(
        name,
        MetricType::COUNTER,
        "Loads of the web configuration and the files it names, by result",
    );
    for (result, n) in [("success", &w.reloads_ok), ("failure", &w.reloads_failed)] {
        f.add(
            name,
            MetricType::COUNTER,
            "",
            &set(&[("result", result)]),
            n.load(Relaxed) as f64,
        );
    }
    let name = "observer_http_refused_total";
    f.declare(
        name,
        MetricType::COUNTER,
        "Connections and requests the endpoints refused, by reason: tls_handshake (no, an untrusted or an expired client certificate; plain HTTP to a TLS port), client_san (none of client_allowed_sans), unauthorized (basic auth), rate_limited",
    );
    for (reason, n) in [
        ("tls_handshake", &w.refused_handshake),
        ("client_san", &w.refused_san),
        ("unauthorized", &w.refused_unauthorized),
        ("rate_limited", &w.refused_rate_limited),
    ] {
        f.add(
            name,
            MetricType::COUNTER,
            "",
            &set(&[("reason", reason)]),
            n.load(Relaxed) as f64,
        );
    }
}

fn io_families(f: &mut Families, shared: &Shared) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    for (name, kind, help) in [
        (
            "media_io_bytes_total",
            MetricType::COUNTER,
            "Bytes read and written on an input's or output's sockets and files, by op",
        ),
        (
            "media_io_last_activity_timestamp_seconds",
            MetricType::GAUGE,
            "Wall-clock time an input or output last moved a byte or a packet",
        ),
        (
            "media_io_stalled",
            MetricType::GAUGE,
            "1 while an open input or output has moved nothing for --stall-after",
        ),
        (
            "media_io_kernel_drops_total",
            MetricType::COUNTER,
            "Packets the kernel dropped at an input's or output's sockets, by the kernel's drop reason",
        ),
    ] {
        f.declare(name, kind, help);
    }
    for r in shared.ios.records() {
        let io = &r.io;
        let mut labels = LabelSet::default();
        if !shared.aggregate {
            labels.push("io", r.label.as_str());
            labels.push("pid", r.key.tgid.to_string());
        }
        labels.push("process", r.process.as_str());
        labels.push("direction", r.direction());
        if !shared.aggregate {
            let mut l = labels.clone();
            l.push("url", r.url.as_str());
            l.push("protocol", r.protocol.as_str());
            f.add(
                "media_io_info",
                MetricType::GAUGE,
                "An input or output: its URL (credentials and secret parameters redacted) and protocol",
                &l,
                1.0,
            );
            f.add(
                "media_io_last_activity_timestamp_seconds",
                MetricType::GAUGE,
                "",
                &labels,
                r.last_activity,
            );
            f.add(
                "media_io_stalled",
                MetricType::GAUGE,
                "",
                &labels,
                if r.stalled(now, shared.stall_after) {
                    1.0
                } else {
                    0.0
                },
            );
        }
        f.add(
            "media_io_up",
            MetricType::GAUGE,
            "1 while the input or output is open, 0 in the grace period after it closed",
            &labels,
            if r.ended.is_none() { 1.0 } else { 0.0 },
        );
        use observer_common::io::{OP_READ, OP_WRITE};
        for (op, i) in [("read", OP_READ), ("write", OP_WRITE)] {
            let mut l = labels.clone();
            l.push("op", op);
            f.add(
                "media_io_bytes_total",
                MetricType::COUNTER,
                "",
                &l,
                io.bytes[i] as f64,
            );
            f.add(
                "media_io_syscalls_total",
                MetricType::COUNTER,
                "Read and write syscalls that moved bytes on the io's descriptors, by op",
                &l,
                io.syscalls[i] as f64,
            );
            if io.datagrams[i] > 0 {
                f.add(
                    "media_io_datagrams_total",
                    MetricType::COUNTER,
                    "UDP datagrams received and sent on the io's sockets, by op",
                    &l,
                    io.datagrams[i] as f64,
                );
            }
        }
        let scalars: [(&'static str, &'static str, u64, bool); 9] = [
            (
                "media_io_demuxed_packets_total",
                "Packets av_read_frame returned from an input",
                io.demux_packets,
                io.direction == 1,
            ),
            (
                "media_io_demuxed_bytes_total",
                "Payload bytes of the packets in media_io_demuxed_packets_total",
                io.demux_bytes,
                io.direction == 1,
            ),
            (
                "media_io_corrupt_packets_total",
                "Packets the demuxer flagged corrupt (AV_PKT_FLAG_CORRUPT), e.g. after MPEG-TS loss",
                io.corrupt_packets,
                io.direction == 1,
            ),
            (
                "media_io_muxed_packets_total",
                "Packets written to an output (av_interleaved_write_frame / av_write_frame)",
                io.mux_packets,
                io.direction == 2,
            ),
            (
                "media_io_muxed_bytes_total",
                "Payload bytes of the packets in media_io_muxed_packets_total",
                io.mux_bytes,
                io.direction == 2,
            ),
            (
                "media_io_mux_errors_total",
                "Packet writes to an output that failed",
                io.mux_errors,
                io.direction == 2,
            ),
            (
                "media_io_mpegts_packets_total",
                "MPEG-TS packets in received datagrams (null packets excluded)",
                io.ts_packets,
                io.ts_packets > 0,
            ),
            (
                "media_io_mpegts_continuity_errors_total",
                "MPEG-TS continuity-counter errors in received datagrams, judged as FFmpeg's demuxer does",
                io.ts_cc_errors,
                io.ts_packets > 0,
            ),
            (
                "media_io_tcp_retransmits_total",
                "TCP segments the kernel retransmitted on the io's connections",
                io.tcp_retransmits,
                io.fds[2] > 0,
            ),
        ];
        for (name, help, v, show) in scalars {
            if show {
                f.add(name, MetricType::COUNTER, help, &labels, v as f64);
            }
        }
        for d in io.drops.iter().filter(|d| d.reason != 0 && d.count > 0) {
            let reason = if d.reason == u32::MAX {
                "OTHER".to_string()
            } else {
                shared
                    .drop_reasons
                    .get(&d.reason)
                    .cloned()
                    .unwrap_or_else(|| format!("reason_{}", d.reason))
            };
            let mut l = labels.clone();
            l.push("reason", reason);
            f.add(
                "media_io_kernel_drops_total",
                MetricType::COUNTER,
                "",
                &l,
                d.count as f64,
            );
        }
        if io.rtp.received_total() > 0 {
            let rtp = &io.rtp;
            for (name, help, v) in [
                (
                    "media_io_rtp_packets_received_total",
                    "Distinct RTP packets received",
                    rtp.received_total(),
                ),
                (
                    "media_io_rtp_packets_lost_total",
                    "RTP packets lost: expected (from sequence numbers) minus received, RFC 3550",
                    r.rtp_lost,
                ),
                (
                    "media_io_rtp_packets_duplicated_total",
                    "RTP packets received more than once",
                    rtp.duplicates,
                ),
                (
                    "media_io_rtp_packets_reordered_total",
                    "RTP packets that arrived after a later sequence number",
                    rtp.reordered,
                ),
            ] {
                f.add(name, MetricType::COUNTER, help, &labels, v as f64);
            }
            if !shared.aggregate {
                // 90 kHz: MPEG-TS over RTP (33), the static video types and the dynamic
                // ones video senders use; other clocks are not known without the SDP.
                let pt = rtp.payload_type;
                if pt == 33 || pt == 32 || pt == 26 || pt == 34 || pt >= 96 {
                    f.add(
                        "media_io_rtp_jitter_seconds",
                        MetricType::GAUGE,
                        "RFC 3550 interarrival jitter, in a 90 kHz clock",
                        &labels,
                        rtp.jitter16 as f64 / 16.0 / 90_000.0,
                    );
                }
            }
        }
        if r.files.segments > 0 || r.files.playlist_writes > 0 {
            f.add(
                "media_io_segments_total",
                MetricType::COUNTER,
                "Segment files an output wrote (HLS, DASH, segment muxer)",
                &labels,
                r.files.segments as f64,
            );
            f.add(
                "media_io_playlist_writes_total",
                MetricType::COUNTER,
                "Playlist or manifest files an output wrote",
                &labels,
                r.files.playlist_writes as f64,
            );
            f.hist_scaled(
                "media_io_segment_bytes",
                "Size of each segment file written",
                &labels,
                &r.files.segment_bytes,
                SEGMENT_BYTE_BUCKETS,
                1.0,
            );
            f.hist(
                "media_io_segment_write_seconds",
                "Open to close of each segment file: the time to write or upload it",
                &labels,
                &r.files.segment_write,
                CALL_BUCKETS,
            );
        }
    }
    f.declare(
        "media_io_open_failures_total",
        MetricType::COUNTER,
        "Inputs and outputs that failed to open, by AVERROR name",
    );
    for ((process, direction, protocol, error), n) in &shared.ios.open_failures {
        f.add(
            "media_io_open_failures_total",
            MetricType::COUNTER,
            "",
            &set(&[
                ("process", process.as_str()),
                ("direction", *direction),
                ("protocol", protocol.as_str()),
                ("error", error.as_str()),
            ]),
            *n as f64,
        );
    }
}

/// NVIDIA GPUs: `media_gpu_*` per GPU (labels `gpu`, `gpu_uuid`, `gpu_name`, as
/// DCGM-exporter names them, so series join), per process (plus `pid`, `process`), and per
/// encoder session (plus `stream`, when the process has one encode stream that matches).
fn gpu_families(f: &mut Families, shared: &Shared) {
    let Ok(g) = shared.gpu.lock() else { return };
    f.add(
        "observer_gpu_available",
        MetricType::GAUGE,
        "1 when NVML answered: an NVIDIA driver and GPU are present",
        &LabelSet::default(),
        if g.available { 1.0 } else { 0.0 },
    );
    if !g.available {
        return;
    }
    f.add(
        "observer_gpu_driver_info",
        MetricType::GAUGE,
        "The NVIDIA driver version, as a label",
        &set(&[("driver", g.driver.as_str())]),
        1.0,
    );
    f.add(
        "observer_gpu_sample_duration_seconds",
        MetricType::GAUGE,
        "Duration of the last GPU sampling",
        &LabelSet::default(),
        g.duration.as_secs_f64(),
    );
    f.declare(
        "observer_gpu_errors_total",
        MetricType::COUNTER,
        "NVML calls that failed, by call (an older driver or a GPU without the query): that metric is left out",
    );
    for (call, n) in &g.errors {
        f.add(
            "observer_gpu_errors_total",
            MetricType::COUNTER,
            "",
            &set(&[("call", *call)]),
            *n as f64,
        );
    }
    let process_name = |pid: u32| {
        shared
            .registry
            .exported_records()
            .find(|r| r.pid() == pid)
            .map(|r| r.process.clone())
            .or_else(|| crate::procfs::comm(pid))
            .unwrap_or_default()
    };
    for gpu in &g.gpus {
        let labels = set(&[
            ("gpu", &gpu.index.to_string()),
            ("gpu_uuid", &gpu.uuid),
            ("gpu_name", &gpu.name),
        ]);
        let with = |k: &'static str, v: &str| {
            let mut l = labels.clone();
            l.push(k, v);
            l
        };
        for (engine, v) in &gpu.engines {
            f.add(
                "media_gpu_utilization_ratio",
                MetricType::GAUGE,
                "Engine utilization over NVML's last sample period, by engine (graphics, memory, encoder, decoder, jpeg, ofa)",
                &with("engine", engine),
                *v,
            );
        }
        let scalars = [
            (
                "media_gpu_memory_used_bytes",
                "GPU memory allocated",
                gpu.memory_used.map(|v| v as f64),
            ),
            (
                "media_gpu_memory_total_bytes",
                "GPU memory installed",
                gpu.memory_total.map(|v| v as f64),
            ),
            (
                "media_gpu_temperature_celsius",
                "GPU core temperature",
                gpu.temperature_c.map(f64::from),
            ),
            (
                "media_gpu_power_watts",
                "Power draw of the GPU and its memory",
                gpu.power_w,
            ),
        ];
        for (name, help, v) in scalars {
            if let Some(v) = v {
                f.add(name, MetricType::GAUGE, help, &labels, v);
            }
        }
        for (clock, hz) in &gpu.clocks {
            f.add(
                "media_gpu_clock_hertz",
                MetricType::GAUGE,
                "Current clock, by clock (sm, video: the NVENC/NVDEC clock)",
                &with("clock", clock),
                *hz,
            );
        }
        if let Some(bits) = gpu.throttle {
            for (bit, reason) in crate::gpu::THROTTLE_REASONS {
                f.add(
                    "media_gpu_throttle_reason",
                    MetricType::GAUGE,
                    "1 while this reason holds the clocks down",
                    &with("reason", reason),
                    if bits & bit != 0 { 1.0 } else { 0.0 },
                );
            }
        }
        for p in &gpu.processes {
            let mut l = with("pid", &p.pid.to_string());
            l.push("process", process_name(p.pid));
            for (engine, v) in &p.engines {
                let mut l = l.clone();
                l.push("engine", *engine);
                f.add(
                    "media_gpu_process_utilization_ratio",
                    MetricType::GAUGE,
                    "A process's share of each engine (sm, memory, encoder, decoder); join to its streams on pid",
                    &l,
                    *v,
                );
            }
            if let Some(b) = p.memory_used {
                f.add(
                    "media_gpu_process_memory_used_bytes",
                    MetricType::GAUGE,
                    "GPU memory a process has allocated",
                    &l,
                    b as f64,
                );
            }
        }
        if let Some(sessions) = &gpu.sessions {
            f.add(
                "media_gpu_encoder_sessions",
                MetricType::GAUGE,
                "NVENC sessions open on the GPU",
                &labels,
                sessions.len() as f64,
            );
            for s in sessions {
                let mut l = with("pid", &s.pid.to_string());
                l.push("process", process_name(s.pid));
                l.push("stream", encoder_stream(shared, s));
                l.push("codec", s.codec);
                l.push("width", s.width.to_string());
                l.push("height", s.height.to_string());
                f.add(
                    "media_gpu_encoder_session_fps",
                    MetricType::GAUGE,
                    "An NVENC session's moving-average frame rate",
                    &l,
                    f64::from(s.fps),
                );
                f.add(
                    "media_gpu_encoder_session_latency_seconds",
                    MetricType::GAUGE,
                    "An NVENC session's moving-average encode latency",
                    &l,
                    s.latency_s,
                );
            }
        }
    }
}

/// The stream an encoder session belongs to: a live video encode stream of the same process
/// with the session's codec (by AVCodecID) and size, an NVENC one first if several match;
/// "" if none or several still do.
fn encoder_stream(shared: &Shared, s: &crate::gpu::EncoderSession) -> String {
    let codec = match s.codec {
        "h264" => ffmpeg::NvencCodec::H264,
        _ => ffmpeg::NvencCodec::Hevc,
    };
    let candidates: Vec<&Record> = shared
        .registry
        .exported_records()
        .filter(|r| {
            r.pid() == s.pid
                && r.ended.is_none()
                && r.direction() == Direction::Encode
                && ffmpeg::codec_id(r.lavc_major, codec) == Some(r.stream.codec_id)
                && r.stream.width == s.width
                && r.stream.height == s.height
        })
        .collect();
    let nvenc: Vec<&Record> = candidates
        .iter()
        .copied()
        .filter(|r| r.codec().contains("nvenc"))
        .collect();
    match (candidates.as_slice(), nvenc.as_slice()) {
        ([one], _) | (_, [one]) => one.label.clone(),
        _ => String::new(),
    }
}

/// Renders the whole exposition.
/// Every family `/metrics` shows, as the `prometheus` crate's structures (for OTLP too).
pub fn families(shared: &Shared) -> Vec<MetricFamily> {
    build(shared).finish()
}

fn build(shared: &Shared) -> Families {
    let records: Vec<&Record> = shared.registry.exported_records().collect();
    let mut f = Families {
        room: records.len(),
        ..Families::default()
    };
    stream_families(
        &mut f,
        &records,
        shared.aggregate,
        &shared.ios,
        shared.pods.as_ref(),
    );
    log_families(&mut f, shared);
    io_families(&mut f, shared);
    gpu_families(&mut f, shared);
    daemon_families(&mut f, shared);
    f
}

/// A scrape's series, gathered under the state's lock; written out after it is released.
pub struct Exposition(Families);

/// Gathers every family for a scrape. The lock is held while the families are gathered, not
/// while they are written out: the collector waits for a scrape only that long.
pub fn gather(state: &crate::state::SharedState) -> Option<Exposition> {
    let t0 = std::time::Instant::now();
    let shared = state.lock().ok()?;
    let t1 = std::time::Instant::now();
    let f = build(&shared);
    drop(shared);
    tracing::debug!(
        lock_wait_ms = (t1 - t0).as_secs_f64() * 1e3,
        gather_ms = t1.elapsed().as_secs_f64() * 1e3,
        "scrape gathered"
    );
    Some(Exposition(f))
}

impl Exposition {
    /// The text exposition, in pieces of about `chunk` bytes handed to `send` (see
    /// [`Families::write_text`]). Written straight from the gathered families: the bytes the
    /// prometheus crate's `TextEncoder` writes for [`families`] (a unit test holds them
    /// equal), without first building its protobuf model series by series, which took most
    /// of a scrape at 1,000 streams (BENCHMARKS.md, "Scale").
    pub fn write_text(&self, chunk: usize, send: &mut dyn FnMut(String) -> bool) {
        self.0.write_text(chunk, send);
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};

    use super::*;

    /// Families with every kind of value, label values that need escaping, and series that
    /// fold together.
    fn sample_families() -> Families {
        let mut f = Families::default();
        let labels = |stream: &str, url: &str| set(&[("stream", stream), ("url", url)]);
        for (stream, v) in [("1-a", 3.0), ("2-b", 0.5), ("1-a", 4.0)] {
            f.add(
                "media_frames_total",
                MetricType::COUNTER,
                "Frames \\ with\nhelp",
                &labels(stream, "udp://h:1"),
                v,
            );
        }
        f.add(
            "observer_streams",
            MetricType::GAUGE,
            "",
            &LabelSet::default(),
            7.0,
        );
        for (i, v) in [-0.0, -3.0, 1e15, 2.5e20, f64::NAN, f64::INFINITY, 1.0 / 3.0]
            .into_iter()
            .enumerate()
        {
            f.add(
                "observer_values",
                MetricType::GAUGE,
                "",
                &set(&[("i", &i.to_string())]),
                v,
            );
        }
        f.add(
            "media_stream_up",
            MetricType::GAUGE,
            "up",
            &labels("3-c", "a \"quoted\" \\ path\nx"),
            1.0,
        );
        f.declare("media_empty_total", MetricType::COUNTER, "never written");
        let mut h = Histogram {
            buckets: [0; HIST_BUCKETS],
            sum_ns: 0,
        };
        for (i, b) in h.buckets.iter_mut().enumerate() {
            *b = i as u64 % 5;
        }
        h.sum_ns = 123_456_789;
        for stream in ["1-a", "2-b", "1-a"] {
            f.hist(
                "media_frame_latency_seconds",
                "latency",
                &labels(stream, ""),
                &h,
                LATENCY_BUCKETS,
            );
        }
        f.hist_scaled(
            "media_packet_size_bytes",
            "sizes",
            &labels("1-a", ""),
            &h,
            (0, 12),
            1.0,
        );
        f
    }

    #[test]
    fn the_exposition_is_byte_for_byte_the_prometheus_crates() {
        let mut ours = String::new();
        // Pieces smaller than a series: the text is the same however it is cut.
        sample_families().write_text(16, &mut |piece| {
            ours.push_str(&piece);
            true
        });
        let mut theirs = Vec::new();
        TextEncoder::new()
            .encode(&sample_families().finish(), &mut theirs)
            .unwrap();
        assert_eq!(ours, String::from_utf8(theirs).unwrap());
        assert!(
            ours.contains("media_frames_total{stream=\"1-a\",url=\"udp://h:1\"} 7\n"),
            "{ours}"
        );
        assert!(ours.contains(r#"url="a \"quoted\" \\ path\nx""#), "{ours}");
        assert!(!ours.contains("media_empty_total"), "{ours}");
    }
}
