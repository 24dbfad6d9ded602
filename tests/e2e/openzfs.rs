//! What only OpenZFS can do, tested wherever the tests run: on OpenZFS the feature must work; on
//! zfs-fuse the test says it does not apply and checks that zrep fails cleanly instead.

use zrep_e2e::{
    CuttingProxy, DatasetSpec, Receiver, SenderConfig, capabilities, exists, snapshots,
};
use zrep_zfs::testbed::{TestPool, pseudo_random_bytes, read_file, write_file, zfs, zfs_get};

const MIB: usize = 1 << 20;

fn note(what: &str) {
    let caps = capabilities();
    eprintln!(
        "not applicable on {}: {what}; checking the clean refusal instead",
        caps.dialect
    );
}

#[test]
fn cut_transfer_resumes_where_it_stopped() {
    let caps = capabilities();
    let src = TestPool::create("rssrc");
    let dst = TestPool::create("rsdst");
    let source = src.create_dataset("vm");
    let data = pseudo_random_bytes(11, 8 * MIB);
    write_file(&source, "disk.img", &data);
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let direct = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    // Cut the first connection after about half of the stream (TLS and framing add little).
    let proxy = CuttingProxy::start(receiver.port, (data.len() / 2) as u64);
    let cut = direct.with_port(proxy.port).once();
    cut.expect_code(1);
    eprintln!("cut run: {}", cut.stdout.trim());
    let target = dst.dataset("nas1/vm");

    write_file(&source, "after.txt", b"written after the cut");
    let next = direct.once();
    next.expect_code(0);
    eprintln!("next run: {}", next.stdout.trim());
    if caps.resumable_receive {
        // "...; first finished the interrupted stream of @S (1.2 MiB)"
        let resumed = next
            .stdout
            .split("interrupted stream of @")
            .nth(1)
            .and_then(|rest| rest.split('(').nth(1))
            .and_then(|rest| rest.split(')').next())
            .and_then(human_bytes)
            .unwrap_or_else(|| panic!("no resume in: {}", next.stdout));
        let full = data.len() as u64;
        eprintln!("full stream ≈ {full} bytes; resumed with {resumed} bytes");
        assert!(
            resumed > 0 && resumed < full * 3 / 4,
            "resumed {resumed} of {full}"
        );
        assert!(
            next.stdout.contains(" from @"),
            "then an increment: {}",
            next.stdout
        );
    } else {
        note("resumable receive");
        assert!(
            next.stdout.contains(", full,"),
            "sent in full again: {}",
            next.stdout
        );
    }
    assert_eq!(snapshots(&target).last(), snapshots(&source).last());
    zfs(&["mount", target.as_str()]);
    assert_eq!(read_file(&target, "disk.img"), data);
    assert_eq!(read_file(&target, "after.txt"), b"written after the cut");
    zfs(&["unmount", target.as_str()]);
}

#[test]
fn stale_resume_state_is_discarded_and_the_transfer_restarts() {
    let caps = capabilities();
    let src = TestPool::create("stsrc");
    let dst = TestPool::create("stdst");
    let source = src.create_dataset("vm");
    let data = pseudo_random_bytes(12, 6 * MIB);
    write_file(&source, "disk.img", &data);
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let direct = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let proxy = CuttingProxy::start(receiver.port, (data.len() / 2) as u64);
    direct.with_port(proxy.port).once().expect_code(1);
    let target = dst.dataset("nas1/vm");
    if caps.resumable_receive {
        let token = zfs_get(target.as_str(), "receive_resume_token");
        assert!(
            token.len() > 10,
            "a cut resumable receive leaves a token: {token:?}"
        );
    } else {
        note("resumable receive");
        // The sender exits as soon as it sees the cut; the receiver's zfs receive may still be
        // cleaning up the partial dataset for a moment (longer on a loaded machine).
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_secs(15 * zrep_e2e::time_scale());
        while exists(&target) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!exists(&target), "zfs-fuse discards a cut full receive");
    }
    // The snapshot the cut stream was carrying disappears from the source.
    for (name, _) in snapshots(&source) {
        zfs(&["destroy", &format!("{source}@{name}")]);
    }
    let next = direct.once();
    next.expect_code(0);
    eprintln!("next run: {}", next.stdout.trim());
    assert!(
        next.stdout.contains(", full,"),
        "restarted in full: {}",
        next.stdout
    );
    assert_eq!(snapshots(&target), snapshots(&source));
    if caps.resumable_receive {
        assert_eq!(zfs_get(target.as_str(), "receive_resume_token"), "-");
        assert!(
            receiver.log_text().contains("AbortResume") || receiver.log_text().contains("abort"),
            "{}",
            receiver.log_text()
        );
    }
    zfs(&["mount", target.as_str()]);
    assert_eq!(read_file(&target, "disk.img"), data);
    zfs(&["unmount", target.as_str()]);
}

#[test]
fn bookmark_replaces_a_destroyed_base_snapshot() {
    let caps = capabilities();
    let src = TestPool::create("bmsrc");
    let dst = TestPool::create("bmdst");
    let source = src.create_dataset("data");
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    write_file(&source, "f", b"one");
    config.once().expect_code(0);
    let base = snapshots(&source).last().unwrap().0.clone();
    let base_name = format!("{source}@{base}");
    // The bookmark names its receiver by its hold tag; another receiver's bookmark (here made
    // by hand, as a cycle to backup2 would) is not this receiver's to drop (issue 11).
    let mine = format!("{source}#{base}.zrep:backup1");
    let theirs = format!("{source}#{base}.zrep:backup2");
    if caps.bookmarks {
        assert_eq!(bookmarks(source.as_str()), std::slice::from_ref(&mine));
        zfs(&["bookmark", &base_name, &theirs]);
    }
    // An admin (or another tool) removes the base snapshot on the source.
    zfs(&["release", "zrep:backup1", &base_name]);
    zfs(&["destroy", &base_name]);
    write_file(&source, "f", b"two");
    let target = dst.dataset("nas1/data");
    let before = snapshots(&target);
    let next = config.once();
    if caps.bookmarks {
        next.expect_code(0);
        assert!(
            next.stdout
                .contains(&format!("-i from #{base}.zrep:backup")),
            "{}",
            next.stdout
        );
        let on_target = snapshots(&target);
        assert_eq!(on_target.len(), 2);
        assert_eq!(on_target.last(), snapshots(&source).last());
        let newest = &on_target.last().unwrap().0;
        assert_eq!(
            bookmarks(source.as_str()),
            [theirs, format!("{source}#{newest}.zrep:backup1")],
            "this receiver's bookmark moved to the new base, the other's stayed"
        );
        zfs(&["mount", target.as_str()]);
        assert_eq!(read_file(&target, "f"), b"two");
        zfs(&["unmount", target.as_str()]);
    } else {
        note("bookmarks");
        next.expect_code(1);
        assert!(next.stdout.contains("none of which"), "{}", next.stdout);
        assert_eq!(
            snapshots(&target),
            before,
            "nothing destroyed or changed on the target"
        );
    }
}

/// A dataset's bookmarks, oldest first.
fn bookmarks(dataset: &str) -> Vec<String> {
    zfs(&[
        "list",
        "-H",
        "-t",
        "bookmark",
        "-d1",
        "-o",
        "name",
        "-s",
        "createtxg",
        dataset,
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn raw_encrypted_replication_never_needs_the_key_on_the_backup() {
    let caps = capabilities();
    let src = TestPool::create("ensrc");
    let dst = TestPool::create("endst");
    let keydir = tempfile::tempdir().unwrap();
    let keyfile = keydir.path().join("key");
    std::fs::write(&keyfile, "correct horse battery staple").unwrap();
    let receiver = Receiver::start(&[("nas1", &dst.dataset("nas1"))], &[]);
    let source = src.dataset("secret");
    let mut spec = DatasetSpec::new(&source);
    spec.extra = "raw = true\n".into();
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    if !caps.raw_send {
        note("raw sends of encrypted datasets");
        zfs(&["create", source.as_str()]);
        let run = config.once();
        run.expect_code(1);
        assert!(run.stdout.contains("raw"), "{}", run.stdout);
        assert!(!exists(&dst.dataset("nas1/secret")));
        return;
    }
    let location = format!("keylocation=file://{}", keyfile.display());
    zfs(&[
        "create",
        "-o",
        "encryption=on",
        "-o",
        "keyformat=passphrase",
        "-o",
        &location,
        source.as_str(),
    ]);
    let secret = pseudo_random_bytes(5, 3 * MIB);
    write_file(&source, "vault.bin", &secret);
    config.once().expect_code(0);
    write_file(&source, "later.txt", b"also encrypted");
    config.once().expect_code(0);

    let target = dst.dataset("nas1/secret");
    assert_eq!(zfs_get(target.as_str(), "encryption"), "aes-256-gcm");
    assert_eq!(zfs_get(target.as_str(), "keystatus"), "unavailable");
    assert_eq!(zfs_get(target.as_str(), "readonly"), "on");
    assert_eq!(snapshots(&target).last(), snapshots(&source).last());
    // Only with the key, which the backup never had, does the data open, and it matches.
    zfs(&[
        "load-key",
        "-L",
        &format!("file://{}", keyfile.display()),
        target.as_str(),
    ]);
    zfs(&["mount", target.as_str()]);
    assert_eq!(read_file(&target, "vault.bin"), secret);
    assert_eq!(read_file(&target, "later.txt"), b"also encrypted");
    zfs(&["unmount", target.as_str()]);
    zfs(&["unload-key", target.as_str()]);
}

/// `1.5 MiB` → bytes (rounded: the line is for people).
fn human_bytes(text: &str) -> Option<u64> {
    let (value, unit) = text.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let power = ["B", "KiB", "MiB", "GiB"].iter().position(|u| *u == unit)?;
    Some((value * 1024f64.powi(power as i32)) as u64)
}
