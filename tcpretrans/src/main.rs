use std::{
    io::{self, ErrorKind},
    process::ExitCode,
};

use clap::Parser as _;
use tcpretrans::{
    check,
    cli::{Args, exit_status},
    generate, trace,
};

/// The static build's: musl's own allocator costs 15 % more CPU per event.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit with status 2 inside `parse`.
    let args = Args::parse();
    if let Some(what) = args.generate {
        return match generate::write(what, &mut io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) if err.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tcpretrans: writing the {what:?} output failed: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check {
        return match check::run(&args, &mut io::stdout().lock()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("tcpretrans: writing the report failed: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tcpretrans: cannot start the event loop: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut notify = |notice| eprintln!("tcpretrans: {notice}");
    match runtime.block_on(trace::run(&args, &mut notify)) {
        Ok(summary) => {
            if !summary.output_closed && !args.quiet {
                eprintln!("tcpretrans: {summary}");
                for line in summary.details() {
                    eprintln!("tcpretrans: {line}");
                }
            } else if summary.unseen() > 0 {
                // Quiet, but missing events are never silent (nor are lost
                // ones, reported as they happen).
                if let Some(line) = summary.reconciliation_line() {
                    eprintln!("tcpretrans: {line}");
                }
            }
            // Missing events are never a success: lost ones (the tool's
            // to cure) apart from those the kernel never gave it.
            if summary.lost > 0 {
                ExitCode::from(exit_status::EVENTS_LOST)
            } else if summary.unseen() > 0 {
                ExitCode::from(exit_status::EVENTS_NOT_SEEN)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            // Each message already says what its cause was.
            eprintln!("tcpretrans: {err}");
            ExitCode::FAILURE
        }
    }
}
