//! `send.toml`, parsed once into typed values. Relative paths are relative to the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zrep_repl::retention::{KeepPolicy, parse_grid};
use zrep_repl::transport::Liveness;
use zrep_zfs::{DatasetName, RelativeName};

pub use zrep_cli::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    receiver: String,
    server_name: String,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_commit_timeout", with = "humantime_serde")]
    commit_timeout: Duration,
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    heartbeat_interval: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    write_timeout: Duration,
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(default = "default_compression_level")]
    compression_level: i32,
    keep_last: Option<usize>,
    keep: Option<RawKeep>,
    #[serde(default, with = "humantime_serde")]
    renew_before: Option<Duration>,
    #[serde(default)]
    rotate_key: bool,
    state_dir: Option<PathBuf>,
    max_lag: Option<RawMaxLag>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    metrics_listen: Option<String>,
    bandwidth_limit: Option<String>,
    #[serde(default, rename = "dataset")]
    datasets: Vec<RawDataset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDataset {
    source: String,
    target: Option<String>,
    #[serde(default = "default_true")]
    intermediates: bool,
    prefix: Option<String>,
    keep_last: Option<usize>,
    keep: Option<RawKeep>,
    max_lag: Option<RawMaxLag>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    raw: bool,
}

/// `max-lag = { warn = "2h", crit = "6h" }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMaxLag {
    #[serde(with = "humantime_serde")]
    warn: Duration,
    #[serde(with = "humantime_serde")]
    crit: Duration,
}

/// `keep = { last = 3, grid = "1h:24, 1d:30" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKeep {
    #[serde(default = "default_keep_last")]
    last: usize,
    #[serde(default)]
    grid: String,
}

fn default_prefix() -> String {
    zrep_repl::naming::DEFAULT_PREFIX.to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_commit_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
/// Below the shipped unit's `TimeoutStopSec=30s`, so that an abort after the grace still has
/// time to close `zfs send`'s pipe and let it exit before the service manager kills it (a
/// signalled `zfs send` leaves holds on zfs-fuse).
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(20)
}
fn default_compression_level() -> i32 {
    3
}
fn default_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_keep_last() -> usize {
    1
}
fn default_true() -> bool {
    true
}

/// The longest `shutdown-grace`: a stop that may take longer is a hang to whoever waits for it.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);

/// A validated sender configuration.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// The receiver's address, `HOST:PORT`.
    pub receiver: String,
    /// The name in the receiver's certificate.
    pub server_name: String,
    /// This sender's certificate chain (PEM).
    pub cert: PathBuf,
    /// This sender's private key (PEM).
    pub key: PathBuf,
    /// The receiver's CA (PEM).
    pub ca: PathBuf,
    /// Limit for TCP connect, TLS handshake and protocol hello together.
    pub connect_timeout: Duration,
    /// Limit for the receiver's commit answer after the stream ended.
    pub commit_timeout: Duration,
    /// Heartbeat interval, silence and write-stall limits of the session with the receiver.
    pub liveness: Liveness,
    /// After the first SIGTERM or SIGINT, how long a transfer in flight may take to commit before
    /// it is aborted (0: at once).
    pub shutdown_grace: Duration,
    /// zstd level for data chunks (1 to 19).
    pub compression_level: i32,
    /// Renew the certificate when less than this is left (default: a third of its lifetime).
    pub renew_before: Option<Duration>,
    /// Renew with a new key rather than the current one.
    pub rotate_key: bool,
    /// Where the per-dataset state files live (default: the config file's directory).
    pub state_dir: PathBuf,
    /// Where `zrep-send run` serves Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// At most this many bytes per second of stream data on the wire (after compression).
    pub bandwidth_limit: Option<u64>,
    /// The datasets to replicate, in order.
    pub datasets: Vec<DatasetConfig>,
}

/// One replicated dataset.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    /// The dataset on this host.
    pub source: DatasetName,
    /// Its name under this peer's root on the receiver.
    pub target: RelativeName,
    /// `-I` (every snapshot in between travels) rather than `-i`.
    pub intermediates: bool,
    /// Prefix of zrep's snapshot names.
    pub prefix: String,
    /// Which of zrep's snapshots to keep on the source (`keep`, or `keep-last` as a shorthand
    /// for `keep = { last = N }`); the newest common one is kept whatever it says.
    pub keep: KeepPolicy,
    /// Raw streams (`zfs send -w`, OpenZFS): an encrypted dataset travels encrypted and the
    /// receiver never needs its key.
    pub raw: bool,
    /// Lag thresholds for `zrep-send status --check`.
    pub max_lag: MaxLag,
    /// How often `zrep-send run` replicates it (from the start of one cycle to the next).
    pub interval: Duration,
    /// Also every filesystem and volume below it (listed at each cycle), each to the same path
    /// below `target`.
    pub recursive: bool,
    /// Subtrees left out of a recursive dataset.
    pub exclude: Vec<DatasetName>,
}

/// Thresholds on lag (now minus the creation of the newest replicated snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLag {
    /// Above this: WARN.
    pub warn: Duration,
    /// Above this: CRIT.
    pub crit: Duration,
}

impl Default for MaxLag {
    /// A daily job that missed one run warns, one that missed two is critical.
    fn default() -> Self {
        Self {
            warn: Duration::from_secs(25 * 3600),
            crit: Duration::from_secs(49 * 3600),
        }
    }
}

impl SendConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&zrep_cli::read_config(path)?, path)
    }

    /// Parses configuration text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = zrep_cli::parse_toml(text, path)?;
        let invalid = |message: String| ConfigError::invalid(path, message);
        if !raw.receiver.contains(':') {
            return Err(invalid(format!(
                "receiver = {:?}: expected HOST:PORT",
                raw.receiver
            )));
        }
        if !(1..=19).contains(&raw.compression_level) {
            return Err(invalid("compression-level must be 1 to 19".into()));
        }
        let liveness = Liveness {
            heartbeat_interval: raw.heartbeat_interval,
            idle_timeout: raw.idle_timeout,
            write_timeout: raw.write_timeout,
        };
        liveness.check().map_err(invalid)?;
        if raw.shutdown_grace > MAX_SHUTDOWN_GRACE {
            return Err(invalid(format!(
                "shutdown-grace must be at most {} (a service manager's stop timeout must outlast it)",
                humantime_serde::re::humantime::format_duration(MAX_SHUTDOWN_GRACE)
            )));
        }
        let check_prefix = |prefix: &str| {
            let ok = !prefix.is_empty()
                && prefix.len() <= 32
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
            if ok {
                Ok(())
            } else {
                Err(invalid(format!(
                    "prefix {prefix:?}: use 1 to 32 of A-Z a-z 0-9 - ."
                )))
            }
        };
        check_prefix(&raw.prefix)?;
        let keep_policy = |what: &str,
                           last: Option<usize>,
                           keep: Option<&RawKeep>|
         -> Result<Option<KeepPolicy>, ConfigError> {
            match (last, keep) {
                (Some(_), Some(_)) => Err(invalid(format!(
                    "{what}: give keep-last or keep, not both (keep-last = N is keep = {{ last = N }})"
                ))),
                (Some(0), None) => Err(invalid(format!(
                    "keep-last of {what} must be at least 1 (the newest common snapshot)"
                ))),
                (Some(last), None) => Ok(Some(KeepPolicy::last(last))),
                (None, Some(keep)) => Ok(Some(KeepPolicy {
                    last: keep.last,
                    grid: parse_grid(&keep.grid)
                        .map_err(|e| invalid(format!("keep of {what}: {e}")))?,
                })),
                (None, None) => Ok(None),
            }
        };
        let max_lag = |what: &str, raw: Option<RawMaxLag>| -> Result<Option<MaxLag>, ConfigError> {
            match raw {
                Some(m) if m.warn > m.crit => Err(invalid(format!(
                    "max-lag of {what}: warn must not exceed crit"
                ))),
                Some(m) => Ok(Some(MaxLag {
                    warn: m.warn,
                    crit: m.crit,
                })),
                None => Ok(None),
            }
        };
        let default_max_lag = max_lag("the configuration", raw.max_lag)?.unwrap_or_default();
        let default_keep =
            keep_policy("the configuration", raw.keep_last, raw.keep.as_ref())?.unwrap_or_default();
        let base = path.parent().unwrap_or(Path::new("."));
        let metrics_listen = match &raw.metrics_listen {
            Some(addr) => Some(addr.parse().map_err(|e| {
                invalid(format!(
                    "metrics-listen = {addr:?}: {e} (expected ADDRESS:PORT)"
                ))
            })?),
            None => None,
        };
        let bandwidth_limit = match &raw.bandwidth_limit {
            Some(text) => Some(
                zrep_repl::rate::parse_rate(text)
                    .map_err(|e| invalid(format!("bandwidth-limit = {e}")))?,
            ),
            None => None,
        };
        let mut datasets: Vec<DatasetConfig> = Vec::new();
        for ds in raw.datasets {
            let source = DatasetName::parse(&ds.source)
                .map_err(|e| invalid(format!("dataset source: {e}")))?;
            let target = match &ds.target {
                Some(target) => RelativeName::parse(target)
                    .map_err(|e| invalid(format!("target of {source}: {e}")))?,
                None => source.without_pool().ok_or_else(|| {
                    invalid(format!(
                        "dataset {source} is a pool's root: give it a `target` name"
                    ))
                })?,
            };
            if let Some(prefix) = &ds.prefix {
                check_prefix(prefix)?;
            }
            let max_lag = max_lag(source.as_str(), ds.max_lag)?.unwrap_or(default_max_lag);
            let mut exclude = Vec::new();
            for x in &ds.exclude {
                let name = DatasetName::parse(x)
                    .map_err(|e| invalid(format!("exclude of {source}: {e}")))?;
                if !ds.recursive {
                    return Err(invalid(format!(
                        "exclude of {source} needs recursive = true"
                    )));
                }
                if !name.is_within(&source) || name == source {
                    return Err(invalid(format!(
                        "exclude {name} of {source} is not below it"
                    )));
                }
                exclude.push(name);
            }
            let interval = ds.interval.unwrap_or(raw.interval);
            if interval < Duration::from_secs(1) {
                return Err(invalid(format!("interval of {source} must be at least 1s")));
            }
            let keep = keep_policy(source.as_str(), ds.keep_last, ds.keep.as_ref())?
                .unwrap_or_else(|| default_keep.clone());
            if let Some(other) = datasets.iter().find(|d| d.target == target) {
                return Err(invalid(format!(
                    "{source} and {} both replicate to target {target}",
                    other.source
                )));
            }
            datasets.push(DatasetConfig {
                source,
                target,
                intermediates: ds.intermediates,
                prefix: ds.prefix.unwrap_or_else(|| raw.prefix.clone()),
                keep,
                raw: ds.raw,
                max_lag,
                interval,
                recursive: ds.recursive,
                exclude,
            });
        }
        if datasets.is_empty() {
            return Err(invalid(
                "no [[dataset]] to replicate; add one per source, e.g. [[dataset]] with source = \"tank/data\"".into(),
            ));
        }
        Ok(Self {
            receiver: raw.receiver,
            server_name: raw.server_name,
            cert: base.join(raw.cert),
            key: base.join(raw.key),
            ca: base.join(raw.ca),
            connect_timeout: raw.connect_timeout,
            commit_timeout: raw.commit_timeout,
            liveness,
            shutdown_grace: raw.shutdown_grace,
            renew_before: raw.renew_before,
            rotate_key: raw.rotate_key,
            metrics_listen,
            bandwidth_limit,
            state_dir: raw
                .state_dir
                .map_or_else(|| base.to_owned(), |d| base.join(d)),
            compression_level: raw.compression_level,
            datasets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
receiver = "backup.example:7711"
server-name = "backup1"
cert = "nas1.pem"
key = "nas1.key"
ca = "ca.pem"

[[dataset]]
source = "zpool1/nfs/vm/esxi"
target = "nfs/vm/esxi"

[[dataset]]
source = "zpool1/home dirs"
intermediates = false
keep-last = 3
"#;

    #[test]
    fn parses_with_defaults() {
        let config = SendConfig::parse(EXAMPLE, Path::new("/etc/zrep/send.toml")).unwrap();
        assert_eq!(config.ca, Path::new("/etc/zrep/ca.pem"));
        assert_eq!(config.datasets.len(), 2);
        let home = &config.datasets[1];
        assert_eq!(home.target.as_str(), "home dirs");
        assert!(!home.intermediates);
        assert_eq!(home.keep, KeepPolicy::last(3));
        assert_eq!(config.datasets[0].keep, KeepPolicy::last(1));
        assert_eq!(home.prefix, "zrep");
        assert!(config.datasets[0].intermediates);
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        let text = EXAMPLE.replace(
            "ca = \"ca.pem\"",
            "ca = \"ca.pem\"\nshutdown-grace = \"0s\"",
        );
        let config = SendConfig::parse(&text, Path::new("send.toml")).unwrap();
        assert_eq!(config.shutdown_grace, Duration::ZERO, "0: abort at once");
    }

    #[test]
    fn refuses_bad_configs() {
        let cases = [
            (
                EXAMPLE.replace("server-name", "servername"),
                "unknown field",
            ),
            (
                EXAMPLE.replace("target = \"nfs/vm/esxi\"", "target = \"../esxi\""),
                "target of",
            ),
            (
                EXAMPLE.replace("\"zpool1/home dirs\"", "\"zpool1\""),
                "pool's root",
            ),
            (
                EXAMPLE.replace("keep-last = 3", "keep-last = 0"),
                "at least 1",
            ),
            (
                EXAMPLE.replace("keep-last = 3", "keep-last = 3\nkeep = { last = 2 }"),
                "not both",
            ),
            (
                EXAMPLE.replace("keep-last = 3", "keep = { grid = \"1h\" }"),
                "PERIOD:COUNT",
            ),
            (
                EXAMPLE.replace("keep-last = 3", "keep = { lats = 2 }"),
                "unknown field",
            ),
            (
                EXAMPLE.replace("keep-last = 3", "exclude = [\"zpool1/home dirs/x\"]"),
                "needs recursive",
            ),
            (
                EXAMPLE.replace(
                    "keep-last = 3",
                    "recursive = true\nexclude = [\"zpool1/other\"]",
                ),
                "is not below it",
            ),
            (
                EXAMPLE.replace(
                    "keep-last = 3",
                    "max-lag = { warn = \"2h\", crit = \"1h\" }",
                ),
                "warn must not exceed crit",
            ),
            (
                EXAMPLE.replace("intermediates = false", "target = \"nfs/vm/esxi\""),
                "both replicate",
            ),
            (
                EXAMPLE.replace("backup.example:7711", "backup.example"),
                "HOST:PORT",
            ),
            (
                EXAMPLE.replace("ca = \"ca.pem\"", "ca = \"ca.pem\"\nmetrics-listen = \"x\""),
                "metrics-listen",
            ),
            (
                EXAMPLE.replace(
                    "ca = \"ca.pem\"",
                    "ca = \"ca.pem\"\nbandwidth-limit = \"50MiB\"",
                ),
                "bandwidth-limit",
            ),
            (
                EXAMPLE.replace(
                    "ca = \"ca.pem\"",
                    "ca = \"ca.pem\"\nshutdown-grace = \"2h\"",
                ),
                "shutdown-grace must be at most 1h",
            ),
            (
                EXAMPLE.replace(
                    "ca = \"ca.pem\"",
                    "ca = \"ca.pem\"\nshutdown-grace = \"soon\"",
                ),
                "shutdown-grace",
            ),
        ];
        for (text, want) in cases {
            let err = SendConfig::parse(&text, Path::new("send.toml")).unwrap_err();
            let err = zrep_cli::one_line(&err);
            assert!(err.contains(want), "{err} lacks {want:?}");
        }
    }
    #[test]
    fn keep_policies_resolve_per_dataset() {
        let text = EXAMPLE.replace(
            "ca = \"ca.pem\"\n",
            "ca = \"ca.pem\"\nkeep = { last = 2, grid = \"1h:24, 1d:30\" }\n",
        );
        let config = SendConfig::parse(&text, Path::new("send.toml")).unwrap();
        assert_eq!(config.datasets[0].keep.last, 2);
        assert_eq!(config.datasets[0].keep.grid.len(), 2);
        assert_eq!(config.datasets[1].keep, KeepPolicy::last(3));
        let text = text.replace("keep-last = 3", "keep = { grid = \"1d:7\" }");
        let config = SendConfig::parse(&text, Path::new("send.toml")).unwrap();
        assert_eq!(config.datasets[1].keep.to_string(), "last 1, grid 1d:7");
    }

    /// The configuration documented in README.md is one this version accepts.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = readme.split("### `send.toml`").nth(1).unwrap();
        let block = section.split("```toml\n").nth(1).unwrap();
        let text = block.split("```").next().unwrap();
        SendConfig::parse(text, Path::new("/etc/zrep/send.toml")).unwrap();
    }
}
