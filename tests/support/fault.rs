//! Fault injection for the end-to-end tests (issue 13): a TCP relay that cuts or stalls its
//! first connection after a number of bytes in one direction, and what a test needs to see the
//! processes a fault leaves behind (/proc) and to signal them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zrep_zfs::DatasetName;

/// Which way bytes travel through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From zrep-send (the client) to zrep-recv.
    ToReceiver,
    /// From zrep-recv back to zrep-send.
    ToSender,
}

/// What the relay does once the fault's byte count has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Close both sockets (both directions, both sides) at once.
    Cut,
    /// Stop reading and forwarding in the fault's direction, sockets kept open, until
    /// [`FaultProxy::release`] or until the other direction ends (then both sockets close: a
    /// peer that gave up has nothing left to wait for).
    Stall,
}

/// A fault on the relay's first connection: `action` once `after` bytes passed in `direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The direction whose bytes are counted and stopped.
    pub direction: Direction,
    /// Cut or stall.
    pub action: Action,
    /// Bytes relayed in `direction` before the fault.
    pub after: u64,
}

/// What the relay threads share with the test.
#[derive(Debug, Default)]
struct Shared {
    to_receiver: AtomicU64,
    to_sender: AtomicU64,
    /// `(to_receiver, to_sender)` after every relayed chunk of the first connection.
    samples: Mutex<Vec<(u64, u64)>>,
    fired: Mutex<Option<Instant>>,
    released: AtomicBool,
    connections: AtomicUsize,
    stopped: AtomicBool,
}

impl Shared {
    fn counter(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToReceiver => &self.to_receiver,
            Direction::ToSender => &self.to_sender,
        }
    }
}

/// A TCP relay from 127.0.0.1:`port` to a receiver. Its first connection carries the fault (if
/// any) and is counted; later connections pass untouched. Dropping it closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    /// The port senders connect to (127.0.0.1).
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Relays to `127.0.0.1:target`, applying `fault` to the first connection.
    pub fn start(target: u16, fault: Option<Fault>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if state.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    drop(client);
                    continue;
                };
                let first = state.connections.fetch_add(1, Ordering::SeqCst) == 0;
                connect(
                    &state,
                    client,
                    server,
                    if first { fault } else { None },
                    first,
                );
            }
        });
        FaultProxy { port, shared }
    }

    /// Bytes the first connection relayed in `direction` so far.
    pub fn relayed(&self, direction: Direction) -> u64 {
        self.shared.counter(direction).load(Ordering::SeqCst)
    }

    /// When the fault came, if it did.
    pub fn fired(&self) -> Option<Instant> {
        *self.shared.fired.lock().unwrap()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Ends a stall: from now on the first connection relays freely.
    pub fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
    }

    /// Bytes relayed to the sender by the time `to_receiver` bytes had been relayed to the
    /// receiver, on the first connection (from a sample taken after every chunk).
    pub fn to_sender_by(&self, to_receiver: u64) -> u64 {
        let samples = self.shared.samples.lock().unwrap();
        samples
            .iter()
            .take_while(|(r, _)| *r <= to_receiver)
            .map(|(_, s)| *s)
            .last()
            .unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// How long a relay thread blocks in a read or write before it looks at its connection's state.
const POLL: Duration = Duration::from_millis(50);

/// The state of one relayed connection, shared by its two directions.
#[derive(Debug, Default)]
struct Link {
    /// Each direction's end (its source half-closed, or the connection closed).
    done: [AtomicBool; 2],
    /// Both sockets are shut down: each direction ends, and the last one out closes them.
    closed: AtomicBool,
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::ToReceiver => 0,
        Direction::ToSender => 1,
    }
}

/// Starts both directions of one relayed connection.
fn connect(
    shared: &Arc<Shared>,
    client: TcpStream,
    server: TcpStream,
    fault: Option<Fault>,
    counted: bool,
) {
    for socket in [&client, &server] {
        // Bounded blocking, so that a thread sees a cut, a stall's end or the proxy's drop; the
        // sockets close when both threads have let go of them (with unread data: a reset).
        let _ = socket.set_read_timeout(Some(POLL));
        let _ = socket.set_write_timeout(Some(POLL));
    }
    let link = Arc::new(Link::default());
    for direction in [Direction::ToReceiver, Direction::ToSender] {
        let (from, to) = match direction {
            Direction::ToReceiver => (client.try_clone().unwrap(), server.try_clone().unwrap()),
            Direction::ToSender => (server.try_clone().unwrap(), client.try_clone().unwrap()),
        };
        let pump = Pump {
            shared: Arc::clone(shared),
            direction,
            fault: fault.filter(|f| f.direction == direction),
            counted,
            link: Arc::clone(&link),
            client: client.try_clone().unwrap(),
            server: server.try_clone().unwrap(),
        };
        std::thread::spawn(move || pump.run(from, to));
    }
}

/// One direction of a relayed connection.
struct Pump {
    shared: Arc<Shared>,
    direction: Direction,
    /// The fault, if it is in this direction.
    fault: Option<Fault>,
    /// Whether this connection's bytes are counted (the first one).
    counted: bool,
    link: Arc<Link>,
    client: TcpStream,
    server: TcpStream,
}

impl Pump {
    fn run(self, mut from: TcpStream, mut to: TcpStream) {
        let mut buf = [0u8; 16 * 1024];
        let mut passed = 0u64;
        let mut stalled = false;
        let other = 1 - index(self.direction);
        loop {
            if self.link.closed.load(Ordering::SeqCst) || self.shared.stopped.load(Ordering::SeqCst)
            {
                return self.close();
            }
            if stalled {
                if self.shared.released.load(Ordering::SeqCst) {
                    stalled = false;
                } else if self.link.done[other].load(Ordering::SeqCst) {
                    // The other side gave up: nothing is left to wait for.
                    return self.close();
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
            let budget = match self.fault {
                Some(f) if self.fired().is_none() => f.after.saturating_sub(passed),
                _ => u64::MAX,
            };
            if let (Some(fault), 0) = (self.fault, budget) {
                *self.shared.fired.lock().unwrap() = Some(Instant::now());
                match fault.action {
                    Action::Cut => return self.close(),
                    Action::Stall => {
                        stalled = true;
                        continue;
                    }
                }
            }
            let want = buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
            let n = match from.read(&mut buf[..want]) {
                // Like TCP itself: a side that half-closes (its last frame sent, still
                // reading) is passed on as a half-close.
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    self.link.done[index(self.direction)].store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => continue,
                Err(_) => return self.close(),
            };
            if !self.write_all(&mut to, &buf[..n]) {
                return self.close();
            }
            passed += n as u64;
            if self.counted {
                self.shared
                    .counter(self.direction)
                    .fetch_add(n as u64, Ordering::SeqCst);
                let sample = (
                    self.shared.to_receiver.load(Ordering::SeqCst),
                    self.shared.to_sender.load(Ordering::SeqCst),
                );
                self.shared.samples.lock().unwrap().push(sample);
            }
        }
    }

    /// Writes all of `bytes` unless the connection closes meanwhile.
    fn write_all(&self, to: &mut TcpStream, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match to.write(bytes) {
                Ok(0) => return false,
                Ok(n) => bytes = &bytes[n..],
                Err(e) if would_block(&e) => {
                    if self.link.closed.load(Ordering::SeqCst)
                        || self.shared.stopped.load(Ordering::SeqCst)
                    {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Shuts both sockets down (both directions, both sides) and marks the connection closed.
    fn close(&self) {
        self.link.closed.store(true, Ordering::SeqCst);
        for done in &self.link.done {
            done.store(true, Ordering::SeqCst);
        }
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    fn fired(&self) -> Option<Instant> {
        *self.shared.fired.lock().unwrap()
    }
}

fn would_block(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// A process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its id.
    pub pid: u32,
    /// Its parent's id.
    pub ppid: u32,
    /// The state letter (`Z`: a zombie).
    pub state: char,
    /// Its arguments, NULs shown as spaces.
    pub cmdline: String,
}

/// The process `pid`, if /proc has it (zombies included).
pub fn proc_of(pid: u32) -> Option<Proc> {
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
/// arguments with a NUL (shown as a space), so match on dataset or pool names.
pub fn processes_with(needle: &str) -> Vec<Proc> {
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
pub fn zfs_commands(subcommand: &str, dataset: &DatasetName) -> Vec<Proc> {
    let mut found = processes_with(dataset.as_str());
    found.retain(|p| p.cmdline.starts_with(&format!("zfs {subcommand} ")));
    found
}

/// Whether `pid` is gone from /proc (reaped: a zombie keeps its entry) within `limit`; its
/// parent collects it a moment after the exit.
pub fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while proc_of(pid).is_some() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Sends `signal` (`KILL`, `TERM`, ...) to `pid`; whether `kill` succeeded.
pub fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
