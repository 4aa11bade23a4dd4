//! Empty on purpose: the kernel programs are the `observer` binary of this crate, built for
//! the BPF target by observer/build.rs. This library target lets the daemon name the crate as
//! a build dependency, so cargo rebuilds the daemon when the programs change.
#![no_std]
