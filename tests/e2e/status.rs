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
    spec.extra = "max-lag = { warn = \"3s\", crit = \"6s\" }\n".into();
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
    assert_eq!(entry["state"]["last-guid"], guid);
    assert!(entry["state"]["bytes"].as_u64().unwrap() > 100_000);
    assert!(entry["lag-secs"].as_u64().unwrap() < 3);
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

    std::thread::sleep(Duration::from_millis(3500));
    let lag = json(&config)[0]["lag-secs"].as_u64().unwrap();
    if lag <= 6 {
        let warn = config.run("status", &["--check"]);
        warn.expect_code(1);
        assert!(warn.stdout.starts_with("WARN"), "{}", warn.stdout);
    }
    std::thread::sleep(Duration::from_millis(3500));
    let crit = config.run("status", &["--check"]);
    crit.expect_code(2);
    assert!(crit.stdout.contains("above 6s"), "{}", crit.stdout);
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
