//! `zrep-send run`: the daemon against a live zrep-recv while a writer changes files; SIGTERM in
//! the middle of a transfer (it commits within `shutdown-grace`, or is aborted when the grace is
//! shorter); `once` stopped mid-transfer; the per-dataset lock shared with `once`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zrep_e2e::{Daemon, DatasetSpec, Receiver, SenderConfig, ThrottlingProxy, snapshots};
use zrep_zfs::testbed::{TestPool, mountpoint_of, pseudo_random_bytes, write_file};

const INTERVAL: u64 = 2;
/// Cycles the daemon must complete while the writer runs.
const CYCLES: usize = 6;
/// `shutdown-grace` of the daemons that let a transfer finish: far longer than any transfer here.
const GRACE: Duration = Duration::from_secs(60);
/// Beyond the grace, what a stop may take: ending `zfs send`, the session's `Bye` (10 s of an
/// idle native machine, stretched under emulation).
fn stop_margin() -> Duration {
    scaled(10)
}

/// The same configuration sent to `port`, with top-level `shutdown-grace = <grace>`.
fn with_grace(config: &SenderConfig, port: u16, grace: Duration) -> SenderConfig {
    let config = config.with_port(port);
    let text = std::fs::read_to_string(&config.path).unwrap();
    let rest: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("shutdown-grace = "))
        .collect();
    std::fs::write(
        &config.path,
        format!(
            "shutdown-grace = \"{}s\"\n{}\n",
            grace.as_secs(),
            rest.join("\n")
        ),
    )
    .unwrap();
    config
}

/// Sessions the receiver ended cleanly (after the sender's `Bye`), and with an error.
fn sessions_ended(receiver: &Receiver) -> (usize, usize) {
    let log = receiver.log_text();
    let failed = count(&log, "session ended with an error");
    (count(&log, "session ended") - failed, failed)
}

/// A bound of `secs` on an idle native machine, stretched under emulation.
fn scaled(secs: u64) -> Duration {
    Duration::from_secs(secs * zrep_e2e::time_scale())
}

/// Waits until the receiver logs the start of one more transfer than `before`.
fn wait_for_transfer(receiver: &Receiver, before: usize, log: impl Fn() -> String) {
    let deadline = Instant::now() + scaled(20);
    while count(&receiver.log_text(), "receiving peer=") == before {
        assert!(Instant::now() < deadline, "no transfer started: {}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_file(config: &SenderConfig, source: &zrep_zfs::DatasetName) -> std::path::PathBuf {
    config
        .dir()
        .join(format!("{}.json", source.as_str().replace('/', "%")))
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Lines of successful cycles.
fn successes(text: &str) -> usize {
    count(text, " replicated to ") - count(text, " NOT replicated to ")
}

#[test]
fn run_replicates_every_interval_while_written_and_survives_sigterm_mid_transfer() {
    let src = TestPool::create("dmsrc");
    let dst = TestPool::create("dmdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let target = dst.dataset("nas1/data");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let mut spec = DatasetSpec::new(&source);
    spec.extra = format!("interval = \"{INTERVAL}s\"\n");
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    let config = with_grace(&config, receiver.port, GRACE);

    // A writer changes files all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dir = mountpoint_of(&source);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let data = pseudo_random_bytes(i, 20_000);
                std::fs::write(dir.join(format!("w{}", i % 16)), data).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };

    // The reference for every bound below: what one cycle takes on this machine right now.
    let timed = Instant::now();
    config.once().expect_code(0);
    let reference = timed.elapsed();
    let first = snapshots(&target).len();

    let mut daemon = Daemon::start(&config);
    let state = state_file(&config, &source);
    // A cycle starts at most an interval after the last one ended; one may take several times
    // the reference when the machine's load changes under it.
    let per_cycle = Duration::from_secs(INTERVAL) + reference * 4;
    let deadline = Instant::now() + per_cycle * (CYCLES as u32 + 2);
    let mut max_lag = 0u64;
    let mut samples = 0;
    while successes(&daemon.output()) < CYCLES {
        assert!(
            Instant::now() < deadline,
            "{} of {CYCLES} cycles within {:?} (a cycle took {reference:?} alone):\n{}",
            successes(&daemon.output()),
            per_cycle * (CYCLES as u32 + 2),
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
        let Ok(text) = std::fs::read_to_string(&state) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(taken) = json["last-snapshot-time"].as_u64() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            max_lag = max_lag.max(now.saturating_sub(taken));
            samples += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    // Until the stop, every cycle committed.
    let during = daemon.output();
    assert_eq!(count(&during, "NOT replicated"), 0, "{during}");
    // The stop may land between cycles or in one (then that cycle commits first); exit 0
    // either way, and nothing is aborted.
    assert_eq!(
        daemon.terminate(GRACE + stop_margin()),
        Some(0),
        "{}",
        daemon.log()
    );
    let out = daemon.output();
    assert_eq!(count(&out, "NOT replicated"), 0, "{out}");
    let cycles = successes(&out);
    assert!(cycles >= CYCLES, "{out}");
    // Every cycle committed its own snapshot on the target (the receiver keeps all).
    let on_target = snapshots(&target);
    assert_eq!(
        on_target.len(),
        first + cycles,
        "{on_target:?} on the target after the reference and {cycles} cycles:\n{out}"
    );
    assert!(samples >= CYCLES, "{samples} state samples");
    // The state lags by the interval and at most two cycles (the one that took the snapshot
    // and the next, still running), plus a second of rounding.
    let lag_bound = INTERVAL + (2.0 * per_cycle.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        max_lag <= lag_bound,
        "lag reached {max_lag} s; bound {lag_bound} s ({INTERVAL} s interval, a cycle took {reference:?})"
    );
    let scale = zrep_e2e::time_scale();
    // The last committed snapshot is on both sides with one GUID.
    let last_line = out
        .lines()
        .rfind(|l| l.contains(" replicated to ") && !l.contains("NOT"))
        .unwrap();
    let last = last_line
        .split('@')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let guid_on = |snaps: Vec<(String, u64)>| snaps.into_iter().find(|(n, _)| n == last);
    assert!(
        guid_on(snapshots(&target)).is_some(),
        "{last} missing on the target"
    );
    assert_eq!(guid_on(snapshots(&target)), guid_on(snapshots(&source)));

    if scale > 1 {
        // The relay below still delivers what it buffered after the sender stops; under
        // emulation that is often the whole stream, so "mid-transfer" cannot be staged reliably.
        // The stop itself is dialect-independent and runs natively on zfs-fuse; resuming a cut
        // stream on OpenZFS is `openzfs::cut_transfer_resumes_where_it_stopped`.
        eprintln!(
            "not applicable under emulation (time scale {scale}): SIGTERM mid-transfer; \
             checked natively"
        );
        return;
    }
    // SIGTERM in the middle of a transfer, 6 MB through a 1 MB/s link: it commits within the
    // grace, and the session ends with Bye.
    let proxy = ThrottlingProxy::start(receiver.port, 1 << 20);
    let big = |seed: u64| {
        write_file(
            &source,
            &format!("big{seed}"),
            &pseudo_random_bytes(seed, 6 << 20),
        );
        // zfs-fuse takes written data through FUSE: make sure all of it is in the next snapshot.
        assert!(
            std::process::Command::new("sync")
                .status()
                .unwrap()
                .success()
        );
    };
    big(99);
    let slow = with_grace(&config, proxy.port, GRACE);
    let before = snapshots(&target);
    let receiving = count(&receiver.log_text(), "receiving peer=");
    let (clean, failed) = sessions_ended(&receiver);
    let mut daemon = Daemon::start(&slow);
    wait_for_transfer(&receiver, receiving, || daemon.log());
    assert_eq!(
        daemon.terminate(GRACE + stop_margin()),
        Some(0),
        "{}",
        daemon.log()
    );
    let out = daemon.output();
    let log = daemon.log();
    assert!(
        log.contains("stop requested: letting the transfer in flight finish"),
        "{log}"
    );
    assert_eq!(successes(&out), 1, "{out}\n{log}");
    assert_eq!(count(&out, "NOT replicated"), 0, "{out}");
    // The stopped cycle's snapshot is on the target with the source's GUID.
    let on_source = snapshots(&source);
    let committed = snapshots(&target);
    assert_eq!(committed.len(), before.len() + 1, "{committed:?}");
    assert_eq!(committed.last(), on_source.last());
    let deadline = Instant::now() + scaled(10);
    while sessions_ended(&receiver).0 == clean {
        assert!(Instant::now() < deadline, "{}", receiver.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sessions_ended(&receiver).1,
        failed,
        "{}",
        receiver.log_text()
    );

    // A grace shorter than the transfer: aborted when it passes.
    big(100);
    let short = Duration::from_secs(1);
    let slow = with_grace(&config, proxy.port, short);
    let before = snapshots(&target);
    let receiving = count(&receiver.log_text(), "receiving peer=");
    let ended = sessions_ended(&receiver);
    let mut daemon = Daemon::start(&slow);
    wait_for_transfer(&receiver, receiving, || daemon.log());
    let stopped = Instant::now();
    assert_eq!(
        daemon.terminate(short + stop_margin()),
        Some(0),
        "{}",
        daemon.log()
    );
    assert!(stopped.elapsed() >= short, "{:?}", stopped.elapsed());
    let out = daemon.output();
    assert_eq!(
        count(&out, "NOT replicated to 127.0.0.1:"),
        1,
        "{out}\n{}",
        daemon.log()
    );
    assert!(
        out.contains("aborted by shutdown: shutdown-grace 1s passed"),
        "{out}"
    );
    assert_eq!(successes(&out), 0, "{out}");
    assert!(
        daemon.log().contains("stopping: transfer aborted"),
        "{}",
        daemon.log()
    );
    // Wait for the receiver to wind the cut session down (the relay still delivers what the
    // sender wrote before it stopped).
    let deadline = Instant::now() + scaled(30);
    while sessions_ended(&receiver) == ended {
        assert!(Instant::now() < deadline, "{}", receiver.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing half-received: either the target is as it was, or the aborted cycle's stream had
    // been written whole before the stop and arrived complete, with the source's GUID (the next
    // start then finds it by GUID and goes on from it).
    let after_abort = snapshots(&target);
    if after_abort != before {
        assert_eq!(after_abort.len(), before.len() + 1, "{after_abort:?}");
        assert_eq!(after_abort[..before.len()], before[..]);
        let arrived = after_abort.last().unwrap();
        assert!(
            snapshots(&source).contains(arrived),
            "{arrived:?} is not the source's"
        );
    }

    // The next start succeeds with no repair.
    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + scaled(30);
    while successes(&daemon.output()) == 0 {
        assert!(
            Instant::now() < deadline,
            "no cycle after the restart:\n{}\n{}",
            daemon.output(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(daemon.terminate(GRACE + stop_margin()), Some(0));
    let out = daemon.output();
    // Until the receiver has wound down the cut session (the throttling relay still delivers
    // what it had buffered), it answers `busy`; the daemon retries at the next interval.
    // Nothing else may fail: the stop lets a cycle in flight commit.
    assert_eq!(count(&out, "aborted by shutdown"), 0, "{out}");
    assert_eq!(
        count(&out, "NOT replicated"),
        count(&out, "(busy): another transfer to data is running"),
        "{out}\n{}",
        receiver.log_text()
    );
    let after = snapshots(&target);
    let on_source = snapshots(&source);
    assert_eq!(after.last(), on_source.last(), "{out}");
    assert!(after.len() > before.len());
}

#[test]
fn once_stopped_mid_transfer_says_what_it_was_doing_and_exits_4() {
    let src = TestPool::create("osstsrc");
    let dst = TestPool::create("osstdst");
    let source = src.create_dataset("data");
    let other = src.create_dataset("other");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    write_file(&source, "big", &pseudo_random_bytes(7, 6 << 20));
    assert!(
        std::process::Command::new("sync")
            .status()
            .unwrap()
            .success()
    );
    let proxy = ThrottlingProxy::start(receiver.port, 1 << 20);
    let config = SenderConfig::new(
        receiver.port,
        "nas1",
        &[DatasetSpec::new(&source), DatasetSpec::new(&other)],
    );
    let short = Duration::from_secs(1);
    let config = with_grace(&config, proxy.port, short);
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    let mut once = std::process::Command::new(zrep_e2e::binary("zrep-send"))
        .args(["once", "--config"])
        .arg(&config.path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_transfer(&receiver, 0, || {
        std::fs::read_to_string(&stdout).unwrap_or_default()
    });
    let stopped = Instant::now();
    let pid = once.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = stopped + short + stop_margin();
    let status = loop {
        if let Some(status) = once.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = once.kill();
            panic!("once did not stop within {:?}", short + stop_margin());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert_eq!(status.code(), Some(4), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("{source} NOT replicated to 127.0.0.1:"))
            && lines[0].ends_with(": aborted by shutdown: shutdown-grace 1s passed"),
        "{out}"
    );
    let head = format!("stopped by SIGTERM while replicating {source}@zrep_");
    assert!(lines[1].starts_with(&head), "{out}");
    assert!(
        lines[1].ends_with(" stream bytes sent): aborted, shutdown-grace 1s passed"),
        "{out}"
    );
    // The other dataset was not started.
    assert!(snapshots(&other).is_empty());
}

#[test]
fn once_refuses_a_dataset_whose_lock_is_held() {
    let src = TestPool::create("lksrc");
    let dst = TestPool::create("lkdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let mut path = state_file(&config, &source).into_os_string();
    path.push(".lock");
    let lock = std::fs::File::create(&path).unwrap();
    lock.lock().unwrap();
    let refused = config.once();
    refused.expect_code(1);
    assert!(
        refused.stdout.contains("another zrep-send"),
        "{}",
        refused.stdout
    );
    assert!(
        snapshots(&source).is_empty(),
        "nothing done under a held lock"
    );
    drop(lock);
    config.once().expect_code(0);
}

/// `GET /metrics` from 127.0.0.1:`port`: the body.
pub(crate) fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap().to_owned()
}

/// The port a process logged as `<what> listening addr=127.0.0.1:PORT`.
pub(crate) fn logged_port(log: impl Fn() -> String, what: &str) -> u16 {
    let deadline = Instant::now() + scaled(20);
    loop {
        let text = log();
        if let Some(rest) = text.split(&format!("{what} listening addr=")).nth(1) {
            let addr = rest.split_whitespace().next().unwrap();
            return addr.rsplit(':').next().unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "never logged its port: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_serves_prometheus_metrics() {
    let src = TestPool::create("mtsrc");
    let dst = TestPool::create("mtdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let text = std::fs::read_to_string(&config.path).unwrap();
    std::fs::write(
        &config.path,
        format!("metrics-listen = \"127.0.0.1:0\"\n{text}"),
    )
    .unwrap();
    write_file(&source, "f", &[1u8; 50_000]);
    let mut daemon = Daemon::start(&config);
    let port = logged_port(|| daemon.log(), "metrics");
    let deadline = Instant::now() + scaled(20);
    while successes(&daemon.output()) == 0 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = scrape(port);
    let labels = format!("{{dataset=\"{source}\",target=\"data\"}}");
    assert!(
        body.contains("# TYPE zrep_send_lag_seconds gauge"),
        "{body}"
    );
    assert!(
        body.contains(&format!("zrep_send_health{labels} 0\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!("zrep_send_last_attempt_failed{labels} 0\n")),
        "{body}"
    );
    let bytes: f64 = body
        .lines()
        .find(|l| l.starts_with(&format!("zrep_send_last_stream_bytes{labels}")))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 50_000.0, "{body}");
    assert_eq!(daemon.terminate(scaled(10)), Some(0));
}

#[test]
fn run_keeps_one_session_and_reconnects_after_the_receiver_goes_away() {
    let src = TestPool::create("rcnsrc");
    let dst = TestPool::create("rcndst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let proxy = zrep_e2e::SwitchProxy::start(receiver.port);
    let mut spec = DatasetSpec::new(&source);
    spec.extra = "interval = \"1s\"\n".into();
    let config = SenderConfig::new(proxy.port, "nas1", &[spec]);
    write_file(&source, "f", b"x");
    let mut daemon = Daemon::start(&config);
    // Limits in seconds of an idle native machine, stretched under emulation.
    let scale = zrep_e2e::time_scale();
    let wait_for = |what: &dyn Fn(&str) -> bool, limit: u64| {
        let deadline = Instant::now() + Duration::from_secs(limit * scale);
        while !what(&daemon.output()) {
            assert!(
                Instant::now() < deadline,
                "{}\n{}",
                daemon.output(),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&|out| successes(out) >= 3, 20);
    // Several cycles, one session.
    assert_eq!(count(&receiver.log_text(), "peer connected"), 1);

    // The receiver goes away: cycles fail, the daemon backs off and keeps trying.
    proxy.switch(0);
    drop(receiver);
    let before = successes(&daemon.output());
    // It keeps trying: two failed attempts in a row, and no cycle succeeded meanwhile.
    let deadline = Instant::now() + scaled(30);
    while count(&daemon.log(), "cannot reach the receiver") < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(successes(&daemon.output()), before);

    // Another receiver (same pool) behind the same address: the daemon reconnects by itself.
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    proxy.switch(receiver.port);
    wait_for(&|out| successes(out) > before, 30);
    // SIGTERM lets a cycle in flight commit within shutdown-grace (20 s by default).
    assert_eq!(
        daemon.terminate(Duration::from_secs(30 * scale)),
        Some(0),
        "{}",
        daemon.log()
    );
    // The last committed snapshot is on both sides with one GUID (a cycle cut by the stop
    // may have left a newer one on the source only).
    let out = daemon.output();
    let last_line = out
        .lines()
        .rfind(|l| l.contains(" replicated to ") && !l.contains("NOT"))
        .unwrap();
    let last = last_line
        .split('@')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let find = |snaps: Vec<(String, u64)>| snaps.into_iter().find(|(n, _)| n == last);
    assert!(
        find(snapshots(&dst.dataset("nas1/data"))).is_some(),
        "{out}"
    );
    assert_eq!(
        find(snapshots(&dst.dataset("nas1/data"))),
        find(snapshots(&source))
    );
}
