//! `zrep-recv`: the receive service on the backup host.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zrep_recv::config::RecvConfig;

/// zrep's receive service: accepts paired senders over mutual TLS and runs `zfs receive` into
/// each peer's own subtree, read-only.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve senders until SIGINT or SIGTERM.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short, env = "ZREP_RECV_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and print the peers it maps.
    Check {
        /// The configuration file (TOML).
        #[arg(long, short, env = "ZREP_RECV_CONFIG")]
        config: PathBuf,
    },
}

/// Exit status for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let path = match &cli.command {
        Command::Serve { config } | Command::Check { config } => config,
    };
    let config = match RecvConfig::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("zrep-recv: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Check { .. } => {
            println!("listen {}", config.listen);
            for (peer, root) in &config.peers {
                println!("peer {peer} -> {root}");
            }
            ExitCode::SUCCESS
        }
        Command::Serve { .. } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("zrep-recv: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(zrep_recv::server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("zrep-recv: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
