//! The one printer for an error and its causes: [`one_line`].
//!
//! zrep's errors follow one rule: a message never repeats its source. A variant that wraps a
//! cause says what was being done ("listing snapshots of tank/data") and exposes the cause only
//! as `source()`; its `Display` alone is therefore not the whole story. Wherever an error leaves
//! the program — stderr, a state file, a log field, an error frame or a refusal sent to the peer
//! — it is printed with [`one_line`], so each cause appears exactly once.
//!
//! A leaf crate without dependencies, so that every library (the sans-IO protocol crate too)
//! can print chains the same way the binaries do.

#![forbid(unsafe_code)]

use std::error::Error;

/// `err` and its sources on one line, joined by `: ` ("loading the CA: cannot read ca.pem: No
/// such file or directory (os error 2)"): the one printer for errors on stderr, in state files,
/// in logs and in messages to the peer.
///
/// zrep's own errors never repeat their source in their message; a cause whose text the line
/// already ends with is still left out, because some errors of other crates (I/O, rustls)
/// embed theirs. A cause with an empty message adds nothing. An `anyhow::Error` is printed with
/// `one_line(err.as_ref())`.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.ends_with(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    /// Says what was being done; the cause is only its source.
    #[derive(Debug)]
    struct Doing(&'static str, Box<dyn Error + 'static>);

    impl fmt::Display for Doing {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Doing {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    /// An error of another crate that embeds its source in its message, and exposes it too.
    #[derive(Debug)]
    struct Embeds(std::io::Error);

    impl fmt::Display for Embeds {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "connection failed: {}", self.0)
        }
    }

    impl Error for Embeds {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A wrapper whose message is empty.
    #[derive(Debug)]
    struct Silent(std::io::Error);

    impl fmt::Display for Silent {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Ok(())
        }
    }

    impl Error for Silent {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn missing() -> std::io::Error {
        std::fs::read("/nonexistent/zrep-chain/file").unwrap_err()
    }

    #[test]
    fn each_cause_is_said_once_in_order() {
        let err = Doing(
            "loading the CA",
            Box::new(Doing("cannot read ca.pem", Box::new(missing()))),
        );
        assert_eq!(
            one_line(&err),
            "loading the CA: cannot read ca.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_cause_embedded_by_its_wrapper_is_not_repeated() {
        let err = Doing(
            "the receiver closed the session",
            Box::new(Embeds(std::io::Error::from_raw_os_error(104))),
        );
        let text = one_line(&err);
        assert!(
            text.starts_with("the receiver closed the session: connection failed: "),
            "{text}"
        );
        assert_eq!(text.matches("os error 104").count(), 1, "{text}");
    }

    #[test]
    fn an_error_without_source_is_its_message() {
        let plain = missing();
        assert_eq!(one_line(&plain), plain.to_string());
        assert_eq!(one_line(&plain).matches("os error 2").count(), 1);
    }

    #[test]
    fn an_empty_message_adds_no_separator() {
        let err = Doing("reading the key", Box::new(Silent(missing())));
        assert_eq!(
            one_line(&err),
            "reading the key: No such file or directory (os error 2)"
        );
        assert_eq!(
            one_line(&Silent(missing())),
            "No such file or directory (os error 2)"
        );
    }
}
