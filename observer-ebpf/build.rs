//! Rebuild the kernel programs when bpf-linker changes: the linker is not tracked by cargo.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
