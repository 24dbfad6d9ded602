//! End-to-end tests: `zrep-send` and `zrep-recv` as real processes, mutual TLS on 127.0.0.1,
//! real ZFS pools (zfs-fuse here, OpenZFS in its tier). Each test makes its own pools.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod availability;
mod check;
mod daemon;
mod faults;
mod hostile;
mod openzfs;
mod ops;
mod pairing;
mod replication;
mod retention;
mod security;
mod status;
mod stopping;
mod unprivileged;
