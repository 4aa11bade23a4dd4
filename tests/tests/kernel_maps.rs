//! The kernel's stream maps are bounded: under pressure idle streams are evicted and counted,
//! and what a full map refuses is counted. Its own test binary: it needs the node's stream
//! map to itself (cargo runs test binaries one after another, the tests inside one at once).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{Daemon, Scrape, media::tiny_h264, streams_program, tempdir};

/// A `streams` process with `n` paced decoders that, after a second of video, holds them
/// open and idle until told to go on.
struct Held {
    child: Child,
    frames: u64,
    packets: u64,
}

impl Held {
    fn start(exe: &Path, input: &Path, n: u32) -> Held {
        let mut child = Command::new(exe)
            .arg(input)
            .args([&n.to_string(), "25", "1"])
            .env("STREAMS_HOLD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("streams");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "held frames F packets P"
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(v.len(), 2, "streams said {line:?}");
        assert!(
            v[0] > 0 && v[0].is_multiple_of(n as u64),
            "streams said {line:?}"
        );
        Held {
            child,
            frames: v[0],
            packets: v[1],
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn release(mut self) {
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

fn map_counter(s: &Scrape, name: &str) -> f64 {
    s.value(name, &[("map", "streams")]).unwrap_or(-1.0)
}

/// Frames counted for `pid`'s decoders, live and ended: (streams up, streams ended, frames
/// of each stream).
fn decoders(s: &Scrape, pid: &str) -> (usize, usize, Vec<f64>) {
    let up = s
        .all("media_stream_up")
        .filter(|x| x.label("pid").map(String::as_str) == Some(pid));
    let (live, ended) = up.fold((0, 0), |(l, e), x| {
        if x.value == 1.0 {
            (l + 1, e)
        } else {
            (l, e + 1)
        }
    });
    let frames = s
        .all("media_frames_total")
        .filter(|x| {
            x.label("pid").map(String::as_str) == Some(pid)
                && x.label("direction").map(String::as_str) == Some("decode")
        })
        .map(|x| x.value)
        .collect();
    (live, ended, frames)
}

/// A map of 8 streams: eviction starts above 7 and goes down to 6.
/// 1. A program holds 8 decoders open and idle: after 10 s of idleness the 2 idle longest are
///    evicted, counted, and end with their exact counts; the other 6 stay live and exact.
/// 2. A program opens 10 decoders on an empty map and keeps them busy: 8 are counted exactly,
///    the 2 that found the map full are never counted, and every call of theirs is counted
///    as a refused insert (open, each packet sent, each frame received and each "again").
///    Busy streams are not evicted to make room.
#[test]
fn a_full_stream_map_evicts_idle_streams_and_counts_every_refused_insert() {
    let dir = tempdir("kernel-maps");
    let exe = streams_program(&dir);
    let input = tiny_h264();
    let d = Daemon::start(&["--kernel-max-streams", "8"]);
    let s = d.scrape();
    assert_eq!(map_counter(&s, "observer_kernel_map_capacity"), 8.0);

    let a = Held::start(&exe, &input, 8);
    let s = d.wait_for("two idle streams evicted", Duration::from_secs(40), |s| {
        (map_counter(s, "observer_kernel_map_evicted_total") >= 2.0).then(|| s.clone())
    });
    assert_eq!(map_counter(&s, "observer_kernel_map_evicted_total"), 2.0);
    assert_eq!(map_counter(&s, "observer_kernel_map_entries"), 6.0);
    assert_eq!(map_counter(&s, "observer_kernel_map_full_total"), 0.0);
    let (live, ended, frames) = decoders(&s, &a.pid());
    assert_eq!((live, ended), (6, 2), "{}", s.text);
    let each = (a.frames / 8) as f64;
    assert_eq!(frames, vec![each; 8], "{}", s.text);
    a.release();

    let c = Held::start(&exe, &input, 10);
    let (frames_each, packets_each) = (c.frames / 10, c.packets / 10);
    // Per refused decoder: avcodec_open2, each avcodec_send_packet, and avcodec_receive_frame
    // once per frame plus once for the EAGAIN that ends each packet's drain.
    let refused = 2 * (1 + packets_each + frames_each + packets_each);
    // The counts as of the hold, once a collection has read them; wait_for's panic shows the
    // last scrape if they never match.
    d.wait_for(
        "the 8 admitted decoders and the refused inserts counted",
        Duration::from_secs(20),
        |s| {
            let (_, _, frames) = decoders(s, &c.pid());
            (frames == vec![frames_each as f64; 8]
                && map_counter(s, "observer_kernel_map_full_total") == refused as f64)
                .then_some(())
        },
    );
    let s = d.scrape();
    assert_eq!(map_counter(&s, "observer_kernel_map_evicted_total"), 2.0);
    c.release();
}
