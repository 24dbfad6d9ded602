//! `zrep-send`: the push agent on the primary.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use zrep_send::config::SendConfig;
use zrep_send::once::{RunOutcome, run_once};
use zrep_send::pair::{PairOptions, pair};
use zrep_tls::{Overwrite, PairingToken, PeerCsr, PeerName, write_key_file};

/// zrep's push agent: snapshots datasets, finds the newest snapshot common with the receiver by
/// GUID and streams the difference to zrep-recv over mutual TLS.
#[derive(Debug, Parser)]
#[command(version = zrep_cli::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    verbosity: zrep_cli::Verbosity,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate every configured dataset once (for cron); one line per dataset on stdout.
    /// SIGTERM or SIGINT: no dataset starts after it, a transfer in flight may commit within
    /// `shutdown-grace` (a second signal aborts it), and one line says what it was doing.
    Once {
        /// The configuration file (TOML).
        #[arg(long, short, env = "ZREP_SEND_CONFIG")]
        config: PathBuf,
    },
    /// Run as a daemon: replicate each dataset every `interval` over one session until SIGTERM or
    /// SIGINT (a running transfer may commit within `shutdown-grace`, a second signal aborts
    /// it; the next start resumes or restarts an aborted one).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, env = "ZREP_SEND_CONFIG")]
        config: PathBuf,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `zrep-send completions bash > /etc/bash_completion.d/zrep-send`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `zrep-send man > /usr/share/man/man1/zrep-send.1`.
    Man,
    /// Show each dataset's replication state (from the state files): last success, snapshot,
    /// lag, bytes, rate, last error.
    Status {
        /// The configuration file (TOML).
        #[arg(long, short, env = "ZREP_SEND_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Judge each dataset against its max-lag and exit 0 OK, 1 WARN, 2 CRIT (3: the
        /// configuration is unusable), like a monitoring plugin.
        #[arg(long)]
        check: bool,
    },
    /// Pair with a receiver using the one-time token from `zrep-recv pair`: makes this sender's
    /// key here, gets its certificate over TLS (the receiver is recognised by the token) and
    /// writes sender.key (0600), sender.pem, ca.pem and a starting send.toml into DIR.
    Pair {
        /// The receiver, HOST:PORT.
        #[arg(long)]
        receiver: String,
        /// The token printed by `zrep-recv pair` (or set ZREP_PAIRING_TOKEN, which keeps it out
        /// of the process list).
        #[arg(long, env = "ZREP_PAIRING_TOKEN", hide_env_values = true)]
        token: String,
        /// Directory for the key, certificates and send.toml (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Limit for the whole exchange.
        #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
    },
    /// For hosts that cannot reach the receiver during set-up: make this sender's key
    /// (DIR/sender.key, 0600) and a certificate signing request (DIR/sender.csr) to sign with
    /// `zrep-recv issue --csr`.
    Csr {
        /// The peer name to ask for (the receiver decides).
        #[arg(long)]
        name: PeerName,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The program's name, in completions and man pages.
const NAME: &str = "zrep-send";

/// Exit statuses a cron job or monitor can act on.
const EXIT_SOME_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_SETUP: u8 = 3;
/// `once` was stopped by a signal before it was through.
const EXIT_STOPPED: u8 = 4;
/// `status --check` could not judge (monitoring plugins' UNKNOWN).
const EXIT_CHECK_UNKNOWN: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon reports its cycles at info, as zrep-recv does; a command run by hand or cron
    // prints its result on stdout and logs only what went wrong.
    let default = if matches!(cli.command, Command::Run { .. }) {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    zrep_cli::init_logging(cli.verbosity.level(default));
    match &cli.command {
        Command::Completions { shell } => {
            return zrep_cli::print_completions(*shell, Cli::command(), NAME);
        }
        Command::Man => return zrep_cli::print_man(Cli::command(), NAME),
        _ => {}
    }
    let config = match cli.command {
        Command::Once { config } => config,
        Command::Pair {
            receiver,
            token,
            dir,
            timeout,
        } => return run_pair(receiver, &token, dir, timeout),
        Command::Csr { name, dir } => return run_csr(&name, &dir),
        Command::Status {
            config,
            json,
            check,
        } => return run_status(&config, json, check),
        Command::Run { config } => return run_daemon(&config),
        Command::Completions { .. } | Command::Man => unreachable!("handled above"),
    };
    let (config, runtime) = match config_and_runtime(&config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    match runtime.block_on(run_once(&config)) {
        Ok(RunOutcome::AllReplicated) => ExitCode::SUCCESS,
        Ok(RunOutcome::SomeFailed) => ExitCode::from(EXIT_SOME_FAILED),
        Ok(RunOutcome::Stopped) => ExitCode::from(EXIT_STOPPED),
        Err(err) => {
            eprintln!("zrep-send: {}", zrep_cli::one_line(err.as_ref()));
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn run_daemon(config: &std::path::Path) -> ExitCode {
    let (config, runtime) = match config_and_runtime(config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    match runtime.block_on(zrep_send::daemon::run_daemon(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zrep-send: {}", zrep_cli::one_line(err.as_ref()));
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn run_status(config: &std::path::Path, json: bool, check: bool) -> ExitCode {
    use zrep_send::status::{evaluate, overall, table};
    let config = match SendConfig::load(config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("zrep-send: {}", zrep_cli::one_line(&err));
            return ExitCode::from(if check {
                EXIT_CHECK_UNKNOWN
            } else {
                EXIT_CONFIG
            });
        }
    };
    let now = std::time::SystemTime::now();
    let mut statuses = evaluate(&config, now);
    // Snapshots something else holds are never pruned: say so. Best effort: status reads its
    // state files without ZFS too.
    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        runtime.block_on(async {
            let probed = zrep_zfs::SystemZfs::probe(zrep_zfs::SystemZfsConfig::default()).await;
            if let Ok(zfs) = probed {
                zrep_send::status::add_foreign_holds(&mut statuses, &config, &zfs).await;
            }
        });
    }
    let worst = overall(&statuses);
    if json {
        match serde_json::to_string_pretty(&statuses) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("zrep-send: {err}");
                return ExitCode::from(EXIT_CHECK_UNKNOWN);
            }
        }
    } else if check {
        let bad: Vec<String> = statuses
            .iter()
            .filter(|s| s.health == worst)
            .map(|s| format!("{}: {}", s.source, s.reason))
            .collect();
        println!(
            "{} - {} dataset(s); {}",
            format!("{worst:?}").to_uppercase(),
            statuses.len(),
            bad.join("; ")
        );
    } else {
        print!("{}", table(&statuses, now));
    }
    if check {
        ExitCode::from(worst.exit_code())
    } else {
        ExitCode::SUCCESS
    }
}

fn run_pair(receiver: String, token: &str, dir: PathBuf, timeout: Duration) -> ExitCode {
    let token: PairingToken = match token.parse() {
        Ok(token) => token,
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
    let options = PairOptions {
        receiver,
        token,
        dir,
        timeout,
    };
    match runtime.block_on(pair(&options)) {
        Ok(paired) => {
            println!(
                "paired with {} as {} (root {} there); certificate valid until {}",
                options.receiver,
                paired.peer,
                paired.root,
                humantime_serde::re::humantime::format_rfc3339_seconds(paired.not_after)
            );
            for file in &paired.files {
                println!("wrote {}", file.display());
            }
            println!(
                "next: add [[dataset]] entries to {}, then zrep-send once --config {0}",
                options.dir.join(zrep_send::pair::CONFIG_FILE).display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "zrep-send: pairing failed: {}",
                zrep_cli::one_line(err.as_ref())
            );
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn run_csr(name: &PeerName, dir: &std::path::Path) -> ExitCode {
    let made = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let request = PeerCsr::generate(name)?;
        write_key_file(
            &dir.join(zrep_send::pair::KEY_FILE),
            request.key_pem(),
            Overwrite::Refuse,
        )?;
        std::fs::write(dir.join("sender.csr"), request.csr_pem())?;
        Ok(())
    })();
    match made {
        Ok(()) => {
            println!(
                "wrote {} and {}; sign the CSR on the receiver: zrep-recv issue --name {name} --root POOL/DATASET --csr sender.csr --out DIR",
                dir.join(zrep_send::pair::KEY_FILE).display(),
                dir.join("sender.csr").display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("zrep-send: {}", zrep_cli::one_line(err.as_ref()));
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// Loads the configuration and starts the runtime, or says why not with the exit status to use.
fn config_and_runtime(
    path: &std::path::Path,
) -> Result<(SendConfig, tokio::runtime::Runtime), ExitCode> {
    let config = SendConfig::load(path).map_err(|err| {
        eprintln!("zrep-send: {}", zrep_cli::one_line(&err));
        ExitCode::from(EXIT_CONFIG)
    })?;
    let runtime = tokio::runtime::Runtime::new().map_err(|err| {
        eprintln!("zrep-send: cannot start the runtime: {err}");
        ExitCode::from(EXIT_SETUP)
    })?;
    Ok((config, runtime))
}
