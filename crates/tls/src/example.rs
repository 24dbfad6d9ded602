//! The example certificate set of `certs-example/`, for tests and a quick start only.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::error::TlsError;
use crate::files::Overwrite;
use crate::name::PeerName;
use crate::pki::CertificateAuthority;

/// Lifetime of every example certificate: 20 years, so committed files do not expire in CI.
pub const EXAMPLE_TTL: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);

/// Names the example server certificate is valid for; the first is its CN.
pub const EXAMPLE_SERVER_NAMES: [&str; 4] = ["backup1", "localhost", "127.0.0.1", "::1"];

/// Writes a fresh example set into `dir` (created if missing), replacing existing files:
///
/// - `ca.pem`/`ca.key`: the example zrep-recv CA of `backup1`;
/// - `backup1.pem`/`backup1.key`: server certificate for [`EXAMPLE_SERVER_NAMES`];
/// - `nas1.pem`/`.key`, `nas2.pem`/`.key`: peer certificates issued by that CA;
/// - `other-ca.pem`/`.key`: an unrelated CA, and `nas1-other-ca.pem`/`.key`: a peer
///   certificate with CN `nas1` from it, which the server must refuse.
///
/// Never use these for anything real: the private keys are public.
pub fn write_example_set(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let save_ca = |ca: &CertificateAuthority, stem: &str| {
        ca.save(
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}.key")),
            Overwrite::Replace,
        )
    };
    let ca = CertificateAuthority::generate(
        "zrep EXAMPLE CA backup1 (not for production)",
        EXAMPLE_TTL,
    )?;
    save_ca(&ca, "ca")?;
    let server = ca.issue_server_cert(&EXAMPLE_SERVER_NAMES, EXAMPLE_TTL)?;
    server.save(
        &dir.join("backup1.pem"),
        &dir.join("backup1.key"),
        Overwrite::Replace,
    )?;
    for peer in ["nas1", "nas2"] {
        let issued = ca.issue_peer_cert(&PeerName::new(peer)?, EXAMPLE_TTL)?;
        issued.save(
            &dir.join(format!("{peer}.pem")),
            &dir.join(format!("{peer}.key")),
            Overwrite::Replace,
        )?;
    }

    let other =
        CertificateAuthority::generate("zrep EXAMPLE other CA (not for production)", EXAMPLE_TTL)?;
    save_ca(&other, "other-ca")?;
    let impostor = other.issue_peer_cert(&PeerName::new("nas1")?, EXAMPLE_TTL)?;
    impostor.save(
        &dir.join("nas1-other-ca.pem"),
        &dir.join("nas1-other-ca.key"),
        Overwrite::Replace,
    )?;
    Ok(())
}
