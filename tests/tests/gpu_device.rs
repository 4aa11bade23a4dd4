//! A real NVIDIA GPU (issue 4's device check): a hardware decode on NVDEC shows decoder use on
//! the process's stream, and the stream carries its `hwaccel` label. No GPU exists where CI
//! runs, so these tests are ignored there; `cargo xtask gpu-kit` packs this test binary, the
//! daemon and a static ffmpeg with NVDEC for a machine that has one, and
//! `xtask/gpu-kit.sh` runs them there (with `--ignored`). On any machine the daemon's side of
//! the GPU metrics is covered by the stand-in NVML library in `gpu.rs`.
//!
//! What the run saw goes to stdout (and, with `OBSERVER_GPU_REPORT_DIR`, into `report.md`
//! and the scrape with the most decoder use into `<test>.prom` there), for BENCHMARKS.md.

use std::{
    io::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use observer_tests::{Daemon, Scrape, ffmpeg, run, tempdir};

/// Frames in the clip, and how many times it is decoded: at 1080p, long enough for several
/// NVML samples of decoder use whatever the decoder's speed.
const CLIP_FRAMES: u64 = 300;
const PLAYS: u64 = 40;

#[test]
#[ignore = "needs an NVIDIA GPU: run through `cargo xtask gpu-kit` (see BENCHMARKS.md)"]
fn a_cuda_hwaccel_decode_shows_decoder_use_on_its_stream() {
    hardware_decode("cuda_hwaccel", &["-hwaccel", "cuda"], "h264", "cuda");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run through `cargo xtask gpu-kit` (see BENCHMARKS.md)"]
fn a_cuvid_decode_shows_decoder_use_on_its_stream() {
    hardware_decode("cuvid", &["-c:v", "h264_cuvid"], "h264_cuvid", "nvdec");
}

/// Decodes a 1080p H.264 clip `PLAYS` times with `decoder_args`, scraping while it runs, and
/// checks: the GPU is sampled, the stream decoding on the GPU has `hwaccel` = `hwaccel`, the
/// process's decoder use rises above zero, and the stream's frame count is exact.
fn hardware_decode(name: &str, decoder_args: &[&str], codec: &str, hwaccel: &str) {
    let dir = tempdir(name);
    let clip = dir.join("clip.mp4");
    run(ffmpeg()
        .args(["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30"])
        .args(["-frames:v", &CLIP_FRAMES.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"])
        .arg(&clip));
    let d = Daemon::start(&["--gpu-interval", "250ms"]);
    // Without a driver the daemon says so once and reports 0: fail with that, not a scrape.
    let t = Instant::now();
    while d.scrape().value("observer_gpu_available", &[]) != Some(1.0) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "observer_gpu_available stays 0: this test needs an NVIDIA GPU and its driver. \
             The daemon said: {}",
            d.log_text()
                .lines()
                .filter(|l| l.contains("NVML"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A static ffmpeg is attached when a process first maps it; one waiting on its stdin
    // keeps it mapped (and so attached) while the decode starts from the first frame.
    let mut holder = ffmpeg()
        .args(["-f", "nut", "-i", "pipe:0", "-f", "null", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ffmpeg");
    d.wait_attached(&["/ffmpeg"]);
    let t0 = Instant::now();
    // Its stderr goes to a file: a pipe nobody reads while it runs could fill and stall it.
    let log = dir.join("ffmpeg.log");
    let mut dec = ffmpeg()
        .args(["-stream_loop", &(PLAYS - 1).to_string()])
        .args(decoder_args)
        .arg("-i")
        .arg(&clip)
        .args(["-f", "null", "-"])
        .stderr(std::fs::File::create(&log).expect("ffmpeg's log"))
        .spawn()
        .expect("ffmpeg");
    let pid = dec.id();
    let p = pid.to_string();
    let mut seen = Seen::default();
    while dec.try_wait().expect("ffmpeg").is_none() {
        seen.note(&d.scrape(), &p, hwaccel);
        std::thread::sleep(Duration::from_millis(200));
    }
    let wall = t0.elapsed();
    let status = dec.wait().expect("ffmpeg");
    assert!(
        status.success(),
        "ffmpeg {decoder_args:?} failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let end = d.wait_ended(pid);
    seen.note(&end, &p, hwaccel);

    let stream = seen
        .stream
        .clone()
        .unwrap_or_else(|| panic!("no stream of pid {p} with hwaccel={hwaccel}:\n{}", end.text));
    let frames = end.expect(
        "media_frames_total",
        &[("pid", &p), ("stream", &stream), ("codec", codec)],
    );
    let driver = end
        .all("observer_gpu_driver_info")
        .find_map(|x| x.label("driver").cloned())
        .unwrap_or_default();
    let gpu = end
        .all("media_gpu_memory_total_bytes")
        .find_map(|x| x.label("gpu_name").cloned())
        .unwrap_or_default();
    let failed: Vec<String> = end
        .all("observer_gpu_errors_total")
        .filter(|x| x.value > 0.0)
        .map(|x| format!("{}={}", x.label("call").map_or("?", |c| c), x.value))
        .collect();
    let report = format!(
        "- `{name}` (`ffmpeg {args} -i clip.mp4`, 1080p H.264, {total} frames in {wall:.1} s): \
         {gpu}, driver {driver}; stream `{stream}` codec `{codec}` hwaccel `{hwaccel}`; \
         frames counted {frames} of {total}; process decoder use max {proc:.2} \
         ({samples} scrapes showed the process on the GPU); GPU decoder use max {dev:.2}; \
         sampling took {dur:.2} ms; NVML calls that failed: {failed}\n",
        args = decoder_args.join(" "),
        total = CLIP_FRAMES * PLAYS,
        wall = wall.as_secs_f64(),
        proc = seen.process_decoder,
        samples = seen.process_samples,
        dev = seen.gpu_decoder,
        dur = seen.sample_ms,
        failed = if failed.is_empty() {
            "none".to_string()
        } else {
            failed.join(", ")
        },
    );
    print!("{report}");
    if let Some(out) = std::env::var_os("OBSERVER_GPU_REPORT_DIR") {
        let out = Path::new(&out);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("report.md"))
            .and_then(|mut f| f.write_all(report.as_bytes()))
            .expect("report.md");
        if let Some(text) = &seen.busiest {
            std::fs::write(out.join(format!("{name}.prom")), text).expect("scrape");
        }
    }

    assert_eq!(
        frames,
        (CLIP_FRAMES * PLAYS) as f64,
        "every frame NVDEC decoded is counted once"
    );
    assert!(
        seen.process_decoder > 0.0,
        "NVML showed no decoder use for pid {p} in {} scrapes; GPU decoder max {}",
        seen.scrapes,
        seen.gpu_decoder
    );
}

/// The most each scrape during the decode showed.
#[derive(Default)]
struct Seen {
    scrapes: u32,
    /// The process's stream decoding with the hardware asked for.
    stream: Option<String>,
    process_decoder: f64,
    process_samples: u32,
    gpu_decoder: f64,
    sample_ms: f64,
    /// The scrape with the most decoder use by the process.
    busiest: Option<String>,
}

impl Seen {
    fn note(&mut self, s: &Scrape, pid: &str, hwaccel: &str) {
        self.scrapes += 1;
        if self.stream.is_none() {
            self.stream = s
                .all("media_stream_info")
                .find(|x| x.has(&[("pid", pid), ("hwaccel", hwaccel)]))
                .and_then(|x| x.label("stream").cloned());
        }
        if let Some(v) = s.value(
            "media_gpu_process_utilization_ratio",
            &[("pid", pid), ("engine", "decoder")],
        ) {
            self.process_samples += 1;
            if v > self.process_decoder || self.busiest.is_none() {
                self.busiest = Some(s.text.clone());
            }
            self.process_decoder = self.process_decoder.max(v);
        }
        let dev = s
            .all("media_gpu_utilization_ratio")
            .filter(|x| x.has(&[("engine", "decoder")]))
            .map(|x| x.value)
            .fold(0.0, f64::max);
        self.gpu_decoder = self.gpu_decoder.max(dev);
        if let Some(d) = s.value("observer_gpu_sample_duration_seconds", &[]) {
            self.sample_ms = self.sample_ms.max(d * 1e3);
        }
    }
}
