//! `cargo xtask run`: the daemon in the background of a terminal, with `observer top` (its
//! live table of streams and inputs/outputs) in the foreground.

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

fn listen_addr(args: &[String]) -> String {
    flag_value(args, "--listen", "OBSERVER_LISTEN").unwrap_or_else(|| "127.0.0.1:9464".into())
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

/// The value of a daemon flag given as `--flag V` or `--flag=V`, else its environment
/// variable.
fn flag_value(args: &[String], flag: &str, env: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            return Some(v.to_string());
        }
    }
    std::env::var(env).ok()
}

/// Whether a web configuration's text turns TLS on: a `tls_server_config` section naming a
/// certificate (an empty one serves plain HTTP, as in the exporter-toolkit).
fn serves_tls(web_config: &str) -> bool {
    web_config
        .lines()
        .any(|l| l.starts_with("tls_server_config:"))
        && web_config.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("cert_file:") || l.starts_with("cert:")
        })
}

/// The URL `observer health` and `observer top` reach the daemon at: `OBSERVER_URL` if set,
/// else the listen address, over https when the web configuration turns TLS on.
fn daemon_url(args: &[String]) -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("OBSERVER_URL") {
        return Ok(url);
    }
    let addr = listen_addr(args);
    let tls = match flag_value(args, "--web-config-file", "OBSERVER_WEB_CONFIG_FILE") {
        Some(path) => serves_tls(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading the web configuration {path}"))?,
        ),
        None => false,
    };
    Ok(if tls {
        // A certificate names the host, not 0.0.0.0: localhost is what a local one names.
        format!(
            "https://{}",
            addr.replace("0.0.0.0", "localhost")
                .replace("127.0.0.1", "localhost")
        )
    } else {
        format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"))
    })
}

pub fn run(bin: &Path, args: &[String]) -> anyhow::Result<()> {
    // SAFETY: installs a handler that does nothing, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let base = daemon_url(args)?;
    crate::step(&format!("starting {} {}", bin.display(), args.join(" ")));
    let mut child = KillOnDrop(
        Command::new(bin)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let t0 = Instant::now();
    // Asked through the daemon's own client, so a secured daemon is reached with the same
    // OBSERVER_CLIENT_* settings (CA, client certificate, basic auth) that `observer top`
    // uses below.
    let ready = || {
        Command::new(bin)
            .args(["health", "--ready", "--url", &base])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!("the daemon exited during start-up ({status}); its log above says why");
        }
        if ready() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let why = Command::new(bin)
                .args(["health", "--ready", "--url", &base])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                .unwrap_or_default();
            bail!(
                "the daemon did not become ready within a minute ({why}); for a secured \
                 daemon set OBSERVER_CLIENT_CONFIG (or OBSERVER_CLIENT_CA_FILE, \
                 OBSERVER_CLIENT_CERT_FILE, OBSERVER_CLIENT_KEY_FILE, OBSERVER_CLIENT_USERNAME, \
                 OBSERVER_CLIENT_PASSWORD_FILE)"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_follows_the_listen_address_and_the_web_configurations_tls() {
        let dir = std::env::temp_dir().join(format!("xtask-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = dir.join("tls.yml");
        std::fs::write(
            &tls,
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n",
        )
        .unwrap();
        let auth_only = dir.join("auth.yml");
        std::fs::write(
            &auth_only,
            "basic_auth_users:\n  a: b\ntls_server_config: {}\n",
        )
        .unwrap();
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            daemon_url(&args(&["--listen", "0.0.0.0:9464"])).unwrap(),
            "http://127.0.0.1:9464"
        );
        assert_eq!(
            daemon_url(&args(&[
                "--listen=127.0.0.1:9500",
                &format!("--web-config-file={}", tls.display())
            ]))
            .unwrap(),
            "https://localhost:9500"
        );
        assert_eq!(
            daemon_url(&args(&["--web-config-file", auth_only.to_str().unwrap()])).unwrap(),
            "http://127.0.0.1:9464"
        );
        assert!(daemon_url(&args(&["--web-config-file", "/nonexistent.yml"])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
