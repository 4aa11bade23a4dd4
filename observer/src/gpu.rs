//! NVIDIA GPUs through NVML (`nvml-wrapper`, loading the driver's `libnvidia-ml.so.1` at run
//! time): per-GPU engine utilization, memory, temperature, power, clocks and throttle
//! reasons; per-process SM, memory, encoder and decoder use; encoder sessions. Sampled on
//! a thread of its own, so a slow driver call never stalls the daemon. Every NVML call may
//! fail on its own (an older driver lacks an entry point, a GPU does not support a query):
//! that metric is left out and the failure counted, the rest is still reported.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{Clock, EncoderType, TemperatureSensor},
    enums::device::UsedGpuMemory,
};
use nvml_wrapper_sys::bindings::NvmlLib;

/// One GPU's sample.
#[derive(Clone, Debug, Default)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// Engine utilization ratios (0..1) by engine: graphics, memory, encoder, decoder,
    /// jpeg, ofa.
    pub engines: Vec<(&'static str, f64)>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// Clocks in Hz by clock: sm, video.
    pub clocks: Vec<(&'static str, f64)>,
    pub throttle: Option<u64>,
    pub processes: Vec<ProcessSample>,
    pub sessions: Option<Vec<EncoderSession>>,
}

#[derive(Clone, Debug, Default)]
pub struct ProcessSample {
    pub pid: u32,
    /// Ratios by engine: sm, memory, encoder, decoder (absent if NVML had no sample).
    pub engines: Vec<(&'static str, f64)>,
    pub memory_used: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct EncoderSession {
    pub pid: u32,
    pub codec: &'static str,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub latency_s: f64,
}

/// What the last sampling saw.
#[derive(Clone, Debug, Default)]
pub struct GpuState {
    pub available: bool,
    pub driver: String,
    pub gpus: Vec<GpuSample>,
    /// NVML calls that failed since start, by call: what older drivers or GPUs lack.
    pub errors: BTreeMap<&'static str, u64>,
    /// How long the last sampling took.
    pub duration: Duration,
}

pub type SharedGpu = Arc<Mutex<GpuState>>;

/// Throttle reason bits (`nvmlClocksThrottleReasons`), by the names the `reason` label uses.
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// Starts sampling every `interval` on a thread of its own. Without a driver (no GPU, or
/// no NVML library) it logs one line, reports `available = false`, and stops.
pub fn start(library: Option<&str>, interval: Duration) -> SharedGpu {
    let shared: SharedGpu = Arc::new(Mutex::new(GpuState::default()));
    let nvml = match library {
        Some(path) => Nvml::builder().lib_path(OsStr::new(path)).init(),
        None => Nvml::init(),
    };
    let nvml = match nvml {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(error = %e, "no NVIDIA GPU metrics: NVML is not available");
            return shared;
        }
    };
    let driver = nvml.sys_driver_version().unwrap_or_default();
    // The raw binding of the same library, for the JPEG and OFA engines nvml-wrapper does
    // not wrap: each missing entry point fails on its own call.
    // SAFETY: loads the library nvml-wrapper has already loaded and initialized.
    let raw = unsafe { NvmlLib::new(OsStr::new(library.unwrap_or("libnvidia-ml.so.1"))) }.ok();
    tracing::info!(driver = %driver, "NVIDIA GPU metrics from NVML");
    let out = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("gpu-sampler".into())
        .spawn(move || {
            let mut errors = BTreeMap::new();
            // Process samples newer than this (NVML's microsecond clock).
            let mut last_seen = 0u64;
            loop {
                let t0 = std::time::Instant::now();
                let gpus = sample(&nvml, raw.as_ref(), &mut errors, &mut last_seen);
                if let Ok(mut s) = out.lock() {
                    s.available = true;
                    s.driver = driver.clone();
                    s.gpus = gpus;
                    s.errors = errors.clone();
                    s.duration = t0.elapsed();
                }
                std::thread::sleep(interval);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the GPU sampler");
    }
    shared
}

/// A call's value, or `None` with the failure counted under `call`.
fn ok<T>(
    errors: &mut BTreeMap<&'static str, u64>,
    call: &'static str,
    r: Result<T, nvml_wrapper::error::NvmlError>,
) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let n = errors.entry(call).or_insert(0);
            if *n == 0 {
                tracing::debug!(call, error = %e, "NVML call failed; its metric is left out");
            }
            *n += 1;
            None
        }
    }
}

fn sample(
    nvml: &Nvml,
    raw: Option<&NvmlLib>,
    errors: &mut BTreeMap<&'static str, u64>,
    last_seen: &mut u64,
) -> Vec<GpuSample> {
    let count = ok(errors, "device_count", nvml.device_count()).unwrap_or(0);
    let mut newest = *last_seen;
    let gpus = (0..count)
        .filter_map(|i| {
            let d = ok(errors, "device_by_index", nvml.device_by_index(i))?;
            Some(sample_device(i, &d, raw, errors, *last_seen, &mut newest))
        })
        .collect();
    *last_seen = newest;
    gpus
}

fn sample_device(
    index: u32,
    d: &Device,
    raw: Option<&NvmlLib>,
    errors: &mut BTreeMap<&'static str, u64>,
    last_seen: u64,
    newest: &mut u64,
) -> GpuSample {
    let mut g = GpuSample {
        index,
        uuid: ok(errors, "uuid", d.uuid()).unwrap_or_default(),
        name: ok(errors, "name", d.name()).unwrap_or_default(),
        ..GpuSample::default()
    };
    if let Some(u) = ok(errors, "utilization_rates", d.utilization_rates()) {
        g.engines.push(("graphics", f64::from(u.gpu) / 100.0));
        g.engines.push(("memory", f64::from(u.memory) / 100.0));
    }
    if let Some(u) = ok(errors, "encoder_utilization", d.encoder_utilization()) {
        g.engines
            .push(("encoder", f64::from(u.utilization) / 100.0));
    }
    if let Some(u) = ok(errors, "decoder_utilization", d.decoder_utilization()) {
        g.engines
            .push(("decoder", f64::from(u.utilization) / 100.0));
    }
    if let Some(raw) = raw {
        // SAFETY: a live device handle of the same library.
        let handle = unsafe { d.handle() };
        for (engine, call, f) in [
            (
                "jpeg",
                "jpg_utilization",
                raw.nvmlDeviceGetJpgUtilization.as_ref(),
            ),
            (
                "ofa",
                "ofa_utilization",
                raw.nvmlDeviceGetOfaUtilization.as_ref(),
            ),
        ] {
            let got = match f {
                Ok(f) => {
                    let (mut util, mut period) = (0u32, 0u32);
                    // SAFETY: NVML's documented signature; both outputs are ours.
                    match unsafe { f(handle, &mut util, &mut period) } {
                        0 => Ok(util),
                        code => Err(format!("NVML error {code}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match got {
                Ok(u) => g.engines.push((engine, f64::from(u) / 100.0)),
                Err(e) => {
                    let n = errors.entry(call).or_insert(0);
                    if *n == 0 {
                        tracing::debug!(call, error = %e, "NVML call failed; its metric is left out");
                    }
                    *n += 1;
                }
            }
        }
    }
    if let Some(m) = ok(errors, "memory_info", d.memory_info()) {
        g.memory_used = Some(m.used);
        g.memory_total = Some(m.total);
    }
    g.temperature_c = ok(errors, "temperature", d.temperature(TemperatureSensor::Gpu));
    g.power_w = ok(errors, "power_usage", d.power_usage()).map(|mw| f64::from(mw) / 1000.0);
    for (name, clock) in [("sm", Clock::SM), ("video", Clock::Video)] {
        if let Some(mhz) = ok(errors, "clock_info", d.clock_info(clock)) {
            g.clocks.push((name, f64::from(mhz) * 1e6));
        }
    }
    g.throttle = ok(
        errors,
        "current_throttle_reasons",
        d.current_throttle_reasons(),
    )
    .map(|r| r.bits());
    let mut processes: BTreeMap<u32, ProcessSample> = BTreeMap::new();
    // NVML reports "no samples since last_seen" as an error; that is not a failure.
    match d.process_utilization_stats(last_seen) {
        Ok(samples) => {
            for s in samples {
                *newest = (*newest).max(s.timestamp);
                let p = processes.entry(s.pid).or_default();
                p.pid = s.pid;
                p.engines = vec![
                    ("sm", f64::from(s.sm_util) / 100.0),
                    ("memory", f64::from(s.mem_util) / 100.0),
                    ("encoder", f64::from(s.enc_util) / 100.0),
                    ("decoder", f64::from(s.dec_util) / 100.0),
                ];
            }
        }
        Err(nvml_wrapper::error::NvmlError::NotFound) => {}
        Err(e) => {
            ok::<()>(errors, "process_utilization_stats", Err(e));
        }
    }
    if let Some(list) = ok(
        errors,
        "running_compute_processes",
        d.running_compute_processes(),
    ) {
        for info in list {
            let p = processes.entry(info.pid).or_default();
            p.pid = info.pid;
            if let UsedGpuMemory::Used(b) = info.used_gpu_memory {
                p.memory_used = Some(b);
            }
        }
    }
    g.processes = processes.into_values().collect();
    g.sessions = ok(errors, "encoder_sessions", d.encoder_sessions()).map(|list| {
        list.into_iter()
            .map(|s| EncoderSession {
                pid: s.pid,
                codec: match s.codec_type {
                    EncoderType::H264 => "h264",
                    EncoderType::HEVC => "hevc",
                },
                width: s.hres,
                height: s.vres,
                fps: s.average_fps,
                latency_s: f64::from(s.average_latency) / 1e6,
            })
            .collect()
    });
    g
}
