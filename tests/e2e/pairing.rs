//! Pairing with real processes: `zrep-recv init`/`pair`/`issue`/`peers`/`revoke` and
//! `zrep-send pair`/`csr`/`once`, on real pools, through a recording TCP proxy where the wire
//! matters.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zrep_e2e::{ClientConn, RunResult, binary, client_session, snapshots, wait_for_port};
use zrep_proto::{ErrorCode, SenderEvent};
use zrep_zfs::DatasetName;
use zrep_zfs::testbed::{TestPool, write_file};

/// A receiver made with `zrep-recv init` and running `zrep-recv serve`, killed on drop.
struct PairingReceiver {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    log: PathBuf,
}

impl PairingReceiver {
    /// `zrep-recv init` into a fresh directory, `extra` lines appended to recv.toml, then serve.
    fn start(extra: &str) -> PairingReceiver {
        let dir = tempfile::tempdir().unwrap();
        let init = run(Command::new(binary("zrep-recv")).args([
            "init",
            "--dir",
            dir.path().to_str().unwrap(),
            "--name",
            "backup1",
            "--san",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
        ]));
        init.expect_code(0);
        let config = dir.path().join("recv.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text = text.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nidle-timeout = \"20s\"",
        );
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("recv.log");
        let child = Command::new(binary("zrep-recv"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start zrep-recv");
        let port = wait_for_port(&log);
        PairingReceiver {
            child,
            dir,
            port,
            log,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("recv.toml")
    }

    /// Runs an administrative `zrep-recv` command against this receiver's configuration.
    fn admin(&self, args: &[&str]) -> RunResult {
        run(Command::new(binary("zrep-recv"))
            .args(args)
            .arg("--config")
            .arg(self.config()))
    }

    /// `zrep-recv pair` and the token it printed.
    fn token(&self, name: &str, root: &DatasetName, ttl: &str) -> (String, RunResult) {
        let out = self.admin(&[
            "pair",
            "--name",
            name,
            "--root",
            root.as_str(),
            "--ttl",
            ttl,
        ]);
        out.expect_code(0);
        let token = out
            .stdout
            .lines()
            .find(|l| l.starts_with("zrep1:"))
            .unwrap()
            .to_owned();
        (token, out)
    }

    fn peers(&self) -> String {
        let out = self.admin(&["peers"]);
        out.expect_code(0);
        out.stdout
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PairingReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(command: &mut Command) -> RunResult {
    RunResult::from(
        command
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .output()
            .expect("run"),
    )
}

/// `zrep-send pair`.
fn send_pair(port: u16, token: &str, dir: &Path) -> RunResult {
    run(Command::new(binary("zrep-send")).args([
        "pair",
        "--receiver",
        &format!("127.0.0.1:{port}"),
        "--token",
        token,
        "--dir",
        dir.to_str().unwrap(),
    ]))
}

/// Appends a dataset to a send.toml and runs `zrep-send once`.
fn add_dataset(send_toml: &Path, source: &DatasetName) {
    let mut text = std::fs::read_to_string(send_toml).unwrap();
    text.push_str(&format!("\n[[dataset]]\nsource = \"{source}\"\n"));
    std::fs::write(send_toml, text).unwrap();
}

fn once(send_toml: &Path) -> RunResult {
    run(Command::new(binary("zrep-send"))
        .args(["once", "--config"])
        .arg(send_toml))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A TCP proxy that records every byte in both directions.
struct RecordingProxy {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start(target: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let record = bytes.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let record = record.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        RecordingProxy { port, bytes }
    }

    fn recorded(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The forms a private key could leak in: its DER, the base64 lines of its PEM body, its DER
/// in hex.
fn key_material(key_file: &Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read_to_string(key_file).unwrap();
    let der = zrep_tls::load_private_key(key_file).unwrap();
    let der = der.secret_der().to_vec();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let mut forms = vec![der, hex.into_bytes()];
    forms.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(|l| l.as_bytes().to_vec()),
    );
    forms
}

#[test]
fn pair_with_two_commands_then_replicate_without_leaking_keys() {
    let src = TestPool::create("pasrc");
    let dst = TestPool::create("padst");
    let source = src.create_dataset("data");
    write_file(&source, "f", b"paired data");
    let receiver = PairingReceiver::start("");
    let proxy = RecordingProxy::start(receiver.port);
    let root = dst.dataset("nas1");

    let (token, pair_out) = receiver.token("nas1", &root, "15m");
    let sender_dir = tempfile::tempdir().unwrap();
    let paired = send_pair(proxy.port, &token, sender_dir.path());
    paired.expect_code(0);
    assert!(
        paired.stdout.contains("as nas1 (root "),
        "{}",
        paired.stdout
    );
    let send_toml = sender_dir.path().join("send.toml");
    // What pair wrote has no dataset yet: every job command says what to add and fails,
    // instead of succeeding at nothing (a unit that exits 0 at once is never restarted).
    let empty = format!(
        "zrep-send: {}: no [[dataset]] to replicate; add one per source, e.g. \
         [[dataset]] with source = \"tank/data\"\n",
        send_toml.display()
    );
    for command in [&["once"][..], &["run"][..], &["status"][..]] {
        let result = run(Command::new(binary("zrep-send"))
            .args(command)
            .arg("--config")
            .arg(&send_toml));
        result.expect_code(2);
        assert_eq!(result.stderr, empty, "{command:?}");
    }
    let check = run(Command::new(binary("zrep-send"))
        .args(["status", "--check", "--config"])
        .arg(&send_toml));
    check.expect_code(3);
    add_dataset(&send_toml, &source);
    let replicated = once(&send_toml);
    replicated.expect_code(0);
    assert!(
        replicated.stdout.contains("replicated to"),
        "{}",
        replicated.stdout
    );
    assert_eq!(snapshots(&dst.dataset("nas1/data")), snapshots(&source));
    let peers = receiver.peers();
    assert!(
        peers
            .lines()
            .any(|l| l.starts_with("nas1 ") && l.contains(" paired ")),
        "{peers}"
    );

    // Key files are 0600 on both sides; so is the registry.
    let recv_dir = receiver.dir.path();
    for key in [
        recv_dir.join("ca.key"),
        recv_dir.join("backup1.key"),
        sender_dir.path().join("sender.key"),
        recv_dir.join("peers.toml"),
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }

    // No private key in any log, output or byte on the wire.
    std::thread::sleep(Duration::from_millis(300));
    let mut texts: Vec<Vec<u8>> = vec![
        receiver.log_text().into_bytes(),
        proxy.recorded(),
        std::fs::read(&send_toml).unwrap(),
        std::fs::read(recv_dir.join("peers.toml")).unwrap(),
    ];
    for out in [&pair_out, &paired, &replicated] {
        texts.push(out.stdout.clone().into_bytes());
        texts.push(out.stderr.clone().into_bytes());
    }
    assert!(proxy.recorded().len() > 1000, "the proxy saw the traffic");
    for key in [
        recv_dir.join("ca.key"),
        recv_dir.join("backup1.key"),
        sender_dir.path().join("sender.key"),
    ] {
        for form in key_material(&key) {
            for (i, text) in texts.iter().enumerate() {
                assert!(
                    !contains(text, &form),
                    "material of {} found in text #{i}",
                    key.display()
                );
            }
        }
    }
    // Nor the token's secret part in the receiver's log or state.
    let secret_tail = &token[token.len() - 20..];
    assert!(!receiver.log_text().contains(secret_tail));
    assert!(
        !std::fs::read_to_string(recv_dir.join("peers.toml"))
            .unwrap()
            .contains(secret_tail)
    );
}

#[test]
fn bad_tokens_and_a_mitm_fail_clearly_and_register_nothing() {
    let dst = TestPool::create("btdst");
    let receiver = PairingReceiver::start("");
    let mitm = PairingReceiver::start("");
    let fails = |port: u16, token: &str, want: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = send_pair(port, token, dir.path());
        assert_ne!(out.code, Some(0), "{}", out.stdout);
        assert!(
            out.stderr.contains(want),
            "wanted {want:?} in:\n{}\nreceiver log:\n{}",
            out.stderr,
            receiver.log_text()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files written after a failed pairing"
        );
    };

    // A token that would expire before anyone could use it, or live for months: refused,
    // nothing registered.
    for ttl in ["0s", "500ms", "31d"] {
        let out = receiver.admin(&[
            "pair",
            "--name",
            "nas9",
            "--root",
            dst.dataset("nas9").as_str(),
            "--ttl",
            ttl,
        ]);
        out.expect_code(1);
        assert_eq!(
            out.stderr,
            "zrep-recv: --ttl must be 1s to 30d (the token is single-use; 15m is plenty)\n",
            "--ttl {ttl}"
        );
    }
    assert!(!receiver.peers().contains("nas9"), "{}", receiver.peers());

    // A good pairing, then the same token again.
    let (token, _) = receiver.token("nas1", &dst.dataset("nas1"), "15m");
    let dir = tempfile::tempdir().unwrap();
    send_pair(receiver.port, &token, dir.path()).expect_code(0);
    fails(receiver.port, &token, "already used");

    // Expired.
    let (token, _) = receiver.token("nas2", &dst.dataset("nas2"), "1s");
    std::thread::sleep(Duration::from_millis(1500));
    fails(receiver.port, &token, "expired");

    // Wrong secret (one character changed at the end of the token).
    let (token, _) = receiver.token("nas3", &dst.dataset("nas3"), "15m");
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    fails(receiver.port, &wrong, "wrong pairing token");
    // Garbage.
    fails(receiver.port, "zrep1:not-a-token", "invalid pairing token");

    // A receiver with another CA, handed nas4's token: the sender refuses it.
    let (token, _) = receiver.token("nas4", &dst.dataset("nas4"), "15m");
    fails(mitm.port, &token, "not the one the pairing token names");

    // Only nas1 is registered; nas3 and nas4 are still pending, and the MITM learnt nothing.
    let peers = receiver.peers();
    let paired: Vec<&str> = peers.lines().filter(|l| l.contains(" paired ")).collect();
    assert_eq!(paired.len(), 1, "{peers}");
    assert!(paired[0].starts_with("nas1 "), "{peers}");
    for name in ["nas3 ", "nas4 "] {
        assert!(
            peers
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" pending ")),
            "{peers}"
        );
    }
    assert!(!mitm.peers().contains("paired"));
    assert!(
        receiver.log_text().contains("pairing refused"),
        "{}",
        receiver.log_text()
    );
}

/// A session as the paired sender in `dir`, held open by the test.
async fn session_as(dir: &Path, port: u16) -> ClientConn {
    client_session(
        &dir.join("ca.pem"),
        &dir.join("sender.pem"),
        &dir.join("sender.key"),
        "127.0.0.1",
        port,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_refuses_the_next_connection_and_cuts_a_running_one() {
    let src = TestPool::create("rvsrc");
    let dst = TestPool::create("rvdst");
    let source = src.create_dataset("data");
    write_file(&source, "f", b"x");
    let receiver = PairingReceiver::start("");
    let (token, _) = receiver.token("nas1", &dst.dataset("nas1"), "15m");
    let dir = tempfile::tempdir().unwrap();
    send_pair(receiver.port, &token, dir.path()).expect_code(0);
    let send_toml = dir.path().join("send.toml");
    add_dataset(&send_toml, &source);
    once(&send_toml).expect_code(0);

    // A session of nas1 that stays open, then the revocation.
    let mut held = session_as(dir.path(), receiver.port).await;
    receiver.admin(&["revoke", "nas1"]).expect_code(0);
    let cut = tokio::time::timeout(Duration::from_secs(10), held.next_event())
        .await
        .expect("the running session was not cut");
    match cut {
        Ok(SenderEvent::PeerError { code, message }) => {
            assert_eq!(code, ErrorCode::NotAuthorized);
            assert!(message.contains("revoked"), "{message}");
        }
        Ok(other) => panic!("session went on: {other:?}"),
        Err(_closed) => {}
    }
    assert!(
        receiver.log_text().contains("authorization withdrawn"),
        "{}",
        receiver.log_text()
    );

    // The next connection is refused, with the reason.
    write_file(&source, "g", b"y");
    let refused = once(&send_toml);
    refused.expect_code(1);
    assert!(refused.stdout.contains("revoked"), "{}", refused.stdout);
    assert!(receiver.peers().contains(" revoked "));
}

#[test]
fn certificate_renewal_near_expiry_keeping_or_rotating_the_key() {
    let src = TestPool::create("rnsrc");
    let dst = TestPool::create("rndst");
    let source = src.create_dataset("data");
    write_file(&source, "f", b"x");
    // 2 minutes plus 10 minutes of backdating: always in the last third.
    let receiver = PairingReceiver::start("peer-cert-ttl = \"2m\"\n");
    let (token, _) = receiver.token("nas1", &dst.dataset("nas1"), "15m");
    let dir = tempfile::tempdir().unwrap();
    send_pair(receiver.port, &token, dir.path()).expect_code(0);
    let send_toml = dir.path().join("send.toml");
    add_dataset(&send_toml, &source);
    let cert = dir.path().join("sender.pem");
    let key = dir.path().join("sender.key");
    let (cert0, key0) = (
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    );

    let first = once(&send_toml);
    first.expect_code(0);
    assert!(
        first.stdout.contains("certificate renewed by"),
        "{}\n{}",
        first.stdout,
        first.stderr
    );
    let cert1 = std::fs::read_to_string(&cert).unwrap();
    assert_ne!(cert1, cert0);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key0, "key kept");
    let peers = receiver.peers();
    let line = peers.lines().find(|l| l.starts_with("nas1 ")).unwrap();
    assert_eq!(line.matches(" expires ").count(), 2, "{peers}");

    // Rotating the key; the renewed certificate works for the next session.
    let text = std::fs::read_to_string(&send_toml)
        .unwrap()
        .replace("# rotate-key = false", "rotate-key = true");
    std::fs::write(&send_toml, text).unwrap();
    let second = once(&send_toml);
    second.expect_code(0);
    assert!(
        second.stdout.contains("renewed with a new key"),
        "{}",
        second.stdout
    );
    assert_ne!(std::fs::read_to_string(&key).unwrap(), key0, "key rotated");
    assert_eq!(mode(&key), 0o600);
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), cert1);
    write_file(&source, "g", b"y");
    let third = once(&send_toml);
    third.expect_code(0);
    assert!(third.stdout.contains("replicated to"), "{}", third.stdout);
}

#[test]
fn offline_issue_with_a_key_or_for_a_csr() {
    let src = TestPool::create("issrc");
    let dst = TestPool::create("isdst");
    let a = src.create_dataset("a");
    let b = src.create_dataset("b");
    write_file(&a, "f", b"a");
    write_file(&b, "f", b"b");
    let receiver = PairingReceiver::start("");
    let address = format!("127.0.0.1:{}", receiver.port);

    // Key made on the receiver, files carried over.
    let out1 = tempfile::tempdir().unwrap();
    receiver
        .admin(&[
            "issue",
            "--name",
            "nas1",
            "--root",
            dst.dataset("nas1").as_str(),
            "--out",
            out1.path().to_str().unwrap(),
            "--receiver",
            &address,
        ])
        .expect_code(0);
    assert_eq!(mode(&out1.path().join("nas1.key")), 0o600);
    add_dataset(&out1.path().join("send.toml"), &a);
    once(&out1.path().join("send.toml")).expect_code(0);

    // Key made on the sender; only the CSR and the certificate travel.
    let out2 = tempfile::tempdir().unwrap();
    run(Command::new(binary("zrep-send")).args([
        "csr",
        "--name",
        "nas2",
        "--dir",
        out2.path().to_str().unwrap(),
    ]))
    .expect_code(0);
    receiver
        .admin(&[
            "issue",
            "--name",
            "nas2",
            "--root",
            dst.dataset("nas2").as_str(),
            "--csr",
            out2.path().join("sender.csr").to_str().unwrap(),
            "--out",
            out2.path().to_str().unwrap(),
            "--receiver",
            &address,
        ])
        .expect_code(0);
    add_dataset(&out2.path().join("send.toml"), &b);
    once(&out2.path().join("send.toml")).expect_code(0);
    assert_eq!(snapshots(&dst.dataset("nas2/b")), snapshots(&b));

    // A third peer may not take a root inside another's.
    let clash = receiver.admin(&[
        "pair",
        "--name",
        "nas3",
        "--root",
        dst.dataset("nas1/x").as_str(),
    ]);
    clash.expect_code(1);
    assert!(clash.stderr.contains("overlaps"), "{}", clash.stderr);
}
