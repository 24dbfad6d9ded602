//! Faults mid-stream (issue 13): `zrep-send once` or `zrep-recv` killed with SIGKILL while an
//! `-I` stream runs. zfs-fuse's `zfs send -I` holds every snapshot it sends and keeps those holds
//! for good if it is killed, so afterwards: the source has no hold but zrep's own on the base, no
//! `zfs send`/`zfs receive` of the test's pools runs or is left unreaped by a zrep process, and
//! the next `once` replicates with equal GUIDs.
//!
//! "Mid-stream" is made certain, not timed: a relay passes the first bytes of the stream and then
//! stops reading, so `zrep-send` and `zfs send` behind it block with the stream half sent; the
//! fault comes once `zfs send` and `zfs receive` are seen running and the bytes were relayed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zrep_e2e::{DatasetSpec, Receiver, SenderConfig, binary, capabilities, snapshots, time_scale};
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
    sender_log: std::path::PathBuf,
    proxy: StallingProxy,
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
        // Snapshot names have one-second resolution: the next cycle must name a new one.
        while unix_now() <= first_done {
            std::thread::sleep(Duration::from_millis(20));
        }
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
        Duration::from_secs(60 * time_scale())
    }

    /// Starts `zrep-send once` through a relay that stalls after [`PASS`] bytes and waits until
    /// the stream is under way: the bytes relayed, `zfs send` and `zfs receive` running.
    fn stalled_once(&self) -> Faulted {
        let proxy = StallingProxy::start(self.receiver.port, PASS);
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
            if proxy.relayed() >= PASS
                && let ([send], [receive]) = (&sends[..], &receives[..])
            {
                break (send.pid, receive.pid);
            }
            assert!(
                Instant::now() < deadline,
                "the stream did not get under way: relayed {} bytes, sends {sends:?}, receives {receives:?}\n{}",
                proxy.relayed(),
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

    /// Waits until no process of either pool runs (by command line: the pool names are unique).
    fn wait_until_no_zfs_process(&self) {
        let started = Instant::now();
        loop {
            let mut left = processes_with(self.src.name());
            left.extend(processes_with(self.dst.name()));
            left.retain(|p| p.state != 'Z');
            if left.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < self.limit(),
                "still running after {:?}: {left:?}",
                self.limit()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "no zfs process of the pools left {:?} after the fault's end",
            started.elapsed()
        );
    }

    /// Every source snapshot is free of holds but the newest replicated one, which carries
    /// zrep's tag and nothing else.
    fn assert_only_zrep_holds(&self) {
        let base = self.newest_on_target();
        for (short, _) in snapshots(&self.source) {
            let snap = format!("{}@{short}", self.source);
            let refs = zfs_get(&snap, "userrefs");
            if short == base {
                assert_eq!(refs, "1", "{snap}: zrep's hold and nothing else");
                assert_hold_is_zreps(&snap);
            } else {
                assert_eq!(refs, "0", "{snap} is held by something");
            }
        }
    }

    /// The short name of the target's newest snapshot.
    fn newest_on_target(&self) -> String {
        snapshots(&self.target).last().unwrap().0.clone()
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

/// zrep's tag is on `snap`: OpenZFS lists it; zfs-fuse has no `zfs holds`, but refuses to place
/// a tag a second time.
fn assert_hold_is_zreps(snap: &str) {
    if capabilities().holds_scriptable {
        let out = zfs(&["holds", "-H", snap]);
        let tags: Vec<&str> = out.lines().filter_map(|l| l.split('\t').nth(1)).collect();
        assert_eq!(tags, [TAG], "{snap}");
        return;
    }
    let again = Command::new("zfs")
        .args(["hold", TAG, snap])
        .output()
        .unwrap();
    assert!(!again.status.success(), "{snap} did not carry {TAG}");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("tag already exists"), "{snap}: {said}");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
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

/// A process as /proc shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    cmdline: String,
}

/// The process `pid`, if /proc has it (zombies included).
fn proc_of(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        state,
        cmdline,
    })
}

/// Processes whose command line contains `needle`. zfs-fuse's `zfs` overwrites the `@` of its
/// arguments with a NUL (shown as a space), so match on dataset names.
fn processes_with(needle: &str) -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
        .filter_map(proc_of)
        .filter(|p| p.cmdline.contains(needle))
        .collect()
}

/// `zfs <subcommand> ... <dataset>...` processes, whatever options come in between (OpenZFS
/// adds `-c -L -e` to a send, `-s -u -o ...` to a receive).
fn zfs_commands(subcommand: &str, dataset: &DatasetName) -> Vec<Proc> {
    let mut found = processes_with(&format!("{dataset}"));
    found.retain(|p| p.cmdline.starts_with(&format!("zfs {subcommand} ")));
    found
}

/// Whether `pid` is gone from /proc (reaped: a zombie keeps its entry) within `limit`; its
/// parent collects it a moment after the exit.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while proc_of(pid).is_some() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// `pid` has exited. Its parent died before it, so it belongs to init now, and whether it is
/// reaped is init's business (this sandbox's init does not reap orphans).
fn assert_not_running(pid: u32, what: &str) {
    if let Some(p) = proc_of(pid) {
        assert!(p.state == 'Z' && p.ppid == 1, "{what} still there: {p:?}");
    }
}

/// A TCP relay that passes the first `pass` client-to-server bytes of its first connection and
/// then stops reading from the client until [`StallingProxy::release`]; from then on it relays
/// freely, and when either side ends it closes both.
struct StallingProxy {
    port: u16,
    relayed: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
}

impl StallingProxy {
    fn start(target: u16, pass: u64) -> StallingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relayed = Arc::new(AtomicU64::new(0));
        let released = Arc::new(AtomicBool::new(false));
        let (count, release) = (Arc::clone(&relayed), Arc::clone(&released));
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let (mut c_read, mut c_write) = (client.try_clone().unwrap(), client);
            let (mut s_read, mut s_write) = (server.try_clone().unwrap(), server);
            let close = |a: &TcpStream, b: &TcpStream| {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            };
            let (c2, s2) = (c_write.try_clone().unwrap(), s_read.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = s_read.read(&mut buf) {
                    if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                close(&c2, &s2);
            });
            let mut buf = [0u8; 16 * 1024];
            loop {
                let budget = pass.saturating_sub(count.load(Ordering::SeqCst));
                if budget == 0 && !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let want = if release.load(Ordering::SeqCst) {
                    buf.len()
                } else {
                    buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX))
                };
                let n = match c_read.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::SeqCst);
            }
            close(&c_read, &s_write);
        });
        StallingProxy {
            port,
            relayed,
            released,
        }
    }

    fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}
