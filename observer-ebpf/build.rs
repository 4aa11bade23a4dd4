//! Rebuild the kernel programs when bpf-linker changes: the linker is not tracked by cargo.
//! Built by hand (`cargo +nightly clippy` here), the programs get the `bpf_target_arch` cfg
//! that aya-build passes when observer/build.rs builds them: the host's, or
//! `AYA_BPF_TARGET_ARCH`'s.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    if let Err(e) = aya_build::emit_bpf_target_arch_cfg() {
        println!("cargo:warning=bpf_target_arch: {e}");
    }
}
