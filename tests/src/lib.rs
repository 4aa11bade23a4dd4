//! Support for the end-to-end tests: a daemon under test, scrapes of its `/metrics`, real
//! ffmpeg pipelines, and ground truth from ffprobe.
//!
//! These tests load the real kernel programs, so they need root; they fail (never skip
//! silently) without it. Run them with `cargo xtask test`, which builds the daemon and fetches
//! the assets they use.

pub mod media;
pub mod net;
pub mod otlp;
pub mod prom;
pub mod prometheus;
pub mod tls;

use std::{
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use prom::Scrape;

/// Where `cargo xtask test` put the downloaded assets (headers, PyAV, a static ffmpeg).
pub fn assets() -> PathBuf {
    std::env::var_os("OBSERVER_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-assets"))
}

pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load kernel programs and must run as root (cargo xtask test)"
    );
}

/// How long a wait may last, for one that lasts `base` here: longer where the CPU is
/// emulated, by the factor `OBSERVER_TEST_PATIENCE` (the kernel matrix's guests run many
/// times slower, three at once on CI's two cores). Only the bounds that catch a hang scale:
/// the tests wait on counts, never on the clock.
pub fn patience(base: Duration) -> Duration {
    let factor = std::env::var("OBSERVER_TEST_PATIENCE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    base * factor.max(1)
}

pub fn daemon_bin() -> PathBuf {
    let bin = std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/observer"));
    assert!(
        bin.exists(),
        "{} is missing: run the tests through `cargo xtask test`",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A daemon under test, on its own port; stopped with SIGTERM when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    /// How to reach a daemon whose endpoints a web configuration secures (`start_secured`).
    client: Option<observer::client::Client>,
}

impl Daemon {
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_env(args, &[])
    }

    /// Starts a daemon with extra flags and environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::launch(args, env, None)
    }

    /// Starts a daemon whose endpoints a web configuration secures, reached (readiness,
    /// scrapes) at `https://localhost:PORT` with the daemon's own client and `client`'s
    /// settings.
    pub fn start_secured(
        args: &[&str],
        env: &[(&str, &str)],
        client: observer::client::ClientArgs,
    ) -> Daemon {
        Daemon::launch(args, env, Some(client))
    }

    fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        client: Option<observer::client::ClientArgs>,
    ) -> Daemon {
        require_root();
        let port = free_port();
        // Named by test process and a counter, never by port alone: a port comes free when its
        // daemon stops, and a later daemon on it would write into (and then delete) the log of
        // an earlier one that a failing test is about to print.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "observer-test-{}-{n}-{port}.log",
            std::process::id()
        ));
        let logfile = std::fs::File::create(&log).expect("daemon log");
        let child = Command::new(daemon_bin())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--log-level", "observer=debug,info"])
            // Short, so tests see files detached; a test that gives its own wins.
            .args(
                (!args.contains(&"--detach-linger"))
                    .then_some(["--detach-linger", "2s"])
                    .into_iter()
                    .flatten(),
            )
            .args(args)
            .envs(env.iter().copied())
            .stdout(logfile.try_clone().expect("log"))
            .stderr(logfile)
            .spawn()
            .expect("start the daemon");
        let client = client.map(|c| {
            c.client(&format!("https://localhost:{port}"))
                .expect("the test's client settings")
        });
        let mut d = Daemon {
            child: Some(child),
            port,
            log,
            client,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "daemon exited during start-up ({status}):\n{}",
                    d.log_text()
                );
            }
            if d.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return d;
            }
            let limit = patience(Duration::from_secs(30));
            assert!(
                t0.elapsed() < limit,
                "daemon not ready in {} s:\n{}",
                limit.as_secs(),
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Stops the daemon with SIGTERM; returns how it exited and its log.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut c = self.child.take().expect("a running daemon");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().expect("the daemon's exit");
        (status, self.log_text())
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        if let Some(c) = &self.client {
            return c.get(path).ok().map(|a| (a.status, a.body));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut r = agent
            .get(&format!("http://127.0.0.1:{}{path}", self.port))
            .call()
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.body_mut().read_to_string().ok()?))
    }

    pub fn scrape(&self) -> Scrape {
        let (code, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        Scrape::parse(&body)
    }

    /// Scrapes until `f` returns a value; panics with the last scrape and the daemon's log
    /// after `timeout` (stretched by `patience`).
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Scrape) -> Option<T>,
    ) -> T {
        let timeout = patience(timeout);
        let t0 = Instant::now();
        loop {
            let s = self.scrape();
            if let Some(v) = f(&s) {
                return v;
            }
            if t0.elapsed() > timeout {
                panic!(
                    "timed out waiting for {what} (daemon pid {}: {})\n--- last scrape ---\n{}\n\
                     --- daemon log ---\n{}",
                    self.pid(),
                    self.liveness(),
                    s.text,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every file whose path contains one of `parts` is attached. (A file the
    /// daemon has not seen before is attached when a process maps it, which races the
    /// process's first calls: tests start such processes waiting on their input.)
    pub fn wait_attached(&self, parts: &[&str]) {
        self.wait_for(
            &format!("{parts:?} to be attached"),
            Duration::from_secs(30),
            |s| parts.iter().all(|p| s.attached(p)).then_some(()),
        );
    }

    /// Waits until every stream of `pid` has ended (its process exited and the daemon
    /// collected the final counts), and returns the scrape.
    pub fn wait_ended(&self, pid: u32) -> Scrape {
        self.wait_for(
            &format!("the streams of pid {pid} to end"),
            Duration::from_secs(20),
            |s| {
                let up = s
                    .all("media_stream_up")
                    .filter(|x| x.label("pid") == Some(&pid.to_string()))
                    .collect::<Vec<_>>();
                (!up.is_empty() && up.iter().all(|x| x.value == 0.0)).then(|| s.clone())
            },
        )
    }

    /// Whether the daemon still runs, for a failure message: a scrape that stopped changing
    /// reads differently from a daemon that stopped publishing than from one that exited.
    fn liveness(&self) -> String {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) {
            // The state is the field after the command's closing parenthesis.
            Ok(stat) => match stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split(' ').next())
            {
                Some("Z") | None => "exited, not yet reaped".into(),
                Some(state) => format!("running, state {state}"),
            },
            Err(_) => "not running".into(),
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs a command to completion; panics with its stderr if it fails. Returns (pid, stderr).
pub fn run(cmd: &mut Command) -> (u32, String) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    (pid, stderr)
}

/// A fresh directory for one test's files.
/// `tests/c/streams.c` (N paced decoders in one process that prints its frame count), built
/// against the system FFmpeg.
pub fn streams_program(dir: &Path) -> PathBuf {
    let exe = dir.join("streams");
    run(Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("c/streams.c"))
        .args(["-lavformat", "-lavcodec", "-lavutil"]));
    exe
}

pub fn tempdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("observer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

/// A test's scratch directory: removed when the test passes, kept (and named) when it
/// fails so its logs and media can be read.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The static ffmpeg 9 build `cargo xtask test` fetched (imageio-ffmpeg's).
pub fn static_ffmpeg() -> PathBuf {
    let bin = assets().join("static-ffmpeg").join("ffmpeg");
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Runs the ffmpeg `bin` on `input` (NUT) fed on its stdin, with `args` before the input,
/// decoding to the null output; returns its pid and output. A static build the daemon has
/// not attached yet (any `bin` given as a path) is attached when its process maps it: the
/// input is written once the daemon says it is, so the process waits for its container's
/// header meanwhile, before it opens or probes anything.
pub fn decode_piped_nut(
    d: &Daemon,
    bin: &Path,
    args: &[&str],
    input: &[u8],
) -> (u32, std::process::Output) {
    let mut child = Command::new(bin)
        .args(["-nostdin", "-hide_banner"])
        .args(args)
        .args(["-f", "nut", "-i", "pipe:0", "-f", "null", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let pid = child.id();
    if bin.is_absolute() {
        d.wait_attached(&[&bin.to_string_lossy()]);
    }
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, input).expect("write the input");
    drop(stdin);
    (pid, child.wait_with_output().expect("ffmpeg's exit"))
}

/// FFmpeg 4.3 (libavcodec 58): Debian bullseye's ffmpeg with its libraries, which
/// `cargo xtask test` unpacked under the assets, with quiet, non-interactive defaults.
pub fn ffmpeg4() -> Command {
    let root = assets().join("ffmpeg4");
    let bin = root.join("usr/bin/ffmpeg");
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask test`",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env("LD_LIBRARY_PATH", root.join("usr/lib/x86_64-linux-gnu"))
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]);
    c
}

/// `ffmpeg` with quiet, non-interactive defaults.
pub fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]);
    c
}

/// Builds the tests' stand-in NVML library (`tests/c/nvml_standin.c`) into `dir`; `older`
/// leaves out the encoder-session and JPEG/OFA entry points, as older drivers do. Its values
/// come from the script file named by `OBSERVER_NVML_STANDIN`, re-read on every call.
pub fn nvml_standin(dir: &Path, older: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/nvml_standin.c");
    let out = dir.join(if older {
        "libnvml-old.so"
    } else {
        "libnvml.so"
    });
    let mut gcc = Command::new("gcc");
    gcc.args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(&src);
    if older {
        gcc.arg("-DOLDER_DRIVER");
    }
    run(&mut gcc);
    out
}

/// A cgroup laid out as containerd lays out a Kubernetes container's (systemd driver), in
/// whichever hierarchy this machine can put a process in: cgroup v2, or v1's `pids`.
pub struct ContainerCgroup {
    dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    pub fn new(id: &str, pod_uid: &str) -> ContainerCgroup {
        let root = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .iter()
        .map(Path::new)
        .find(|r| r.join("cgroup.procs").exists())
        .expect("a cgroup hierarchy");
        let uid_ = pod_uid.replace('-', "_");
        let mut dirs = Vec::new();
        let mut at = root.to_path_buf();
        for seg in [
            "kubepods.slice".to_string(),
            "kubepods-burstable.slice".to_string(),
            format!("kubepods-burstable-pod{uid_}.slice"),
            format!("cri-containerd-{id}.scope"),
        ] {
            at = at.join(seg);
            std::fs::create_dir_all(&at).expect("make the cgroup");
            dirs.push(at.clone());
        }
        ContainerCgroup { dirs }
    }

    /// A command that joins the container's cgroup, then becomes `ffmpeg args`.
    pub fn ffmpeg(&self, args: &[&str]) -> Command {
        let procs = self.dirs.last().unwrap().join("cgroup.procs");
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {} && exec ffmpeg \"$@\"",
                procs.display()
            ))
            .arg("sh")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            .args(args);
        c
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}
