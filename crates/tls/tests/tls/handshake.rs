//! Who gets in and who does not, with certificates made per test.

use std::sync::Arc;

use zrep_tls::rustls::{
    self, CertificateError, ClientConfig, NamedGroup, ProtocolVersion, RootCertStore,
};
use zrep_tls::{Acceptor, Fingerprint, PeerIdentity, RevokedCerts, TlsError};

use crate::util::{
    Pki, assert_client_cut_off, assert_rustls_error, handshake, ping_pong, server_with_cert,
};

/// The certificate is valid, but for the other end's purpose (clientAuth vs serverAuth).
fn assert_wrong_purpose(err: &TlsError) {
    assert_rustls_error!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        )
    );
}

#[tokio::test]
async fn valid_client_is_accepted_and_named_by_its_cn() {
    let pki = Pki::new("zrep CA backup1");
    let nas1 = pki.peer("nas1");
    let acceptor = Acceptor::new(pki.server_config());

    let (server, client) = handshake(&acceptor, pki.client_config(&nas1), "backup1").await;
    let (mut server, identity) = server.unwrap();
    let mut client = client.unwrap();

    assert_eq!(identity.name.as_str(), "nas1");
    assert_eq!(identity.fingerprint, nas1.fingerprint());
    assert_eq!(identity, PeerIdentity::from_cert(nas1.cert_der()).unwrap());
    assert!(identity.expires_in().is_some());

    let conn = server.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::X25519MLKEM768),
        "aws-lc-rs provider should negotiate the post-quantum hybrid"
    );
    ping_pong(&mut server, &mut client).await;
}

#[tokio::test]
async fn client_reaches_server_by_ip_and_localhost() {
    let pki = Pki::new("zrep CA backup1");
    let nas2 = pki.peer("nas2");
    let acceptor = Acceptor::new(pki.server_config());
    for name in ["127.0.0.1", "localhost"] {
        let (server, client) = handshake(&acceptor, pki.client_config(&nas2), name).await;
        let (mut server, identity) = server.unwrap();
        assert_eq!(identity.name.as_str(), "nas2");
        ping_pong(&mut server, &mut client.unwrap()).await;
    }
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let pki = Pki::new("zrep CA backup1");
    let other = Pki::new("zrep CA elsewhere");
    // Same CN as a legitimate peer, but the wrong issuer.
    let impostor = other.peer("nas1");
    let acceptor = Acceptor::new(pki.server_config());

    // The impostor trusts the real CA, so only the server's check stands in its way.
    let (server, client) = handshake(&acceptor, pki.client_config(&impostor), "backup1").await;
    let err = server.unwrap_err();
    assert_rustls_error!(
        &err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_client_cut_off(client).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = Pki::new("zrep CA backup1");
    let acceptor = Acceptor::new(pki.server_config());

    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let anonymous = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let (server, client) = handshake(&acceptor, Arc::new(anonymous), "backup1").await;
    let err = server.unwrap_err();
    assert_rustls_error!(&err, rustls::Error::NoCertificatesPresented);
    assert_client_cut_off(client).await;
}

#[tokio::test]
async fn server_cert_not_from_the_ca_is_refused_by_the_client() {
    let pki = Pki::new("zrep CA backup1");
    let rogue = Pki::new("zrep CA rogue");
    let nas1 = pki.peer("nas1");
    // A rogue server with a certificate for the right name, from the wrong CA. It would even
    // accept our client certificate.
    let acceptor = Acceptor::new(server_with_cert(&pki, &rogue.server));

    let (server, client) = handshake(&acceptor, pki.client_config(&nas1), "backup1").await;
    let err = client.unwrap_err();
    assert_rustls_error!(
        &err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert!(
        server.is_err(),
        "server must not complete without the client"
    );
}

#[tokio::test]
async fn server_cert_for_another_name_is_refused() {
    let pki = Pki::new("zrep CA backup1");
    let nas1 = pki.peer("nas1");
    let acceptor = Acceptor::new(pki.server_config());
    let (_server, client) = handshake(&acceptor, pki.client_config(&nas1), "backup2").await;
    let err = client.unwrap_err();
    assert_rustls_error!(
        &err,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    );
}

#[tokio::test]
async fn peer_cert_cannot_impersonate_the_server() {
    // nas1 holds a valid certificate from the CA, but for clientAuth only.
    let pki = Pki::new("zrep CA backup1");
    let nas1 = pki.peer("nas1");
    let backup1 = pki.peer("backup1");
    let acceptor = Acceptor::new(server_with_cert(&pki, &backup1));
    let (_server, client) = handshake(&acceptor, pki.client_config(&nas1), "backup1").await;
    let err = client.unwrap_err();
    assert_wrong_purpose(&err);
}

#[tokio::test]
async fn server_cert_cannot_log_in_as_a_peer() {
    let pki = Pki::new("zrep CA backup1");
    let acceptor = Acceptor::new(pki.server_config());
    let (server, client) = handshake(&acceptor, pki.client_config(&pki.server), "backup1").await;
    let err = server.unwrap_err();
    assert_wrong_purpose(&err);
    assert_client_cut_off(client).await;
}

#[tokio::test]
async fn revoked_certificate_is_refused_after_the_handshake() {
    let pki = Pki::new("zrep CA backup1");
    let stolen = pki.peer("nas1");
    let reissued = pki.peer("nas1");
    let revoked: RevokedCerts = [stolen.fingerprint()].into_iter().collect();
    let acceptor = Acceptor::new(pki.server_config()).with_revocation(Arc::new(revoked));

    let (server, client) = handshake(&acceptor, pki.client_config(&stolen), "backup1").await;
    match server {
        Err(TlsError::Revoked { peer, fingerprint }) => {
            assert_eq!(peer.as_str(), "nas1");
            assert_eq!(fingerprint, stolen.fingerprint());
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
    assert_client_cut_off(client).await;

    // The re-issued certificate for the same peer still works.
    let (server, client) = handshake(&acceptor, pki.client_config(&reissued), "backup1").await;
    let (mut server, identity) = server.unwrap();
    assert_eq!(identity.fingerprint, reissued.fingerprint());
    ping_pong(&mut server, &mut client.unwrap()).await;

    // A closure works as a check too.
    let nobody: Fingerprint = Fingerprint::of_der(b"nobody");
    let acceptor = Acceptor::new(pki.server_config())
        .with_revocation(Arc::new(move |p: &PeerIdentity| p.fingerprint == nobody));
    let (server, _client) = handshake(&acceptor, pki.client_config(&stolen), "backup1").await;
    server.unwrap();
}

#[tokio::test]
async fn csr_signed_certificate_handshakes_under_the_registered_name() {
    let pki = Pki::new("zrep CA backup1");
    let peer = "nas7".parse().unwrap();
    let request = zrep_tls::PeerCsr::generate(&peer).unwrap();
    let signed = pki
        .ca
        .sign_peer_csr(request.csr_pem(), &peer, zrep_tls::DEFAULT_PEER_TTL)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("nas7.pem"),
        dir.path().join("nas7.key"),
    );
    zrep_tls::write_cert_file(&ca, pki.ca.cert_pem()).unwrap();
    signed.save(&cert).unwrap();
    zrep_tls::write_key_file(&key, request.key_pem(), zrep_tls::Overwrite::Refuse).unwrap();
    let client = zrep_tls::client_config_from_files(&ca, &cert, &key).unwrap();

    let acceptor = Acceptor::new(pki.server_config());
    let (server, client) = handshake(&acceptor, client, "backup1").await;
    let (mut server, identity) = server.unwrap();
    assert_eq!(identity.name, peer);
    assert_eq!(identity.fingerprint, signed.fingerprint());
    ping_pong(&mut server, &mut client.unwrap()).await;
}
