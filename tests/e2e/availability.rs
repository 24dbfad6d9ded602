//! Availability: connections that have not authenticated (idle TCP, TLS without a client
//! certificate, TLS with a valid certificate that never says hello) cannot keep an honest peer
//! out, and are closed after handshake-timeout whatever they send.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use zrep_e2e::{DatasetSpec, Receiver, SenderConfig, binary, certs_dir, snapshots, time_scale};
use zrep_tls::{Connector, rustls};
use zrep_zfs::DatasetName;
use zrep_zfs::testbed::{TestPool, pseudo_random_bytes, write_file};

/// How long a flood connection waits after the receiver closed it before it opens a new one.
const RENEW: Duration = Duration::from_millis(500);
/// The flood's source addresses (all loopback on Linux); the honest sender comes from 127.0.0.1.
const FLOOD_SOURCES: u8 = 20;
/// Flood connections per source address, 10 more than the receiver's per-address limit.
const PER_SOURCE: usize = 60;
/// The receiver's limits in this test: every flood address gets its 50, the total is full.
const MAX_UNAUTHENTICATED: u64 = 1000;
const MAX_PER_IP: u64 = 50;
/// Refusals the receiver logs one by one per 10 s window before it summarises.
const LINES_PER_WINDOW: usize = 10;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// TCP only, never a byte.
    Tcp,
    /// TLS without a client certificate (as for pairing), then silence.
    TlsAnonymous,
    /// TLS with nas1's valid certificate, then silence (no hello).
    TlsNas1,
}

/// Client TLS configurations of the flood.
#[derive(Clone)]
struct Connectors {
    anonymous: Connector,
    nas1: Connector,
}

impl Connectors {
    fn new() -> Self {
        let certs = certs_dir();
        let mut roots = rustls::RootCertStore::empty();
        for cert in zrep_tls::load_certs(&certs.join("ca.pem")).unwrap() {
            roots.add(cert).unwrap();
        }
        let anonymous = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let nas1 = zrep_tls::client_config_from_files(
            &certs.join("ca.pem"),
            &certs.join("nas1.pem"),
            &certs.join("nas1.key"),
        )
        .unwrap();
        Self {
            anonymous: Connector::new(Arc::new(anonymous)),
            nas1: Connector::new(nas1),
        }
    }
}

/// What the flood saw.
#[derive(Default)]
struct FloodStats {
    /// Flood slots that connected at least once.
    started: AtomicU64,
    /// TCP connections made.
    connects: AtomicU64,
    /// Connections open right now (connected, not yet closed by the receiver).
    open: AtomicU64,
    /// Most connections open at once.
    peak_open: AtomicU64,
    /// TLS handshakes that completed.
    tls_done: AtomicU64,
    /// Connections past their TLS handshake (if any), waiting in silence right now.
    holding: AtomicU64,
}

/// Decrements `open` when a connection ends.
struct Open<'a>(&'a FloodStats);

impl<'a> Open<'a> {
    fn new(stats: &'a FloodStats) -> Self {
        let now = stats.open.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak_open.fetch_max(now, Ordering::SeqCst);
        stats.connects.fetch_add(1, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Flood connections in their own runtime (one worker thread), renewed when the receiver
/// closes them, until dropped.
struct Flood {
    runtime: Option<tokio::runtime::Runtime>,
    stats: Arc<FloodStats>,
    slots: u64,
}

impl Flood {
    fn start(port: u16) -> Flood {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stats = Arc::new(FloodStats::default());
        let connectors = Connectors::new();
        let mut slots = 0;
        for source in 2..2 + FLOOD_SOURCES {
            let source = Ipv4Addr::new(127, 0, 0, source);
            for i in 0..PER_SOURCE {
                // Per address: 40% idle TCP, 30% anonymous TLS, 30% TLS with a valid
                // certificate.
                let kind = match i % 10 {
                    0..=3 => Kind::Tcp,
                    4..=6 => Kind::TlsAnonymous,
                    _ => Kind::TlsNas1,
                };
                runtime.spawn(slot(kind, source, port, connectors.clone(), stats.clone()));
                slots += 1;
            }
        }
        Flood {
            runtime: Some(runtime),
            stats,
            slots,
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One flood slot: connect from `source`, do what `kind` says, hold until the receiver closes,
/// wait [`RENEW`], again.
async fn slot(
    kind: Kind,
    source: Ipv4Addr,
    port: u16,
    connectors: Connectors,
    stats: Arc<FloodStats>,
) {
    let mut first = true;
    loop {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
        if let Ok(mut tcp) = socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
        {
            let _open = Open::new(&stats);
            if first {
                stats.started.fetch_add(1, Ordering::SeqCst);
                first = false;
            }
            let connector = match kind {
                Kind::Tcp => None,
                Kind::TlsAnonymous => Some(&connectors.anonymous),
                Kind::TlsNas1 => Some(&connectors.nas1),
            };
            match connector {
                None => hold(&mut tcp, &stats).await,
                Some(connector) => {
                    if let Ok(mut tls) = connector.connect("backup1", tcp).await {
                        stats.tls_done.fetch_add(1, Ordering::SeqCst);
                        hold(&mut tls, &stats).await;
                    }
                }
            }
        }
        tokio::time::sleep(RENEW).await;
    }
}

/// [`read_until_closed`], counted in `holding` meanwhile.
async fn hold(stream: &mut (impl AsyncRead + Unpin), stats: &FloodStats) {
    stats.holding.fetch_add(1, Ordering::SeqCst);
    read_until_closed(stream).await;
    stats.holding.fetch_sub(1, Ordering::SeqCst);
}

/// Reads (and discards) until the other side closes; what arrived.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Open files the flood test needs (its sockets and the receiver's, in separate processes).
const WANT_OPEN_FILES: u64 = 4096;

/// This process's (soft, hard) open-files limits; unlimited counts as `u64::MAX`.
fn open_files_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line
        .split_whitespace()
        .skip(3)
        .map(|n| n.parse().unwrap_or(u64::MAX));
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// Whether a child process has exited (a zombie until its parent waits, or gone).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |status| {
        status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// One honest `zrep-send once`, timed from its start.
#[derive(Debug)]
struct Timing {
    /// Until the receiver logged `peer connected` (TCP, TLS, hello, authorized).
    connected: Duration,
    /// Until the receiver logged `receiving` (the replication started).
    receiving: Duration,
    /// Until it exited.
    total: Duration,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connected {:?}, receiving {:?}, done {:?}",
            self.connected, self.receiving, self.total
        )
    }
}

/// Runs `zrep-send once` and times it by the receiver's log lines.
fn timed_once(config: &SenderConfig, receiver: &Receiver) -> Timing {
    const CONNECTED: &str = "peer connected";
    const RECEIVING: &str = " receiving ";
    let log = receiver.log_text();
    let (connected_before, receiving_before) = (count(&log, CONNECTED), count(&log, RECEIVING));
    let start = Instant::now();
    let child = Command::new(binary("zrep-send"))
        .args(["once", "--config"])
        .arg(&config.path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = std::thread::spawn(move || child.wait_with_output().unwrap());
    let (mut connected, mut receiving) = (None, None);
    loop {
        let finished = output.is_finished();
        let log = receiver.log_text();
        if connected.is_none() && count(&log, CONNECTED) > connected_before {
            connected = Some(start.elapsed());
        }
        if receiving.is_none() && count(&log, RECEIVING) > receiving_before {
            receiving = Some(start.elapsed());
        }
        if finished || receiving.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = output.join().unwrap();
    let total = start.elapsed();
    let (Some(connected), Some(receiving)) = (connected, receiving) else {
        panic!(
            "the replication never started\nstdout:\n{}\nstderr:\n{}\nreceiver log (tail):\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&receiver.log_text(), 30)
        )
    };
    assert!(
        output.status.success(),
        "zrep-send once failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Timing {
        connected,
        receiving,
        total,
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Two `yes >/dev/null`, killed on drop: both cores busy.
struct BusyCores(Vec<std::process::Child>);

impl BusyCores {
    fn start() -> Self {
        Self(
            (0..2)
                .map(|_| Command::new("yes").stdout(Stdio::null()).spawn().unwrap())
                .collect(),
        )
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The target's newest snapshot is the source's newest, by name and GUID.
fn assert_replicated(source: &DatasetName, target: &DatasetName) {
    let newest = snapshots(source).last().cloned().unwrap();
    assert_eq!(snapshots(target).last(), Some(&newest), "{target}");
}

#[test]
fn flood_of_unauthenticated_connections_does_not_keep_an_honest_peer_out() {
    let scale = time_scale();
    if scale > 1 {
        // Admission does not depend on the ZFS dialect, and an emulated CPU cannot open 1,200
        // TLS connections in the flood's set-up time (449 of them in a measured run).
        println!(
            "not applicable under emulation (time scale {scale}): a flood of 1,200 TLS \
             connections; checked natively"
        );
        return;
    }
    // The flood's 1,200 sockets live in this process, the receiver (started below, inheriting
    // the limit) holds 1,000: raise the soft limit if it is the usual 1024.
    let (soft, hard) = open_files_limits();
    if soft < WANT_OPEN_FILES && hard > soft {
        let raised = format!("{}", WANT_OPEN_FILES.min(hard));
        let _ = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={raised}:"))
            .status();
    }
    let (soft, _) = open_files_limits();
    assert!(
        soft >= WANT_OPEN_FILES,
        "the flood needs {WANT_OPEN_FILES} open files; this process may have {soft} (ulimit -n {WANT_OPEN_FILES})"
    );
    let src = TestPool::create("avsrc");
    let dst = TestPool::create("avdst");
    let root = dst.dataset("nas1");
    let sources: Vec<DatasetName> = ["quiet", "quietbusy", "flood", "busy"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ds = src.create_dataset(name);
            write_file(&ds, "f", &pseudo_random_bytes(i as u64, 1 << 20));
            ds
        })
        .collect();
    // 1,000 unauthenticated connections at once, 50 per address; a handshake-timeout of a
    // minute keeps them open through the honest runs however long a loaded machine takes to
    // open them all (with the default 10 s the first would close before the last connect; the
    // other test covers the timeout).
    let receiver = Receiver::start_full(
        &format!(
            "max-unauthenticated = {MAX_UNAUTHENTICATED}\nmax-unauthenticated-per-ip = {MAX_PER_IP}\nhandshake-timeout = \"60s\""
        ),
        &[("nas1", &root, "")],
        &[("RUST_LOG", "info")],
    );
    let started = Instant::now();
    let config =
        |ds: &DatasetName| SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(ds)]);
    let rss_before = rss_kib(receiver.pid());

    // References: the same replication without the flood, on an idle and on a busy machine.
    let quiet = timed_once(&config(&sources[0]), &receiver);
    assert_replicated(&sources[0], &dst.dataset("nas1/quiet"));
    let quiet_busy = {
        let _busy = BusyCores::start();
        timed_once(&config(&sources[1]), &receiver)
    };
    assert_replicated(&sources[1], &dst.dataset("nas1/quietbusy"));

    let flood = Flood::start(receiver.port);
    let spin_up = Instant::now();
    // The receiver holds its 1,000; the other 200 are refused at once and come back. However
    // slowly a loaded machine opens them, connections keep arriving: fail when they stop.
    let (mut seen, mut moved) = ((0, 0), Instant::now());
    loop {
        let now = (
            flood.stats.started.load(Ordering::SeqCst),
            flood.stats.holding.load(Ordering::SeqCst),
        );
        if now.0 >= flood.slots && now.1 >= MAX_UNAUTHENTICATED {
            break;
        }
        if now != seen {
            (seen, moved) = (now, Instant::now());
        }
        assert!(
            moved.elapsed() < Duration::from_secs(5 * scale),
            "the flood stalled after {:?}: {} of {} slots connected, {} holding",
            spin_up.elapsed(),
            now.0,
            flood.slots,
            now.1,
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "flood: {} slots from {FLOOD_SOURCES} addresses connected in {:?}, {} connections held open in silence, {} TLS handshakes done",
        flood.slots,
        spin_up.elapsed(),
        flood.stats.holding.load(Ordering::SeqCst),
        flood.stats.tls_done.load(Ordering::SeqCst),
    );

    let open_before = flood.stats.holding.load(Ordering::SeqCst);
    let flooded = timed_once(&config(&sources[2]), &receiver);
    assert_replicated(&sources[2], &dst.dataset("nas1/flood"));
    let (busy_open, busy) = {
        let _busy = BusyCores::start();
        let open = flood.stats.holding.load(Ordering::SeqCst);
        (open, timed_once(&config(&sources[3]), &receiver))
    };
    assert_replicated(&sources[3], &dst.dataset("nas1/busy"));
    let rss_after = rss_kib(receiver.pid());
    println!("honest peer, from the start of zrep-send once:");
    println!("  no flood:                                     {quiet}");
    println!("  no flood, both cores busy:                    {quiet_busy}");
    println!("  {open_before} flood connections open:                   {flooded}");
    println!("  {busy_open} flood connections open, both cores busy:  {busy}");
    println!(
        "receiver VmRSS: {rss_before} KiB before the flood, {rss_after} KiB under it (+{} KiB)",
        rss_after.saturating_sub(rss_before)
    );
    // Within 2 s; only where the machine is so loaded that the same replication without the
    // flood already took more than 1 s to start, within twice that.
    let limit =
        |reference: &Timing| Duration::from_secs(2).max(reference.receiving * 2) * scale as u32;
    assert!(
        flooded.receiving < limit(&quiet),
        "under the flood: {flooded}"
    );
    assert!(
        busy.receiving < limit(&quiet_busy),
        "under the flood, cores busy: {busy}"
    );
    // 1,000 pending connections with their TLS and read buffers, nothing per refused one.
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // The refusals: a few lines one by one per 10 s window, then summaries.
    let deadline = Instant::now() + Duration::from_secs(15 * scale);
    while !receiver
        .log_text()
        .contains("unauthenticated connections (")
    {
        assert!(
            Instant::now() < deadline,
            "no summary: {}",
            tail(&receiver.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let connects = flood.stats.connects.load(Ordering::SeqCst);
    let peak = flood.stats.peak_open.load(Ordering::SeqCst);
    // SIGTERM with the house full: the unauthenticated connections do not hold up the exit
    // (they would for up to handshake-timeout, a minute here).
    let pid = receiver.pid();
    let holding = flood.stats.holding.load(Ordering::SeqCst);
    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    while !exited(pid) {
        assert!(
            term.elapsed() < Duration::from_secs(5 * scale),
            "still running {:?} after SIGTERM: {}",
            term.elapsed(),
            tail(&receiver.log_text(), 10)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "receiver exited {:?} after SIGTERM, with {holding} flood connections open",
        term.elapsed()
    );
    drop(flood);
    // Windows start with the receiver, a little before `started`.
    let windows = (started.elapsed() + Duration::from_secs(1)).as_secs() as usize / 10 + 1;
    let log = receiver.log_text();
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unauthenticated connections ("))
        .collect();
    let single: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("connection refused: too many")
                || l.contains("connection closed: max-unauthenticated reached")
                || l.contains("within handshake-timeout")
                || l.contains("TLS handshake timed out")
                || l.contains("TLS handshake refused")
                || l.contains("hello failed")
        })
        .collect();
    println!(
        "receiver log: {} refusal lines one by one, {} summaries, for {connects} flood connections (peak {peak} open at once):",
        single.len(),
        summaries.len()
    );
    for line in single.iter().take(12).chain(&summaries) {
        println!("  {line}");
    }
    assert!(
        single.len() <= LINES_PER_WINDOW * windows,
        "{} single lines in {windows} windows",
        single.len()
    );
    assert!(
        summaries
            .iter()
            .any(|l| l.contains("over the per-address limit")),
        "{summaries:#?}"
    );
    let summarised: u64 = summaries
        .iter()
        .filter_map(|l| {
            l.split("refused ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        summarised > 10 * single.len() as u64,
        "{summarised} refusals summarised"
    );
    assert!(!log.contains("peer refused: busy"), "{log}");
}

/// Connects; the instant is taken before, so the receiver's clock starts later, never earlier.
async fn connect(port: u16) -> (Instant, TcpStream) {
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    (start, tcp)
}

/// The frames of a byte stream from the receiver: (kind, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= zrep_proto::HEADER_LEN {
        assert_eq!(&bytes[..4], b"ZREP", "{bytes:02x?}");
        let kind = bytes[5];
        let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let end = zrep_proto::HEADER_LEN + len;
        out.push((kind, bytes[zrep_proto::HEADER_LEN..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_hello_connections_are_closed_after_handshake_timeout() {
    let dst = TestPool::create("hsdst");
    // Long enough for an emulated CPU's TLS handshakes (4 at once). The only other limit that
    // could close these connections is the idle timeout, set far above: a close before it is
    // the handshake timeout's doing, however late a loaded machine lets the receiver act.
    let seconds = 2 * time_scale();
    let handshake = Duration::from_secs(seconds);
    let idle_timeout = handshake * 15;
    let receiver = Receiver::start_full(
        &format!(
            "handshake-timeout = \"{seconds}s\"\nidle-timeout = \"{}s\"",
            idle_timeout.as_secs()
        ),
        &[("nas1", &dst.dataset("nas1"), "")],
        &[],
    );
    let port = receiver.port;
    let connectors = Connectors::new();
    let idle = tokio::spawn(async move {
        let (start, mut tcp) = connect(port).await;
        read_until_closed(&mut tcp).await;
        (start.elapsed(), Vec::<u8>::new())
    });
    let tls = |connector: Connector, heartbeats: bool| {
        tokio::spawn(async move {
            let (start, tcp) = connect(port).await;
            let mut tls = connector.connect("backup1", tcp).await.unwrap();
            if heartbeats {
                // Frames before the hello do not extend the limit.
                let heartbeat = [0x5a, 0x52, 0x45, 0x50, 1, 4, 0, 0, 0, 0, 0, 0];
                let (mut reader, mut writer) = tokio::io::split(tls);
                let beat = async {
                    loop {
                        if writer.write_all(&heartbeat).await.is_err()
                            || writer.flush().await.is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                };
                let got = tokio::select! {
                    got = read_until_closed(&mut reader) => got,
                    () = beat => read_until_closed(&mut reader).await,
                };
                return (start.elapsed(), got);
            }
            let got = read_until_closed(&mut tls).await;
            (start.elapsed(), got)
        })
    };
    let anonymous = tls(connectors.anonymous.clone(), false);
    let nas1 = tls(connectors.nas1.clone(), false);
    let nas1_beating = tls(connectors.nas1.clone(), true);

    let (elapsed, _) = idle.await.unwrap();
    println!("idle TCP closed after {elapsed:?}");
    assert!(
        elapsed >= handshake - Duration::from_millis(50) && elapsed < idle_timeout,
        "idle TCP: {elapsed:?}"
    );
    for (what, task) in [
        ("TLS without certificate", anonymous),
        ("TLS as nas1", nas1),
        ("TLS as nas1 with heartbeats", nas1_beating),
    ] {
        let (elapsed, got) = task.await.unwrap();
        println!("{what}, no hello: closed after {elapsed:?}");
        assert!(
            elapsed >= handshake - Duration::from_millis(50) && elapsed < idle_timeout,
            "{what}: {elapsed:?}"
        );
        // The receiver's hello, then ERROR `timeout` saying why.
        let frames = frames(&got);
        assert_eq!(frames.len(), 2, "{what}: {frames:?}");
        assert_eq!(frames[0].0, 1, "{what}: hello first");
        let (kind, payload) = &frames[1];
        assert_eq!(*kind, 5, "{what}: an error frame");
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        assert_eq!(code, zrep_proto::ErrorCode::Timeout.code(), "{what}");
        let message = String::from_utf8_lossy(&payload[10..]);
        assert_eq!(
            message,
            format!("no hello within {seconds}s of connecting (handshake-timeout)"),
            "{what}"
        );
    }
    let log = receiver.log_text();
    assert!(log.contains("TLS handshake timed out"), "{log}");
    assert_eq!(
        log.matches("no hello within handshake-timeout").count(),
        3,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authenticated_peer_over_max_connections_is_told_busy_at_once() {
    let src = TestPool::create("bysrc");
    let dst = TestPool::create("bydst");
    let source = src.create_dataset("data");
    write_file(&source, "f", b"payload");
    let receiver = Receiver::start_full(
        "max-connections = 1",
        &[("nas1", &dst.dataset("nas1"), "")],
        &[],
    );
    let certs = certs_dir();
    let holder = zrep_e2e::client_session(
        &certs.join("ca.pem"),
        &certs.join("nas1.pem"),
        &certs.join("nas1.key"),
        "backup1",
        receiver.port,
    )
    .await;
    // The one slot is taken: zrep-send is answered at once, not left waiting.
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let started = Instant::now();
    let refused = tokio::task::block_in_place(|| config.once());
    let elapsed = started.elapsed();
    refused.expect_code(1);
    let output = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        output.contains(
            "the receiver ended the session (busy): all 1 session slots of this receiver (max-connections) are in use; try again later"
        ),
        "{output}"
    );
    println!("refused as busy after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(10 * time_scale()),
        "{elapsed:?}"
    );
    assert!(receiver.log_text().contains("peer refused: busy"));
    // The slot is free again once the session ends.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10 * time_scale());
    let run = loop {
        let run = tokio::task::block_in_place(|| config.once());
        if run.code == Some(0) || Instant::now() > deadline {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    run.expect_code(0);
    assert_replicated(&source, &dst.dataset("nas1/data"));
}

/// SIGTERM ends held sessions at once, each told why (`shutting-down`), instead of letting them
/// go on for the shutdown grace (30 s).
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_tells_every_session_and_exits_at_once() {
    let dst = TestPool::create("sddst");
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let certs = certs_dir();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            zrep_e2e::client_session(
                &certs.join("ca.pem"),
                &certs.join("nas1.pem"),
                &certs.join("nas1.key"),
                "backup1",
                receiver.port,
            )
            .await,
        );
    }
    let pid = receiver.pid();
    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let limit = Duration::from_secs(5 * time_scale());
    for conn in &mut held {
        match tokio::time::timeout(limit, conn.next_event()).await {
            Ok(Ok(zrep_proto::SenderEvent::PeerError { code, message })) => {
                assert_eq!(code, zrep_proto::ErrorCode::ShuttingDown);
                assert_eq!(message, "zrep-recv is shutting down; try again later");
            }
            other => panic!("a held session was not told: {other:?}"),
        }
    }
    while !exited(pid) {
        assert!(
            term.elapsed() < limit,
            "still running {:?} after SIGTERM: {}",
            term.elapsed(),
            tail(&receiver.log_text(), 10)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "receiver told 2 sessions and exited {:?} after SIGTERM",
        term.elapsed()
    );
}
