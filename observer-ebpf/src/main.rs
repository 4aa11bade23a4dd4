//! observer's kernel programs: uprobes on FFmpeg's libraries and tracepoints on process
//! life. They aggregate in maps; user space reads the maps, and only rare process events go
//! through the ring buffer.
#![no_std]
#![no_main]
// Atomic adds where a counter can have several writers: see probes::log.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

mod arch;
mod cookie;
mod kernel;
mod maps;
mod probes;
mod read;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
