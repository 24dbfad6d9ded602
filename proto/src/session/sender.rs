//! The sender side: drives the conversation (plan, offer, stream, wait for the commit).

use std::time::Duration;

use super::{Session, SessionConfig, Side};
use crate::codes::{ErrorCode, FailureCode, RefusalCode};
use crate::error::{ProtoError, UsageError};
use crate::frame::Frame;
use crate::handshake::Negotiated;
use crate::message::{AbortResumeOutcome, Message, StreamKind, TargetState, TransferOffer};
use crate::pairing::{EnrollRequest, Enrolment, PairMessage};
use crate::stream::{OutgoingStream, StreamSummary};
use crate::types::Role;

/// What the sender runtime learns from the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// The handshake completed; the session is ready for requests.
    Negotiated(Negotiated),
    /// Answer to [`SenderSession::request_state`]; ready again.
    State(TargetState),
    /// The offer was accepted: take the stream's half with [`SenderSession::outgoing_stream`],
    /// write its chunks, then [`SenderSession::finish_stream`] (or
    /// [`SenderSession::abort_stream`]).
    Accepted,
    /// The offer was refused, nothing changed on the receiver; ready again.
    Refused {
        /// Why.
        code: RefusalCode,
        /// Receiver's explanation.
        message: String,
    },
    /// The snapshot is on the receiver with the offered GUID; ready again.
    Committed {
        /// Snapshot short name.
        snapshot: String,
        /// Its GUID (equal to the offer's; checked).
        guid: u64,
    },
    /// The transfer failed on the receiver; ready again. If this arrives while streaming, the
    /// session has already queued a stream abort: stop `zfs send` and drain `poll_transmit`.
    Failed {
        /// Why.
        code: FailureCode,
        /// Receiver's explanation (including ZFS's message).
        message: String,
    },
    /// Answer to [`SenderSession::abort_resume`]; ready again.
    AbortResumeAnswered {
        /// Target, as requested.
        target: String,
        /// What the receiver did.
        outcome: AbortResumeOutcome,
    },
    /// Answer to [`SenderSession::enroll`]: the certificate and the CA; ready again.
    Enrolled(Enrolment),
    /// Answer to [`SenderSession::renew`]: the new certificate (DER); ready again.
    Renewed {
        /// The certificate.
        certificate: Vec<u8>,
    },
    /// Answer to [`SenderSession::renew`]: refused, the old certificate stays; ready again.
    RenewRefused {
        /// Receiver's explanation.
        message: String,
    },
    /// The receiver sent an error frame and is closing; the session is closed.
    PeerError {
        /// Stable code.
        code: ErrorCode,
        /// Receiver's explanation.
        message: String,
    },
}

#[derive(Debug)]
enum State {
    AwaitHello,
    Ready,
    AwaitTarget { target: String },
    AwaitAnswer { offer: TransferOffer },
    Streaming { offer: TransferOffer },
    AwaitCommit { offer: TransferOffer, aborted: bool },
    AwaitAbortResume { target: String },
    AwaitEnrolment,
    AwaitRenewal,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::AwaitHello => "waiting for hello",
            Self::Ready => "ready",
            Self::AwaitTarget { .. } => "waiting for state",
            Self::AwaitAnswer { .. } => "waiting for accept or refuse",
            Self::Streaming { .. } => "streaming",
            Self::AwaitCommit { .. } => "waiting for commit",
            Self::AwaitAbortResume { .. } => "waiting for abort-resume result",
            Self::AwaitEnrolment => "waiting for the enrolment answer",
            Self::AwaitRenewal => "waiting for the renewal answer",
            Self::Closed => "closed",
        }
    }
}

/// The sender's conversation: plan, offer, stream, wait for the commit.
///
/// # Driving it
///
/// ```text
/// let mut s = SenderSession::new(config, now);        // hello is queued
/// loop {
///     while let Some(bytes) = s.poll_transmit(now) { socket.write_all(&bytes) }
///     if s.is_closed() { break }
///     select! {
///         n = socket.read_buf(&mut inbuf) =>            // n == 0: connection lost
///             while let Some(ev) = s.handle_bytes(&mut inbuf, now)? { act(ev) }
///         _ = sleep_until(s.poll_timeout()) => s.handle_timeout(now)?,
///     }
/// }
/// ```
///
/// `act` calls the request methods when the session [`is_ready`](Session::is_ready):
/// [`request_state`](Session::request_state), [`offer_transfer`](Session::offer_transfer),
/// [`abort_resume`](Session::abort_resume), or [`close`](Session::close) when done. After
/// [`SenderEvent::Accepted`] the runtime takes the stream's
/// [`outgoing_stream`](Session::outgoing_stream) half, reads `zfs send` in chunks of at most
/// [`MAX_CHUNK`](crate::MAX_CHUNK), builds frames with [`compress_chunk`](crate::compress_chunk)
/// (in parallel if it likes), and passes each chunk *in stream order* through
/// [`OutgoingStream::push`], which returns the bytes to write; then
/// [`finish_stream`](Session::finish_stream) with the half's summary. Data never queues inside
/// the session.
///
/// Any `Err` from `handle_*` means the session is closed with an error frame queued: write out
/// what `poll_transmit` returns, then close the connection. A lost connection while waiting for
/// the commit is recovered by a new session: plan again and look for the snapshot's GUID.
#[derive(Debug)]
pub struct SenderSide {
    state: State,
}

/// The sender's session.
pub type SenderSession = Session<SenderSide>;

impl_side!(SenderSide, SenderEvent, Role::Sender);

impl Session<SenderSide> {
    /// A new session; its hello is queued for `poll_transmit`.
    pub fn new(config: SessionConfig, now: Duration) -> Self {
        Self::with_side(
            config,
            SenderSide {
                state: State::AwaitHello,
            },
            now,
        )
    }

    /// Whether a new request (`request_state`, `offer_transfer`, `abort_resume`, `close`) can
    /// be made now.
    pub fn is_ready(&self) -> bool {
        matches!(self.side.state, State::Ready)
    }

    /// The offer being negotiated, streamed or committed, if any.
    pub fn current_offer(&self) -> Option<&TransferOffer> {
        match &self.side.state {
            State::AwaitAnswer { offer }
            | State::Streaming { offer, .. }
            | State::AwaitCommit { offer, .. } => Some(offer),
            _ => None,
        }
    }

    /// Asks for the receiver's state of `target` (relative dataset name). Answered by
    /// [`SenderEvent::State`].
    pub fn request_state(&mut self, target: impl Into<String>) -> Result<(), UsageError> {
        self.require_ready("request state")?;
        let target = target.into();
        self.core.queue_message(Message::StateRequest {
            target: target.clone(),
        })?;
        self.side.state = State::AwaitTarget { target };
        Ok(())
    }

    /// Offers a stream. Answered by [`SenderEvent::Accepted`] or [`SenderEvent::Refused`].
    ///
    /// The offer's compression, `raw` flag and resume kind must have been negotiated.
    pub fn offer_transfer(&mut self, offer: TransferOffer) -> Result<(), UsageError> {
        self.require_ready("offer a transfer")?;
        let n = self.core.negotiated_or("offer a transfer")?;
        if !n.supports(offer.compression) {
            return Err(UsageError::NotNegotiated {
                feature: "compression",
            });
        }
        if offer.raw && !n.raw_send {
            return Err(UsageError::NotNegotiated { feature: "raw" });
        }
        if matches!(offer.kind, StreamKind::Resume { .. }) && !n.resumable {
            return Err(UsageError::NotNegotiated { feature: "resume" });
        }
        self.core.queue_message(Message::Offer(offer.clone()))?;
        self.side.state = State::AwaitAnswer { offer };
        Ok(())
    }

    /// The writing half of the accepted stream, for the offer's compression. Only after
    /// [`SenderEvent::Accepted`], until [`finish_stream`](Self::finish_stream) or
    /// [`abort_stream`](Self::abort_stream).
    pub fn outgoing_stream(&self) -> Result<OutgoingStream, UsageError> {
        let State::Streaming { offer } = &self.side.state else {
            return Err(UsageError::WrongState {
                action: "send data",
                state: self.side.state.name(),
            });
        };
        Ok(OutgoingStream::new(offer.compression))
    }

    /// Ends the stream: queues the stream-end message with the byte count and checksum of the
    /// stream's [`OutgoingStream::summary`], then waits for [`SenderEvent::Committed`] or
    /// [`SenderEvent::Failed`]. Write every data frame first.
    pub fn finish_stream(&mut self, summary: StreamSummary) -> Result<StreamSummary, UsageError> {
        let state = self.side.state.name();
        let State::Streaming { offer } = &self.side.state else {
            return Err(UsageError::WrongState {
                action: "finish the stream",
                state,
            });
        };
        let offer = offer.clone();
        self.core.queue_message(Message::StreamEnd {
            bytes: summary.bytes,
            xxh3: summary.xxh3,
        })?;
        self.side.state = State::AwaitCommit {
            offer,
            aborted: false,
        };
        Ok(summary)
    }

    /// Cuts the stream short (e.g. `zfs send` failed). The receiver answers with
    /// [`SenderEvent::Failed`] (code `aborted`).
    pub fn abort_stream(&mut self, message: impl Into<String>) -> Result<(), UsageError> {
        let state = self.side.state.name();
        let State::Streaming { offer, .. } = &self.side.state else {
            return Err(UsageError::WrongState {
                action: "abort the stream",
                state,
            });
        };
        let offer = offer.clone();
        self.core.queue_message(Message::StreamAbort {
            message: message.into(),
        })?;
        self.side.state = State::AwaitCommit {
            offer,
            aborted: true,
        };
        Ok(())
    }

    /// Asks the receiver to discard the partial receive state of `target`. The receiver
    /// decides; answered by [`SenderEvent::AbortResumeAnswered`]. Needs the `resume` feature.
    pub fn abort_resume(&mut self, target: impl Into<String>) -> Result<(), UsageError> {
        self.require_ready("request abort-resume")?;
        if !self.core.negotiated_or("request abort-resume")?.resumable {
            return Err(UsageError::NotNegotiated { feature: "resume" });
        }
        let target = target.into();
        self.core.queue_message(Message::AbortResume {
            target: target.clone(),
        })?;
        self.side.state = State::AwaitAbortResume { target };
        Ok(())
    }

    /// Enrols with a pairing token (on a connection without client certificate); answered by
    /// [`SenderEvent::Enrolled`] or an error frame `pairing-refused`. Needs the `enroll`
    /// feature.
    pub fn enroll(&mut self, request: EnrollRequest) -> Result<(), UsageError> {
        self.require_ready("enrol")?;
        if !self.core.negotiated_or("enrol")?.enroll {
            return Err(UsageError::NotNegotiated { feature: "enroll" });
        }
        self.core
            .queue_frame(&Frame::Pairing(PairMessage::Enroll(request)))?;
        self.side.state = State::AwaitEnrolment;
        Ok(())
    }

    /// Asks for a new certificate for the key of `csr` (DER); answered by
    /// [`SenderEvent::Renewed`] or [`SenderEvent::RenewRefused`]. Needs the `renew` feature.
    pub fn renew(&mut self, csr: Vec<u8>) -> Result<(), UsageError> {
        self.require_ready("renew")?;
        if !self.core.negotiated_or("renew")?.renew {
            return Err(UsageError::NotNegotiated { feature: "renew" });
        }
        self.core
            .queue_frame(&Frame::Pairing(PairMessage::Renew { csr }))?;
        self.side.state = State::AwaitRenewal;
        Ok(())
    }

    /// Ends the session politely: queues `Bye` and closes.
    pub fn close(&mut self) -> Result<(), UsageError> {
        self.require_ready("close")?;
        self.core.queue_message(Message::Bye)?;
        self.core.closed = true;
        self.side.state = State::Closed;
        Ok(())
    }

    fn require_ready(&self, action: &'static str) -> Result<(), UsageError> {
        if self.core.closed || !self.is_ready() {
            return Err(UsageError::WrongState {
                action,
                state: self.side.state.name(),
            });
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<SenderEvent>, ProtoError> {
        match frame {
            Frame::Control(message) => self.on_message(message),
            Frame::Pairing(message) => self.on_pair_message(message),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, frame: &Frame) -> ProtoError {
        ProtoError::Unexpected {
            frame: frame.name(),
            state: self.side.state.name(),
        }
    }

    fn on_pair_message(&mut self, message: PairMessage) -> Result<Option<SenderEvent>, ProtoError> {
        let event = match (&self.side.state, message) {
            (State::AwaitEnrolment, PairMessage::Enrolled(enrolment)) => {
                SenderEvent::Enrolled(enrolment)
            }
            (State::AwaitRenewal, PairMessage::Renewed { certificate }) => {
                SenderEvent::Renewed { certificate }
            }
            (State::AwaitRenewal, PairMessage::RenewRefused { message }) => {
                SenderEvent::RenewRefused { message }
            }
            (state, message) => {
                return Err(ProtoError::Unexpected {
                    frame: message.name(),
                    state: state.name(),
                });
            }
        };
        self.side.state = State::Ready;
        Ok(Some(event))
    }

    fn on_message(&mut self, message: Message) -> Result<Option<SenderEvent>, ProtoError> {
        let state = std::mem::replace(&mut self.side.state, State::Closed);
        let (next, event) = match (state, message) {
            (State::AwaitTarget { target }, Message::State(st)) => {
                if st.target != target {
                    return Err(ProtoError::TargetMismatch {
                        expected: target,
                        got: st.target,
                    });
                }
                (State::Ready, SenderEvent::State(st))
            }
            (State::AwaitAnswer { offer }, Message::Accept) => {
                (State::Streaming { offer }, SenderEvent::Accepted)
            }
            (State::AwaitAnswer { .. }, Message::Refuse { code, message }) => {
                (State::Ready, SenderEvent::Refused { code, message })
            }
            (
                State::AwaitCommit {
                    offer,
                    aborted: false,
                },
                Message::Committed { snapshot, guid },
            ) => {
                if snapshot != offer.snapshot || guid != offer.guid {
                    return Err(ProtoError::CommitMismatch {
                        expected_snapshot: offer.snapshot,
                        expected_guid: offer.guid,
                        got_snapshot: snapshot,
                        got_guid: guid,
                    });
                }
                (State::Ready, SenderEvent::Committed { snapshot, guid })
            }
            (State::AwaitCommit { .. }, Message::Failed { code, message }) => {
                (State::Ready, SenderEvent::Failed { code, message })
            }
            (State::Streaming { .. }, Message::Failed { code, message }) => {
                // The receiver gave up early. Terminate our side of the stream so it knows
                // where the data in flight ends; it discards data until then.
                // A short control message always encodes.
                let _ = self.core.queue_message(Message::StreamAbort {
                    message: format!("receiver failed: {code}"),
                });
                (State::Ready, SenderEvent::Failed { code, message })
            }
            (
                State::AwaitAbortResume { target },
                Message::AbortResumeResult {
                    target: got,
                    outcome,
                },
            ) => {
                if got != target {
                    return Err(ProtoError::TargetMismatch {
                        expected: target,
                        got,
                    });
                }
                (
                    State::Ready,
                    SenderEvent::AbortResumeAnswered { target, outcome },
                )
            }
            (state, message) => {
                return Err(ProtoError::Unexpected {
                    frame: message.name(),
                    state: state.name(),
                });
            }
        };
        self.side.state = next;
        Ok(Some(event))
    }
}
