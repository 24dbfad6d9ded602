//! Harness for the end-to-end tests: starts `zrep-recv` and runs `zrep-send` as real processes
//! against real pools (`zrep_zfs::testbed`), with the example certificates.
//!
//! The binaries are found next to the test executable (`target/<profile>/`), where
//! `cargo test --workspace` builds them, or in `ZREP_BIN_DIR`.

// Test support: a failed expectation is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use zrep_zfs::DatasetName;

pub mod fault;

/// Where a binary of this workspace is.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("ZREP_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/e2e-<hash> → target/<profile>/
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --bins` (cargo test --workspace does) or set ZREP_BIN_DIR",
        path.display()
    );
    path
}

/// The example certificates shipped in `certs-example/`.
pub fn certs_dir() -> PathBuf {
    std::env::var_os("ZREP_CERTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs-example"))
}

/// A running `zrep-recv serve`, killed on drop.
#[derive(Debug)]
pub struct Receiver {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its stderr log.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts a receiver for `peers` (name, root) with extra environment variables.
    pub fn start(peers: &[(&str, &DatasetName)], env: &[(&str, &str)]) -> Receiver {
        let peers: Vec<_> = peers.iter().map(|(n, r)| (*n, *r, "")).collect();
        Self::start_with(&peers, env)
    }

    /// Starts a receiver for `peers` (name, root, extra TOML lines of its `[[peer]]`).
    pub fn start_with(peers: &[(&str, &DatasetName, &str)], env: &[(&str, &str)]) -> Receiver {
        Self::start_full("", peers, env)
    }

    /// [`Receiver::start_with`] with extra top-level TOML lines.
    pub fn start_full(
        top: &str,
        peers: &[(&str, &DatasetName, &str)],
        env: &[(&str, &str)],
    ) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let certs = certs_dir();
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            certs.join("backup1.pem").display(),
            certs.join("backup1.key").display(),
            certs.join("ca.pem").display(),
        );
        if !top.contains("idle-timeout") {
            config.push_str("idle-timeout = \"20s\"\n");
        }
        // TLS under emulation, on a loaded machine, takes more than the 10 s default.
        if !top.contains("handshake-timeout") {
            config.push_str(&format!("handshake-timeout = \"{}s\"\n", 10 * time_scale()));
        }
        config.push_str(top);
        config.push('\n');
        for (name, root, extra) in peers {
            config.push_str(&format!(
                "\n[[peer]]\nname = \"{name}\"\nroot = \"{root}\"\n{extra}\n"
            ));
        }
        let config_path = dir.path().join("recv.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("recv.log");
        let mut command = Command::new(binary("zrep-recv"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start zrep-recv");
        let port = wait_for_port(&log);
        Receiver {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Its configuration file.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("recv.toml")
    }

    /// The receiver's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id (e.g. for /proc/PID/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a `zrep-recv` logging to `log` to say which port it listens on.
pub fn wait_for_port(log: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20 * time_scale());
    while Instant::now() < deadline {
        if let Ok(file) = std::fs::File::open(log) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("zrep-recv ready listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap();
                    return addr.rsplit(':').next().unwrap().parse().unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "zrep-recv did not become ready: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// One `[[dataset]]` of a sender configuration.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// The source dataset.
    pub source: DatasetName,
    /// The relative target, if not the default.
    pub target: Option<String>,
    /// Extra TOML lines for this dataset.
    pub extra: String,
}

impl DatasetSpec {
    /// A dataset with default settings.
    pub fn new(source: &DatasetName) -> Self {
        Self {
            source: source.clone(),
            target: None,
            extra: String::new(),
        }
    }
}

/// A sender configuration file in its own directory.
#[derive(Debug)]
pub struct SenderConfig {
    /// The file.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SenderConfig {
    /// Writes a configuration for `port`, identifying as the example certificate `identity`.
    pub fn new(port: u16, identity: &str, datasets: &[DatasetSpec]) -> SenderConfig {
        let dir = tempfile::tempdir().unwrap();
        let certs = certs_dir();
        // As the receiver's handshake-timeout: connect-timeout stretched under emulation.
        let mut config = format!(
            "receiver = \"127.0.0.1:{port}\"\nserver-name = \"backup1\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\nconnect-timeout = \"{}s\"\n",
            certs.join(format!("{identity}.pem")).display(),
            certs.join(format!("{identity}.key")).display(),
            certs.join("ca.pem").display(),
            15 * time_scale(),
        );
        for ds in datasets {
            config.push_str(&format!("\n[[dataset]]\nsource = \"{}\"\n", ds.source));
            if let Some(target) = &ds.target {
                config.push_str(&format!("target = \"{target}\"\n"));
            }
            config.push_str(&ds.extra);
        }
        let path = dir.path().join("send.toml");
        std::fs::write(&path, config).unwrap();
        SenderConfig { path, _dir: dir }
    }

    /// Runs `zrep-send <subcommand> --config <this file> <args>` to completion.
    pub fn run(&self, subcommand: &str, args: &[&str]) -> RunResult {
        let output = Command::new(binary("zrep-send"))
            .args([subcommand, "--config"])
            .arg(&self.path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run zrep-send");
        RunResult::from(output)
    }

    /// The directory of this configuration (and, by default, of the state files).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Runs `zrep-send once` to completion.
    pub fn once(&self) -> RunResult {
        let output = Command::new(binary("zrep-send"))
            .args(["once", "--config"])
            .arg(&self.path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run zrep-send");
        RunResult::from(output)
    }
}

/// What a process printed and how it ended.
#[derive(Debug)]
pub struct RunResult {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for RunResult {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl RunResult {
    /// Panics with both outputs unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Snapshots of a dataset as (short name, GUID), from ZFS itself (`zfs get -Hp`).
pub fn snapshots(dataset: &DatasetName) -> Vec<(String, u64)> {
    let out = zrep_zfs::testbed::zfs(&[
        "list",
        "-H",
        "-o",
        "name",
        "-t",
        "snapshot",
        "-r",
        "-d",
        "1",
        dataset.as_str(),
    ]);
    out.lines()
        .filter(|l| l.starts_with(&format!("{dataset}@")))
        .map(|name| {
            let guid = zrep_zfs::testbed::zfs_get(name, "guid").parse().unwrap();
            (name.split_once('@').unwrap().1.to_owned(), guid)
        })
        .collect()
}

/// Whether a dataset exists, by ZFS's own answer.
pub fn exists(dataset: &DatasetName) -> bool {
    Command::new("zfs")
        .args(["list", "-H", "-o", "name", dataset.as_str()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A TCP relay between a sender and a receiver that can cut the first connection after a number
/// of client-to-server bytes, to interrupt a transfer at a chosen point. Later connections pass.
#[derive(Debug)]
pub struct CuttingProxy {
    /// The port senders connect to (127.0.0.1).
    pub port: u16,
}

impl CuttingProxy {
    /// Relays to `127.0.0.1:target`; cuts the first connection after `cut_after` bytes.
    pub fn start(target: u16, cut_after: u64) -> CuttingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut first = true;
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let limit = if first { cut_after } else { u64::MAX };
                first = false;
                relay(client, server, limit);
            }
        });
        CuttingProxy { port }
    }
}

fn relay(client: std::net::TcpStream, server: std::net::TcpStream, limit: u64) {
    use std::io::{Read, Write};
    let (mut c_read, mut c_write) = (client.try_clone().unwrap(), client);
    let (mut s_read, mut s_write) = (server.try_clone().unwrap(), server);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = s_read.read(&mut buf) {
            if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut passed = 0u64;
        while let Ok(n) = c_read.read(&mut buf) {
            let n = n.min(usize::try_from(limit - passed).unwrap_or(usize::MAX));
            if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
            if passed >= limit {
                break;
            }
        }
        // Both directions end: the sender sees a dead connection, the receiver a cut stream.
        let _ = s_write.shutdown(std::net::Shutdown::Both);
        let _ = c_read.shutdown(std::net::Shutdown::Both);
    });
}

/// The probed capabilities of the local ZFS (to pick a test's expectations).
pub fn capabilities() -> zrep_zfs::Capabilities {
    use zrep_zfs::Zfs;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        zrep_zfs::SystemZfs::probe(zrep_zfs::SystemZfsConfig::default())
            .await
            .unwrap()
            .capabilities()
            .clone()
    })
}

impl SenderConfig {
    /// The same datasets, sent to another port (e.g. through a proxy).
    pub fn with_port(&self, port: u16) -> SenderConfig {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for line in &mut lines {
            if line.starts_with("receiver = ") {
                *line = format!("receiver = \"127.0.0.1:{port}\"");
            }
        }
        let path = dir.path().join("send.toml");
        std::fs::write(&path, lines.join("\n")).unwrap();
        SenderConfig { path, _dir: dir }
    }
}

/// A TCP relay that passes client-to-server bytes at most at `bytes_per_sec`, so that a transfer
/// lasts long enough to be interrupted.
#[derive(Debug)]
pub struct ThrottlingProxy {
    /// The port senders connect to (127.0.0.1).
    pub port: u16,
}

impl ThrottlingProxy {
    /// Relays every connection to `127.0.0.1:target`.
    pub fn start(target: u16, bytes_per_sec: u64) -> ThrottlingProxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let (mut c_read, mut c_write) = (client.try_clone().unwrap(), client);
                let (mut s_read, mut s_write) = (server.try_clone().unwrap(), server);
                // Like TCP itself, each direction ends on its own: a side that half-closes (its
                // last frame sent, still reading) is passed on as a half-close, and only a
                // failure ends both directions.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let how = loop {
                        match s_read.read(&mut buf) {
                            Ok(0) => break std::net::Shutdown::Write,
                            Ok(n) if c_write.write_all(&buf[..n]).is_ok() => {}
                            _ => break std::net::Shutdown::Both,
                        }
                    };
                    let _ = c_write.shutdown(how);
                });
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let how = loop {
                        let n = match c_read.read(&mut buf) {
                            Ok(0) => break std::net::Shutdown::Write,
                            Ok(n) if s_write.write_all(&buf[..n]).is_ok() => n,
                            _ => break std::net::Shutdown::Both,
                        };
                        std::thread::sleep(Duration::from_secs_f64(
                            n as f64 / bytes_per_sec as f64,
                        ));
                    };
                    let _ = s_write.shutdown(how);
                });
            }
        });
        ThrottlingProxy { port }
    }
}

/// A running `zrep-send run`, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Its standard output (one line per cycle).
    pub stdout: PathBuf,
    /// Its log.
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `zrep-send run --config <config>`.
    pub fn start(config: &SenderConfig) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let child = Command::new(binary("zrep-send"))
            .args(["run", "--config"])
            .arg(&config.path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start zrep-send run");
        Daemon {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Its process id (to stop or continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit; the exit code, `None` if it had
    /// to be killed.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client connection that speaks the protocol directly, for sending what zrep-send never would.
pub type ClientConn = zrep_repl::transport::Connection<
    zrep_proto::SenderSide,
    tokio::io::ReadHalf<ClientTls>,
    tokio::io::WriteHalf<ClientTls>,
>;

/// The TLS stream under a [`ClientConn`].
pub type ClientTls = zrep_tls::tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a negotiated session to `127.0.0.1:port` as the holder of `cert`/`key`, trusting `ca`
/// and expecting the server certificate to name `server_name`.
pub async fn client_session(
    ca: &Path,
    cert: &Path,
    key: &Path,
    server_name: &str,
    port: u16,
) -> ClientConn {
    let tls = zrep_tls::client_config_from_files(ca, cert, key).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let stream = zrep_tls::Connector::new(tls)
        .connect(server_name, tcp)
        .await
        .unwrap();
    let (reader, writer) = tokio::io::split(stream);
    let session =
        zrep_proto::SenderSession::new(zrep_proto::SessionConfig::default(), Duration::ZERO);
    let mut conn = zrep_repl::transport::Connection::new(
        session,
        reader,
        writer,
        Instant::now(),
        Duration::from_secs(10),
    );
    assert!(matches!(
        conn.next_event().await.unwrap(),
        zrep_proto::SenderEvent::Negotiated(_)
    ));
    conn
}

/// A TCP relay whose target can change (0: connections are closed at once), to take a
/// receiver away and bring another back behind one address.
#[derive(Debug)]
pub struct SwitchProxy {
    /// The port senders connect to (127.0.0.1).
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

impl SwitchProxy {
    /// Relays new connections to `127.0.0.1:target`.
    pub fn start(target: u16) -> SwitchProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let current = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let target = current.load(Ordering::SeqCst);
                let server = match target {
                    0 => None,
                    port => std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
                };
                match server {
                    Some(server) => relay(client, server, u64::MAX),
                    None => drop(client),
                }
            }
        });
        SwitchProxy {
            port,
            target: shared,
        }
    }

    /// Relays new connections to `target` from now on (0: refuse them).
    pub fn switch(&self, target: u16) {
        self.target
            .store(target, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How much slower than native this run's ZFS is: `ZREP_TEST_TIME_SCALE`, which
/// `scripts/test-openzfs` sets under emulation (TCG runs ZFS several times slower). Tests that
/// bound times (intervals, lag thresholds) multiply their limits by it; 1 natively.
pub fn time_scale() -> u64 {
    std::env::var("ZREP_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Opens a negotiated session as the example peer `identity` (`nas1`, `nas2`: a valid
/// certificate of the receiver's CA), to send what zrep-send never would.
pub async fn peer_session(identity: &str, port: u16) -> ClientConn {
    let certs = certs_dir();
    client_session(
        &certs.join("ca.pem"),
        &certs.join(format!("{identity}.pem")),
        &certs.join(format!("{identity}.key")),
        "backup1",
        port,
    )
    .await
}

/// The stream `zfs send ARGS` writes, in memory (small test datasets only); panics with its
/// stderr on failure.
pub fn zfs_send(args: &[&str]) -> Vec<u8> {
    let out = Command::new("zfs")
        .arg("send")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run zfs send");
    assert!(
        out.status.success(),
        "zfs send {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// How a hand-driven transfer ends once all of its data was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnding {
    /// Stream end with the true byte count and checksum.
    Honest,
    /// Stream end with the true byte count and a wrong checksum.
    WrongChecksum,
    /// Stream end announcing one byte more than was sent.
    WrongLength,
    /// Stream abort.
    Abort,
    /// The connection is dropped before the stream end.
    CutBeforeEnd,
    /// The connection is dropped right after the (honest) stream end, before the answer.
    CutAfterEnd,
    /// An error frame instead of the stream end; the session is over.
    ErrorFrame,
}

/// What the receiver answered a hand-driven transfer. Codes are their wire texts, so that
/// tests can name codes newer than the ones they were compiled against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferAnswer {
    /// The offer was refused before any data.
    Refused {
        /// Wire text of the refusal code.
        code: String,
        /// The receiver's explanation.
        message: String,
    },
    /// The snapshot was committed.
    Committed {
        /// Its short name.
        snapshot: String,
        /// Its GUID.
        guid: u64,
    },
    /// The transfer failed (the session goes on).
    Failed {
        /// Wire text of the failure code.
        code: String,
        /// The receiver's explanation.
        message: String,
    },
    /// The receiver closed the session with an error frame.
    PeerError {
        /// Wire text of the error code.
        code: String,
        /// The receiver's explanation.
        message: String,
    },
    /// No answer: the connection ended, or the ending itself ended the session.
    NoAnswer(String),
}

/// Offers `offer`, sends `stream` in stored data frames and ends it as `ending` says, all by
/// hand (the checksum and byte count are forged through [`zrep_proto::OutgoingStream::push`],
/// which accounts the bytes it is given, not the frame's). Returns the answer and the
/// connection while the session is still open (after a refusal or failure: ready again).
pub async fn push_stream(
    mut conn: ClientConn,
    offer: zrep_proto::TransferOffer,
    stream: &[u8],
    ending: StreamEnding,
) -> (Option<ClientConn>, TransferAnswer) {
    use zrep_proto::{DataChunk, SenderEvent};
    conn.session.offer_transfer(offer).unwrap();
    match conn.next_event().await {
        Ok(SenderEvent::Accepted) => {}
        Ok(SenderEvent::Refused { code, message }) => {
            let code = code.to_string();
            return (Some(conn), TransferAnswer::Refused { code, message });
        }
        other => return (None, answer_of(other)),
    }
    let mut outgoing = conn.session.outgoing_stream().unwrap();
    let chunks: Vec<&[u8]> = stream.chunks(64 * 1024).collect();
    for (i, raw) in chunks.iter().enumerate() {
        let chunk = DataChunk::stored(raw).unwrap();
        let mut accounted = raw.to_vec();
        if ending == StreamEnding::WrongChecksum && i + 1 == chunks.len() {
            // Same length, one bit different: only the checksum is wrong.
            accounted[0] ^= 1;
        }
        let wire = outgoing.push(&accounted, chunk).unwrap();
        if let Err(err) = conn.write_raw(&wire).await {
            return (
                None,
                TransferAnswer::NoAnswer(format!("sending data: {err}")),
            );
        }
    }
    match ending {
        StreamEnding::Honest | StreamEnding::WrongChecksum | StreamEnding::CutAfterEnd => {
            conn.session.finish_stream(outgoing.summary()).unwrap();
        }
        StreamEnding::WrongLength => {
            // Accounted, never written: the announced count is one byte more than was sent.
            let extra = DataChunk::stored(&[0]).unwrap();
            outgoing.push(&[0], extra).unwrap();
            conn.session.finish_stream(outgoing.summary()).unwrap();
        }
        StreamEnding::Abort => conn.session.abort_stream("hostile abort").unwrap(),
        StreamEnding::CutBeforeEnd => {
            let _ = conn.flush().await;
            return (
                None,
                TransferAnswer::NoAnswer("cut before the stream end".into()),
            );
        }
        StreamEnding::ErrorFrame => {
            conn.session.error(
                zrep_proto::ErrorCode::Internal,
                "hostile error after the stream",
            );
            conn.shutdown().await;
            return (None, TransferAnswer::NoAnswer("error frame sent".into()));
        }
    }
    if let Err(err) = conn.flush().await {
        return (
            None,
            TransferAnswer::NoAnswer(format!("sending the end: {err}")),
        );
    }
    if ending == StreamEnding::CutAfterEnd {
        return (
            None,
            TransferAnswer::NoAnswer("cut after the stream end".into()),
        );
    }
    let event = conn.next_event().await;
    let answer = answer_of(event);
    let open = matches!(
        answer,
        TransferAnswer::Committed { .. } | TransferAnswer::Failed { .. }
    );
    (open.then_some(conn), answer)
}

fn answer_of(
    event: Result<zrep_proto::SenderEvent, zrep_repl::transport::TransportError>,
) -> TransferAnswer {
    use zrep_proto::SenderEvent;
    match event {
        Ok(SenderEvent::Committed { snapshot, guid }) => {
            TransferAnswer::Committed { snapshot, guid }
        }
        Ok(SenderEvent::Failed { code, message }) => TransferAnswer::Failed {
            code: code.to_string(),
            message,
        },
        Ok(SenderEvent::Refused { code, message }) => TransferAnswer::Refused {
            code: code.to_string(),
            message,
        },
        Ok(SenderEvent::PeerError { code, message }) => TransferAnswer::PeerError {
            code: code.to_string(),
            message,
        },
        Ok(other) => TransferAnswer::NoAnswer(format!("unexpected answer {other:?}")),
        Err(err) => TransferAnswer::NoAnswer(err.to_string()),
    }
}

/// Records every mount of a pool's datasets outside the pool's own mount tree, reading
/// `/proc/mounts` every few milliseconds from a thread until [`MountWatch::stop`].
#[derive(Debug)]
pub struct MountWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::collections::BTreeSet<String>>>,
}

impl MountWatch {
    /// Watches the datasets of `pool`, whose mounts belong below `tree`.
    pub fn start(pool: &str, tree: &Path) -> MountWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (pool, tree) = (pool.to_owned(), tree.to_owned());
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            loop {
                // Read once more after the stop, so the last moment is covered too.
                let last = flag.load(Ordering::SeqCst);
                let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
                for line in mounts.lines() {
                    let mut fields = line.split(' ');
                    let (Some(device), Some(path)) = (fields.next(), fields.next()) else {
                        continue;
                    };
                    let (device, path) = (unescape_mount(device), unescape_mount(path));
                    let ours = device == pool || device.starts_with(&format!("{pool}/"));
                    if ours && !Path::new(&path).starts_with(&tree) {
                        seen.insert(format!("{device} on {path}"));
                    }
                }
                if last {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        MountWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; every `"<dataset> on <path>"` seen outside the tree.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let thread = self.thread.take().expect("stopped once");
        thread
            .join()
            .expect("mount watch thread")
            .into_iter()
            .collect()
    }
}

impl Drop for MountWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lines of `text` containing `needle` (e.g. "session ended" in a receiver's log).
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}
