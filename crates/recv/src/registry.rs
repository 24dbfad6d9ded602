//! The peers registry: paired peers, the certificates issued to them, revocations and pending
//! pairings, in `<state-dir>/peers.toml`.
//!
//! Every change runs under an exclusive lock on `<state-dir>/peers.lock` and is written to a
//! temporary file that is renamed over `peers.toml`, so readers (the serve process re-reads the
//! file when it changes) see the old or the new state, never a mix, and two commands never
//! lose each other's changes. The file is written with mode 0600: it holds no secret, but
//! pairing stored keys and the peer map are nobody else's business.
//!
//! Trust: a registered peer is accepted only with a certificate whose fingerprint the registry
//! recorded as issued to that name, not revoked. The registry never holds a pairing secret,
//! only its [`StoredKey`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use zrep_tls::{Fingerprint, PeerIdentity, PeerName, StoredKey};
use zrep_zfs::DatasetName;

use crate::config::{RootClaim, RootSource};

/// File name of the registry inside the state directory.
pub const REGISTRY_FILE: &str = "peers.toml";
/// File name of the lock that serialises changes.
pub const LOCK_FILE: &str = "peers.lock";
/// How long used or expired pairings are kept (for a clear "already used"/"expired" message)
/// before they are dropped.
pub const PAIRING_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Why the registry cannot be read or written.
///
/// A message never repeats its source. These messages are whole sentences that `check` and
/// `serve` show with a remedy after them ("peers.toml: Is a directory (os error 21); make it
/// readable ..."), so the operating system's error is part of the message and not a `source()`:
/// printed by `Display` or by `zrep_chain::one_line`, it appears once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Reading, locking or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error (in the message, not a source).
        cause: std::io::Error,
    },
    /// The file is not a valid registry.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The registry's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Registry {
    /// Paired (or offline-issued) peers.
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// Pairings made with `zrep-recv pair`, until used and some time after.
    #[serde(default, rename = "pairing", skip_serializing_if = "Vec::is_empty")]
    pub pairings: Vec<Pairing>,
    /// Certificates that must never be accepted again (kept until they expire).
    #[serde(default, rename = "revoked", skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<IssuedCert>,
}

/// One registered peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Peer {
    /// Its name: the subject CN of its certificates.
    pub name: PeerName,
    /// Its root dataset (validated on load).
    pub root: String,
    /// Revoked: refused whatever certificate it presents.
    #[serde(default)]
    pub revoked: bool,
    /// Certificates issued to it and still valid (a renewal adds one; the older one stays
    /// valid until it expires).
    #[serde(default, rename = "cert")]
    pub certs: Vec<IssuedCert>,
}

/// A certificate the receiver's CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IssuedCert {
    /// SHA-256 of the certificate (DER).
    pub fingerprint: Fingerprint,
    /// End of its validity.
    #[serde(with = "humantime_serde")]
    pub not_after: SystemTime,
}

/// A pending (or used) pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pairing {
    /// The token id, 16 hex digits.
    pub token: String,
    /// The token's stored key (never the secret).
    pub stored_key: String,
    /// The peer name it registers.
    pub name: PeerName,
    /// The root it registers.
    pub root: String,
    /// The token is refused after this.
    #[serde(with = "humantime_serde")]
    pub expires: SystemTime,
    /// When it was used, if it was (tokens are single-use).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub used: Option<SystemTime>,
}

/// Where a peer's root comes from, and whether it may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted, confined to this root.
    Allowed(DatasetName),
    /// Refused, with the reason for the log and the peer.
    Refused(String),
}

impl Registry {
    /// The registered peer called `name`.
    pub fn peer(&self, name: &PeerName) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == *name)
    }

    /// The registered peer called `name`, mutably.
    pub fn peer_mut(&mut self, name: &PeerName) -> Option<&mut Peer> {
        self.peers.iter_mut().find(|p| p.name == *name)
    }

    /// Whether this certificate is revoked.
    pub fn is_revoked(&self, fingerprint: &Fingerprint) -> bool {
        self.revoked.iter().any(|c| c.fingerprint == *fingerprint)
    }

    /// Decides about an authenticated peer. A registered peer needs a certificate recorded as
    /// issued to it; a static peer (`[[peer]]` in recv.toml, looked up with `static_root`) any
    /// certificate of the CA with its name. Revoked certificates and peers are refused either
    /// way; a registry entry for a name wins over recv.toml.
    pub fn authorize(&self, identity: &PeerIdentity, static_root: Option<&DatasetName>) -> Verdict {
        let name = &identity.name;
        if self.is_revoked(&identity.fingerprint) {
            return Verdict::Refused(format!(
                "certificate {} of peer {name} is revoked on this receiver",
                identity.fingerprint
            ));
        }
        match (self.peer(name), static_root) {
            (Some(peer), _) if peer.revoked => {
                Verdict::Refused(format!("peer {name} is revoked on this receiver"))
            }
            (Some(peer), _) => {
                if !peer
                    .certs
                    .iter()
                    .any(|c| c.fingerprint == identity.fingerprint)
                {
                    return Verdict::Refused(format!(
                        "certificate {} was not issued to peer {name} by this receiver",
                        identity.fingerprint
                    ));
                }
                match DatasetName::parse(&peer.root) {
                    Ok(root) => Verdict::Allowed(root),
                    Err(err) => Verdict::Refused(format!("root of peer {name}: {err}")),
                }
            }
            (None, Some(root)) => Verdict::Allowed(root.clone()),
            (None, None) => {
                Verdict::Refused(format!("peer {name} is not configured on this receiver"))
            }
        }
    }

    /// Records a certificate issued to `name` (registering the peer with `root` if new, or
    /// re-activating a revoked entry whose old certificates stay revoked).
    pub fn record_issued(&mut self, name: &PeerName, root: &DatasetName, cert: IssuedCert) {
        match self.peer_mut(name) {
            Some(peer) if !peer.revoked => peer.certs.push(cert),
            Some(peer) => {
                peer.revoked = false;
                peer.root = root.to_string();
                peer.certs = vec![cert];
            }
            None => self.peers.push(Peer {
                name: name.clone(),
                root: root.to_string(),
                revoked: false,
                certs: vec![cert],
            }),
        }
    }

    /// Revokes `name` and every certificate issued to it; `false` if it is unknown.
    pub fn revoke(&mut self, name: &PeerName) -> bool {
        let Some(peer) = self.peers.iter_mut().find(|p| p.name == *name) else {
            return false;
        };
        peer.revoked = true;
        let certs = std::mem::take(&mut peer.certs);
        self.revoked.extend(certs);
        true
    }

    /// Roots in use by registered, non-revoked peers, by name.
    pub fn active_roots(&self) -> impl Iterator<Item = (&PeerName, &str)> {
        self.peers
            .iter()
            .filter(|p| !p.revoked)
            .map(|p| (&p.name, p.root.as_str()))
    }

    /// The roots this registry claims at `now`: registered non-revoked peers, and unused,
    /// unexpired pairings (their root is taken once the token is used). For
    /// [`crate::config::find_overlaps`].
    pub fn root_claims(&self, now: SystemTime) -> Vec<RootClaim> {
        let registered = self
            .active_roots()
            .map(|(name, root)| (name, root, RootSource::Registered));
        let pending = self
            .pairings
            .iter()
            .filter(|p| p.used.is_none() && p.expires > now)
            .map(|p| (&p.name, p.root.as_str(), RootSource::Pending));
        registered
            .chain(pending)
            // Roots were validated on load; a registry built in memory may hold anything.
            .filter_map(|(name, root, source)| {
                let root = DatasetName::parse(root).ok()?;
                Some(RootClaim::new(name.clone(), root, source))
            })
            .collect()
    }

    /// Drops what no longer matters at `now`: expired certificates (TLS refuses them anyway)
    /// and pairings past their expiry by more than [`PAIRING_RETENTION`].
    pub fn prune(&mut self, now: SystemTime) {
        for peer in &mut self.peers {
            peer.certs.retain(|c| c.not_after > now);
        }
        self.revoked.retain(|c| c.not_after > now);
        self.pairings
            .retain(|p| p.expires + PAIRING_RETENTION > now);
    }

    fn validate(&self) -> Result<(), String> {
        for peer in &self.peers {
            DatasetName::parse(&peer.root)
                .map_err(|e| format!("root of peer {}: {e}", peer.name))?;
        }
        for pairing in &self.pairings {
            DatasetName::parse(&pairing.root)
                .map_err(|e| format!("root of pairing for {}: {e}", pairing.name))?;
            pairing
                .stored_key
                .parse::<StoredKey>()
                .map_err(|e| format!("pairing for {}: {e}", pairing.name))?;
        }
        Ok(())
    }
}

/// Identifies one version of the registry file: a rename makes a new inode, so an atomic
/// replacement is always noticed, even within one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    inode: u64,
    mtime_ns: i128,
    len: u64,
}

/// The registry file of a state directory.
#[derive(Debug, Clone)]
pub struct RegistryFile {
    path: PathBuf,
    lock: PathBuf,
}

impl RegistryFile {
    /// The registry in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(REGISTRY_FILE),
            lock: state_dir.join(LOCK_FILE),
        }
    }

    /// The registry file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the registry; a missing file is an empty registry.
    pub fn load(&self) -> Result<Registry, RegistryError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(source) => return Err(self.io(&self.path, source)),
        };
        let registry: Registry = toml::from_str(&text).map_err(|e| RegistryError::Invalid {
            path: self.path.clone(),
            message: one_line_toml_error(&text, &e),
        })?;
        registry
            .validate()
            .map_err(|message| RegistryError::Invalid {
                path: self.path.clone(),
                message,
            })?;
        Ok(registry)
    }

    /// The current version of the file, `None` if it does not exist.
    pub fn stamp(&self) -> Option<Stamp> {
        let meta = fs::metadata(&self.path).ok()?;
        Some(Stamp {
            inode: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            len: meta.len(),
        })
    }

    /// Changes the registry: under the lock, loads it, applies `change` and, if that succeeds,
    /// prunes and writes it back atomically. On `Err` nothing is written.
    pub fn update<T, E>(
        &self,
        change: impl FnOnce(&mut Registry) -> Result<T, E>,
    ) -> Result<Result<T, E>, RegistryError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| self.io(&self.lock, e))?;
        lock.lock().map_err(|e| self.io(&self.lock, e))?;
        let mut registry = self.load()?;
        let outcome = change(&mut registry);
        if outcome.is_ok() {
            registry.prune(SystemTime::now());
            self.save(&registry)?;
        }
        drop(lock);
        Ok(outcome)
    }

    fn save(&self, registry: &Registry) -> Result<(), RegistryError> {
        let text = toml::to_string(registry).map_err(|e| RegistryError::Invalid {
            path: self.path.clone(),
            message: format!("cannot encode: {e}"),
        })?;
        let text = format!(
            "# zrep-recv peers registry: written by zrep-recv (init, pair, issue, revoke, serve).\n# Edit with care; changes take effect within a second.\n\n{text}"
        );
        let tmp = self
            .path
            .with_file_name(format!(".{REGISTRY_FILE}.tmp-{}", std::process::id()));
        let written = (|| {
            let mut file: File = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        written.map_err(|source| {
            let _ = fs::remove_file(&tmp);
            self.io(&self.path, source)
        })
    }

    fn io(&self, path: &Path, cause: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: path.to_owned(),
            cause,
        }
    }
}

/// The TOML parser's message is several lines (the offending line with a caret under it); a
/// log line or an error of `check` wants one: where, and what.
fn one_line_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_state_dir_is_said_once() {
        let file = RegistryFile::new(Path::new("/nonexistent/zrep-state"));
        let err = file.update(|_| Ok::<(), ()>(())).unwrap_err();
        let text = zrep_cli::one_line(&err);
        assert_eq!(
            text,
            "/nonexistent/zrep-state/peers.lock: No such file or directory (os error 2)"
        );
        assert_eq!(err.to_string(), text);
    }

    fn name(n: &str) -> PeerName {
        n.parse().unwrap()
    }

    fn cert(fp: &[u8], days: u64) -> IssuedCert {
        IssuedCert {
            fingerprint: Fingerprint::of_der(fp),
            not_after: SystemTime::now() + Duration::from_secs(days * 86400),
        }
    }

    fn identity(n: &str, fp: &[u8]) -> PeerIdentity {
        PeerIdentity::new(name(n), SystemTime::now(), Fingerprint::of_der(fp))
    }

    /// `reg` (no static peers) lets peer `n` in with the certificate of DER `fp`.
    fn assert_allowed(reg: &Registry, n: &str, fp: &[u8]) {
        let verdict = reg.authorize(&identity(n, fp), None);
        assert!(matches!(verdict, Verdict::Allowed(_)), "{verdict:?}");
    }

    /// `reg` (no static peers) refuses peer `n` with the certificate of DER `fp`, for `because`.
    fn assert_refused(reg: &Registry, n: &str, fp: &[u8], because: &str) {
        let verdict = reg.authorize(&identity(n, fp), None);
        assert!(
            matches!(&verdict, Verdict::Refused(why) if why.contains(because)),
            "{verdict:?}"
        );
    }

    #[test]
    fn trust_is_the_issued_certificate_not_the_name() {
        let mut reg = Registry::default();
        let root = DatasetName::parse("backup/nas1").unwrap();
        reg.record_issued(&name("nas1"), &root, cert(b"a", 10));
        assert_eq!(
            reg.authorize(&identity("nas1", b"a"), None),
            Verdict::Allowed(root.clone())
        );
        // Same name, a certificate the registry did not record (another CA's, or forged).
        assert_refused(&reg, "nas1", b"b", "not issued");
        // A registry entry wins over a static peer of the same name.
        assert!(matches!(
            reg.authorize(&identity("nas1", b"b"), Some(&root)),
            Verdict::Refused(_)
        ));
        // Static peers: any CA certificate with the name, unless revoked.
        let static_root = DatasetName::parse("backup/nas2").unwrap();
        assert_eq!(
            reg.authorize(&identity("nas2", b"c"), Some(&static_root)),
            Verdict::Allowed(static_root.clone())
        );
        assert_refused(&reg, "nas3", b"c", "not configured");

        // Renewal adds a certificate; both are valid.
        reg.record_issued(&name("nas1"), &root, cert(b"b", 10));
        assert_allowed(&reg, "nas1", b"b");
        assert_allowed(&reg, "nas1", b"a");

        // Revocation refuses the peer and keeps its certificates refused after re-pairing.
        assert!(reg.revoke(&name("nas1")));
        assert!(!reg.revoke(&name("nobody")));
        assert_refused(&reg, "nas1", b"a", "revoked");
        reg.record_issued(&name("nas1"), &root, cert(b"new", 10));
        assert_allowed(&reg, "nas1", b"new");
        assert_refused(&reg, "nas1", b"a", "revoked");
    }

    #[test]
    fn file_round_trips_atomically_with_0600_and_prunes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = RegistryFile::new(dir.path());
        assert_eq!(file.load().unwrap(), Registry::default());
        assert!(file.stamp().is_none());
        let root = DatasetName::parse("backup/nas1").unwrap();
        file.update(|reg| {
            reg.record_issued(&name("nas1"), &root, cert(b"a", 10));
            reg.record_issued(&name("nas1"), &root, cert(b"old", 0));
            reg.pairings.push(Pairing {
                token: "0011223344556677".into(),
                stored_key: Fingerprint::of_der(b"k").to_string(),
                name: name("nas2"),
                root: "backup/nas2".into(),
                expires: SystemTime::now() - PAIRING_RETENTION * 2,
                used: None,
            });
            Ok::<_, ()>(())
        })
        .unwrap()
        .unwrap();
        let stamp = file.stamp().unwrap();
        let reg = file.load().unwrap();
        assert_eq!(reg.peers[0].certs.len(), 1, "expired certificate pruned");
        assert!(reg.pairings.is_empty(), "old pairing pruned");
        let mode = fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // A failed change writes nothing.
        let outcome = file.update(|reg| {
            reg.peers.clear();
            Err::<(), _>("no")
        });
        assert_eq!(outcome.unwrap(), Err("no"));
        assert_eq!(file.stamp().unwrap(), stamp);
        assert_eq!(file.load().unwrap().peers.len(), 1);
        // A successful one is noticed.
        file.update(|_| Ok::<_, ()>(())).unwrap().unwrap();
        assert_ne!(file.stamp().unwrap(), stamp);

        // Garbage is an error naming the file.
        fs::write(file.path(), "peer = 3").unwrap();
        let err = file.load().unwrap_err();
        assert!(err.to_string().contains("peers.toml"), "{err}");
    }
}
