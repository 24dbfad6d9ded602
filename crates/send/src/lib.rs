//! zrep-send: the push agent on the primary. The [`agent::Agent`] does the work of `once` and
//! `run`; [`once`] and [`daemon`] wire it to the system (ZFS, TLS, signals, metrics) for the
//! binary, a thin shell over them; configuration lives in [`config`].

pub mod agent;
pub mod config;
pub mod daemon;
pub mod once;
pub mod pair;
pub mod progress;
pub mod recursive;
pub mod renew;
pub mod state;
pub mod status;
