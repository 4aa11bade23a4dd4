//! Types shared by the kernel programs (`observer-ebpf`) and the daemon (`observer`).
//!
//! Every type here crosses the kernel/user boundary through a BPF map or ring buffer, so each
//! is `#[repr(C)]`, has no implicit padding (flags are `u32`, not `bool`) and, with the `user`
//! feature, implements `aya::Pod`.
#![no_std]

pub mod event;
pub mod frame;
pub mod io;
pub mod kernel;
pub mod layout;
pub mod log;
pub mod stream;

/// Implements `aya::Pod` for types the daemon reads out of maps.
#[macro_export]
#[doc(hidden)]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, made only of integers and arrays of integers, and
            // has no padding (checked by the size assertions next to it).
            unsafe impl aya::Pod for $t {}
        )*
    };
}
