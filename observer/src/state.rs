//! What the control loop shares with the HTTP handlers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use crate::{logs::LogRegistry, streams::Registry, tracker::AttachedInfo};

pub struct Shared {
    pub registry: Registry,
    pub logs: LogRegistry,
    pub attached: Vec<AttachedInfo>,
    pub unsupported: BTreeMap<&'static str, usize>,
    pub kernel_counters: HashMap<u32, u64>,
    pub processes: usize,
    pub scans: u64,
    pub ready: bool,
    pub aggregate: bool,
}

pub type SharedState = Arc<Mutex<Shared>>;
