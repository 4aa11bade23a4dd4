//! What the control loop shares with the HTTP handlers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use crate::{
    io::IoRegistry,
    kernel::{Features, IoProbes},
    logs::LogRegistry,
    streams::Registry,
    tracker::AttachedInfo,
};

pub struct Shared {
    pub registry: Registry,
    pub logs: LogRegistry,
    pub ios: IoRegistry,
    /// Which input/output probes loaded.
    pub io_probes: IoProbes,
    /// Each kernel-dependent job and why it does not run here, if it does not.
    pub features: Features,
    /// The running kernel's release (`uname -r`).
    pub kernel_release: String,
    /// Processes held until the file they mapped was probed, and how long in all.
    pub holds: u64,
    pub held_seconds: f64,
    /// Names of the kernel's drop reasons, by number.
    pub drop_reasons: HashMap<u32, String>,
    pub stall_after: std::time::Duration,
    /// NVIDIA GPUs, sampled on a thread of their own.
    pub gpu: crate::gpu::SharedGpu,
    pub attached: Vec<AttachedInfo>,
    pub unsupported: BTreeMap<&'static str, usize>,
    /// Inspections of mapped files cut short, by reason (`tracker::Skip`).
    pub skipped: BTreeMap<&'static str, u64>,
    pub kernel_counters: HashMap<u32, u64>,
    /// Entries in the kernel's io maps after the last collection: ios, descriptors, sockets.
    pub io_map_entries: (usize, usize, usize),
    pub processes: usize,
    pub scans: u64,
    pub ready: bool,
    pub aggregate: bool,
    /// This node's pods, when on Kubernetes.
    pub pods: Option<crate::kubernetes::PodIndex>,
    /// OTLP export counts, when exporting.
    pub otlp: Option<Arc<crate::otlp::Stats>>,
    /// Web configuration reloads and refused requests, with `--web-config-file`.
    pub web: Option<Arc<crate::web::Stats>>,
}

pub type SharedState = Arc<Mutex<Shared>>;
