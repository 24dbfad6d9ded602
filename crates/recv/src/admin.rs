//! The administrative commands of zrep-recv: `init`, `pair`, `issue`, `peers`, `revoke`, and
//! `check` (which `serve` runs before it starts).
//!
//! Each works on files only (the CA, the configuration, the peers registry); a running
//! `zrep-recv serve` notices registry changes within a second, so nothing needs a restart.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use zrep_tls::pki_types::{CertificateDer, PrivateKeyDer};
use zrep_tls::{
    CertificateAuthority, DEFAULT_CA_TTL, DEFAULT_SERVER_TTL, Fingerprint, Overwrite, PairingToken,
    PeerIdentity, PeerName, TlsError, load_certs, load_private_key, write_cert_file,
};
use zrep_zfs::DatasetName;

use crate::config::{RecvConfig, RootClaim, RootOverlap, RootSource, find_overlaps};
use crate::registry::{IssuedCert, Pairing, Registry, RegistryError, RegistryFile};

/// Default lifetime of a pairing token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// What `zrep-recv init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory for the CA, the server certificate, recv.toml and the registry.
    pub dir: PathBuf,
    /// The receiver's name: CN and first subjectAltName of its certificate.
    pub name: String,
    /// More names (DNS names or IP addresses) senders may reach it by.
    pub sans: Vec<String>,
    /// `listen` of the starting recv.toml.
    pub listen: SocketAddr,
    /// Lifetime of the server certificate.
    pub server_ttl: Duration,
    /// Subject CN of the CA; default `zrep CA <name>`.
    pub ca_name: Option<String>,
}

impl InitOptions {
    /// Defaults for `dir` and `name`: listen on port 7711 everywhere, 2-year server certificate.
    pub fn new(dir: PathBuf, name: String) -> Self {
        Self {
            dir,
            name,
            sans: Vec::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7711)),
            server_ttl: DEFAULT_SERVER_TTL,
            ca_name: None,
        }
    }
}

/// `zrep-recv init`: creates the CA (its key never leaves `dir`), the server certificate and a
/// starting recv.toml. Refuses to overwrite an existing configuration or key. Returns the path
/// of recv.toml and the CA fingerprint.
pub fn init(options: &InitOptions) -> anyhow::Result<(PathBuf, Fingerprint)> {
    let dir = &options.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config_path = dir.join("recv.toml");
    if config_path.exists() {
        bail!(
            "{} exists; refusing to initialise over an existing receiver",
            config_path.display()
        );
    }
    let mut names = vec![options.name.clone()];
    for san in &options.sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let ca_name = options
        .ca_name
        .clone()
        .unwrap_or_else(|| format!("zrep CA {}", options.name));
    let ca = CertificateAuthority::generate(&ca_name, DEFAULT_CA_TTL)?;
    // The server certificate is made before anything is written, so a bad name writes nothing.
    let server = ca.issue_server_cert(&names, options.server_ttl)?;
    ca.save(&dir.join("ca.pem"), &dir.join("ca.key"), Overwrite::Refuse)?;
    let stem = file_stem(&options.name);
    server.save(
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
        Overwrite::Refuse,
    )?;
    let config = format!(
        r#"# zrep-recv configuration, written by `zrep-recv init --name {name}`.
listen = "{listen}"
cert = "{stem}.pem"          # this receiver's certificate (names: {names})
key = "{stem}.key"
ca = "ca.pem"                # the CA of this receiver: it issues every peer certificate
ca-key = "ca.key"            # lets this receiver pair, issue and renew peer certificates
# state-dir = "."            # holds peers.toml, the peers registry (default: this directory)
# peer-cert-ttl = "365d"     # lifetime of peer certificates; senders renew in the last third

# Pair senders with `zrep-recv pair --name NAME --root POOL/DATASET`; they are recorded in
# peers.toml and take effect without a restart. Static peers may still be listed here:
# [[peer]]
# name = "nas1"
# root = "backup/nas1"
"#,
        name = options.name,
        listen = options.listen,
        names = names.join(", "),
    );
    create_new(&config_path, &config)?;
    Ok((config_path, ca.fingerprint()))
}

/// A pairing made by [`pair`].
#[derive(Debug)]
pub struct NewPairing {
    /// The token to paste on the sender.
    pub token: PairingToken,
    /// When it stops working.
    pub expires: SystemTime,
}

/// The shortest and longest life of a pairing token.
const MIN_PAIRING_TTL: Duration = Duration::from_secs(1);
const MAX_PAIRING_TTL: Duration = Duration::from_secs(30 * 86400);

/// `zrep-recv pair`: registers a pending peer and returns its one-time token.
pub fn pair(
    config: &RecvConfig,
    name: &PeerName,
    root: &DatasetName,
    ttl: Duration,
) -> anyhow::Result<NewPairing> {
    // A token that expires at once is a mistake; one that lives for months is a secret left
    // lying around.
    if ttl < MIN_PAIRING_TTL || ttl > MAX_PAIRING_TTL {
        bail!("--ttl must be 1s to 30d (the token is single-use; 15m is plenty)");
    }
    require_ca_key(config)?;
    let ca_fingerprint = ca_fingerprint(config)?;
    let token = PairingToken::generate(ca_fingerprint)?;
    let expires = SystemTime::now() + ttl;
    let registry = RegistryFile::new(&config.state_dir);
    registry
        .update(|reg| {
            check_new_peer(config, reg, name, root, SystemTime::now())?;
            // A new pairing for the same name replaces an unused older one.
            reg.pairings.retain(|p| p.name != *name || p.used.is_some());
            reg.pairings.push(Pairing {
                token: format!("{:016x}", token.id()),
                stored_key: token.stored_key().to_string(),
                name: name.clone(),
                root: root.to_string(),
                expires,
                used: None,
            });
            Ok::<_, anyhow::Error>(())
        })
        .context("updating the peers registry")??;
    Ok(NewPairing { token, expires })
}

/// What `zrep-recv issue` writes.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// The peer's name.
    pub name: PeerName,
    /// Its root.
    pub root: DatasetName,
    /// Where the files go.
    pub out: PathBuf,
    /// Sign this CSR (PEM) instead of generating a key here.
    pub csr: Option<PathBuf>,
    /// `receiver` of the starting send.toml; default `<server name>:<listen port>`.
    pub receiver: Option<String>,
}

/// `zrep-recv issue`: the offline alternative to pairing. Issues a certificate for a new peer
/// (with a key made here, or for a CSR) and writes `<name>.pem`, `<name>.key` (unless a CSR was
/// given), `ca.pem` and a starting `send.toml` into `out`; records the peer in the registry.
/// Returns the files written.
pub fn issue(config: &RecvConfig, options: &IssueOptions) -> anyhow::Result<Vec<PathBuf>> {
    let ca_key = require_ca_key(config)?;
    let ca = CertificateAuthority::load(&config.ca, ca_key).context("loading the CA")?;
    let registry = RegistryFile::new(&config.state_dir);
    // Check before writing any file; checked again under the lock when recording.
    check_new_peer(
        config,
        &registry.load()?,
        &options.name,
        &options.root,
        SystemTime::now(),
    )?;
    let out = &options.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = options.name.as_str();
    let cert_path = out.join(format!("{stem}.pem"));
    let key_path = out.join(format!("{stem}.key"));
    let mut written = Vec::new();
    let cert_der = match &options.csr {
        Some(csr_path) => {
            let csr = read_limited(csr_path, 4 * zrep_proto::MAX_CSR_LEN)?;
            let signed = ca
                .sign_peer_csr(&csr, &options.name, config.peer_cert_ttl)
                .with_context(|| format!("signing {}", csr_path.display()))?;
            signed.save(&cert_path)?;
            signed.cert_der().clone()
        }
        None => {
            let issued = ca.issue_peer_cert(&options.name, config.peer_cert_ttl)?;
            issued.save(&cert_path, &key_path, Overwrite::Refuse)?;
            written.push(key_path.clone());
            issued.cert_der().clone()
        }
    };
    written.push(cert_path);
    let ca_path = out.join("ca.pem");
    write_cert_file(&ca_path, ca.cert_pem())?;
    written.push(ca_path);
    let server_name = server_name(config)?;
    let receiver = options
        .receiver
        .clone()
        .unwrap_or_else(|| format!("{server_name}:{}", config.listen.port()));
    // With a CSR the key stays where `zrep-send csr` made it.
    let key_file = match options.csr {
        Some(_) => "sender.key".to_owned(),
        None => format!("{stem}.key"),
    };
    let send_toml = out.join("send.toml");
    if !send_toml.exists() {
        create_new(
            &send_toml,
            &starting_send_toml(&receiver, &server_name, &format!("{stem}.pem"), &key_file),
        )?;
        written.push(send_toml);
    }
    let identity = PeerIdentity::from_cert(&cert_der)?;
    registry
        .update(|reg| {
            check_new_peer(config, reg, &options.name, &options.root, SystemTime::now())?;
            reg.record_issued(
                &options.name,
                &options.root,
                IssuedCert {
                    fingerprint: identity.fingerprint,
                    not_after: identity.not_after,
                },
            );
            Ok::<_, anyhow::Error>(())
        })
        .context("updating the peers registry")??;
    Ok(written)
}

/// `zrep-recv peers`: one line per peer (static and registered) and per pending pairing.
pub fn peers(config: &RecvConfig) -> anyhow::Result<String> {
    let registry = RegistryFile::new(&config.state_dir).load()?;
    let now = SystemTime::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<30} {:<10} CERTIFICATES",
        "PEER", "ROOT", "STATUS"
    );
    for peer in &registry.peers {
        let status = if peer.revoked { "revoked" } else { "paired" };
        let certs = if peer.certs.is_empty() {
            "-".to_owned()
        } else {
            peer.certs
                .iter()
                .map(|c| {
                    format!(
                        "{} expires {}",
                        short(&c.fingerprint),
                        humantime_serde::re::humantime::format_rfc3339_seconds(c.not_after)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            out,
            "{:<20} {:<30} {:<10} {certs}",
            peer.name.as_str(),
            peer.root,
            status
        );
    }
    for (name, root) in &config.peers {
        if registry.peer(name).is_none() {
            let _ = writeln!(
                out,
                "{:<20} {:<30} {:<10} any certificate of the CA with CN {name}",
                name.as_str(),
                root.as_str(),
                "static"
            );
        }
    }
    for pairing in &registry.pairings {
        let status = match pairing.used {
            Some(_) => "used",
            None if pairing.expires <= now => "expired",
            None => "pending",
        };
        let _ = writeln!(
            out,
            "{:<20} {:<30} {:<10} token {} expires {}",
            pairing.name.as_str(),
            pairing.root,
            status,
            pairing.token,
            humantime_serde::re::humantime::format_rfc3339_seconds(pairing.expires)
        );
    }
    Ok(out)
}

/// `zrep-recv revoke`: refuses the peer from now on (a running `serve` cuts its sessions within
/// a second). Works for static peers too: the registry entry then overrides recv.toml.
pub fn revoke(config: &RecvConfig, name: &PeerName) -> anyhow::Result<()> {
    RegistryFile::new(&config.state_dir)
        .update(|reg| {
            if reg.revoke(name) {
                return Ok(());
            }
            let Some(root) = config.peers.get(name) else {
                return Err(anyhow!("no peer called {name} on this receiver"));
            };
            reg.peers.push(crate::registry::Peer {
                name: name.clone(),
                root: root.to_string(),
                revoked: true,
                certs: Vec::new(),
            });
            Ok(())
        })
        .context("updating the peers registry")?
}

/// A setting of recv.toml that names a certificate or key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `cert`: the server certificate chain.
    Cert,
    /// `key`: the server's private key.
    Key,
    /// `ca`: the CA certificate.
    Ca,
    /// `ca-key`: the CA's private key.
    CaKey,
}

impl Setting {
    /// What the file should be, for "point it at ...".
    fn what(self) -> &'static str {
        match self {
            Setting::Cert => "this receiver's certificate (PEM)",
            Setting::Key => "the private key of that certificate (PEM)",
            Setting::Ca => "this receiver's CA certificate (PEM, ca.pem of `zrep-recv init`)",
            Setting::CaKey => "the CA's private key (PEM, ca.key of `zrep-recv init`)",
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::Cert => "cert",
            Setting::Key => "key",
            Setting::Ca => "ca",
            Setting::CaKey => "ca-key",
        })
    }
}

/// One thing [`check`] found broken: a message of one line that names the file (or the peers)
/// and says what to do. `serve` refuses to start with the same messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A certificate or key file cannot be read.
    #[error("{setting} = {}: cannot read it: {cause}; point `{setting}` in recv.toml at {}", path.display(), setting.what())]
    Unreadable {
        /// Which setting names the file.
        setting: Setting,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The file holds no PEM certificate or key, or malformed PEM.
    #[error("{setting} = {}: {found}; point `{setting}` in recv.toml at {}", path.display(), setting.what())]
    NotPem {
        /// Which setting names the file.
        setting: Setting,
        /// The file.
        path: PathBuf,
        /// What is in it instead.
        found: String,
    },
    /// The file's certificate or key cannot be used.
    #[error("{setting} = {}: unusable: {reason}; point `{setting}` in recv.toml at {}", path.display(), setting.what())]
    Unusable {
        /// Which setting names the file.
        setting: Setting,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server key is not the key of the server certificate.
    #[error("key = {} is not the key of cert = {}; point `key` at the private key that certificate was issued for (or issue a new certificate for this key)", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The CA key is not the key of the CA certificate.
    #[error("ca-key = {} is not the key of ca = {}; point `ca-key` at the key of this CA (ca.key next to ca.pem of `zrep-recv init`)", ca_key.display(), ca.display())]
    CaKeyMismatch {
        /// The key file.
        ca_key: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },
    /// `ca` holds a certificate that is not a CA.
    #[error("ca = {}: {subject:?} is not a CA certificate; point `ca` at {}", ca.display(), Setting::Ca.what())]
    NotCa {
        /// The file.
        ca: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// The server certificate does not verify against the CA (another issuer, expired, ...).
    #[error("cert = {} does not verify against ca = {}: {reason}; senders would refuse it: {remedy}", cert.display(), ca.display())]
    NotIssuedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
        /// What the verifier said.
        reason: String,
        /// What to do about it.
        remedy: &'static str,
    },
    /// The state directory is missing or not a directory.
    #[error("state-dir = {}: {reason}; create it or point `state-dir` in recv.toml at the directory that holds peers.toml", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// peers.toml cannot be read.
    #[error(
        "{cause}; make it readable for the user zrep-recv runs as (zrep-recv writes it with mode 0600)"
    )]
    RegistryUnreadable {
        /// The registry's error (names the file).
        cause: RegistryError,
    },
    /// peers.toml is not a valid registry.
    #[error(
        "{cause}; repair the file by hand or restore it from a backup (zrep-recv writes it; `zrep-recv peers` reads it)"
    )]
    RegistryInvalid {
        /// The registry's error (names the file).
        cause: RegistryError,
    },
    /// Two peers' roots are equal or nested.
    #[error(transparent)]
    Overlap(#[from] RootOverlap),
    /// A name is both a static peer and a registered (non-revoked) one.
    #[error(
        "peer {name} is a static [[peer]] in recv.toml (root {static_root}) and registered in peers.toml (root {root}); the registered entry wins: remove [[peer]] {name} from recv.toml"
    )]
    StaticAndRegistered {
        /// The peer.
        name: PeerName,
        /// Its root in recv.toml.
        static_root: DatasetName,
        /// Its root in peers.toml.
        root: String,
    },
}

/// `zrep-recv check` (and the start of `serve`): opens every certificate and key, checks that
/// each key belongs to its certificate and that the server certificate verifies against the CA,
/// that the state directory exists and peers.toml (if there is one) parses, and that no two
/// peers' roots overlap, static or registered. Returns what it found, to print, or every
/// problem.
pub fn check(config: &RecvConfig) -> Result<String, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out = String::new();
    let _ = writeln!(out, "listen {}", config.listen);
    match config.metrics_listen {
        Some(addr) => _ = writeln!(out, "metrics-listen {addr}"),
        None => _ = writeln!(out, "metrics-listen off"),
    }
    let provider = zrep_tls::rustls::crypto::aws_lc_rs::default_provider();
    let ca = read_certs(Setting::Ca, &config.ca)
        .map_err(|p| problems.push(p))
        .ok();
    let chain = read_certs(Setting::Cert, &config.cert)
        .map_err(|p| problems.push(p))
        .ok();
    let key = read_key(Setting::Key, &config.key)
        .map_err(|p| problems.push(p))
        .ok();
    let names =
        chain.as_ref().and_then(
            |chain| match zrep_tls::pairing::certificate_names(&chain[0]) {
                Ok(names) if names.is_empty() => {
                    problems.push(Problem::Unusable {
                        setting: Setting::Cert,
                        path: config.cert.clone(),
                        reason: "the certificate has no subjectAltName, senders cannot verify it"
                            .into(),
                    });
                    None
                }
                Ok(names) => Some(names),
                Err(err) => {
                    problems.push(Problem::Unusable {
                        setting: Setting::Cert,
                        path: config.cert.clone(),
                        reason: zrep_cli::one_line(&err),
                    });
                    None
                }
            },
        );
    if let (Some(chain), Some(ca_certs), Some(names)) = (&chain, &ca, &names) {
        match verify_server_cert(&provider, chain, ca_certs, &names[0]) {
            Ok(()) => {
                _ = writeln!(
                    out,
                    "cert {}: {}; issued by the CA, valid now",
                    config.cert.display(),
                    names.join(", ")
                )
            }
            Err((reason, remedy)) => problems.push(Problem::NotIssuedByCa {
                cert: config.cert.clone(),
                ca: config.ca.clone(),
                reason,
                remedy,
            }),
        }
    }
    if let (Some(chain), Some(key)) = (&chain, key) {
        match check_key_matches(&provider, chain, key) {
            Ok(()) => _ = writeln!(out, "key {}: the certificate's key", config.key.display()),
            Err(KeyCheck::Mismatch) => problems.push(Problem::KeyMismatch {
                key: config.key.clone(),
                cert: config.cert.clone(),
            }),
            Err(KeyCheck::Unusable(reason)) => problems.push(Problem::Unusable {
                setting: Setting::Key,
                path: config.key.clone(),
                reason,
            }),
        }
    }
    if let Some(ca_certs) = &ca {
        let _ = writeln!(
            out,
            "ca {}: SHA-256 {}",
            config.ca.display(),
            Fingerprint::of_cert(&ca_certs[0])
        );
    }
    match &config.ca_key {
        Some(path) => match read_key(Setting::CaKey, path) {
            Ok(key) => {
                if let Some(ca_certs) = &ca {
                    match CertificateAuthority::from_der(ca_certs[0].clone(), &key) {
                        Ok(_) => {
                            _ = writeln!(
                                out,
                                "ca-key {}: the CA's key; pairing, issue and renewal on",
                                path.display()
                            )
                        }
                        Err(err) => problems.push(ca_problem(config, path, err)),
                    }
                }
            }
            Err(problem) => problems.push(problem),
        },
        None => _ = writeln!(out, "ca-key none: pairing, issue and renewal off"),
    }
    let registry = check_state_dir(config, &mut out)
        .map_err(|p| problems.push(p))
        .ok();
    if let Some(registry) = registry {
        let now = SystemTime::now();
        list_peers(config, &registry, now, &mut out);
        for peer in registry.peers.iter().filter(|p| !p.revoked) {
            if let Some(static_root) = config.peers.get(&peer.name) {
                problems.push(Problem::StaticAndRegistered {
                    name: peer.name.clone(),
                    static_root: static_root.clone(),
                    root: peer.root.clone(),
                });
            }
        }
        problems.extend(
            config
                .registry_overlaps(&registry, now)
                .into_iter()
                .map(Problem::from),
        );
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Why a key does not do for its certificate.
enum KeyCheck {
    Mismatch,
    Unusable(String),
}

/// With the key loader `serve` uses (rustls), so every key type it takes passes here too.
fn check_key_matches(
    provider: &zrep_tls::rustls::crypto::CryptoProvider,
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
) -> Result<(), KeyCheck> {
    use zrep_tls::rustls::{Error, InconsistentKeys, sign::CertifiedKey};
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| KeyCheck::Unusable(e.to_string()))?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        // rustls cannot compare some key types; it accepts them, and so does this check.
        Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(KeyCheck::Mismatch),
        Err(err) => Err(KeyCheck::Unusable(err.to_string())),
    }
}

/// Verifies the server certificate as a sender does: against the CA, for `name` (its first
/// subjectAltName), now. On failure: the reason and what to do.
fn verify_server_cert(
    provider: &zrep_tls::rustls::crypto::CryptoProvider,
    chain: &[CertificateDer<'static>],
    ca_certs: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), (String, &'static str)> {
    use zrep_tls::pki_types::{ServerName, UnixTime};
    use zrep_tls::rustls::client::WebPkiServerVerifier;
    use zrep_tls::rustls::client::danger::ServerCertVerifier;
    use zrep_tls::rustls::{CertificateError, Error, RootCertStore};
    const REISSUE: &str =
        "issue it from this CA (`zrep-recv init` does) or point `ca` at its issuer";
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots
            .add(cert.clone())
            .map_err(|e| (format!("the CA certificate is unusable: {e}"), REISSUE))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(provider.clone()),
    )
    .build()
    .map_err(|e| (e.to_string(), REISSUE))?;
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|e| (e.to_string(), REISSUE))?;
    match verifier.verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => Err((
            "it has expired".into(),
            "issue a new server certificate from the CA",
        )),
        Err(Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => Err((
            "it is not valid yet".into(),
            "check this host's clock, or issue a new server certificate from the CA",
        )),
        Err(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => Err(("this CA did not issue it".into(), REISSUE)),
        Err(err) => Err((err.to_string(), REISSUE)),
    }
}

fn read_certs(setting: Setting, path: &Path) -> Result<Vec<CertificateDer<'static>>, Problem> {
    load_certs(path).map_err(|err| file_problem(setting, path, err))
}

fn read_key(setting: Setting, path: &Path) -> Result<PrivateKeyDer<'static>, Problem> {
    load_private_key(path).map_err(|err| file_problem(setting, path, err))
}

/// A loading error of zrep-tls as a [`Problem`]: each names the file once and its cause once.
fn file_problem(setting: Setting, path: &Path, err: TlsError) -> Problem {
    match err {
        TlsError::Read { path, source } => Problem::Unreadable {
            setting,
            path,
            cause: source,
        },
        TlsError::Pem { path, source } => Problem::NotPem {
            setting,
            path,
            found: format!("malformed PEM ({})", pem_error(&source)),
        },
        TlsError::NoCertificate { path } => Problem::NotPem {
            setting,
            path,
            found: "no PEM certificate in it".into(),
        },
        TlsError::NoPrivateKey { path } => Problem::NotPem {
            setting,
            path,
            found: "no PEM private key (PKCS#8, SEC1 or PKCS#1) in it".into(),
        },
        other => Problem::Unusable {
            setting,
            path: path.to_owned(),
            reason: zrep_cli::one_line(&other),
        },
    }
}

/// The PEM decoder shows the lines it means as byte arrays; an admin wants to read them.
fn pem_error(err: &zrep_tls::pki_types::pem::Error) -> String {
    use zrep_tls::pki_types::pem::Error;
    match err {
        Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("no line \"-----END {}-----\"", label.trim())
        }
        Error::IllegalSectionStart { line } => format!(
            "bad section start {:?}",
            String::from_utf8_lossy(line).trim()
        ),
        other => other.to_string(),
    }
}

fn ca_problem(config: &RecvConfig, ca_key: &Path, err: TlsError) -> Problem {
    match err {
        TlsError::CaKeyMismatch => Problem::CaKeyMismatch {
            ca_key: ca_key.to_owned(),
            ca: config.ca.clone(),
        },
        TlsError::NotCa { subject } => Problem::NotCa {
            ca: config.ca.clone(),
            subject,
        },
        TlsError::PrivateKey { reason } => Problem::Unusable {
            setting: Setting::CaKey,
            path: ca_key.to_owned(),
            reason,
        },
        other => Problem::Unusable {
            setting: Setting::Ca,
            path: config.ca.clone(),
            reason: zrep_cli::one_line(&other),
        },
    }
}

/// The state directory must exist; peers.toml in it may be absent (no registered peers).
fn check_state_dir(config: &RecvConfig, out: &mut String) -> Result<Registry, Problem> {
    let dir = &config.state_dir;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Problem::StateDir {
                path: dir.clone(),
                reason: "not a directory".into(),
            });
        }
        Err(err) => {
            return Err(Problem::StateDir {
                path: dir.clone(),
                reason: err.to_string(),
            });
        }
    }
    let file = RegistryFile::new(dir);
    let present = file.path().exists();
    let registry = file.load().map_err(|cause| match cause {
        RegistryError::Invalid { .. } => Problem::RegistryInvalid { cause },
        _ => Problem::RegistryUnreadable { cause },
    })?;
    if present {
        let _ = writeln!(
            out,
            "state-dir {}: {}: peers {}, pairings {}",
            dir.display(),
            file.path().display(),
            registry.peers.len(),
            registry.pairings.len()
        );
    } else {
        let _ = writeln!(
            out,
            "state-dir {}: no peers.toml yet (no registered peers)",
            dir.display()
        );
    }
    Ok(registry)
}

/// One line per peer (static, registered, revoked), pending pairing and `[keep]` entry.
fn list_peers(config: &RecvConfig, registry: &Registry, now: SystemTime, out: &mut String) {
    let keep = |name: &PeerName| match config.retention.get(name) {
        Some(r) if r.prefix == zrep_repl::naming::DEFAULT_PREFIX => format!("keep {}", r.keep),
        Some(r) => format!("keep {} (prefix {})", r.keep, r.prefix),
        None => "keep all".to_owned(),
    };
    for (name, root) in &config.peers {
        let state = match registry.peer(name) {
            None => "static",
            Some(p) if p.revoked => "static, revoked in peers.toml",
            Some(_) => "static, overridden by peers.toml",
        };
        let _ = writeln!(out, "peer {name} ({state}) root {root} {}", keep(name));
    }
    for peer in &registry.peers {
        let state = if peer.revoked {
            "revoked"
        } else {
            "registered"
        };
        let name = &peer.name;
        let _ = writeln!(
            out,
            "peer {name} ({state}) root {} {}",
            peer.root,
            keep(name)
        );
    }
    for pairing in &registry.pairings {
        if pairing.used.is_none() && pairing.expires > now {
            let _ = writeln!(
                out,
                "pairing {} (pending until {}) root {}",
                pairing.name,
                humantime_serde::re::humantime::format_rfc3339_seconds(pairing.expires),
                pairing.root
            );
        }
    }
    for name in config.retention.keys() {
        if !config.peers.contains_key(name) && registry.peer(name).is_none() {
            let _ = writeln!(out, "{} for {name}, not a peer yet", keep(name));
        }
    }
}

/// The name senders should verify this receiver's certificate against: its first
/// subjectAltName.
pub fn server_name(config: &RecvConfig) -> anyhow::Result<String> {
    let chain = load_certs(&config.cert)?;
    zrep_tls::pairing::certificate_names(&chain[0])?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} has no subjectAltName", config.cert.display()))
}

/// The starting send.toml of a paired or issued sender.
pub fn starting_send_toml(receiver: &str, server_name: &str, cert: &str, key: &str) -> String {
    zrep_cli::starting_send_toml(
        "written when this sender was paired",
        receiver,
        server_name,
        [cert, key, "ca.pem"],
    )
}

fn require_ca_key(config: &RecvConfig) -> anyhow::Result<&Path> {
    config.ca_key.as_deref().ok_or_else(|| {
        anyhow!("recv.toml has no `ca-key`: this receiver cannot sign peer certificates")
    })
}

fn ca_fingerprint(config: &RecvConfig) -> anyhow::Result<Fingerprint> {
    let certs = load_certs(&config.ca)?;
    Ok(Fingerprint::of_cert(&certs[0]))
}

/// A new peer needs a free name and a root of its own.
fn check_new_peer(
    config: &RecvConfig,
    registry: &Registry,
    name: &PeerName,
    root: &DatasetName,
    now: SystemTime,
) -> anyhow::Result<()> {
    if root.parent().is_none() {
        bail!("root {root} is a pool; give each peer a dataset below the pool");
    }
    if config.peers.contains_key(name) {
        bail!("peer {name} is configured statically in recv.toml; remove it there first");
    }
    if registry.peer(name).is_some_and(|p| !p.revoked) {
        bail!("peer {name} is already paired; `zrep-recv revoke {name}` first to pair it anew");
    }
    // Another pending pairing for the same name is replaced by this one: not a competitor.
    let mut claims: Vec<RootClaim> = registry
        .root_claims(now)
        .into_iter()
        .filter(|c| c.peer != *name)
        .collect();
    claims.extend(config.static_claims(registry));
    claims.push(RootClaim::new(name.clone(), root.clone(), RootSource::New));
    if let Some(overlap) = find_overlaps(&claims)
        .into_iter()
        .find(|o| o.involves(name))
    {
        bail!(overlap);
    }
    Ok(())
}

fn short(fp: &Fingerprint) -> String {
    fp.to_string()[..16].to_owned()
}

/// A file name stem from a host name (`backup1.example.org` stays as is).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn create_new(path: &Path, text: &str) -> anyhow::Result<()> {
    zrep_cli::create_new(path, text).with_context(|| format!("creating {}", path.display()))
}

fn read_limited(path: &Path, limit: usize) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > limit as u64 {
        bail!("{} is larger than {limit} bytes: not a CSR", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
