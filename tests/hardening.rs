//! Hardening: crashes, faults, concurrency and hostile input.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mount, TempStore, Tmpfs, errno, eventually};

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn status(t: &TempStore, name: &str) -> String {
    t.show(name)["status"].as_str().unwrap().to_string()
}

#[test]
fn fsck_reports_and_repairs_safely() {
    let t = TempStore::new();
    t.ok(&["create", "fine"]);
    assert!(t.ok(&["fsck"]).contains("consistent"));
    // A live vfolder whose directory vanished.
    t.ok(&["create", "gone"]);
    fs::remove_dir(path_of(&t, "gone")).unwrap();
    // A directory nobody accounts for, with data in it (judged at once:
    // `--grace 0s`; by default only once it is 10 minutes old).
    let orphan_id = "abcdef01-2345-6789-abcd-ef0123456789";
    let orphan = t.path().join("data/ab").join(orphan_id);
    fs::create_dir_all(&orphan).unwrap();
    fs::write(orphan.join("precious"), b"keep me").unwrap();
    // A purge queued with no daemon to run it.
    t.ok(&["create", "queued"]);
    fs::write(path_of(&t, "queued").join("f"), b"x").unwrap();
    t.ok(&["delete", "queued"]);
    t.ok(&["purge", "queued", "--no-wait"]);
    // A purged vfolder whose directory reappeared.
    t.ok(&["create", "back"]);
    let back = path_of(&t, "back");
    t.ok(&["delete", "back"]);
    t.ok(&["purge", "back"]);
    fs::create_dir_all(&back).unwrap();
    fs::write(back.join("surprise"), b"?").unwrap();

    let o = t.cli(&["fsck", "--grace", "0s"]);
    assert!(!o.status.success(), "problems make fsck fail");
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["\"gone\"", orphan_id, "\"queued\"", "\"back\""] {
        assert!(out.contains(needle), "{needle} not reported:\n{out}");
    }
    assert!(!out.contains("\"fine\""), "{out}");

    let o = t.cli(&["fsck", "--repair", "--grace", "0s"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success(),
        "the live vfolder without data needs a person:\n{out}"
    );
    assert!(
        out.contains("NOT repaired") && out.contains("\"gone\""),
        "{out}"
    );
    // Nothing was deleted: the orphan and the reappeared data are in lost+found.
    let lf = t.path().join("data/lost+found");
    let kept: Vec<String> = fs::read_dir(&lf)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let o_dir = kept.iter().find(|n| n.starts_with(orphan_id)).unwrap();
    assert_eq!(
        fs::read(lf.join(o_dir).join("precious")).unwrap(),
        b"keep me"
    );
    assert_eq!(status(&t, "queued"), "delete-complete");
    // The person decides: the vfolder without data goes; then all is well.
    t.ok(&["delete", "gone"]);
    let o = t.cli(&["fsck", "--repair", "--grace", "0s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(status(&t, "gone"), "delete-complete");
    assert!(t.ok(&["fsck"]).contains("consistent"));
    let j: serde_json::Value = serde_json::from_str(&t.ok(&["fsck", "--json"])).unwrap();
    assert_eq!(j["remaining"], 0);
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged() {
    let t = TempStore::new();
    t.ok(&["create", "work"]);
    let m = Mount::on(t, &[]);
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (stop, done, dir) = (stop.clone(), done.clone(), m.p("work"));
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let name = format!("r{round}-{i}");
                    let data = format!("{name} payload").repeat(50).into_bytes();
                    let ok = (|| -> std::io::Result<()> {
                        let tmp = dir.join(format!("{name}.tmp"));
                        let mut f = fs::File::create(&tmp)?;
                        f.write_all(&data)?;
                        f.sync_all()?;
                        fs::rename(&tmp, dir.join(&name))?;
                        fs::File::open(&dir)?.sync_all()?;
                        Ok(())
                    })();
                    if ok.is_err() {
                        break;
                    }
                    done.lock().unwrap().push((name, data));
                    i += 1;
                }
            })
        };
        // Meanwhile, status changes and a purge through the CLI.
        let name = format!("side{round}");
        m.store.ok(&["create", &name]);
        m.store.ok(&["delete", &name]);
        let _ = m.store.cli(&["purge", &name, "--no-wait"]);
        std::thread::sleep(Duration::from_millis(50 + rnd() % 250));
        // SAFETY: signalling our own daemon.
        unsafe { libc::kill(m.daemon_pid(), libc::SIGKILL) };
        stop.store(true, Ordering::Release);
        writer.join().unwrap();
        acked.extend(done.lock().unwrap().drain(..));
        assert!(eventually(Duration::from_secs(5), || {
            matches!(fs::metadata(&m.mnt), Err(ref e) if errno(e) == libc::ENOTCONN)
        }));
        // The next mount clears the stale one and resumes the purge.
        m.remount(&[], &[]);
        for (name, data) in &acked {
            assert_eq!(
                &fs::read(m.p(&format!("work/{name}"))).unwrap(),
                data,
                "{name}"
            );
        }
        assert!(eventually(Duration::from_secs(20), || status(
            &m.store, &name
        ) == "delete-complete"));
    }
    assert!(!acked.is_empty());
    assert!(m.store.ok(&["fsck"]).contains("consistent"));
}

#[test]
fn backing_faults_reach_the_caller_and_nothing_else() {
    let t = TempStore::new();
    let small = Tmpfs::new(&t, "small", "1m");
    t.ok(&["volume", "add", "small", small.0.to_str().unwrap()]);
    t.ok(&["create", "tiny", "--volume", "small"]);
    t.ok(&["create", "roomy"]);
    let m = Mount::on(t, &[]);
    // ENOSPC arrives as ENOSPC.
    let mut f = fs::File::create(m.p("tiny/big")).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let err = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(errno(&err), libc::ENOSPC);
    // The other vfolder is served as before, and no status changed.
    fs::write(m.p("roomy/ok"), b"fine").unwrap();
    assert_eq!(status(&m.store, "tiny"), "ready");
    // A read-only remount of the volume: EROFS from the backing store.
    drop(f);
    assert!(
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&small.0)
            .status()
            .unwrap()
            .success()
    );
    let e = fs::File::create(m.p("tiny/new")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    assert!(fs::metadata(m.p("tiny/big")).is_ok(), "reads go on");
    fs::write(m.p("roomy/ok2"), b"fine").unwrap();
    assert_eq!(status(&m.store, "tiny"), "ready");
}

#[test]
fn a_locked_store_makes_status_decisions_wait_a_bounded_time() {
    // A lease longer than the lock below: within its lease a mount serves
    // the statuses it knows (past it, it refuses writes: tests/enforcement.rs).
    let m = Mount::new(&["-o", "lease=60s"]);
    m.sh_ok("mkdir v && echo a > v/f");
    let db = m.store.path().join("vfolders.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("BEGIN IMMEDIATE; UPDATE vfolders SET error = NULL;")
        .unwrap();
    // Creating a vfolder needs a write: it waits, then fails; no hang.
    let t0 = Instant::now();
    let e = fs::create_dir(m.p("new")).unwrap_err();
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    assert!(matches!(errno(&e), libc::EAGAIN | libc::EIO), "{e}");
    let err = m.store.fails(&["create", "other"]);
    assert!(err.contains("locked"), "{err}");
    // Statuses already known keep serving: reads and writes in v go on.
    fs::write(m.p("v/g"), b"b").unwrap();
    c.execute_batch("COMMIT;").unwrap();
    drop(c);
    m.sh_ok("mkdir new2");
}

#[test]
fn the_daemon_never_follows_symlinks_even_when_they_are_swapped_in() {
    let t = TempStore::new();
    let outside = t.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    t.ok(&["create", "v"]);
    let backing = path_of(&t, "v");
    let m = Mount::on(t, &[]);
    // Symlinks pointing out: absolute, relative, to /.
    std::os::unix::fs::symlink(&outside, backing.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../outside", backing.join("rel")).unwrap();
    std::os::unix::fs::symlink("/", backing.join("root")).unwrap();
    // A loop swapping a directory and a symlink to the outside under the mount.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, b, o) = (stop.clone(), backing.clone(), outside.clone());
        std::thread::spawn(move || {
            let d = b.join("d");
            let rel = PathBuf::from("../../../outside");
            let _ = o;
            while !stop.load(Ordering::Acquire) {
                let _ = fs::remove_file(&d);
                let _ = fs::create_dir(&d);
                let _ = fs::remove_dir_all(&d);
                let _ = std::os::unix::fs::symlink(&rel, &d);
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let _ = fs::write(m.p("v/d/x"), b"1");
        let _ = fs::create_dir(m.p("v/d/y"));
        let _ = fs::remove_file(m.p("v/d/x"));
        let _ = fs::rename(m.p("v/d/x"), m.p("v/d/z"));
        let _ = fs::write(m.p("v/rel/x"), b"1");
    }
    stop.store(true, Ordering::Release);
    swapper.join().unwrap();
    let leaked: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        leaked.is_empty(),
        "the daemon wrote outside the vfolder: {leaked:?}"
    );
    // Purging the vfolder leaves the outside alone too.
    fs::write(outside.join("keep"), b"k").unwrap();
    m.sh_ok("mv v .trash/ && rmdir .trash/v");
    assert!(eventually(Duration::from_secs(10), || status(
        &m.store, "v"
    ) == "delete-complete"));
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"k");
    assert!(PathBuf::from("/etc/passwd").exists());
}

#[test]
fn mounts_inside_a_vfolder_are_not_crossed_and_devices_are_inert() {
    let t = TempStore::new();
    let outside = t.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"s").unwrap();
    t.ok(&["create", "v"]);
    let inner = path_of(&t, "v").join("inner");
    fs::create_dir(&inner).unwrap();
    assert!(
        Command::new("mount")
            .arg("--bind")
            .arg(&outside)
            .arg(&inner)
            .status()
            .unwrap()
            .success()
    );
    let _g = common::Undo::new(&["umount", "-l"], &inner);
    let m = Mount::on(t, &[]);
    let e = fs::metadata(m.p("v/inner/secret")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    assert!(!m.sh_ok("ls v").contains("inner"));
    // Device nodes are not honoured (nodev), setuid bits neither (nosuid).
    m.sh_ok("mknod v/null c 1 3");
    let e = fs::File::open(m.p("v/null")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let st = fs::metadata(m.p("v/null")).unwrap();
    assert_eq!(st.mode() & libc::S_IFMT, libc::S_IFCHR);
    let opts = m.sh_ok("grep \" $M \" /proc/mounts");
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
}
