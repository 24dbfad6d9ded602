//! Operations: completions and man pages generated from the clap definitions, the systemd
//! units in dist/systemd naming commands that exist, and errors printed with each cause once.

use std::path::Path;
use std::process::Command;

use zrep_e2e::{DatasetSpec, Receiver, SenderConfig, binary, time_scale};
use zrep_zfs::DatasetName;
use zrep_zfs::testbed::{TestPool, pseudo_random_bytes, write_file};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(binary(program)).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    for (program, subcommands) in [
        ("zrep-send", &["once", "run", "status", "pair"][..]),
        ("zrep-recv", &["serve", "check", "peers", "revoke"][..]),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let script = run(program, &["completions", shell]);
            for sub in subcommands {
                assert!(script.contains(sub), "{program} {shell} lacks {sub}");
            }
        }
        let man = run(program, &["man"]);
        assert!(man.contains(&format!(".TH {program} 1")), "{man}");
        for sub in subcommands {
            assert!(man.contains(sub), "{program} man page lacks {sub}");
        }
    }
}

#[test]
fn systemd_units_run_existing_commands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    let staged = tempfile::tempdir().unwrap();
    for unit in ["zrep-send.service", "zrep-recv.service"] {
        let text = std::fs::read_to_string(dir.join(unit)).unwrap();
        let mut commands = 0;
        for line in text.lines() {
            let Some(command) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecStartPre="))
            else {
                continue;
            };
            let words: Vec<&str> = command.split_whitespace().collect();
            let program = words[0].strip_prefix("/usr/local/bin/").unwrap();
            // The subcommand and its flags exist: `--help` of it succeeds and names them.
            let help = run(program, &[words[1], "--help"]);
            assert!(help.contains("--config"), "{help}");
            commands += 1;
        }
        assert!(commands >= 1, "{unit} has no ExecStart");
        assert!(text.contains("KillSignal=SIGTERM"), "{unit}");
        let local = text.replace(
            "/usr/local/bin/",
            &format!("{}/", binary("zrep-send").parent().unwrap().display()),
        );
        std::fs::write(staged.path().join(unit), local).unwrap();
    }
    // Where systemd is installed, its own checker accepts the units (the man pages they
    // document are not installed here, which it reports and we ignore).
    if let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(staged.path().join("zrep-send.service"))
        .arg(staged.path().join("zrep-recv.service"))
        .output()
    {
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            assert!(line.contains("Command 'man "), "systemd-analyze: {line}");
        }
    }
}

/// A missing file is reported on one line that says what was being done and gives the system's
/// cause once: "No such file or directory (os error 2)" twice says nothing more.
#[test]
fn a_missing_file_is_reported_with_its_cause_once() {
    let missing = tempfile::tempdir().unwrap();
    let path = missing.path().join("nothing.pem");
    let out = Command::new(binary("zrep-certs"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "zrep-certs: cannot read {}: No such file or directory (os error 2)\n",
            path.display()
        )
    );

    // zrep-send checks its certificate files (after probing ZFS) before it connects anywhere.
    let source = DatasetName::parse("nopool/data").unwrap();
    let config = SenderConfig::new(1, "no-such-identity", &[DatasetSpec::new(&source)]);
    let out = config.once();
    out.expect_code(3);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("zrep-send: "))
        .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
    assert!(
        line.starts_with("zrep-send: loading the TLS certificate, key and CA: cannot read "),
        "{line}"
    );
    assert!(line.contains("no-such-identity."), "{line}");
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
    assert_eq!(
        out.stderr.matches("os error 2").count(),
        1,
        "{}",
        out.stderr
    );
}

/// A `zfs` that cannot be started is a ZFS driver error wrapped by the program's context: the
/// line says what was being done at each level and gives the system's cause once.
#[test]
fn a_missing_zfs_is_reported_with_its_cause_once() {
    let source = DatasetName::parse("nopool/data").unwrap();
    let config = SenderConfig::new(1, "no-such-identity", &[DatasetSpec::new(&source)]);
    // No `zfs` on this PATH (the binary itself is run by its full path).
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(binary("zrep-send"))
        .args(["once", "--config"])
        .arg(config.dir().join("send.toml"))
        .env("PATH", empty.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("zrep-send: "))
        .collect();
    assert_eq!(
        lines,
        [
            "zrep-send: probing the local ZFS: cannot run zfs: No such file or directory (os error 2)"
        ],
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}

/// Log levels without `RUST_LOG` (which wins over flags): `once` logs only what went wrong
/// unless asked (`-v` info, `-vv` debug), `run` reports at info like zrep-recv.
#[test]
fn log_level_defaults_and_flags() {
    let src = TestPool::create("lvsrc");
    let dst = TestPool::create("lvdst");
    let source = src.create_dataset("data");
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let send = |args: &[&str]| {
        write_file(&source, "f", &pseudo_random_bytes(args.len() as u64, 4096));
        let out = Command::new(binary("zrep-send"))
            .args(args)
            .arg("--config")
            .arg(&config.path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let quiet = send(&["once"]);
    assert!(!quiet.contains(" INFO "), "once logged at info: {quiet}");
    let verbose = send(&["-v", "once"]);
    assert!(
        verbose.contains(" INFO ") && verbose.contains("session established"),
        "once -v: {verbose}"
    );
    assert!(!verbose.contains(" DEBUG "), "once -v: {verbose}");
    let very = send(&["once", "-vv"]);
    assert!(very.contains(" DEBUG "), "once -vv: {very}");
    // The daemon: its first cycle's lines at info, with no flag.
    let log = config.dir().join("run.log");
    let mut daemon = Command::new(binary("zrep-send"))
        .args(["run", "--config"])
        .arg(&config.path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30 * time_scale());
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" INFO ") && text.contains("session established") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "run: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(!text.contains(" DEBUG "), "run: {text}");
}

/// `--version` names the commit the programs were built from (both from one build).
#[test]
fn version_names_the_commit() {
    let send = run("zrep-send", &["--version"]);
    let recv = run("zrep-recv", &["--version"]);
    let commit = |line: &str| {
        let inner = line.trim_end().strip_suffix(')')?;
        let (_, commit) = inner.split_once(" (commit ")?;
        (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| commit.to_owned())
    };
    let sent = commit(&send).unwrap_or_else(|| panic!("zrep-send --version: {send:?}"));
    assert!(send.starts_with("zrep-send "), "{send}");
    assert_eq!(commit(&recv), Some(sent), "{recv}");
}
