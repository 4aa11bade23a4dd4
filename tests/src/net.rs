//! A private network for transport tests: two network namespaces joined by a veth pair, a
//! sender in one and a receiver in the other, and nftables in the receiver's namespace to
//! count and drop packets with exact counters.

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Link {
    pub tx: String,
    pub rx: String,
    /// The receiver's address, as the sender reaches it.
    pub rx_addr: String,
    /// The sender's end of the veth pair.
    pub tx_dev: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    /// A fresh pair of namespaces, unique per test process and call.
    pub fn new() -> Link {
        crate::require_root();
        let n = std::process::id() % 10_000 * 16 + NEXT.fetch_add(1, Ordering::Relaxed) % 16;
        let (tx, rx) = (format!("obs{n}tx"), format!("obs{n}rx"));
        let subnet = format!("10.{}.{}", 100 + n % 100, n / 100 % 250);
        let (vtx, vrx) = (format!("v{n}t"), format!("v{n}r"));
        for ns in [&tx, &rx] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "link", "add", &vtx, "netns", &tx, "type", "veth", "peer", "name", &vrx, "netns",
            &rx,
        ]);
        sh(&[
            "ip",
            "-n",
            &tx,
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &vtx,
        ]);
        sh(&[
            "ip",
            "-n",
            &rx,
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            &vrx,
        ]);
        sh(&["ip", "-n", &tx, "link", "set", &vtx, "up"]);
        sh(&["ip", "-n", &rx, "link", "set", &vrx, "up"]);
        Link {
            tx,
            rx,
            rx_addr: format!("{subnet}.2"),
            tx_dev: vtx,
        }
    }

    /// A command run inside namespace `ns`.
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Loads an nftables ruleset, or runs nft commands (text), in the receiver's namespace.
    pub fn nft_rx(&self, ruleset: &str) {
        let mut child = Link::exec(&self.rx, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f: {ruleset}");
    }

    /// The (packets, bytes) of the named counter object in the receiver's `inet obs` table.
    pub fn counter(&self, name: &str) -> (u64, u64) {
        let out = Link::exec(&self.rx, "nft")
            .args(["list", "counter", "inet", "obs", name])
            .output()
            .expect("nft list counter");
        let text = String::from_utf8_lossy(&out.stdout);
        let num = |key: &str| -> u64 {
            let i = text
                .find(&format!("{key} "))
                .unwrap_or_else(|| panic!("no {key} in {text}"));
            text[i + key.len() + 1..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad {key} in {text}"))
        };
        (num("packets"), num("bytes"))
    }

    /// The states (`ss`'s words: ESTAB, FIN-WAIT-1, TIME-WAIT, ...) of the TCP sockets in
    /// namespace `ns` whose peer port is `port`.
    pub fn tcp_states(ns: &str, port: u16) -> Vec<String> {
        Link::ss(ns, &["-Htan", &format!("dport = :{port}")])
    }

    /// Whether a TCP socket in namespace `ns` listens on `port`.
    pub fn tcp_listening(ns: &str, port: u16) -> bool {
        !Link::ss(ns, &["-Htln", &format!("sport = :{port}")]).is_empty()
    }

    /// The first column (the state) of each socket `ss` lists with `args` in namespace `ns`.
    fn ss(ns: &str, args: &[&str]) -> Vec<String> {
        let out = Link::exec(ns, "ss").args(args).output().expect("ss");
        assert!(
            out.status.success(),
            "ss: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// A value of /proc/net/snmp (`Tcp`, `RetransSegs`) inside namespace `ns`.
    pub fn snmp(ns: &str, group: &str, field: &str) -> u64 {
        let out = Link::exec(ns, "cat")
            .arg("/proc/net/snmp")
            .output()
            .expect("snmp");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == field)
            .unwrap_or_else(|| panic!("no {group} {field}"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.tx, &self.rx] {
            // What a failed test left running in the namespace (a sender looping until
            // stopped, a receiver waiting for data) would outlive it: deleting a namespace
            // only unmounts its name.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: plain kill(2) on a process in the test's own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
