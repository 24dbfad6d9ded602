//! `recv.toml`, parsed once into typed values. Relative paths are relative to the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zrep_repl::receiver::Retention;
use zrep_repl::retention::{KeepPolicy, parse_grid};
use zrep_tls::PeerName;
use zrep_zfs::DatasetName;

pub use zrep_cli::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    ca_key: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default = "default_peer_cert_ttl", with = "humantime_serde")]
    peer_cert_ttl: Duration,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    handshake_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_receive_timeout", with = "humantime_serde")]
    receive_timeout: Duration,
    metrics_listen: Option<String>,
    #[serde(default)]
    keep: BTreeMap<String, RawKeep>,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPeer {
    name: String,
    root: String,
    keep: Option<RawKeep>,
}

/// `keep = { last = 30, grid = "1d:30, 1w:12", prefix = "zrep" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKeep {
    #[serde(default = "default_keep_last")]
    last: usize,
    #[serde(default)]
    grid: String,
    #[serde(default = "default_prefix")]
    prefix: String,
}

fn default_keep_last() -> usize {
    1
}
fn default_prefix() -> String {
    zrep_repl::naming::DEFAULT_PREFIX.to_owned()
}

fn default_peer_cert_ttl() -> Duration {
    zrep_tls::DEFAULT_PEER_TTL
}
fn default_max_connections() -> usize {
    16
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_receive_timeout() -> Duration {
    Duration::from_secs(600)
}

/// A validated receiver configuration.
#[derive(Debug, Clone)]
pub struct RecvConfig {
    /// Where to listen for senders.
    pub listen: SocketAddr,
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA whose client certificates are accepted (PEM).
    pub ca: PathBuf,
    /// The CA's private key: needed to pair, issue and renew; without it only existing
    /// certificates work.
    pub ca_key: Option<PathBuf>,
    /// Where the peers registry lives (`peers.toml`); default: the config file's directory.
    pub state_dir: PathBuf,
    /// Lifetime of peer certificates issued by pairing, `issue` and renewal.
    pub peer_cert_ttl: Duration,
    /// At most this many connections at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Limit for the TLS handshake and the protocol hello.
    pub handshake_timeout: Duration,
    /// A peer silent for this long (no frame, not even a heartbeat) is disconnected.
    pub idle_timeout: Duration,
    /// Limit for `zfs receive` to finish once the stream has ended.
    pub receive_timeout: Duration,
    /// Each peer's root dataset, by certificate name.
    pub peers: BTreeMap<PeerName, DatasetName>,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The receiver's own retention for a peer's targets (`keep` of its `[[peer]]`), applied
    /// after each commit; peers without one keep everything.
    pub retention: BTreeMap<PeerName, Retention>,
}

impl RecvConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&zrep_cli::read_config(path)?, path)
    }

    /// Parses configuration text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = zrep_cli::parse_toml(text, path)?;
        let invalid = |message: String| ConfigError::invalid(path, message);
        let listen = raw.listen.parse().map_err(|e| {
            invalid(format!(
                "listen = {:?}: {e} (expected ADDRESS:PORT)",
                raw.listen
            ))
        })?;
        if raw.max_connections == 0 {
            return Err(invalid("max-connections must be at least 1".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        if raw.peer_cert_ttl < Duration::from_secs(60) {
            return Err(invalid("peer-cert-ttl must be at least 1 minute".into()));
        }
        let metrics_listen = match &raw.metrics_listen {
            Some(addr) => Some(addr.parse().map_err(|e| {
                invalid(format!(
                    "metrics-listen = {addr:?}: {e} (expected ADDRESS:PORT)"
                ))
            })?),
            None => None,
        };
        let mut peers = BTreeMap::new();
        let mut retention = BTreeMap::new();
        for peer in raw.peers {
            let name = PeerName::new(peer.name.clone())
                .map_err(|e| invalid(format!("peer name {:?}: {e}", peer.name)))?;
            let root = DatasetName::parse(&peer.root)
                .map_err(|e| invalid(format!("root of peer {name}: {e}")))?;
            if root.parent().is_none() {
                return Err(invalid(format!(
                    "root of peer {name} is the pool {root}; give each peer a dataset below the pool"
                )));
            }
            for (other, other_root) in &peers {
                if root.is_within(other_root) || other_root.is_within(&root) {
                    return Err(invalid(format!(
                        "roots of peers {other} ({other_root}) and {name} ({root}) overlap; each peer needs its own subtree"
                    )));
                }
            }
            if peers.insert(name.clone(), root).is_some() {
                return Err(invalid(format!("peer {name} is listed twice")));
            }
            if let Some(keep) = peer.keep {
                let grid = parse_grid(&keep.grid)
                    .map_err(|e| invalid(format!("keep of peer {name}: {e}")))?;
                retention.insert(
                    name,
                    Retention {
                        prefix: keep.prefix,
                        keep: KeepPolicy {
                            last: keep.last,
                            grid,
                        },
                    },
                );
            }
        }
        // `[keep]`: retention by peer name, also for peers registered by pairing.
        for (name, keep) in raw.keep {
            let name = PeerName::new(name.clone())
                .map_err(|e| invalid(format!("[keep] peer name {name:?}: {e}")))?;
            let grid =
                parse_grid(&keep.grid).map_err(|e| invalid(format!("keep of peer {name}: {e}")))?;
            let policy = Retention {
                prefix: keep.prefix,
                keep: KeepPolicy {
                    last: keep.last,
                    grid,
                },
            };
            if retention.insert(name.clone(), policy).is_some() {
                return Err(invalid(format!(
                    "peer {name} has keep both in [keep] and in its [[peer]]"
                )));
            }
        }
        Ok(Self {
            listen,
            cert: base.join(raw.cert),
            key: base.join(raw.key),
            ca: base.join(raw.ca),
            ca_key: raw.ca_key.map(|k| base.join(k)),
            state_dir: raw
                .state_dir
                .map_or_else(|| base.to_owned(), |d| base.join(d)),
            peer_cert_ttl: raw.peer_cert_ttl,
            max_connections: raw.max_connections,
            handshake_timeout: raw.handshake_timeout,
            idle_timeout: raw.idle_timeout,
            receive_timeout: raw.receive_timeout,
            peers,
            retention,
            metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:7711"
cert = "backup1.pem"
key = "backup1.key"
ca = "ca.pem"
idle-timeout = "30s"

[[peer]]
name = "nas1"
root = "backup/nas1"

[[peer]]
name = "nas2"
root = "backup/nas2"
"#;

    #[test]
    fn parses_and_resolves_paths() {
        let config = RecvConfig::parse(EXAMPLE, Path::new("/etc/zrep/recv.toml")).unwrap();
        assert_eq!(config.cert, Path::new("/etc/zrep/backup1.pem"));
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.max_connections, 16);
        let nas1 = PeerName::new("nas1").unwrap();
        assert_eq!(config.peers[&nas1].as_str(), "backup/nas1");
        assert!(config.retention.is_empty());
    }

    #[test]
    fn per_peer_keep() {
        let text = EXAMPLE.replace(
            "root = \"backup/nas2\"",
            "root = \"backup/nas2\"\nkeep = { last = 5, grid = \"1d:30\" }",
        );
        let config = RecvConfig::parse(&text, Path::new("recv.toml")).unwrap();
        let nas2 = PeerName::new("nas2").unwrap();
        assert_eq!(config.retention.len(), 1);
        assert_eq!(config.retention[&nas2].prefix, "zrep");
        assert_eq!(
            config.retention[&nas2].keep.to_string(),
            "last 5, grid 1d:30"
        );
        // `[keep]` names peers registered by pairing too (their roots live in peers.toml).
        let text = format!("{text}\n[keep]\nnas3 = {{ last = 7 }}\n");
        let config = RecvConfig::parse(&text, Path::new("recv.toml")).unwrap();
        let nas3 = PeerName::new("nas3").unwrap();
        assert_eq!(config.retention[&nas3].keep, KeepPolicy::last(7));
        let twice = text.replace("nas3 = ", "nas2 = ");
        let err = RecvConfig::parse(&twice, Path::new("recv.toml")).unwrap_err();
        assert!(err.to_string().contains("both in [keep]"), "{err}");
        let bad = EXAMPLE.replace(
            "root = \"backup/nas2\"",
            "root = \"backup/nas2\"\nkeep = { grid = \"daily\" }",
        );
        let err = RecvConfig::parse(&bad, Path::new("recv.toml")).unwrap_err();
        assert!(err.to_string().contains("keep of peer nas2"), "{err}");
    }

    #[test]
    fn refuses_bad_configs() {
        let cases = [
            (
                EXAMPLE.replace("idle-timeout", "idle-timout"),
                "unknown field",
            ),
            (EXAMPLE.replace("backup/nas2", "backup/nas1/x"), "overlap"),
            (EXAMPLE.replace("backup/nas2", "backup"), "is the pool"),
            (EXAMPLE.replace("\"nas2\"", "\"nas 2\""), "peer name"),
            (
                EXAMPLE.replace("backup/nas2", "backup/../x"),
                "root of peer",
            ),
            (EXAMPLE.replace("127.0.0.1:7711", "localhost"), "listen"),
            (
                EXAMPLE.replace("idle-timeout", "metrics-listen = \"x\"\nidle-timeout"),
                "metrics-listen",
            ),
        ];
        for (text, want) in cases {
            let err = RecvConfig::parse(&text, Path::new("recv.toml")).unwrap_err();
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
        }
    }
    /// The configuration documented in README.md is one this version accepts.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = readme.split("### `recv.toml`").nth(1).unwrap();
        let block = section.split("```toml\n").nth(1).unwrap();
        let text = block.split("```").next().unwrap();
        RecvConfig::parse(text, Path::new("/etc/zrep/recv.toml")).unwrap();
    }
}
