//! `cargo xtask run`: the daemon in the background of a terminal, with `observer top` (its
//! live table of streams and inputs/outputs) in the foreground.

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

fn listen_addr(args: &[String]) -> String {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--listen" {
            if let Some(v) = it.next() {
                return v.clone();
            }
        } else if let Some(v) = a.strip_prefix("--listen=") {
            return v.to_string();
        }
    }
    std::env::var("OBSERVER_LISTEN").unwrap_or_else(|_| "127.0.0.1:9464".into())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Ctrl-C in the terminal reaches the daemon too (same process group); xtask only notes it,
/// waits for the daemon to detach its probes and exit, and then returns. (A handler, not
/// SIG_IGN: an ignored signal would be inherited by the daemon.)
extern "C" fn on_sigint(_: libc::c_int) {}

pub fn run(bin: &Path, args: &[String]) -> anyhow::Result<()> {
    // SAFETY: installs a handler that does nothing, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let addr = listen_addr(args);
    let base = format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"));
    crate::step(&format!("starting {} {}", bin.display(), args.join(" ")));
    let mut child = KillOnDrop(
        Command::new(bin)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let agent = ureq::Agent::new_with_defaults();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!("the daemon exited during start-up ({status}); its log above says why");
        }
        if agent.get(&format!("{base}/readyz")).call().is_ok() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the daemon did not become ready within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("\nobserver is running. Metrics: {base}/metrics   Streams (JSON): {base}/streams");
    eprintln!(
        "Showing `observer top`: start any ffmpeg and it shows up. q (or Ctrl-C) stops both.\n"
    );
    std::thread::sleep(Duration::from_secs(2));
    let status = Command::new(bin)
        .args(["top", "--url", &base])
        .status()
        .context("starting observer top")?;
    if !status.success() {
        eprintln!("observer top ended ({status})");
    }
    eprintln!("stopping the daemon: detaching its probes");
    Ok(())
}
