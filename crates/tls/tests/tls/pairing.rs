//! Enrolment handshakes: the server takes clients without a certificate (pairing only), the
//! sender trusts the server by its CA fingerprint, and both ends derive the same exporter value.

use std::sync::Arc;

use zrep_tls::pairing::{client_exporter, server_exporter};
use zrep_tls::rustls::ServerConfig;
use zrep_tls::{Acceptor, PairingToken, pinned_client_config, server_config_allowing_pairing};

use crate::util::{Pki, handshake_with, ping_pong};

/// A pairing-capable server whose chain ends with its CA certificate.
fn pairing_server(pki: &Pki) -> Arc<ServerConfig> {
    server_config_allowing_pairing(
        &[pki.ca.cert_der().clone()],
        vec![pki.server.cert_der().clone(), pki.ca.cert_der().clone()],
        pki.server.key_der(),
    )
    .unwrap()
}

#[tokio::test]
async fn pinned_client_enrols_and_both_ends_agree_on_the_exporter() {
    let pki = Pki::new("zrep CA backup1");
    let acceptor = Acceptor::new(pairing_server(&pki));
    let token = PairingToken::generate(pki.ca.fingerprint()).unwrap();
    let client = pinned_client_config(token.ca_fingerprint()).unwrap();
    // The dialled name does not matter: the pin replaces the name check.
    let (server, client) = handshake_with(client, "10.9.8.7", |io| acceptor.accept_any(io)).await;
    let (mut server, identity) = server.unwrap();
    let mut client = client.unwrap();
    assert!(identity.is_none());
    ping_pong(&mut server, &mut client).await;
    let a = server_exporter(server.get_ref().1).unwrap();
    let b = client_exporter(client.get_ref().1).unwrap();
    assert_eq!(a, b);
    let proof = token.proof(&b, b"csr");
    assert!(token.stored_key().verify(token.id(), &a, b"csr", &proof));
}

#[tokio::test]
async fn accept_any_reports_a_certificate_less_client_without_identity() {
    let pki = Pki::new("zrep CA backup1");
    let acceptor = Acceptor::new(pairing_server(&pki));
    // A certified peer is still identified on the same configuration.
    let nas1 = pki.peer("nas1");
    let (server, client) = handshake_with(pki.client_config(&nas1), "backup1", |io| {
        acceptor.accept_any(io)
    })
    .await;
    let (_server, identity) = server.unwrap();
    assert_eq!(identity.unwrap().name.as_str(), "nas1");
    client.unwrap();

    // A peer from another CA is refused even though certificates are optional.
    let other = Pki::new("zrep CA elsewhere");
    let impostor = other.peer("nas1");
    let (server, _client) = handshake_with(pki.client_config(&impostor), "backup1", |io| {
        acceptor.accept_any(io)
    })
    .await;
    assert!(server.is_err());
}

#[tokio::test]
async fn pinned_client_refuses_a_receiver_with_another_ca() {
    let pki = Pki::new("zrep CA backup1");
    let mitm = Pki::new("zrep CA mitm");
    let acceptor = Acceptor::new(pairing_server(&mitm));
    let client = pinned_client_config(pki.ca.fingerprint()).unwrap();
    let (_server, client) = handshake_with(client, "backup1", |io| acceptor.accept_any(io)).await;
    let err = zrep_cli::one_line(&client.unwrap_err());
    assert!(err.starts_with("TLS handshake failed: "), "{err}");
    assert!(err.contains("pairing token names"), "{err}");

    // A server that sends the pinned CA but a leaf from another CA is refused too.
    let forged = server_config_allowing_pairing(
        &[mitm.ca.cert_der().clone()],
        vec![mitm.server.cert_der().clone(), pki.ca.cert_der().clone()],
        mitm.server.key_der(),
    )
    .unwrap();
    let acceptor = Acceptor::new(forged);
    let client = pinned_client_config(pki.ca.fingerprint()).unwrap();
    let (_server, client) = handshake_with(client, "backup1", |io| acceptor.accept_any(io)).await;
    assert!(client.is_err());
}
