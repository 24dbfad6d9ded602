//! `zrep-send`: the push agent on the primary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zrep_send::config::SendConfig;
use zrep_send::once::{RunOutcome, run_once};

/// zrep's push agent: snapshots datasets, finds the newest snapshot common with the receiver by
/// GUID and streams the difference to zrep-recv over mutual TLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate every configured dataset once (for cron); one line per dataset on stdout.
    Once {
        /// The configuration file (TOML).
        #[arg(long, short, env = "ZREP_SEND_CONFIG")]
        config: PathBuf,
    },
}

/// Exit statuses a cron job or monitor can act on.
const EXIT_SOME_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_SETUP: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let Command::Once { config } = cli.command;
    let config = match SendConfig::load(&config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("zrep-send: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("zrep-send: cannot start the runtime: {err}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    match runtime.block_on(run_once(&config)) {
        Ok(RunOutcome::AllReplicated) => ExitCode::SUCCESS,
        Ok(RunOutcome::SomeFailed) => ExitCode::from(EXIT_SOME_FAILED),
        Err(err) => {
            eprintln!("zrep-send: {err:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
