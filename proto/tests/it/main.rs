//! End-to-end tests of the protocol crate: in-memory conversations and randomized robustness.

// clippy.toml allows unwrap inside #[test] functions; the shared helpers here are test code
// too, where a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod conversations;
mod pairing;
mod random;
mod util;
