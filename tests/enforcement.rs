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

use common::{Mount, TempStore, errno, eventually, is_mounted};

/// These tests freeze volumes, which can hold up anything
/// else touching them: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ext4 image on a loop device mounted in the test's directory: a volume
/// that can be frozen. Thawed and unmounted on drop, whatever happened.
struct LoopVolume {
    dir: PathBuf,
}

impl LoopVolume {
    fn new(t: &TempStore, name: &str) -> LoopVolume {
        let img = t.dir.path().join(format!("{name}.img"));
        let dir = t.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let run = |c: &mut Command| {
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir));
        // A volume must be private to vfolderfs's user.
        run(Command::new("chmod").arg("700").arg(&dir));
        LoopVolume { dir }
    }

    fn freeze(&self) {
        let ok = Command::new("fsfreeze").arg("-f").arg(&self.dir).status();
        assert!(ok.unwrap().success(), "fsfreeze -f");
    }

    fn thaw(&self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.dir).status();
    }
}

impl Drop for LoopVolume {
    fn drop(&mut self) {
        self.thaw();
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
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
