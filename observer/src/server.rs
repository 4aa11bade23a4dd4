//! HTTP: `/metrics` (Prometheus), `/healthz`, `/readyz`, and `/streams` and `/ios` (JSON,
//! for `cargo xtask run`'s table and other tools).

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use observer_common::stream::{Direction, Histogram};
use serde::{Deserialize, Serialize};

use crate::{
    metrics::{self, direction_name, media_name},
    state::SharedState,
};

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/streams", get(streams))
        .route("/ios", get(ios))
        .with_state(state)
}

/// Size of the pieces `/metrics` is sent in: the first leaves while the rest is written, and
/// a 1,000-stream scrape is 15 hand-overs between the writing thread and the sending task
/// (each may wait for a scheduler slot on a busy node).
const METRICS_CHUNK: usize = 1024 * 1024;
/// Pieces written ahead of the socket: the writer runs through a 1,000-stream scrape without
/// waiting on a slow scraper, and at most this many MiB wait in memory.
const METRICS_PIECES_AHEAD: usize = 16;

/// Whether an `Accept-Encoding` header takes gzip (`gzip` or `*`, without `q=0`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

async fn metrics_handler(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(&headers);
    // Tens of milliseconds at a thousand streams: gathered and written on blocking threads,
    // so the async workers keep answering /healthz and /readyz meanwhile.
    let Ok(Some(exposition)) = tokio::task::spawn_blocking(move || metrics::gather(&state)).await
    else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            "state poisoned\n",
        )
            .into_response();
    };
    // Pieces go out as they are written: a scrape's time is the gathering plus the slower of
    // writing and sending, not their sum.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(METRICS_PIECES_AHEAD);
    drop(tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        if gzip {
            // Compressed on a second thread while this one writes: a 1,000-stream scrape
            // costs the slower of the two, not their sum.
            let (pieces, written) = std::sync::mpsc::sync_channel::<String>(METRICS_PIECES_AHEAD);
            drop(tokio::task::spawn_blocking(move || compress(written, tx)));
            exposition.write_text(METRICS_CHUNK, &mut |piece| pieces.send(piece).is_ok());
        } else {
            exposition.write_text(METRICS_CHUNK, &mut |piece| {
                tx.blocking_send(piece.into_bytes()).is_ok()
            });
        }
        tracing::debug!(
            write_ms = t0.elapsed().as_secs_f64() * 1e3,
            gzip,
            "scrape written"
        );
        drop(exposition);
        // The trim walks every arena: after the last piece, off the response's path.
        release_free_memory();
    }));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(piece), rx))
    });
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::VARY, "accept-encoding"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    if gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    response
}

/// Gzips the exposition's pieces as they come and sends what each one compressed to.
/// The fastest level: the text is repetitive enough that it still shrinks 18x at 1,000
/// streams (BENCHMARKS.md).
fn compress(pieces: std::sync::mpsc::Receiver<String>, tx: tokio::sync::mpsc::Sender<Vec<u8>>) {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for piece in pieces {
        if gz.write_all(piece.as_bytes()).is_err() {
            return;
        }
        let out = std::mem::take(gz.get_mut());
        if !out.is_empty() && tx.blocking_send(out).is_err() {
            return;
        }
    }
    if let Ok(out) = gz.finish() {
        let _ = tx.blocking_send(out);
    }
}

/// A scrape at a thousand streams allocates and frees tens of megabytes on a blocking-pool
/// thread, and glibc keeps what a thread's arena freed: without this the daemon's resident
/// memory stays at its largest scrape's high-water mark (BENCHMARKS.md, "Churn").
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn ready(State(state): State<SharedState>) -> impl IntoResponse {
    if state.lock().is_ok_and(|s| s.ready) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial scan in progress\n",
        )
    }
}

/// One stream, in the units a person reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamView {
    pub stream: String,
    pub pid: u32,
    pub process: String,
    /// The container the process runs in, if any.
    pub container_id: Option<String>,
    pub direction: String,
    pub media: String,
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
    pub frames: u64,
    pub packets: u64,
    pub packet_bytes: u64,
    pub keyframes: u64,
    pub errors: u64,
    pub latency_p50_seconds: Option<f64>,
    pub latency_p99_seconds: Option<f64>,
    pub up: bool,
    /// `none`, `cuda`, `nvdec`, `nvenc`, `vaapi`, `qsv`, ... (see `ffmpeg::hwaccel`).
    pub hwaccel: String,
    /// The input a decoder reads or the output an encoder writes (its `io` label; empty if
    /// not linked).
    pub io: String,
    /// Packets lost on that io: RTP losses, MPEG-TS continuity errors, kernel drops.
    pub lost: u64,
}

/// The `q` quantile of a log2 histogram, interpolating linearly inside the bucket.
pub fn quantile(h: &Histogram, q: f64) -> Option<f64> {
    let total = h.count();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut cum = 0.0;
    for (i, &n) in h.buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if cum + n as f64 >= rank {
            let lo = if i == 0 { 0.0 } else { (1u64 << i) as f64 };
            let hi = (1u64 << (i + 1)) as f64;
            let frac = ((rank - cum) / n as f64).clamp(0.0, 1.0);
            return Some((lo + frac * (hi - lo)) / 1e9);
        }
        cum += n as f64;
    }
    None
}

async fn streams(State(state): State<SharedState>) -> impl IntoResponse {
    let Ok(s) = state.lock() else {
        return Json(Vec::new());
    };
    let views = s
        .registry
        .exported_records()
        .map(|r| {
            let st = &r.stream;
            let dir = r.direction();
            let io = (st.io != 0).then(|| s.ios.get(r.pid(), st.io)).flatten();
            let (frames, packets, bytes) = if dir == Direction::Filter {
                (st.out_count, 0, 0)
            } else {
                r.totals()
            };
            StreamView {
                stream: r.label.clone(),
                pid: r.pid(),
                process: r.process.clone(),
                container_id: r.container_id.clone(),
                direction: direction_name(dir).into(),
                media: media_name(st.media).into(),
                codec: if dir == Direction::Filter {
                    "filtergraph".into()
                } else {
                    r.codec()
                },
                width: st.width,
                height: st.height,
                sample_rate: st.sample_rate,
                frames,
                packets,
                packet_bytes: bytes,
                keyframes: st.keyframes,
                errors: st.errors.iter().map(|e| e.count).sum(),
                latency_p50_seconds: quantile(&st.latency, 0.5),
                latency_p99_seconds: quantile(&st.latency, 0.99),
                up: r.ended.is_none(),
                hwaccel: crate::ffmpeg::hwaccel(&r.codec(), st.hw_device_type).into(),
                io: io.map(|i| i.label.clone()).unwrap_or_default(),
                lost: io.map_or(0, |i| i.rtp_lost + i.io.ts_cc_errors + i.kernel_drops()),
            }
        })
        .collect::<Vec<_>>();
    Json(views)
}

/// One input or output, as `/ios` lists it (the URL redacted, as everywhere).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IoView {
    pub io: String,
    pub pid: u32,
    pub process: String,
    pub direction: String,
    pub url: String,
    pub protocol: String,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub datagrams_read: u64,
    pub demuxed_packets: u64,
    pub muxed_packets: u64,
    pub corrupt_packets: u64,
    pub mpegts_continuity_errors: u64,
    pub rtp_lost: u64,
    pub kernel_drops: u64,
    pub tcp_retransmits: u64,
    pub stalled: bool,
    pub up: bool,
}

async fn ios(State(state): State<SharedState>) -> impl IntoResponse {
    let Ok(s) = state.lock() else {
        return Json(Vec::new());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let views = s
        .ios
        .records()
        .map(|r| {
            let io = &r.io;
            IoView {
                io: r.label.clone(),
                pid: r.key.tgid,
                process: r.process.clone(),
                direction: r.direction().into(),
                url: r.url.clone(),
                protocol: r.protocol.clone(),
                bytes_read: io.bytes[0],
                bytes_written: io.bytes[1],
                datagrams_read: io.datagrams[0],
                demuxed_packets: io.demux_packets,
                muxed_packets: io.mux_packets,
                corrupt_packets: io.corrupt_packets,
                mpegts_continuity_errors: io.ts_cc_errors,
                rtp_lost: r.rtp_lost,
                kernel_drops: r.kernel_drops(),
                tcp_retransmits: io.tcp_retransmits,
                stalled: r.stalled(now, s.stall_after),
                up: r.ended.is_none(),
            }
        })
        .collect::<Vec<_>>();
    Json(views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::stream::HIST_BUCKETS;

    #[test]
    fn gzip_is_taken_when_offered_and_not_refused() {
        let offer = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT_ENCODING, v.parse().unwrap());
            }
            accepts_gzip(&h)
        };
        // What Prometheus sends.
        assert!(offer(&["gzip"]));
        assert!(offer(&["identity, GZIP;q=0.5"]));
        assert!(offer(&["br", "gzip"]));
        assert!(offer(&["*"]));
        assert!(!offer(&[]));
        assert!(!offer(&["identity"]));
        assert!(!offer(&["gzip;q=0"]));
        assert!(!offer(&["x-gzip2"]));
    }

    #[test]
    fn quantiles_interpolate_within_log2_buckets() {
        let mut h = Histogram {
            buckets: [0; HIST_BUCKETS],
            sum_ns: 0,
        };
        // 100 samples in [1024, 2048) ns.
        h.buckets[10] = 100;
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((p50 - 1536e-9).abs() < 1e-12, "{p50}");
        h.buckets[20] = 100;
        let p99 = quantile(&h, 0.99).unwrap();
        assert!(p99 > (1u64 << 20) as f64 / 1e9 && p99 < (1u64 << 21) as f64 / 1e9);
        assert_eq!(
            quantile(
                &Histogram {
                    buckets: [0; HIST_BUCKETS],
                    sum_ns: 0
                },
                0.5
            ),
            None
        );
    }
}
