//! `zrep-recv check` (and the start of `serve`, and `pair`) against broken files and overlapping
//! roots, with real processes on copies of certs-example/ in a temporary directory. No ZFS:
//! every refusal happens before anything touches a pool.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zrep_e2e::{RunResult, binary, certs_dir};

/// Exit status of zrep-recv for a configuration it cannot use.
const EXIT_CONFIG: i32 = 2;
/// Exit status of zrep-recv for a command that failed.
const EXIT_FAILED: i32 = 1;

/// A receiver directory: the example server certificate, key, CA and CA key (mode 0600, so no
/// permission warnings), a recv.toml with relative paths and a static peer nas1.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for file in ["backup1.pem", "backup1.key", "ca.pem", "ca.key"] {
            let to = dir.path().join(file);
            std::fs::copy(certs_dir().join(file), &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let fixture = Fixture { dir };
        fixture.write_config("");
        fixture
    }

    /// Writes recv.toml with `extra` appended.
    fn write_config(&self, extra: &str) {
        let text = format!(
            r#"listen = "127.0.0.1:7711"
cert = "backup1.pem"
key = "backup1.key"
ca = "ca.pem"
ca-key = "ca.key"
{extra}
[[peer]]
name = "nas1"
root = "backup/nas1"
keep = {{ last = 5, grid = "1d:30" }}
"#
        );
        std::fs::write(self.path("recv.toml"), text).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path as zrep-recv names it in messages.
    fn shown(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn recv(&self, args: &[&str]) -> RunResult {
        RunResult::from(
            Command::new(binary("zrep-recv"))
                .args(args)
                .arg("--config")
                .arg(self.path("recv.toml"))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    }

    /// `zrep-recv serve`, which must end by itself; killed (and the test failed) otherwise.
    fn serve(&self) -> RunResult {
        let mut child = Command::new(binary("zrep-recv"))
            .args(["serve", "--config"])
            .arg(self.path("recv.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30 * zrep_e2e::time_scale());
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("serve did not refuse to start: {out:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        RunResult::from(child.wait_with_output().unwrap())
    }

    /// Registers `name` with `root` in peers.toml, as an admin does: `zrep-recv issue`.
    fn issue(&self, name: &str, root: &str) {
        let out = self.path(&format!("issued-{name}"));
        self.recv(&[
            "issue",
            "--name",
            name,
            "--root",
            root,
            "--out",
            out.to_str().unwrap(),
        ])
        .expect_code(0);
    }
}

/// The lines zrep-recv printed as its own messages (not log lines).
fn messages(out: &RunResult) -> Vec<String> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("zrep-recv: "))
        .map(str::to_owned)
        .collect()
}

/// `check` refuses with exactly `want` (and prints nothing on stdout); `serve` refuses the same.
fn refused(fixture: &Fixture, want: &[String]) {
    let out = fixture.recv(&["check"]);
    out.expect_code(EXIT_CONFIG);
    assert_eq!(messages(&out), want, "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout, "");
    for line in want {
        for cause in ["(os error 2)", "(os error 21)"] {
            assert!(line.matches(cause).count() <= 1, "cause twice: {line}");
        }
    }
    let served = fixture.serve();
    served.expect_code(EXIT_CONFIG);
    assert_eq!(messages(&served), want, "serve stderr:\n{}", served.stderr);
}

#[test]
fn check_refuses_each_broken_file_and_serve_refuses_the_same() {
    let point_cert = "point `cert` in recv.toml at this receiver's certificate (PEM)";
    let point_key = "point `key` in recv.toml at the private key of that certificate (PEM)";

    // Missing server certificate.
    let f = Fixture::new();
    std::fs::remove_file(f.path("backup1.pem")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: cert = {}: cannot read it: No such file or directory (os error 2); {point_cert}",
            f.shown("backup1.pem")
        )],
    );

    // Garbage in place of the server certificate.
    let f = Fixture::new();
    std::fs::write(f.path("backup1.pem"), "not a certificate\n").unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: cert = {}: no PEM certificate in it; {point_cert}",
            f.shown("backup1.pem")
        )],
    );

    // Missing key.
    let f = Fixture::new();
    std::fs::remove_file(f.path("backup1.key")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: key = {}: cannot read it: No such file or directory (os error 2); {point_key}",
            f.shown("backup1.key")
        )],
    );

    // Unreadable key (root reads mode 000 files; a directory nobody can read as a file).
    let f = Fixture::new();
    std::fs::remove_file(f.path("backup1.key")).unwrap();
    std::fs::create_dir(f.path("backup1.key")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: key = {}: cannot read it: Is a directory (os error 21); {point_key}",
            f.shown("backup1.key")
        )],
    );

    // Garbage key.
    let f = Fixture::new();
    std::fs::write(f.path("backup1.key"), "-----BEGIN NOTHING-----\n").unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: key = {}: malformed PEM (no line \"-----END NOTHING-----\"); {point_key}",
            f.shown("backup1.key")
        )],
    );
    std::fs::write(f.path("backup1.key"), "no key here\n").unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: key = {}: no PEM private key (PKCS#8, SEC1 or PKCS#1) in it; {point_key}",
            f.shown("backup1.key")
        )],
    );

    // A key that is not the certificate's (a peer's key).
    let f = Fixture::new();
    std::fs::copy(certs_dir().join("nas1.key"), f.path("backup1.key")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: key = {} is not the key of cert = {}; point `key` at the private key that certificate was issued for (or issue a new certificate for this key)",
            f.shown("backup1.key"),
            f.shown("backup1.pem")
        )],
    );

    // Missing CA certificate.
    let f = Fixture::new();
    std::fs::remove_file(f.path("ca.pem")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: ca = {}: cannot read it: No such file or directory (os error 2); point `ca` in recv.toml at this receiver's CA certificate (PEM, ca.pem of `zrep-recv init`)",
            f.shown("ca.pem")
        )],
    );

    // A CA key that is not the CA's.
    let f = Fixture::new();
    std::fs::copy(certs_dir().join("other-ca.key"), f.path("ca.key")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: ca-key = {} is not the key of ca = {}; point `ca-key` at the key of this CA (ca.key next to ca.pem of `zrep-recv init`)",
            f.shown("ca.key"),
            f.shown("ca.pem")
        )],
    );

    // A server certificate another CA issued (the CA and its key are consistent).
    let f = Fixture::new();
    std::fs::copy(certs_dir().join("other-ca.pem"), f.path("ca.pem")).unwrap();
    std::fs::copy(certs_dir().join("other-ca.key"), f.path("ca.key")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: cert = {} does not verify against ca = {}: this CA did not issue it; senders would refuse it: issue it from this CA (`zrep-recv init` does) or point `ca` at its issuer",
            f.shown("backup1.pem"),
            f.shown("ca.pem")
        )],
    );

    // Several broken files: one line each.
    let f = Fixture::new();
    std::fs::remove_file(f.path("backup1.pem")).unwrap();
    std::fs::remove_file(f.path("ca.key")).unwrap();
    let out = f.recv(&["check"]);
    out.expect_code(EXIT_CONFIG);
    assert_eq!(messages(&out).len(), 2, "{}", out.stderr);
}

#[test]
fn check_refuses_a_broken_registry_or_state_dir() {
    let repair = "repair the file by hand or restore it from a backup (zrep-recv writes it; `zrep-recv peers` reads it)";
    // Garbage peers.toml.
    let f = Fixture::new();
    std::fs::write(f.path("peers.toml"), "[[peer]]\nname = nas2\n").unwrap();
    let out = f.recv(&["check"]);
    out.expect_code(EXIT_CONFIG);
    let lines = messages(&out);
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    let prefix = format!("zrep-recv: {}: line 2, column 8: ", f.shown("peers.toml"));
    assert!(
        lines[0].starts_with(&prefix) && lines[0].ends_with(repair),
        "{lines:?}"
    );
    let served = f.serve();
    served.expect_code(EXIT_CONFIG);
    assert_eq!(messages(&served), lines);

    // Well-formed TOML, not a registry.
    std::fs::write(
        f.path("peers.toml"),
        "[[peer]]\nname = \"nas2\"\nroot = \"x/../y\"\n",
    )
    .unwrap();
    let out = f.recv(&["check"]);
    out.expect_code(EXIT_CONFIG);
    let lines = messages(&out);
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with(&format!(
            "zrep-recv: {}: root of peer nas2: ",
            f.shown("peers.toml")
        )) && lines[0].ends_with(repair),
        "{lines:?}"
    );

    // Unreadable peers.toml.
    let f = Fixture::new();
    std::fs::create_dir(f.path("peers.toml")).unwrap();
    refused(
        &f,
        &[format!(
            "zrep-recv: {}: Is a directory (os error 21); make it readable for the user zrep-recv runs as (zrep-recv writes it with mode 0600)",
            f.shown("peers.toml")
        )],
    );

    // Missing state directory.
    let f = Fixture::new();
    f.write_config("state-dir = \"state\"");
    refused(
        &f,
        &[format!(
            "zrep-recv: state-dir = {}: No such file or directory (os error 2); create it or point `state-dir` in recv.toml at the directory that holds peers.toml",
            f.shown("state")
        )],
    );
    // Present, it is fine without a peers.toml.
    std::fs::create_dir(f.path("state")).unwrap();
    f.recv(&["check"]).expect_code(0);
}

#[test]
fn static_and_registered_roots_may_not_overlap() {
    // A registered peer, then a static peer added by hand below, above and at its root.
    let f = Fixture::new();
    f.issue("nas2", "backup/peers/nas2");
    for (static_root, relation, registered_root) in [
        ("backup/peers/nas2/x", "inside it", "backup/peers/nas2"),
        ("backup/peers", "contains it", "backup/peers/nas2"),
        ("backup/peers/nas2", "the same", "backup/peers/nas2"),
    ] {
        f.write_config(&format!(
            "[[peer]]\nname = \"nas3\"\nroot = \"{static_root}\"\n"
        ));
        refused(
            &f,
            &[format!(
                "zrep-recv: root {static_root} of static peer nas3 in recv.toml overlaps root {registered_root} of registered peer nas2 in peers.toml ({relation}); each peer needs its own subtree: give [[peer]] nas3 in recv.toml another root, or `zrep-recv revoke nas2`"
            )],
        );
    }
    // Revoked, nas2 no longer holds its root.
    f.recv(&["revoke", "nas2"]).expect_code(0);
    f.recv(&["check"]).expect_code(0);

    // The reverse order: pairing and issuing refuse a root that overlaps a static peer.
    let f = Fixture::new();
    for root in ["backup/nas1/x", "backup/nas1"] {
        let relation = if root == "backup/nas1" {
            "the same"
        } else {
            "inside it"
        };
        let want = format!(
            "zrep-recv: root {root} of new peer nas2 overlaps root backup/nas1 of static peer nas1 in recv.toml ({relation}); each peer needs its own subtree: choose another --root for nas2"
        );
        let out = f.recv(&["pair", "--name", "nas2", "--root", root]);
        out.expect_code(EXIT_FAILED);
        assert_eq!(
            messages(&out),
            std::slice::from_ref(&want),
            "{}",
            out.stderr
        );
        let out = f.recv(&[
            "issue",
            "--name",
            "nas2",
            "--root",
            root,
            "--out",
            f.path("out").to_str().unwrap(),
        ]);
        out.expect_code(EXIT_FAILED);
        assert_eq!(messages(&out), [want], "{}", out.stderr);
    }
    // Nothing was registered by the refused commands.
    let peers = f.recv(&["peers"]);
    peers.expect_code(0);
    assert!(!peers.stdout.contains("nas2"), "{}", peers.stdout);
    // A pending pairing holds its root too: a static peer added over it is refused.
    f.recv(&["pair", "--name", "nas4", "--root", "backup/nas4"])
        .expect_code(0);
    f.write_config("[[peer]]\nname = \"nas5\"\nroot = \"backup/nas4/y\"\n");
    refused(
        &f,
        &["zrep-recv: root backup/nas4/y of static peer nas5 in recv.toml overlaps root backup/nas4 of pending pairing for nas4 in peers.toml (inside it); each peer needs its own subtree: give [[peer]] nas5 in recv.toml another root, or `zrep-recv pair --name nas4` again with another --root".to_owned()],
    );
}

#[test]
fn check_lists_what_a_good_configuration_holds() {
    let f = Fixture::new();
    f.write_config(
        "metrics-listen = \"127.0.0.1:9712\"\n[keep]\nnas2 = { last = 7 }\nnas9 = { last = 2 }\n",
    );
    f.issue("nas2", "backup/nas2");
    f.recv(&["pair", "--name", "nas3", "--root", "backup/nas3"])
        .expect_code(0);
    let out = f.recv(&["check"]);
    out.expect_code(0);
    assert_eq!(messages(&out), Vec::<String>::new(), "{}", out.stderr);
    let ca = zrep_tls::load_certs(&f.path("ca.pem")).unwrap();
    let fingerprint = zrep_tls::Fingerprint::of_cert(&ca[0]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let want = [
        "listen 127.0.0.1:7711".to_owned(),
        "metrics-listen 127.0.0.1:9712".to_owned(),
        format!(
            "cert {}: backup1, localhost, 127.0.0.1, ::1; issued by the CA, valid now",
            f.shown("backup1.pem")
        ),
        format!("key {}: the certificate's key", f.shown("backup1.key")),
        format!("ca {}: SHA-256 {fingerprint}", f.shown("ca.pem")),
        format!(
            "ca-key {}: the CA's key; pairing, issue and renewal on",
            f.shown("ca.key")
        ),
        format!(
            "state-dir {}: {}: peers 1, pairings 1",
            f.dir.path().display(),
            f.shown("peers.toml")
        ),
        "peer nas1 (static) root backup/nas1 keep last 5, grid 1d:30".to_owned(),
        "peer nas2 (registered) root backup/nas2 keep last 7".to_owned(),
    ];
    assert_eq!(lines[..want.len()], want, "{}", out.stdout);
    let rest = &lines[want.len()..];
    assert_eq!(rest.len(), 2, "{}", out.stdout);
    assert!(
        rest[0].starts_with("pairing nas3 (pending until ")
            && rest[0].ends_with(") root backup/nas3"),
        "{}",
        out.stdout
    );
    assert_eq!(rest[1], "keep last 2 for nas9, not a peer yet");
}
