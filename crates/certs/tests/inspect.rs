//! `zrep-certs inspect` run as a process on the committed example certificates. The fingerprint
//! is computed here from the PEM file independently of zrep-tls, so the test still holds after
//! `scripts/gen-certs-example` makes a new set (new keys, same names).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../certs-example")
        .join(name)
}

fn inspect(file: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zrep-certs"))
        .arg("inspect")
        .arg(file)
        .output()
        .unwrap()
}

/// SHA-256 over the DER of each certificate in a PEM file, as 64 lowercase hex digits.
fn sha256_hex(file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read(file).unwrap();
    pem::parse_many(text)
        .unwrap()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, p.contents());
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect()
}

/// The value after `key:` on the line that starts with it.
fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
}

const CA_NAME: &str = "CN=zrep EXAMPLE CA backup1 (not for production)";

#[test]
fn inspect_prints_the_example_ca() {
    let ca = example("ca.pem");
    let out = inspect(&ca);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(&stdout, "subject"), CA_NAME);
    assert_eq!(field(&stdout, "issuer"), CA_NAME);
    assert_eq!(field(&stdout, "CA"), "true");
    assert_eq!(field(&stdout, "sha256"), sha256_hex(&ca)[0]);
    assert_eq!(
        stdout.lines().count(),
        6,
        "one certificate, six lines:\n{stdout}"
    );
}

#[test]
fn inspect_prints_a_peer_issued_by_the_ca() {
    let nas1 = example("nas1.pem");
    let out = inspect(&nas1);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert_eq!(field(&stdout, "subject"), "CN=nas1");
    assert_eq!(field(&stdout, "issuer"), CA_NAME);
    assert_eq!(field(&stdout, "CA"), "false");
    assert_eq!(field(&stdout, "sha256"), sha256_hex(&nas1)[0]);
}

#[test]
fn inspect_of_a_key_file_fails_with_one_line() {
    let key = example("ca.key");
    let out = inspect(&key);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.starts_with("zrep-certs: "), "{stderr}");
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
