//! `zrep-send status`: state files written by `once`, the table, `--json`, and `--check` exit
//! codes against `max-lag`.

use std::time::Duration;

use zrep_e2e::{DatasetSpec, Receiver, SenderConfig, snapshots};
use zrep_zfs::testbed::{TestPool, write_file};

fn json(config: &SenderConfig) -> serde_json::Value {
    let out = config.run("status", &["--json"]);
    out.expect_code(0);
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn status_json_check_codes_and_recorded_failures() {
    let src = TestPool::create("stsrc");
    let dst = TestPool::create("stdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let mut spec = DatasetSpec::new(&source);
    // Thresholds in seconds, stretched under emulation where one cycle takes seconds.
    let scale = zrep_e2e::time_scale();
    let (warn_after, crit_after) = (3 * scale, 6 * scale);
    spec.extra = format!("max-lag = {{ warn = \"{warn_after}s\", crit = \"{crit_after}s\" }}\n");
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);

    // Never replicated: critical.
    let check = config.run("status", &["--check"]);
    check.expect_code(2);
    assert!(check.stdout.starts_with("CRIT"), "{}", check.stdout);
    assert!(
        check.stdout.contains("never replicated"),
        "{}",
        check.stdout
    );

    write_file(&source, "f", &[7u8; 100_000]);
    config.once().expect_code(0);
    let (name, guid) = snapshots(&source).last().unwrap().clone();
    config.run("status", &["--check"]).expect_code(0);
    let state = json(&config);
    let entry = &state[0];
    assert_eq!(entry["source"], source.as_str());
    assert_eq!(entry["health"], "ok");
    assert_eq!(entry["state"]["last-snapshot"], name.as_str());
    // GUIDs pass 2^53: JSON carries them as decimal strings, exact in any reader.
    assert_eq!(entry["state"]["last-guid"], guid.to_string());
    assert!(entry["state"]["bytes"].as_u64().unwrap() > 100_000);
    assert!(entry["lag-secs"].as_u64().unwrap() < warn_after);
    assert!(entry["state"]["last-error"].is_null());
    // Besides send.toml only the state file (written by rename) and the dataset's lock file.
    let files: Vec<_> = std::fs::read_dir(config.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let state_name = format!("{}.json", source.as_str().replace('/', "%"));
    let mut expected = vec![
        "send.toml".to_owned(),
        format!("{state_name}.lock"),
        state_name,
    ];
    let mut files = files;
    files.sort();
    expected.sort();
    assert_eq!(files, expected, "no temporary file left behind");
    let table = config.run("status", &[]);
    table.expect_code(0);
    assert!(table.stdout.contains(&name), "{}", table.stdout);
    assert!(table.stdout.starts_with("DATASET"), "{}", table.stdout);

    // The receiver goes away: the failure is recorded, the last success stays.
    drop(receiver);
    config.once().expect_code(1);
    let entry = &json(&config)[0];
    assert!(!entry["state"]["last-error"].is_null(), "{entry}");
    assert_eq!(entry["state"]["last-snapshot"], name.as_str());
    assert!(config.run("status", &["--check"]).code.unwrap() >= 1);

    std::thread::sleep(Duration::from_millis(3500 * scale));
    let lag = json(&config)[0]["lag-secs"].as_u64().unwrap();
    if lag <= crit_after {
        let warn = config.run("status", &["--check"]);
        warn.expect_code(1);
        assert!(warn.stdout.starts_with("WARN"), "{}", warn.stdout);
    }
    std::thread::sleep(Duration::from_millis(3500 * scale));
    let crit = config.run("status", &["--check"]);
    crit.expect_code(2);
    assert!(
        crit.stdout.contains(&format!("above {crit_after}s")),
        "{}",
        crit.stdout
    );
}

#[test]
fn status_check_without_a_usable_config_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("send.toml");
    std::fs::write(&path, "receiver = 1\n").unwrap();
    let out = std::process::Command::new(zrep_e2e::binary("zrep-send"))
        .args(["status", "--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn receiver_serves_prometheus_metrics_per_peer_and_target() {
    let src = TestPool::create("rmsrc");
    let dst = TestPool::create("rmdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start_full(
        "metrics-listen = \"127.0.0.1:0\"",
        &[("nas1", &root, "keep = { last = 0 }")],
        &[],
    );
    let port = crate::daemon::logged_port(|| receiver.log_text(), "metrics");
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    write_file(&source, "f", &[3u8; 30_000]);
    config.once().expect_code(0);
    config.once().expect_code(0);
    let body = crate::daemon::scrape(port);
    let labels = "{peer=\"nas1\",target=\"data\"}";
    assert!(
        body.contains("# TYPE zrep_recv_commits_total counter"),
        "{body}"
    );
    assert!(
        body.contains(&format!("zrep_recv_commits_total{labels} 2\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!("zrep_recv_pruned_total{labels} 1\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!("zrep_recv_failures_total{labels} 0\n")),
        "{body}"
    );
    assert!(
        body.contains("zrep_recv_last_commit_timestamp_seconds{"),
        "{body}"
    );

    // zrep-recv status: per peer and target.
    let out = std::process::Command::new(zrep_e2e::binary("zrep-recv"))
        .args(["status", "--json", "--config"])
        .arg(receiver.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = &json[0];
    assert_eq!(entry["peer"], "nas1");
    assert_eq!(entry["target"], "data");
    assert_eq!(
        entry["snapshots"], 1,
        "keep = {{ last = 0 }} left the newest"
    );
    let newest = snapshots(&source).last().unwrap().clone();
    assert_eq!(entry["newest"], newest.0.as_str());
    assert_eq!(entry["newest-guid"], newest.1.to_string());
    assert_eq!(entry["keep"], "last 0");
    assert!(entry["age-secs"].as_u64().unwrap() < 60);
    let table = std::process::Command::new(zrep_e2e::binary("zrep-recv"))
        .args(["status", "--config"])
        .arg(receiver.config_path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("PEER"), "{table}");
    assert!(table.contains(&newest.0), "{table}");
}

#[test]
fn once_shows_progress_on_a_terminal_and_log_lines_otherwise() {
    let src = TestPool::create("pgsrc");
    let dst = TestPool::create("pgdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    write_file(
        &source,
        "f",
        &zrep_zfs::testbed::pseudo_random_bytes(4, 3 << 20),
    );
    // Not a terminal: no redrawn bar, a plain log line per stream.
    let plain = config.once();
    plain.expect_code(0);
    assert!(!plain.stderr.contains('\r'), "{}", plain.stderr);
    assert!(
        plain.stderr.contains("transfer progress="),
        "{}",
        plain.stderr
    );
    assert!(plain.stderr.contains("awaiting commit"), "{}", plain.stderr);

    // On a terminal (script(1) gives it one): the line is redrawn in place on stderr.
    write_file(
        &source,
        "g",
        &zrep_zfs::testbed::pseudo_random_bytes(5, 3 << 20),
    );
    let command = format!(
        "RUST_LOG=warn {} once --config '{}'",
        zrep_e2e::binary("zrep-send").display(),
        config.path.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\r\x1b[2K"), "{text:?}");
    // A rate, in whatever unit this machine's speed gives (B/s on a crawling one).
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(
        words.windows(2).any(|w| w[0].parse::<f64>().is_ok()
            && ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"].contains(&w[1])),
        "{text:?}"
    );
    assert!(text.contains(" replicated to "), "{text:?}");
}
