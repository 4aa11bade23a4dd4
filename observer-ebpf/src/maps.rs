//! The maps shared with the daemon. Names are the contract with `observer/src/kernel.rs`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    layout::{LibLayout, MAX_LIBS},
    stream::{
        EndedKey, MAX_CALLS_IN_PROGRESS, MAX_ENDED_STREAMS, MAX_STREAMS, Stream, StreamKey, counter,
    },
};

/// Allocate entries as they are inserted: a `Stream` is over a kilobyte and most nodes run far
/// fewer streams than the map can hold.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Map update flag: insert only if the key is not there yet.
pub const BPF_NOEXIST: u64 = 1;

#[map]
pub static STREAMS: HashMap<StreamKey, Stream> =
    HashMap::with_max_entries(MAX_STREAMS, BPF_F_NO_PREALLOC);

#[map]
pub static ENDED_STREAMS: HashMap<EndedKey, Stream> =
    HashMap::with_max_entries(MAX_ENDED_STREAMS, BPF_F_NO_PREALLOC);

/// One all-zero `Stream`, never written: new streams are inserted from it, since a `Stream`
/// does not fit on the 512-byte BPF stack.
#[map]
pub static ZERO_STREAM: Array<Stream> = Array::with_max_entries(1, 0);

/// Arguments of calls in progress, from entry probe to return probe, per thread and call
/// kind. A plain preallocated hash (cheaper per lookup than an LRU): entries are reused
/// (see `probes::codec::begin`) and removed when their thread exits.
#[map]
pub static CALLS: HashMap<CallKey, CallState> = HashMap::with_max_entries(MAX_CALLS_IN_PROGRESS, 0);

/// Every call kind a `CALLS` key can carry: the data calls, `avcodec_open2`,
/// `avformat_find_stream_info` and the libavformat calls of `probes::io`.
pub const CALL_KINDS: [u32; 19] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 17, 22, 23, 24, 25, 26, 27, 28, 29,
];

/// Threads started inside `avcodec_open2`, by thread id: the workers of a frame-threaded
/// codec, which decode (and log) on copies of its context. Kept until the thread exits; LRU so
/// that threads whose exit was not seen cannot fill it.
#[map]
pub static CODEC_THREADS: LruHashMap<u32, CodecThread> =
    LruHashMap::with_max_entries(MAX_CALLS_IN_PROGRESS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CodecThread {
    pub tgid: u32,
    pub _pad: u32,
    /// The context `avcodec_open2` was opening when it started the thread.
    pub ctx: u64,
}

#[map]
pub static LIBS: Array<LibLayout> = Array::with_max_entries(MAX_LIBS, 0);

/// Reads through a library slot that failed their sanity check; the daemon stops trusting a
/// library whose count rises.
#[map]
pub static LIB_READ_FAILURES: Array<u64> = Array::with_max_entries(MAX_LIBS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Sampled and slow frames (`observer_common::frame`), apart from `EVENTS` so a burst of
/// frames never crowds out a process's exec or exit. 1 MiB holds about 18,000 spans: over a
/// second of 100% sampling on the busiest decoder we measured.
#[map]
pub static FRAMES: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// What an entry probe leaves for the return probe of the same call on the same thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallKey {
    pub pid_tgid: u64,
    pub call: u32,
    pub _pad: u32,
}

impl CallKey {
    #[inline(always)]
    pub const fn new(pid_tgid: u64, call: u32) -> Self {
        CallKey {
            pid_tgid,
            call,
            _pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallState {
    pub start_ns: u64,
    pub args: [u64; 4],
    /// A timestamp read at entry, for calls that consume their input (a buffer source takes
    /// the frame's references, so its pts is gone by the return).
    pub pts: i64,
    pub slot: u32,
    pub _pad: u32,
}

#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while a BPF program does.
        unsafe { *v += 1 };
    }
}

/// A copy of a map value found by `get_ptr`.
#[inline(always)]
pub fn copied<V: Copy>(p: Option<*const V>) -> Option<V> {
    // SAFETY: a map value pointer from a lookup in this program run.
    p.map(|p| unsafe { *p })
}
