//! Why the agent could not open a session.
//!
//! Rule: a message never repeats its source. A variant that wraps a cause says what was being
//! done ("connecting to HOST:PORT") and exposes the cause as `source()`; `zrep_cli::one_line`
//! prints both, as the lines, state files and logs show them ("connecting to HOST:PORT:
//! connection refused").

use std::time::Duration;

use zrep_proto::ErrorCode;

/// Why no session was opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The certificate, key or CA file is unusable.
    #[error("loading the TLS certificate, key and CA")]
    Credentials(#[source] zrep_tls::TlsError),
    /// The TCP connection failed.
    #[error("connecting to {receiver}")]
    Tcp {
        /// `HOST:PORT`.
        receiver: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {server_name}")]
    Handshake {
        /// The name expected in the receiver's certificate.
        server_name: String,
        /// What failed.
        #[source]
        source: zrep_tls::TlsError,
    },
    /// The receiver answered the hello with an error frame.
    #[error("the receiver refused the session ({code}): {message}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The receiver's first answer was something other than the negotiation.
    #[error("unexpected first answer from the receiver: {0}")]
    Unexpected(String),
    /// The connection failed before the negotiation (in TLS 1.3 a refused client certificate
    /// shows up here, on the first read).
    #[error("the receiver closed the session")]
    Closed(#[source] zrep_repl::transport::TransportError),
    /// Connecting, the handshake and the hello together took longer than `connect-timeout`.
    #[error("connecting to {receiver} timed out after {limit:?}")]
    TimedOut {
        /// `HOST:PORT`.
        receiver: String,
        /// `connect-timeout`.
        limit: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_appears_once() {
        let err = ConnectError::Tcp {
            receiver: "backup:7711".into(),
            source: std::io::Error::from_raw_os_error(111),
        };
        let text = zrep_cli::one_line(&err);
        assert!(text.starts_with("connecting to backup:7711: "), "{text}");
        assert_eq!(text.matches("os error 111").count(), 1, "{text}");
        // A cause embedded in its wrapper's message (TransportError::Io) is not said twice.
        let err = ConnectError::Closed(zrep_repl::transport::TransportError::Io(
            std::io::Error::from_raw_os_error(104),
        ));
        let text = zrep_cli::one_line(&err);
        assert!(
            text.starts_with("the receiver closed the session: connection failed: "),
            "{text}"
        );
        assert_eq!(text.matches("os error 104").count(), 1, "{text}");
    }
}
