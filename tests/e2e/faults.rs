//! Faults (issue 13). Two mid-stream kills with a large `-I` stream, and the fault-injection
//! suite: one trial function that replicates once, writes an increment, applies one seeded
//! fault and checks that the next cycle recovers. [`seeded_sample_of_every_fault_recovers`] runs
//! one trial of every kind in the default run; `scripts/soak` runs [`soak`] (ignored here) for
//! many randomized ones.
//!
//! zfs-fuse's `zfs send -I` holds every snapshot it sends and keeps those holds for good if it
//! is killed, so after every fault: the source has no hold but zrep's own on the base, no `zfs
//! send`/`zfs receive` of the test's pools runs or is left unreaped by a zrep process, and the
//! next `once` replicates with equal GUIDs.
//!
//! "Mid-stream" is made certain, not timed: a relay passes the first bytes of the stream and then
//! stops reading, so `zrep-send` and `zfs send` behind it block with the stream half sent; the
//! fault comes once `zfs send` and `zfs receive` are seen running and the bytes were relayed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zrep_e2e::fault::{
    Action, Direction, Fault, FaultProxy, gone_within, proc_of, processes_with, signal,
    zfs_commands,
};
use zrep_e2e::{
    DatasetSpec, Receiver, SenderConfig, binary, capabilities, certs_dir, count_lines, snapshots,
    time_scale, wait_for_port,
};
use zrep_zfs::DatasetName;
use zrep_zfs::testbed::{TestPool, pseudo_random_bytes, write_file, zfs, zfs_get};

/// zrep-send's hold tag for the example receiver `backup1`.
const TAG: &str = "zrep:backup1";

/// Stream bytes relayed before the relay stalls: past the stream's first records, so that
/// `zfs receive` runs, and far short of the stream's end.
const PASS: u64 = 2 << 20;

/// Bytes of the increment: far more than the pipe, socket and relay buffers between `zfs send`
/// and the stall hold, so `zfs send` is blocked mid-stream when the fault comes.
const INCREMENT: usize = 32 << 20;

#[test]
fn killed_zrep_send_leaves_no_hold_and_no_process() {
    let setup = Setup::new("ksend");
    let faulted = setup.stalled_once();
    let Faulted {
        mut sender,
        proxy,
        send_pid,
        receive_pid,
        ..
    } = faulted;
    kill(sender.id());
    let status = sender.wait().unwrap();
    assert_eq!(status.code(), None, "zrep-send was not killed: {status}");
    // The receiver learns of the cut through the relay, as it would on a direct connection.
    proxy.release();
    setup.wait_until_no_zfs_process();
    // The orphaned zfs send was reaped by init, if init reaps here; it must not run.
    assert_not_running(send_pid, "zfs send of the killed zrep-send");
    // zrep-recv lives and must have reaped its zfs receive.
    assert!(
        gone_within(receive_pid, setup.limit()),
        "zrep-recv left zfs receive {receive_pid} unreaped"
    );
    setup.assert_only_zrep_holds();
    setup.once_replicates();
}

#[test]
fn killed_zrep_recv_leaves_no_hold_and_no_process() {
    let mut setup = Setup::new("krecv");
    let faulted = setup.stalled_once();
    let Faulted {
        mut sender,
        sender_log,
        proxy,
        send_pid,
        receive_pid,
    } = faulted;
    kill(setup.receiver.pid());
    proxy.release();
    // zrep-send sees its connection fail and ends on its own, having ended zfs send.
    let status = wait_exit(&mut sender, setup.limit());
    let log = std::fs::read_to_string(&sender_log).unwrap_or_default();
    assert_eq!(status, Some(1), "zrep-send did not fail the cycle:\n{log}");
    setup.wait_until_no_zfs_process();
    assert!(
        gone_within(send_pid, setup.limit()),
        "zrep-send left zfs send {send_pid} unreaped:\n{log}"
    );
    assert_not_running(receive_pid, "zfs receive of the killed zrep-recv");
    setup.assert_only_zrep_holds();
    setup.receiver = receiver(&setup.root);
    setup.config = setup.config.with_port(setup.receiver.port);
    setup.once_replicates();
}

/// Two pools, a receiver, a source replicated once, and an increment of [`INCREMENT`] bytes with
/// a manual snapshot in it, ready to be sent with `-I`.
struct Setup {
    src: TestPool,
    dst: TestPool,
    source: DatasetName,
    root: DatasetName,
    target: DatasetName,
    receiver: Receiver,
    config: SenderConfig,
}

/// A `zrep-send once` blocked mid-stream behind a stalled relay.
struct Faulted {
    sender: Child,
    sender_log: PathBuf,
    proxy: FaultProxy,
    send_pid: u32,
    receive_pid: u32,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let src = TestPool::create(&format!("{tag}src"));
        let dst = TestPool::create(&format!("{tag}dst"));
        let source = src.create_dataset("vm store");
        let root = dst.dataset("nas1");
        let target = dst.dataset("nas1/vm store");
        let receiver = receiver(&root);
        let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
        write_file(&source, "small", &pseudo_random_bytes(1, 1 << 20));
        config.once().expect_code(0);
        let first_done = unix_now();
        write_file(&source, "big one", &pseudo_random_bytes(2, INCREMENT / 2));
        zfs(&["snapshot", &format!("{source}@manual in between")]);
        write_file(&source, "big two", &pseudo_random_bytes(3, INCREMENT / 2));
        wait_for_next_second(first_done);
        Setup {
            src,
            dst,
            source,
            root,
            target,
            receiver,
            config,
        }
    }

    /// The bound for anything the fault sets off: the driver's abort limit (30 s, after which it
    /// would kill), stretched under emulation.
    fn limit(&self) -> Duration {
        limit()
    }

    /// Starts `zrep-send once` through a relay that stalls after [`PASS`] bytes and waits until
    /// the stream is under way: the bytes relayed, `zfs send` and `zfs receive` running.
    fn stalled_once(&self) -> Faulted {
        let proxy = FaultProxy::start(self.receiver.port, Some(hold_after(PASS)));
        let through = self.config.with_port(proxy.port);
        let sender_log = self.config.dir().join(format!("once-{}.log", proxy.port));
        let sender = Command::new(binary("zrep-send"))
            .args(["once", "--config"])
            .arg(&through.path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&sender_log).unwrap())
            .spawn()
            .expect("start zrep-send once");
        let deadline = Instant::now() + self.limit();
        let (send_pid, receive_pid) = loop {
            let sends = zfs_commands("send", &self.source);
            let receives = zfs_commands("receive", &self.target);
            if proxy.relayed(Direction::ToReceiver) >= PASS
                && let ([send], [receive]) = (&sends[..], &receives[..])
            {
                break (send.pid, receive.pid);
            }
            assert!(
                Instant::now() < deadline,
                "the stream did not get under way: relayed {} bytes, sends {sends:?}, receives {receives:?}\n{}",
                proxy.relayed(Direction::ToReceiver),
                std::fs::read_to_string(&sender_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let held: Vec<(String, String)> = snapshots(&self.source)
            .into_iter()
            .map(|(short, _)| {
                let refs = zfs_get(&format!("{}@{short}", self.source), "userrefs");
                (short, refs)
            })
            .collect();
        eprintln!("mid-stream, zfs send {send_pid} running; userrefs {held:?}");
        Faulted {
            sender,
            sender_log,
            proxy,
            send_pid,
            receive_pid,
        }
    }

    fn wait_until_no_zfs_process(&self) {
        if let Err(left) = wait_until_no_process(&[&self.src, &self.dst]) {
            panic!("{left}");
        }
    }

    fn assert_only_zrep_holds(&self) {
        if let Err(stray) = only_zrep_holds(&self.source, &self.target) {
            panic!("{stray}");
        }
    }

    /// The next `once` succeeds and the target's newest snapshot is the source's, by GUID; then
    /// only zrep's hold on it is left. (OpenZFS first finishes the cut stream from its resume
    /// token, zfs-fuse sends it again.)
    fn once_replicates(&self) {
        let next = self.config.once();
        next.expect_code(0);
        assert!(next.stdout.contains(", -I from @"), "{}", next.stdout);
        let source_newest = snapshots(&self.source).last().unwrap().clone();
        let target_newest = snapshots(&self.target).last().unwrap().clone();
        assert_eq!(target_newest, source_newest, "{}", next.stdout);
        self.assert_only_zrep_holds();
    }
}

/// A receiver for `nas1` below `root`, whose handshake limit is stretched like the others under
/// emulation (a TLS handshake takes seconds there, and both tests run at once).
fn receiver(root: &DatasetName) -> Receiver {
    let top = format!("handshake-timeout = \"{}s\"\n", 10 * time_scale());
    Receiver::start_full(&top, &[("nas1", root, "")], &[])
}

/// The relay fault that holds a stream mid-way: a stall of the stream's direction after
/// `bytes`, ended by [`FaultProxy::release`].
fn hold_after(bytes: u64) -> Fault {
    Fault {
        direction: Direction::ToReceiver,
        action: Action::Stall,
        after: bytes,
    }
}

/// The bound for anything a fault sets off: the driver's abort limit (30 s, after which it would
/// kill), stretched under emulation.
fn limit() -> Duration {
    Duration::from_secs(60 * time_scale())
}

/// Waits (at most [`limit`]) until no process of the pools runs (by command line: the pool
/// names are unique); what is still there otherwise.
fn wait_until_no_process(pools: &[&TestPool]) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut left: Vec<_> = pools
            .iter()
            .flat_map(|p| processes_with(p.name()))
            .collect();
        left.retain(|p| p.state != 'Z');
        if left.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit() {
            return Err(format!("still running after {:?}: {left:?}", limit()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every source snapshot is free of holds but the newest one on the target, which carries
/// zrep's tag and nothing else; the target's snapshots carry none.
fn only_zrep_holds(source: &DatasetName, target: &DatasetName) -> Result<(), String> {
    let on_target = snapshots(target);
    let Some((base, _)) = on_target.last().cloned() else {
        return Err(format!("{target} has no snapshot"));
    };
    let held: Vec<(String, String)> = snapshots(source)
        .into_iter()
        .map(|(short, _)| {
            let refs = zfs_get(&format!("{source}@{short}"), "userrefs");
            (short, refs)
        })
        .collect();
    let context = || format!("source (snapshot, userrefs): {held:?}; target: {on_target:?}");
    for (short, refs) in &held {
        let snap = format!("{source}@{short}");
        if *short == base {
            if refs != "1" {
                return Err(format!(
                    "{snap}: userrefs {refs}, not zrep's hold alone; {}",
                    context()
                ));
            }
            hold_is_zreps(&snap)?;
        } else if refs != "0" {
            return Err(format!(
                "{snap} is held by something (userrefs {refs}); {}",
                context()
            ));
        }
    }
    for (short, _) in snapshots(target) {
        let snap = format!("{target}@{short}");
        let refs = zfs_get(&snap, "userrefs");
        if refs != "0" {
            return Err(format!("{snap} on the target is held (userrefs {refs})"));
        }
    }
    Ok(())
}

/// zrep's tag is on `snap`: OpenZFS lists it; zfs-fuse has no `zfs holds`, but refuses to place
/// a tag a second time.
fn hold_is_zreps(snap: &str) -> Result<(), String> {
    if capabilities().holds_scriptable {
        let out = zfs(&["holds", "-H", snap]);
        let tags: Vec<&str> = out.lines().filter_map(|l| l.split('\t').nth(1)).collect();
        return if tags == [TAG] {
            Ok(())
        } else {
            Err(format!("{snap} holds {tags:?}, not [{TAG}]"))
        };
    }
    let again = Command::new("zfs")
        .args(["hold", TAG, snap])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    if again.status.success() {
        // Undo the test's own hold before reporting.
        let _ = Command::new("zfs").args(["release", TAG, snap]).output();
        return Err(format!("{snap} did not carry {TAG}"));
    }
    if said.contains("tag already exists") {
        Ok(())
    } else {
        Err(format!("{snap}: {said}"))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Snapshot names have one-second resolution: the next cycle must name a new one.
fn wait_for_next_second(after: u64) {
    while unix_now() <= after {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32) {
    assert!(signal(pid, "KILL"), "kill -KILL {pid}");
}

/// Waits up to `limit` for `child` to exit; its exit code (`None`: killed by a signal).
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("zrep-send did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pid` has exited. Its parent died before it, so it belongs to init now, and whether it is
/// reaped is init's business (this sandbox's init does not reap orphans).
fn assert_not_running(pid: u32, what: &str) {
    if let Err(left) = not_running(pid, what) {
        panic!("{left}");
    }
}

fn not_running(pid: u32, what: &str) -> Result<(), String> {
    match proc_of(pid) {
        Some(p) if !(p.state == 'Z' && p.ppid == 1) => Err(format!("{what} still there: {p:?}")),
        _ => Ok(()),
    }
}

/// `pid` exits and is reaped within [`limit`] (its parent collects it a moment after the exit),
/// or is an orphan's zombie that init does not reap.
fn reaped(pid: u32, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + limit();
    while not_running(pid, what).is_err() {
        if Instant::now() >= deadline {
            return not_running(pid, what).map_err(|e| format!("{e} after {:?}", limit()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fault-injection suite: one trial function for the seeded sample and the soak.

/// Every fault a trial can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The relay closes both sides after N bytes towards the receiver.
    CutToReceiver,
    /// The relay closes both sides after N bytes towards the sender.
    CutToSender,
    /// The relay stops forwarding towards the receiver after N bytes, sockets open.
    StallToReceiver,
    /// The relay stops forwarding towards the sender after N bytes, sockets open.
    StallToSender,
    /// SIGKILL of `zrep-send once` mid-stream.
    KillSend,
    /// SIGKILL of `zrep-recv` mid-stream.
    KillRecv,
    /// SIGTERM of `zrep-send once` mid-stream.
    TermSend,
    /// SIGTERM of `zrep-recv` mid-stream.
    TermRecv,
    /// `zfs receive` finished, the commit answer never left, and `zrep-recv` is killed.
    LostCommitAnswer,
    /// A quota on the peer's root smaller than the increment.
    TargetFull,
    /// `zrep-send run` while its receiver is killed and restarted on the same port.
    DaemonReceiverRestart,
}

const KINDS: [Kind; 11] = [
    Kind::CutToReceiver,
    Kind::CutToSender,
    Kind::StallToReceiver,
    Kind::StallToSender,
    Kind::KillSend,
    Kind::KillRecv,
    Kind::TermSend,
    Kind::TermRecv,
    Kind::LostCommitAnswer,
    Kind::TargetFull,
    Kind::DaemonReceiverRestart,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::CutToReceiver => "cut-to-receiver",
            Kind::CutToSender => "cut-to-sender",
            Kind::StallToReceiver => "stall-to-receiver",
            Kind::StallToSender => "stall-to-sender",
            Kind::KillSend => "kill-send",
            Kind::KillRecv => "kill-recv",
            Kind::TermSend => "term-send",
            Kind::TermRecv => "term-recv",
            Kind::LostCommitAnswer => "lost-commit-answer",
            Kind::TargetFull => "target-full",
            Kind::DaemonReceiverRestart => "daemon-receiver-restart",
        }
    }

    /// The kind a soak trial of `seed` applies.
    fn of_seed(seed: u64) -> Kind {
        KINDS[(splitmix(seed ^ 0x6b69_6e64) % KINDS.len() as u64) as usize]
    }

    fn by_name(name: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.name() == name)
    }

    fn is_stall(self) -> bool {
        matches!(self, Kind::StallToReceiver | Kind::StallToSender)
    }
}

/// splitmix64: one seed in, one well-mixed number out.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The trial's random numbers, all from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Bytes of a trial's increment (two files, a manual snapshot between them): a few MiB, so a
/// trial takes seconds.
const TRIAL_INCREMENT: u64 = 6 << 20;

/// The fewest stream bytes a held relay passes: more than the first data frame (1 MiB of
/// stream, incompressible here), which the receiver must have whole before `zfs receive` starts.
const MIN_PASS: u64 = 5 << 18;

/// The liveness limits of a stall trial, on both programs: a stall ends by one of them.
fn stall_timeout() -> Duration {
    Duration::from_secs(2 * time_scale())
}

/// Connecting (TCP, TLS, hello) may take this long in a trial: TLS under emulation on a loaded
/// machine takes seconds.
fn connect_timeout() -> Duration {
    Duration::from_secs(6 * time_scale())
}

/// A trial that has not ended by then is a hang.
fn trial_bound() -> Duration {
    Duration::from_secs(240 * time_scale())
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The next cycle succeeded and every invariant held.
    Recovered,
    /// An invariant did not hold.
    Violation(String),
    /// Something did not end within its bound.
    Hang(String),
}

/// What a trial reports: one line for the table and for a replay.
#[derive(Debug)]
struct Report {
    seed: u64,
    kind: Kind,
    params: String,
    outcome: Outcome,
    secs: f64,
}

impl Report {
    fn line(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::Recovered => "recovered".to_owned(),
            Outcome::Violation(what) => format!("VIOLATION: {what}"),
            Outcome::Hang(what) => format!("HANG: {what}"),
        };
        format!(
            "trial seed={} kind={} {} outcome={outcome} secs={:.1}",
            self.seed,
            self.kind.name(),
            self.params,
            self.secs
        )
    }
}

/// A trial's failure: `Err(Hang(..))` for a bound that passed, `Err(Violation(..))` otherwise.
type Checked<T> = Result<T, Outcome>;

fn violation(what: impl Into<String>) -> Outcome {
    Outcome::Violation(what.into())
}

fn hang(what: impl Into<String>) -> Outcome {
    Outcome::Hang(what.into())
}

/// Runs one trial on its own thread, bounded by [`trial_bound`]: a trial still running then is
/// a hang (its thread is left behind; its pools go when it ends).
fn trial(seed: u64, kind: Kind) -> Report {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut params = String::new();
        let outcome = run_trial(seed, kind, &mut params);
        let _ = tx.send((params, outcome));
    });
    let (params, outcome) = match rx.recv_timeout(trial_bound()) {
        Ok((params, outcome)) => (params, outcome.err().unwrap_or(Outcome::Recovered)),
        Err(mpsc::RecvTimeoutError::Timeout) => (
            String::new(),
            hang(format!("the trial did not end within {:?}", trial_bound())),
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => (
            String::new(),
            violation("the trial panicked (see its message above)"),
        ),
    };
    let report = Report {
        seed,
        kind,
        params,
        outcome,
        secs: started.elapsed().as_secs_f64(),
    };
    println!("{}", report.line());
    report
}

/// A `zrep-recv serve` the trial starts, kills and restarts on one port.
struct Recv {
    child: Child,
    log: PathBuf,
}

impl Recv {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sessions it opened that have not ended.
    fn open_sessions(&self) -> usize {
        let log = self.log_text();
        let ended = count_lines(&log, "session ended");
        count_lines(&log, "peer connected").saturating_sub(ended)
    }

    /// Waits for its exit (bounded); its exit code.
    fn wait_exit(&mut self, within: Duration, what: &str) -> Checked<Option<i32>> {
        wait_child(&mut self.child, within, what)
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `zrep-send` process of the trial (once or run), killed on drop.
struct Send {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Send {
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Send {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `within` for `child`; a hang (after killing it) if it is still running then.
fn wait_child(child: &mut Child, within: Duration, what: &str) -> Checked<Option<i32>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok(status.code());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(hang(format!("{what} did not exit within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `done` every 20 ms for at most `within`; a hang named `what` otherwise.
fn wait_for(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Checked<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return Err(hang(format!("{what} within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One trial's world: pools, receiver, configuration.
struct World {
    dir: tempfile::TempDir,
    src: TestPool,
    dst: TestPool,
    source: DatasetName,
    root: DatasetName,
    target: DatasetName,
    /// recv.toml without its `listen` line.
    recv_rest: String,
    recv: Option<Recv>,
    port: u16,
    config: SenderConfig,
    runs: usize,
}

impl World {
    /// Pools, a receiver and a sender configuration with `recv_top`/`send_top` lines.
    fn new(tag: &str, recv_top: &str, send_top: &str) -> World {
        let mut dir = tempfile::tempdir().unwrap();
        let src = TestPool::create(&format!("{tag}s"));
        let dst = TestPool::create(&format!("{tag}d"));
        let source = src.create_dataset("vm store");
        let root = dst.dataset("nas1");
        let target = dst.dataset("nas1/vm store");
        let certs = certs_dir();
        let recv_rest = format!(
            "cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n{recv_top}\n\n[[peer]]\nname = \"nas1\"\nroot = \"{root}\"\n",
            certs.join("backup1.pem").display(),
            certs.join("backup1.key").display(),
            certs.join("ca.pem").display(),
        );
        if std::env::var_os("ZREP_FAULT_KEEP").is_some() {
            // For a replay: the programs' logs stay for a look.
            eprintln!("trial logs in {}", dir.path().display());
            dir.disable_cleanup(true);
        }
        let mut world = World {
            dir,
            src,
            dst,
            source,
            root,
            target,
            recv_rest,
            recv: None,
            port: 0,
            config: SenderConfig::new(0, "nas1", &[]),
            runs: 0,
        };
        world.start_receiver(&[]);
        let config = SenderConfig::new(world.port, "nas1", &[DatasetSpec::new(&world.source)]);
        set_top(&config, send_top);
        world.config = config;
        world
    }

    /// Starts zrep-recv (on the port of the last one, if there was one) with `env`.
    fn start_receiver(&mut self, env: &[(&str, &str)]) {
        assert!(self.recv.is_none(), "one receiver at a time");
        self.runs += 1;
        let path = self.dir.path().join(format!("recv-{}.toml", self.runs));
        let log = self.dir.path().join(format!("recv-{}.log", self.runs));
        std::fs::write(
            &path,
            format!("listen = \"127.0.0.1:{}\"\n{}", self.port, self.recv_rest),
        )
        .unwrap();
        let mut command = Command::new(binary("zrep-recv"));
        command
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().expect("start zrep-recv");
        let port = wait_for_port(&log);
        if self.port != 0 {
            assert_eq!(port, self.port, "restarted on another port");
        }
        self.port = port;
        self.recv = Some(Recv { child, log });
    }

    fn recv(&mut self) -> &mut Recv {
        self.recv.as_mut().expect("a receiver runs")
    }

    /// Starts `zrep-send <subcommand>` with `config` (the world's or one through a relay).
    fn spawn_send(&mut self, subcommand: &str, config: &SenderConfig) -> Send {
        self.runs += 1;
        let stdout = self.dir.path().join(format!("send-{}.out", self.runs));
        let stderr = self.dir.path().join(format!("send-{}.log", self.runs));
        let child = Command::new(binary("zrep-send"))
            .args([subcommand, "--config"])
            .arg(&config.path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start zrep-send");
        Send {
            child,
            stdout,
            stderr,
        }
    }

    /// `zrep-send once` with `config` to its end (bounded): exit code and output.
    fn once(&mut self, config: &SenderConfig) -> Checked<(Option<i32>, String)> {
        let mut send = self.spawn_send("once", config);
        let code = wait_child(&mut send.child, limit(), "zrep-send once")
            .map_err(|h| with_output(h, &send.output()))?;
        Ok((code, send.output()))
    }

    /// Waits until the receiver has ended every session it opened (bounded).
    fn receiver_quiet(&mut self) -> Checked<()> {
        let Some(recv) = self.recv.as_ref() else {
            return Ok(());
        };
        let result = wait_for(limit(), "the receiver did not end its sessions", || {
            recv.open_sessions() == 0
        });
        result.map_err(|h| with_output(h, &recv.log_text()))
    }

    fn no_process(&self) -> Checked<()> {
        wait_until_no_process(&[&self.src, &self.dst])
            .map(|_| ())
            .map_err(violation)
    }

    fn holds(&self) -> Checked<()> {
        only_zrep_holds(&self.source, &self.target).map_err(violation)
    }

    /// Before the next cycle: no hold but zrep's, on snapshots the target has (by GUID). Its
    /// hold need not be on the target's newest (a cycle whose commit answer was lost has not
    /// moved it), and a cycle stopped between placing the new hold and releasing the old one
    /// leaves both (the next cycle releases every older one); how many is in the parameters.
    fn no_stray_holds(&self, params: &mut String) -> Checked<()> {
        let on_target = snapshots(&self.target);
        let mut zreps = Vec::new();
        for (short, guid) in snapshots(&self.source) {
            let snap = format!("{}@{short}", self.source);
            match zfs_get(&snap, "userrefs").as_str() {
                "0" => {}
                "1" if on_target.contains(&(short.clone(), guid)) => {
                    hold_is_zreps(&snap).map_err(violation)?;
                    zreps.push(short);
                }
                refs => {
                    return Err(violation(format!(
                        "{snap} is held (userrefs {refs}); target: {on_target:?}"
                    )));
                }
            }
        }
        let _ = write!(params, "zrep-holds-before-next={} ", zreps.len());
        if zreps.is_empty() {
            Err(violation(format!(
                "zrep's hold is on no common snapshot; target: {on_target:?}"
            )))
        } else {
            Ok(())
        }
    }

    /// The increment: two files of half [`TRIAL_INCREMENT`] each, a manual snapshot between
    /// them (so the next cycle sends `-I`). (A cycle within the second of the last one numbers
    /// its snapshot past it: no wait for the clock.)
    fn write_increment(&self, seed: u64) {
        let half = (TRIAL_INCREMENT / 2) as usize;
        write_file(&self.source, "one", &pseudo_random_bytes(seed, half));
        zfs(&["snapshot", &format!("{}@manual {seed}", self.source)]);
        write_file(&self.source, "two", &pseudo_random_bytes(seed ^ 1, half));
    }

    /// The invariants after a fault, with the next cycle (a plain `once`, no fault) in between.
    fn recovers(&mut self, seed: u64, params: &mut String) -> Checked<()> {
        self.no_process()?;
        self.receiver_quiet()?;
        self.no_stray_holds(params)?;
        let config = self.config.with_port(self.port);
        let (code, out) = self.once(&config)?;
        if code != Some(0) {
            return Err(violation(format!(
                "the next cycle exited {code:?}\n{out}\nreceiver:\n{}",
                self.recv().log_text()
            )));
        }
        if !out.contains(", -I from @") {
            return Err(violation(format!(
                "the next cycle did not send an increment from the common base\n{out}"
            )));
        }
        self.no_process()?;
        self.converged()?;
        self.holds()?;
        // Nothing left that blocks the next receive: one more change goes through.
        write_file(&self.source, "after", &pseudo_random_bytes(seed ^ 2, 4096));
        let (code, out) = self.once(&config)?;
        if code != Some(0) {
            return Err(violation(format!(
                "the cycle after the next exited {code:?}\n{out}"
            )));
        }
        self.converged()?;
        self.holds()?;
        self.no_process()?;
        self.same_data()
    }

    /// The target's newest snapshot holds the source's files byte for byte (nothing was written
    /// to the source since its newest snapshot): read through a clone of it, destroyed after.
    fn same_data(&self) -> Checked<()> {
        let (newest, _) = snapshots(&self.target).last().cloned().expect("converged");
        let clone = self.dst.dataset("compare");
        {
            let _serial = mount_lock();
            zfs(&[
                "clone",
                &format!("{}@{newest}", self.target),
                clone.as_str(),
            ]);
        }
        let (ours, theirs) = (files_of(&self.source), files_of(&clone));
        // zfs-fuse answers "dataset is busy" for a moment after a mount was read; the pool
        // goes with the trial anyway, so a clone that stays is no harm.
        for _ in 0..10 {
            let _serial = mount_lock();
            let destroyed = Command::new("zfs")
                .args(["destroy", "-f", clone.as_str()])
                .output()
                .is_ok_and(|o| o.status.success());
            if destroyed {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        if ours.is_empty() || ours != theirs {
            let names = |f: &Files| {
                f.iter()
                    .map(|(n, d)| (n.clone(), d.len()))
                    .collect::<Vec<_>>()
            };
            return Err(violation(format!(
                "the target's @{newest} differs from the source: source {:?}, target {:?}",
                names(&ours),
                names(&theirs)
            )));
        }
        Ok(())
    }

    /// The newest snapshots are one on both sides (name and GUID), every snapshot both sides
    /// name has one GUID, and no partial receive is left.
    fn converged(&self) -> Checked<()> {
        let source = snapshots(&self.source);
        let target = snapshots(&self.target);
        let (Some(newest), Some(on_target)) = (source.last(), target.last()) else {
            return Err(violation(format!(
                "no snapshot: source {source:?}, target {target:?}"
            )));
        };
        if newest != on_target {
            return Err(violation(format!(
                "newest snapshots differ: source {newest:?}, target {on_target:?}"
            )));
        }
        for (name, guid) in &target {
            match source.iter().find(|(n, _)| n == name) {
                Some((_, g)) if g != guid => {
                    return Err(violation(format!(
                        "@{name}: GUID {guid} on the target, {g} on the source"
                    )));
                }
                _ => {}
            }
        }
        if capabilities().resumable_receive {
            let token = zfs_get(self.target.as_str(), "receive_resume_token");
            if token != "-" {
                return Err(violation(format!("a partial receive is left: {token}")));
            }
        }
        Ok(())
    }
}

/// A filesystem's files, by name (the trials write no directories).
type Files = std::collections::BTreeMap<String, Vec<u8>>;

fn files_of(dataset: &DatasetName) -> Files {
    let dir = zrep_zfs::testbed::mountpoint_of(dataset);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// The test bed's lock around commands that mount (zfs-fuse can deadlock on concurrent
/// mounts), the one `TestPool` takes.
fn mount_lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(zrep_zfs::testbed::testbed_dir().join("mount.lock"))
        .unwrap();
    file.lock().unwrap();
    file
}

/// `outcome` with `output` appended to its text.
fn with_output(outcome: Outcome, output: &str) -> Outcome {
    match outcome {
        Outcome::Violation(what) => Outcome::Violation(format!("{what}\n{output}")),
        Outcome::Hang(what) => Outcome::Hang(format!("{what}\n{output}")),
        Outcome::Recovered => Outcome::Recovered,
    }
}

/// Replaces or adds top-level `key = value` lines of a send.toml (before its tables).
fn set_top(config: &SenderConfig, lines: &str) {
    let text = std::fs::read_to_string(&config.path).unwrap();
    let keys: Vec<&str> = lines
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k} = "))))
        .collect();
    std::fs::write(&config.path, format!("{lines}\n{}\n", kept.join("\n"))).unwrap();
}

/// Liveness lines for both programs: `timeout` for silence and stalled writes, heartbeats a
/// quarter of it, so that a stall ends by `timeout`.
fn liveness(timeout: Duration) -> String {
    format!(
        "idle-timeout = \"{}ms\"\nwrite-timeout = \"{}ms\"\nheartbeat-interval = \"{}ms\"",
        timeout.as_millis(),
        timeout.as_millis(),
        (timeout / 4).as_millis()
    )
}

/// The trial itself; `params` collects its seeded parameters as it goes.
fn run_trial(seed: u64, kind: Kind, params: &mut String) -> Checked<()> {
    let mut rng = Rng(seed);
    let stall = stall_timeout();
    let connect = connect_timeout();
    let mut recv_top = format!("handshake-timeout = \"{}ms\"\n", connect.as_millis());
    let mut send_top = format!("connect-timeout = \"{}ms\"\n", connect.as_millis());
    if kind.is_stall() {
        recv_top.push_str(&liveness(stall));
        send_top.push_str(&liveness(stall));
    } else {
        recv_top.push_str("idle-timeout = \"20s\"");
    }
    match kind {
        Kind::TermSend => {
            let grace = rng.range(0, 2000 * time_scale());
            let _ = write!(params, "grace={grace}ms ");
            let _ = write!(send_top, "\nshutdown-grace = \"{grace}ms\"");
        }
        Kind::TermRecv => {
            let grace = rng.range(100, 2000 * time_scale());
            let _ = write!(params, "grace={grace}ms ");
            let _ = write!(recv_top, "\nshutdown-grace = \"{grace}ms\"");
        }
        Kind::DaemonReceiverRestart => send_top.push_str("interval = \"1s\"\n"),
        _ => {}
    }
    let tag = format!("f{}", seed % 100_000);
    let mut world = World::new(&tag, &recv_top, &send_top);

    // The first cycle, counted by a relay without a fault: what the receiver sends before the
    // stream (TLS, hello, state, accept) bounds the offsets towards the sender.
    write_file(&world.source, "first", &pseudo_random_bytes(seed, 1 << 20));
    let measure = FaultProxy::start(world.port, None);
    let (code, out) = world.once(&world.config.with_port(measure.port))?;
    if code != Some(0) {
        return Err(violation(format!("the first cycle exited {code:?}\n{out}")));
    }
    let opening = measure.to_sender_by(256 << 10);
    drop(measure);
    world.receiver_quiet()?;
    world.write_increment(seed);

    match kind {
        Kind::CutToReceiver | Kind::CutToSender | Kind::StallToReceiver | Kind::StallToSender => {
            let (direction, action) = match kind {
                Kind::CutToReceiver => (Direction::ToReceiver, Action::Cut),
                Kind::CutToSender => (Direction::ToSender, Action::Cut),
                Kind::StallToReceiver => (Direction::ToReceiver, Action::Stall),
                _ => (Direction::ToSender, Action::Stall),
            };
            let after = match direction {
                Direction::ToReceiver => rng.range(1, TRIAL_INCREMENT),
                Direction::ToSender => rng.range(1, opening.max(2)),
            };
            let _ = write!(params, "after={after} opening={opening} ");
            let fault = Fault {
                direction,
                action,
                after,
            };
            link_fault(&mut world, fault, params)?;
        }
        Kind::KillSend | Kind::KillRecv | Kind::TermSend | Kind::TermRecv => {
            let pass = rng.range(MIN_PASS, 3 << 20);
            let release = rng.coin();
            let _ = write!(params, "pass={pass} release={release} ");
            mid_stream(&mut world, kind, pass, release, params)?;
        }
        Kind::LostCommitAnswer => lost_commit_answer(&mut world, params)?,
        Kind::TargetFull => {
            let headroom = rng.range(64 << 10, TRIAL_INCREMENT / 2);
            let _ = write!(params, "headroom={headroom} ");
            target_full(&mut world, headroom, params)?;
        }
        Kind::DaemonReceiverRestart => {
            let midstream = rng.coin();
            let pass = rng.range(MIN_PASS, 3 << 20);
            let _ = write!(params, "mid-stream={midstream} pass={pass} ");
            daemon_restart(&mut world, midstream, pass, params)?;
        }
    }
    world.recovers(seed, params)
}

/// A cut or stall of the link by the relay; a stall must end by a configured timeout.
fn link_fault(world: &mut World, fault: Fault, params: &mut String) -> Checked<()> {
    let proxy = FaultProxy::start(world.port, Some(fault));
    let through = world.config.with_port(proxy.port);
    let mut send = world.spawn_send("once", &through);
    let code = wait_child(&mut send.child, limit(), "zrep-send once")
        .map_err(|h| with_output(h, &send.output()))?;
    let ended = Instant::now();
    let _ = write!(params, "faulted-exit={code:?} ");
    let Some(fired) = proxy.fired() else {
        return Err(violation(format!(
            "the fault never came: {} bytes to the receiver, {} to the sender\n{}",
            proxy.relayed(Direction::ToReceiver),
            proxy.relayed(Direction::ToSender),
            send.output()
        )));
    };
    // Every offset lies before the commit answer (towards the receiver: within the stream;
    // towards the sender: within what it sends before the stream), so the cycle must fail.
    if code != Some(1) {
        return Err(violation(format!(
            "a cycle whose link failed exited {code:?}\n{}",
            send.output()
        )));
    }
    if fault.action == Action::Stall {
        // A stall ends by a configured limit, which the line names with the time it measured:
        // a peer's silence or a write without progress (at least `stall_timeout`), or
        // connecting (at least `connect_timeout`). The peers count from their last whole frame
        // (up to 1 MiB of stream, which may have begun crossing before the stall), so the time
        // from the stall itself is bounded below only loosely, and above by the longest limit.
        let took = ended - fired;
        let _ = write!(params, "stall-ended-after={:.1}s ", took.as_secs_f64());
        let longest = connect_timeout() + stall_timeout() + Duration::from_secs(5 * time_scale());
        let out = send.stdout();
        let reported = [
            ("silent for ", stall_timeout()),
            ("stalled for ", stall_timeout()),
            ("timed out after ", connect_timeout()),
        ]
        .iter()
        .find_map(|(words, limit)| {
            let rest = out.split(words).nth(1)?;
            Some((parse_duration(rest.split_whitespace().next()?)?, *limit))
        });
        let by_limit = reported.is_some_and(|(measured, limit)| measured >= limit);
        if !by_limit || took < stall_timeout() / 2 || took > longest {
            return Err(violation(format!(
                "the stall ended after {took:?} (reported {reported:?}), not by a configured timeout (up to {longest:?})\n{}\nreceiver:\n{}",
                send.output(),
                world.recv().log_text()
            )));
        }
    }
    drop(proxy);
    Ok(())
}

/// A duration as Rust's `Debug` prints it (`2.00131888s`, `500ms`, `6s`), up to a `:`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim_end_matches([':', ',', ';', ')']);
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A signal to one program while the stream is held mid-way.
fn mid_stream(
    world: &mut World,
    kind: Kind,
    pass: u64,
    release: bool,
    params: &mut String,
) -> Checked<()> {
    let proxy = FaultProxy::start(world.port, Some(hold_after(pass)));
    let through = world.config.with_port(proxy.port);
    let mut send = world.spawn_send("once", &through);
    let (source, target) = (world.source.clone(), world.target.clone());
    let mut pids = (None, 0);
    let under_way = wait_for(limit(), "the stream did not get under way", || {
        if matches!(send.child.try_wait(), Ok(Some(_))) {
            return true;
        }
        let receives = zfs_commands("receive", &target);
        if proxy.relayed(Direction::ToReceiver) >= pass
            && let [receive] = &receives[..]
        {
            pids = (
                zfs_commands("send", &source).first().map(|p| p.pid),
                receive.pid,
            );
            return true;
        }
        false
    });
    under_way.map_err(|h| with_output(h, &send.output()))?;
    if let Ok(Some(status)) = send.child.try_wait() {
        return Err(violation(format!(
            "zrep-send once ended ({status}) before the stream was under way\n{}",
            send.output()
        )));
    }
    let (send_pid, receive_pid) = pids;
    let _ = write!(params, "zfs-send-running={} ", send_pid.is_some());
    let recv_pid = world.recv().pid();
    let (target_pid, sig) = match kind {
        Kind::KillSend => (send.child.id(), "KILL"),
        Kind::TermSend => (send.child.id(), "TERM"),
        Kind::KillRecv => (recv_pid, "KILL"),
        _ => (recv_pid, "TERM"),
    };
    if !signal(target_pid, sig) {
        return Err(violation(format!("kill -{sig} {target_pid} failed")));
    }
    // Released, the stream flows on (a stopped program may still finish it within its grace);
    // held, the link stays stuck until the stop ends it.
    if release || matches!(kind, Kind::KillSend | Kind::KillRecv) {
        proxy.release();
    }
    let code = wait_child(&mut send.child, limit(), "zrep-send once")
        .map_err(|h| with_output(h, &send.output()))?;
    let _ = write!(params, "faulted-exit={code:?} ");
    // How the faulted cycle may end: killed; stopped (4) or finished within its grace (0);
    // failed (1), or finished within the receiver's grace (0).
    let expected: &[Option<i32>] = match kind {
        Kind::KillSend => &[None],
        Kind::TermSend => &[Some(0), Some(4)],
        Kind::KillRecv => &[Some(1)],
        _ => &[Some(0), Some(1)],
    };
    if !expected.contains(&code) {
        return Err(violation(format!(
            "zrep-send once exited {code:?} after {sig} of {}, not one of {expected:?}\n{}",
            if target_pid == recv_pid {
                "zrep-recv"
            } else {
                "zrep-send"
            },
            send.output()
        )));
    }
    match kind {
        Kind::KillRecv | Kind::TermRecv => {
            let code = world.recv().wait_exit(limit(), "the stopped zrep-recv")?;
            if kind == Kind::TermRecv && code != Some(0) {
                let log = world.recv().log_text();
                return Err(violation(format!(
                    "zrep-recv exited {code:?} on SIGTERM\n{log}"
                )));
            }
            world.recv = None;
        }
        _ => {}
    }
    proxy.release();
    world.no_process()?;
    if let Some(pid) = send_pid {
        reaped(pid, "zfs send").map_err(violation)?;
    }
    reaped(receive_pid, "zfs receive").map_err(violation)?;
    drop(proxy);
    if world.recv.is_none() {
        world.start_receiver(&[]);
    }
    Ok(())
}

/// The receiver drops its commit answer after a verified receive and is killed then.
fn lost_commit_answer(world: &mut World, params: &mut String) -> Checked<()> {
    // The hook drops the first answer of a receiver: restart it with the hook set.
    drop(world.recv.take());
    world.start_receiver(&[("ZREP_TEST_DROP_COMMIT_ANSWER", "1")]);
    let config = world.config.with_port(world.port);
    let mut send = world.spawn_send("once", &config);
    let recv = world.recv.as_ref().expect("started");
    let dropped = wait_for(
        limit(),
        "the receiver did not reach its commit answer",
        || {
            recv.log_text()
                .contains("test hook: dropping the commit answer")
        },
    );
    dropped.map_err(|h| with_output(h, &recv.log_text()))?;
    if !signal(recv.pid(), "KILL") {
        return Err(violation("kill -KILL of zrep-recv failed"));
    }
    world.recv().wait_exit(limit(), "the killed zrep-recv")?;
    world.recv = None;
    let code = wait_child(&mut send.child, limit(), "zrep-send once")
        .map_err(|h| with_output(h, &send.output()))?;
    let _ = write!(params, "faulted-exit={code:?} ");
    if code != Some(1) {
        return Err(violation(format!(
            "a cycle without its commit answer exited {code:?}\n{}",
            send.output()
        )));
    }
    world.start_receiver(&[]);
    Ok(())
}

/// A quota on the peer's root that the increment does not fit in; lifted afterwards.
fn target_full(world: &mut World, headroom: u64, params: &mut String) -> Checked<()> {
    let used: u64 = zfs_get(world.root.as_str(), "used").parse().unwrap();
    let quota = used + headroom;
    zfs(&["set", &format!("quota={quota}"), world.root.as_str()]);
    let config = world.config.with_port(world.port);
    let (code, out) = world.once(&config)?;
    zfs(&["set", "quota=none", world.root.as_str()]);
    let _ = write!(params, "faulted-exit={code:?} ");
    if code != Some(1) {
        return Err(violation(format!(
            "a cycle into a full target exited {code:?}\n{out}"
        )));
    }
    Ok(())
}

/// `zrep-send run` while its receiver is killed (mid-stream or between cycles) and restarted on
/// the same port: the daemon reconnects by itself and replicates.
fn daemon_restart(
    world: &mut World,
    midstream: bool,
    pass: u64,
    params: &mut String,
) -> Checked<()> {
    // Only the first connection is held; the daemon's reconnections pass.
    let proxy = FaultProxy::start(world.port, midstream.then(|| hold_after(pass)));
    let through = world.config.with_port(proxy.port);
    let mut daemon = world.spawn_send("run", &through);
    let target = world.target.clone();
    if midstream {
        let under_way = wait_for(limit(), "the stream did not get under way", || {
            proxy.relayed(Direction::ToReceiver) >= pass
                && !zfs_commands("receive", &target).is_empty()
        });
        under_way.map_err(|h| with_output(h, &daemon.output()))?;
    } else {
        let first = wait_for(limit(), "the daemon did not replicate", || {
            successes(&daemon.stdout()) >= 1
        });
        first.map_err(|h| with_output(h, &daemon.output()))?;
    }
    let recv_pid = world.recv().pid();
    if !signal(recv_pid, "KILL") {
        return Err(violation("kill -KILL of zrep-recv failed"));
    }
    world.recv().wait_exit(limit(), "the killed zrep-recv")?;
    world.recv = None;
    proxy.release();
    let before = successes(&daemon.stdout());
    world.no_process()?;
    world.start_receiver(&[]);
    // The backoff starts at 1 s and doubles: a few attempts fit in the bound.
    let again = wait_for(
        limit(),
        "the daemon did not replicate after the restart",
        || successes(&daemon.stdout()) > before,
    );
    again.map_err(|h| with_output(h, &daemon.output()))?;
    if !signal(daemon.child.id(), "TERM") {
        return Err(violation("kill -TERM of zrep-send run failed"));
    }
    let code = wait_child(&mut daemon.child, limit(), "zrep-send run after SIGTERM")
        .map_err(|h| with_output(h, &daemon.output()))?;
    let _ = write!(params, "daemon-exit={code:?} ");
    if code != Some(0) {
        return Err(violation(format!(
            "zrep-send run exited {code:?} on SIGTERM\n{}",
            daemon.output()
        )));
    }
    drop(proxy);
    Ok(())
}

/// Lines of successful cycles.
fn successes(text: &str) -> usize {
    count_lines(text, " replicated to ") - count_lines(text, " NOT replicated to ")
}

/// The seeded sample: one trial of every fault kind, each with a fixed seed.
#[test]
fn seeded_sample_of_every_fault_recovers() {
    let started = Instant::now();
    let trials = KINDS
        .iter()
        .enumerate()
        .map(|(i, &kind)| (1_000 + i as u64, kind))
        .collect();
    // Two at a time: the trials wait on timeouts and processes more than they compute.
    let reports = run_all(trials, 2);
    let table = table(&reports);
    println!("{table}");
    println!(
        "sample of {} trials in {:?}",
        reports.len(),
        started.elapsed()
    );
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.outcome != Outcome::Recovered)
        .map(Report::line)
        .collect();
    assert!(failed.is_empty(), "{}\n{table}", failed.join("\n"));
}

/// Randomized trials for `scripts/soak`: `ZREP_SOAK_TRIALS` (default 300) trials of seeds
/// `ZREP_SOAK_SEED`, +1, ... (default: the clock), each of the kind its seed picks, or of
/// `ZREP_SOAK_KIND`. Prints one line per trial and the table; fails on any violation or hang.
#[test]
#[ignore = "long: run by scripts/soak"]
fn soak() {
    let trials: u64 = std::env::var("ZREP_SOAK_TRIALS")
        .ok()
        .map(|v| v.parse().expect("ZREP_SOAK_TRIALS: a number"))
        .unwrap_or(300);
    let seed: u64 = std::env::var("ZREP_SOAK_SEED")
        .ok()
        .map(|v| v.parse().expect("ZREP_SOAK_SEED: a number"))
        .unwrap_or_else(|| unix_now() % 1_000_000);
    let only = std::env::var("ZREP_SOAK_KIND").ok().map(|name| {
        Kind::by_name(&name).unwrap_or_else(|| {
            let names: Vec<_> = KINDS.iter().map(|k| k.name()).collect();
            panic!("ZREP_SOAK_KIND: one of {names:?}")
        })
    });
    let jobs: usize = std::env::var("ZREP_SOAK_JOBS")
        .ok()
        .map(|v| v.parse().expect("ZREP_SOAK_JOBS: a number"))
        .unwrap_or(1);
    println!("soak: {trials} trials from seed {seed}, {jobs} at a time");
    let planned = (seed..seed + trials)
        .map(|s| (s, only.unwrap_or_else(|| Kind::of_seed(s))))
        .collect();
    let reports = run_all(planned, jobs);
    let table = table(&reports);
    println!("{table}");
    let bad = reports
        .iter()
        .filter(|r| r.outcome != Outcome::Recovered)
        .count();
    assert_eq!(bad, 0, "{bad} trials did not recover\n{table}");
}

/// Runs `trials` (seed, kind), `workers` at a time; the reports in seed order.
fn run_all(trials: Vec<(u64, Kind)>, workers: usize) -> Vec<Report> {
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(trials));
    let mut reports: Vec<Report> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..workers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().unwrap().pop_front();
                        let Some((seed, kind)) = next else {
                            return done;
                        };
                        done.push(trial(seed, kind));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    reports
}

/// Fault kind × trials × recovered × violations × hangs.
fn table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<24} {:>6} {:>9} {:>10} {:>5}\n",
        "fault kind", "trials", "recovered", "violations", "hangs"
    );
    let mut totals = [0usize; 4];
    for kind in KINDS {
        let of: Vec<_> = reports.iter().filter(|r| r.kind == kind).collect();
        let row = [
            of.len(),
            of.iter()
                .filter(|r| r.outcome == Outcome::Recovered)
                .count(),
            of.iter()
                .filter(|r| matches!(r.outcome, Outcome::Violation(_)))
                .count(),
            of.iter()
                .filter(|r| matches!(r.outcome, Outcome::Hang(_)))
                .count(),
        ];
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>9} {:>10} {:>5}",
            kind.name(),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:>9} {:>10} {:>5}",
        "all", totals[0], totals[1], totals[2], totals[3]
    );
    out
}
