//! `zrep-send once`: one replication cycle of every configured dataset over one session.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::{info, warn};
use zrep_proto::{MAX_CHUNK, SenderEvent, SenderSession, SessionConfig};
use zrep_repl::ReplicationError;
use zrep_repl::sender::{DatasetJob, Replicated, SenderOptions, StreamShape, replicate};
use zrep_repl::transport::Connection;
use zrep_tls::Connector;
use zrep_tls::tokio_rustls::client::TlsStream;
use zrep_zfs::{HoldTag, SystemZfs, SystemZfsConfig, Zfs};

use crate::config::{DatasetConfig, SendConfig};
use crate::renew::Renewed;

type Tls = TlsStream<TcpStream>;
pub(crate) type SenderConn = Connection<SenderSession, ReadHalf<Tls>, WriteHalf<Tls>>;

/// How a run ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every dataset replicated.
    AllReplicated,
    /// At least one dataset failed.
    SomeFailed,
}

/// Replicates every dataset once. Prints one line per dataset on stdout.
pub async fn run_once(config: &SendConfig) -> anyhow::Result<RunOutcome> {
    let zfs = SystemZfs::probe(SystemZfsConfig::default())
        .await
        .context("probing the local ZFS")?;
    let tls = zrep_tls::client_config_from_files(&config.ca, &config.cert, &config.key)
        .context("loading the TLS certificate, key and CA")?;
    let connector = Connector::new(tls);
    let options = SenderOptions {
        compression_level: config.compression_level,
        chunk_size: MAX_CHUNK,
        commit_timeout: config.commit_timeout,
        hold_tag: hold_tag(&config.server_name),
        bandwidth_limit: config.bandwidth_limit,
        progress: Some(crate::progress::sink()),
    };
    let mut conn: Option<SenderConn> = None;
    let mut renewal_checked = false;
    let mut outcome = RunOutcome::AllReplicated;
    // Recursive datasets stand for their members as they are now.
    let members = crate::recursive::expand_all(&zfs, &config.datasets).await;
    for member in &members {
        let dataset = match member {
            Ok(dataset) => dataset,
            Err((dataset, err)) => {
                println!(
                    "{} NOT replicated to {}: listing the datasets below it: {err}",
                    dataset.source, config.receiver
                );
                crate::state::record(config, dataset, Err(err));
                outcome = RunOutcome::SomeFailed;
                continue;
            }
        };
        let Some(_lock) = crate::state::lock(config, dataset) else {
            outcome = RunOutcome::SomeFailed;
            continue;
        };
        if conn.is_none() {
            match connect(config, &connector, zfs.capabilities()).await {
                Ok(mut fresh) => {
                    if !renewal_checked {
                        renewal_checked = true;
                        renew(config, &mut fresh).await;
                    }
                    conn = Some(fresh);
                }
                Err(err) => {
                    println!(
                        "{} NOT replicated to {}: {err:#}",
                        dataset.source, config.receiver
                    );
                    crate::state::record(config, dataset, Err(format!("{err:#}")));
                    outcome = RunOutcome::SomeFailed;
                    continue;
                }
            }
        }
        let Some(session) = conn.as_mut() else {
            continue;
        };
        let job = job(dataset);
        let result = replicate(&zfs, session, &job, &options, SystemTime::now()).await;
        crate::state::record(config, dataset, result.as_ref());
        match result {
            Ok(done) => println!("{}", success_line(&done, &config.receiver)),
            Err(err) => {
                println!(
                    "{} NOT replicated to {}: {err}",
                    dataset.source, config.receiver
                );
                outcome = RunOutcome::SomeFailed;
                if session_is_broken(&err) {
                    conn = None;
                }
            }
        }
    }
    if let Some(mut conn) = conn
        && conn.session.close().is_ok()
    {
        conn.shutdown().await;
    }
    Ok(outcome)
}

/// Renews this sender's certificate over the fresh session when it is due; one line on stdout
/// when something happened. A failure is reported, not fatal: the current certificate works
/// until it expires.
pub(crate) async fn renew(config: &SendConfig, conn: &mut SenderConn) {
    let outcome = crate::renew::renew_if_due(
        conn,
        &config.cert,
        &config.key,
        config.renew_before,
        config.rotate_key,
    )
    .await;
    match outcome {
        Ok(Renewed::NotDue) => {}
        Ok(Renewed::Renewed { not_after, rotated }) => println!(
            "certificate renewed{} by {}, valid until {}",
            if rotated { " with a new key" } else { "" },
            config.receiver,
            humantime_serde::re::humantime::format_rfc3339_seconds(not_after)
        ),
        Ok(Renewed::Refused(reason)) => {
            println!("certificate NOT renewed by {}: {reason}", config.receiver);
        }
        Err(err) => println!("certificate NOT renewed by {}: {err:#}", config.receiver),
    }
}

pub(crate) fn job(dataset: &DatasetConfig) -> DatasetJob {
    DatasetJob {
        source: dataset.source.clone(),
        target: dataset.target.clone(),
        prefix: dataset.prefix.clone(),
        intermediates: dataset.intermediates,
        keep: dataset.keep.clone(),
        raw: dataset.raw,
    }
}

/// One hold tag per receiver, so replicating to two receivers keeps both bases.
pub(crate) fn hold_tag(server_name: &str) -> HoldTag {
    HoldTag::parse(&format!("zrep:{server_name}"))
        .or_else(|_| HoldTag::parse("zrep"))
        .unwrap_or_else(|_| unreachable!("`zrep` is a valid hold tag"))
}

pub(crate) fn session_is_broken(err: &ReplicationError) -> bool {
    matches!(
        err,
        ReplicationError::Transport(_)
            | ReplicationError::PeerError { .. }
            | ReplicationError::CommitTimeout(_)
            | ReplicationError::Usage(_)
            | ReplicationError::Unexpected(_)
    )
}

pub(crate) fn success_line(done: &Replicated, receiver: &str) -> String {
    let secs = done.elapsed.as_secs_f64();
    let resumed = match &done.resumed {
        Some((snapshot, bytes)) => {
            format!("; first finished the interrupted stream of @{snapshot} ({bytes} bytes)")
        }
        None => String::new(),
    };
    let kind = match &done.shape {
        StreamShape::UpToDate => {
            return format!(
                "{} already on {receiver} (nothing to send{resumed})",
                done.snapshot
            );
        }
        StreamShape::Full => "full".to_owned(),
        StreamShape::Incremental {
            base,
            intermediates,
            from_bookmark,
        } => {
            let flag = if *intermediates { "-I" } else { "-i" };
            let mark = if *from_bookmark { '#' } else { '@' };
            format!("{flag} from {mark}{base}")
        }
    };
    format!(
        "{} replicated to {receiver} ({} bytes in {secs:.1} s, {kind}, {} bytes on the wire{resumed})",
        done.snapshot, done.stream_bytes, done.wire_bytes
    )
}

pub(crate) async fn connect(
    config: &SendConfig,
    connector: &Connector,
    caps: &zrep_zfs::Capabilities,
) -> anyhow::Result<SenderConn> {
    let limit = config.connect_timeout;
    let work = async {
        let tcp = TcpStream::connect(&config.receiver)
            .await
            .with_context(|| format!("connecting to {}", config.receiver))?;
        let _ = tcp.set_nodelay(true);
        let tls = connector
            .connect(&config.server_name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", config.server_name))?;
        let (reader, writer) = tokio::io::split(tls);
        let mut session_config = SessionConfig::default();
        session_config.software = concat!("zrep-send ", env!("CARGO_PKG_VERSION")).to_owned();
        session_config.features = zrep_repl::session_features(caps).with_renew(true);
        let session = SenderSession::new(session_config, Duration::ZERO);
        let mut conn = Connection::new(
            session,
            reader,
            writer,
            Instant::now(),
            limit.max(Duration::from_secs(30)),
        );
        match conn.next_event().await {
            Ok(SenderEvent::Negotiated(n)) => {
                info!(version = n.version, peer = %n.peer.software, "session established");
                Ok(conn)
            }
            Ok(SenderEvent::PeerError { code, message }) => Err(anyhow!(
                "the receiver refused the session ({code}): {message}"
            )),
            Ok(other) => Err(anyhow!(
                "unexpected first answer from the receiver: {other:?}"
            )),
            // In TLS 1.3 a refused client certificate shows up on the first read.
            Err(err) => Err(anyhow!("the receiver closed the session: {err}")),
        }
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        warn!(after = ?limit, "connecting timed out");
        Err(anyhow!(
            "connecting to {} timed out after {limit:?}",
            config.receiver
        ))
    })
}
