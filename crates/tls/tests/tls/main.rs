//! End-to-end tests of zrep-tls: mutual TLS handshakes over in-memory pipes and loopback
//! sockets, with certificates made per test and with the committed `certs-example/` set.

// Test helpers outside #[test] functions panic on failure by design; clippy.toml only
// exempts the test functions themselves.
#![allow(clippy::unwrap_used)]

mod example_certs;
mod handshake;
mod pairing;
mod util;
