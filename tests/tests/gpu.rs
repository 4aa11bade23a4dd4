//! NVIDIA GPU metrics. This machine has no GPU, so the tests build a stand-in NVML library
//! (`tests/c/nvml_standin.c`: the entry points observer calls, with NVML's structs, values
//! scripted in a file) and point the daemon at it with `--nvml-library`: nvml-wrapper loads
//! it exactly as it loads the driver's `libnvidia-ml.so.1`.

use std::{path::PathBuf, process::Command, time::Duration};

use observer_tests::{
    Daemon, decode_piped_nut, ffmpeg, nvml_standin, prom::Scrape, run, static_ffmpeg, tempdir,
};

const SECS: Duration = Duration::from_secs(20);

fn gpu_labels<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![
        ("gpu", "0"),
        ("gpu_uuid", "GPU-5f1b2c3d-0000-4000-8000-000000000001"),
        ("gpu_name", "NVIDIA H200 (stand-in)"),
    ];
    l.extend_from_slice(extra);
    l
}

#[test]
fn every_value_nvml_reports_is_exported_and_joined_to_the_process_and_stream() {
    let dir = tempdir("gpu");
    let lib = nvml_standin(&dir, false);
    let script = dir.join("nvml.txt");
    // A real encode that runs a while: its pid goes into NVML's process and session lists.
    let mut enc = ffmpeg()
        .args([
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30:duration=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-f",
            "null",
            "-",
        ])
        .spawn()
        .unwrap();
    let pid = enc.id();
    std::fs::write(
        &script,
        format!(
            "devices 1\ndriver 570.86.15\n\
             dev 0 name NVIDIA H200 (stand-in)\n\
             dev 0 uuid GPU-5f1b2c3d-0000-4000-8000-000000000001\n\
             dev 0 util_gpu 37\ndev 0 util_mem 12\ndev 0 enc 55\ndev 0 dec 81\n\
             dev 0 jpg 9\ndev 0 ofa 4\n\
             dev 0 mem_total 150754820096\ndev 0 mem_used 2147483648\n\
             dev 0 temp 64\ndev 0 power_mw 123456\n\
             dev 0 clock_sm 1980\ndev 0 clock_video 1755\ndev 0 throttle 5\n\
             proc 0 {pid} 20 5 33 0 524288000\n\
             session 0 1 {pid} 0 320 240 30 2500\n"
        ),
    )
    .unwrap();
    let d = Daemon::start_env(
        &["--nvml-library", lib.to_str().unwrap()],
        &[("OBSERVER_NVML_STANDIN", script.to_str().unwrap())],
    );
    let p = pid.to_string();
    let s: Scrape = d.wait_for("the encoder stream and the GPU's view of it", SECS, |s| {
        let stream = s
            .one(
                "media_frames_total",
                &[("pid", &p), ("direction", "encode"), ("codec", "libx264")],
            )?
            .label("stream")?
            .clone();
        let session = s.one(
            "media_gpu_encoder_session_fps",
            &gpu_labels(&[("pid", &p), ("stream", &stream)]),
        )?;
        (session.value == 30.0).then(|| s.clone())
    });
    let _ = enc.kill();
    let _ = enc.wait();
    assert_eq!(s.value("observer_gpu_available", &[]), Some(1.0));
    // A software encoder given no hardware device.
    assert_eq!(
        s.one(
            "media_stream_info",
            &[("pid", &p), ("codec", "libx264"), ("hwaccel", "none")]
        )
        .map(|x| x.value),
        Some(1.0)
    );
    assert_eq!(
        s.value("observer_gpu_driver_info", &[("driver", "570.86.15")]),
        Some(1.0)
    );
    for (engine, v) in [
        ("graphics", 0.37),
        ("memory", 0.12),
        ("encoder", 0.55),
        ("decoder", 0.81),
        ("jpeg", 0.09),
        ("ofa", 0.04),
    ] {
        assert_eq!(
            s.value(
                "media_gpu_utilization_ratio",
                &gpu_labels(&[("engine", engine)])
            ),
            Some(v),
            "{engine}"
        );
    }
    let one = |name: &str, extra: &[(&str, &str)]| s.value(name, &gpu_labels(extra));
    assert_eq!(
        one("media_gpu_memory_total_bytes", &[]),
        Some(150754820096.0)
    );
    assert_eq!(one("media_gpu_memory_used_bytes", &[]), Some(2147483648.0));
    assert_eq!(one("media_gpu_temperature_celsius", &[]), Some(64.0));
    assert_eq!(one("media_gpu_power_watts", &[]), Some(123.456));
    assert_eq!(
        one("media_gpu_clock_hertz", &[("clock", "sm")]),
        Some(1.98e9)
    );
    assert_eq!(
        one("media_gpu_clock_hertz", &[("clock", "video")]),
        Some(1.755e9)
    );
    for (reason, v) in [
        ("gpu_idle", 1.0),
        ("sw_power_cap", 1.0),
        ("hw_slowdown", 0.0),
    ] {
        assert_eq!(
            one("media_gpu_throttle_reason", &[("reason", reason)]),
            Some(v),
            "{reason}"
        );
    }
    for (engine, v) in [
        ("sm", 0.2),
        ("memory", 0.05),
        ("encoder", 0.33),
        ("decoder", 0.0),
    ] {
        assert_eq!(
            one(
                "media_gpu_process_utilization_ratio",
                &[("pid", &p), ("process", "ffmpeg"), ("engine", engine)]
            ),
            Some(v),
            "{engine}"
        );
    }
    assert_eq!(
        one("media_gpu_process_memory_used_bytes", &[("pid", &p)]),
        Some(524288000.0)
    );
    assert_eq!(one("media_gpu_encoder_sessions", &[]), Some(1.0));
    let latency = s
        .one(
            "media_gpu_encoder_session_latency_seconds",
            &gpu_labels(&[("pid", &p), ("codec", "h264"), ("width", "320")]),
        )
        .expect("the session's latency");
    assert_eq!(latency.value, 0.0025);
}

#[test]
fn an_older_driver_without_an_entry_point_loses_that_metric_only() {
    let dir = tempdir("gpu-old");
    let lib = nvml_standin(&dir, true);
    let script = dir.join("nvml.txt");
    std::fs::write(
        &script,
        "devices 1\ndriver 450.80.02\ndev 0 name NVIDIA T4 (stand-in)\ndev 0 uuid GPU-1\n\
         dev 0 util_gpu 7\ndev 0 util_mem 3\ndev 0 enc 0\ndev 0 dec 44\n",
    )
    .unwrap();
    let d = Daemon::start_env(
        &[
            "--nvml-library",
            lib.to_str().unwrap(),
            "--gpu-interval",
            "200ms",
        ],
        &[("OBSERVER_NVML_STANDIN", script.to_str().unwrap())],
    );
    let s = d.wait_for("a GPU sample", SECS, |s| {
        s.value("media_gpu_utilization_ratio", &[("engine", "decoder")])
            .map(|_| s.clone())
    });
    assert_eq!(
        s.value("media_gpu_utilization_ratio", &[("engine", "decoder")]),
        Some(0.44)
    );
    assert!(s.all("media_gpu_encoder_sessions").next().is_none());
    assert!(
        s.value("media_gpu_utilization_ratio", &[("engine", "jpeg")])
            .is_none()
    );
    assert!(
        s.value("observer_gpu_errors_total", &[("call", "jpg_utilization")])
            .unwrap()
            >= 1.0
    );
    assert!(
        s.value("observer_gpu_errors_total", &[("call", "encoder_sessions")])
            .unwrap()
            >= 1.0
    );
    // Values the script leaves out (temperature, power...) are errors of their own calls.
    assert!(
        s.value("observer_gpu_errors_total", &[("call", "temperature")])
            .unwrap()
            >= 1.0
    );
    assert!(s.all("media_gpu_temperature_celsius").next().is_none());
}

#[test]
fn without_a_driver_the_daemon_runs_and_says_so() {
    let d = Daemon::start(&["--nvml-library", "/nonexistent/libnvidia-ml.so.1"]);
    let s = d.scrape();
    assert_eq!(s.value("observer_gpu_available", &[]), Some(0.0));
    assert!(s.all("media_gpu_utilization_ratio").next().is_none());
    assert!(d.log_text().contains("no NVIDIA GPU metrics"));
    // Still counting what it counts without a GPU.
    let (pid, _) = run(ffmpeg().args([
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10:duration=1",
        "-f",
        "null",
        "-",
    ]));
    d.wait_ended(pid);
}

/// The `hwaccel` label from the hardware device a decoder is given (`-hwaccel cuda` on a GPU
/// node), read at open through the context's `hw_device_ctx`, on two majors of a real
/// ffmpeg: the system's 5.1 and the static 9 build. Vulkan on Mesa's software device
/// (lavapipe) is a hardware device type any machine can create; FFmpeg 5.1 has no Vulkan
/// decoding and lavapipe no video queue, so both decode in software after all: the label
/// says what the context was given, and the frame count that the stream is the real one.
#[test]
fn a_decoder_given_a_hardware_device_is_labelled_with_its_type() {
    let dir = tempdir("hwdevice");
    let input = dir.join("in.nut");
    run(ffmpeg()
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args([
            "-frames:v",
            "60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-f",
            "nut",
        ])
        .arg(&input));
    let input = std::fs::read(&input).unwrap();
    let d = Daemon::start(&[]);
    for bin in [PathBuf::from("ffmpeg"), static_ffmpeg()] {
        let version = String::from_utf8(
            Command::new(&bin)
                .args(["-hide_banner", "-version"])
                .output()
                .expect("ffmpeg -version")
                .stdout,
        )
        .unwrap();
        let major = version
            .lines()
            .find_map(|l| l.strip_prefix("libavcodec"))
            .and_then(|v| v.trim().split('.').next())
            .expect("libavcodec's version")
            .trim()
            .to_string();
        let (pid, out) = decode_piped_nut(
            &d,
            &bin,
            &[
                "-loglevel",
                "error",
                "-init_hw_device",
                "vulkan=vk:0",
                "-hwaccel",
                "vulkan",
                "-hwaccel_device",
                "vk",
            ],
            &input,
        );
        assert!(
            out.status.success(),
            "{} -hwaccel vulkan (Mesa's lavapipe): {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let s = d.wait_ended(pid);
        let pid = pid.to_string();
        let l = [
            ("pid", pid.as_str()),
            ("direction", "decode"),
            ("codec", "h264"),
        ];
        let info = s
            .one("media_stream_info", &l)
            .unwrap_or_else(|| panic!("no decode stream of {}:\n{}", bin.display(), s.text));
        assert_eq!(
            info.label("hwaccel").map(String::as_str),
            Some("vulkan"),
            "{major}"
        );
        assert_eq!(info.label("libavcodec"), Some(&major));
        assert_eq!(s.value("media_frames_total", &l), Some(60.0), "{major}");
    }
}
