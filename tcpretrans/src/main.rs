use std::process::ExitCode;

use clap::Parser as _;
use tcpretrans::{cli::Args, trace};

fn main() -> ExitCode {
    // Usage errors exit with status 2 inside `parse`.
    let args = Args::parse();
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
            if !summary.output_closed {
                eprintln!("tcpretrans: {summary}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tcpretrans: {:#}", anyhow::Error::new(err));
            ExitCode::FAILURE
        }
    }
}
