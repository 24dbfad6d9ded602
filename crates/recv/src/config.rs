//! `recv.toml`, parsed once into typed values. Relative paths are relative to the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use zrep_repl::receiver::Retention;
use zrep_repl::retention::{KeepPolicy, parse_grid};
use zrep_repl::transport::Liveness;
use zrep_tls::PeerName;
use zrep_zfs::DatasetName;

use crate::registry::Registry;

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
    #[serde(default = "default_max_unauthenticated")]
    max_unauthenticated: usize,
    #[serde(default = "default_max_unauthenticated_per_ip")]
    max_unauthenticated_per_ip: usize,
    #[serde(default = "zrep_cli::secs::<10>", with = "humantime_serde")]
    handshake_timeout: Duration,
    #[serde(default = "zrep_cli::secs::<120>", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "zrep_cli::secs::<10>", with = "humantime_serde")]
    heartbeat_interval: Duration,
    #[serde(default = "zrep_cli::secs::<120>", with = "humantime_serde")]
    write_timeout: Duration,
    #[serde(default = "zrep_cli::secs::<600>", with = "humantime_serde")]
    receive_timeout: Duration,
    #[serde(default = "zrep_cli::secs::<30>", with = "humantime_serde")]
    shutdown_grace: Duration,
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
/// Connections before their hello (and pairing sessions) are cheap, short and capped so that
/// the process stays far below the usual 1024 open files whatever arrives: 256 honest
/// handshakes at the same instant would already be a large fleet, each takes milliseconds.
fn default_max_unauthenticated() -> usize {
    256
}
/// Room for several senders behind one NAT address connecting at the same moment.
fn default_max_unauthenticated_per_ip() -> usize {
    16
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
    /// At most this many authenticated sessions at once; one more is answered with a `busy`
    /// error.
    pub max_connections: usize,
    /// At most this many connections that have not authenticated (before their hello, and
    /// pairing sessions) at once; they never take a slot of `max_connections`.
    pub max_unauthenticated: usize,
    /// At most this many of those from one IPv4 address or IPv6 /64.
    pub max_unauthenticated_per_ip: usize,
    /// Limit from TCP accept until the protocol hellos crossed (TLS handshake included).
    pub handshake_timeout: Duration,
    /// Heartbeat interval, silence and write-stall limits of the sessions with peers.
    pub liveness: Liveness,
    /// Limit for `zfs receive` to finish once the stream has ended.
    pub receive_timeout: Duration,
    /// After SIGTERM, how long a running transfer may take to finish before it is cut (and
    /// undone); idle sessions end at once.
    pub shutdown_grace: Duration,
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
        if raw.max_unauthenticated == 0 || raw.max_unauthenticated_per_ip == 0 {
            return Err(invalid(
                "max-unauthenticated and max-unauthenticated-per-ip must be at least 1 (no sender could connect)"
                    .into(),
            ));
        }
        if raw.handshake_timeout.is_zero() {
            return Err(invalid("handshake-timeout must be longer than 0s".into()));
        }
        let liveness = Liveness {
            heartbeat_interval: raw.heartbeat_interval,
            idle_timeout: raw.idle_timeout,
            write_timeout: raw.write_timeout,
        };
        liveness.check().map_err(invalid)?;
        // `recv.toml` alone has the parent "", which no file operation accepts as a directory.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
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
        let statics: Vec<RootClaim> = peers
            .iter()
            .map(|(name, root)| RootClaim::new(name.clone(), root.clone(), RootSource::Static))
            .collect();
        if let Some(overlap) = find_overlaps(&statics).into_iter().next() {
            return Err(invalid(overlap.to_string()));
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
            max_unauthenticated: raw.max_unauthenticated,
            max_unauthenticated_per_ip: raw.max_unauthenticated_per_ip,
            handshake_timeout: raw.handshake_timeout,
            liveness,
            receive_timeout: raw.receive_timeout,
            shutdown_grace: raw.shutdown_grace,
            peers,
            retention,
            metrics_listen,
        })
    }
}

/// Where a claim on a root comes from. Roots of peers may not overlap across all of them: a
/// peer confined to `backup/a` must never receive into (or below) another peer's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RootSource {
    /// A peer `zrep-recv pair` or `issue` is about to register.
    New,
    /// A `[[peer]]` of recv.toml.
    Static,
    /// An unused, unexpired pairing in peers.toml: its root is taken when the token is used.
    Pending,
    /// A registered (paired or issued), non-revoked peer in peers.toml.
    Registered,
}

/// One peer's claim on a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootClaim {
    /// The peer.
    pub peer: PeerName,
    /// Its root.
    pub root: DatasetName,
    /// Where the claim comes from.
    pub source: RootSource,
}

impl RootClaim {
    /// A claim of `peer` on `root`.
    pub fn new(peer: PeerName, root: DatasetName, source: RootSource) -> Self {
        Self { peer, root, source }
    }
}

impl fmt::Display for RootClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = &self.peer;
        match self.source {
            RootSource::New => write!(f, "new peer {peer}"),
            RootSource::Static => write!(f, "static peer {peer} in recv.toml"),
            RootSource::Pending => write!(f, "pending pairing for {peer} in peers.toml"),
            RootSource::Registered => write!(f, "registered peer {peer} in peers.toml"),
        }
    }
}

/// Two peers whose roots are equal or nested. `subject` is the claim to change: a new peer,
/// else a static peer (recv.toml is what an admin edits), else the nested one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("root {} of {subject} overlaps root {} of {other} ({}); each peer needs its own subtree: {}",
    subject.root, other.root, self.relation(), self.remedy())]
pub struct RootOverlap {
    /// The claim the message asks to change.
    pub subject: RootClaim,
    /// The claim it collides with.
    pub other: RootClaim,
}

impl RootOverlap {
    /// Whether `peer` is one of the two.
    pub fn involves(&self, peer: &PeerName) -> bool {
        self.subject.peer == *peer || self.other.peer == *peer
    }

    fn relation(&self) -> &'static str {
        let (s, o) = (&self.subject.root, &self.other.root);
        if s == o {
            "the same"
        } else if s.is_within(o) {
            "inside it"
        } else {
            "contains it"
        }
    }

    fn remedy(&self) -> String {
        let (s, o) = (&self.subject.peer, &self.other.peer);
        match (self.subject.source, self.other.source) {
            (RootSource::New, _) => format!("choose another --root for {s}"),
            (RootSource::Static, RootSource::Registered) => {
                format!("give [[peer]] {s} in recv.toml another root, or `zrep-recv revoke {o}`")
            }
            (RootSource::Static, RootSource::Pending) => format!(
                "give [[peer]] {s} in recv.toml another root, or `zrep-recv pair --name {o}` again with another --root"
            ),
            (RootSource::Static, _) => format!("give [[peer]] {s} in recv.toml another root"),
            (RootSource::Pending, _) => {
                format!("`zrep-recv pair --name {s}` again with another --root")
            }
            (RootSource::Registered, _) => {
                format!("`zrep-recv revoke {s}`, then pair it again with another --root")
            }
        }
    }
}

/// Every overlap among `claims`, each nested (or equal) claim reported once, against the
/// innermost other peer's claim that holds it; claims of the same peer never collide. Sorting by
/// path components puts every claim right after the claims that hold it, so one pass over a
/// stack of open ancestors finds them all: O(n log n), also for thousands of peers.
///
/// `recv.toml` (static peers among themselves), `pair`/`issue` (a new peer against everything)
/// and `check`/`serve` (static against registered and pending) all decide with this.
pub fn find_overlaps(claims: &[RootClaim]) -> Vec<RootOverlap> {
    let mut sorted: Vec<&RootClaim> = claims.iter().collect();
    sorted.sort_by(|a, b| {
        a.root
            .as_str()
            .split('/')
            .cmp(b.root.as_str().split('/'))
            .then(a.source.cmp(&b.source))
            .then(a.peer.cmp(&b.peer))
    });
    let mut open: Vec<&RootClaim> = Vec::new();
    let mut overlaps = Vec::new();
    for claim in sorted {
        while open.last().is_some_and(|o| !claim.root.is_within(&o.root)) {
            open.pop();
        }
        if let Some(holder) = open.iter().rev().find(|o| o.peer != claim.peer) {
            overlaps.push(oriented(claim, holder));
        }
        open.push(claim);
    }
    overlaps
}

impl RecvConfig {
    /// The static peers' claims, without those a peers.toml entry of the same name overrides
    /// (a registry entry wins over recv.toml, revoked or not).
    pub fn static_claims(&self, registry: &Registry) -> Vec<RootClaim> {
        self.peers
            .iter()
            .filter(|(name, _)| registry.peer(name).is_none())
            .map(|(name, root)| RootClaim::new(name.clone(), root.clone(), RootSource::Static))
            .collect()
    }

    /// Overlaps between the static peers and the registered peers and pending pairings of
    /// `registry` (and among those): what `check` and `serve` refuse.
    pub fn registry_overlaps(&self, registry: &Registry, now: SystemTime) -> Vec<RootOverlap> {
        let mut claims = self.static_claims(registry);
        claims.extend(registry.root_claims(now));
        find_overlaps(&claims)
    }
}

/// Orients a colliding pair so the message asks to change the claim an admin can change.
fn oriented(nested: &RootClaim, holder: &RootClaim) -> RootOverlap {
    // The nested one is the subject unless the holder ranks first (New < Static < ...).
    let (subject, other) = if holder.source < nested.source {
        (holder, nested)
    } else {
        (nested, holder)
    };
    RootOverlap {
        subject: subject.clone(),
        other: other.clone(),
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
        assert_eq!(config.liveness.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.max_connections, 16);
        assert_eq!(config.max_unauthenticated, 256);
        assert_eq!(config.max_unauthenticated_per_ip, 16);
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
            (
                EXAMPLE.replace("backup/nas2", "backup/nas1/x"),
                "root backup/nas1/x of static peer nas2 in recv.toml overlaps root backup/nas1 of static peer nas1 in recv.toml (inside it); each peer needs its own subtree: give [[peer]] nas2 in recv.toml another root",
            ),
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
            (
                EXAMPLE.replace(
                    "idle-timeout",
                    "max-unauthenticated-per-ip = 0\nidle-timeout",
                ),
                "max-unauthenticated-per-ip must be at least 1",
            ),
            (
                EXAMPLE.replace("idle-timeout", "max-unauthenticated = 0\nidle-timeout"),
                "max-unauthenticated and",
            ),
            (
                EXAMPLE.replace("idle-timeout", "handshake-timeout = \"0s\"\nidle-timeout"),
                "handshake-timeout must be longer",
            ),
        ];
        for (text, want) in cases {
            let err = RecvConfig::parse(&text, Path::new("recv.toml")).unwrap_err();
            let err = zrep_cli::one_line(&err);
            assert!(err.contains(want), "{err} lacks {want:?}");
        }
    }
    fn claim(peer: &str, root: &str, source: RootSource) -> RootClaim {
        RootClaim::new(
            PeerName::new(peer).unwrap(),
            DatasetName::parse(root).unwrap(),
            source,
        )
    }

    #[test]
    fn overlaps_are_found_across_sources() {
        use RootSource::*;
        let claims = [
            claim("nas1", "backup/nas1", Static),
            claim("nas2", "backup/nas1/sub", Registered),
            // A sibling whose name sorts between `backup/nas1` and `backup/nas1/...` as a string.
            claim("nas3", "backup/nas1-x", Pending),
            claim("nas4", "backup/nas1-x", Static),
            claim("nas5", "backup/other", Registered),
        ];
        let found: Vec<String> = find_overlaps(&claims)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "root backup/nas1 of static peer nas1 in recv.toml overlaps root backup/nas1/sub of registered peer nas2 in peers.toml (contains it); each peer needs its own subtree: give [[peer]] nas1 in recv.toml another root, or `zrep-recv revoke nas2`",
                "root backup/nas1-x of static peer nas4 in recv.toml overlaps root backup/nas1-x of pending pairing for nas3 in peers.toml (the same); each peer needs its own subtree: give [[peer]] nas4 in recv.toml another root, or `zrep-recv pair --name nas3` again with another --root",
            ]
        );
        // A new peer is always the one asked to move; claims of one peer never collide.
        let claims = [
            claim("nas1", "backup/a/b", Registered),
            claim("nas1", "backup/a", Pending),
            claim("nas9", "backup/a", New),
        ];
        let found = find_overlaps(&claims);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|o| o.subject.source == New), "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "root backup/a of new peer nas9 overlaps root backup/a of pending pairing for nas1 in peers.toml (the same); each peer needs its own subtree: choose another --root for nas9"
        );
    }

    /// The sorted single pass finds an overlap exactly when some pair of claims overlaps.
    #[test]
    fn overlap_pass_agrees_with_all_pairs() {
        let roots = [
            "p/a", "p/a/b", "p/a/b/c", "p/a-b", "p/a/c", "p/ab", "p/b", "p/b/a", "p/a.b/c",
        ];
        // Every subset of four roots, each under its own peer.
        for mask in 0u32..(1 << roots.len()) {
            if mask.count_ones() > 4 {
                continue;
            }
            let claims: Vec<RootClaim> = (0..roots.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| claim(&format!("n{i}"), roots[i], RootSource::Registered))
                .collect();
            let any = claims.iter().enumerate().any(|(i, a)| {
                claims[i + 1..]
                    .iter()
                    .any(|b| a.root.is_within(&b.root) || b.root.is_within(&a.root))
            });
            assert_eq!(!find_overlaps(&claims).is_empty(), any, "{claims:?}");
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
