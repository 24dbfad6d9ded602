//! The receiving side of a session: answers state requests, checks offers, runs `zfs receive`
//! into the peer's own subtree, and answers `committed` only after it verified the result.
//!
//! Every target name is derived here: `<peer root>/<relative name>`, where the relative name
//! comes from the peer and is parsed into a [`RelativeName`] (no `..`, `@`, `#`, `%`, empty
//! components or control characters). There is no path by which a peer names anything outside
//! its root, and nothing a peer sends makes this side destroy, roll back or overwrite (`-F`)
//! anything. The one destructive step is the receiver's own retention
//! ([`ReceiverPolicy::retention`]): after a commit, zrep-named snapshots of that target that
//! the receiver's policy lets go are destroyed, never the newest one.
//!
//! What lands is what was offered: every stream passes the stream guard (`pump`) before it
//! reaches `zfs receive`, and a transfer that does not commit leaves nothing behind
//! (`landing`).
//!
//! Modules: this one, the session loop and the policy; `offer`, whether an offer is taken and
//! which stream it lets through; `pump`, the stream guard feeding `zfs receive`; `landing`,
//! sealing, verification and undo; `retention`, the receiver's own pruning; `shared`, what
//! all sessions share (per-target locks, metrics).

mod landing;
mod offer;
mod pump;
mod retention;
mod shared;

pub use self::retention::{Retention, prune_target};
pub use self::shared::{ReceiverMetrics, TargetCounters, TargetGuard, TargetLocks};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};
use zrep_proto::{
    AbortResumeOutcome, ErrorCode, FailureCode, ReceiverEvent, ReceiverSide, RefusalCode,
    TargetState, TransferOffer,
};
use zrep_zfs::received::{is_read_only, resume_token, seal_tree};
use zrep_zfs::{DatasetName, RelativeName, Zfs, ZfsError};

use self::landing::{Partial, finalize, undo};
use self::offer::{Accepted, accept, expectation};
use self::pump::{PumpSpec, Pumped, pump};

use crate::transport::{Connection, TransportError};

/// What one peer may do, and how long the receiver waits.
#[derive(Debug, Clone)]
pub struct ReceiverPolicy {
    /// The peer's name, for logs.
    pub peer: String,
    /// Everything this peer sends lands below here.
    pub root: DatasetName,
    /// Limit for one write into `zfs receive` (a stalled receive is abandoned).
    pub write_timeout: Duration,
    /// Shared per-target locks.
    pub locks: TargetLocks,
    /// Test hook: drop the connection once, after a verified receive and before the commit
    /// answer, to exercise the sender's lost-answer recovery.
    pub drop_next_commit_answer: Arc<AtomicBool>,
    /// This receiver's retention for the peer's targets, applied after each commit; `None`
    /// keeps everything.
    pub retention: Option<Retention>,
    /// Counters for the metrics endpoint, shared by all sessions.
    pub metrics: ReceiverMetrics,
    /// Test builds only: let streams reach `zfs receive` uninspected, to show that the receive
    /// options alone keep forged properties out. Never set in a release build.
    pub danger_skip_stream_inspection: bool,
}

impl ReceiverPolicy {
    /// A policy for `peer` below `root`: its own locks and counters, no retention, 600 s for a
    /// write into `zfs receive`, no test hooks. Set the other fields as needed.
    pub fn new(peer: impl Into<String>, root: DatasetName) -> Self {
        Self {
            peer: peer.into(),
            root,
            write_timeout: Duration::from_secs(600),
            locks: TargetLocks::default(),
            drop_next_commit_answer: Arc::default(),
            retention: None,
            metrics: ReceiverMetrics::default(),
            danger_skip_stream_inspection: false,
        }
    }
}

impl From<TransportError> for ServeError {
    /// The peer's error frame reads the same whether it came as an event or was found after a
    /// failed write.
    fn from(err: TransportError) -> Self {
        match err {
            TransportError::PeerClosed { code, message } => Self::Peer { code, message },
            other => Self::Transport(other),
        }
    }
}

/// Why a session ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The connection failed or the peer broke the protocol.
    #[error(transparent)]
    Transport(TransportError),
    /// The peer named a target that cannot be accepted; the session was closed.
    #[error("refused target name {name:?}: {reason}")]
    InvalidTarget {
        /// What the peer sent.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A local ZFS query failed while answering; the session was closed.
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    /// The peer ended the session with an error frame.
    #[error("the peer ended the session ({code}): {message}")]
    Peer {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The test hook dropped the connection before the commit answer.
    #[error("commit answer dropped by the test hook")]
    DroppedCommitAnswer,
    /// A protocol call was out of order: a bug in zrep.
    #[error("internal error")]
    Usage(#[from] zrep_proto::UsageError),
}

/// Signs a renewed certificate for the authenticated peer of a session.
pub trait Renewal: Send + Sync {
    /// A new certificate (DER) for the key of `csr` (DER), or why not (sent to the peer).
    fn renew(&self, csr: &[u8]) -> Result<Vec<u8>, String>;
}

/// Serves one authenticated peer until it says bye or the connection ends. Certificate
/// renewal requests are refused; see [`serve_with_renewal`].
pub async fn serve<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<ReceiverSide, R, W>,
    policy: &ReceiverPolicy,
) -> Result<(), ServeError>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    serve_with_renewal(zfs, conn, policy, None).await
}

/// [`serve`], answering the peer's certificate renewal requests with `renewal` (refused when
/// `None`).
pub async fn serve_with_renewal<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<ReceiverSide, R, W>,
    policy: &ReceiverPolicy,
    renewal: Option<&dyn Renewal>,
) -> Result<(), ServeError>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let event = match conn.next_event().await {
            Ok(event) => event,
            Err(TransportError::Closed) if conn.session.is_closed() => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        match event {
            ReceiverEvent::Negotiated(n) => {
                debug!(peer = %policy.peer, version = n.version, "negotiated");
            }
            ReceiverEvent::StateRequested { target } => {
                let dataset = resolve(conn, policy, &target).await?;
                let state = conn.drive_while(target_state(zfs, &dataset, &target)).await;
                ended(conn)?;
                match state {
                    Ok(state) => conn.session.send_state(state)?,
                    Err(err) => {
                        conn.session.error(
                            ErrorCode::Internal,
                            format!("reading {target}: {}", zrep_chain::one_line(&err)),
                        );
                        conn.shutdown().await;
                        return Err(err.into());
                    }
                }
            }
            ReceiverEvent::TransferOffered(offer) => {
                // A graceful stop waits for the transfer's answer (see `stop_when_idle`).
                conn.set_busy(true);
                let received = receive_offer(zfs, conn, policy, offer).await;
                conn.set_busy(false);
                received?;
            }
            ReceiverEvent::AbortResumeRequested { target } => {
                let dataset = resolve(conn, policy, &target).await?;
                let outcome = conn.drive_while(abort_resume(zfs, policy, &dataset)).await;
                info!(peer = %policy.peer, target = %dataset, ?outcome, "abort-resume requested");
                ended(conn)?;
                conn.session.abort_resume_result(outcome)?;
            }
            ReceiverEvent::RenewRequested { csr } => {
                let answer = match renewal {
                    Some(renewal) => renewal.renew(&csr),
                    None => Err("this receiver does not renew certificates".to_owned()),
                };
                match answer {
                    Ok(certificate) => {
                        info!(peer = %policy.peer, "certificate renewed");
                        conn.session.renewed(certificate)?;
                    }
                    Err(reason) => {
                        warn!(peer = %policy.peer, %reason, "certificate renewal refused");
                        conn.session.renew_refused(reason)?;
                    }
                }
            }
            ReceiverEvent::Bye => {
                conn.shutdown().await;
                return Ok(());
            }
            ReceiverEvent::PeerError { code, message } => {
                return Err(ServeError::Peer { code, message });
            }
            other => return Err(violation(conn, &other, "outside a transfer").await),
        }
    }
}

/// After local work under [`Connection::drive_while`]: if the session ended meanwhile (stopped
/// from outside, the peer's error frame, a failed connection), why; the caller answers nothing.
fn ended<R, W>(conn: &mut Connection<ReceiverSide, R, W>) -> Result<(), ServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !conn.session.is_closed() {
        return Ok(());
    }
    Err(match conn.take_stashed() {
        Some(Err(err)) => err.into(),
        Some(Ok(ReceiverEvent::PeerError { code, message })) => ServeError::Peer { code, message },
        _ => TransportError::Closed.into(),
    })
}

/// Closes the session after an event the protocol does not allow `context`.
async fn violation<R, W>(
    conn: &mut Connection<ReceiverSide, R, W>,
    event: &ReceiverEvent,
    context: &str,
) -> ServeError
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let message = format!("unexpected {event:?} {context}");
    conn.session
        .error(ErrorCode::ProtocolViolation, message.clone());
    conn.shutdown().await;
    ServeError::Peer {
        code: ErrorCode::ProtocolViolation,
        message,
    }
}

/// `<root>/<relative>`, or a closed session with a clear error.
async fn resolve<R, W>(
    conn: &mut Connection<ReceiverSide, R, W>,
    policy: &ReceiverPolicy,
    relative: &str,
) -> Result<DatasetName, ServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match target_dataset(&policy.root, relative) {
        Ok(dataset) => Ok(dataset),
        Err(reason) => {
            warn!(peer = %policy.peer, target = relative, %reason, "refused target name");
            conn.session.error(
                ErrorCode::NotAuthorized,
                format!("target {relative:?} refused: {reason}"),
            );
            conn.shutdown().await;
            Err(ServeError::InvalidTarget {
                name: relative.to_owned(),
                reason,
            })
        }
    }
}

/// The dataset a peer's relative name stands for, strictly inside its root.
pub fn target_dataset(root: &DatasetName, relative: &str) -> Result<DatasetName, String> {
    let relative = RelativeName::parse(relative).map_err(|e| e.to_string())?;
    // A target that spells out the root would land in a second copy below it
    // (`<root>/<root>/data`): almost always a newcomer's mistake, never silently accepted.
    let root_parts: Vec<&str> = root.as_str().split('/').collect();
    let parts: Vec<&str> = relative.components().collect();
    if parts.len() > root_parts.len() && parts[..root_parts.len()] == root_parts[..] {
        return Err(format!(
            "it repeats this peer's root {root}; targets are relative to the root: target = \"{}\"",
            parts[root_parts.len()..].join("/")
        ));
    }
    let dataset = root.join(&relative).map_err(|e| e.to_string())?;
    // Belt and braces: the name rules already make escaping impossible.
    if !dataset.is_within(root) || dataset == *root {
        return Err(format!("{dataset} is not below {root}"));
    }
    Ok(dataset)
}

async fn target_state<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetName,
    relative: &str,
) -> Result<TargetState, ZfsError> {
    let mut state = TargetState {
        target: relative.to_owned(),
        ..TargetState::default()
    };
    if !zfs.exists(dataset).await? {
        return Ok(state);
    }
    state.exists = true;
    state.snapshots = crate::plan::to_wire(&zfs.list_snapshots(dataset, false).await?);
    state.read_only = is_read_only(zfs, dataset).await?;
    state.resume_token = resume_token(zfs, dataset).await?;
    Ok(state)
}

/// Seals every peer root at start-up: anything below a root that is writable or mounted
/// (left by an older zrep-recv, or changed by hand) is made read-only and unmounted, each fix
/// logged. A root that does not exist yet is skipped.
pub async fn seal_roots<Z: Zfs>(
    zfs: &Z,
    roots: impl IntoIterator<Item = (String, DatasetName)>,
) -> Result<(), ZfsError> {
    for (peer, root) in roots {
        for (dataset, fixes) in seal_tree(zfs, &root).await? {
            for fix in fixes {
                warn!(%peer, %dataset, %fix, "sealed a dataset under a peer root");
            }
        }
    }
    Ok(())
}

/// Checks an offer, runs the receive, verifies and answers.
async fn receive_offer<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<ReceiverSide, R, W>,
    policy: &ReceiverPolicy,
    offer: TransferOffer,
) -> Result<(), ServeError>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let accepted = accept(zfs, conn, policy, &offer).await;
    ended(conn)?;
    let Accepted {
        dataset,
        snapshot,
        before,
        _guard,
    } = match accepted {
        Ok(accepted) => accepted,
        Err((code, message)) => {
            info!(peer = %policy.peer, target = %offer.target, %code, %message, "offer refused");
            policy.metrics.refused(&policy.peer, &offer.target);
            conn.session.refuse(code, message)?;
            return Ok(());
        }
    };
    let incoming = conn.session.accept()?;
    info!(peer = %policy.peer, target = %dataset, snapshot = %offer.snapshot, "receiving");
    let spec = PumpSpec {
        dataset: &dataset,
        expect: expectation(&offer, &before),
        write_timeout: policy.write_timeout,
        danger_skip_inspection: policy.danger_skip_stream_inspection,
    };
    let outcome = pump(zfs, conn, spec, incoming).await;
    let mut received = 0;
    let verdict = match outcome {
        Pumped::Lost { error, whole } => {
            // No connection left to drive. A resumable state is kept only where something is
            // left to resume: after the whole stream, it would replay what was never verified.
            undo(zfs, &policy.peer, &dataset, &before, Partial::unless(whole)).await;
            return Err(error);
        }
        Pumped::Aborted { message, whole } => {
            Err((FailureCode::Aborted, message, Partial::unless(whole)))
        }
        Pumped::Failed((code, message)) => Err((code, message, Partial::Keep)),
        Pumped::Refused(message) => Err((FailureCode::StreamRefused, message, Partial::Discard)),
        Pumped::Received { bytes, summary } => {
            received = bytes;
            conn.drive_while(finalize(
                zfs,
                &dataset,
                &snapshot,
                offer.guid,
                summary.as_ref(),
            ))
            .await
            .map_err(|(code, message)| (code, message, Partial::Discard))
        }
    };
    if let Err(err) = ended(conn) {
        // The session ended while ZFS worked: nobody is left to answer, and nothing
        // unanswered stays.
        undo(zfs, &policy.peer, &dataset, &before, Partial::Discard).await;
        return Err(err);
    }
    match verdict {
        Ok(()) => {
            if policy.drop_next_commit_answer.swap(false, Ordering::SeqCst) {
                warn!(peer = %policy.peer, target = %dataset, "test hook: dropping the commit answer");
                return Err(ServeError::DroppedCommitAnswer);
            }
            info!(peer = %policy.peer, snapshot = %snapshot, guid = offer.guid, "committed");
            policy
                .metrics
                .committed(&policy.peer, &offer.target, received);
            conn.session.committed(offer.snapshot, offer.guid)?;
            if let Some(retention) = &policy.retention {
                // Answer first, then prune while still holding the target's lock.
                let flushed = conn.flush().await;
                let prune = prune_target(zfs, policy, retention, &dataset, SystemTime::now());
                conn.drive_while(prune).await;
                flushed?;
            }
        }
        Err((code, message, partial)) => {
            warn!(peer = %policy.peer, target = %dataset, %code, %message, "transfer failed");
            policy.metrics.failed(&policy.peer, &offer.target);
            // Answer first: the session then drains the rest of a refused stream. The peer's
            // next request is served only after the undo.
            conn.session.failed(code, message)?;
            conn.drive_while(undo(zfs, &policy.peer, &dataset, &before, partial))
                .await;
        }
    }
    Ok(())
}

fn classify_failure(err: &ZfsError) -> (FailureCode, String) {
    let text = zrep_chain::one_line(err);
    let code = match err {
        ZfsError::NoSpace { .. } => FailureCode::NoSpace,
        _ => FailureCode::ZfsReceive,
    };
    let hint = match err {
        ZfsError::DestinationModified { .. } => {
            " (the target was changed on the receiver since its newest snapshot; roll it back there)"
        }
        _ => "",
    };
    (code, format!("{text}{hint}"))
}

async fn abort_resume<Z: Zfs>(
    zfs: &Z,
    policy: &ReceiverPolicy,
    dataset: &DatasetName,
) -> AbortResumeOutcome {
    if !zfs.capabilities().resumable_receive {
        return AbortResumeOutcome::Refused {
            code: RefusalCode::Unsupported,
            message: "this receiver's ZFS has no resumable receive".into(),
        };
    }
    let Some(_guard) = policy.locks.try_lock(dataset) else {
        return AbortResumeOutcome::Refused {
            code: RefusalCode::Busy,
            message: "a transfer to this target is running".into(),
        };
    };
    let token = resume_token(zfs, dataset).await.ok().flatten();
    if token.is_none() {
        return AbortResumeOutcome::NothingToDiscard;
    }
    match zfs.abort_resumable_receive(dataset).await {
        Ok(()) => AbortResumeOutcome::Discarded,
        Err(err) => AbortResumeOutcome::Refused {
            code: RefusalCode::NotPermitted,
            message: zrep_chain::one_line(&err),
        },
    }
}
