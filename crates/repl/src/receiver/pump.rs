//! Feeds an accepted stream into `zfs receive`, through the stream guard: every byte is
//! inspected ([`StreamInspector`]) before it may reach `zfs receive`, and the stream's last
//! record is held back until the sender's end-of-stream (byte count and checksum) was verified,
//! so `zfs receive` never completes a stream that was not.
//!
//! `zfs receive` starts only once the first BEGIN record was checked: a stream of the wrong shape
//! never starts one, and its options (which properties to force) follow the stream's kind of
//! dataset.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;
use zrep_proto::{FailureCode, IncomingStream, ReceiverEvent, ReceiverSide};
use zrep_zfs::received::untrusted_receive;
use zrep_zfs::stream::{
    ObjectKind, RECORD_LEN, StreamExpectation, StreamInspector, StreamRefusal, StreamSummary,
};
use zrep_zfs::{DatasetKind, DatasetName, ReceiveSink, Zfs};

use super::{ServeError, classify_failure, violation};
use crate::transport::Connection;

/// How a pumped stream ended.
pub(super) enum Pumped {
    /// The verified stream went whole into `zfs receive`, which succeeded.
    Received {
        /// Stream bytes.
        bytes: u64,
        /// What the stream created, by its records.
        summary: Option<StreamSummary>,
    },
    /// Inspection refused the stream; the refused part never reached `zfs receive`.
    Refused(String),
    /// The sender aborted the stream.
    Aborted {
        message: String,
        /// The whole stream had arrived: a resumable state would hold nothing left to resume.
        whole: bool,
    },
    /// The connection failed, or the peer ended the session or broke the protocol.
    Lost { error: ServeError, whole: bool },
    /// `zfs receive` failed, stalled or could not start.
    Failed((FailureCode, String)),
}

/// What [`pump`] needs besides the connection.
pub(super) struct PumpSpec<'a> {
    pub dataset: &'a DatasetName,
    pub expect: StreamExpectation,
    /// Limit for one write into `zfs receive`.
    pub write_timeout: Duration,
    /// Test builds only: let every stream through unexamined, to prove the receive options
    /// alone keep a forged property out.
    pub danger_skip_inspection: bool,
}

/// Feeds data events into `zfs receive` until the stream ends. `incoming`, the stream's half
/// from the accept, opens each chunk and checks the sender's byte count and checksum.
pub(super) async fn pump<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<ReceiverSide, R, W>,
    spec: PumpSpec<'_>,
    mut incoming: IncomingStream,
) -> Pumped
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut guard = Guard::new(spec.expect.clone(), spec.danger_skip_inspection);
    let mut sink: Option<ReceiveSink> = None;
    loop {
        let event = match conn.next_event().await {
            Ok(event) => event,
            Err(err) => {
                // End the stream instead of killing zfs receive: with `-s` the part received so
                // far is kept with a resume token. The held-back last record never reaches it.
                finish_quietly(sink).await;
                return Pumped::Lost {
                    error: err.into(),
                    whole: guard.whole(),
                };
            }
        };
        match event {
            ReceiverEvent::Data(chunk) => {
                let bytes = match incoming.open(&chunk) {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        finish_quietly(sink).await;
                        return Pumped::Lost {
                            error: conn.reject_stream(err).await.into(),
                            whole: guard.whole(),
                        };
                    }
                };
                let admitted = match guard.admit(&bytes) {
                    Ok(admitted) => admitted,
                    Err(refusal) => {
                        // zfs receive must be gone before the transfer is undone: it would
                        // hold the target busy, or finish behind the undo's back.
                        finish_quietly(sink).await;
                        return Pumped::Refused(refusal.to_string());
                    }
                };
                if admitted > 0 {
                    let chunk = guard.take(admitted);
                    if let Err(failed) = feed(zfs, &mut sink, &spec, &guard, &chunk).await {
                        return failed;
                    }
                }
            }
            ReceiverEvent::StreamEnded(announced) => {
                if let Err(err) = incoming.finish(announced) {
                    finish_quietly(sink).await;
                    return Pumped::Lost {
                        error: conn.reject_stream(err).await.into(),
                        whole: guard.whole(),
                    };
                }
                let bytes = announced.bytes;
                let summary = match guard.finish() {
                    Ok(summary) => summary,
                    Err(refusal) => {
                        // zfs receive must be gone before the transfer is undone: it would
                        // hold the target busy, or finish behind the undo's back.
                        finish_quietly(sink).await;
                        return Pumped::Refused(refusal.to_string());
                    }
                };
                let rest = guard.take_all();
                if let Err(failed) = feed(zfs, &mut sink, &spec, &guard, &rest).await {
                    return failed;
                }
                debug!(bytes, "stream ended, waiting for zfs receive");
                let Some(sink) = sink else {
                    unreachable!("feed() started zfs receive")
                };
                return match conn.drive_while(sink.finish()).await {
                    Ok(()) => Pumped::Received { bytes, summary },
                    Err(err) => Pumped::Failed(classify_failure(&err)),
                };
            }
            ReceiverEvent::StreamAborted { message } => {
                // As above: a resumable receive keeps what it got.
                finish_quietly(sink).await;
                return Pumped::Aborted {
                    message,
                    whole: guard.whole(),
                };
            }
            ReceiverEvent::PeerError { code, message } => {
                finish_quietly(sink).await;
                return Pumped::Lost {
                    error: ServeError::Peer { code, message },
                    whole: guard.whole(),
                };
            }
            other => {
                finish_quietly(sink).await;
                return Pumped::Lost {
                    error: violation(conn, &other, "during a stream").await,
                    whole: guard.whole(),
                };
            }
        }
    }
}

/// Writes released bytes into `zfs receive`, starting it on first use with the options for the
/// stream's kind of dataset. A failure is the transfer's outcome; `zfs receive` is then gone.
async fn feed<Z: Zfs>(
    zfs: &Z,
    sink: &mut Option<ReceiveSink>,
    spec: &PumpSpec<'_>,
    guard: &Guard,
    bytes: &[u8],
) -> Result<(), Pumped> {
    if sink.is_none() {
        let kind = match guard.kind() {
            Some(ObjectKind::Volume) => DatasetKind::Volume,
            // Unknown only when inspection is skipped: the filesystem options, the stricter.
            Some(ObjectKind::Filesystem) | None => DatasetKind::Filesystem,
        };
        let request = untrusted_receive(zfs.capabilities(), spec.dataset.clone(), kind);
        let started = zfs.receive(&request).await.map_err(|err| {
            Pumped::Failed((
                FailureCode::Internal,
                format!("cannot start zfs receive: {}", zrep_chain::one_line(&err)),
            ))
        })?;
        *sink = Some(started);
    }
    let Some(running) = sink.as_mut() else {
        unreachable!("started just above")
    };
    match tokio::time::timeout(spec.write_timeout, running.writer.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        // zfs receive stopped reading: it exited, and its status says why.
        Ok(Err(_)) => {
            let outcome = match sink.take() {
                Some(exited) => exited.finish().await,
                None => Ok(()),
            };
            Err(Pumped::Failed(match outcome {
                Err(err) => classify_failure(&err),
                Ok(()) => (
                    FailureCode::Internal,
                    "zfs receive exited before the stream ended".into(),
                ),
            }))
        }
        Err(_) => {
            // Ended as any abandoned receive (its input closed, killed if it does not exit in
            // the driver's bound) and reaped, before anything undoes the transfer.
            finish_quietly(sink.take()).await;
            Err(Pumped::Failed((
                FailureCode::Internal,
                format!("zfs receive accepted no data for {:?}", spec.write_timeout),
            )))
        }
    }
}

async fn finish_quietly(sink: Option<ReceiveSink>) {
    if let Some(sink) = sink {
        let _ = sink.finish().await;
    }
}

/// The stream guard: the inspector and the bytes it has not released yet (at most two records).
struct Guard {
    inspector: StreamInspector,
    skip: bool,
    /// Stream bytes inspected so far.
    fed: u64,
    /// Stream bytes released to `zfs receive`.
    released: u64,
    /// The bytes from `released` to `fed`.
    held: Vec<u8>,
}

impl Guard {
    fn new(expect: StreamExpectation, skip: bool) -> Self {
        Self {
            inspector: StreamInspector::new(expect),
            skip,
            fed: 0,
            released: 0,
            held: Vec::new(),
        }
    }

    /// Inspects `bytes`; returns how many held bytes may go to `zfs receive` now: what the
    /// inspector cleared, minus the stream's last record.
    fn admit(&mut self, bytes: &[u8]) -> Result<usize, StreamRefusal> {
        self.held.extend_from_slice(bytes);
        self.fed += bytes.len() as u64;
        let cleared = match self.inspector.feed(bytes) {
            Ok(cleared) => cleared,
            Err(_) if self.skip => self.fed,
            Err(refusal) => return Err(refusal),
        };
        let releasable = cleared.min(self.fed.saturating_sub(RECORD_LEN as u64));
        Ok(usize::try_from(releasable.saturating_sub(self.released)).unwrap_or(usize::MAX))
    }

    /// The stream ended: it must have ended exactly after its final record.
    fn finish(&self) -> Result<Option<StreamSummary>, StreamRefusal> {
        match self.inspector.finish() {
            Ok(summary) => Ok(Some(summary)),
            Err(_) if self.skip => Ok(None),
            Err(refusal) => Err(refusal),
        }
    }

    /// Whether everything up to the stream's final record has arrived.
    fn whole(&self) -> bool {
        self.inspector.finish().is_ok()
    }

    fn kind(&self) -> Option<ObjectKind> {
        self.inspector.object_kind()
    }

    /// Releases the first `n` held bytes.
    fn take(&mut self, n: usize) -> Vec<u8> {
        self.released += n as u64;
        let rest = self.held.split_off(n);
        std::mem::replace(&mut self.held, rest)
    }

    fn take_all(&mut self) -> Vec<u8> {
        self.take(self.held.len())
    }
}
