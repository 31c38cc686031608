//! The trash and the purge pool: real mounts and ordinary tools, and the
//! pool's guarantees (dedupe, bound, safety, shutdown, resumption).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, TempStore, errno, eventually};
use vfolderfs::catalog::{Catalog, NewDir};
use vfolderfs::layout::Layout;
use vfolderfs::status::Status;
use vfolderfs::store::ListFilter;
use vfolderfs::workers::pool::{JobPool, PoolConfig, Task};
use vfolderfs::workers::purge;

const SLOW: (&str, &str) = ("VFOLDERFS_PURGE_THROTTLE_US", "2000");

/// Fills a backing directory directly: `dirs` directories of `per` files.
fn fill(path: &Path, dirs: usize, per: usize) -> usize {
    for d in 0..dirs {
        let dir = path.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..per {
            fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    dirs * (per + 1)
}

fn backing(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn status(t: &TempStore, name: &str) -> String {
    t.show(name)["status"].as_str().unwrap().to_string()
}

fn history_causes(t: &TempStore, name: &str) -> Vec<(String, String)> {
    let h: serde_json::Value = serde_json::from_str(&t.ok(&["history", name, "--json"])).unwrap();
    h.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to"].as_str().unwrap().to_string(),
                e["cause"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn rm_rf_of_a_trashed_vfolder_is_one_purge() {
    let t = TempStore::new();
    t.ok(&["create", "big"]);
    let path = backing(&t, "big");
    let n = fill(&path, 20, 100);
    t.ok(&["delete", "big"]);
    let m = Mount::on(t, &[]);
    assert!(m.p(".trash/big/d3/f7").exists(), "browsable before");
    let o = m.sh("rm -rf .trash/big");
    assert!(
        o.status.success(),
        "rm -rf failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(eventually(Duration::from_secs(10), || status(
        &m.store, "big"
    ) == "delete-complete"));
    assert!(!path.exists(), "backing directory removed");
    // The pool removed every entry itself: rm never descended.
    let causes = history_causes(&m.store, "big");
    let done = &causes.last().unwrap().1;
    assert!(
        done.contains(&format!("{} entries removed", n)),
        "{causes:?}"
    );
    assert!(
        causes
            .iter()
            .any(|(to, c)| to == "delete-ongoing" && c.contains("rm -r"))
    );
    assert!(eventually(Duration::from_secs(2), || !m
        .sh_ok("ls .trash")
        .contains("big")));
}

#[test]
fn rmdir_in_trash_purges_and_plain_rm_is_refused() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && echo 1 > v/f && mv v .trash/");
    let e = fs::remove_file(m.p(".trash/v/f")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    m.sh_ok("rmdir .trash/v");
    assert!(eventually(Duration::from_secs(10), || status(
        &m.store, "v"
    ) == "delete-complete"));
    // A ready vfolder cannot be purged.
    m.sh_ok("mkdir w");
    let err = m.store.fails(&["purge", "w"]);
    assert!(err.contains("\"w\"") && err.contains("ready"), "{err}");
}

#[test]
fn cli_purge_without_a_mount_and_show_reports_errors() {
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    let path = backing(&t, "a");
    let n = fill(&path, 3, 10);
    let err = t.fails(&["purge", "a"]);
    assert!(err.contains("its status is ready"), "{err}");
    t.ok(&["delete", "a"]);
    let out = t.ok(&["purge", "a"]);
    assert!(out.contains(&format!("{n} entries removed")), "{out}");
    assert_eq!(status(&t, "a"), "delete-complete");
    assert!(!path.exists());
    // Purging again is refused with the status named.
    let err = t.fails(&["purge", "a"]);
    assert!(err.contains("delete-complete"), "{err}");
}

#[test]
fn immutable_file_fails_the_purge_and_a_retry_completes() {
    let t = TempStore::new();
    t.ok(&["create", "imm"]);
    let path = backing(&t, "imm");
    fill(&path, 2, 5);
    let locked = path.join("d1/f3");
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(&locked)
        .status()
        .unwrap();
    assert!(ok.success(), "chattr +i failed (needs ext4 and root)");
    let guard = common::Undo::new(&["chattr", "-i"], &locked);
    t.ok(&["delete", "imm"]);
    let err = t.fails(&["purge", "imm"]);
    assert!(
        err.contains("d1/f3") && err.contains("Operation not permitted"),
        "{err}"
    );
    let v = t.show("imm");
    assert_eq!(v["status"], "delete-error");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("d1/f3") && msg.contains("Operation not permitted"),
        "{msg}"
    );
    drop(guard);
    t.ok(&["purge", "imm"]);
    assert_eq!(status(&t, "imm"), "delete-complete");
    assert!(!path.exists());
    assert_eq!(t.show("imm")["error"], serde_json::Value::Null);
}

#[test]
fn symlinks_and_mounts_inside_survive_a_purge() {
    let t = TempStore::new();
    let outside = t.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"precious").unwrap();
    t.ok(&["create", "s"]);
    let path = backing(&t, "s");
    fill(&path, 1, 3);
    std::os::unix::fs::symlink(&outside, path.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../outside", path.join("rel")).unwrap();
    std::os::unix::fs::symlink("/", path.join("root")).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), path.join("d0/file-link")).unwrap();
    // A bind mount inside the vfolder.
    fs::create_dir(path.join("mnt")).unwrap();
    let bound = path.join("mnt");
    let ok = Command::new("mount")
        .arg("--bind")
        .arg(&outside)
        .arg(&bound)
        .status()
        .unwrap();
    assert!(ok.success());
    let guard = common::Undo::new(&["umount", "-l"], &bound);
    t.ok(&["delete", "s"]);
    let err = t.fails(&["purge", "s"]);
    assert!(err.contains("mount point"), "{err}");
    assert_eq!(status(&t, "s"), "delete-error");
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"precious");
    drop(guard);
    t.ok(&["purge", "s"]);
    assert_eq!(status(&t, "s"), "delete-complete");
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"precious");
    assert!(outside.is_dir() && Path::new("/etc").is_dir());
}

#[test]
fn pool_dedupes_and_respects_its_bound() {
    let t = TempStore::new();
    let layout = Layout::new(t.path());
    let cat = Catalog::open(layout.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = cat
            .create(&format!("p{i}"), NewDir::default(), "t")
            .unwrap();
        fill(&cat.layout().vfolder_path(&v.id), 2, 20);
        cat.delete(&v, "t").unwrap();
        purge::request(&cat, &v.id, "test").unwrap();
        ids.push(v.id);
    }
    let pool = std::sync::Arc::new(
        JobPool::start(
            &layout,
            PoolConfig {
                workers: 2,
                scan_every: Duration::from_secs(3600),
                throttle: Some(Duration::from_micros(1500)),
            },
        )
        .unwrap(),
    );
    // Many threads ask for every vfolder many times.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (pool, ids) = (pool.clone(), ids.clone());
            std::thread::spawn(move || {
                ids.iter()
                    .filter(|id| pool.submit(Task::Purge(id.to_string())))
                    .count()
            })
        })
        .collect();
    // The scanner may have queued them first; either way, at most once each.
    let queued: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(
        queued <= ids.len(),
        "queued {queued} times for {} vfolders",
        ids.len()
    );
    assert!(eventually(Duration::from_secs(30), || {
        ids.iter()
            .all(|id| cat.store().get(id).unwrap().status == Status::DeleteComplete)
    }));
    assert_eq!(pool.peak(), 2, "two workers ran at once, never more");
    for id in &ids {
        let h = cat.store().history(id).unwrap();
        let purges = h.iter().filter(|e| e.to == Status::DeleteComplete).count();
        assert_eq!(purges, 1);
        // One removal did everything: 2 dirs + 40 files.
        assert!(
            h.last().unwrap().cause.contains("42 entries removed"),
            "{:?}",
            h
        );
        assert!(cat.store().job(id).unwrap().is_none());
    }
    assert_eq!(pool.completed(), ids.len());
}

#[test]
fn two_processes_purging_one_vfolder_remove_it_once() {
    let t = TempStore::new();
    t.ok(&["create", "twice"]);
    let n = fill(&backing(&t, "twice"), 4, 50);
    t.ok(&["delete", "twice"]);
    let spawn = || {
        Command::new(common::bin())
            .arg("--store")
            .arg(t.path())
            .args(["purge", "twice"])
            .env(SLOW.0, SLOW.1)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let causes = history_causes(&t, "twice");
    let ongoing = causes
        .iter()
        .filter(|(to, _)| to == "delete-ongoing")
        .count();
    let complete: Vec<_> = causes
        .iter()
        .filter(|(to, _)| to == "delete-complete")
        .collect();
    assert_eq!(ongoing, 1, "{causes:?}");
    assert_eq!(complete.len(), 1, "{causes:?}");
    assert!(
        complete[0].1.contains(&format!("{n} entries removed")),
        "{causes:?}"
    );
}

fn wait_started(t: &TempStore, name: &str) {
    assert!(
        eventually(Duration::from_secs(10), || {
            t.show(name)["job"]["done"].as_u64().unwrap_or(0) > 0
        }),
        "the purge never started"
    );
}

/// A mount whose daemon is part-way through a (throttled) purge of "slow";
/// returns it with the vfolder's backing directory.
fn mount_mid_purge() -> (Mount, PathBuf) {
    let t = TempStore::new();
    t.ok(&["create", "slow"]);
    let path = backing(&t, "slow");
    fill(&path, 10, 200);
    t.ok(&["delete", "slow"]);
    let m = Mount::on_env(t, &[], &[SLOW]);
    m.sh_ok("rmdir .trash/slow");
    wait_started(&m.store, "slow");
    (m, path)
}

#[test]
fn sigterm_mid_purge_leaves_ongoing_and_a_restart_completes() {
    let (m, path) = mount_mid_purge();
    // SAFETY: signalling our own daemon.
    unsafe { libc::kill(m.daemon_pid(), libc::SIGTERM) };
    assert!(eventually(Duration::from_secs(10), || {
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(m.mnt.to_str().unwrap())
    }));
    assert_eq!(status(&m.store, "slow"), "delete-ongoing");
    assert!(path.exists(), "stopped part-way");
    m.remount(&[], &[]);
    assert!(eventually(Duration::from_secs(20), || status(
        &m.store, "slow"
    ) == "delete-complete"));
    assert!(!path.exists());
}

#[test]
fn kill_9_mid_purge_and_restart_completes() {
    let (m, path) = mount_mid_purge();
    // SAFETY: signalling our own daemon.
    unsafe { libc::kill(m.daemon_pid(), libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || {
        matches!(fs::metadata(&m.mnt), Err(ref e) if errno(e) == libc::ENOTCONN)
    }));
    assert_eq!(status(&m.store, "slow"), "delete-ongoing");
    // The dead daemon still holds the claim; the next start takes it over.
    m.remount(&[], &[]);
    assert!(eventually(Duration::from_secs(20), || status(
        &m.store, "slow"
    ) == "delete-complete"));
    assert!(!path.exists());
}

#[test]
fn trash_retention_purges_old_entries_and_gc_keeps_an_audit() {
    let t = TempStore::new();
    t.ok(&["create", "old"]);
    t.ok(&["create", "kept"]);
    t.ok(&["delete", "old"]);
    t.ok(&["retention", "1s"]);
    let m = Mount::on(t, &[]);
    assert!(eventually(Duration::from_secs(10), || status(
        &m.store, "old"
    ) == "delete-complete"));
    let causes = history_causes(&m.store, "old");
    assert!(
        causes.iter().any(|(_, c)| c.contains("retention")),
        "{causes:?}"
    );
    assert_eq!(status(&m.store, "kept"), "ready");
    // gc forgets it; the audit keeps what, when and why.
    let out = m.store.ok(&["gc", "--older-than", "0", "--json"]);
    let gone: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(gone.as_array().unwrap().len(), 1);
    assert!(!m.store.cli(&["show", "old"]).status.success());
    let cat = Catalog::open(Layout::new(m.store.path())).unwrap();
    let audit = cat.store().audit().unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].name, "old");
    assert!(audit[0].history.contains("retention"));
    assert_eq!(cat.store().list(ListFilter::All).unwrap().len(), 1);
}

#[test]
fn same_named_trash_entries_through_the_mount() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir foo && echo first > foo/f && mv foo .trash/");
    let first = m.store.show("foo")["id"].as_str().unwrap().to_string();
    m.sh_ok("mkdir foo && echo second > foo/f && mv foo .trash/");
    let older = format!("foo~{}", &first[..8]);
    let listed = m.sh_ok("ls .trash");
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    assert_eq!(names, vec!["foo", older.as_str()]);
    assert_eq!(m.sh_ok(&format!("cat .trash/{older}/f")).trim(), "first");
    assert_eq!(m.sh_ok("cat .trash/foo/f").trim(), "second");
    // Both can come back, under distinct names.
    m.sh_ok(&format!("mv .trash/{older} foo-old && mv .trash/foo foo"));
    assert_eq!(m.sh_ok("cat foo-old/f foo/f"), "first\nsecond\n");
    assert_eq!(m.sh_ok("ls .trash"), "");
}

#[test]
fn only_who_may_rmdir_in_trash_can_purge_with_rm() {
    let m = Mount::new(&["--allow-other"]);
    m.sh_ok("mkdir v && chmod 755 v && echo x > v/f && chmod 644 v/f && mv v .trash/");
    // Another user can read the trashed vfolder, but rm -r does not purge it.
    let o = m.sh("setpriv --reuid 4242 --regid 4242 --clear-groups rm -rf .trash/v");
    assert!(!o.status.success());
    assert_eq!(status(&m.store, "v"), "delete-pending");
    assert_eq!(m.sh_ok("cat .trash/v/f").trim(), "x");
    // Root can.
    m.sh_ok("rm -rf .trash/v");
    assert!(eventually(Duration::from_secs(10), || status(
        &m.store, "v"
    ) == "delete-complete"));
}

/// The trash retention is the store's, not a mount's: a mount asked for a
/// short one is refused (it used to purge the whole store's trash, everyone's
/// restorable vfolders), and every mount follows the store-wide setting,
/// changed while they run.
#[test]
fn trash_retention_is_store_wide_and_no_mount_can_shorten_it() {
    let t = TempStore::new();
    t.ok(&["create", "theirs"]);
    t.ok(&["delete", "theirs"]);
    let show: serde_json::Value = serde_json::from_str(&t.ok(&["retention", "--json"])).unwrap();
    assert_eq!(show["seconds"], 30 * 86400);
    assert!(t.show("theirs")["purge_after"].is_string());
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for args in [
        vec!["mount", mnt.to_str().unwrap(), "--trash-retention", "1s"],
        vec!["mount", mnt.to_str().unwrap(), "-o", "trash_retention=1s"],
    ] {
        let o = t.cli(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?} was not refused");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("vfolderfs retention"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let m = Mount::on(t, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&m.store, "theirs"), "delete-pending");
    // Forever: nothing is purged by age, and show says so.
    m.store.ok(&["retention", "forever"]);
    assert!(m.store.show("theirs")["purge_after"].is_null());
    // Set while mounted: the running mount's pool follows.
    m.store.ok(&["retention", "1s"]);
    assert!(eventually(Duration::from_secs(20), || status(
        &m.store, "theirs"
    ) == "delete-complete"));
    assert!(
        m.store
            .fails(&["retention", "soon"])
            .contains("bad retention")
    );
}
