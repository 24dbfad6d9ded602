//! Certificate renewal: a paired sender asks for a new certificate over its authenticated
//! session when the current one is in the last part of its lifetime.
//!
//! Due when less than `renew-before` is left (default: a third of the certificate's lifetime).
//! The new certificate is for the current key, or for a new one with `rotate-key = true`; the
//! new key is written (0600, atomically) before the certificate, and both files are replaced
//! only after the receiver answered. The receiver keeps the old certificate valid until it
//! expires, so a lost answer costs nothing: the next run renews again.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};
use zrep_proto::{SenderEvent, SenderSide};
use zrep_repl::transport::Connection;
use zrep_tls::pki_types::CertificateDer;
use zrep_tls::{
    Overwrite, PeerCsr, PeerIdentity, SignedCert, cert_matches_key, load_certs, write_cert_file,
    write_key_file,
};

/// What renewal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Not due yet.
    NotDue,
    /// A new certificate was written, valid until this time; `rotated` if with a new key.
    Renewed {
        /// End of the new certificate's validity.
        not_after: SystemTime,
        /// A new key was made.
        rotated: bool,
    },
    /// The receiver refused (its reason); the old certificate stays.
    Refused(String),
}

/// Whether the certificate at `cert` should be renewed now: less than `renew_before` left, or
/// (by default) less than a third of its lifetime.
pub fn due(cert: &Path, renew_before: Option<Duration>, now: SystemTime) -> anyhow::Result<bool> {
    let leaf = load_certs(cert)?.swap_remove(0);
    let identity = PeerIdentity::from_cert(&leaf)?;
    let not_before = PeerIdentity::not_before_of(&leaf)?;
    let lifetime = identity
        .not_after
        .duration_since(not_before)
        .unwrap_or_default();
    let threshold = renew_before.unwrap_or(lifetime / 3);
    let left = identity.not_after.duration_since(now).unwrap_or_default();
    Ok(left < threshold)
}

/// Renews over `conn` (a ready, authenticated session) if due.
pub async fn renew_if_due<R, W>(
    conn: &mut Connection<SenderSide, R, W>,
    cert_path: &Path,
    key_path: &Path,
    renew_before: Option<Duration>,
    rotate_key: bool,
) -> anyhow::Result<Renewed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !due(cert_path, renew_before, SystemTime::now())? {
        return Ok(Renewed::NotDue);
    }
    if !conn.session.negotiated().is_some_and(|n| n.renew) {
        bail!("the certificate is due for renewal but the receiver does not offer renewal");
    }
    let leaf = load_certs(cert_path)?.swap_remove(0);
    let name = PeerIdentity::from_cert(&leaf)?.name;
    let request = if rotate_key {
        PeerCsr::generate(&name)?
    } else {
        let key_pem = std::fs::read_to_string(key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        PeerCsr::for_existing_key(&name, &key_pem)?
    };
    info!(peer = %name, rotate_key, "renewing the certificate");
    conn.session.renew(request.csr_der().to_vec())?;
    let certificate = match conn.next_event().await? {
        SenderEvent::Renewed { certificate } => CertificateDer::from(certificate),
        SenderEvent::RenewRefused { message } => {
            warn!(reason = %message, "the receiver refused to renew the certificate");
            return Ok(Renewed::Refused(message));
        }
        SenderEvent::PeerError { code, message } => {
            return Err(anyhow!(
                "the receiver ended the session ({code}): {message}"
            ));
        }
        other => return Err(anyhow!("unexpected answer to the renewal: {other:?}")),
    };
    let renewed = PeerIdentity::from_cert(&certificate)?;
    if renewed.name != name || !cert_matches_key(&certificate, request.key_pem())? {
        bail!("the renewed certificate is not for this sender's name and key");
    }
    if rotate_key {
        write_key_file(key_path, request.key_pem(), Overwrite::Replace)?;
    }
    write_cert_file(cert_path, SignedCert::from_der(certificate).cert_pem())?;
    Ok(Renewed::Renewed {
        not_after: renewed.not_after,
        rotated: rotate_key,
    })
}

#[cfg(test)]
mod tests {
    use zrep_tls::{CertificateAuthority, DEFAULT_CA_TTL};

    use super::*;

    #[test]
    fn due_in_the_last_third_or_before_renew_before() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pem");
        // 50 minutes + the 10 minutes backdating: a lifetime of one hour.
        let issued = ca
            .issue_peer_cert(&"nas1".parse().unwrap(), Duration::from_secs(3000))
            .unwrap();
        write_cert_file(&path, issued.cert_pem()).unwrap();
        let now = SystemTime::now();
        assert!(!due(&path, None, now).unwrap());
        assert!(due(&path, None, now + Duration::from_secs(2700)).unwrap());
        assert!(due(&path, Some(Duration::from_secs(4000)), now).unwrap());
        assert!(!due(&path, Some(Duration::from_secs(60)), now).unwrap());
    }
}
