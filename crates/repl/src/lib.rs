//! zrep's replication logic, independent of TLS and of the real ZFS: the sender's cycle
//! ([`sender::replicate`]) and the receiver's session ([`receiver::serve`]) run over any async
//! byte stream and any [`zrep_zfs::Zfs`], so they are tested in memory against `FakeZfs` and
//! end to end against real ZFS with the same code.

pub mod error;
pub mod naming;
mod plan;
pub mod rate;
pub mod receiver;
pub mod retention;
pub mod sender;
pub mod transport;

pub use error::{ReplicationError, SendFailure};

/// The protocol features this side announces, from what the local ZFS can do.
pub fn session_features(caps: &zrep_zfs::Capabilities) -> zrep_proto::Features {
    let (implementation, version) = caps.dialect.implementation();
    zrep_proto::Features::new()
        .with_compression([zrep_proto::Compression::Zstd])
        .with_resumable(caps.resumable_receive)
        .with_bookmarks(caps.bookmarks)
        .with_raw_send(caps.raw_send)
        .with_zfs(implementation, version)
}
