//! The enforcement protocol under faults: a write stuck on a frozen volume
//! delays nothing but the confirmation of its own vfolder, and a copy job
//! that cannot get every mount's confirmation gives up and says why. No latency is asserted; where something must not hang, it gets a
//! generous deadline and hanging past it is the failure.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{LoopVolume, Mount, OtherMount, TempStore, errno, eventually};

/// These tests freeze volumes, which can hold up anything
/// else touching them: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a thread; panics if it has not finished within `limit`
/// (the thread is left behind: the test fails anyway).
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}: it hangs"))
}

/// A write into `rel` (a file on `vol`) that blocks in the daemon once
/// `vol` is frozen; returns when a daemon thread is seen waiting on it.
fn stuck_write(
    m: &Mount,
    vol: &LoopVolume,
    rel: &str,
) -> std::thread::JoinHandle<(std::io::Result<()>, fs::File)> {
    let mut f = fs::OpenOptions::new().append(true).open(m.p(rel)).unwrap();
    vol.freeze();
    let stuck = std::thread::spawn(move || {
        let r = f.write_all(&[b'y'; 4096]).and_then(|()| f.sync_all());
        (r, f)
    });
    let pid = m.daemon_pid();
    let waiting = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten().any(|t| {
                    fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('D')))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    assert!(
        eventually(Duration::from_secs(60), waiting),
        "no daemon thread ever waited on the frozen volume"
    );
    stuck
}

fn write_one(p: &Path) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)?
        .write_all(b"x\n")
}

#[test]
fn a_write_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder() {
    let _serial = serial();
    let t = TempStore::new();
    let vol = LoopVolume::new(&t, "frz");
    t.ok(&["volume", "add", "frz", vol.dir.to_str().unwrap()]);
    t.ok(&["create", "fz", "--volume", "frz"]);
    t.ok(&["create", "other"]);
    t.ok(&["create", "third"]);
    let m = Mount::on(t, &[]);
    m.sh_ok("echo a > fz/f && echo a > other/f && echo a > third/f");
    let mut held_other = fs::OpenOptions::new()
        .append(true)
        .open(m.p("other/f"))
        .unwrap();
    // A write into fz blocks in the daemon on the frozen volume.
    let stuck = stuck_write(&m, &vol, "fz/f");
    assert!(
        !stuck.is_finished(),
        "the write into the frozen volume did not block"
    );

    // Another vfolder's status change is in force everywhere when the command
    // returns, and its new writes are refused.
    let store = m.store.path();
    let o = within("delete other", Duration::from_secs(60), move || {
        Command::new(common::bin())
            .arg("--store")
            .arg(&store)
            .args(["delete", "other"])
            .output()
            .unwrap()
    });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = held_other.write_all(b"after\n").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    let e = write_one(&m.p(".trash/other/f")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    // Lookups and listings elsewhere go on.
    let (root, third) = (m.mnt.clone(), m.p("third/f"));
    within("ls and stat", Duration::from_secs(60), move || {
        fs::read_dir(&root).unwrap().count();
        fs::metadata(&third).unwrap();
        write_one(&third).unwrap();
    });

    // fz's own change is made and refuses new writes at once; only its
    // confirmation waits for the stuck write, and says which mount.
    let store = m.store.path();
    let o = within("delete fz", Duration::from_secs(60), move || {
        Command::new(common::bin())
            .arg("--store")
            .arg(&store)
            .args(["--confirm-timeout", "1s", "delete", "fz"])
            .output()
            .unwrap()
    });
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not confirm") && err.contains(m.mnt.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(m.store.show("fz")["status"], "delete-pending");
    let fz_other = m.p(".trash/fz/new");
    let e = within("a new write into fz", Duration::from_secs(60), move || {
        write_one(&fz_other).unwrap_err()
    });
    assert_eq!(errno(&e), libc::EROFS, "{e}");

    // Thawed, the stuck write finishes (it began before the delete) and
    // the confirmation follows.
    vol.thaw();
    let (r, _f) = stuck.join().unwrap();
    r.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            let o = m.store.cli(&["--confirm-timeout", "1s", "restore", "fz"]);
            o.status.success() || m.store.show("fz")["status"] == "ready"
        }),
        "fz was not confirmed after the thaw"
    );
}

#[test]
fn a_copy_job_gives_up_when_a_mount_cannot_drain_and_says_why() {
    let _serial = serial();
    let t = TempStore::new();
    let vol = LoopVolume::new(&t, "frz");
    t.ok(&["volume", "add", "frz", vol.dir.to_str().unwrap()]);
    t.ok(&["create", "src", "--volume", "frz"]);
    let m = Mount::on_env(t, &[], &[]);
    m.sh_ok("echo a > src/f");
    let stuck = stuck_write(&m, &vol, "src/f");
    let o = m.store.cli_env(
        &["clone", "src", "dst", "--volume", "default"],
        &[("VFOLDERFS_SETTLE_TIMEOUT", "1s")],
    );
    assert!(
        !o.status.success(),
        "the clone read a source still being written"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not confirm"), "{err}");
    // The source is writable again (the clone was rolled back) and the
    // cause is in its target's history.
    assert!(eventually(Duration::from_secs(30), || m.store.show("src")
        ["status"]
        == "ready"));
    let h = m.store.ok(&["history", "dst"]);
    assert!(h.contains("did not confirm"), "{h}");
    vol.thaw();
    let (r, _f) = stuck.join().unwrap();
    r.unwrap();
}

/// A write through `f`: `Ok` or the errno.
fn try_write(f: &mut fs::File, what: &[u8]) -> Result<(), i32> {
    f.write_all(what).map_err(|e| errno(&e))
}

/// A mount that cannot confirm its view (its watcher held, as if its process
/// were stopped or its store read hung) is waited for only until its lease
/// lapses; from then on it refuses every write, also through handles opened
/// before and in vfolders whose status did not change, while reads go on.
/// Once it runs again it rereads the store, registers anew and serves writes
/// by status again. (The watcher is held by a test hook: stopping a FUSE
/// daemon would hang every process on the host that looks at it.)
#[test]
fn a_mount_that_cannot_confirm_is_not_waited_for_past_its_lease_and_writes_nothing() {
    let _s = serial();
    let t = TempStore::new();
    let hold = t.dir.path().join("hold-watcher");
    let other = OtherMount(t.dir.path().join("mnt-b"));
    fs::create_dir_all(&other.0).unwrap();
    let m = Mount::on(t, &[]);
    m.sh_ok("mkdir a b && echo one > a/f && echo one > b/f");
    let o = m.store.cli_env(
        &["mount", other.0.to_str().unwrap(), "-o", "lease=2s"],
        &[("VFOLDERFS_TEST_WATCHER_HOLD", hold.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = |rel: &str| other.0.join(rel);
    let mut held_b = fs::OpenOptions::new().append(true).open(b("b/f")).unwrap();
    let mut held_a = fs::OpenOptions::new().append(true).open(b("a/f")).unwrap();
    try_write(&mut held_b, b"two\n").unwrap();
    try_write(&mut held_a, b"two\n").unwrap();

    // The other mount's watcher stops; the delete waits for it only until
    // its lease lapses (2 s, well inside the default confirmation timeout)
    // and then succeeds.
    fs::write(&hold, b"").unwrap();
    let o = m.store.cli(&["delete", "a"]);
    assert!(
        o.status.success(),
        "delete waited for a mount past its lease: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    // The command has returned: no write begun now succeeds anywhere.
    assert_eq!(try_write(&mut held_a, b"late\n"), Err(libc::EROFS));
    assert!(fs::write(m.p("a/g"), b"x").is_err());
    // The lapsed mount refuses every write, also where the status allows it
    // (it cannot know), through old handles and new opens alike ...
    assert_eq!(try_write(&mut held_b, b"late\n"), Err(libc::EROFS));
    let e = fs::write(b("b/new"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    // ... while it still serves reads, and the healthy mount writes.
    assert_eq!(fs::read_to_string(b("b/f")).unwrap(), "one\ntwo\n");
    fs::write(m.p("b/g"), b"x").unwrap();

    // Running again: it rereads the store and registers anew; writes are
    // served by status again (the trashed vfolder stays refused).
    fs::remove_file(&hold).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || try_write(
            &mut held_b,
            b"three\n"
        )
        .is_ok()),
        "the mount never served writes again after its watcher ran"
    );
    assert_eq!(try_write(&mut held_a, b"late\n"), Err(libc::EROFS));
    assert!(!b("a").exists());
    assert_eq!(fs::read_to_string(m.p("b/f")).unwrap(), "one\ntwo\nthree\n");
    assert_eq!(fs::read_to_string(m.p(".trash/a/f")).unwrap(), "one\ntwo\n");
    // And it is waited for again: a status change confirmed by both mounts.
    m.store.ok(&["delete", "b"]);
    assert_eq!(try_write(&mut held_b, b"late\n"), Err(libc::EROFS));
}

/// A mount whose lease lapsed reads the store again before it serves writes;
/// a change committed while it was counted gone, after that read began, must
/// still be waited for or be in force there. (The bug: the mount reread, then
/// registered, so a delete that saw it lapsed returned while the mount went
/// on serving writes with the view from before the delete.)
#[test]
fn a_mount_coming_back_from_a_lapse_never_serves_a_view_older_than_a_returned_command() {
    let _s = serial();
    let t = TempStore::new();
    let hold = t.dir.path().join("hold-watcher");
    let mut reread = hold.clone().into_os_string();
    reread.push(".reread");
    let reread = PathBuf::from(reread);
    let other = OtherMount(t.dir.path().join("mnt-b"));
    fs::create_dir_all(&other.0).unwrap();
    let m = Mount::on(t, &[]);
    m.sh_ok("mkdir a && echo one > a/f");
    let o = m.store.cli_env(
        &["mount", other.0.to_str().unwrap(), "-o", "lease=1s"],
        &[("VFOLDERFS_TEST_WATCHER_HOLD", hold.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut held = fs::OpenOptions::new()
        .append(true)
        .open(other.0.join("a/f"))
        .unwrap();
    try_write(&mut held, b"two\n").unwrap();
    // Held past its lease: it refuses writes.
    fs::write(&hold, b"").unwrap();
    assert!(
        eventually(Duration::from_secs(30), || try_write(&mut held, b"x")
            .is_err()),
        "the held mount kept writing past its lease"
    );
    // It comes back: rereads the store, and is held before confirming.
    fs::write(&reread, b"").unwrap();
    fs::remove_file(&hold).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The delete commits after that read.
    let o = m.store.cli(&["delete", "a", "--confirm-timeout", "20s"]);
    assert!(
        o.status.success(),
        "{:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    // The command has returned: whatever the held mount does next, no
    // write begun now succeeds there.
    fs::remove_file(&reread).unwrap();
    for _ in 0..200 {
        assert_eq!(
            try_write(&mut held, b"late\n"),
            Err(libc::EROFS),
            "a write into the trashed vfolder succeeded after the delete returned"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let data = fs::read_to_string(m.p(".trash/a/f")).unwrap();
    assert!(
        data.starts_with("one\ntwo\n") && !data.contains("late"),
        "{data:?}"
    );
}
