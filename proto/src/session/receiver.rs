//! The receiver side: answers state requests and offers, checks the stream, reports commits.

use std::time::Duration;

use super::{Session, SessionConfig, Side};
use crate::codes::{ErrorCode, FailureCode, RefusalCode};
use crate::data::DataChunk;
use crate::error::{ProtoError, UsageError};
use crate::frame::Frame;
use crate::handshake::Negotiated;
use crate::message::{AbortResumeOutcome, Message, StreamKind, TargetState, TransferOffer};
use crate::pairing::{EnrollRequest, Enrolment, PairMessage};
use crate::stream::{IncomingStream, StreamSummary};
use crate::types::Role;

/// What the receiver runtime learns from the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// The handshake completed.
    Negotiated(Negotiated),
    /// The sender asks for the state of `target`: answer with
    /// [`ReceiverSession::send_state`].
    StateRequested {
        /// Target dataset, relative to this peer's root. Not validated: check it.
        target: String,
    },
    /// The sender offers a stream: answer with [`ReceiverSession::accept`] (after starting
    /// `zfs receive`) or [`ReceiverSession::refuse`].
    TransferOffered(TransferOffer),
    /// The next chunk of the stream, as the sender framed it: open it with the stream's
    /// [`IncomingStream`] half (from [`ReceiverSession::accept`]) and write its bytes to
    /// `zfs receive` before handling more input.
    Data(DataChunk),
    /// The sender says the stream is complete, with this byte count and checksum: check them
    /// with [`IncomingStream::finish`] (on a mismatch, [`Session::reject_stream`]), wait for
    /// `zfs receive`, check the snapshot's GUID, then call [`ReceiverSession::committed`] or
    /// [`ReceiverSession::failed`].
    StreamEnded(StreamSummary),
    /// The sender cut the stream short: stop `zfs receive` (its partial state stays if it was
    /// resumable) and call [`ReceiverSession::failed`] with code `aborted`.
    StreamAborted {
        /// Sender's explanation.
        message: String,
    },
    /// The sender asks to discard the partial receive state of `target`: decide, then call
    /// [`ReceiverSession::abort_resume_result`].
    AbortResumeRequested {
        /// Target dataset.
        target: String,
    },
    /// The sender asks to enrol with a pairing token (only on a session made with
    /// [`ReceiverSession::new_pairing_only`]): check the token's proof against the TLS session,
    /// sign the CSR, then call [`ReceiverSession::enrolled`] or
    /// [`ReceiverSession::refuse_enrollment`].
    EnrollRequested(EnrollRequest),
    /// The authenticated sender asks for a new certificate for the key in `csr` (DER): answer
    /// with [`ReceiverSession::renewed`] or [`ReceiverSession::renew_refused`].
    RenewRequested {
        /// The certificate signing request, DER. Not validated: check it.
        csr: Vec<u8>,
    },
    /// The sender is done; the session is closed.
    Bye,
    /// The sender sent an error frame and is closing; the session is closed.
    PeerError {
        /// Stable code.
        code: ErrorCode,
        /// Sender's explanation.
        message: String,
    },
}

#[derive(Debug)]
enum State {
    AwaitHello,
    Ready,
    AnsweringStateRequest {
        target: String,
    },
    Deciding {
        offer: TransferOffer,
    },
    Receiving {
        offer: TransferOffer,
    },
    /// Stream ended or aborted; waiting for the runtime's verdict.
    Committing {
        offer: TransferOffer,
        aborted: bool,
    },
    /// We reported failure before the stream ended: drop data until the sender's end/abort.
    Draining,
    AnsweringAbortResume {
        target: String,
    },
    AnsweringEnroll,
    AnsweringRenew,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::AwaitHello => "waiting for hello",
            Self::Ready => "ready",
            Self::AnsweringStateRequest { .. } => "answering a state request",
            Self::Deciding { .. } => "deciding on an offer",
            Self::Receiving { .. } => "receiving",
            Self::Committing { .. } => "committing",
            Self::Draining => "draining a failed stream",
            Self::AnsweringAbortResume { .. } => "answering an abort-resume request",
            Self::AnsweringEnroll => "answering an enrolment",
            Self::AnsweringRenew => "answering a renewal",
            Self::Closed => "closed",
        }
    }
}

/// The receiver's conversation: answer state requests and offers, take the stream, report
/// commits.
///
/// # Driving it
///
/// ```text
/// let mut r = ReceiverSession::new(config, now);      // hello is queued
/// loop {
///     while let Some(bytes) = r.poll_transmit(now) { socket.write_all(&bytes) }
///     if r.is_closed() { break }
///     select! {
///         n = socket.read_buf(&mut inbuf) =>            // n == 0: connection lost
///             while let Some(ev) = r.handle_bytes(&mut inbuf, now)? { act(ev) }
///         _ = sleep_until(r.poll_timeout()) => r.handle_timeout(now)?,
///         status = zfs_receive.wait() => r.committed(..) / r.failed(..),
///     }
/// }
/// ```
///
/// Each event that asks a question (`StateRequested`, `TransferOffered`, `StreamEnded`,
/// `StreamAborted`, `AbortResumeRequested`) is answered by exactly one method call; the sender
/// waits meanwhile, and heartbeats keep the connection alive however long ZFS takes. A
/// `zfs receive` that fails while data still arrives is reported with
/// [`failed`](Session::failed) at once; the session then discards the rest of the stream.
///
/// The stream's bytes are checked by the [`IncomingStream`] half that
/// [`accept`](Session::accept) returns, not by the session. Apply backpressure by writing each
/// [`ReceiverEvent::Data`] to `zfs receive` before reading more. While not reading the socket, do not call [`handle_timeout`](Session::handle_timeout):
/// the peer is not silent, we are not listening.
#[derive(Debug)]
pub struct ReceiverSide {
    state: State,
    /// The connection has no client certificate: only the enrolment exchange is allowed.
    pairing_only: bool,
}

/// The receiver's session.
pub type ReceiverSession = Session<ReceiverSide>;

impl_side!(ReceiverSide, ReceiverEvent, Role::Receiver);

impl Session<ReceiverSide> {
    /// A new session; its hello is queued for `poll_transmit`.
    pub fn new(config: SessionConfig, now: Duration) -> Self {
        Self::with_side(
            config,
            ReceiverSide {
                state: State::AwaitHello,
                pairing_only: false,
            },
            now,
        )
    }

    /// A session for a connection whose client presented no certificate: after the hellos,
    /// only the enrolment exchange is allowed; any control or data frame, and a renewal, is
    /// answered with ERROR `not-authorized` and closes the session. Announce the `enroll`
    /// feature in `config` for enrolment to be possible at all.
    pub fn new_pairing_only(config: SessionConfig, now: Duration) -> Self {
        let mut session = Self::new(config, now);
        session.side.pairing_only = true;
        session
    }

    /// Whether this session only allows the enrolment exchange (no client certificate).
    pub fn is_pairing_only(&self) -> bool {
        self.side.pairing_only
    }

    /// The offer being decided, received or committed, if any.
    pub fn current_offer(&self) -> Option<&TransferOffer> {
        match &self.side.state {
            State::Deciding { offer }
            | State::Receiving { offer, .. }
            | State::Committing { offer, .. } => Some(offer),
            _ => None,
        }
    }

    /// Answers [`ReceiverEvent::StateRequested`]. `state.target` must be the requested target.
    pub fn send_state(&mut self, state: TargetState) -> Result<(), UsageError> {
        let State::AnsweringStateRequest { target } = &self.side.state else {
            return Err(self.wrong_state("send state"));
        };
        if state.target != *target {
            return Err(UsageError::WrongTarget {
                expected: target.clone(),
                got: state.target,
            });
        }
        self.core.queue_message(Message::State(state))?;
        self.side.state = State::Ready;
        Ok(())
    }

    /// Accepts the offer of [`ReceiverEvent::TransferOffered`]; data follows. Returns the
    /// reading half of the stream, for the offer's compression.
    pub fn accept(&mut self) -> Result<IncomingStream, UsageError> {
        let State::Deciding { offer } = &self.side.state else {
            return Err(self.wrong_state("accept"));
        };
        let offer = offer.clone();
        self.core.queue_message(Message::Accept)?;
        let stream = IncomingStream::new(offer.compression);
        self.side.state = State::Receiving { offer };
        Ok(stream)
    }

    /// Refuses the offer of [`ReceiverEvent::TransferOffered`].
    pub fn refuse(
        &mut self,
        code: RefusalCode,
        message: impl Into<String>,
    ) -> Result<(), UsageError> {
        if !matches!(self.side.state, State::Deciding { .. }) {
            return Err(self.wrong_state("refuse"));
        }
        self.core.queue_message(Message::Refuse {
            code,
            message: message.into(),
        })?;
        self.side.state = State::Ready;
        Ok(())
    }

    /// Reports success after [`ReceiverEvent::StreamEnded`]: `zfs receive` succeeded and the
    /// target snapshot exists with this GUID (read back from the pool). Must equal the offer.
    pub fn committed(&mut self, snapshot: impl Into<String>, guid: u64) -> Result<(), UsageError> {
        let State::Committing {
            offer,
            aborted: false,
        } = &self.side.state
        else {
            return Err(self.wrong_state("commit"));
        };
        let snapshot = snapshot.into();
        if snapshot != offer.snapshot || guid != offer.guid {
            return Err(UsageError::CommitMismatch {
                expected_snapshot: offer.snapshot.clone(),
                expected_guid: offer.guid,
                got_snapshot: snapshot,
                got_guid: guid,
            });
        }
        self.core
            .queue_message(Message::Committed { snapshot, guid })?;
        self.side.state = State::Ready;
        Ok(())
    }

    /// Reports that the accepted transfer failed. Allowed after the stream ended or was aborted,
    /// and also while data still arrives (`zfs receive` died early): the rest of the stream is
    /// then discarded by the session.
    pub fn failed(
        &mut self,
        code: FailureCode,
        message: impl Into<String>,
    ) -> Result<(), UsageError> {
        let next = match self.side.state {
            State::Committing { .. } => State::Ready,
            State::Receiving { .. } => State::Draining,
            _ => return Err(self.wrong_state("report failure")),
        };
        self.core.queue_message(Message::Failed {
            code,
            message: message.into(),
        })?;
        self.side.state = next;
        Ok(())
    }

    /// Answers [`ReceiverEvent::AbortResumeRequested`].
    pub fn abort_resume_result(&mut self, outcome: AbortResumeOutcome) -> Result<(), UsageError> {
        let State::AnsweringAbortResume { target } = &self.side.state else {
            return Err(self.wrong_state("answer abort-resume"));
        };
        let target = target.clone();
        self.core
            .queue_message(Message::AbortResumeResult { target, outcome })?;
        self.side.state = State::Ready;
        Ok(())
    }

    /// Answers [`ReceiverEvent::EnrollRequested`]: the sender is registered, here is its
    /// certificate. The session is ready again (the sender normally closes it with `Bye`).
    pub fn enrolled(&mut self, enrolment: Enrolment) -> Result<(), UsageError> {
        if !matches!(self.side.state, State::AnsweringEnroll) {
            return Err(self.wrong_state("answer an enrolment"));
        }
        self.core
            .queue_frame(&Frame::Pairing(PairMessage::Enrolled(enrolment)))?;
        self.side.state = State::Ready;
        Ok(())
    }

    /// Refuses [`ReceiverEvent::EnrollRequested`]: sends ERROR `pairing-refused` with `message`
    /// (say why: unknown, expired, used or wrong token) and closes.
    pub fn refuse_enrollment(&mut self, message: impl Into<String>) -> Result<(), UsageError> {
        if !matches!(self.side.state, State::AnsweringEnroll) {
            return Err(self.wrong_state("refuse an enrolment"));
        }
        self.error(ErrorCode::PairingRefused, message);
        Ok(())
    }

    /// Answers [`ReceiverEvent::RenewRequested`] with the new certificate (DER).
    pub fn renewed(&mut self, certificate: Vec<u8>) -> Result<(), UsageError> {
        if !matches!(self.side.state, State::AnsweringRenew) {
            return Err(self.wrong_state("answer a renewal"));
        }
        self.core
            .queue_frame(&Frame::Pairing(PairMessage::Renewed { certificate }))?;
        self.side.state = State::Ready;
        Ok(())
    }

    /// Refuses [`ReceiverEvent::RenewRequested`]; the session goes on.
    pub fn renew_refused(&mut self, message: impl Into<String>) -> Result<(), UsageError> {
        if !matches!(self.side.state, State::AnsweringRenew) {
            return Err(self.wrong_state("refuse a renewal"));
        }
        self.core
            .queue_frame(&Frame::Pairing(PairMessage::RenewRefused {
                message: message.into(),
            }))?;
        self.side.state = State::Ready;
        Ok(())
    }

    fn wrong_state(&self, action: &'static str) -> UsageError {
        UsageError::WrongState {
            action,
            state: self.side.state.name(),
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<ReceiverEvent>, ProtoError> {
        let pairing_only = self.side.pairing_only;
        match frame {
            Frame::Data(_) if pairing_only => Err(ProtoError::PairingOnly { frame: "Data" }),
            Frame::Control(message) if pairing_only && message != Message::Bye => {
                Err(ProtoError::PairingOnly {
                    frame: message.name(),
                })
            }
            Frame::Pairing(message) => self.on_pair_message(message),
            Frame::Data(chunk) => match &self.side.state {
                State::Receiving { .. } => Ok(Some(ReceiverEvent::Data(chunk))),
                State::Draining => Ok(None),
                other => Err(ProtoError::Unexpected {
                    frame: "Data",
                    state: other.name(),
                }),
            },
            Frame::Control(message) => self.on_message(message),
            other => Err(ProtoError::Unexpected {
                frame: other.name(),
                state: self.side.state.name(),
            }),
        }
    }

    fn on_message(&mut self, message: Message) -> Result<Option<ReceiverEvent>, ProtoError> {
        let state = std::mem::replace(&mut self.side.state, State::Closed);
        let (next, event) = match (state, message) {
            (State::Ready, Message::StateRequest { target }) => (
                State::AnsweringStateRequest {
                    target: target.clone(),
                },
                Some(ReceiverEvent::StateRequested { target }),
            ),
            (State::Ready, Message::Offer(offer)) => {
                self.check_offer(&offer)?;
                (
                    State::Deciding {
                        offer: offer.clone(),
                    },
                    Some(ReceiverEvent::TransferOffered(offer)),
                )
            }
            (State::Ready, Message::AbortResume { target }) => {
                if !self.core.negotiated.as_ref().is_some_and(|n| n.resumable) {
                    return Err(ProtoError::NotNegotiated { feature: "resume" });
                }
                (
                    State::AnsweringAbortResume {
                        target: target.clone(),
                    },
                    Some(ReceiverEvent::AbortResumeRequested { target }),
                )
            }
            (State::Ready, Message::Bye) => {
                self.core.closed = true;
                (State::Closed, Some(ReceiverEvent::Bye))
            }
            (State::Receiving { offer }, Message::StreamEnd { bytes, xxh3 }) => (
                State::Committing {
                    offer,
                    aborted: false,
                },
                Some(ReceiverEvent::StreamEnded(StreamSummary { bytes, xxh3 })),
            ),
            (State::Receiving { offer, .. }, Message::StreamAbort { message }) => (
                State::Committing {
                    offer,
                    aborted: true,
                },
                Some(ReceiverEvent::StreamAborted { message }),
            ),
            // We already answered `Failed`; the sender's terminator closes the stream.
            (State::Draining, Message::StreamEnd { .. } | Message::StreamAbort { .. }) => {
                (State::Ready, None)
            }
            (state, message) => {
                return Err(ProtoError::Unexpected {
                    frame: message.name(),
                    state: state.name(),
                });
            }
        };
        self.side.state = next;
        Ok(event)
    }

    fn on_pair_message(
        &mut self,
        message: PairMessage,
    ) -> Result<Option<ReceiverEvent>, ProtoError> {
        let negotiated = self.core.negotiated.as_ref();
        match message {
            PairMessage::Enroll(request) if matches!(self.side.state, State::Ready) => {
                if !self.side.pairing_only {
                    // An authenticated peer has nothing to enrol: it renews.
                    return Err(ProtoError::Unexpected {
                        frame: "Enroll",
                        state: "ready on an authenticated connection",
                    });
                }
                if !negotiated.is_some_and(|n| n.enroll) {
                    return Err(ProtoError::NotNegotiated { feature: "enroll" });
                }
                self.side.state = State::AnsweringEnroll;
                Ok(Some(ReceiverEvent::EnrollRequested(request)))
            }
            PairMessage::Renew { .. } if self.side.pairing_only => {
                Err(ProtoError::PairingOnly { frame: "Renew" })
            }
            PairMessage::Renew { csr } if matches!(self.side.state, State::Ready) => {
                if !negotiated.is_some_and(|n| n.renew) {
                    return Err(ProtoError::NotNegotiated { feature: "renew" });
                }
                self.side.state = State::AnsweringRenew;
                Ok(Some(ReceiverEvent::RenewRequested { csr }))
            }
            other => Err(ProtoError::Unexpected {
                frame: other.name(),
                state: self.side.state.name(),
            }),
        }
    }

    /// An offer may only use what the handshake negotiated.
    fn check_offer(&self, offer: &TransferOffer) -> Result<(), ProtoError> {
        let Some(n) = self.core.negotiated.as_ref() else {
            return Err(ProtoError::Unexpected {
                frame: "Offer",
                state: "waiting for hello",
            });
        };
        if !n.supports(offer.compression) {
            return Err(ProtoError::NotNegotiated {
                feature: "compression",
            });
        }
        if offer.raw && !n.raw_send {
            return Err(ProtoError::NotNegotiated { feature: "raw" });
        }
        if matches!(offer.kind, StreamKind::Resume { .. }) && !n.resumable {
            return Err(ProtoError::NotNegotiated { feature: "resume" });
        }
        Ok(())
    }
}
