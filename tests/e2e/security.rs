//! Who may connect and where they may write: certificates from the receiver's CA only, each peer
//! confined to its root whatever names it sends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zrep_e2e::{
    ClientConn, DatasetSpec, Receiver, SenderConfig, certs_dir, client_session, exists,
};
use zrep_proto::{
    ErrorCode, RefusalCode, SenderEvent, SenderSession, SessionConfig, StreamKind, TransferOffer,
};
use zrep_repl::transport::Connection;
use zrep_tls::rustls;
use zrep_zfs::testbed::{TestPool, write_file, zfs};

/// Datasets under a pool, by ZFS's own listing.
fn datasets(pool: &TestPool) -> Vec<String> {
    zfs(&["list", "-H", "-o", "name", "-r", pool.name()])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether the receiver's log comes to contain `text` within a bound (scaled for emulation):
/// the receiver may log a refusal after the peer has seen it.
fn logged(receiver: &Receiver, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10 * zrep_e2e::time_scale());
    while !receiver.log_text().contains(text) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let src = TestPool::create("casrc");
    let dst = TestPool::create("cadst");
    let source = src.create_dataset("data");
    write_file(&source, "f", b"secret");
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let before = datasets(&dst);
    // Right name (CN nas1), wrong CA.
    let config = SenderConfig::new(receiver.port, "nas1-other-ca", &[DatasetSpec::new(&source)]);
    let run = config.once();
    run.expect_code(1);
    assert!(run.stdout.contains("NOT replicated"), "{}", run.stdout);
    assert_eq!(datasets(&dst), before);
    assert!(
        logged(&receiver, "TLS handshake refused"),
        "{}",
        receiver.log_text()
    );
}

#[test]
fn certified_but_unconfigured_peer_is_refused() {
    let src = TestPool::create("upsrc");
    let dst = TestPool::create("updst");
    let source = src.create_dataset("data");
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let before = datasets(&dst);
    let config = SenderConfig::new(receiver.port, "nas2", &[DatasetSpec::new(&source)]);
    let run = config.once();
    run.expect_code(1);
    assert!(
        run.stdout.contains("not configured on this receiver"),
        "{}\n{}\nreceiver log:\n{}",
        run.stdout,
        run.stderr,
        receiver.log_text()
    );
    assert_eq!(datasets(&dst), before);
}

#[tokio::test]
async fn connection_without_client_certificate_may_only_pair() {
    let dst = TestPool::create("ncdst");
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let before = datasets(&dst);
    // TLS without a client certificate is accepted (enrolment needs it), ...
    let mut roots = rustls::RootCertStore::empty();
    for cert in zrep_tls::load_certs(&certs_dir().join("ca.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", receiver.port))
        .await
        .unwrap();
    let tls = zrep_tls::Connector::new(Arc::new(config))
        .connect("backup1", tcp)
        .await
        .expect("certificate-less TLS is accepted, for pairing");
    let (reader, writer) = tokio::io::split(tls);
    let session = SenderSession::new(SessionConfig::default(), Duration::ZERO);
    let mut conn = Connection::new(
        session,
        reader,
        writer,
        Instant::now(),
        Duration::from_secs(10),
    );
    assert!(matches!(
        conn.next_event().await.unwrap(),
        SenderEvent::Negotiated(_)
    ));
    // ... but anything other than pairing is refused at the protocol level.
    conn.session.request_state("nas1").unwrap();
    match conn.next_event().await {
        Ok(SenderEvent::PeerError { code, message }) => {
            assert_eq!(code, ErrorCode::NotAuthorized);
            assert!(message.contains("no client certificate"), "{message}");
        }
        other => panic!("a certificate-less client was answered: {other:?}"),
    }
    assert!(
        logged(&receiver, "may only pair"),
        "{}",
        receiver.log_text()
    );
    assert_eq!(datasets(&dst), before, "nothing happened");
}

/// A protocol-speaking client with nas1's valid certificate, to send what zrep-send never would.
async fn hostile_nas1(port: u16) -> ClientConn {
    let certs = certs_dir();
    client_session(
        &certs.join("ca.pem"),
        &certs.join("nas1.pem"),
        &certs.join("nas1.key"),
        "backup1",
        port,
    )
    .await
}

#[tokio::test]
async fn peer_cannot_name_anything_outside_its_root() {
    let dst = TestPool::create("cfdst");
    zfs(&["create", dst.dataset("backup").as_str()]);
    zfs(&["create", dst.dataset("backup/nas2").as_str()]);
    zfs(&["create", dst.dataset("backup/nas2/victim").as_str()]);
    let root = dst.dataset("backup/nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);

    for bad in [
        "../nas2/victim",
        "..",
        "x/../../nas2",
        "/backup/nas2",
        "a@b",
        "a#b",
        "a%b",
        "",
        "a//b",
        "a\nb",
        "a\u{0}b",
        "a/./b",
        "a/ä",
    ] {
        let mut conn = hostile_nas1(receiver.port).await;
        conn.session.request_state(bad).unwrap();
        match conn.next_event().await.unwrap() {
            SenderEvent::PeerError { code, message } => {
                assert_eq!(code, ErrorCode::NotAuthorized, "{bad:?}");
                assert!(message.contains("refused"), "{bad:?}: {message}");
            }
            other => panic!("{bad:?} was answered: {other:?}"),
        }
    }

    // An offer naming a bad snapshot or escaping target is refused, not received.
    let mut conn = hostile_nas1(receiver.port).await;
    for (target, snapshot) in [("ok", "x@y"), ("ok", "a/b"), ("../nas2/victim", "s")] {
        conn.session
            .offer_transfer(TransferOffer {
                target: target.into(),
                snapshot: snapshot.into(),
                guid: 1,
                kind: StreamKind::Full,
                compression: zrep_proto::Compression::Zstd,
                raw: false,
                size_estimate: None,
            })
            .unwrap();
        match conn.next_event().await.unwrap() {
            SenderEvent::Refused { code, .. } => assert_eq!(code, RefusalCode::InvalidName),
            other => panic!("offer {target:?}@{snapshot:?} was not refused: {other:?}"),
        }
    }
    // Nothing was created anywhere, inside the root or out of it.
    let names = datasets(&dst);
    assert_eq!(
        names,
        [
            dst.name().to_owned(),
            format!("{}/backup", dst.name()),
            format!("{}/backup/nas2", dst.name()),
            format!("{}/backup/nas2/victim", dst.name()),
        ]
    );
    assert!(!exists(&root));
}
