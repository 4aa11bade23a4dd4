//! The fuzz targets' bodies: everything the daemon parses that it does not control. `cargo
//! fuzz` (observer/fuzz, run by `cargo xtask fuzz`) drives them with generated inputs; a test
//! in `cargo xtask test` replays the committed corpus through the same functions, so a crash
//! the fuzzer once found stays fixed.
//!
//! A target may return an error for bad input (that is the point); it must not panic, hang or
//! grow without bound.

use observer_common::{event::EventKind, log::LogEvent};

/// A target's body: one input, any bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `cargo fuzz` binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("elf", elf),
    ("config", config),
    ("events", events),
    ("text", text),
];

/// A file the daemon found mapped executable in some process: the ELF, its symbols, the
/// FFmpeg version strings, and code at a probe point (decoded to place the cheap log probe;
/// also reached through `inspect_bytes`, fed directly here so every byte is an instruction).
pub fn elf(data: &[u8]) {
    let _ = crate::elf::inspect_bytes(data);
    let _ = crate::ffmpeg::parse_version(data);
    for arch in [crate::arch::Arch::X86_64, crate::arch::Arch::Aarch64] {
        let _ = arch.cheap_entry(&data[..data.len().min(256)], 0x1000);
    }
}

/// The command line and the config files: arguments are the input's first line split on
/// spaces, the rest is the TOML config file, and also a web configuration (YAML) and a
/// client file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (args, file) = text.split_once('\n').unwrap_or((&text, ""));
    let args: Vec<&str> = std::iter::once("observer")
        .chain(args.split(' ').filter(|a| !a.is_empty()))
        .collect();
    let _ = crate::config::Options::parse_from(&args, file);
    let _ = crate::web::build(file, std::path::Path::new("/nonexistent/web.yml"));
    let _ = crate::client::parse_client_file(file);
}

/// Ring buffer records as the kernel side writes them, with contents copied from pipeline
/// memory: a log message's template, its va_list registers and the strings behind its
/// arguments are whatever the process had there. The first byte picks the record kind.
pub fn events(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let kind = match kind % 3 {
        0 => EventKind::LogMessage as u32,
        1 => EventKind::IoOpen as u32,
        _ => u32::from(kind),
    };
    // Records are fixed-size: pad short inputs so every field is reachable.
    let mut bytes = vec![0u8; std::mem::size_of::<LogEvent>().max(rest.len() + 4)];
    bytes[..4].copy_from_slice(&kind.to_ne_bytes());
    bytes[4..4 + rest.len()].copy_from_slice(rest);
    if let Some(crate::kernel::Event::Log(ev)) = crate::kernel::parse_event(&bytes) {
        let _ = crate::logs::Message::render(&ev, None);
    }
    let _ = crate::kernel::parse_frame(&bytes);
}

/// Text read from /proc and from URLs a pipeline opened: the memory maps parser, URL
/// redaction and the protocol name.
pub fn text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::procfs::parse_maps(&text);
    let _ = crate::redact::redact(&text);
    let _ = crate::redact::redact_text(&text);
    let _ = crate::redact::protocol(&text);
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::mpsc, time::Duration};

    use super::TARGETS;

    /// Every input `cargo xtask fuzz` kept, through the same functions the fuzzer drives: no
    /// panic, and none takes more than seconds (libFuzzer's hang limit is one).
    #[test]
    fn the_committed_corpus_runs_clean() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = corpus.join(name);
            let mut inputs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            inputs.sort();
            assert!(!inputs.is_empty(), "no corpus for {name}");
            for path in inputs {
                let data = std::fs::read(&path).unwrap();
                let (tx, rx) = mpsc::channel();
                let target = *target;
                std::thread::spawn(move || {
                    target(&data);
                    let _ = tx.send(());
                });
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(()) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => panic!("{} hangs", path.display()),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        panic!("{} panics", path.display())
                    }
                }
            }
        }
    }

    /// The fuzz crate builds one binary per target here, by the same name.
    #[test]
    fn every_target_has_a_fuzz_binary() {
        let manifest =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
                .unwrap();
        let manifest: toml::Table = toml::from_str(&manifest).unwrap();
        let mut bins: Vec<&str> = manifest["bin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        bins.sort_unstable();
        names.sort_unstable();
        assert_eq!(bins, names);
    }
}
