//! Control messages (the bodies of control frames) and the error frame body.
//!
//! All bodies are serde types encoded with one fixed bincode 2 configuration, [`BINCODE`]:
//! big-endian, fixed-size integers, at most
//! [`MAX_CONTROL_PAYLOAD`](crate::frame::MAX_CONTROL_PAYLOAD) bytes read. With it a `u16` is 2
//! bytes, `u32`/enum variant index 4, `u64` and every length 8; a `String` is its length followed
//! by UTF-8; an `Option` is one byte `0`/`1` followed by the value; a `bool` one byte. Fields are
//! encoded in declaration order; `PROTOCOL.md` lists them.
//!
//! Messages are plain data: their field layout is part of the protocol version. New message
//! variants are only ever appended to [`Message`], so old variant indices never change.

use serde::{Deserialize, Serialize};

pub use crate::codec::{BINCODE, BincodeConfig};
pub use crate::codes::{ErrorCode, FailureCode, RefusalCode};
pub use crate::types::Compression;

/// Longest human message carried in an error frame; longer ones are cut (at a char boundary).
pub const MAX_ERROR_MESSAGE: usize = 8 * 1024;

/// A control message. The comment on each variant gives its bincode variant index and who
/// sends it (S = sender, R = receiver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// 0, S→R: report the state of one target.
    StateRequest {
        /// Target dataset, relative to the receiver's root for this peer.
        target: String,
    },
    /// 1, R→S: answer to `StateRequest`.
    State(TargetState),
    /// 2, S→R: propose to send a stream.
    Offer(TransferOffer),
    /// 3, R→S: the offer is accepted; data frames may follow.
    Accept,
    /// 4, R→S: the offer is refused; nothing was changed on the receiver.
    Refuse {
        /// Why.
        code: RefusalCode,
        /// Human explanation.
        message: String,
    },
    /// 5, S→R: the stream is complete.
    StreamEnd {
        /// Number of uncompressed stream bytes sent.
        bytes: u64,
        /// XXH3-64 (seed 0) of the uncompressed stream.
        xxh3: u64,
    },
    /// 6, S→R: the stream is cut short (`zfs send` failed, or the receiver failed early).
    StreamAbort {
        /// Human explanation.
        message: String,
    },
    /// 7, R→S: `zfs receive` succeeded and the snapshot exists with the offered GUID.
    Committed {
        /// Short name of the received snapshot (after `@`).
        snapshot: String,
        /// Its GUID, as read back from the receiver's pool.
        guid: u64,
    },
    /// 8, R→S: the accepted transfer did not commit.
    Failed {
        /// Why.
        code: FailureCode,
        /// Human explanation, including what ZFS said.
        message: String,
    },
    /// 9, S→R: please discard the partial (resumable) receive state of a target.
    AbortResume {
        /// Target dataset.
        target: String,
    },
    /// 10, R→S: answer to `AbortResume`.
    AbortResumeResult {
        /// Target dataset, as in the request.
        target: String,
        /// What the receiver did.
        outcome: AbortResumeOutcome,
    },
    /// 11, S→R: the session is over; the receiver closes the connection.
    Bye,
}

impl Message {
    /// The variant name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::StateRequest { .. } => "StateRequest",
            Self::State(_) => "State",
            Self::Offer(_) => "Offer",
            Self::Accept => "Accept",
            Self::Refuse { .. } => "Refuse",
            Self::StreamEnd { .. } => "StreamEnd",
            Self::StreamAbort { .. } => "StreamAbort",
            Self::Committed { .. } => "Committed",
            Self::Failed { .. } => "Failed",
            Self::AbortResume { .. } => "AbortResume",
            Self::AbortResumeResult { .. } => "AbortResumeResult",
            Self::Bye => "Bye",
        }
    }
}

/// The receiver's view of one target dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    /// Target dataset, as in the request.
    pub target: String,
    /// Whether the dataset exists.
    pub exists: bool,
    /// Whether the dataset has `readonly=on`.
    pub read_only: bool,
    /// Its snapshots, oldest first (by `createtxg`). Empty if it does not exist.
    pub snapshots: Vec<SnapshotInfo>,
    /// The `receive_resume_token` of an interrupted resumable receive, if any.
    pub resume_token: Option<String>,
}

/// One snapshot as listed in a state report (and as the planning helper takes it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Short name, after the `@`.
    pub name: String,
    /// The ZFS `guid` property: identical on source and replica for the same snapshot.
    pub guid: u64,
    /// The `createtxg` property on the pool that holds it (orders snapshots on one side only).
    pub createtxg: u64,
    /// The `creation` property, seconds since the Unix epoch (for display).
    pub creation: u64,
}

/// What the sender proposes to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOffer {
    /// Target dataset, relative to the receiver's root for this peer.
    pub target: String,
    /// Short name of the snapshot the stream ends at (`S`).
    pub snapshot: String,
    /// GUID of `S` on the source; the receiver must find the same GUID after receiving.
    pub guid: u64,
    /// Full, incremental or resumed stream.
    pub kind: StreamKind,
    /// Compression the data frames may use (`Zstd` allows zstd *and* stored frames).
    pub compression: Compression,
    /// Whether the stream is raw (`zfs send -w`, encrypted data stays encrypted).
    pub raw: bool,
    /// Estimated stream size in bytes, for progress and space checks.
    pub size_estimate: Option<u64>,
}

/// The shape of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Variant 0: a full stream of `S`; the target must not exist.
    Full,
    /// Variant 1: an incremental stream from the snapshot with GUID `base_guid` to `S`.
    Incremental {
        /// GUID of the base; must be the target's newest snapshot.
        base_guid: u64,
        /// Name of the base on the source (a snapshot, or a bookmark when negotiated), for
        /// messages only.
        base_name: String,
        /// `true` for `zfs send -I` (all snapshots between base and `S`), `false` for `-i`.
        intermediates: bool,
    },
    /// Variant 2: the rest of an interrupted stream (`zfs send -t`); needs the `resume`
    /// feature.
    Resume {
        /// The receiver's resume token the stream continues from.
        token: String,
    },
}

/// What the receiver did about an `AbortResume` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AbortResumeOutcome {
    /// Variant 0: the partial state was discarded (`zfs receive -A`).
    Discarded,
    /// Variant 1: there was no partial state.
    NothingToDiscard,
    /// Variant 2: the receiver declined.
    Refused {
        /// Why.
        code: RefusalCode,
        /// Human explanation.
        message: String,
    },
}

/// Body of an error frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable code.
    pub code: ErrorCode,
    /// Human explanation.
    pub message: String,
}

impl ErrorFrame {
    /// An error frame body; `message` is cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PairMessage;

    /// The protocol has no message by which a sender destroys, rolls back or overwrites anything
    /// on the receiver. Both matches are exhaustive on purpose: a new message does not compile
    /// here until someone states what it may cause on the receiver.
    #[test]
    fn no_message_lets_a_sender_destroy_anything() {
        fn effect_on_receiver(message: &Message) -> &'static str {
            match message {
                Message::StateRequest { .. } => "reads a target's snapshots",
                Message::Offer(_) => "zfs receive without -F: adds a snapshot, never replaces",
                Message::StreamEnd { .. } | Message::StreamAbort { .. } => "ends a stream",
                Message::AbortResume { .. } => {
                    "discards an interrupted receive's partial state, never a snapshot"
                }
                Message::Bye => "ends the session",
                Message::State(_)
                | Message::Accept
                | Message::Refuse { .. }
                | Message::Committed { .. }
                | Message::Failed { .. }
                | Message::AbortResumeResult { .. } => "receiver to sender only",
            }
        }
        fn pairing_effect(message: &PairMessage) -> &'static str {
            match message {
                PairMessage::Enroll(_) | PairMessage::Renew { .. } => "issues a certificate",
                PairMessage::Enrolled(_)
                | PairMessage::Renewed { .. }
                | PairMessage::RenewRefused { .. } => "receiver to sender only",
            }
        }
        let every = [
            Message::StateRequest { target: "t".into() },
            Message::Offer(TransferOffer {
                target: "t".into(),
                snapshot: "s".into(),
                guid: 1,
                kind: StreamKind::Full,
                compression: crate::Compression::Zstd,
                raw: false,
                size_estimate: None,
            }),
            Message::StreamEnd { bytes: 0, xxh3: 0 },
            Message::StreamAbort {
                message: String::new(),
            },
            Message::AbortResume { target: "t".into() },
            Message::Bye,
        ];
        for message in &every {
            let effect = effect_on_receiver(message);
            for word in ["destroy", "rollback", "-F"] {
                assert!(!effect.contains(&format!("{word} ")), "{}", message.name());
            }
        }
        assert_eq!(
            pairing_effect(&PairMessage::Renew { csr: Vec::new() }),
            "issues a certificate"
        );
    }

    #[test]
    fn error_message_is_cut_at_a_char_boundary() {
        let e = ErrorFrame::new(ErrorCode::Internal, "é".repeat(MAX_ERROR_MESSAGE));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE);
        assert!(e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn unknown_codes_survive_decoding() {
        let bytes = bincode::serde::encode_to_vec(
            Message::Refuse {
                code: RefusalCode::Unknown(500),
                message: String::new(),
            },
            BINCODE,
        )
        .unwrap();
        let (back, _): (Message, usize) =
            bincode::serde::decode_from_slice(&bytes, BINCODE).unwrap();
        assert!(matches!(
            back,
            Message::Refuse {
                code: RefusalCode::Unknown(500),
                ..
            }
        ));
    }

    #[test]
    fn huge_length_claims_fail_without_allocating() {
        // StateRequest with a string length of 2^62.
        let mut bytes = vec![0, 0, 0, 0];
        bytes.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let r: Result<(Message, usize), _> = bincode::serde::decode_from_slice(&bytes, BINCODE);
        assert!(r.is_err());
        // State with a snapshot count of 2^62.
        let mut bytes = vec![0, 0, 0, 1];
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let r: Result<(Message, usize), _> = bincode::serde::decode_from_slice(&bytes, BINCODE);
        assert!(r.is_err());
    }
}
