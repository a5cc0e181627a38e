//! `--check`: what this kernel offers the tool, and whether it can trace here.
use std::{
    io::{self, Write},
    path::Path,
    time::Instant,
};

use tcpretrans_common::hooks;

use crate::{
    btf::{self, Btf, Place},
    cli::Args,
    kernel,
    loader::{HookCount, Tracer},
    trace::{self, Setup},
    tracefs::Tracefs,
};

/// Prints the report; `Ok(false)` when the tool cannot trace here (the
/// reasons are in the report).
pub fn run(args: &Args, out: &mut dyn Write) -> io::Result<bool> {
    let mut problems: Vec<String> = Vec::new();

    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned());
    writeln!(
        out,
        "kernel      {}",
        release.unwrap_or_else(|e| format!("unknown ({e})"))
    )?;

    let privileged = privileges(out)?;
    if !privileged {
        problems.push("not root and lacking CAP_BPF + CAP_PERFMON: run it with sudo".into());
    }

    let tracefs = match Tracefs::find_or_mount() {
        Ok(t) => {
            writeln!(out, "tracefs     {}", t.root().display())?;
            Some(t)
        }
        Err(e) => {
            writeln!(out, "tracefs     unavailable: {e}")?;
            problems.push(e.to_string());
            None
        }
    };
    if let Some(tracefs) = &tracefs {
        for hook in hooks::ALL {
            let (category, name) = (hook.category, hook.tracepoint);
            let layout = tracefs
                .hook_format(&hook)
                .and_then(|f| f.check(hook.layout).map(|()| f));
            match layout {
                Ok(format) => {
                    let fields: Vec<String> = format
                        .fields
                        .iter()
                        .filter(|f| !f.name.starts_with("common_"))
                        .map(|f| format!("{}@{}", f.name, f.offset))
                        .collect();
                    writeln!(out, "tracepoint  {category}:{name}  {}", fields.join(" "))?;
                }
                Err(e) => {
                    writeln!(out, "tracepoint  {category}:{name}  unusable: {e}")?;
                    problems.push(e.to_string());
                }
            }
        }
    }

    let btf_path = args.btf.as_deref().unwrap_or(Path::new(btf::VMLINUX));
    let started = Instant::now();
    match Btf::from_file(btf_path) {
        Ok(parsed) => {
            let resolved = btf::resolve(&parsed);
            writeln!(
                out,
                "btf         {} (read and resolved in {:.1?})",
                btf_path.display(),
                started.elapsed()
            )?;
            for (member, place) in &resolved.members {
                let (path, place) = match place {
                    Place::Found { path, found } if found.bitfield_bits > 0 => (
                        *path,
                        format!(
                            "byte {} bits {}..{}",
                            found.bits / 8,
                            found.bits % 8,
                            found.bits % 8 + found.bitfield_bits
                        ),
                    ),
                    Place::Found { path, found } => (*path, format!("byte {}", found.bits / 8)),
                    Place::Missing => (member.path, "MISSING: shown as unknown".into()),
                    Place::Misfit(misfit) => (
                        member.path,
                        format!("UNUSABLE ({misfit}): shown as unknown"),
                    ),
                };
                writeln!(out, "  {:<44} {place}", path.to_string())?;
            }
        }
        Err(e) => writeln!(
            out,
            "btf         unavailable ({e}): fields that need it are shown as unknown"
        )?,
    }

    match kernel::hz() {
        Ok(hz) => writeln!(out, "hz          {hz}")?,
        Err(e) => writeln!(out, "hz          {e}")?,
    }

    writeln!(out, "sysctls     (this network namespace)")?;
    for name in kernel::TCP_SYSCTLS {
        let value = match kernel::sysctl(name) {
            Ok(Some(v)) => v,
            Ok(None) => "(not on this kernel)".into(),
            Err(e) => format!("unreadable: {e}"),
        };
        writeln!(out, "  {name:<36} {value}")?;
    }

    if problems.is_empty()
        && let Some(tracefs) = &tracefs
    {
        // The real proof: load, verify and attach every program, then detach.
        let started = Instant::now();
        // What it would say is in the report already (each member, HZ).
        let loaded = trace::prepare(args, tracefs, &mut |_| {})
            .map_err(|e| e.to_string())
            .and_then(|Setup { plan, .. }| {
                Tracer::load(&plan, Vec::new).map_err(|e| e.to_string())
            });
        match loaded {
            Ok(tracer) => {
                let HookCount { btf, raw, all } = tracer.links.count();
                writeln!(
                    out,
                    "programs    load, verify and attach: ok ({:.1?}; of {all} hooks, {btf} on BTF \
                     and {raw} on raw tracepoints)",
                    started.elapsed(),
                )?
            }
            Err(e) => {
                writeln!(out, "programs    {e}")?;
                problems.push(e);
            }
        }
    }

    match problems.first() {
        None => writeln!(out, "result      tcpretrans can trace here")?,
        Some(first) => writeln!(out, "result      cannot trace here: {first}")?,
    }
    Ok(problems.is_empty())
}

/// Prints the effective user and capabilities; whether they suffice.
fn privileges(out: &mut dyn Write) -> io::Result<bool> {
    let p = kernel::Privileges::current();
    writeln!(
        out,
        "privileges  uid {}, CAP_BPF {}, CAP_PERFMON {}, CAP_SYS_ADMIN {}",
        p.euid,
        yes_no(p.cap_bpf),
        yes_no(p.cap_perfmon),
        yes_no(p.cap_sys_admin)
    )?;
    Ok(p.suffice())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
