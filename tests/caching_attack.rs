//! Attacks on the kernel caching of names and attributes: ways a mount could
//! keep showing, for longer than the documented 1 s bound, what another
//! mount of the store changed — in particular a mode that no longer lets
//! another user in.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Mount, OtherMount, TempStore, eventually};

const BOB: u32 = 65533;

/// Runs `script` as `uid` (no supplementary groups) in `dir`.
fn as_user(uid: u32, dir: &Path, script: &str) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .current_dir(dir)
        .output()
        .expect("run setpriv")
}

/// A mount whose lease is long (so it confirms its view rarely) still learns
/// of a second mount soon: after the owner closes a directory through the
/// second mount, another user can no longer reach a file in it through the
/// first, whose kernel cached the directory's open mode for an hour.
#[test]
fn a_long_lease_mount_stops_trusting_its_cache_when_another_mount_appears() {
    let t = TempStore::new();
    let a = Mount::on(t, &["--allow-other", "-o", "lease=10m"]);
    a.sh_ok("mkdir v && mkdir v/d && echo secret > v/d/f && chmod 755 v/d && chmod 644 v/d/f");
    let va = a.p("v");
    // Bob reads it through A: the directory's mode and the names are cached.
    let o = as_user(BOB, &va, "cat d/f");
    assert!(o.status.success(), "bob reads while open: {o:?}");
    let b = OtherMount::new(&a.store, "mnt-b", &[]);
    // The owner (root) closes the directory through B.
    fs::set_permissions(
        b.0.join("v/d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let closed = eventually(Duration::from_secs(20), || {
        !as_user(BOB, &va, "cat d/f").status.success()
    });
    assert!(
        closed,
        "bob still reads a file in a directory closed to him through another mount"
    );
}

/// Removes the watcher-hold file on drop, so the held mount can unmount.
struct Hold(PathBuf);

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A mount whose watcher cannot run (its store read hung) lets its lease
/// lapse, and then another mount is not waited for it. What it cached for an
/// hour while alone must not outlive the lapse: after the owner closes a
/// directory through the other mount, another user can no longer reach a
/// file in it through the held one.
#[test]
fn a_mount_that_cannot_renew_stops_trusting_its_cache_when_its_lease_lapses() {
    let t = TempStore::new();
    let hold = Hold(t.dir.path().join("hold-watcher"));
    let a = Mount::on_env(
        t,
        &["--allow-other"],
        &[("VFOLDERFS_TEST_WATCHER_HOLD", hold.0.to_str().unwrap())],
    );
    a.sh_ok("mkdir v && mkdir v/d && echo secret > v/d/f && chmod 755 v/d && chmod 644 v/d/f");
    let va = a.p("v");
    let o = as_user(BOB, &va, "cat d/f");
    assert!(o.status.success(), "bob reads while open: {o:?}");
    // A's watcher stops; once its lease lapsed it refuses writes.
    fs::write(&hold.0, b"").unwrap();
    assert!(
        eventually(Duration::from_secs(30), || fs::write(a.p("v/probe"), b"x")
            .is_err()),
        "the held mount kept writing past its lease"
    );
    // Bob's names and modes are still cached on A (reads are served).
    let o = as_user(BOB, &va, "cat d/f");
    assert!(o.status.success(), "bob reads while open: {o:?}");
    let b = OtherMount::new(&a.store, "mnt-b", &[]);
    fs::set_permissions(
        b.0.join("v/d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let closed = eventually(Duration::from_secs(20), || {
        !as_user(BOB, &va, "cat d/f").status.success()
    });
    assert!(
        closed,
        "bob still reads, through a mount that cannot renew, a file in a directory closed to him"
    );
}

/// On a kernel that cannot drop every cached name at once (before Linux
/// 6.16; simulated by a test hook), names must not be cached for long: when
/// a second mount appears, the first could drop attributes but not names.
/// Moved out of a public directory into a private one through the second
/// mount, a file must stop being reachable under its old name through the
/// first.
#[test]
fn without_epoch_notifications_names_are_not_cached_for_long() {
    let t = TempStore::new();
    let a = Mount::on_env(
        t,
        &["--allow-other"],
        &[("VFOLDERFS_TEST_NO_INC_EPOCH", "1")],
    );
    a.sh_ok(
        "mkdir v v/pub v/priv && chmod 755 v/pub && chmod 700 v/priv \
         && echo secret > v/pub/f && chmod 644 v/pub/f",
    );
    let va = a.p("v");
    let o = as_user(BOB, &va, "cat pub/f");
    assert!(o.status.success(), "bob reads while public: {o:?}");
    let b = OtherMount::new(&a.store, "mnt-b", &[]);
    fs::rename(b.0.join("v/pub/f"), b.0.join("v/priv/f")).unwrap();
    let gone = eventually(Duration::from_secs(20), || {
        !as_user(BOB, &va, "cat pub/f").status.success()
    });
    assert!(
        gone,
        "bob still reads, under its old public name, a file moved into a private directory"
    );
}

/// An ACL entry that let another user into a directory, removed by the
/// owner through the same mount (which caches for an hour) or through
/// another one, shuts that user out: the kernel's cached ACL goes with the
/// attributes.
#[test]
fn a_removed_acl_entry_shuts_the_user_out_through_every_mount() {
    let t = TempStore::new();
    let a = Mount::on(t, &["--allow-other"]);
    a.sh_ok(
        "mkdir v v/d v/e && chmod 700 v/d v/e && echo s > v/d/f && echo s > v/e/f \
         && chmod 644 v/d/f v/e/f && setfacl -m u:65533:rx v/d v/e",
    );
    let va = a.p("v");
    for n in ["d", "e"] {
        let o = as_user(BOB, &va, &format!("cat {n}/f"));
        assert!(o.status.success(), "bob reads through the ACL: {o:?}");
    }
    // Through the same mount: at once.
    a.sh_ok("setfacl -x u:65533 v/d");
    let o = as_user(BOB, &va, "cat d/f");
    assert!(!o.status.success(), "bob still reads after setfacl -x on A");
    // Through another mount: within the brief timeout.
    let b = OtherMount::new(&a.store, "mnt-b", &[]);
    let o = Command::new("setfacl")
        .args(["-x", "u:65533"])
        .arg(b.0.join("v/e"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let closed = eventually(Duration::from_secs(20), || {
        !as_user(BOB, &va, "cat e/f").status.success()
    });
    assert!(closed, "bob still reads after setfacl -x through B");
}

/// A new mount waits until the other live mounts have seen it, which can
/// take longer than its own lease: it must still start serving writes with a
/// fresh lease, not a lapsed one. (Its watcher is held from the start, so
/// only what the mount did before serving counts; the wait is at least two
/// of the other mount's renewal intervals, 1.5 s, longer than this lease.)
#[test]
fn a_mount_that_waited_for_another_serves_writes_at_once() {
    let t = TempStore::new();
    let hold = Hold(t.dir.path().join("hold-watcher"));
    fs::write(&hold.0, b"").unwrap();
    let a = Mount::on(t, &[]);
    a.sh_ok("mkdir v");
    let mnt = a.store.dir.path().join("mnt-b");
    fs::create_dir_all(&mnt).unwrap();
    let o = a.store.cli_env(
        &["mount", mnt.to_str().unwrap(), "-o", "lease=1400ms"],
        &[("VFOLDERFS_TEST_WATCHER_HOLD", hold.0.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = OtherMount(mnt);
    let r = fs::write(b.0.join("v/f"), b"x");
    // Let the held watcher go before the guards unmount.
    let _ = fs::remove_file(&hold.0);
    r.expect("the new mount refused a write right after it was mounted");
}
