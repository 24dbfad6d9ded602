//! The administrative commands of zrep-recv: `init`, `pair`, `issue`, `peers`, `revoke`.
//!
//! Each works on files only (the CA, the configuration, the peers registry); a running
//! `zrep-recv serve` notices registry changes within a second, so nothing needs a restart.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use zrep_tls::{
    CertificateAuthority, DEFAULT_CA_TTL, DEFAULT_SERVER_TTL, Fingerprint, Overwrite, PairingToken,
    PeerIdentity, PeerName, load_certs, write_cert_file,
};
use zrep_zfs::DatasetName;

use crate::config::RecvConfig;
use crate::registry::{IssuedCert, Pairing, Registry, RegistryFile};

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

/// `zrep-recv pair`: registers a pending peer and returns its one-time token.
pub fn pair(
    config: &RecvConfig,
    name: &PeerName,
    root: &DatasetName,
    ttl: Duration,
) -> anyhow::Result<NewPairing> {
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
    format!(
        r#"# zrep-send configuration, written when this sender was paired.
receiver = "{receiver}"
server-name = "{server_name}"
cert = "{cert}"
key = "{key}"
ca = "ca.pem"
# renew-before = "120d"     # renew the certificate this long before it expires (default: last third)
# rotate-key = false        # renew with a new key instead of the current one

# What to replicate (targets land under this sender's root on the receiver):
# [[dataset]]
# source = "tank/data"
"#
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
    let pending = registry
        .pairings
        .iter()
        .filter(|p| p.used.is_none() && p.expires > now && p.name != *name)
        .map(|p| (&p.name, p.root.as_str()));
    let statics = config.peers.iter().map(|(n, r)| (n, r.as_str()));
    for (other, other_root) in registry.active_roots().chain(pending).chain(statics) {
        if other == name {
            continue;
        }
        let Ok(other_root) = DatasetName::parse(other_root) else {
            continue;
        };
        if root.is_within(&other_root) || other_root.is_within(root) {
            bail!(
                "root {root} overlaps {other_root} of peer {other}; each peer needs its own subtree"
            );
        }
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
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_limited(path: &Path, limit: usize) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > limit as u64 {
        bail!("{} is larger than {limit} bytes: not a CSR", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
