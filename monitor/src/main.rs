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
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    // Commands that only read a file or ask the running daemon.
    let quick = match &cli.command {
        Command::Man => Some(
            tlsmon::cli::man_page()
                .and_then(|m| std::io::Write::write_all(&mut std::io::stdout(), &m))
                .map_err(anyhow::Error::from),
        ),
        Command::CheckConfig(c) => {
            Some(tlsmon::daemon::check_config(c.config.as_deref()).map(|t| print!("{t}")))
        }
        Command::Status(a) => Some(status(&a.endpoint)),
        Command::Failures(a) => Some(failures(a)),
        Command::Fleet(f) => match &f.command {
            tlsmon::cli::FleetCommand::Status(a) => Some(fleet_status(a)),
        },
        _ => None,
    };
    if let Some(r) = quick {
        return match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tlsmon: {e:#}");
                std::process::ExitCode::FAILURE
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
            Command::Run(args) => {
                let explicit = args.config.config;
                let (cfg, source) = tlsmon::config::load(explicit.as_deref())?;
                tlsmon::daemon::run(cfg, tlsmon::daemon::Origin { explicit, source }).await
            }
            Command::Trace(t) => {
                tlsmon::trace::run(t.capture.trace_options(t.json, t.with_bytes, t.duration)?)
                    .await
                    .map(drop)
            }
            Command::Aggregate(args) => {
                let (cfg, _) = tlsmon::config::load(args.config.config.as_deref())?;
                tlsmon::aggregate::run(cfg).await
            }
            Command::Analyze(_)
            | Command::Fleet(_)
            | Command::Status(_)
            | Command::Failures(_)
            | Command::CheckConfig(_)
            | Command::Man => Ok(()),
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

fn status(e: &tlsmon::cli::EndpointArgs) -> anyhow::Result<()> {
    let body = tlsmon::client::get(&e.listen()?, "/v1/status")?;
    if e.json {
        println!("{body}");
    } else {
        let v: serde_json::Value = serde_json::from_str(&body)?;
        print!("{}", tlsmon::client::status_text(&v));
    }
    Ok(())
}

fn failures(a: &tlsmon::cli::FailuresArgs) -> anyhow::Result<()> {
    let body = tlsmon::client::get(&a.endpoint.listen()?, &a.path())?;
    if a.endpoint.json {
        println!("{body}");
    } else {
        let v: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        print!("{}", tlsmon::client::failure_table(&v));
    }
    Ok(())
}

fn fleet_status(a: &tlsmon::cli::FleetStatusArgs) -> anyhow::Result<()> {
    let body = tlsmon::client::get(&a.listen()?, &a.path())?;
    if a.json {
        println!("{body}");
    } else {
        let v: tlsmon::fleet::view::FleetView = serde_json::from_str(&body)?;
        print!("{}", tlsmon::fleet::view::text(&v));
    }
    Ok(())
}
