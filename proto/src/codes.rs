//! Stable numeric codes carried on the wire: error, refusal and failure codes.
//!
//! Each code is a `u16` on the wire. Codes are never renumbered or reused; new ones are added
//! with new numbers. A code this version does not know decodes to the `Unknown(n)` variant
//! instead of failing, so a newer peer can send new codes to an older one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Defines a `u16` wire code enum with an `Unknown(u16)` fallback and kebab-case names.
macro_rules! wire_code {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "u16", into = "u16")]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A code this version does not know (sent by a newer peer).
            Unknown(u16),
        }

        impl $name {
            /// The numeric code on the wire.
            pub fn code(self) -> u16 {
                match self {
                    $( Self::$variant => $code, )*
                    Self::Unknown(n) => n,
                }
            }

            /// Stable kebab-case name, for logs and exit reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                    Self::Unknown(_) => "unknown",
                }
            }

            /// Every known code, in numeric order.
            pub const ALL: &'static [$name] = &[$( Self::$variant, )*];
        }

        impl From<u16> for $name {
            fn from(code: u16) -> Self {
                match code {
                    $( $code => Self::$variant, )*
                    n => Self::Unknown(n),
                }
            }
        }

        impl From<$name> for u16 {
            fn from(code: $name) -> u16 {
                code.code()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    Self::Unknown(n) => write!(f, "unknown({n})"),
                    other => f.write_str(other.as_str()),
                }
            }
        }
    };
}

wire_code! {
    /// Code of an error frame: why the sender of the frame is closing the connection.
    ErrorCode {
        /// A frame or message arrived that the protocol does not allow in the current state.
        ProtocolViolation = 1 => "protocol-violation",
        /// A frame could not be decoded (bad header, size, body or data chunk).
        Malformed = 2 => "malformed",
        /// The protocol version ranges do not overlap.
        IncompatibleVersion = 3 => "incompatible-version",
        /// Both peers announced the same role.
        IncompatibleRole = 4 => "incompatible-role",
        /// The peer sent nothing (not even a heartbeat) within the idle timeout.
        Timeout = 5 => "timeout",
        /// Stream byte count or checksum did not match the stream-end message.
        StreamCorrupt = 6 => "stream-corrupt",
        /// The peer's identity is not allowed to talk to this side at all.
        NotAuthorized = 7 => "not-authorized",
        /// The process is shutting down.
        ShuttingDown = 8 => "shutting-down",
        /// An internal error of the side sending the frame.
        Internal = 9 => "internal",
        /// An enrolment was refused: unknown, expired, already used or wrong pairing token, or
        /// an unusable CSR. Nothing was registered.
        PairingRefused = 10 => "pairing-refused",
        /// The receiver serves as many authenticated sessions as it allows; try again later.
        Busy = 11 => "busy",
    }
}

wire_code! {
    /// Why the receiver refuses a transfer offer (or an abort-resume request).
    RefusalCode {
        /// Another transfer to the same target is running, or the receiver is at capacity.
        Busy = 1 => "busy",
        /// A full stream was offered but the target dataset already exists.
        TargetExists = 2 => "target-exists",
        /// The incremental base GUID is not the target's newest snapshot, or the target lacks it.
        BaseMismatch = 3 => "base-mismatch",
        /// The target was modified since its newest snapshot; receiving would need a rollback.
        TargetModified = 4 => "target-modified",
        /// The target name is not acceptable to the receiver.
        InvalidName = 5 => "invalid-name",
        /// The receiver's policy does not allow this peer to write this target (or to discard
        /// its partial state).
        NotPermitted = 6 => "not-permitted",
        /// The offer needs something the receiver does not support or allow (for example raw
        /// streams disabled by policy).
        Unsupported = 7 => "unsupported",
        /// A resume was offered but the token does not match the receiver's partial state.
        ResumeMismatch = 8 => "resume-mismatch",
        /// The target has a partial receive pending; resume it or ask to abort it first.
        ResumePending = 9 => "resume-pending",
        /// Not enough space for the announced stream.
        NoSpace = 10 => "no-space",
    }
}

wire_code! {
    /// Why an accepted transfer did not commit.
    FailureCode {
        /// `zfs receive` exited with an error; the message carries its output.
        ZfsReceive = 1 => "zfs-receive",
        /// `zfs receive` succeeded but the target snapshot is missing or has another GUID.
        GuidMismatch = 2 => "guid-mismatch",
        /// The sender aborted the stream.
        Aborted = 3 => "aborted",
        /// The receiver ran out of space.
        NoSpace = 4 => "no-space",
        /// Any other receiver-side error (could not start `zfs receive`, I/O error, ...).
        Internal = 5 => "internal",
        /// The stream is not of the offered and agreed shape (compound, clone, dedup, another
        /// snapshot or base, features not agreed): refused before that part reached
        /// `zfs receive`, and whatever this transfer had applied was undone.
        StreamRefused = 6 => "stream-refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_u16() {
        for &c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from(c.code()), c);
        }
        for &c in RefusalCode::ALL {
            assert_eq!(RefusalCode::from(c.code()), c);
        }
        for &c in FailureCode::ALL {
            assert_eq!(FailureCode::from(c.code()), c);
        }
        assert_eq!(RefusalCode::from(999), RefusalCode::Unknown(999));
        assert_eq!(RefusalCode::Unknown(999).code(), 999);
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(RefusalCode::TargetModified.to_string(), "target-modified");
        assert_eq!(ErrorCode::Unknown(77).to_string(), "unknown(77)");
        assert_eq!(FailureCode::ZfsReceive.as_str(), "zfs-receive");
    }
}
