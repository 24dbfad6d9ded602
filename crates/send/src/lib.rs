//! zrep-send: the push agent on the primary. The binary is a thin shell over [`once::run_once`];
//! configuration lives in [`config`].

pub mod config;
pub mod daemon;
pub mod once;
pub mod pair;
pub mod progress;
pub mod recursive;
pub mod renew;
pub mod state;
pub mod status;
