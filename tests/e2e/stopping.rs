//! Stopping zrep-recv while a transfer runs: SIGTERM lets the transfer finish within
//! `shutdown-grace` and then exits; past the grace period the transfer is cut and undone.

use std::process::Command;
use std::time::{Duration, Instant};

use zrep_e2e::{
    DatasetSpec, Receiver, RunResult, SenderConfig, ThrottlingProxy, exists, snapshots, time_scale,
};
use zrep_zfs::testbed::{TestPool, pseudo_random_bytes, write_file};

/// Stream data of the slow transfer, and the link it crosses: about 6 s on the wire.
const DATA: usize = 6 << 20;
const LINK: u64 = 1 << 20;

fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |status| {
        status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// Puts top-level `lines` at the start of the sender's send.toml (before its tables).
fn prepend(config: &SenderConfig, lines: &str) {
    let path = config.dir().join("send.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{lines}\n{text}")).unwrap();
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts `once` through a slow link, sends SIGTERM to the receiver as soon as it is receiving,
/// and returns what `once` said, how long the receiver took to exit after it, and the
/// receiver's log.
fn stop_mid_transfer(top: &str) -> (RunResult, TestPool, TestPool, Receiver) {
    let src = TestPool::create("stsrc");
    let dst = TestPool::create("stdst");
    let source = src.create_dataset("data");
    write_file(&source, "big", &pseudo_random_bytes(41, DATA));
    assert!(Command::new("sync").status().unwrap().success());
    let receiver = Receiver::start_full(top, &[("nas1", &dst.dataset("nas1"), "")], &[]);
    let proxy = ThrottlingProxy::start(receiver.port, LINK);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)])
        .with_port(proxy.port);
    let pid = receiver.pid();
    let result = std::thread::scope(|scope| {
        let once = scope.spawn(|| config.once());
        // The stream is under way once the receiver logs it; the link keeps it going for
        // seconds after that.
        let limit = Duration::from_secs(60 * time_scale());
        let start = Instant::now();
        while !receiver.log_text().contains("receiving peer=") {
            if once.is_finished() {
                let early = once.join().unwrap();
                panic!(
                    "once ended ({:?}) before the transfer started: {}\n{}\nreceiver: {}",
                    early.code,
                    early.stdout,
                    early.stderr,
                    receiver.log_text()
                );
            }
            assert!(
                start.elapsed() < limit,
                "no transfer started: {}",
                receiver.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sigterm(pid);
        once.join().unwrap()
    });
    (result, src, dst, receiver)
}

fn wait_exit(receiver: &Receiver, limit: Duration) -> Duration {
    let start = Instant::now();
    while !exited(receiver.pid()) {
        assert!(
            start.elapsed() < limit,
            "receiver still running {:?} after the transfer ended: {}",
            start.elapsed(),
            receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Within the grace period the running transfer is committed, the sender gets its answer,
/// and only then does the receiver end the session and exit.
#[test]
fn sigterm_lets_the_running_transfer_finish_then_exits() {
    let (once, src, dst, receiver) = stop_mid_transfer("shutdown-grace = \"10m\"");
    assert_eq!(
        once.code,
        Some(0),
        "once: {}\nreceiver: {}",
        once.stderr,
        receiver.log_text()
    );
    let source = snapshots(&src.dataset("data"));
    let target = snapshots(&dst.dataset("nas1/data"));
    assert_eq!(
        target.last(),
        source.last(),
        "committed snapshot differs (source {source:?}, target {target:?})"
    );
    // The receiver ends right after that answer: its idle session is told at once.
    let took = wait_exit(&receiver, Duration::from_secs(30 * time_scale()));
    let log = receiver.log_text();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("cutting them"),
        "the transfer was cut although it finished within the grace period: {log}"
    );
    println!("transfer finished under SIGTERM; receiver exited {took:?} after once");
}

/// Past the grace period the transfer is cut: the sender is told why, nothing of it stays on
/// the target, and the receiver exits.
#[test]
fn past_the_grace_period_the_transfer_is_cut_and_undone() {
    let (once, _src, dst, receiver) = stop_mid_transfer("shutdown-grace = \"1s\"");
    assert_ne!(once.code, Some(0), "once succeeded: {}", once.stdout);
    assert!(
        once.stdout.contains(
            "the receiver ended the session (shutting-down): zrep-recv is shutting down and its grace period is over; the transfer was cut"
        ),
        "once did not say why ({:?}): {}\n{}\nreceiver: {}",
        once.code,
        once.stdout,
        once.stderr,
        receiver.log_text()
    );
    wait_exit(&receiver, Duration::from_secs(60 * time_scale()));
    let log = receiver.log_text();
    assert!(
        log.contains("transfers still running after the grace period: cutting them"),
        "{log}"
    );
    assert!(
        !exists(&dst.dataset("nas1/data")),
        "the cut full transfer left {} behind",
        dst.dataset("nas1/data")
    );
}

/// The liveness settings do what README says: a `zrep-send run` that announced
/// `heartbeat-interval = "500ms"` and then falls silent (stopped with SIGSTOP between cycles)
/// is dropped after the receiver's `idle-timeout`, not after a built-in limit (it used to be
/// three fixed 10 s heartbeats, 30 s).
#[test]
fn a_silent_sender_is_dropped_after_the_configured_idle_timeout() {
    let idle = Duration::from_secs(2 * time_scale());
    let src = TestPool::create("stisrc");
    let dst = TestPool::create("stidst");
    let source = src.create_dataset("data");
    write_file(&source, "f", b"small");
    let receiver = Receiver::start_full(
        &format!("idle-timeout = \"{}ms\"", idle.as_millis()),
        &[("nas1", &dst.dataset("nas1"), "")],
        &[],
    );
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let heartbeat = idle / 4;
    prepend(
        &config,
        &format!(
            "heartbeat-interval = \"{}ms\"\ninterval = \"1h\"",
            heartbeat.as_millis()
        ),
    );
    let daemon = zrep_e2e::Daemon::start(&config);
    // The first cycle commits; the session then stays open, kept alive by heartbeats.
    let limit = Duration::from_secs(60 * time_scale());
    let start = Instant::now();
    while !exists(&dst.dataset("nas1/data")) || snapshots(&dst.dataset("nas1/data")).is_empty() {
        assert!(start.elapsed() < limit, "no first cycle: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Three of its heartbeats' worth of quiet that the receiver tolerates.
    std::thread::sleep(heartbeat * 3);
    assert!(
        !receiver.log_text().contains("peer silent for"),
        "a sender with heartbeats was dropped: {}",
        receiver.log_text()
    );
    let pid = daemon.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let silent = Instant::now();
    while !receiver.log_text().contains("peer silent for") {
        assert!(
            silent.elapsed() < idle * 10,
            "still connected {:?} after the sender stopped: {}",
            silent.elapsed(),
            receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped = silent.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(
        dropped + heartbeat >= idle,
        "dropped after {dropped:?}, before the configured {idle:?}"
    );
    println!(
        "silent sender dropped after {dropped:?} (idle-timeout {idle:?}, heartbeat {heartbeat:?})"
    );
}
