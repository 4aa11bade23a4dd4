//! The offset table in observer/src/ffmpeg.rs against FFmpeg itself:
//! - every major whose headers a registry ships (Debian bullseye: 58, bookworm: 59,
//!   trixie: 61, sid: 63), by compiling `offsetof()` against those headers, for x86-64 and
//!   again for arm64 (the daemon reads one table on both);
//! - the majors nobody ships headers for (60, 62), against the AVOption offset tables inside
//!   the libraries PyAV bundles. Their AVFrame fields are checked at run time by the PyAV
//!   decode tests (key frames, sizes and pts all match ffprobe there).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use observer::ffmpeg::{FIELDS, LAYOUTS, Source, layout_for};
use observer_common::layout::ABSENT;
use observer_tests::assets;

fn include_dirs() -> Vec<(String, PathBuf)> {
    let mut dirs = vec![(
        "bookworm (system)".to_string(),
        PathBuf::from("/usr/include/x86_64-linux-gnu"),
    )];
    for suite in ["bullseye", "trixie", "sid"] {
        let d = assets()
            .join("headers")
            .join(suite)
            .join("usr/include/x86_64-linux-gnu");
        assert!(
            d.join("libavcodec/avcodec.h").exists(),
            "{} missing: run `cargo xtask test`",
            d.display()
        );
        dirs.push((suite.to_string(), d));
    }
    dirs
}

const HEADERS: &str = "#include <stdio.h>\n#include <stddef.h>\n#include <libavcodec/avcodec.h>\n\
                       #include <libavutil/frame.h>\n#include <libavfilter/avfilter.h>\n#include <libavformat/avformat.h>\n#include <libavutil/hwcontext.h>\n";

/// Compiles and runs `body` against the headers in `inc`; `None` if it does not compile.
fn c_program(inc: &Path, body: &str) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("observer-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = body.len() ^ inc.as_os_str().len();
    let src = dir.join(format!("p{n}.c"));
    let exe = dir.join(format!("p{n}"));
    std::fs::write(
        &src,
        format!("{HEADERS}int main(void) {{ {body} return 0; }}\n"),
    )
    .unwrap();
    let ok = Command::new("gcc")
        .arg("-w")
        .arg("-I")
        .arg(inc)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    if !ok.status.success() {
        return None;
    }
    let out = Command::new(&exe).output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the table says the H.264 and HEVC AVCodecIDs are in a major, as "H264 HEVC".
fn codec_ids(major: u32) -> String {
    use observer::ffmpeg::{NvencCodec, codec_id};
    format!(
        "{} {}",
        codec_id(major, NvencCodec::H264).unwrap(),
        codec_id(major, NvencCodec::Hevc).unwrap()
    )
}

#[test]
fn offsets_match_the_headers_of_every_major_a_registry_ships() {
    let mut checked = Vec::new();
    for (suite, inc) in include_dirs() {
        let major: u32 = c_program(&inc, "printf(\"%d\", LIBAVCODEC_VERSION_MAJOR);")
            .expect("version")
            .parse()
            .unwrap();
        let row = layout_for(major).unwrap_or_else(|| {
            panic!("Debian {suite} ships libavcodec {major}, which has no layout row")
        });
        assert_eq!(row.layout.lavc_major, major);
        let ids = c_program(
            &inc,
            "printf(\"%d %d\", AV_CODEC_ID_H264, AV_CODEC_ID_HEVC);",
        )
        .expect("codec ids");
        assert_eq!(
            ids,
            codec_ids(major),
            "{suite}: AVCodecIDs of the codecs NVML reports"
        );
        let mut present = Vec::new();
        for f in FIELDS {
            let ours = (f.get)(&row.layout);
            let real = f.c_members.iter().find_map(|m| {
                c_program(
                    &inc,
                    &format!("printf(\"%zu\", offsetof({}, {m}));", f.c_struct),
                )
                .map(|s| (m, s.parse::<u16>().unwrap()))
            });
            match real {
                Some((m, off)) => {
                    assert_eq!(
                        ours, off,
                        "{suite} (libavcodec {major}): {} is {}.{:?} at {off}, the table says {ours}",
                        f.name, f.c_struct, f.c_members
                    );
                    present.push((f.c_struct, *m, off));
                }
                None => assert_eq!(
                    ours, ABSENT,
                    "{suite} (libavcodec {major}): {}.{:?} does not exist, the table says {ours}",
                    f.c_struct, f.c_members
                ),
            }
        }
        same_on_arm64(&inc, &suite, &present);
        checked.push(major);
    }
    checked.sort();
    assert_eq!(checked, [58, 59, 61, 63]);
    // Every header-sourced row was checked.
    for row in LAYOUTS.iter().filter(|r| r.source == Source::Headers) {
        assert!(
            checked.contains(&row.lavc_major),
            "row {} says headers but none were checked",
            row.lavc_major
        );
    }
}

/// The same headers compiled for arm64 put every field at the same offset (both are LP64; the
/// daemon reads one table on both): a static assertion per field, compiled by Debian's arm64
/// cross compiler against only FFmpeg's directories of `inc` (the system one also holds
/// x86-64's C library headers).
fn same_on_arm64(inc: &Path, suite: &str, fields: &[(&str, &str, u16)]) {
    let dir = std::env::temp_dir().join(format!(
        "observer-layout-arm64-{suite}-{}",
        std::process::id()
    ));
    let include = dir.join("include");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&include).unwrap();
    for e in std::fs::read_dir(inc).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("lib") {
            std::os::unix::fs::symlink(e.path(), include.join(e.file_name())).unwrap();
        }
    }
    let mut src = String::from(HEADERS);
    for (i, (st, m, off)) in fields.iter().enumerate() {
        src.push_str(&format!(
            "_Static_assert(offsetof({st}, {m}) == {off}, \"{st}.{m} is not at {off}\"); /* {i} */\n"
        ));
    }
    std::fs::write(dir.join("fields.c"), src).unwrap();
    let out = Command::new("aarch64-linux-gnu-gcc")
        .args(["-w", "-c", "-o"])
        .arg(dir.join("fields.o"))
        .arg("-I")
        .arg(&include)
        .arg(dir.join("fields.c"))
        .output()
        .expect("aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu, installed by `cargo xtask test`)");
    assert!(
        out.status.success(),
        "{suite} for arm64: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fields.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prints the offsets of named AVOptions of a bundled library's AVClass.
fn option_offsets(lib: &Path, class_getter: &str) -> Vec<(String, u16)> {
    let body = format!(
        "const AVClass *(*get)(void) = (const AVClass *(*)(void))dlsym(h, \"{class_getter}\");\n\
         for (const AVOption *o = get()->option; o && o->name; o++)\n\
             if (o->type != AV_OPT_TYPE_CONST) printf(\"%s %d\\n\", o->name, o->offset);"
    );
    dl_program(lib, class_getter, "", &body)
        .lines()
        .filter_map(|l| {
            let (n, o) = l.split_once(' ')?;
            Some((n.to_string(), o.parse().ok()?))
        })
        .collect()
}

/// The AVCodecIDs of H.264 and HEVC in a bundled libavcodec, from its own descriptors.
fn descriptor_ids(lib: &Path) -> String {
    dl_program(
        lib,
        "ids",
        "",
        "const AVCodecDescriptor *(*get)(const char *) = \
         (const AVCodecDescriptor *(*)(const char *))dlsym(h, \"avcodec_descriptor_get_by_name\");\n\
         printf(\"%d %d\", get(\"h264\")->id, get(\"hevc\")->id);",
    )
}

/// Runs `body` in a C program that has `dlopen`ed `lib` as `h` (after `prelude`, at file
/// scope), and returns its output.
fn dl_program(lib: &Path, name: &str, prelude: &str, body: &str) -> String {
    let body = format!(
        "void *h = dlopen(\"{}\", RTLD_NOW | RTLD_GLOBAL); if (!h) {{ puts(dlerror()); return 1; }}\n{body}",
        lib.display()
    );
    let dir = std::env::temp_dir().join(format!("observer-opts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, format!("#include <stdio.h>\n#include <dlfcn.h>\n#include <libavutil/opt.h>\n#include <libavcodec/codec_desc.h>\n#include <libavutil/buffer.h>\n{prelude}\nint main(void) {{ {body} return 0; }}\n")).unwrap();
    let exe = dir.join(format!("prog-{name}"));
    let c = Command::new("gcc")
        .args(["-w", "-I/usr/include/x86_64-linux-gnu"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let out = Command::new(&exe)
        .env("LD_LIBRARY_PATH", lib.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bundled(version: &str, prefix: &str) -> PathBuf {
    let dir = assets().join("pyav").join(version).join("av.libs");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask test`)", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {}", dir.display()))
}

#[test]
fn offsets_match_the_option_tables_of_majors_without_headers() {
    for (pyav, major) in [("12.3.0", 60), ("16.0.1", 62)] {
        let row = layout_for(major).unwrap();
        assert_eq!(row.source, Source::Library);
        let l = row.layout;
        let opts = option_offsets(&bundled(pyav, "libavcodec-"), "avcodec_get_class");
        let opt = |name: &str| {
            opts.iter()
                .find(|(n, _)| n == name)
                .map(|(_, o)| *o)
                .unwrap_or_else(|| panic!("no option {name} in {major}"))
        };
        assert_eq!(l.ctx_bit_rate, opt("b"), "{major} bit_rate");
        // framerate sits 12 bytes before pkt_timebase (framerate, sw_pix_fmt, pkt_timebase)
        // up to 60, and right after it from 61 on (time_base, pkt_timebase, framerate), as the
        // headers of 58, 59, 61 and 63 show.
        let framerate = if major <= 60 {
            opt("pkt_timebase") - 12
        } else {
            opt("pkt_timebase") + 8
        };
        assert_eq!(l.ctx_framerate, framerate, "{major} framerate");
        assert_eq!(l.ctx_width, opt("video_size"), "{major} width");
        assert_eq!(l.ctx_height, opt("video_size") + 4, "{major} height");
        assert_eq!(l.ctx_pix_fmt, opt("pixel_format"), "{major} pix_fmt");
        assert_eq!(l.ctx_sample_rate, opt("ar"), "{major} sample_rate");
        // sample_fmt is declared after channels in 58-60 and right after sample_rate from 61.
        let channels_opt = opts.iter().find(|(n, _)| n == "ac").map(|(_, o)| *o);
        assert_eq!(
            l.ctx_sample_fmt,
            channels_opt.map_or(opt("ar") + 4, |c| c + 4),
            "{major} sample_fmt"
        );
        assert_eq!(
            l.ctx_channels,
            opt("ch_layout") + 4,
            "{major} ch_layout.nb_channels"
        );
        assert_eq!(
            descriptor_ids(&bundled(pyav, "libavcodec-")),
            codec_ids(major),
            "{major}: AVCodecIDs of the codecs NVML reports"
        );
        // hw_device_ctx is declared right before hwaccel_flags in every header-checked major.
        assert_eq!(
            l.ctx_hw_device_ctx + 8,
            opt("hwaccel_flags"),
            "{major} hw_device_ctx"
        );
        // AVHWDeviceContext.type: allocate a device context of a type the build has (no
        // hardware needed to allocate) and find the type where the table says.
        let lavu = bundled(pyav, "libavutil-");
        let found = dl_program(
            &lavu,
            "hwdev",
            "",
            "int (*next)(int) = (int (*)(int))dlsym(h, \"av_hwdevice_iterate_types\");\n\
             AVBufferRef *(*alloc)(int) = (AVBufferRef *(*)(int))dlsym(h, \"av_hwdevice_ctx_alloc\");\n\
             int t = next(0); AVBufferRef *r = t > 0 ? alloc(t) : 0;\n\
             if (r) printf(\"%d %d %d\", t, *(int *)(r->data + 8), *(int *)(r->data + 16));",
        );
        let v: Vec<i64> = found.split(' ').filter_map(|x| x.parse().ok()).collect();
        if let [t, at8, at16] = v[..] {
            let at = if at8 == t { 8 } else { 16 };
            assert!(at8 == t || at16 == t, "{major}: no device type in {found}");
            assert_eq!(l.hwdev_type, at, "{major} AVHWDeviceContext.type");
        } else {
            // A build without hardware types cannot allocate a device context to look in.
            // The field's place follows from whether the context still has libavutil's
            // `internal` pointer before it (av_class, internal, type) or not (av_class,
            // type): av_hwdevice_ctx_init reaches the device type's callbacks through that
            // pointer where it exists. Give it a context whose only content is such a
            // pointer, to a type whose every callback slot is ours: our callback runs.
            // Where the pointer is gone, the function looks elsewhere, finds nothing, and
            // faults; the fault is caught and said.
            let seen = dl_program(
                &lavu,
                "hwinit",
                "#include <signal.h>\n#include <unistd.h>\n\
                 static int hook(void *ctx) { printf(\"called \"); return 0; }\n\
                 static void segv(int s) { printf(\"fault\"); fflush(stdout); _exit(0); }\n\
                 static void *hw_type[64];\nstatic void *internal[4];\n\
                 static _Alignas(16) unsigned char ctx[512];",
                "signal(SIGSEGV, segv);\n\
                 for (int i = 0; i < 64; i++) hw_type[i] = (void *)hook;\n\
                 internal[0] = hw_type; *(void **)(ctx + 8) = internal;\n\
                 AVBufferRef ref = {0}; ref.data = ctx; ref.size = sizeof ctx;\n\
                 int (*init)(AVBufferRef *) = (int (*)(AVBufferRef *))dlsym(h, \"av_hwdevice_ctx_init\");\n\
                 printf(\"%d\", init(&ref));",
            );
            let at = match seen.as_str() {
                "called 0" => 16,
                "fault" => 8,
                _ => panic!("{major}: av_hwdevice_ctx_init said {seen:?}"),
            };
            assert_eq!(l.hwdev_type, at, "{major} AVHWDeviceContext.type");
        }
        let fopts = option_offsets(&bundled(pyav, "libavfilter-"), "avfilter_get_class");
        let thread_type = fopts
            .iter()
            .find(|(n, _)| n == "thread_type")
            .map(|(_, o)| *o)
            .expect("thread_type");
        assert_eq!(
            l.filter_graph + 8,
            thread_type,
            "{major}: AVFilterContext.graph sits right before thread_type"
        );
    }
}
