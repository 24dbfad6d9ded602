//! Operations: completions and man pages generated from the clap definitions, and the systemd
//! units in dist/systemd naming commands that exist.

use std::path::Path;
use std::process::Command;

use zrep_e2e::binary;

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
