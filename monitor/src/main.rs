//! `tlsmon`: parse the command line and hand over to the module that implements it.

use std::process::ExitCode;

use clap::Parser;
use tlsmon::cli::{Cli, Command, args::FleetCommand, query};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TLSMON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // The offline path needs no runtime and no privileges; exit code 2 for unreadable input.
    if let Command::Analyze(a) = &cli.command {
        return match tlsmon::cli::analyze::run(&a.file, &a.options()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tlsmon: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let result = match &cli.command {
        // Commands that only read a file or ask a running endpoint.
        Command::Man => tlsmon::cli::args::man_page()
            .and_then(|m| std::io::Write::write_all(&mut std::io::stdout(), &m))
            .map_err(anyhow::Error::from),
        Command::CheckConfig(c) => {
            tlsmon::daemon::check_config(c.config.as_deref()).map(|t| print!("{t}"))
        }
        Command::Status(a) => query::status(&a.endpoint),
        Command::Failures(a) => query::failures(a),
        Command::Fleet(f) => match &f.command {
            FleetCommand::Status(a) => query::fleet_status(a),
        },
        // The services.
        Command::Run(_) | Command::Trace(_) | Command::Aggregate(_) => serve(cli.command),
        Command::Analyze(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The commands that run until stopped, on a single-threaded tokio runtime.
fn serve(command: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        match command {
            Command::Run(args) => {
                let explicit = args.config.config;
                let (cfg, source) = tlsmon::config::load(explicit.as_deref())?;
                tlsmon::daemon::run(cfg, tlsmon::daemon::Origin { explicit, source }).await
            }
            Command::Trace(t) => tlsmon::cli::trace::run(t.capture.trace_options(
                t.json,
                t.with_bytes,
                t.duration,
            )?)
            .await
            .map(drop),
            Command::Aggregate(args) => {
                let (cfg, _) = tlsmon::config::load(args.config.config.as_deref())?;
                tlsmon::fleet::aggregate::run(cfg).await
            }
            _ => Ok(()),
        }
    })
}
