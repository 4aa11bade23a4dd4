//! Test media made with ffmpeg's own generators, and ground truth about it from ffprobe.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use serde::Deserialize;

use crate::{Scrape, assets, ffmpeg, run};

static MAKING: Mutex<()> = Mutex::new(());

/// A file made once per checkout (under the test assets) by `args`; `{out}` is its path.
pub fn fixture(name: &str, args: &[&str]) -> PathBuf {
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = assets().join("media");
    std::fs::create_dir_all(&dir).expect("media dir");
    let out = dir.join(name);
    if !out.exists() {
        let tmp = dir.join(format!("partial-{name}"));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{out}", tmp.to_str().unwrap()))
            .collect();
        run(ffmpeg().args(&args));
        std::fs::rename(&tmp, &out).expect("rename fixture");
    }
    out
}

/// One second of 32x32 H.264 at 25 fps without B-frames: every packet gives its frame at
/// once, so a decoder's counts are known at any moment.
pub fn tiny_h264() -> PathBuf {
    fixture(
        "h264-32x32-25.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=32x32:rate=25",
            "-frames:v",
            "25",
            "-c:v",
            "libx264",
            "-bf",
            "0",
            "{out}",
        ],
    )
}

/// 4 s of 320x240 H.264 with B-frames (2 s GOP) and AAC, in MP4.
pub fn h264_aac_mp4() -> PathBuf {
    fixture(
        "h264-aac.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-g",
            "50",
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-shortest",
            "-f",
            "mp4",
            "{out}",
        ],
    )
}

/// Ten 64x48 PNG frames in NUT.
pub fn png_nut() -> PathBuf {
    fixture(
        "png-10.nut",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=10",
            "-frames:v",
            "10",
            "-c:v",
            "png",
            "-f",
            "nut",
            "{out}",
        ],
    )
}

/// A copy of [`png_nut`] in `dir` whose PNG signatures are overwritten in the packets
/// `pick` chooses (by index, 0 to 9), so the png decoder rejects exactly those. Returns the
/// file and the number of packets damaged.
pub fn damaged_png_nut(dir: &Path, pick: impl Fn(usize) -> bool) -> (PathBuf, usize) {
    let mut data = std::fs::read(png_nut()).expect("png fixture");
    let sig = b"\x89PNG\r\n\x1a\n";
    let at: Vec<usize> = data
        .windows(sig.len())
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 10, "one PNG signature per packet");
    let damaged: Vec<usize> = at
        .iter()
        .enumerate()
        .filter(|(n, _)| pick(*n))
        .map(|(_, &i)| i)
        .collect();
    for &i in &damaged {
        data[i..i + 4].copy_from_slice(b"XXXX");
    }
    let out = dir.join("damaged.nut");
    std::fs::write(&out, &data).expect("write damaged file");
    (out, damaged.len())
}

/// Ground truth for one stream of a file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamTruth {
    pub index: u32,
    pub media: String,
    pub codec: String,
    pub packets: u64,
    pub bytes: u64,
    pub key_packets: u64,
    pub frames: u64,
    pub key_frames: u64,
    pub samples: u64,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    #[serde(default)]
    packets: Vec<ProbePacket>,
    #[serde(default)]
    frames: Vec<ProbeFrame>,
    /// Packets and frames asked for together come interleaved, tagged by `type`.
    #[serde(default)]
    packets_and_frames: Vec<PacketOrFrame>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum PacketOrFrame {
    Packet(ProbePacket),
    Frame(ProbeFrame),
}

#[derive(Deserialize)]
struct ProbeStream {
    index: u32,
    codec_type: String,
    codec_name: Option<String>,
}

#[derive(Deserialize)]
struct ProbePacket {
    stream_index: u32,
    size: String,
    flags: String,
}

#[derive(Deserialize)]
struct ProbeFrame {
    stream_index: u32,
    key_frame: u32,
    nb_samples: Option<u64>,
}

/// Per-stream truth from ffprobe's packet list (and, with `decode`, its frame list).
pub fn truth(path: &Path, decode: bool) -> BTreeMap<u32, StreamTruth> {
    let mut entries =
        String::from("stream=index,codec_type,codec_name:packet=stream_index,size,flags");
    if decode {
        entries += ":frame=stream_index,key_frame,nb_samples";
    }
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json", "-show_entries", &entries])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut p: Probe = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    for x in std::mem::take(&mut p.packets_and_frames) {
        match x {
            PacketOrFrame::Packet(pk) => p.packets.push(pk),
            PacketOrFrame::Frame(f) => p.frames.push(f),
        }
    }
    let mut t: BTreeMap<u32, StreamTruth> = p
        .streams
        .iter()
        .map(|s| {
            (
                s.index,
                StreamTruth {
                    index: s.index,
                    media: s.codec_type.clone(),
                    codec: s.codec_name.clone().unwrap_or_default(),
                    ..Default::default()
                },
            )
        })
        .collect();
    for pk in p.packets {
        let s = t
            .get_mut(&pk.stream_index)
            .expect("packet of a listed stream");
        s.packets += 1;
        s.bytes += pk.size.parse::<u64>().expect("packet size");
        if pk.flags.starts_with('K') {
            s.key_packets += 1;
        }
    }
    for f in p.frames {
        let s = t
            .get_mut(&f.stream_index)
            .expect("frame of a listed stream");
        s.frames += 1;
        s.key_frames += u64::from(f.key_frame);
        s.samples += f.nb_samples.unwrap_or(0);
    }
    t
}

/// A copy of the MPEG-TS file `ts` in `dir` with one 188-byte transport packet in 40
/// removed: the continuity counters of whatever PIDs they carried skip, and the PES packets
/// that lost data come out of the demuxer flagged corrupt.
pub fn damaged_ts(ts: &Path, dir: &Path) -> PathBuf {
    let data = std::fs::read(ts).expect("TS fixture");
    let bad: Vec<u8> = data
        .chunks(188)
        .enumerate()
        .filter(|(i, _)| i % 40 != 17)
        .flat_map(|(_, p)| p.to_vec())
        .collect();
    let out = dir.join("damaged.ts");
    std::fs::write(&out, bad).expect("write damaged file");
    out
}

/// A video decode of `pid` counted exactly as `t` (ffprobe) has it, every frame with a latency
/// sample, its 320-wide yuv420p picture described.
pub fn assert_video_decode(s: &Scrape, pid: u32, t: &StreamTruth, codec: &str) {
    let p = pid.to_string();
    let l = [
        ("pid", p.as_str()),
        ("direction", "decode"),
        ("media", "video"),
        ("codec", codec),
    ];
    s.assert_values(
        &l,
        &[
            ("media_packets_total", t.packets),
            ("media_packet_bytes_total", t.bytes),
            ("media_frames_total", t.frames),
            ("media_keyframes_total", t.key_frames),
        ],
    );
    assert_eq!(
        s.value("media_frame_latency_seconds", &l),
        Some(t.frames as f64),
        "latency samples"
    );
    let info = s.one("media_stream_info", &l).expect("stream info");
    assert_eq!(info.label("width").map(String::as_str), Some("320"));
    assert_eq!(
        info.label("pixel_format").map(String::as_str),
        Some("yuv420p")
    );
}
