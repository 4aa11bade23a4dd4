//! FFmpeg's log messages as the kernel counted them: per process, logging context, level and
//! message template. Kept like streams: final counts of ended processes stay for the grace
//! period.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use observer_common::log::{LogEntry, LogKey, TEMPLATE_LEN};

use crate::{kernel::Kernel, procfs, streams, tracker::Tracker};

#[derive(Clone, Debug)]
pub struct LogRecord {
    pub key: LogKey,
    pub count: u64,
    /// The format string with its trailing newline removed; control characters as spaces.
    pub template: String,
    pub process: String,
    pub ended: Option<Instant>,
}

pub struct LogRegistry {
    records: HashMap<LogKey, LogRecord>,
    /// Templates the daemon read from processes itself, by (pid, address).
    templates: HashMap<(u32, u64), String>,
    grace: Duration,
}

/// The label form of a template.
fn clean(raw: &str) -> String {
    raw.trim_end_matches(['\n', '\r'])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl LogRegistry {
    pub fn new(grace: Duration) -> Self {
        LogRegistry {
            records: HashMap::new(),
            templates: HashMap::new(),
            grace,
        }
    }

    /// Reads a template the kernel could not, while its process surely runs (it is logging).
    pub fn resolve_template(&mut self, tgid: u32, addr: u64) {
        if self.templates.len() >= 65536 {
            self.templates.clear();
        }
        if let Some(t) = procfs::read_template(tgid, addr, TEMPLATE_LEN) {
            self.templates.insert((tgid, addr), t);
        }
    }

    fn template(&self, k: &LogKey, e: &LogEntry) -> Option<String> {
        if e.template[0] != 0 {
            return Some(streams::cstr(&e.template));
        }
        self.templates
            .get(&(k.tgid, k.fmt))
            .cloned()
            .or_else(|| procfs::read_template(k.tgid, k.fmt, TEMPLATE_LEN))
    }

    pub fn collect(&mut self, kernel: &mut Kernel, tracker: &Tracker) {
        let now = Instant::now();
        let mut processes = streams::Liveness::default();
        for (k, e) in kernel.log_entries() {
            let alive = processes.alive(k.tgid, e.first_ns);
            if !alive {
                kernel.remove_log(&k);
            }
            match self.records.get_mut(&k) {
                Some(r) => {
                    r.count = e.count;
                    if !alive {
                        r.ended.get_or_insert(now);
                    }
                }
                None => {
                    // A template that cannot be read at all is not worth a series.
                    let Some(template) = self.template(&k, &e) else {
                        continue;
                    };
                    let process = tracker
                        .process(k.tgid)
                        .map(|p| p.comm.clone())
                        .or_else(|| procfs::comm(k.tgid))
                        .unwrap_or_default();
                    self.records.insert(
                        k,
                        LogRecord {
                            key: k,
                            count: e.count,
                            template: clean(&template),
                            process,
                            ended: (!alive).then_some(now),
                        },
                    );
                }
            }
        }
        let grace = self.grace;
        self.records
            .retain(|_, r| r.ended.is_none_or(|t| now.duration_since(t) < grace));
        let live: std::collections::HashSet<u32> = self
            .records
            .values()
            .filter(|r| r.ended.is_none())
            .map(|r| r.key.tgid)
            .collect();
        self.templates.retain(|(tgid, _), _| live.contains(tgid));
    }

    pub fn records(&self) -> impl Iterator<Item = &LogRecord> {
        self.records.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_one_line_labels() {
        assert_eq!(
            clean("Continuity check failed for pid %d expected %d got %d\n"),
            "Continuity check failed for pid %d expected %d got %d"
        );
        assert_eq!(clean("a\tb\r\n"), "a b");
    }
}
