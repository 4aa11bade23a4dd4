//! Inputs and outputs over a real network: two namespaces joined by a veth pair, a real
//! ffmpeg sender and receiver, nftables dropping packets with exact counters. Every number
//! observer reports is checked against a count observer did not make: nftables' counters,
//! FFmpeg's own log, the kernel's per-socket and per-namespace counters, ffprobe, the files
//! on disk.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use observer_tests::{
    Daemon, ffmpeg,
    media::fixture,
    net::Link,
    patience,
    prom::{Sample, Scrape},
    run, tempdir,
};

/// Six seconds of 640x360 H.264 in MPEG-TS at 1.5 Mbit/s: about 1,000 datagrams of 1316 bytes.
fn ingest_ts() -> PathBuf {
    fixture(
        "ingest.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=6",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "1500k",
            "-g",
            "25",
            "-f",
            "mpegts",
            "{out}",
        ],
    )
}

/// IPv4 and UDP headers: what nftables counts in a datagram beyond its payload.
const UDP_OVERHEAD: u64 = 28;
/// The bound of every wait here; `patience` stretches it in the kernel matrix's guests.
const SECS: Duration = Duration::from_secs(30);

/// An ffmpeg in namespace `ns`, its stderr in `log`.
fn spawn_ffmpeg(ns: &str, args: &[&str], log: &std::path::Path) -> Child {
    // The senders' stream is made before any receiver starts its timeout: making it takes
    // seconds where the CPU is emulated (the kernel matrix's virtual machines).
    ingest_ts();
    Link::exec(ns, "ffmpeg")
        .args(["-nostdin", "-hide_banner"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("ffmpeg")
}

/// A receiver in the receiving namespace that copies `url` to nowhere.
fn receive(link: &Link, before: &[&str], url: &str, log: &std::path::Path) -> Child {
    let mut args = before.to_vec();
    args.extend(["-i", url, "-c", "copy", "-f", "null", "-"]);
    spawn_ffmpeg(&link.rx, &args, log)
}

/// A sender in the sending namespace streaming the ingest file once, in real time.
fn send(link: &Link, url: &str, format: &str) -> Child {
    send_from(link, &[], url, format)
}

/// A sender as `send`, with `before` given ahead of its input (`-stream_loop -1`: until
/// stopped).
fn send_from(link: &Link, before: &[&str], url: &str, format: &str) -> Child {
    let input = ingest_ts();
    let dir = tempdir("tx");
    let mut args = vec!["-loglevel", "error", "-re"];
    args.extend(before);
    args.extend([
        "-i",
        input.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        format,
        url,
    ]);
    spawn_ffmpeg(
        &link.tx,
        &args,
        &dir.join(format!("tx-{}.log", std::process::id())),
    )
}

/// The series of `name` for the io of `pid` in `direction`.
fn io_sample<'a>(s: &'a Scrape, name: &str, pid: u32, direction: &str) -> Option<&'a Sample> {
    let p = pid.to_string();
    s.all(name)
        .find(|x| x.has(&[("pid", &p), ("direction", direction)]))
}

fn io_value(s: &Scrape, name: &str, pid: u32, direction: &str) -> Option<f64> {
    io_sample(s, name, pid, direction).map(|x| x.value)
}

fn io_label(s: &Scrape, pid: u32, direction: &str) -> String {
    io_sample(s, "media_io_info", pid, direction)
        .and_then(|x| x.label("io").cloned())
        .unwrap_or_else(|| panic!("no {direction} io for {pid}"))
}

/// The pid of the ffprobe process that read `input` (Command::output hides it).
fn probe_pid(d: &Daemon, input: &std::path::Path) -> u32 {
    let url = input.to_str().unwrap();
    d.wait_for("ffprobe's input", SECS, |s| {
        s.all("media_io_info")
            .find(|x| {
                x.label("process").map(String::as_str) == Some("ffprobe")
                    && x.label("url").map(String::as_str) == Some(url)
            })
            .and_then(|x| x.label("pid")?.parse().ok())
    })
}

/// Waits until every io of `pid` has ended and returns the scrape.
fn wait_io_ended(d: &Daemon, pid: u32) -> Scrape {
    let p = pid.to_string();
    d.wait_for(&format!("the ios of {pid} to end"), SECS, |s| {
        let up: Vec<_> = s
            .all("media_io_up")
            .filter(|x| x.label("pid") == Some(&p))
            .collect();
        (!up.is_empty() && up.iter().all(|x| x.value == 0.0)).then(|| s.clone())
    })
}

fn wait_exit(child: &mut Child, within: Duration) {
    let within = patience(within);
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < within,
            "process {} did not end: {}",
            child.id(),
            std::fs::read_to_string(format!("/proc/{}/cmdline", child.id()))
                .unwrap_or_default()
                .replace('\0', " ")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child we started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn udp_mpegts_bytes_datagrams_and_continuity_match_the_network_and_ffmpeg() {
    let link = Link::new();
    // FFmpeg judges a PID's continuity once it has opened a filter for it (after the PAT
    // and PMT, in the first datagrams); the kernel judges every PID from its first packet.
    // So the first 300 KB (1.4 s of the 6 s stream) pass, then about eleven datagrams drop
    // (the quota's bytes: 1,344-byte datagrams, 8% at random), early enough that the stream
    // has datagrams to spare. Set by bytes, not by the clock: an emulated CPU is slow to show
    // the receiver's first reads.
    link.nft_rx(
        "table inet obs {
           counter dropped {}
           counter passed {}
           quota warmup { until 300000 bytes }
           chain input {
             type filter hook input priority 0;
             udp dport 5000 quota name warmup counter name passed accept
             udp dport 5000 numgen random mod 100 < 8 quota until 14784 bytes counter name dropped drop
             udp dport 5000 counter name passed
           }
         }",
    );
    let d = Daemon::start(&[]);
    let dir = tempdir("udp-rx");
    let rx_log = dir.join("rx.log");
    // Debug level: FFmpeg prints its "Continuity check failed" messages only there.
    // "repeat": two equal messages in a row (same PID, expected and got) must stay two
    // lines, not one and a "Last message repeated" line.
    let mut rx = spawn_ffmpeg(
        &link.rx,
        &[
            "-loglevel",
            "repeat+debug",
            // Ends 5 s after the stream does; as long, before its first datagram, for a
            // sender slow to start (an emulated CPU).
            "-timeout",
            "5000000",
            "-i",
            "udp://0.0.0.0:5000?overrun_nonfatal=1",
            "-f",
            "null",
            "-",
        ],
        &rx_log,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut tx = send(
        &link,
        &format!("udp://{}:5000?pkt_size=1316", link.rx_addr),
        "mpegts",
    );
    let tx_pid = tx.id();
    let rx_pid = rx.id();
    wait_exit(&mut tx, SECS);
    wait_exit(&mut rx, SECS);
    let (passed, passed_bytes) = link.counter("passed");
    let (dropped, dropped_bytes) = link.counter("dropped");
    assert!(dropped >= 10, "the loss should show: {dropped}");
    let log = std::fs::read_to_string(&rx_log).unwrap();
    let truth = log.matches("Continuity check failed").count() as f64;
    assert!(truth > 0.0);

    let s = d.wait_for("the receiver's final counts", SECS, |s| {
        let up = io_value(s, "media_io_up", rx_pid, "input")?;
        (up == 0.0).then(|| s.clone())
    });
    let v = |name| io_value(&s, name, rx_pid, "input").unwrap_or(-1.0);
    assert_eq!(v("media_io_mpegts_continuity_errors_total"), truth);
    let read = |name| {
        s.value(
            name,
            &[
                ("pid", &rx_pid.to_string()),
                ("direction", "input"),
                ("op", "read"),
            ],
        )
    };
    assert_eq!(read("media_io_datagrams_total"), Some(passed as f64));
    assert_eq!(
        read("media_io_bytes_total"),
        Some((passed_bytes - UDP_OVERHEAD * passed) as f64)
    );
    assert!(v("media_io_corrupt_packets_total") > 0.0);
    // What the sender wrote is what arrived plus what nftables dropped.
    let sent = s
        .value(
            "media_io_bytes_total",
            &[
                ("pid", &tx_pid.to_string()),
                ("direction", "output"),
                ("op", "write"),
            ],
        )
        .unwrap();
    assert_eq!(
        sent,
        (passed_bytes + dropped_bytes - UDP_OVERHEAD * (passed + dropped)) as f64
    );
    let info = io_sample(&s, "media_io_info", rx_pid, "input").unwrap();
    assert_eq!(info.label("protocol").map(String::as_str), Some("udp"));
    // The decoder is fed by this input, and FFmpeg's continuity messages land on it.
    let input = io_label(&s, rx_pid, "input");
    let decoder = s
        .one(
            "media_stream_info",
            &[
                ("pid", &rx_pid.to_string()),
                ("direction", "decode"),
                ("codec", "h264"),
            ],
        )
        .expect("the decoder");
    assert_eq!(decoder.label("io"), Some(&input));
    let logged = s.sum(
        "media_log_messages_total",
        &[
            ("pid", &rx_pid.to_string()),
            ("io", &input),
            (
                "template",
                "Continuity check failed for pid %d expected %d got %d",
            ),
        ],
    );
    assert_eq!(logged, truth);
}

#[test]
fn rtp_lost_packets_equal_the_nftables_drop_count() {
    let link = Link::new();
    // FFmpeg's RTP demuxer reads its first packet on a throwaway socket and opens the real one
    // after, milliseconds later; a loss shows only in a later packet's sequence number. So the
    // first 300 KB (1.6 s of the 6 s stream) pass, then about eleven packets drop (the quota's
    // bytes: 1,356-byte packets, 5% at random), and the rest of the stream shows each loss.
    // Set by bytes, not by the clock: an emulated CPU is slow to start the receiver and the
    // daemon to show its counts.
    link.nft_rx(
        "table inet obs {
           counter dropped {}
           quota warmup { until 300000 bytes }
           chain input {
             type filter hook input priority 0;
             udp dport 5004 quota name warmup accept
             udp dport 5004 numgen random mod 100 < 5 quota until 15000 bytes counter name dropped drop
           }
         }",
    );
    let d = Daemon::start(&[]);
    let dir = tempdir("rtp-rx");
    let mut rx = receive(
        &link,
        &["-loglevel", "error"],
        "rtp://0.0.0.0:5004",
        &dir.join("rx.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut tx = send(&link, &format!("rtp://{}:5004", link.rx_addr), "rtp_mpegts");
    let rx_pid = rx.id();
    wait_exit(&mut tx, SECS);
    std::thread::sleep(Duration::from_secs(1));
    // A receiver starved of CPU (emulated, beside other guests) can also lose datagrams to
    // its socket's full buffer: the kernel's own count, read before the socket closes.
    let overflowed = udp_socket_drops(rx_pid, 5004).unwrap_or(0);
    signal(rx_pid, libc::SIGINT);
    wait_exit(&mut rx, SECS);
    let (dropped, _) = link.counter("dropped");
    assert!(dropped > 0);
    let s = d.wait_for("the receiver's final counts", SECS, |s| {
        (io_value(s, "media_io_up", rx_pid, "input")? == 0.0).then(|| s.clone())
    });
    let v = |name| io_value(&s, name, rx_pid, "input").unwrap_or(-1.0);
    assert_eq!(
        v("media_io_rtp_packets_lost_total"),
        (dropped + overflowed) as f64,
        "{dropped} dropped by nftables, {overflowed} by the socket's buffer"
    );
    assert_eq!(v("media_io_rtp_packets_duplicated_total"), 0.0);
    assert_eq!(v("media_io_rtp_packets_reordered_total"), 0.0);
    let jitter = v("media_io_rtp_jitter_seconds");
    assert!((0.0..0.5).contains(&jitter), "jitter {jitter}");
}

#[test]
fn receive_buffer_drops_equal_the_sockets_own_drop_counter() {
    let link = Link::new();
    let d = Daemon::start(&[]);
    let dir = tempdir("rcvbuf");
    let mut rx = receive(
        &link,
        // A sender slow to start (an emulated CPU) must find the receiver still there.
        &["-loglevel", "error", "-timeout", "10000000"],
        // A buffer this size holds a key frame's burst, so drops come only while the
        // receiver is stopped, long after its first read (drops before it: the next test);
        // it does not hold what comes while it is stopped: the kernel grants twice what is
        // asked and charges a 1316-byte datagram its whole buffer (2,304 bytes), so 177
        // datagrams (233 KB of payload, 1.3 s of the stream) fill it.
        "udp://0.0.0.0:5006?buffer_size=204800&overrun_nonfatal=1",
        &dir.join("rx.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let rx_pid = rx.id();
    // The sender loops until the overflow has been seen: a stream that ends on its own ended,
    // on a starved emulated CPU, before the stopped receiver's buffer filled (CI failed so).
    let mut tx = send_from(
        &link,
        &["-stream_loop", "-1"],
        &format!("udp://{}:5006?pkt_size=1316", link.rx_addr),
        "mpegts",
    );
    // A receiver that stops reading once it reads the stream, until its socket's buffer has
    // overflowed: told by the kernel's own counter, however fast the sender runs.
    d.wait_for("the receiver reading the stream", SECS, |s| {
        (io_value(s, "media_io_datagrams_total", rx_pid, "input")? > 20.0).then_some(())
    });
    signal(rx_pid, libc::SIGSTOP);
    let t0 = std::time::Instant::now();
    while udp_socket_drops(rx_pid, 5006).unwrap_or(0) < 20 {
        assert!(
            tx.try_wait().unwrap().is_none(),
            "the looping sender ended on its own"
        );
        assert!(
            t0.elapsed() < patience(SECS),
            "the stopped receiver's buffer never overflowed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(rx_pid, libc::SIGCONT);
    // The receiver drains its buffer and keeps up again before the sender stops.
    std::thread::sleep(Duration::from_secs(1));
    signal(tx.id(), libc::SIGINT);
    wait_exit(&mut tx, SECS);
    std::thread::sleep(Duration::from_millis(500));
    let truth = udp_socket_drops(rx_pid, 5006).expect("the receiver's socket");
    assert!(truth > 0, "the receiver should have dropped");
    wait_for_drops(&d, rx_pid, truth);
    signal(rx_pid, libc::SIGINT);
    wait_exit(&mut rx, SECS);
}

/// The kernel's own drop counter of the UDP socket on `port` in the namespace of `pid` (the
/// last column of /proc/net/udp), or None if there is no such socket.
fn udp_socket_drops(pid: u32, port: u16) -> Option<u64> {
    let udp = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).ok()?;
    let local = format!(":{port:04X}");
    udp.lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&local))
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// The running kernel's name for a drop at a full receive buffer: `SOCKET_RCVBUFF` where its
/// `kfree_skb` tracepoint has reasons (5.17 on), `NOT_SPECIFIED` (no reason given) before.
fn receive_buffer_reason() -> &'static str {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|d| std::fs::read_to_string(format!("{d}/events/skb/kfree_skb/format")).ok())
        .expect("the kfree_skb tracepoint's format");
    if format.contains("\"SOCKET_RCVBUFF\"") {
        "SOCKET_RCVBUFF"
    } else {
        "NOT_SPECIFIED"
    }
}

/// Waits until the daemon charges exactly `truth` receive-buffer drops to `pid`'s input.
fn wait_for_drops(d: &Daemon, pid: u32, truth: u64) {
    let reason = receive_buffer_reason();
    d.wait_for(
        &format!("the socket's drops (the kernel counted {truth}, reason {reason})"),
        SECS,
        |s| {
            let v = s.value(
                "media_io_kernel_drops_total",
                &[("pid", &pid.to_string()), ("reason", reason)],
            )?;
            (v == truth as f64).then_some(())
        },
    );
}

#[test]
fn drops_before_the_receivers_first_read_are_its_inputs_too() {
    let link = Link::new();
    let d = Daemon::start(&[]);
    let dir = tempdir("preread");
    let mut rx = receive(
        &link,
        &["-loglevel", "error", "-timeout", "3000000"],
        "udp://0.0.0.0:5007?buffer_size=16384&overrun_nonfatal=1",
        &dir.join("rx.log"),
    );
    let rx_pid = rx.id();
    // Stopped once its socket is bound and before any datagram is sent, the receiver reads
    // nothing until every drop has happened: the socket is not yet known as an io's when the
    // kernel drops at it, only when FFmpeg reads from it after SIGCONT.
    let t0 = std::time::Instant::now();
    while udp_socket_drops(rx_pid, 5007).is_none() {
        assert!(
            t0.elapsed() < patience(SECS),
            "the receiver never bound port 5007"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(rx_pid, libc::SIGSTOP);
    let mut tx = send(
        &link,
        &format!("udp://{}:5007?pkt_size=1316", link.rx_addr),
        "mpegts",
    );
    wait_exit(&mut tx, SECS);
    let truth = udp_socket_drops(rx_pid, 5007).expect("the receiver's socket");
    // Its 32 KiB of buffer hold about 14 of the stream's ~1,000 datagrams.
    assert!(
        truth > 500,
        "the stopped receiver should have dropped most: {truth}"
    );
    signal(rx_pid, libc::SIGCONT);
    wait_for_drops(&d, rx_pid, truth);
    wait_exit(&mut rx, SECS);
}

#[test]
fn tcp_output_through_loss_shows_the_kernels_retransmissions() {
    let link = Link::new();
    // One segment per packet, so the kernel's segment count and its retransmitted packets
    // are the same number.
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &link.tx,
            "link",
            "set",
            &link.tx_dev,
            "gso_max_segs",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let d = Daemon::start(&[]);
    let dir = tempdir("tcp");
    let (mut rx, tx_pid, before) = tcp_stream(
        &link,
        5008,
        "table inet obs {
           counter dropped {}
           chain input {
             type filter hook input priority 0;
             tcp dport 5008 numgen random mod 100 < 3 counter name dropped drop
           }
         }",
        &dir,
    );
    let rx_pid = rx.id();
    wait_exit(&mut rx, SECS);
    wait_sent(&link, 5008);
    let truth = Link::snmp(&link.tx, "Tcp", "RetransSegs") - before;
    assert!(truth > 0, "3% loss should cause retransmissions");
    let s = wait_for_retransmits(&d, &link, tx_pid, before);
    let file = std::fs::metadata(ingest_ts()).unwrap().len() as f64;
    let bytes = |pid: u32, direction: &str, op: &str| {
        s.value(
            "media_io_bytes_total",
            &[
                ("pid", &pid.to_string()),
                ("direction", direction),
                ("op", op),
            ],
        )
    };
    assert_eq!(
        bytes(tx_pid, "output", "write"),
        Some(file),
        "a stream copy of a TS file writes the file's bytes"
    );
    // Each side's socket is its own, though on one CPU (a guest's) the receiver's side of the
    // handshake runs inside the sender's connect.
    assert_eq!(bytes(rx_pid, "input", "read"), Some(file));
    assert_eq!(bytes(tx_pid, "output", "read"), Some(0.0));
}

/// Streams the test file over TCP to a receiver listening on `port`, with the nftables
/// `rules` loaded in the receiver's namespace once it listens. Returns when the sender has
/// exited: the receiver, the sender's pid, and the sender namespace's `RetransSegs` before
/// it started.
fn tcp_stream(link: &Link, port: u16, rules: &str, dir: &std::path::Path) -> (Child, u32, u64) {
    let rx = receive(
        link,
        &["-loglevel", "error"],
        &format!("tcp://0.0.0.0:{port}?listen=1"),
        &dir.join("rx.log"),
    );
    // A sender that connects before the receiver listens is refused and leaves the receiver
    // waiting for ever; an emulated arm64 ffmpeg can take longer than the second once given
    // to its start (the likeliest cause of one such failure in a guest).
    let t0 = std::time::Instant::now();
    while !Link::tcp_listening(&link.rx, port) {
        assert!(
            t0.elapsed() < patience(SECS),
            "the receiver never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    link.nft_rx(rules);
    let before = Link::snmp(&link.tx, "Tcp", "RetransSegs");
    let mut tx = send(link, &format!("tcp://{}:{port}", link.rx_addr), "mpegts");
    wait_exit(&mut tx, SECS);
    let status = tx.wait().unwrap();
    assert!(status.success(), "the sender failed: {status}");
    (rx, tx.id(), before)
}

/// Waits until the daemon shows `pid`'s output ended with exactly the retransmissions the
/// kernel counted in `link`'s sender namespace since `before`, read again at every scrape (a
/// probe the kernel sends after the sender's socket finished counts on both sides); returns
/// that scrape.
fn wait_for_retransmits(d: &Daemon, link: &Link, pid: u32, before: u64) -> Scrape {
    let truth = || Link::snmp(&link.tx, "Tcp", "RetransSegs") - before;
    d.wait_for(
        &format!(
            "the sender's retransmissions (the kernel counted {})",
            truth()
        ),
        SECS,
        |s| {
            let ended = io_value(s, "media_io_up", pid, "output")? == 0.0;
            let n = io_value(s, "media_io_tcp_retransmits_total", pid, "output")?;
            (ended && n == truth() as f64).then(|| s.clone())
        },
    )
}

/// Waits until the sender's connection to `port` has nothing left to retransmit. Its last
/// data and FIN can be lost and retransmitted after it exited, with backoff (seconds): the
/// kernel's count is final only once every byte and the FIN are acknowledged, which is when
/// the socket reaches FIN-WAIT-2 or TIME-WAIT (or is gone).
fn wait_sent(link: &Link, port: u16) {
    let t0 = std::time::Instant::now();
    loop {
        let states = Link::tcp_states(&link.tx, port);
        if states.iter().all(|s| s == "FIN-WAIT-2" || s == "TIME-WAIT") {
            return;
        }
        assert!(
            t0.elapsed() < patience(SECS),
            "the sender's connection never finished: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An output's connection outlives the process: here its FIN is dropped for 9 s after the
/// sender exited, so the kernel retransmits it with backoff until well after the 5 s an ended
/// io used to stay counted for. Every one of those retransmissions is the output's.
#[test]
fn retransmissions_after_the_sender_exited_are_its_outputs() {
    let link = Link::new();
    let d = Daemon::start(&[]);
    let dir = tempdir("tcp-fin");
    let (mut rx, tx_pid, before) = tcp_stream(
        &link,
        5009,
        "table inet fin {
           chain input {
             type filter hook input priority 0;
             tcp dport 5009 tcp flags & fin == fin drop
           }
         }",
        &dir,
    );
    std::thread::sleep(Duration::from_secs(9));
    link.nft_rx("delete table inet fin");
    wait_sent(&link, 5009);
    wait_exit(&mut rx, SECS);
    let truth = Link::snmp(&link.tx, "Tcp", "RetransSegs") - before;
    // Retransmitted with backoff from 0.2 s, doubling: five or more in the 9 s, the last of
    // them seconds past the old 5 s.
    assert!(
        truth >= 5,
        "the FIN should have been retransmitted: {truth}"
    );
    wait_for_retransmits(&d, &link, tx_pid, before);
}

#[test]
fn a_stalled_input_is_reported_stalled_and_a_planted_secret_never_leaves() {
    let link = Link::new();
    // The test daemon logs at debug level: nothing it logs may carry the secret either.
    let d = Daemon::start(&["--stall-after", "2s"]);
    let dir = tempdir("stall");
    let mut rx = receive(
        &link,
        &["-loglevel", "error"],
        "udp://viewer:PLANTEDPASSWORD@0.0.0.0:5010?token=PLANTEDTOKEN&overrun_nonfatal=1",
        &dir.join("rx.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let rx_pid = rx.id();
    let mut tx = send(
        &link,
        &format!("udp://{}:5010?pkt_size=1316", link.rx_addr),
        "mpegts",
    );
    d.wait_for("data flowing, not stalled", SECS, |s| {
        let bytes = s.value(
            "media_io_bytes_total",
            &[("pid", &rx_pid.to_string()), ("op", "read")],
        )?;
        let stalled = io_value(s, "media_io_stalled", rx_pid, "input")?;
        (bytes > 0.0 && stalled == 0.0).then_some(())
    });
    signal(tx.id(), libc::SIGSTOP);
    d.wait_for("the input stalled", SECS, |s| {
        (io_value(s, "media_io_stalled", rx_pid, "input")? == 1.0).then_some(())
    });
    signal(tx.id(), libc::SIGCONT);
    d.wait_for("the input flowing again", SECS, |s| {
        (io_value(s, "media_io_stalled", rx_pid, "input")? == 0.0).then_some(())
    });
    let s = d.scrape();
    // The raw exposition: the parser splits label values at '='.
    let want = "url=\"udp://REDACTED@0.0.0.0:5010?token=REDACTED&overrun_nonfatal=1\"";
    assert!(
        s.text.lines().any(|l| l.starts_with("media_io_info{")
            && l.contains(&format!("pid=\"{rx_pid}\""))
            && l.contains(want)),
        "{}",
        s.text
    );
    wait_exit(&mut tx, SECS);
    // A UDP input without a timeout waits for more data; it is not the subject here.
    signal(rx_pid, libc::SIGKILL);
    wait_exit(&mut rx, SECS);
    let ios = d.get("/ios").unwrap().1;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&ios).unwrap();
    assert!(
        listed.iter().any(|v| v["pid"] == rx_pid
            && v["url"] == "udp://REDACTED@0.0.0.0:5010?token=REDACTED&overrun_nonfatal=1"),
        "{ios}"
    );
    let outputs = [
        d.get("/metrics").unwrap().1,
        d.get("/streams").unwrap().1,
        ios,
        d.log_text(),
    ];
    for text in outputs {
        for secret in ["PLANTEDPASSWORD", "PLANTEDTOKEN"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
    }
}

#[test]
fn hls_segments_equal_the_files_written() {
    let d = Daemon::start(&[]);
    let dir = tempdir("hls");
    let (pid, _) = run(ffmpeg()
        .arg("-i")
        .arg(ingest_ts())
        .args([
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
        ])
        .arg(dir.join("index.m3u8")));
    let segments: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(segments.len() >= 4, "{segments:?}");
    let s = wait_io_ended(&d, pid);
    let p = pid.to_string();
    let labels = [("pid", p.as_str()), ("direction", "output")];
    assert_eq!(
        s.value("media_io_segments_total", &labels),
        Some(segments.len() as f64)
    );
    assert_eq!(
        s.value("media_io_segment_bytes_sum", &labels),
        Some(segments.iter().sum::<u64>() as f64)
    );
    assert_eq!(
        s.value("media_io_segment_write_seconds_count", &labels),
        Some(segments.len() as f64)
    );
    assert!(s.value("media_io_playlist_writes_total", &labels).unwrap() >= 1.0);
}

#[test]
fn corrupt_and_demuxed_packets_equal_ffmpegs_and_ffprobes_own_counts() {
    let dir = tempdir("corrupt");
    let input = observer_tests::media::damaged_ts(&ingest_ts(), &dir);
    let d = Daemon::start(&[]);
    // FFmpeg's own count: the CLI warns once per packet flagged corrupt ("repeat" keeps
    // identical lines from being folded into "Last message repeated").
    let out = dir.join("copy.ts");
    let (pid, stderr) = run(ffmpeg()
        .args(["-loglevel", "repeat+warning", "-i"])
        .arg(&input)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(&out));
    let truth = stderr.matches("corrupt input packet").count();
    assert!(truth > 5, "{truth}");
    let s = wait_io_ended(&d, pid);
    assert_eq!(
        io_value(&s, "media_io_corrupt_packets_total", pid, "input"),
        Some(truth as f64)
    );
    // An MPEG-TS output is written front to back, never rewritten: its bytes are the file's.
    assert_eq!(
        s.value(
            "media_io_bytes_total",
            &[
                ("pid", &pid.to_string()),
                ("direction", "output"),
                ("op", "write")
            ]
        ),
        Some(std::fs::metadata(&out).unwrap().len() as f64),
    );
    // ffprobe, observed too, prints every packet av_read_frame gives it.
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "quiet", "-show_packets"])
        .arg(&input)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .filter(|l| *l == "[PACKET]")
        .count();
    let pid = probe_pid(&d, &input);
    let s = wait_io_ended(&d, pid);
    assert_eq!(
        io_value(&s, "media_io_demuxed_packets_total", pid, "input"),
        Some(printed as f64)
    );
    // The demuxer probes, seeks back and reads the end for the duration: at least the whole
    // file, not more than a few times over.
    let read = s
        .value(
            "media_io_bytes_total",
            &[
                ("pid", &pid.to_string()),
                ("direction", "input"),
                ("op", "read"),
            ],
        )
        .unwrap();
    let size = std::fs::metadata(&input).unwrap().len() as f64;
    assert!(
        read >= size && read < 4.0 * size,
        "{read} bytes read of {size}"
    );
}

#[test]
fn io_stats_can_be_turned_off() {
    let d = Daemon::start(&["--io-stats", "false"]);
    let dir = tempdir("io-off");
    let (pid, _) = run(ffmpeg()
        .arg("-i")
        .arg(ingest_ts())
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(dir.join("copy.ts")));
    // Codec streams are still counted; no input or output is followed.
    d.wait_for("the pipeline's end", SECS, |s| {
        let p = pid.to_string();
        s.all("media_log_messages_total")
            .any(|x| x.label("pid") == Some(&p))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = d.scrape();
    let p = pid.to_string();
    let io_series = s
        .samples
        .iter()
        .filter(|x| x.name.starts_with("media_io_") && x.label("pid") == Some(&p))
        .count();
    assert_eq!(io_series, 0, "{}", s.text);
    assert_eq!(
        s.value("observer_kernel_map_entries", &[("map", "ios")]),
        Some(0.0)
    );
}
