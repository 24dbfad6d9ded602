//! zrep's replication logic, independent of TLS and of the real ZFS: the sender's cycle
//! ([`sender::replicate`]) and the receiver's session ([`receiver::serve`]) run over any async
//! byte stream and any [`zrep_zfs::Zfs`], so they are tested in memory against `FakeZfs` and
//! end to end against real ZFS with the same code.

pub mod error;
pub mod naming;
pub mod receiver;
pub mod sender;
pub mod transport;

pub use error::ReplicationError;
