//! zrep-recv as a non-root user with `zfs allow` delegation (the recipe README documents).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use zrep_e2e::{
    DatasetSpec, SenderConfig, binary, capabilities, certs_dir, snapshots, wait_for_port,
};
use zrep_zfs::Dialect;
use zrep_zfs::testbed::{TestPool, write_file, zfs, zfs_get};

/// The delegation README gives for the receiver's parent dataset.
const PERMISSIONS: &str = "create,receive,mount,readonly,canmount,destroy";
const USER: &str = "zrep-unpriv";

fn id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn receiver_runs_unprivileged_with_zfs_allow() {
    let caps = capabilities();
    if !matches!(caps.dialect, Dialect::OpenZfs { .. }) || !caps.receive_no_mount {
        eprintln!(
            "not applicable on {}: unprivileged receive needs OpenZFS delegation and `receive -u` \
             (zfs-fuse's daemon mounts every received filesystem as root); nothing to check",
            caps.dialect
        );
        return;
    }
    if Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .unwrap();
        assert!(made.success(), "useradd {USER}");
    }
    let (uid, gid) = (id("-u"), id("-g"));
    assert_ne!(uid, 0);

    let src = TestPool::create("upsrc");
    let dst = TestPool::create("updst");
    let source = src.create_dataset("data");
    let parent = dst.create_dataset("backup");
    zfs(&["allow", "-u", USER, PERMISSIONS, parent.as_str()]);

    // The service's own directory: certificates, key, config and state, owned by the user.
    let dir = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "backup1.pem", "backup1.key"] {
        std::fs::copy(certs_dir().join(file), dir.path().join(file)).unwrap();
    }
    let root = dst.dataset("backup/nas1");
    std::fs::write(
        dir.path().join("recv.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ncert = \"backup1.pem\"\nkey = \"backup1.key\"\n\
             ca = \"ca.pem\"\n\n[[peer]]\nname = \"nas1\"\nroot = \"{root}\"\n"
        ),
    )
    .unwrap();
    let chown = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let log = dir.path().join("recv.log");
    let mut child = Command::new(binary("zrep-recv"))
        .args(["serve", "--config"])
        .arg(dir.path().join("recv.toml"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .uid(uid)
        .gid(gid)
        .spawn()
        .unwrap();
    let port = wait_for_port(&log);
    let owner = Command::new("ps")
        .args(["-o", "user=", "-p", &child.id().to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), USER);

    let config = SenderConfig::new(port, "nas1", &[DatasetSpec::new(&source)]);
    write_file(&source, "f", b"first");
    let first = config.once();
    write_file(&source, "f", b"second");
    let second = config.once();
    let _ = child.kill();
    let _ = child.wait();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    first.expect_code(0);
    assert!(second.code == Some(0), "{}\n{log_text}", second.stdout);

    let target = dst.dataset("backup/nas1/data");
    let on_target = snapshots(&target);
    assert_eq!(on_target.len(), 2, "{on_target:?}");
    assert_eq!(on_target.last(), snapshots(&source).last());
    assert_eq!(zfs_get(target.as_str(), "readonly"), "on");
    assert_eq!(zfs_get(target.as_str(), "mounted"), "no");
    assert_eq!(zfs_get(root.as_str(), "canmount"), "off");
}
