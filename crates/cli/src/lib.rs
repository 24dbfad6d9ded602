//! What both zrep programs need around their own logic: reading a TOML configuration with
//! errors that name the file, setting up logging, printing completions and man pages
//! generated from their clap definitions, serving Prometheus metrics ([`metrics`]), and printing
//! an error with its causes on one line ([`one_line`], from `zrep-chain`).

pub mod guid_json;
pub mod human;
pub mod metrics;

/// The one chain printer of zrep, re-exported so the binaries keep one import for their
/// plumbing; libraries depend on `zrep-chain` directly.
pub use zrep_chain::one_line;

/// The programs' `--version`: the package version and the git commit built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ZREP_GIT_COMMIT"),
    ")"
);

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;
use tracing_subscriber::EnvFilter;

/// Why a configuration cannot be used.
///
/// A message never repeats its source: a variant that wraps a cause says what was being done,
/// and exposes the cause as `source()`; print chains with [`one_line`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or missing keys.
    #[error("{path}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// What the TOML parser said.
        source: Box<toml::de::Error>,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A value of the file at `path` is not acceptable.
    pub fn invalid(path: &Path, message: String) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            message,
        }
    }
}

/// Reads a configuration file.
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses configuration text read from `path` (named in errors).
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// `N` seconds, for a configuration's serde default written at its field:
/// `#[serde(default = "zrep_cli::secs::<10>", with = "humantime_serde")]`.
pub fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// The first send.toml of a newly paired sender (by `zrep-send pair` or `zrep-recv issue`),
/// `how` saying which in its first comment line.
pub fn starting_send_toml(
    how: &str,
    receiver: &str,
    server_name: &str,
    [cert, key, ca]: [&str; 3],
) -> String {
    format!(
        r#"# zrep-send configuration, {how}.
receiver = "{receiver}"
server-name = "{server_name}"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
# renew-before = "120d"     # renew the certificate this long before it expires (default: last third)
# rotate-key = false        # renew with a new key instead of the current one

# What to replicate (targets land under this sender's root on the receiver):
# [[dataset]]
# source = "tank/data"
"#
    )
}

/// Writes `text` to a new file at `path`; an existing file is never overwritten.
pub fn create_new(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A plain-text table for `status`: each cell padded to its column's widest, two spaces between
/// columns, no trailing blanks, one line per row.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `-v` and `-q`, for every command of both programs: each `-v` logs one level more than the
/// command's default, each `-q` one level less. `RUST_LOG`, when set, wins over both.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Verbosity {
    /// Log more (-v: one level, -vv: two; RUST_LOG wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log less (-q: one level, -qq: two; RUST_LOG wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
}

impl Verbosity {
    /// The level to log at, `default` moved by the flags (never past `error` or `trace`).
    pub fn level(&self, default: tracing::Level) -> tracing::Level {
        use tracing::Level;
        const LEVELS: [Level; 5] = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ];
        let at = LEVELS.iter().position(|l| *l == default).unwrap_or(2);
        let moved = (at + usize::from(self.verbose)).saturating_sub(usize::from(self.quiet));
        LEVELS[moved.min(LEVELS.len() - 1)]
    }
}

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (else at `level`), coloured only on
/// a terminal.
pub fn init_logging(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(level.as_str().to_ascii_lowercase())),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints shell completions for `command` on stdout.
pub fn print_completions(
    shell: clap_complete::Shell,
    mut command: clap::Command,
    name: &str,
) -> ExitCode {
    // Into a buffer first: the generator panics on a write error (a closed pipe).
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut text);
    print_bytes(&text)
}

/// Prints the man page of `command` on stdout.
pub fn print_man(command: clap::Command, name: &str) -> ExitCode {
    let mut text = Vec::new();
    match clap_mangen::Man::new(command).render(&mut text) {
        Ok(()) => print_bytes(&text),
        Err(err) => {
            eprintln!("{name}: {err}");
            ExitCode::from(1)
        }
    }
}

fn print_bytes(text: &[u8]) -> ExitCode {
    match std::io::stdout().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verbosity_moves_the_default_level_within_bounds() {
        use clap::Parser;
        use tracing::Level;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            verbosity: super::Verbosity,
        }
        let level = |args: &[&str], default| {
            let cli = Cli::try_parse_from([&["zrep"][..], args].concat()).unwrap();
            cli.verbosity.level(default)
        };
        assert_eq!(level(&[], Level::INFO), Level::INFO);
        assert_eq!(level(&["-v"], Level::INFO), Level::DEBUG);
        assert_eq!(level(&["-vvvv"], Level::WARN), Level::TRACE);
        assert_eq!(level(&["-q"], Level::INFO), Level::WARN);
        assert_eq!(level(&["-qqq"], Level::INFO), Level::ERROR);
        assert!(Cli::try_parse_from(["zrep", "-v", "-q"]).is_err());
    }

    use super::*;

    /// A wrapper that says what was done, around an I/O error, around nothing more.
    #[derive(Debug, Error)]
    #[error("reading the key")]
    struct Doing(#[source] ConfigError);

    /// An error of another crate that embeds its source in its message.
    #[derive(Debug, Error)]
    #[error("connection failed: {0}")]
    struct Embeds(#[source] std::io::Error);

    #[test]
    fn one_line_says_each_cause_once() {
        let missing = read_config(Path::new("/nonexistent/zrep.toml")).unwrap_err();
        let text = one_line(&Doing(missing));
        assert_eq!(
            text,
            "reading the key: cannot read /nonexistent/zrep.toml: No such file or directory (os error 2)"
        );
        let embeds = Embeds(std::io::Error::from_raw_os_error(104));
        let text = one_line(&embeds);
        assert!(text.starts_with("connection failed: "), "{text}");
        assert_eq!(text.matches("os error 104").count(), 1, "{text}");
        let plain = std::io::Error::from_raw_os_error(2);
        assert_eq!(one_line(&plain), plain.to_string());
    }

    #[test]
    fn errors_name_the_file() {
        let path = Path::new("/etc/zrep/x.toml");
        let parsed: Result<std::collections::BTreeMap<String, u8>, _> = parse_toml("a = ", path);
        let text = one_line(&parsed.unwrap_err());
        assert!(text.starts_with("/etc/zrep/x.toml: "), "{text}");
        assert!(text.len() > "/etc/zrep/x.toml: ".len(), "{text}");
        let missing = read_config(Path::new("/nonexistent/zrep.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read /nonexistent/zrep.toml")
        );
        let invalid = ConfigError::invalid(path, "bad".into());
        assert_eq!(invalid.to_string(), "/etc/zrep/x.toml: bad");
    }
}
