//! The committed `certs-example/` files are valid and behave as documented.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zrep_tls::{
    Acceptor, CertificateAuthority, Connector, DEFAULT_PEER_TTL, PeerIdentity, client_config,
    client_config_from_files, load_certs, server_config_from_files,
};

use crate::util::{TEST_TIMEOUT, assert_client_cut_off, assert_rustls_error, handshake, ping_pong};

fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../certs-example")
        .join(file)
}

fn example_server() -> Acceptor {
    Acceptor::new(
        server_config_from_files(
            &example("ca.pem"),
            &example("backup1.pem"),
            &example("backup1.key"),
        )
        .unwrap(),
    )
}

fn example_client(peer: &str) -> std::sync::Arc<zrep_tls::rustls::ClientConfig> {
    client_config_from_files(
        &example("ca.pem"),
        &example(&format!("{peer}.pem")),
        &example(&format!("{peer}.key")),
    )
    .unwrap()
}

#[tokio::test]
async fn example_peers_handshake_with_example_server() {
    let acceptor = example_server();
    for peer in ["nas1", "nas2"] {
        for server_name in ["backup1", "localhost", "127.0.0.1", "::1"] {
            let (server, client) = handshake(&acceptor, example_client(peer), server_name).await;
            let (mut server, identity) = server.unwrap();
            assert_eq!(identity.name.as_str(), peer);
            ping_pong(&mut server, &mut client.unwrap()).await;
        }
    }
}

#[tokio::test]
async fn example_nas1_from_other_ca_is_refused() {
    let acceptor = example_server();
    let (server, client) = handshake(&acceptor, example_client("nas1-other-ca"), "backup1").await;
    let err = server.unwrap_err();
    assert_rustls_error!(
        &err,
        zrep_tls::rustls::Error::InvalidCertificate(
            zrep_tls::rustls::CertificateError::UnknownIssuer
        )
    );
    assert_client_cut_off(client).await;

    // Its CN really is nas1: only the issuer differs.
    let cert = load_certs(&example("nas1-other-ca.pem")).unwrap();
    assert_eq!(
        PeerIdentity::from_cert(&cert[0]).unwrap().name.as_str(),
        "nas1"
    );
}

#[test]
fn example_cas_load_and_can_issue() {
    let ca = CertificateAuthority::load(&example("ca.pem"), &example("ca.key")).unwrap();
    let other =
        CertificateAuthority::load(&example("other-ca.pem"), &example("other-ca.key")).unwrap();
    assert_ne!(ca.fingerprint(), other.fingerprint());
    assert!(ca.common_name().contains("EXAMPLE"), "{}", ca.common_name());
    // The committed key matches: a fresh peer certificate passes the example server.
    let issued = ca
        .issue_peer_cert(&"nas3".parse().unwrap(), DEFAULT_PEER_TTL)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = client_config(
            &[ca.cert_der().clone()],
            vec![issued.cert_der().clone()],
            issued.key_der(),
        )
        .unwrap();
        let (server, _client) = handshake(&example_server(), client, "backup1").await;
        assert_eq!(server.unwrap().1.name.as_str(), "nas3");
    });
}

#[test]
fn example_certs_do_not_expire_soon() {
    let ten_years = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
    for file in [
        "ca.pem",
        "backup1.pem",
        "nas1.pem",
        "nas2.pem",
        "other-ca.pem",
        "nas1-other-ca.pem",
    ] {
        let cert = load_certs(&example(file)).unwrap().swap_remove(0);
        let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let left = x509.validity().time_to_expiration().unwrap();
        assert!(
            left.whole_seconds() > ten_years.as_secs() as i64,
            "{file} expires too soon: regenerate with scripts/gen-certs-example"
        );
    }
}

#[tokio::test]
async fn example_set_over_loopback_tcp() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = example_server();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, identity) = acceptor.accept(tcp).await.unwrap();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(identity.name.as_str().as_bytes())
            .await
            .unwrap();
        tls.shutdown().await.unwrap();
        buf
    });
    let run = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = Connector::new(example_client("nas2"));
        let mut tls = connector.connect("127.0.0.1", tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut reply = String::new();
        tls.read_to_string(&mut reply).await.unwrap();
        assert_eq!(reply, "nas2");
        assert_eq!(&server.await.unwrap(), b"hello");
    };
    tokio::time::timeout(TEST_TIMEOUT, run).await.unwrap();
}
