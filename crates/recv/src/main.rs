//! `zrep-recv`: the receive service on the backup host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use zrep_recv::admin::{self, InitOptions, IssueOptions};
use zrep_recv::config::RecvConfig;
use zrep_tls::PeerName;
use zrep_zfs::DatasetName;

/// zrep's receive service: accepts paired senders over mutual TLS and runs `zfs receive` into
/// each peer's own subtree, read-only.
#[derive(Debug, Parser)]
#[command(version = zrep_cli::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    verbosity: zrep_cli::Verbosity,
}

/// The configuration file, for every command that works on an existing receiver.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(
        long,
        short,
        env = "ZREP_RECV_CONFIG",
        default_value = "/etc/zrep/recv.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve senders until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a configuration: open every certificate and key (each key must belong to its
    /// certificate, the server certificate must verify against the CA), the state directory and
    /// peers.toml, and refuse overlapping peer roots; then list listen addresses, peers (static and
    /// registered) with their roots and retention. Exit status 2 if anything is broken.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Set up a new receiver in DIR: its CA (the key never leaves DIR), its server certificate
    /// and a starting recv.toml. Refuses to overwrite existing keys or configuration.
    Init {
        /// Directory to create the files in (created if missing), e.g. /etc/zrep.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// This receiver's host name: CN and first name of its certificate.
        #[arg(long)]
        name: String,
        /// More DNS names or IP addresses senders reach this receiver by (repeatable).
        #[arg(long = "san", value_name = "HOST-OR-IP")]
        sans: Vec<String>,
        /// `listen` of the starting recv.toml.
        #[arg(long, default_value = "0.0.0.0:7711")]
        listen: SocketAddr,
        /// Lifetime of the server certificate.
        #[arg(long, default_value = "730d", value_parser = humantime_serde::re::humantime::parse_duration)]
        server_ttl: Duration,
        /// Subject CN of the new CA (default: "zrep CA <name>").
        #[arg(long)]
        ca_name: Option<String>,
    },
    /// Register a pending peer and print the one-time token to paste on the sender
    /// (`zrep-send pair`). The token is single-use and expires.
    Pair {
        /// The peer's name (its certificate's CN), e.g. nas1.
        #[arg(long)]
        name: PeerName,
        /// Everything the peer sends lands below this dataset, e.g. backup/nas1.
        #[arg(long)]
        root: String,
        /// How long the token stays valid.
        #[arg(long, default_value = "15m", value_parser = humantime_serde::re::humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Offline alternative to pairing: issue a certificate for a new peer (with a key made here,
    /// or for the peer's CSR) and write it, ca.pem and a starting send.toml into DIR.
    Issue {
        /// The peer's name (its certificate's CN), e.g. nas1.
        #[arg(long)]
        name: PeerName,
        /// Everything the peer sends lands below this dataset, e.g. backup/nas1.
        #[arg(long)]
        root: String,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Sign this PEM certificate signing request (from `zrep-send csr`) instead of making a
        /// key here.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// `receiver` (HOST:PORT) of the starting send.toml; default: this receiver's
        /// certificate name and listen port.
        #[arg(long)]
        receiver: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List peers (registered and static), their roots and certificate expiry, and pairings.
    Peers {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show, per peer and target, the newest received snapshot, its age, the snapshot count, a
    /// pending interrupted receive and the peer's retention.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `zrep-recv completions bash > /etc/bash_completion.d/zrep-recv`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `zrep-recv man > /usr/share/man/man1/zrep-recv.1`.
    Man,
    /// Revoke a peer: refused from now on, and its running sessions are ended (no restart).
    Revoke {
        /// The peer's name.
        name: PeerName,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The program's name, in completions and man pages.
const NAME: &str = "zrep-recv";

/// Exit status for a command that failed.
const EXIT_FAILED: u8 = 1;
/// Exit status for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    zrep_cli::init_logging(cli.verbosity.level(tracing::Level::INFO));
    match &cli.command {
        Command::Completions { shell } => {
            return zrep_cli::print_completions(*shell, Cli::command(), NAME);
        }
        Command::Man => return zrep_cli::print_man(Cli::command(), NAME),
        Command::Status { config, json } => return run_status(&config.config, *json),
        _ => {}
    }
    if let Command::Init {
        dir,
        name,
        sans,
        listen,
        server_ttl,
        ca_name,
    } = &cli.command
    {
        let mut options = InitOptions::new(dir.clone(), name.clone());
        options.sans = sans.clone();
        options.listen = *listen;
        options.server_ttl = *server_ttl;
        options.ca_name = ca_name.clone();
        return match admin::init(&options) {
            Ok((config, fingerprint)) => {
                println!("initialised receiver {name} in {}", dir.display());
                println!("CA fingerprint (SHA-256): {fingerprint}");
                println!("configuration: {}", config.display());
                println!(
                    "next: zrep-recv serve --config {0}, then zrep-recv pair --config {0} --name NAME --root POOL/DATASET",
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err),
        };
    }
    let path = match &cli.command {
        Command::Serve { config }
        | Command::Check { config }
        | Command::Pair { config, .. }
        | Command::Issue { config, .. }
        | Command::Peers { config }
        | Command::Revoke { config, .. } => &config.config,
        Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Status { .. } => {
            unreachable!("handled above")
        }
    };
    let config = match RecvConfig::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("zrep-recv: {}", zrep_cli::one_line(&err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // `serve` refuses what `check` refuses, with the same messages, before it binds anything.
    if matches!(cli.command, Command::Check { .. } | Command::Serve { .. }) {
        match admin::check(&config) {
            Ok(found) if matches!(cli.command, Command::Check { .. }) => {
                print!("{found}");
                return ExitCode::SUCCESS;
            }
            Ok(_) => {}
            Err(problems) => {
                for problem in &problems {
                    eprintln!("{NAME}: {problem}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let result = match cli.command {
        Command::Serve { .. } => serve(config),
        Command::Pair {
            name, root, ttl, ..
        } => parse_root(&root).and_then(|root| {
            let pairing = admin::pair(&config, &name, &root, ttl)?;
            let expires = humantime_serde::re::humantime::format_rfc3339_seconds(pairing.expires);
            let server = admin::server_name(&config).unwrap_or_else(|_| "RECEIVER".into());
            println!("pairing token for {name} (root {root}), single use, valid until {expires}:");
            println!("{}", pairing.token);
            println!(
                "on {name}: zrep-send pair --receiver {server}:{} --token {} --dir /etc/zrep",
                config.listen.port(),
                pairing.token
            );
            Ok(())
        }),
        Command::Issue {
            name,
            root,
            out,
            csr,
            receiver,
            ..
        } => parse_root(&root).and_then(|root| {
            let options = IssueOptions {
                name: name.clone(),
                root,
                out,
                csr,
                receiver,
            };
            for file in admin::issue(&config, &options)? {
                println!("wrote {}", file.display());
            }
            println!("issued a certificate for {name}; copy these files to it");
            Ok(())
        }),
        Command::Peers { .. } => admin::peers(&config).map(|table| print!("{table}")),
        Command::Revoke { name, .. } => admin::revoke(&config, &name).map(|()| {
            println!("revoked {name}: new connections are refused, running sessions end");
        }),
        Command::Init { .. }
        | Command::Check { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Status { .. } => {
            unreachable!("handled above")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn serve(config: RecvConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    runtime.block_on(zrep_recv::server::run(config))
}

fn parse_root(root: &str) -> anyhow::Result<DatasetName> {
    DatasetName::parse(root).map_err(|e| anyhow::anyhow!("--root {root:?}: {e}"))
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("{NAME}: {}", zrep_cli::one_line(err.as_ref()));
    ExitCode::from(EXIT_FAILED)
}

fn run_status(path: &std::path::Path, json: bool) -> ExitCode {
    let config = match RecvConfig::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{NAME}: {}", zrep_cli::one_line(&err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let collected = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let zfs = zrep_zfs::SystemZfs::probe(zrep_zfs::SystemZfsConfig::default()).await?;
                zrep_recv::status::collect(&zfs, &config).await
            })
        });
    match collected {
        Ok(targets) if json => match serde_json::to_string_pretty(&targets) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{NAME}: {err}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Ok(targets) => {
            print!("{}", zrep_recv::status::table(&targets));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{NAME}: {}", zrep_cli::one_line(err.as_ref()));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    /// A cause the message before it already ends with is printed once; others are chained.
    #[test]
    fn one_line_prints_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = zrep_tls::TlsError::Read {
            path: "x.pem".into(),
            source: io,
        };
        let err = anyhow::Error::from(err).context("loading the server certificate");
        assert_eq!(
            zrep_cli::one_line(err.as_ref()),
            "loading the server certificate: cannot read x.pem: entity not found"
        );
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(zrep_cli::one_line(err.as_ref()), "outer: inner");
    }
}
