//! observer: a per-node daemon that counts what every FFmpeg in every process decodes,
//! encodes and filters, from uprobes, and serves it to Prometheus.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use observer_common::{event::EventKind, frame};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use observer::{
    config::{LogFormat, Options},
    io::IoRegistry,
    kernel::{self, Event, Kernel, LoadOptions},
    logs::{self, LogRegistry},
    otlp::{self, Otlp},
    privilege, procfs, server,
    state::{Shared, SharedState},
    streams::{self, Registry},
    tracker::{self, Tracker},
};

/// glibc gives each thread that allocates under contention an arena of its own (up to eight
/// per core) and keeps what each one freed: with scrapes, compression and collection on
/// tokio's blocking threads, that was a quarter of the daemon's memory under churn
/// (BENCHMARKS.md, "Soak": about 99 MiB against 75 with two arenas). Two suffice for its few
/// allocating threads.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    // The daemon's own helper (observer/src/kernel/pin.rs), started by it.
    let args: Vec<String> = std::env::args().collect();
    if let [_, cmd, pin, daemon] = &args[..]
        && cmd == "hold-watchdog"
        && let Ok(daemon) = daemon.parse()
    {
        kernel::hold_watchdog(std::path::Path::new(pin), daemon);
    }
    if std::env::args().nth(1).as_deref() == Some("top") {
        use clap::Parser as _;
        let args = observer::top::TopArgs::parse_from(std::env::args().skip(1));
        if let Err(e) = observer::top::run(args) {
            eprintln!("observer top: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("health") {
        use clap::Parser as _;
        let args = observer::client::HealthArgs::parse_from(std::env::args().skip(1));
        if let Err(e) = observer::client::health(args) {
            eprintln!("observer health: {e}");
            std::process::exit(1);
        }
        return;
    }
    limit_malloc_arenas();
    let opts = match Options::load() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("observer: {e}");
            std::process::exit(2);
        }
    };
    // Made before the runtime so the daemon's own log reaches OTLP from its first line.
    let log_pipe = otlp::LogPipe::new(&opts);
    init_logging(&opts, log_pipe.as_ref().map(|(p, _)| &p.provider));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(opts, log_pipe)) {
        tracing::error!("{e:#}");
        eprintln!("observer: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(opts: &Options, otlp_logs: Option<&SdkLoggerProvider>) {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_new(&opts.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match opts.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // The daemon's own events only: FFmpeg's messages go to OTLP with their stream's trace
    // (see `Otlp::log`), and the exporter's own dependencies must not log into themselves.
    let bridge = otlp_logs.map(|p| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p).with_filter(
            tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("observer")),
        )
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(bridge)
        .init();
}

async fn run(
    opts: Options,
    log_pipe: Option<(otlp::LogPipe, Arc<otlp::Stats>)>,
) -> anyhow::Result<()> {
    // Said before anything else: a missing capability would otherwise show only as a failed
    // attach, later and less clearly.
    let kernel_version = privilege::kernel_version();
    let needed = privilege::check(privilege::effective(), kernel_version)?;
    tracing::info!(
        capabilities = needed.join(" "),
        kernel = format!("{}.{}", kernel_version.0, kernel_version.1),
        "running with the capabilities this kernel needs"
    );
    // A web configuration that is bad at start stops the daemon before anything is loaded:
    // serving unprotected instead would be worse than not serving.
    let web = opts
        .web_config_file
        .as_deref()
        .map(observer::web::WebConfig::open)
        .transpose()
        .context("--web-config-file")?;
    let mut otlp = Otlp::start(&opts, log_pipe)?;
    // Frames leave the kernel only when something exports them.
    let (frame_sample, slow_frame_ns) = match &otlp {
        Some(_) => (
            frame::sample_threshold(opts.frame_sample_ratio),
            opts.slow_frame
                .0
                .map_or(frame::SLOW_FRAME_NEVER, |d| d.as_nanos() as u64),
        ),
        None => (0, frame::SLOW_FRAME_NEVER),
    };
    let (mut kernel, rings) = Kernel::load(LoadOptions {
        empty_probes: opts.empty_probes,
        ffmpeg_logs: opts.ffmpeg_logs,
        io_stats: opts.io_stats,
        log_event_level: opts.ffmpeg_log_events.av_level(),
        frame_sample,
        slow_frame_ns,
        max_streams: opts.kernel_max_streams,
        directions: opts
            .directions
            .iter()
            .fold(0, |bits, d| bits | kernel::direction_bit(d.direction())),
        hold_new_files: opts.hold_new_files,
    })
    .context("cannot load the kernel programs; observer needs a kernel with uprobes and BTF")?;
    let kernel_release = procfs::kernel_release();
    tracing::info!(
        kernel = kernel_release,
        available = kernel
            .features
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(f, _)| *f)
            .collect::<Vec<_>>()
            .join(" "),
        unavailable = kernel
            .features
            .iter()
            .filter(|(_, why)| why.is_some())
            .map(|(f, _)| *f)
            .collect::<Vec<_>>()
            .join(" "),
        "kernel programs loaded"
    );
    let mut tracker = Tracker::new(opts.detach_linger);
    let shared: SharedState = Arc::new(Mutex::new(Shared {
        registry: Registry::new(
            opts.ended_stream_grace,
            opts.max_streams,
            opts.kernel_max_streams as usize,
        ),
        logs: LogRegistry::new(opts.ended_stream_grace),
        ios: IoRegistry::new(opts.ended_stream_grace, opts.max_streams),
        io_probes: kernel.io,
        features: kernel.features.clone(),
        kernel_release,
        holds: 0,
        held_seconds: 0.0,
        drop_reasons: kernel::drop_reason_names(),
        stall_after: opts.stall_after,
        gpu: if opts.gpu {
            observer::gpu::start(opts.nvml_library.as_deref(), opts.gpu_interval)
        } else {
            Default::default()
        },
        attached: Vec::new(),
        unsupported: BTreeMap::new(),
        skipped: BTreeMap::new(),
        kernel_counters: HashMap::new(),
        io_map_entries: (0, 0, 0),
        processes: 0,
        scans: 0,
        ready: false,
        aggregate: opts.aggregate,
        otlp: otlp.as_ref().map(|o| o.stats.clone()),
        web: web.as_ref().map(|w| w.stats.clone()),
        pods: match opts.node_name.as_deref().filter(|n| !n.is_empty()) {
            Some(node) if opts.kubernetes => match observer::kubernetes::start(node).await {
                Ok(index) => Some(index),
                Err(e) => {
                    tracing::warn!(error = %e, "no Kubernetes labels");
                    None
                }
            },
            _ => None,
        },
    }));

    if let Some(o) = otlp.as_mut() {
        if let Ok(s) = shared.lock() {
            o.traces.set_pods(s.pods.clone());
        }
        o.start_metrics(shared.clone())
            .map_err(|e| anyhow::anyhow!("OTLP metrics exporter: {e}"))?;
    }

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let app = server::router(shared.clone());
    match web {
        Some(web) => {
            let settings = web.current();
            tracing::info!(
                address = %opts.listen,
                tls = settings.tls.is_some(),
                basic_auth = !settings.users.is_empty(),
                web_config = %opts.web_config_file.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(),
                "serving /metrics"
            );
            tokio::spawn(observer::web::serve::serve(listener, app, web));
        }
        None => {
            tracing::info!(address = %opts.listen, "serving /metrics");
            tokio::spawn(async move {
                // Nagle's algorithm held each kept-alive scrape's last piece for the
                // client's delayed ACK: 43 ms a scrape (BENCHMARKS.md, "Securing the
                // endpoints").
                use axum::serve::ListenerExt as _;
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            });
        }
    }

    // From here the kernel may hold processes that map new files: the daemon answers.
    kernel.beat();
    // Libraries on the linker path first, so processes started from now on are counted from
    // their first frame; then everything already running.
    let dirs: Vec<PathBuf> = opts.library_dirs.iter().map(PathBuf::from).collect();
    for path in tracker::system_libraries(&dirs) {
        tracker.attach_path(&mut kernel, &path);
    }
    let mut scans = 0u64;
    for pid in procfs::pids() {
        tracker.scan(&mut kernel, pid);
        scans += 1;
    }
    publish(&shared, &mut kernel, &tracker, scans, otlp.as_mut());
    tracing::info!(
        attached = tracker.attached().len(),
        processes = tracker.pids().len(),
        "initial scan done; ready"
    );

    // SAFETY: the ring buffer owns its map fd, which stays open until the AsyncFd drops it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(rings.events, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the kernel's event ring buffer: {e}"))?;
    // SAFETY: as above, for the frame spans' ring buffer.
    let mut frames =
        unsafe { AsyncFd::register_with_interest(rings.frames, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the kernel's frame ring buffer: {e}"))?;
    let mut collect = tokio::time::interval(opts.collect_interval);
    let mut frame_poll = tokio::time::interval(std::time::Duration::from_millis(100));
    frame_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rescan = tokio::time::interval(opts.rescan_interval);
    rescan.tick().await;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    // Registered now, not at the loop's first turn: a SIGINT that came in between would be
    // lost where the shell started the daemon with SIGINT ignored (a background job).
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // The kernel holds processes only while the daemon beats.
    let mut heartbeat = tokio::time::interval(std::time::Duration::from_millis(250));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: BTreeSet<u32> = BTreeSet::new();
    let mut to_scan: BTreeSet<u32> = BTreeSet::new();
    let mut exited: Vec<u32> = Vec::new();

    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("event ring buffer")?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    let ev = match kernel::parse_event(&item) {
                        Some(Event::Process(ev)) => ev,
                        Some(Event::Io(ev)) => {
                            if let Ok(mut s) = shared.lock() {
                                s.ios.event(&ev, &tracker);
                            }
                            continue;
                        }
                        Some(Event::Log(ev)) => {
                            if let Ok(mut s) = shared.lock() {
                                let process =
                                    tracker.process_name(ev.tgid).unwrap_or_default();
                                // The message may come before the collection that shows its
                                // stream or io: the kernel's maps know them already.
                                // A frame-threaded decoder's worker logs on its own copy of
                                // the decoder's context: the message is the decoder's.
                                let own = s
                                    .registry
                                    .newest(ev.tgid, ev.avcl)
                                    .map(|r| r.stream.opened_ns)
                                    .or_else(|| kernel.stream_opened(ev.tgid, ev.avcl));
                                s.logs.note_thread_codec(ev.tgid, ev.avcl, ev.thread_codec);
                                let codec = s.logs.thread_codec(ev.tgid, ev.avcl);
                                let (ctx, opened) = match own {
                                    None if codec != 0 => (
                                        codec,
                                        s.registry
                                            .newest(ev.tgid, codec)
                                            .map(|r| r.stream.opened_ns)
                                            .or_else(|| kernel.stream_opened(ev.tgid, codec)),
                                    ),
                                    _ => (ev.avcl, own),
                                };
                                let stream = opened
                                    .map(|o| streams::label(ev.tgid, o))
                                    .unwrap_or_default();
                                let io = s
                                    .ios
                                    .label_of_context(ev.tgid, ev.avcl)
                                    .map(str::to_string)
                                    .or_else(|| kernel.io_label(ev.tgid, ev.avcl))
                                    .unwrap_or_default();
                                let read = if ev.template[0] == 0 {
                                    s.logs.resolve_template(ev.tgid, ev.fmt)
                                } else {
                                    None
                                };
                                let message = logs::Message::render(&ev, read);
                                logs::emit(&message, &process, &stream, &io);
                                if let Some(o) = otlp.as_mut() {
                                    let from = otlp::LogOrigin {
                                        process: &process,
                                        ctx,
                                        stream_opened: opened,
                                        stream: &stream,
                                        io: &io,
                                    };
                                    o.log(&message, ev.ktime_ns, &from, &tracker);
                                }
                            }
                            continue;
                        }
                        None => continue,
                    };
                    match ev.kind {
                        // Both are sent once the new mapping exists (after exec, at the mmap
                        // syscall's exit): one scan per process per batch of events finds it.
                        k if k == EventKind::Exec as u32 || k == EventKind::ExecMmap as u32 => {
                            to_scan.insert(ev.tgid);
                        }
                        k if k == EventKind::Held as u32 => {
                            held.insert(ev.tgid);
                        }
                        k if k == EventKind::Exit as u32 => exited.push(ev.tgid),
                        k if k == EventKind::CodecName as u32 => {
                            if let Ok(mut s) = shared.lock() {
                                s.registry.resolve_name(ev.tgid, ev.addr);
                            }
                        }
                        k if k == EventKind::LogTemplate as u32 => {
                            if let Ok(mut s) = shared.lock() {
                                s.logs.resolve_template(ev.tgid, ev.addr);
                            }
                        }
                        _ => {}
                    }
                }
                guard.clear_ready();
                // Held processes first: they wait for this.
                for pid in std::mem::take(&mut held) {
                    to_scan.remove(&pid);
                    release_held(&mut kernel, &mut tracker, &shared, pid);
                    scans += 1;
                }
                for pid in &exited {
                    to_scan.remove(pid);
                }
                for pid in std::mem::take(&mut to_scan) {
                    tracker.scan(&mut kernel, pid);
                    scans += 1;
                }
                if !exited.is_empty() {
                    // Collect now, so a process's final counts are read before its pid can be
                    // reused.
                    publish(&shared, &mut kernel, &tracker, scans, otlp.as_mut());
                    for pid in exited.drain(..) {
                        tracker.exited(pid);
                        kernel.forget_process(pid);
                    }
                }
            }
            guard = frames.readable_mut() => {
                let mut guard = guard.context("frame ring buffer")?;
                drain_frames(guard.get_inner_mut(), otlp.as_mut(), &tracker);
                guard.clear_ready();
            }
            // The kernel wakes the daemon for frame spans only when their ring fills up.
            _ = frame_poll.tick() => {
                drain_frames(frames.get_mut(), otlp.as_mut(), &tracker);
            }
            // Beats, and answers any hold whose event was lost (a full ring).
            _ = heartbeat.tick() => {
                kernel.beat();
                for (pid, _) in kernel.held() {
                    release_held(&mut kernel, &mut tracker, &shared, pid);
                    scans += 1;
                }
            }
            _ = collect.tick() => {
                tracker.distrust_failing(&mut kernel);
                tracker.detach_unused(&mut kernel);
                publish(&shared, &mut kernel, &tracker, scans, otlp.as_mut());
            }
            _ = rescan.tick() => {
                for pid in procfs::pids() {
                    tracker.scan(&mut kernel, pid);
                    scans += 1;
                }
                for pid in tracker.pids() {
                    if procfs::stat(pid).is_none() {
                        tracker.exited(pid);
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down: detaching every probe");
    // Dropping the kernel side resumes any process still held.
    drop(kernel);
    if let Some(o) = otlp
        && let Ok(s) = shared.lock()
    {
        // Blocking the lock for the flush is fine: the HTTP side is all that waits.
        let (registry, ios) = (&s.registry, &s.ios);
        flush_otlp(o, registry, ios);
    }
    Ok(())
}

/// Answers a process the kernel held: scans it (attaching any FFmpeg file it maps), files the
/// file it was held for as judged where the daemon now knows it, and resumes it.
fn release_held(kernel: &mut Kernel, tracker: &mut Tracker, shared: &SharedState, pid: u32) {
    let Some((_, h)) = kernel.held().into_iter().find(|(p, _)| *p == pid) else {
        return;
    };
    let judged = tracker.scan_held(kernel, pid, &h.file);
    kernel.release(pid, judged.then_some(h.file));
    let held_for = kernel::boot_ns().saturating_sub(h.since_ns) as f64 / 1e9;
    tracing::debug!(
        pid,
        judged,
        held_ms = held_for * 1e3,
        "resumed a held process"
    );
    if let Ok(mut s) = shared.lock() {
        s.holds += 1;
        s.held_seconds += held_for;
    }
}

/// Exports the sampled and slow frames waiting in the kernel's ring buffer.
fn drain_frames(rb: &mut RingBuf<MapData>, mut otlp: Option<&mut Otlp>, tracker: &Tracker) {
    while let Some(item) = rb.next() {
        if let (Some(o), Some(f)) = (otlp.as_deref_mut(), kernel::parse_frame(&item)) {
            o.traces.frame(&f, tracker);
        }
    }
}

/// Ends the open spans and gives the exporter a few seconds to send what is queued.
fn flush_otlp(o: Otlp, registry: &observer::streams::Registry, ios: &observer::io::IoRegistry) {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(o.shutdown(
            registry,
            ios,
            std::time::Duration::from_secs(5),
        ))
    });
}

/// Reads the kernel maps into the registry and refreshes what the HTTP side shows.
fn publish(
    shared: &SharedState,
    kernel: &mut Kernel,
    tracker: &Tracker,
    scans: u64,
    otlp: Option<&mut Otlp>,
) {
    // The maps, and /proc for whether each process still runs, are read before the lock is
    // taken: at a thousand streams that is most of a collection, and a scrape waits for the
    // lock.
    let (streams, logs, ios) = (kernel.live_streams(), kernel.log_entries(), kernel.ios());
    let (counters, io_map_entries) = (kernel.counters(), kernel.io_map_entries());
    let mut processes = observer::streams::Liveness::read(
        streams
            .iter()
            .map(|(k, _)| k.tgid)
            .chain(logs.iter().map(|(k, _)| k.tgid))
            .chain(ios.iter().map(|(k, _)| k.tgid)),
    );
    let Ok(mut s) = shared.lock() else { return };
    let locked = std::time::Instant::now();
    let held =
        |s: &Shared| s.registry.record_count() + s.logs.record_count() + s.ios.record_count();
    let before = held(&s);
    s.registry.collect(streams, &mut processes, kernel, tracker);
    s.logs.collect(logs, &mut processes, kernel, tracker);
    s.ios.collect(ios, &mut processes, kernel, tracker);
    if held(&s) < before {
        // Ended streams left the registry: give their memory back to the system, or the
        // daemon keeps the high-water mark of its busiest minute (BENCHMARKS.md, "Churn").
        server::release_free_memory();
    }
    s.attached = tracker.attached();
    s.unsupported = tracker.unsupported();
    s.skipped = tracker.skipped();
    s.kernel_counters = counters;
    s.io_map_entries = io_map_entries;
    s.processes = tracker.pids().len();
    s.scans = scans;
    s.ready = true;
    if let Some(o) = otlp {
        o.traces.observe(&s.registry, &s.ios, tracker);
    }
    tracing::trace!(
        lock_held_ms = locked.elapsed().as_secs_f64() * 1e3,
        "collection published"
    );
}
