//! Options: each has a flag, an environment variable (`OBSERVER_*`) and a config-file key
//! (`--config FILE`, TOML, keys as the flags without dashes: `listen`, `ended_stream_grace`).
//! Precedence: flag, then environment, then file, then default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{
    ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, ValueEnum, parser::ValueSource,
};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A kind of codec call that can be probed (`--directions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbedDirection {
    /// `avcodec_send_packet`, `avcodec_receive_frame` (and the older decode calls).
    Decode,
    /// `avcodec_send_frame`, `avcodec_receive_packet` (and the older encode calls).
    Encode,
    /// `av_buffersrc_add_frame_flags`, `av_buffersink_get_frame_flags`.
    Filter,
}

impl ProbedDirection {
    pub fn direction(self) -> observer_common::stream::Direction {
        use observer_common::stream::Direction;
        match self {
            ProbedDirection::Decode => Direction::Decode,
            ProbedDirection::Encode => Direction::Encode,
            ProbedDirection::Filter => Direction::Filter,
        }
    }
}

/// The least severe FFmpeg log level sent as structured events (`--ffmpeg-log-events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEvents {
    None,
    Fatal,
    Error,
    Warning,
    Info,
    Verbose,
    Debug,
}

impl LogEvents {
    /// The `AV_LOG_*` threshold; negative for none.
    pub fn av_level(self) -> i32 {
        match self {
            LogEvents::None => -1,
            LogEvents::Fatal => 8,
            LogEvents::Error => 16,
            LogEvents::Warning => 24,
            LogEvents::Info => 32,
            LogEvents::Verbose => 40,
            LogEvents::Debug => 48,
        }
    }
}

/// The OTLP transport (`--otlp-protocol`, `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, usually port 4317.
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, usually port 4318 (`/v1/traces`, `/v1/logs`).
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// A duration, or `off` (`--slow-frame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(pub Option<Duration>);

impl std::str::FromStr for Threshold {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            Ok(Threshold(None))
        } else {
            humantime::parse_duration(s).map(|d| Threshold(Some(d)))
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "observer",
    version,
    about = "Zero-instrumentation observability for video pipelines",
    after_help = "`observer top [--url URL]` shows a running daemon's streams live (`observer top --help`).\n`observer health [--ready]` asks a running daemon's /healthz or /readyz, for probes (`observer health --help`)."
)]
pub struct Options {
    /// Address to serve /metrics, /healthz, /readyz and /streams on.
    #[arg(long, env = "OBSERVER_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,

    /// Web configuration for every endpoint, in the Prometheus exporter-toolkit's format (as
    /// node_exporter's `--web.config.file`): TLS, client certificates, basic auth, headers.
    /// Read again when it or a file it names changes. Unset: plain HTTP, no auth.
    #[arg(long, env = "OBSERVER_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// TOML file with any of these options; flags and environment win over it.
    #[arg(long, env = "OBSERVER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format: human-readable text, or JSON lines for log collectors.
    #[arg(long, env = "OBSERVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (`info`, `observer=debug`).
    #[arg(long, env = "OBSERVER_LOG", default_value = "info")]
    pub log_level: String,

    /// How long an ended stream stays exported, so a scrape after a short job still sees its
    /// final counts (e.g. `5m`, `30s`).
    #[arg(long, env = "OBSERVER_ENDED_STREAM_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub ended_stream_grace: Duration,

    /// Most streams exported at once; live streams are exported first, then the most recently
    /// ended.
    #[arg(long, env = "OBSERVER_MAX_STREAMS", default_value_t = 5000)]
    pub max_streams: usize,

    /// Streams the kernel's maps hold, live and just ended; above 15/16 of it the streams
    /// idle longest (10 s or more) are evicted and counted. About 3.8 KiB of kernel memory a
    /// stream in use.
    #[arg(long, env = "OBSERVER_KERNEL_MAX_STREAMS", default_value_t = observer_common::stream::MAX_STREAMS, value_parser = clap::value_parser!(u32).range(KERNEL_MAX_STREAMS))]
    pub kernel_max_streams: u32,

    /// Drop the per-stream labels (`stream`, `pid`) and sum streams that share process,
    /// direction, media and codec: for nodes that run thousands of short jobs.
    #[arg(long, env = "OBSERVER_AGGREGATE", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub aggregate: bool,

    /// How often the kernel's counters are read.
    #[arg(long, env = "OBSERVER_COLLECT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub collect_interval: Duration,

    /// How often every process is rescanned for FFmpeg copies, as a safety net behind the
    /// exec and library-load events.
    #[arg(long, env = "OBSERVER_RESCAN_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub rescan_interval: Duration,

    /// How long a file stays attached after the last process using it exits.
    #[arg(long, env = "OBSERVER_DETACH_LINGER", default_value = "10s", value_parser = humantime::parse_duration)]
    pub detach_linger: Duration,

    /// Directories whose FFmpeg libraries are attached at start, whether or not a process uses
    /// them yet (comma-separated).
    #[arg(long, env = "OBSERVER_LIBRARY_DIRS", value_delimiter = ',', default_values_t = crate::tracker::LIBRARY_DIRS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub library_dirs: Vec<String>,

    /// Which codec calls are probed (comma-separated `decode`, `encode`, `filter`). Each call
    /// costs two probe hits; a node that only needs its decoders watched can leave the rest
    /// out and lose only their metrics (BENCHMARKS.md, the worst-case decode).
    #[arg(long, env = "OBSERVER_DIRECTIONS", value_enum, value_delimiter = ',', default_values = ["decode", "encode", "filter"])]
    pub directions: Vec<ProbedDirection>,

    /// Count FFmpeg's own log messages at `av_vlog`, debug level included. Each message is a
    /// probe hit (libavcodec logs about five debug messages per H.264 frame, about 1 µs
    /// each); turn it off where even that shows.
    #[arg(long, env = "OBSERVER_FFMPEG_LOGS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub ffmpeg_logs: bool,

    /// Also emit FFmpeg's messages of this level and more severe as structured events in the
    /// daemon's log (target `ffmpeg`), formatted with their arguments, URLs redacted.
    /// `none` turns it off; `debug` can mean thousands of events a second.
    #[arg(
        long,
        env = "OBSERVER_FFMPEG_LOG_EVENTS",
        value_enum,
        default_value = "warning"
    )]
    pub ffmpeg_log_events: LogEvents,

    /// Follow every input and output: URLs, bytes and datagrams on their sockets and files,
    /// kernel drops, TCP retransmissions, RTP and MPEG-TS loss. Costs a hash lookup per
    /// read/write syscall on the node and two probe hits per demuxed and muxed packet.
    #[arg(long, env = "OBSERVER_IO_STATS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub io_stats: bool,

    /// Hold (SIGSTOP) a process that maps an executable file named like FFmpeg (`avcodec`,
    /// `avformat`, `avutil`, `avfilter`, `ffmpeg`, `ffprobe` in its name) that the daemon has
    /// not judged yet, until the file is inspected and its probes are attached: a new static
    /// build or wheel is counted from its first frame. Costs each such new file one stop of
    /// about a millisecond, once; processes with a controlling terminal are never held.
    #[arg(long, env = "OBSERVER_HOLD_NEW_FILES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub hold_new_files: bool,

    /// An open input or output that moved no byte and no packet for this long is reported
    /// stalled (`media_io_stalled`).
    #[arg(long, env = "OBSERVER_STALL_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stall_after: Duration,

    /// Sample NVIDIA GPUs through NVML (when a driver is present).
    #[arg(long, env = "OBSERVER_GPU", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub gpu: bool,

    /// How often GPUs are sampled.
    #[arg(long, env = "OBSERVER_GPU_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub gpu_interval: Duration,

    /// The NVML library to load instead of the driver's `libnvidia-ml.so.1` found by the
    /// dynamic linker.
    #[arg(long, env = "OBSERVER_NVML_LIBRARY")]
    pub nvml_library: Option<String>,

    /// The Kubernetes node this daemon runs on (the DaemonSet sets it from `spec.nodeName`):
    /// with it, the daemon watches this node's pods and labels streams with their pod,
    /// namespace, container and workload. Unset: no Kubernetes labels.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Watch this node's pods through the API server when `--node-name` is set.
    #[arg(long, env = "OBSERVER_KUBERNETES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub kubernetes: bool,

    /// OpenTelemetry collector to export spans and logs to, e.g. `http://localhost:4318` (HTTP)
    /// or `http://localhost:4317` (gRPC). Unset: nothing is exported over OTLP.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: OtlpProtocol,

    /// The `service.name` resource attribute of everything exported (other resource
    /// attributes come from `OTEL_RESOURCE_ATTRIBUTES`).
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "observer")]
    pub service_name: String,

    /// Share of frames exported as spans, 0 to 1 (decided in the kernel; only chosen frames
    /// leave it). Production 0.01, high load 0.001, development 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 0.01)]
    pub frame_sample_ratio: f64,

    /// A frame that takes at least this long (input submitted to output returned) is always
    /// exported as a span, sampled or not; `off` for none, `0s` for every frame.
    #[arg(long, env = "OBSERVER_SLOW_FRAME", default_value = "250ms")]
    pub slow_frame: Threshold,

    /// Export FFmpeg's captured messages (`--ffmpeg-log-events`) and the daemon's own events as
    /// OTLP logs.
    #[arg(long, env = "OBSERVER_OTLP_LOGS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub otlp_logs: bool,

    /// Also send everything `/metrics` shows as OTLP metrics (Prometheus stays the main way).
    #[arg(long, env = "OBSERVER_OTLP_METRICS", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub otlp_metrics: bool,

    /// How often the OTLP metrics are sent.
    #[arg(long, env = "OBSERVER_OTLP_METRICS_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub otlp_metrics_interval: Duration,

    /// Items waiting for export at most, in each of three queues (spans of processes and
    /// streams, frame spans, log records); beyond it new ones are dropped and counted
    /// (`observer_otlp_dropped_total`).
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 8192)]
    pub otlp_queue_size: usize,

    /// Spans or log records per export request at most.
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512)]
    pub otlp_batch_size: usize,

    /// Longest wait before a partial batch is sent.
    #[arg(long, env = "OBSERVER_OTLP_EXPORT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub otlp_export_interval: Duration,

    /// An export request that takes longer fails (its batch counts as dropped).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub otlp_timeout: Duration,

    /// Benchmarking aid: attach programs that do nothing at the same points instead of the
    /// real ones, to measure what the probe mechanism alone costs (no metrics are produced).
    #[arg(long, env = "OBSERVER_EMPTY_PROBES", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub empty_probes: bool,
}

/// Sizes `--kernel-max-streams` may take: room for the eviction's two water marks, and at
/// most 262,144 streams (about 1 GiB of kernel memory when all are in use).
const KERNEL_MAX_STREAMS: std::ops::RangeInclusive<i64> = 8..=262_144;

/// The config file: every option, all optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    listen: Option<SocketAddr>,
    web_config_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    #[serde(default, with = "opt_duration")]
    ended_stream_grace: Option<Duration>,
    max_streams: Option<usize>,
    kernel_max_streams: Option<u32>,
    aggregate: Option<bool>,
    #[serde(default, with = "opt_duration")]
    collect_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    rescan_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    detach_linger: Option<Duration>,
    library_dirs: Option<Vec<String>>,
    directions: Option<Vec<ProbedDirection>>,
    ffmpeg_logs: Option<bool>,
    ffmpeg_log_events: Option<LogEvents>,
    io_stats: Option<bool>,
    hold_new_files: Option<bool>,
    #[serde(default, with = "opt_duration")]
    stall_after: Option<Duration>,
    gpu: Option<bool>,
    #[serde(default, with = "opt_duration")]
    gpu_interval: Option<Duration>,
    nvml_library: Option<String>,
    node_name: Option<String>,
    kubernetes: Option<bool>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<OtlpProtocol>,
    service_name: Option<String>,
    frame_sample_ratio: Option<f64>,
    slow_frame: Option<Threshold>,
    otlp_logs: Option<bool>,
    otlp_metrics: Option<bool>,
    #[serde(default, with = "opt_duration")]
    otlp_metrics_interval: Option<Duration>,
    otlp_queue_size: Option<usize>,
    otlp_batch_size: Option<usize>,
    #[serde(default, with = "opt_duration")]
    otlp_export_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    otlp_timeout: Option<Duration>,
    empty_probes: Option<bool>,
}

mod opt_duration {
    use serde::{Deserialize as _, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Options {
    /// Parses the command line and environment, then fills what neither set from the config
    /// file. Flag errors exit with clap's message and status 2.
    pub fn load() -> Result<Self, ConfigError> {
        let matches = Options::command().get_matches();
        let mut opts = Options::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Some(path) = opts.config.clone() {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: FileOptions =
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
            opts.merge(&matches, file);
        }
        opts.validate()?;
        Ok(opts)
    }

    /// Options from these arguments (the program name first), the environment and this
    /// config file's text, as `load` reads them but returning every error instead of exiting:
    /// for the fuzzer and tests.
    pub fn parse_from(args: &[&str], file: &str) -> Result<Options, ConfigError> {
        let m = Options::command()
            .try_get_matches_from(args)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut o =
            Options::from_arg_matches(&m).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let f: FileOptions = toml::from_str(file).map_err(|source| ConfigError::Parse {
            path: "(text)".into(),
            source,
        })?;
        o.merge(&m, f);
        o.validate()?;
        Ok(o)
    }

    fn merge(&mut self, m: &ArgMatches, f: FileOptions) {
        let unset = |id: &str| matches!(m.value_source(id), None | Some(ValueSource::DefaultValue));
        macro_rules! take {
            ($($field:ident),*) => {$(
                if unset(stringify!($field)) {
                    if let Some(v) = f.$field {
                        self.$field = v;
                    }
                }
            )*};
        }
        take!(
            listen,
            log_format,
            log_level,
            ended_stream_grace,
            max_streams,
            kernel_max_streams,
            aggregate,
            collect_interval,
            rescan_interval,
            detach_linger,
            library_dirs,
            directions,
            ffmpeg_logs,
            ffmpeg_log_events,
            io_stats,
            hold_new_files,
            stall_after,
            gpu,
            gpu_interval,
            kubernetes,
            otlp_protocol,
            service_name,
            frame_sample_ratio,
            slow_frame,
            otlp_logs,
            otlp_metrics,
            otlp_metrics_interval,
            otlp_queue_size,
            otlp_batch_size,
            otlp_export_interval,
            otlp_timeout,
            empty_probes
        );
        if unset("nvml_library") && f.nvml_library.is_some() {
            self.nvml_library = f.nvml_library;
        }
        if unset("node_name") && f.node_name.is_some() {
            self.node_name = f.node_name;
        }
        if unset("otlp_endpoint") && f.otlp_endpoint.is_some() {
            self.otlp_endpoint = f.otlp_endpoint;
        }
        if unset("web_config_file") && f.web_config_file.is_some() {
            self.web_config_file = f.web_config_file;
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_streams == 0 {
            return Err(ConfigError::Invalid(
                "max_streams must be at least 1".into(),
            ));
        }
        if !KERNEL_MAX_STREAMS.contains(&(self.kernel_max_streams as i64)) {
            return Err(ConfigError::Invalid(format!(
                "kernel_max_streams must be between {} and {}, not {}",
                KERNEL_MAX_STREAMS.start(),
                KERNEL_MAX_STREAMS.end(),
                self.kernel_max_streams
            )));
        }
        if self.directions.is_empty() {
            return Err(ConfigError::Invalid(
                "directions must name at least one of decode, encode, filter".into(),
            ));
        }
        if self.collect_interval < Duration::from_millis(10) {
            return Err(ConfigError::Invalid(
                "collect_interval must be at least 10ms".into(),
            ));
        }
        if self.gpu_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "gpu_interval must be at least 100ms".into(),
            ));
        }
        if self.rescan_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "rescan_interval must be at least 1s".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.frame_sample_ratio) {
            return Err(ConfigError::Invalid(format!(
                "frame_sample_ratio must be between 0 and 1, not {}",
                self.frame_sample_ratio
            )));
        }
        if self.otlp_metrics_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "otlp_metrics_interval must be at least 1s".into(),
            ));
        }
        if self.otlp_queue_size == 0 || self.otlp_batch_size == 0 {
            return Err(ConfigError::Invalid(
                "otlp_queue_size and otlp_batch_size must be at least 1".into(),
            ));
        }
        if let Some(ep) = &self.otlp_endpoint {
            // Said now, not at the first failed export.
            let ep = ep.trim();
            if !ep.is_empty() && !ep.starts_with("http://") && !ep.starts_with("https://") {
                return Err(ConfigError::Invalid(format!(
                    "otlp_endpoint must be an http:// or https:// URL, not {ep:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], file: &str) -> Result<Options, ConfigError> {
        Options::parse_from(args, file)
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let o = parse(
            &["observer", "--max-streams", "7"],
            "max_streams = 9\nended_stream_grace = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(o.max_streams, 7);
        assert_eq!(o.ended_stream_grace, Duration::from_secs(30));
        assert_eq!(o.listen.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn bad_file_keys_and_values_are_refused() {
        assert!(matches!(
            parse(&["observer"], "no_such_key = 1\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse(&["observer"], "ended_stream_grace = \"soon\"\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse(&["observer"], "max_streams = 0\n"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(parse(&["observer", "--listen", "nope"], "").is_err());
        // The kernel map size, bounded the same way from a flag and from the file.
        assert_eq!(
            parse(&["observer"], "kernel_max_streams = 64\n")
                .unwrap()
                .kernel_max_streams,
            64
        );
        // Directions: a list in flag, environment and file; never empty.
        let o = parse(&["observer", "--directions", "decode,filter"], "").unwrap();
        assert_eq!(
            o.directions,
            [ProbedDirection::Decode, ProbedDirection::Filter]
        );
        let o = parse(&["observer"], "directions = [\"encode\"]\n").unwrap();
        assert_eq!(o.directions, [ProbedDirection::Encode]);
        assert_eq!(parse(&["observer"], "").unwrap().directions.len(), 3);
        assert!(parse(&["observer", "--directions", "demux"], "").is_err());
        assert!(matches!(
            parse(&["observer"], "directions = []\n"),
            Err(ConfigError::Invalid(_))
        ));
        for bad in ["4", "262145"] {
            assert!(parse(&["observer", "--kernel-max-streams", bad], "").is_err());
            assert!(matches!(
                parse(&["observer"], &format!("kernel_max_streams = {bad}\n")),
                Err(ConfigError::Invalid(_))
            ));
        }
    }

    #[test]
    fn otlp_options_parse_and_bad_ones_are_refused() {
        let o = parse(
            &["observer", "--otlp-protocol", "grpc", "--slow-frame", "off"],
            "otlp_endpoint = \"http://collector:4317\"\n",
        )
        .unwrap();
        assert_eq!(o.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(o.slow_frame, Threshold(None));
        assert_eq!(o.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        let o = parse(
            &["observer"],
            "otlp_protocol = \"http/protobuf\"\nslow_frame = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(o.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.slow_frame, Threshold(Some(Duration::ZERO)));
        assert_eq!(o.frame_sample_ratio, 0.01);
        assert!(matches!(
            parse(&["observer", "--frame-sample-ratio", "1.5"], ""),
            Err(ConfigError::Invalid(_))
        ));
        assert!(
            parse(
                &["observer", "--otlp-endpoint", "https://collector:4317"],
                ""
            )
            .is_ok()
        );
        assert!(matches!(
            parse(&["observer", "--otlp-endpoint", "collector:4317"], ""),
            Err(ConfigError::Invalid(_))
        ));
        let o = parse(
            &["observer"],
            "web_config_file = \"/etc/observer/web.yml\"\n",
        )
        .unwrap();
        assert_eq!(
            o.web_config_file.as_deref(),
            Some(std::path::Path::new("/etc/observer/web.yml"))
        );
        assert!(parse(&["observer", "--otlp-protocol", "http/json"], "").is_err());
        assert!(parse(&["observer", "--slow-frame", "soon"], "").is_err());
    }

    #[test]
    fn the_shipped_profiles_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        for name in ["development.toml", "production.toml", "high-load.toml"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            parse(&["observer"], &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
