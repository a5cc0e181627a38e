//! Start-up shortcuts that depend on how aya 0.14 works inside, kept here
//! with tests of the assumption each relies on: an aya upgrade that breaks
//! one fails these tests, not a trace in production.
use std::thread;

use aya::EbpfLoader;
use landlock::{AccessFs, Ruleset, RulesetAttr as _};

use crate::btf::{KIND_TYPEDEF, Writer};

/// aya's loader, without its parse of the kernel's BTF. aya 0.14 parses the
/// whole vmlinux BTF whenever a loader is made (a third of the start-up),
/// although this object has no CO-RE relocations and needs none of it
/// (later aya versions parse it lazily, but need a newer Rust). The loader
/// is made on a throwaway thread that Landlock forbids to read files: the
/// parse then fails at once and aya goes on without BTF, as `.btf(None)`
/// asks. Where Landlock is unavailable the parse just happens.
pub fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    let made = thread::spawn(|| {
        // Only this thread is restricted (and made `no_new_privs`).
        let _ = forbid_reading_files();
        EbpfLoader::new()
    })
    .join();
    // The thread only fails by panicking, which it has then reported.
    made.unwrap_or_else(|_| EbpfLoader::new())
}

/// Forbids the calling thread to open files for reading, from now on.
fn forbid_reading_files() -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
    Ruleset::default()
        .handle_access(AccessFs::ReadFile)
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| ruleset.restrict_self())
}

/// An aya `Btf` in which `typedef name` has the type id `id`, as in the
/// kernel's BTF, and nothing else has a name: what aya 0.14's
/// `BtfTracePoint::load` looks its target up in. Handing it the kernel's BTF
/// would mean aya parsing all of it (and 14 MB of heap) for the one id that
/// `Btf::typedef_id` has found; the ids before it are nameless forward
/// declarations.
pub fn attach_target(name: &str, id: u32) -> Result<aya::Btf, aya::BtfError> {
    const KIND_FWD: u32 = 7;
    let mut writer = Writer::default();
    for _ in 1..id {
        writer.push(&[0, KIND_FWD << 24, 0]);
    }
    let name = writer.string(name);
    writer.push(&[name, KIND_TYPEDEF << 24, 0]);
    aya::Btf::parse(&writer.finish(), aya::Endianness::default())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use landlock::RulesetStatus;

    use super::*;

    /// `BtfTracePoint::load` finds its target by name and kind: the id it
    /// finds must be the kernel's.
    #[test]
    fn attach_target_names_the_typedef_at_the_kernel_s_id() {
        let target = attach_target("btf_trace_inet_sock_set_state", 38_203).expect("parses");
        assert_eq!(
            target
                .id_by_type_name_kind(
                    "btf_trace_inet_sock_set_state",
                    aya_obj::btf::BtfKind::Typedef
                )
                .expect("found"),
            38_203
        );
        assert!(
            target
                .id_by_type_name_kind("btf_trace_tcp_probe", aya_obj::btf::BtfKind::Typedef)
                .is_err()
        );
    }

    /// What the loader shortcut relies on: aya reads the kernel's BTF from
    /// sysfs when a loader is made, a thread that may not read files fails
    /// to, and aya makes its loader all the same.
    #[test]
    fn a_thread_that_may_not_read_files_makes_a_loader_without_kernel_btf() {
        if !Path::new(crate::btf::VMLINUX).exists() {
            println!("skipped: this kernel has no BTF in sysfs (CONFIG_DEBUG_INFO_BTF)");
            return;
        }
        assert!(aya::Btf::from_sys_fs().is_ok(), "readable where allowed");
        let restricted = thread::spawn(|| {
            let status = forbid_reading_files().expect("Landlock ruleset");
            if status.ruleset == RulesetStatus::NotEnforced {
                return None;
            }
            let refused = aya::Btf::from_sys_fs().is_err();
            let _loader = EbpfLoader::new();
            Some(refused)
        })
        .join()
        .expect("the restricted thread made a loader");
        match restricted {
            Some(refused) => assert!(refused, "the kernel's BTF was read despite Landlock"),
            None => println!(
                "skipped: this kernel does not enforce Landlock (CONFIG_SECURITY_LANDLOCK)"
            ),
        }
    }
}
