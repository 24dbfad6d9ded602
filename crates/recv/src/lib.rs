//! zrep-recv: the receive service on the backup host. The binary is a thin shell over
//! [`server::run`]; configuration lives in [`config`].

pub mod admin;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod status;
