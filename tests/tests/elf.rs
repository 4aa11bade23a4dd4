//! Reading a codec name from a library file through a process's load bias: how the daemon
//! names streams whose name the kernel could not read and whose process is already gone.

use std::fs::File;

use observer::elf;

#[test]
fn codec_names_read_from_the_file_through_the_load_bias() {
    let path = "/usr/lib/x86_64-linux-gnu/libavcodec.so.59";
    let lib = elf::inspect(path.as_ref())
        .expect("inspect")
        .expect("libavcodec is FFmpeg");
    let open2 = lib.open2_vaddr.expect("avcodec_open2 in libavcodec");
    let data = std::fs::read(path).unwrap();
    // Where the string "mpeg4" sits in the file (linkers merge it into the tail of a longer
    // string, so it need not follow a NUL), and so the address a process sees it at.
    let at = data
        .windows(6)
        .position(|w| w == b"mpeg4\0")
        .expect("the name in the file") as u64;
    let (vaddr, _, off) = *lib
        .segments
        .iter()
        .find(|(_, size, off)| at >= *off && at - off < *size)
        .expect("a loadable segment holds it");
    let name_vaddr = vaddr + (at - off);
    let bias = 0x7f12_3400_0000;
    let file = File::open(path).unwrap();
    let got = lib
        .identifier_at(&file, bias + open2, bias + name_vaddr)
        .expect("the name");
    assert_eq!(&got[..6], b"mpeg4\0");
    // A pointer outside the file, or the wrong bias, reads nothing plausible.
    assert!(lib.identifier_at(&file, bias + open2, 0x10).is_none());
    let wrong = lib.identifier_at(&file, bias + open2 + 3, bias + name_vaddr);
    assert_ne!(wrong.map(|w| w[..6].to_vec()), Some(b"mpeg4\0".to_vec()));
}

/// The arm64 binaries `cargo xtask test` fetches (Debian bookworm's arm64 packages, PyAV's
/// arm64 wheel, imageio-ffmpeg's static arm64 build).
fn arm64(path: &str) -> std::path::PathBuf {
    let p = observer_tests::assets().join("arm64").join(path);
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`",
        p.display()
    );
    p
}

/// The instruction at file offset `offset` of `path`, as binutils' arm64 disassembler reads it.
fn arm64_instruction(path: &std::path::Path, offset: u64) -> String {
    // One instruction's bytes, disassembled as raw arm64 code.
    let bytes = std::fs::read(path).unwrap();
    let at = offset as usize;
    let dir = observer_tests::tempdir("arm64-insn");
    let raw = dir.join("insn.bin");
    std::fs::write(&raw, &bytes[at..at + 4]).unwrap();
    let out = std::process::Command::new("aarch64-linux-gnu-objdump")
        .args(["-D", "-b", "binary", "-m", "aarch64"])
        .arg(&raw)
        .output()
        .expect("aarch64-linux-gnu-objdump (binutils-aarch64-linux-gnu)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "   0:\td10103ff \tsub\tsp, sp, #0x40": the mnemonic and operands after the bytes.
    text.lines()
        .find(|l| l.trim_start().starts_with("0:"))
        .map(|l| l.split('\t').skip(2).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// arm64 copies of every packaging are read like x86-64 ones: Debian's shared libraries, a
/// wheel's libraries under hashed names, a static build; the daemon on this machine refuses
/// them by name (their code never runs here), and the cheap log probe lands on an
/// instruction arm64 uprobes simulate, with the arguments untouched before it.
#[test]
fn arm64_ffmpeg_files_are_read_like_x86_64_ones() {
    use observer::arch::Arch;
    let x86 = elf::inspect("/usr/lib/x86_64-linux-gnu/libavcodec.so.59".as_ref())
        .unwrap()
        .unwrap();
    let lib = arm64("root/usr/lib/aarch64-linux-gnu/libavcodec.so.59");
    let arm = elf::inspect_bytes(&std::fs::read(&lib).unwrap())
        .unwrap()
        .expect("arm64 libavcodec is FFmpeg");
    assert_eq!(arm.arch, Arch::Aarch64);
    assert_eq!(x86.arch, Arch::X86_64);
    // The same release for both machines: the same probes, the same layout row.
    let symbols = |f: &elf::FfmpegFile| {
        let mut s: Vec<&str> = f.points.iter().map(|p| p.probe.symbol).collect();
        s.sort();
        s
    };
    assert_eq!(symbols(&arm), symbols(&x86));
    assert_eq!(arm.release, x86.release);
    assert_eq!(
        arm.versions.keys().collect::<Vec<_>>(),
        x86.versions.keys().collect::<Vec<_>>()
    );
    let err = elf::inspect(&lib).unwrap_err();
    assert_eq!(err.reason(), "other_architecture", "{err}");

    // av_vlog in Debian's arm64 libavutil starts `sub sp, sp, #0x40`, which uprobes step
    // out of line; the probe goes on the `adrp` after it.
    let util = arm64("root/usr/lib/aarch64-linux-gnu/libavutil.so.57");
    let f = elf::inspect_bytes(&std::fs::read(&util).unwrap())
        .unwrap()
        .unwrap();
    let log = f
        .points
        .iter()
        .find(|p| p.probe.symbol == "av_vlog")
        .expect("av_vlog probed");
    let at = arm64_instruction(&util, log.offset);
    let before = arm64_instruction(&util, log.offset - 4);
    assert!(at.starts_with("adrp"), "probe on {at:?}");
    assert!(before.starts_with("sub sp, sp"), "before it: {before:?}");

    // A wheel's hashed copy and a static build.
    let libs = arm64("assets/pyav/12.3.0/av.libs");
    let hashed = std::fs::read_dir(&libs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("libavcodec-"))
        .expect("the wheel's libavcodec");
    let wheel = elf::inspect_bytes(&std::fs::read(&hashed).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(wheel.arch, Arch::Aarch64);
    assert_eq!(
        wheel.versions[&observer::ffmpeg::Library::Avcodec].major,
        60
    );
    let static_build = arm64("assets/static-ffmpeg/ffmpeg");
    let s = elf::inspect_bytes(&std::fs::read(&static_build).unwrap())
        .unwrap()
        .expect("the static build exports the API");
    assert_eq!(s.arch, Arch::Aarch64);
    assert!(s.release.is_some());
    assert!(
        s.points
            .iter()
            .any(|p| p.probe.symbol == "avcodec_send_packet"),
        "{:?}",
        symbols(&s)
    );
    // Debian's arm64 ffmpeg program links the libraries: no FFmpeg API of its own.
    let program = arm64("root/usr/bin/ffmpeg");
    assert!(
        elf::inspect_bytes(&std::fs::read(&program).unwrap())
            .unwrap()
            .is_none()
    );
}
