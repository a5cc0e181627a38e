use std::{io, process::ExitCode};

/// The session ran, but the kernel side lost events (reported as they
/// happened and in the summary): a runbook can tell this from a clean run.
const EVENTS_LOST: u8 = 3;

use clap::Parser as _;
use tcpretrans::{check, cli::Args, trace};

fn main() -> ExitCode {
    // Usage errors exit with status 2 inside `parse`.
    let args = Args::parse();
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
    match runtime.block_on(trace::run(&args)) {
        Ok(summary) => {
            if !summary.output_closed && !args.quiet {
                eprintln!("tcpretrans: {summary}");
                for line in summary.details() {
                    eprintln!("tcpretrans: {line}");
                }
            }
            if summary.lost > 0 {
                ExitCode::from(EVENTS_LOST)
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
