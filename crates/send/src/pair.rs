//! `zrep-send pair`: enrol with a receiver using a one-time token.
//!
//! The sender makes its key here (it never leaves this host), connects over TLS without a
//! client certificate, trusting the receiver only if its chain holds the CA whose fingerprint
//! the token carries, proves the token bound to this TLS session, sends a CSR and receives its
//! certificate and the CA certificate. Then it writes `sender.key` (0600), `sender.pem`,
//! `ca.pem` and a starting `send.toml`. Nothing is written unless the receiver registered it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use tokio::net::TcpStream;
use zrep_proto::{EnrollRequest, ErrorCode, Features, SenderEvent, SenderSession, SessionConfig};
use zrep_repl::transport::Connection;
use zrep_tls::pairing::{certificate_names, client_exporter};
use zrep_tls::pki_types::CertificateDer;
use zrep_tls::{
    Connector, Fingerprint, Overwrite, PairingToken, PeerCsr, PeerIdentity, PeerName,
    cert_matches_key, pinned_client_config, write_cert_file, write_key_file,
};

/// File names written into the pairing directory.
pub const KEY_FILE: &str = "sender.key";
/// The sender's certificate.
pub const CERT_FILE: &str = "sender.pem";
/// The receiver's CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// The starting configuration.
pub const CONFIG_FILE: &str = "send.toml";

/// What `zrep-send pair` needs.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The receiver, `HOST:PORT`.
    pub receiver: String,
    /// The token printed by `zrep-recv pair`.
    pub token: PairingToken,
    /// Where to write the key, certificates and send.toml.
    pub dir: PathBuf,
    /// Limit for the whole exchange.
    pub timeout: Duration,
}

/// The outcome of a successful pairing.
#[derive(Debug, Clone)]
pub struct Paired {
    /// The name the receiver gave this sender.
    pub peer: String,
    /// Its root on the receiver.
    pub root: String,
    /// The name of the receiver's certificate that send.toml verifies.
    pub server_name: String,
    /// End of the new certificate's validity.
    pub not_after: SystemTime,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// Pairs with the receiver; see the module documentation.
pub async fn pair(options: &PairOptions) -> anyhow::Result<Paired> {
    let dir = &options.dir;
    for name in [KEY_FILE, CONFIG_FILE] {
        let path = dir.join(name);
        if path.exists() {
            bail!(
                "{} exists: this directory already holds a paired sender; use another --dir",
                path.display()
            );
        }
    }
    // The CN is the receiver's choice; this one is only a placeholder in the request.
    let placeholder = PeerName::new("zrep-sender")?;
    let request = PeerCsr::generate(&placeholder)?;
    let host = host_of(&options.receiver)?;
    let work = enrol(options, &request, &host);
    let (enrolment, server_names) =
        tokio::time::timeout(options.timeout, work)
            .await
            .map_err(|_| {
                anyhow!(
                    "pairing with {} timed out after {:?}",
                    options.receiver,
                    options.timeout
                )
            })??;

    // Check what came back before writing anything.
    let ca = CertificateDer::from(enrolment.ca_certificate);
    if Fingerprint::of_cert(&ca) != options.token.ca_fingerprint() {
        bail!("the receiver answered with a CA certificate other than the one the token names");
    }
    let cert = CertificateDer::from(enrolment.certificate);
    let identity = PeerIdentity::from_cert(&cert).context("the certificate received")?;
    if identity.name.as_str() != enrolment.peer {
        bail!(
            "the certificate received names {} instead of {}",
            identity.name,
            enrolment.peer
        );
    }
    if !cert_matches_key(&cert, request.key_pem())? {
        bail!("the certificate received is not for the key this sender generated");
    }
    let server_name = if server_names.contains(&host) {
        host.clone()
    } else {
        server_names
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("the receiver's certificate has no name"))?
    };

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join(KEY_FILE);
    write_key_file(&key_path, request.key_pem(), Overwrite::Refuse)?;
    let cert_path = dir.join(CERT_FILE);
    write_cert_file(&cert_path, zrep_tls::SignedCert::from_der(cert).cert_pem())?;
    let ca_path = dir.join(CA_FILE);
    write_cert_file(&ca_path, zrep_tls::SignedCert::from_der(ca).cert_pem())?;
    let config_path = dir.join(CONFIG_FILE);
    create_new(
        &config_path,
        &starting_config(&options.receiver, &server_name, &enrolment.peer),
    )?;
    Ok(Paired {
        peer: enrolment.peer,
        root: enrolment.root,
        server_name,
        not_after: identity.not_after,
        files: vec![key_path, cert_path, ca_path, config_path],
    })
}

/// Connects, proves the token and gets the enrolment; also returns the names of the
/// receiver's certificate.
async fn enrol(
    options: &PairOptions,
    request: &PeerCsr,
    host: &str,
) -> anyhow::Result<(zrep_proto::Enrolment, Vec<String>)> {
    let tcp = TcpStream::connect(&options.receiver)
        .await
        .with_context(|| format!("connecting to {}", options.receiver))?;
    let _ = tcp.set_nodelay(true);
    let connector = Connector::new(pinned_client_config(options.token.ca_fingerprint())?);
    // The pin replaces the name check; the name only goes into SNI.
    let sni = if zrep_tls::pki_types::ServerName::try_from(host).is_ok() {
        host
    } else {
        "zrep-receiver.invalid"
    };
    let tls = connector
        .connect(sni, tcp)
        .await
        .with_context(|| format!("TLS handshake with {}", options.receiver))?;
    let (conn_state, server_names) = {
        let conn = tls.get_ref().1;
        let names = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(certificate_names)
            .transpose()?
            .unwrap_or_default();
        (client_exporter(conn)?, names)
    };
    let exporter = conn_state;
    let (reader, writer) = tokio::io::split(tls);
    let mut config = SessionConfig::default();
    config.software = concat!("zrep-send ", env!("CARGO_PKG_VERSION")).to_owned();
    config.features = Features::new().with_enroll(true);
    let session = SenderSession::new(config, Duration::ZERO);
    let mut conn = Connection::new(session, reader, writer, Instant::now(), options.timeout);
    match conn
        .next_event()
        .await
        .context("the receiver closed the connection")?
    {
        SenderEvent::Negotiated(n) if n.enroll => {}
        SenderEvent::Negotiated(_) => {
            bail!("the receiver does not offer pairing (an older zrep-recv?)")
        }
        SenderEvent::PeerError { code, message } => {
            bail!("the receiver refused the session ({code}): {message}")
        }
        other => bail!("unexpected first answer from the receiver: {other:?}"),
    }
    let csr = request.csr_der().to_vec();
    let proof = options.token.proof(&exporter, &csr);
    conn.session.enroll(EnrollRequest {
        token_id: options.token.id(),
        proof,
        csr,
    })?;
    let enrolment = match conn
        .next_event()
        .await
        .context("waiting for the receiver")?
    {
        SenderEvent::Enrolled(enrolment) => enrolment,
        SenderEvent::PeerError {
            code: ErrorCode::PairingRefused,
            message,
        } => bail!("the receiver refused the pairing: {message}"),
        SenderEvent::PeerError { code, message } => {
            bail!("the receiver ended the pairing ({code}): {message}")
        }
        other => bail!("unexpected answer from the receiver: {other:?}"),
    };
    if conn.session.close().is_ok() {
        conn.shutdown().await;
    }
    Ok((enrolment, server_names))
}

/// The host part of `HOST:PORT` (`[::1]:7711` → `::1`).
fn host_of(receiver: &str) -> anyhow::Result<String> {
    let (host, port) = receiver
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--receiver {receiver:?}: expected HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| anyhow!("--receiver {receiver:?}: bad port"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

fn starting_config(receiver: &str, server_name: &str, peer: &str) -> String {
    zrep_cli::starting_send_toml(
        &format!("written by `zrep-send pair` (this sender is peer {peer})"),
        receiver,
        server_name,
        [CERT_FILE, KEY_FILE, CA_FILE],
    )
}

fn create_new(path: &Path, text: &str) -> anyhow::Result<()> {
    zrep_cli::create_new(path, text).with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_receiver() {
        assert_eq!(host_of("backup1:7711").unwrap(), "backup1");
        assert_eq!(host_of("[::1]:7711").unwrap(), "::1");
        assert_eq!(host_of("10.0.0.1:1").unwrap(), "10.0.0.1");
        assert!(host_of("backup1").is_err());
        assert!(host_of("backup1:x").is_err());
    }
}
