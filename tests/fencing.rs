//! Fencing: a job owner stopped past its lease, whose job another process
//! took over, performs no final step when it goes on (no relocation switch,
//! no removal of a copy, no status end).
//!
//! The stale owner is a CLI process with a short lease
//! (`VFOLDERFS_JOB_LEASE_MS`) that stops itself just before a final step
//! (`VFOLDERFS_TEST_STOP_AT`): the window between its last renewal and that
//! step, which a `SIGSTOP` from outside hits only by luck. A mount's job
//! scanner takes the job over once the lease has lapsed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{Mount, TempStore, Tmpfs, bin, eventually};

const LEASE: (&str, &str) = ("VFOLDERFS_JOB_LEASE_MS", "1000");
const LONG: Duration = Duration::from_secs(60);

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn status(t: &TempStore, name: &str) -> String {
    t.show(name)["status"].as_str().unwrap().to_string()
}

/// The owner of the job on a vfolder ("" when none or unclaimed).
fn job_owner(t: &TempStore, name: &str) -> String {
    t.show(name)["job"]["owner"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Starts `vfolderfs --store STORE args...` in the background.
fn spawn(t: &TempStore, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin());
    c.arg("--store")
        .arg(t.path())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("run vfolderfs")
}

/// Whether process `pid` is stopped (state `T`).
fn stopped(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
        .unwrap_or(false)
}

/// Lets a stopped process go on and waits for it to end.
fn resume(child: Child) -> Output {
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    child.wait_with_output().expect("wait for vfolderfs")
}

/// The `:pid:` part of the owner identity of process `pid`.
fn tag(pid: u32) -> String {
    format!(":{pid}:")
}

/// Every history cause of a vfolder.
fn causes(t: &TempStore, name: &str) -> Vec<String> {
    let h: serde_json::Value = serde_json::from_str(&t.ok(&["history", name, "--json"])).unwrap();
    h.as_array()
        .unwrap()
        .iter()
        .map(|e| e["cause"].as_str().unwrap().to_string())
        .collect()
}

fn fill(dir: &Path, n: usize) {
    for i in 0..n {
        fs::write(dir.join(format!("f{i}")), format!("{i}")).unwrap();
    }
}

fn intact(dir: &Path, n: usize) {
    assert_eq!(
        fs::read_dir(dir).unwrap().count(),
        n,
        "{} lost entries",
        dir.display()
    );
    for i in 0..n {
        assert_eq!(
            fs::read_to_string(dir.join(format!("f{i}"))).unwrap(),
            i.to_string()
        );
    }
}

fn fsck_consistent(t: &TempStore) {
    let o = t.cli(&["fsck"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("consistent"),
        "fsck: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn says_claim_lost(o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("lost its claim"),
        "the stale owner should say it lost its claim: {:?}\n{err}",
        o.status
    );
}

#[test]
fn a_stale_relocation_neither_switches_nor_removes_a_copy() {
    let t = TempStore::new();
    let fast = Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    fill(&old, 200);
    // A copies everything, then stops just before its switch.
    let a = spawn(
        &t,
        &["relocate", "v", "--to", "fast"],
        &[LEASE, ("VFOLDERFS_TEST_STOP_AT", "relocate-switch")],
    );
    let a_pid = a.id();
    assert!(eventually(LONG, || stopped(a_pid)), "A never stopped");
    // B (a mount) takes the job over once A's lease lapsed: a resumed copy
    // is rolled back.
    let m = Mount::on(t, &[]);
    assert!(
        eventually(LONG, || status(&m.store, "v") == "ready"
            && m.store.show("v")["job"].is_null()),
        "the takeover never ended"
    );
    assert_eq!(m.store.show("v")["volume"], "default");
    m.unmount();
    // The vfolder is relocated again; nobody runs that job yet.
    m.store.ok(&["relocate", "v", "--to", "fast", "--no-wait"]);
    // A goes on: it must not switch (the new copy is gone) nor then remove
    // the old one.
    let out = resume(a);
    let v = m.store.show("v");
    assert_eq!(v["status"], "performing", "{v}");
    assert_eq!(v["volume"], "default", "{v}");
    intact(&old, 200);
    says_claim_lost(&out);
    assert!(
        !causes(&m.store, "v")
            .iter()
            .any(|c| c.contains(&tag(a_pid))),
        "A changed the status: {:?}",
        causes(&m.store, "v")
    );
    // The queued relocation, run by a mount, ends well.
    m.remount(&[], &[]);
    assert!(eventually(LONG, || {
        let v = m.store.show("v");
        v["status"] == "ready" && v["volume"] == "fast" && !old.exists()
    }));
    intact(&path_of(&m.store, "v"), 200);
    m.unmount();
    fsck_consistent(&m.store);
}

#[test]
fn a_stale_cleanup_does_not_remove_the_live_copy() {
    let t = TempStore::new();
    let fast = Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    fill(&old, 200);
    // A relocates, then stops just before removing the old copy.
    let a = spawn(
        &t,
        &["relocate", "v", "--to", "fast"],
        &[LEASE, ("VFOLDERFS_TEST_STOP_AT", "cleanup-remove")],
    );
    let a_pid = a.id();
    assert!(eventually(LONG, || stopped(a_pid)), "A never stopped");
    assert_eq!(t.show("v")["volume"], "fast");
    // B (a mount) takes the cleanup over and removes the old copy.
    let m = Mount::on(t, &[]);
    assert!(
        eventually(LONG, || !old.exists() && m.store.show("v")["job"].is_null()),
        "the takeover never ended"
    );
    m.unmount();
    // The vfolder moves back where its old copy was.
    m.store.ok(&["relocate", "v", "--to", "default"]);
    let v = m.store.show("v");
    assert_eq!(v["volume"], "default", "{v}");
    intact(&old, 200);
    // A goes on: the copy at the old place is the live one now.
    let out = resume(a);
    intact(&old, 200);
    let v = m.store.show("v");
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["volume"], "default", "{v}");
    says_claim_lost(&out);
    fsck_consistent(&m.store);
}

#[test]
fn a_stale_purge_does_not_end_the_status() {
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let p = path_of(&t, "v");
    fill(&p, 100);
    t.ok(&["delete", "v"]);
    // A removes everything, then stops just before recording the end.
    let a = spawn(
        &t,
        &["purge", "v"],
        &[LEASE, ("VFOLDERFS_TEST_STOP_AT", "purge-end")],
    );
    let a_pid = a.id();
    assert!(eventually(LONG, || stopped(a_pid)), "A never stopped");
    assert!(!p.exists());
    // What the new owner still has to remove when A goes on (standing in
    // for the part of a tree a stopped owner had not reached).
    fs::create_dir(&p).unwrap();
    fill(&p, 2000);
    // B (a slowed mount) takes the purge over once A's lease lapsed.
    let m = Mount::on_env(t, &[], &[("VFOLDERFS_PURGE_THROTTLE_US", "3000")]);
    assert!(
        eventually(LONG, || {
            let o = job_owner(&m.store, "v");
            !o.is_empty() && !o.contains(&tag(a_pid))
        }),
        "nobody took the purge over"
    );
    let out = resume(a);
    // B is still removing: A did not end the status under it.
    assert_eq!(status(&m.store, "v"), "delete-ongoing");
    says_claim_lost(&out);
    assert!(eventually(LONG, || status(&m.store, "v") == "delete-complete"));
    assert!(!p.exists());
    let c = causes(&m.store, "v");
    assert!(!c.iter().any(|c| c.contains(&tag(a_pid))), "{c:?}");
    m.unmount();
    fsck_consistent(&m.store);
}

#[test]
fn a_stale_clone_does_not_finish() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let src = path_of(&t, "src");
    fill(&src, 100);
    // A copies everything, then stops just before ending the clone.
    let a = spawn(
        &t,
        &["clone", "src", "dst"],
        &[LEASE, ("VFOLDERFS_TEST_STOP_AT", "clone-end")],
    );
    let a_pid = a.id();
    assert!(eventually(LONG, || stopped(a_pid)), "A never stopped");
    // B (a mount) takes the clone over: a resumed clone is rolled back and
    // its partial target purged.
    let m = Mount::on(t, &[]);
    assert!(
        eventually(LONG, || status(&m.store, "dst") == "delete-complete"
            && status(&m.store, "src") == "ready"),
        "the takeover never ended"
    );
    m.unmount();
    // The source is cloned again; nobody runs that job yet.
    m.store.ok(&["clone", "src", "dst2", "--no-wait"]);
    let out = resume(a);
    assert_eq!(status(&m.store, "src"), "cloning");
    assert_eq!(status(&m.store, "dst"), "delete-complete");
    assert_eq!(status(&m.store, "dst2"), "cloning");
    says_claim_lost(&out);
    for name in ["src", "dst"] {
        let c = causes(&m.store, name);
        assert!(!c.iter().any(|c| c.contains(&tag(a_pid))), "{name}: {c:?}");
    }
    intact(&src, 100);
    // The queued clone, run by a mount, ends well.
    m.remount(&[], &[]);
    assert!(eventually(LONG, || status(&m.store, "dst2") == "ready"));
    intact(&path_of(&m.store, "dst2"), 100);
    m.unmount();
    fsck_consistent(&m.store);
}

/// The fenced store steps refuse a claim another owner took over (or that
/// ended), with the typed error, and change nothing; the new owner's claim
/// passes.
#[test]
fn fenced_store_steps_refuse_a_lost_claim_sqlite() {
    fenced_store_steps_refuse_a_lost_claim(common::Backend::Sqlite);
}

#[test]
fn fenced_store_steps_refuse_a_lost_claim_postgres() {
    fenced_store_steps_refuse_a_lost_claim(common::Backend::Postgres);
}

fn fenced_store_steps_refuse_a_lost_claim(b: common::Backend) {
    use vfolderfs::catalog::{Catalog, NewDir};
    use vfolderfs::status::{Op, Status};
    use vfolderfs::store::{Claim, StoreError, TransitionArgs};

    let t = TempStore::with(b);
    let cat = Catalog::open(t.layout()).unwrap();
    let store = cat.store();
    let lease = Duration::from_millis(1);
    let alive = |_: &str| false;
    let args = |cause| TransitionArgs {
        cause,
        ..Default::default()
    };
    let lost = |r: vfolderfs::store::Result<()>, who: &Claim| match r {
        Err(StoreError::ClaimLost { id, owner, token }) => {
            assert_eq!(
                (id.as_str(), owner.as_str(), token),
                (who.vfolder_id.as_str(), who.owner.as_str(), who.token)
            );
        }
        other => panic!("expected ClaimLost, got {other:?}"),
    };

    // Purge: A's claim lapses, B takes over; A cannot end the purge.
    let p = cat.create("p", NewDir::default(), "test").unwrap();
    store.transition(&p.id, Op::Delete, args("t")).unwrap();
    store.transition(&p.id, Op::Purge, args("t")).unwrap();
    let a = store
        .claim_job(&p.id, "purge", "A", lease, &alive)
        .unwrap()
        .unwrap()
        .claim();
    std::thread::sleep(Duration::from_millis(5));
    let b = store
        .claim_job(&p.id, "purge", "B", Duration::from_secs(60), &alive)
        .unwrap()
        .unwrap()
        .claim();
    assert_eq!(b.token, a.token + 1, "a takeover increments the token");
    lost(store.finish_purge(&a, None, "stale").map(drop), &a);
    lost(store.finish_purge(&a, Some("boom"), "stale").map(drop), &a);
    lost(store.confirm_claim(&a, Duration::from_secs(60)), &a);
    assert_eq!(store.get(&p.id).unwrap().status, Status::DeleteOngoing);
    store.confirm_claim(&b, Duration::from_secs(60)).unwrap();
    assert_eq!(
        store.finish_purge(&b, None, "done").unwrap().status,
        Status::DeleteComplete
    );

    // The same owner and token on another kind of job does not pass either.
    let k = cat.create("k", NewDir::default(), "test").unwrap();
    let c = store
        .claim_job(&k.id, "relocate", "A", lease, &alive)
        .unwrap()
        .unwrap()
        .claim();
    store.queue_job(&k.id, "clone", None).unwrap();
    lost(store.confirm_claim(&c, Duration::from_secs(60)), &c);

    // Clone: A's claim lapses, B takes over; A cannot end the clone.
    let s = cat.create("s", NewDir::default(), "test").unwrap();
    let d_id = "00000000-0000-4000-8000-000000000001";
    let (_, d) = store.begin_clone(&s.id, d_id, "d", "default", "t").unwrap();
    let a = store
        .claim_job(&d.id, "clone", "A", lease, &alive)
        .unwrap()
        .unwrap()
        .claim();
    std::thread::sleep(Duration::from_millis(5));
    let b = store
        .claim_job(&d.id, "clone", "B", Duration::from_secs(60), &alive)
        .unwrap()
        .unwrap()
        .claim();
    lost(store.finish_clone(&a, None, "stale").map(drop), &a);
    lost(store.finish_clone(&a, Some("boom"), "stale").map(drop), &a);
    assert_eq!(store.get(&s.id).unwrap().status, Status::Cloning);
    assert_eq!(store.get(&d.id).unwrap().status, Status::Cloning);
    assert_eq!(
        store.finish_clone(&b, None, "done").unwrap().status,
        Status::Ready
    );
    assert_eq!(store.get(&s.id).unwrap().status, Status::Ready);

    // Relocation: no switch, no clearing of the old volume by a lost claim,
    // nor by a claim whose job ended.
    let dir = t.dir.path().join("other");
    store.add_volume("other", dir.to_str().unwrap()).unwrap();
    let r = cat.create("r", NewDir::default(), "test").unwrap();
    store
        .transition(&r.id, Op::RelocateStart, args("t"))
        .unwrap();
    store.queue_job(&r.id, "relocate", Some("other")).unwrap();
    let a = store
        .claim_job(&r.id, "relocate", "A", lease, &alive)
        .unwrap()
        .unwrap()
        .claim();
    std::thread::sleep(Duration::from_millis(5));
    let b = store
        .claim_job(&r.id, "relocate", "B", Duration::from_secs(60), &alive)
        .unwrap()
        .unwrap()
        .claim();
    lost(
        store.switch_volume(&a, Some("other"), "stale").map(drop),
        &a,
    );
    lost(store.switch_volume(&a, None, "stale").map(drop), &a);
    let v = store.get(&r.id).unwrap();
    assert_eq!(
        (v.status, v.volume.as_str()),
        (Status::Performing, "default")
    );
    let v = store.switch_volume(&b, Some("other"), "done").unwrap();
    assert_eq!(v.prev_volume.as_deref(), Some("default"));
    lost(store.clear_prev_volume(&a), &a);
    store.release_job(&r.id, "B", true).unwrap();
    lost(store.clear_prev_volume(&b), &b);
    assert_eq!(
        store.get(&r.id).unwrap().prev_volume.as_deref(),
        Some("default")
    );
    let c = store
        .claim_job(&r.id, "relocate-cleanup", "C", lease, &alive)
        .unwrap()
        .unwrap()
        .claim();
    store.clear_prev_volume(&c).unwrap();
    assert_eq!(store.get(&r.id).unwrap().prev_volume, None);
}

/// The same with a `SIGSTOP` from outside in the middle of the copy: the
/// stale owner, resumed, neither switches nor removes anything.
#[test]
fn a_relocation_stopped_from_outside_mid_copy_stays_quiet_after_a_takeover() {
    let t = TempStore::new();
    let fast = Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    fill(&old, 1000);
    let a = spawn(
        &t,
        &["relocate", "v", "--to", "fast"],
        &[LEASE, ("VFOLDERFS_PURGE_THROTTLE_US", "3000")],
    );
    let a_pid = a.id();
    assert!(
        eventually(LONG, || t.show("v")["job"]["done"]
            .as_u64()
            .is_some_and(|d| d > 0)),
        "the copy never started"
    );
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(a_pid as i32, libc::SIGSTOP) };
    assert!(eventually(LONG, || stopped(a_pid)));
    let m = Mount::on(t, &[]);
    assert!(
        eventually(LONG, || status(&m.store, "v") == "ready"
            && m.store.show("v")["job"].is_null()),
        "the takeover never ended"
    );
    m.unmount();
    m.store.ok(&["relocate", "v", "--to", "fast", "--no-wait"]);
    let out = resume(a);
    let v = m.store.show("v");
    assert_eq!(v["status"], "performing", "{v}");
    assert_eq!(v["volume"], "default", "{v}");
    intact(&old, 1000);
    says_claim_lost(&out);
    assert!(
        !causes(&m.store, "v")
            .iter()
            .any(|c| c.contains(&tag(a_pid)))
    );
    m.remount(&[], &[]);
    assert!(eventually(LONG, || {
        let v = m.store.show("v");
        v["status"] == "ready" && v["volume"] == "fast" && !old.exists()
    }));
    intact(&path_of(&m.store, "v"), 1000);
    m.unmount();
    fsck_consistent(&m.store);
}
