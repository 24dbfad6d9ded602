//! Real file-backed pools on the shared zfs-fuse daemon, for tests.
//!
//! `scripts/zfs-testbed` installs and starts zfs-fuse; this module only creates pools, one per
//! [`TestPool`], named `zt<pid>_<n>_<tag>` so that parallel tests and parallel test binaries never
//! collide, and destroys them on drop (also when a test panics). Pools of killed runs are
//! destroyed by the script. Helpers here run `zfs`/`zpool` directly so that tests check the
//! driver against ZFS's own answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::name::{DatasetName, SnapshotName};

static NEXT_POOL: AtomicUsize = AtomicUsize::new(0);

/// Where pool files and mountpoints live; `ZREP_TESTBED_DIR` overrides it.
pub fn testbed_dir() -> PathBuf {
    std::env::var_os("ZREP_TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/zrep-testbed"))
}

/// A file-backed pool that is destroyed when dropped.
#[derive(Debug)]
pub struct TestPool {
    name: String,
    file: PathBuf,
    mountpoint: PathBuf,
}

impl TestPool {
    /// Creates a 256 MiB sparse pool. Panics with a hint when zfs-fuse is not running: tests
    /// that need real ZFS must fail loudly, not skip.
    pub fn create(tag: &str) -> TestPool {
        let n = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let name = format!("zt{}_{n}_{tag}", std::process::id());
        let dir = testbed_dir();
        std::fs::create_dir_all(dir.join("mnt")).expect("create the testbed directory");
        let file = dir.join(format!("{name}.img"));
        let mountpoint = dir.join("mnt").join(&name);
        let _serial = MountLock::take();
        let image = std::fs::File::create(&file).expect("create the pool file");
        image.set_len(256 << 20).expect("size the pool file");
        drop(image);
        let pool = TestPool {
            name,
            file,
            mountpoint,
        };
        let created = Command::new("zpool")
            .args(["create", "-m"])
            .arg(&pool.mountpoint)
            .arg(&pool.name)
            .arg(&pool.file)
            .output()
            .expect("run zpool (is zfs-fuse installed? run scripts/zfs-testbed)");
        assert!(
            created.status.success(),
            "zpool create {} failed (run scripts/zfs-testbed first): {}",
            pool.name,
            String::from_utf8_lossy(&created.stderr)
        );
        pool
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's root dataset.
    pub fn root(&self) -> DatasetName {
        DatasetName::parse(&self.name).expect("test pool names are valid")
    }

    /// A dataset below the pool: `pool/relative`.
    pub fn dataset(&self, relative: &str) -> DatasetName {
        DatasetName::parse(&format!("{}/{relative}", self.name)).expect("valid test dataset name")
    }

    /// Where the pool's root dataset is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Creates `pool/relative` (and its parents) with `zfs create -p`.
    pub fn create_dataset(&self, relative: &str) -> DatasetName {
        let dataset = self.dataset(relative);
        let _serial = MountLock::take();
        zfs(&["create", "-p", dataset.as_str()]);
        dataset
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // zfs-fuse answers "pool is busy" for a moment after a mount was used; retry briefly.
        let _serial = MountLock::take();
        let mut last_error = String::new();
        for _ in 0..10 {
            match Command::new("zpool")
                .args(["destroy", "-f", &self.name])
                .output()
            {
                Ok(out) if out.status.success() => {
                    let _ = std::fs::remove_file(&self.file);
                    let _ = std::fs::remove_dir(&self.mountpoint);
                    return;
                }
                Ok(out) => last_error = String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(err) => last_error = err.to_string(),
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        // Leave the file: scripts/zfs-testbed destroys what a failed drop left.
        eprintln!("warning: zpool destroy {} failed: {last_error}", self.name);
    }
}

/// Serializes the test bed's own mounting commands across threads and test processes.
///
/// zfs-fuse 0.7 can deadlock when several `zfs create`/`zpool create` mount filesystems at the
/// same moment: the commands hang in the kernel waiting for FUSE requests the daemon never
/// answers (seen with parallel tests). One at a time costs milliseconds.
struct MountLock(std::fs::File);

impl MountLock {
    fn take() -> MountLock {
        let dir = testbed_dir();
        std::fs::create_dir_all(&dir).expect("create the testbed directory");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("mount.lock"))
            .expect("open the testbed lock");
        file.lock().expect("lock the testbed lock");
        MountLock(file)
    }
}

impl Drop for MountLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Runs `zfs ARGS` and returns stdout; panics with stderr on failure.
pub fn zfs(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output().expect("run zfs");
    assert!(
        out.status.success(),
        "zfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("zfs prints UTF-8")
}

/// ZFS's own exact value of a property (`zfs get -Hp -o value`).
pub fn zfs_get(name: &str, property: &str) -> String {
    zfs(&["get", "-Hp", "-o", "value", property, name])
        .trim_end_matches('\n')
        .to_owned()
}

/// The exact GUID ZFS reports for a snapshot.
pub fn guid_of(snapshot: &SnapshotName) -> u64 {
    zfs_get(snapshot.as_str(), "guid")
        .parse()
        .expect("zfs get -Hp guid prints an exact number")
}

/// Where a filesystem is mounted, from its `mountpoint` property.
pub fn mountpoint_of(dataset: &DatasetName) -> PathBuf {
    PathBuf::from(zfs_get(dataset.as_str(), "mountpoint"))
}

/// Writes a file inside a mounted filesystem.
pub fn write_file(dataset: &DatasetName, path: &str, contents: &[u8]) {
    let full = mountpoint_of(dataset).join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).expect("create parent directories");
    }
    std::fs::write(&full, contents).unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
}

/// Reads a file inside a mounted filesystem.
pub fn read_file(dataset: &DatasetName, path: &str) -> Vec<u8> {
    let full = mountpoint_of(dataset).join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate and data does not
/// compress to nothing.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
