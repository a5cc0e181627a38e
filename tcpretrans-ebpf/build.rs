// Rebuild the kernel object when the linker changes (it is installed by
// `cargo xtask setup`, and a new version produces different code).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
