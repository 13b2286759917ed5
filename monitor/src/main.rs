//! `tlsmon`: parse the command line and hand over to the module that implements it.

use clap::Parser;
use tlsmon::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TLSMON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The offline path needs no runtime and no privileges.
    if let Command::Analyze(a) = &cli.command {
        return match tlsmon::analyze::run(&a.file, &a.options()) {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tlsmon: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tlsmon: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => tlsmon::trace::run(args.trace_options(false, false, None)?)
                .await
                .map(drop),
            Command::Trace(t) => {
                tlsmon::trace::run(t.capture.trace_options(t.json, t.with_bytes, t.duration)?)
                    .await
                    .map(drop)
            }
            Command::Analyze(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsmon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
