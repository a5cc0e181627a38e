//! Builds the kernel programs (tcpretrans-ebpf) for the BPF target and embeds
//! them, without their DWARF. With `AYA_BUILD_SKIP=1` (for clippy and unit
//! tests on machines without bpf-linker) an empty object is embedded
//! instead; such a binary refuses to trace and says why.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const SKIP: &str = "AYA_BUILD_SKIP";
const EBPF_PACKAGE: &str = "tcpretrans-ebpf";
const COMMON_PACKAGE: &str = "tcpretrans-common";
/// The file aya-build writes: the eBPF crate's binary name.
const OBJECT: &str = "tcpretrans";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        return fs::write(out_dir.join(OBJECT), b"").context("writing the empty eBPF object");
    }
    let root = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = root
        .parent()
        .ok_or_else(|| anyhow!("tcpretrans has no parent directory"))?
        .join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // aya-build watches the kernel crate; its records and tables live in
    // tcpretrans-common, and a change there must rebuild the object too.
    let common_dir = root
        .parent()
        .ok_or_else(|| anyhow!("tcpretrans has no parent directory"))?
        .join(COMMON_PACKAGE);
    println!("cargo:rerun-if-changed={}", common_dir.display());
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (is bpf-linker installed? run `cargo xtask setup`)")?;
    strip_dwarf(&out_dir.join(OBJECT))
}

/// Drops the object's DWARF (three quarters of it), keeping its BTF, which
/// is what the kernel reads. aya parses every section's relocations when it
/// loads the object, the debug sections' too (~30,000 of them): 0.6 ms of
/// each start, and 0.8 MB of the binary and of its resident memory.
fn strip_dwarf(object: &Path) -> anyhow::Result<()> {
    let data = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let mut elf = object::build::elf::Builder::read(data.as_slice())
        .with_context(|| format!("parsing {}", object.display()))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        let name = name.strip_prefix(b".rel").unwrap_or(name);
        if name.starts_with(b".debug_") {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM names sections in `.strtab`, beside the symbols; the writer
    // wants a table of their own.
    let names = elf.sections.add();
    names.name = b".shstrtab"[..].into();
    names.sh_type = object::elf::SHT_STRTAB;
    names.sh_addralign = 1;
    names.data = object::build::elf::SectionData::SectionString;
    let mut stripped = Vec::new();
    elf.write(&mut stripped)
        .with_context(|| format!("writing {} without DWARF", object.display()))?;
    fs::write(object, stripped).with_context(|| format!("writing {}", object.display()))
}
