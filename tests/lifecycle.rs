//! Lifecycle correctness (issue 14 §3–§6): attachments block what would
//! break them, stable trash names, jobs whose owner died, the trash
//! retention's compare-and-set, owner identity across PID namespaces, and
//! readdirplus stopping cleanly at a failing entry.

mod common;

use std::time::Duration;

use common::TempStore;
use vfolderfs::catalog::Catalog;
use vfolderfs::layout::Layout;
use vfolderfs::status::Status;
use vfolderfs::workers::pool::retention_purge;

fn catalog(t: &TempStore) -> Catalog {
    Catalog::open(Layout::new(t.path())).unwrap()
}

/// The scanner read a trashed row past its retention; before it requested
/// the purge, the vfolder was restored and deleted again. The purge must
/// not happen: the new deletion has a retention of its own.
#[test]
fn a_vfolder_restored_and_deleted_again_keeps_its_new_retention() {
    let t = TempStore::new();
    t.ok(&["create", "x"]);
    t.ok(&["delete", "x", "--no-wait"]);
    let cat = catalog(&t);
    let listed = cat
        .store()
        .get_live("x")
        .err()
        .map(|_| ())
        .map_or_else(|| unreachable!(), |()| cat.resolve_trashed("x").unwrap());
    assert_eq!(listed.status, Status::DeletePending);
    std::thread::sleep(Duration::from_millis(5));
    t.ok(&["restore", "x", "--no-wait"]);
    t.ok(&["delete", "x", "--no-wait"]);
    let keep = Duration::from_secs(3600);
    // As if the scanner had read `listed` more than `keep` ago.
    let now = listed.status_changed_at + keep.as_millis() as i64 + 1;
    assert!(!retention_purge(&cat, &listed, keep, now).unwrap());
    assert_eq!(
        cat.store().get(&listed.id).unwrap().status,
        Status::DeletePending
    );
    // Read afresh, its own (new) deletion is what counts: past it, it goes.
    let fresh = cat.store().get(&listed.id).unwrap();
    let now = fresh.status_changed_at + keep.as_millis() as i64 + 1;
    assert!(retention_purge(&cat, &fresh, keep, now).unwrap());
    assert!(cat.store().get(&listed.id).unwrap().status.is_purging());
}

/// A readdirplus whose entry fails part way returns the entries it had
/// added (their lookups were counted) instead of an error for the whole
/// reply; the failing entry's error comes with the next reply.
#[test]
fn readdirplus_returns_what_it_collected_before_a_failing_entry() {
    let t = TempStore::new();
    t.ok(&["create", "d"]);
    let backing = std::path::PathBuf::from(t.show("d")["path"].as_str().unwrap());
    for i in 0..40 {
        std::fs::write(backing.join(format!("file-{i:02}")), b"x").unwrap();
    }
    // The order getdents gives (the mount passes its offsets through).
    let order: Vec<String> = std::fs::read_dir(&backing)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let failing = order[10].clone();
    let m = common::Mount::on_env(t, &[], &[("VFOLDERFS_TEST_FAIL_LOOKUP", &failing)]);
    let mut seen = Vec::new();
    let mut error = None;
    for e in std::fs::read_dir(m.p("d")).unwrap() {
        match e {
            Ok(e) => seen.push(e.file_name().into_string().unwrap()),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    // Old code: the whole first reply became EIO, and nothing was listed.
    assert!(
        seen.len() >= 10 && seen[..10] == order[..10],
        "the entries before the failing one come first: {seen:?} ({error:?})"
    );
    match error {
        // The next readdirplus started at the failing entry.
        Some(e) => assert_eq!(common::errno(&e), libc::EIO, "{e}"),
        // The kernel went on with a plain readdir (no lookups): all of it.
        None => {
            let (mut a, mut b) = (seen.clone(), order.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
    }
}

/// The trash names of the mount (`ls .trash`) and of the CLI (`list --all`).
fn trash_listings(m: &common::Mount) -> (Vec<String>, Vec<String>) {
    let mut mount: Vec<String> = std::fs::read_dir(m.p(".trash"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    mount.sort();
    let all: serde_json::Value =
        serde_json::from_str(&m.store.ok(&["list", "--all", "--json"])).unwrap();
    let mut cli: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["trash_name"].as_str().map(str::to_string))
        .collect();
    cli.sort();
    (mount, cli)
}

/// Every trashed vfolder keeps a stable `NAME~ID8` name for as long as it
/// is in the trash, on the CLI and on the mount, whatever else comes and
/// goes; the mount and the CLI list the same names.
#[test]
fn trash_names_are_stable_and_the_mount_and_the_cli_agree() {
    let m = common::Mount::new(&[]);
    let s = &m.store;
    s.ok(&["create", "foo"]);
    let old = s.show("foo")["id"].as_str().unwrap().to_string();
    s.ok(&["delete", "foo"]);
    s.ok(&["create", "foo"]);
    let new = s.show("foo")["id"].as_str().unwrap().to_string();
    s.ok(&["delete", "foo"]);
    let old_tn = format!("foo~{}", &old[..8]);
    let new_tn = format!("foo~{}", &new[..8]);
    let (mount, cli) = trash_listings(&m);
    assert_eq!(mount, cli);
    let mut want = vec!["foo".to_string(), old_tn.clone()];
    want.sort();
    assert_eq!(mount, want);
    // Both stable forms name their own vfolder, also the one listed as `foo`.
    assert_eq!(s.show(&old_tn)["id"], old.as_str());
    assert_eq!(s.show(&new_tn)["id"], new.as_str());
    let ino = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(m.p(p)).unwrap().ino()
    };
    let backing_ino = |id: &str| {
        use std::os::unix::fs::MetadataExt;
        let path = s.show(id)["path"].as_str().unwrap().to_string();
        std::fs::metadata(path).unwrap().ino()
    };
    assert_eq!(ino(&format!(".trash/{new_tn}")), backing_ino(&new));
    // The newer one leaves the trash: the older keeps its stable name.
    s.ok(&["restore", "foo"]);
    assert_eq!(s.show(&old_tn)["id"], old.as_str());
    assert_eq!(ino(&format!(".trash/{old_tn}")), backing_ino(&old));
    let (mount, cli) = trash_listings(&m);
    assert_eq!(mount, cli);
    assert_eq!(mount, ["foo"]);
    // An id prefix of 8 hex digits resolves anywhere a name does.
    assert_eq!(s.show(&new[..8])["name"], "foo");
    assert_eq!(s.show(&old[..13])["id"], old.as_str());
    s.ok(&["rename", &new[..8], "bar"]);
    assert_eq!(s.show("bar")["id"], new.as_str());
    // The stable form works for gestures on the mount too (restore by mv).
    std::fs::rename(m.p(&format!(".trash/{old_tn}")), m.p("foo-again")).unwrap();
    assert_eq!(s.show("foo-again")["id"], old.as_str());
}

/// A vfolder's own name cannot take the trash-name form, so it can never
/// be mistaken for (or hide) another trashed vfolder; and rows named so
/// before the rule are still listed exactly once.
#[test]
fn a_name_in_the_trash_name_form_is_refused_and_old_ones_do_not_collide() {
    let m = common::Mount::new(&[]);
    let s = &m.store;
    let err = s.fails(&["create", "foo~13b29a5a"]);
    assert!(err.contains("reserved for trash names"), "{err}");
    let e = std::fs::create_dir(m.p("foo~13b29a5a")).unwrap_err();
    assert_eq!(common::errno(&e), libc::EINVAL);
    s.ok(&["create", "ok"]);
    let err = s.fails(&["rename", "ok", "ok~0123456789"]);
    assert!(err.contains("reserved for trash names"), "{err}");
    // Rows from before the rule: a trashed `foo` whose trash name would
    // have been `foo~13b29a5a`, and a trashed vfolder named exactly that.
    use vfolderfs::catalog::trash_names;
    use vfolderfs::store::VFolder;
    let row = |id: &str, name: &str, at: i64| VFolder {
        id: id.into(),
        name: name.into(),
        status: Status::DeletePending,
        created_at: at,
        status_changed_at: at,
        error: None,
        volume: "default".into(),
        prev_volume: None,
        clone_src: None,
    };
    let rows = vec![
        row("13b29a5a-0000-4000-8000-000000000001", "foo", 1),
        row("20661723-0000-4000-8000-000000000002", "foo", 2),
        row("aaaaaaaa-0000-4000-8000-000000000003", "foo~13b29a5a", 3),
    ];
    let mut names: Vec<String> = trash_names(rows.clone())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["foo", "foo~13b29a5a", "foo~13b29a5a~aaaaaaaa"],
        "each listed once, under distinct names"
    );
    let listed = trash_names(rows);
    let find = |sel: &str| {
        vfolderfs::catalog::find_trashed(&listed, sel)
            .unwrap()
            .map(|v| v.id)
    };
    assert_eq!(
        find("foo~13b29a5a").unwrap(),
        "13b29a5a-0000-4000-8000-000000000001"
    );
    assert_eq!(
        find("foo~13b29a5a~aaaaaaaa").unwrap(),
        "aaaaaaaa-0000-4000-8000-000000000003"
    );
    assert_eq!(
        find("foo~20661723").unwrap(),
        "20661723-0000-4000-8000-000000000002"
    );
}

/// A session: a process in its own mount namespace (`unshare -m`) that ran
/// `script` (with `$B` the binary, `$S` the store) and then sleeps; killed
/// (its namespace and binds gone with it) on drop.
struct Session(std::process::Child);

impl Session {
    fn start(m: &common::Mount, script: &str) -> Session {
        let n = rand_suffix();
        let ready = m.store.dir.path().join(format!("ready-{n}"));
        let log = m.store.dir.path().join(format!("session-{n}.err"));
        let child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "{{ {script}; }} 2>{l} && touch {r} && exec sleep 600",
                r = ready.display(),
                l = log.display()
            ))
            .env("B", common::bin())
            .env("S", m.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Session(child);
        let ok = common::eventually(Duration::from_secs(20), || {
            ready.exists() || s.0.try_wait().is_ok_and(|w| w.is_some())
        });
        assert!(
            ok && ready.exists(),
            "the session's script failed: {script}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A CLI command run in the background that stops itself (SIGSTOP) at a
/// testing stop point while holding its job's claim (a long job lease, so
/// that nobody takes it over meanwhile). Continued and reaped on drop. It
/// is a CLI process, never a FUSE daemon.
struct Stopped {
    child: Option<std::process::Child>,
}

impl Stopped {
    fn start(t: &TempStore, args: &[&str], point: &str) -> Stopped {
        let child = std::process::Command::new(common::bin())
            .arg("--store")
            .arg(t.path())
            .args(args)
            .env("VFOLDERFS_TEST_STOP_AT", point)
            .env("VFOLDERFS_JOB_LEASE_MS", "600000")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let s = Stopped { child: Some(child) };
        let stopped = common::eventually(Duration::from_secs(60), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        });
        assert!(stopped, "{args:?} did not reach its stop point {point}");
        s
    }

    /// The process, no longer continued or reaped on drop.
    fn child_take(mut self) -> std::process::Child {
        self.child.take().unwrap()
    }

    /// Lets it go on and waits for it; returns its output.
    fn finish(mut self) -> std::process::Output {
        let child = self.child.take().unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        child.wait_with_output().unwrap()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The repro: a read-only attach while a relocation ran was
/// allowed, the relocation switched and removed the old copy, and the
/// session's bind showed an empty directory. Attaching is refused while
/// the vfolder is performing; once the relocation ends it attaches and
/// shows the data.
#[test]
fn no_attach_while_a_relocation_runs() {
    let t = TempStore::new();
    let vol = common::Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", vol.0.join("v").to_str().unwrap()]);
    let m = common::Mount::on(t, &[]);
    let s = &m.store;
    s.ok(&["create", "data"]);
    std::fs::write(m.p("data/f1"), b"hello").unwrap();
    let reloc = Stopped::start(s, &["relocate", "data", "--to", "fast"], "relocate-switch");
    assert_eq!(s.show("data")["status"], "performing");
    let ta = m.store.dir.path().join("sessions/a");
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(common::bin())
        .arg("--store")
        .arg(s.path())
        .args([
            "attach",
            "data",
            "--session",
            "a",
            "--read-only",
            "--target",
        ])
        .arg(&ta)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a read-only attach while performing was allowed"
    );
    assert!(
        err.contains("performing") && err.contains("\"data\""),
        "{err}"
    );
    assert_eq!(s.show("data")["attachments"].as_array().unwrap().len(), 0);
    let out = reloc.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.show("data")["volume"], "fast");
    let tb = m.store.dir.path().join("sessions/b");
    let sess = Session::start(
        &m,
        &format!(
            "$B --store $S attach data --session b --read-only --target {t} && \
             test \"$(cat {t}/f1)\" = hello",
            t = tb.display()
        ),
    );
    drop(sess);
}

/// A clone's target (still copying, and purged if the clone aborts) cannot
/// be attached; its source can, read-only.
#[test]
fn a_clone_target_cannot_be_attached() {
    let m = common::Mount::new(&[]);
    let s = &m.store;
    s.ok(&["create", "src"]);
    std::fs::write(m.p("src/f"), b"x").unwrap();
    let clone = Stopped::start(s, &["clone", "src", "dst"], "clone-end");
    assert_eq!(s.show("dst")["status"], "cloning");
    let t = m.store.dir.path().join("sessions/t");
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(common::bin())
        .arg("--store")
        .arg(s.path())
        .args(["attach", "dst", "--session", "a", "--read-only", "--target"])
        .arg(&t)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a clone's target was attached");
    assert!(err.contains("target of a clone"), "{err}");
    let ts = m.store.dir.path().join("sessions/s");
    drop(Session::start(
        &m,
        &format!(
            "$B --store $S attach src --session s --read-only --target {t} && test -f {t}/f",
            t = ts.display()
        ),
    ));
    let out = clone.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.show("dst")["status"], "ready");
}

/// The attachment record is made before the bind: a prune in between (the
/// daemon's own, or `sessions --prune`) must keep it, or the bind would
/// stand with no record and the vfolder could be deleted under it.
#[test]
fn a_prune_between_the_record_and_the_bind_keeps_the_record() {
    let m = common::Mount::new(&[]);
    let s = &m.store;
    s.ok(&["create", "data"]);
    let t = m.store.dir.path().join("sessions/p");
    let done = m.store.dir.path().join("attached");
    // The attach runs in a session namespace of its own and stops itself
    // between its record and its bind.
    let child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "\"$B\" --store \"$S\" attach data --session p --target {t} && touch {d} && exec sleep 600",
            t = t.display(),
            d = done.display()
        ))
        .env("B", common::bin())
        .env("S", s.path())
        .env("VFOLDERFS_TEST_STOP_AT", "attach-bind")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let session = Session(child);
    let attacher = || -> Option<i32> {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if cmd.contains("--session p")
                && cmd.contains(" attach ")
                && stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
            {
                return Some(pid);
            }
        }
        None
    };
    let mut pid = None;
    assert!(
        common::eventually(Duration::from_secs(30), || {
            pid = attacher();
            pid.is_some()
        }),
        "the attach did not stop between its record and its bind"
    );
    let pending: serde_json::Value = serde_json::from_str(&s.ok(&["sessions", "--json"])).unwrap();
    assert_eq!(pending[0]["pending"], true, "{pending}");
    // A prune now sees no bind at the target.
    let o = s.cli(&["sessions", "--prune", "--json"]);
    assert!(o.status.success());
    let after: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        after.as_array().unwrap().len(),
        1,
        "the pending record was pruned"
    );
    // SAFETY: kill has no memory-safety preconditions; the pid is the stopped attach.
    unsafe { libc::kill(pid.unwrap(), libc::SIGCONT) };
    assert!(
        common::eventually(Duration::from_secs(30), || done.exists()),
        "the attach did not finish"
    );
    let bound: serde_json::Value = serde_json::from_str(&s.ok(&["sessions", "--json"])).unwrap();
    assert_eq!(bound[0]["pending"], false, "{bound}");
    // Bound and recorded: the vfolder cannot be deleted under the session.
    let err = s.fails(&["delete", "data"]);
    assert!(err.contains("attached"), "{err}");
    drop(session);
}

/// `umount` of the mount while a session bind holds it succeeds, and the
/// daemon (still serving the bind) says which sessions hold it.
#[test]
fn an_unmount_held_by_session_binds_names_the_sessions() {
    let t = TempStore::new();
    let log = t.dir.path().join("daemon.log");
    let opt = format!("log={}", log.display());
    let m = common::Mount::on(t, &["-o", &opt]);
    m.store.ok(&["create", "data"]);
    let target = m.store.dir.path().join("sessions/u");
    let session = Session::start(
        &m,
        &format!(
            "$B --store $S attach data --session held-1 --target {t}",
            t = target.display()
        ),
    );
    let o = std::process::Command::new("umount")
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = common::eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("still hold this mount") && l.contains("session \"held-1\""))
    });
    assert!(
        said,
        "the daemon did not name the session: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The session ends: nothing holds the filesystem, the daemon ends.
    let pid = m.daemon_pid();
    drop(session);
    assert!(
        common::eventually(Duration::from_secs(30), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }),
        "the daemon outlived the last bind"
    );
}

/// A CLI clone killed mid-way with no mount running: `list` and `show` say
/// the job's owner is gone, a command refused because of it says how to go
/// on, and `jobs --resume` rolls the clone back without a mount.
#[test]
fn a_clone_whose_owner_died_is_shown_and_finished_without_a_mount() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let backing = std::path::PathBuf::from(t.show("src")["path"].as_str().unwrap());
    std::fs::write(backing.join("f"), b"data").unwrap();
    let clone = Stopped::start(&t, &["clone", "src", "dst"], "clone-end");
    // Killed where it stood (a crash, an OOM kill, a lost terminal).
    let mut child = clone.child_take();
    child.kill().unwrap();
    child.wait().unwrap();
    let list = t.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("src ") && l.contains("cloning (owner gone)")),
        "{list}"
    );
    let show = t.show("src");
    assert_eq!(show["job"]["kind"], "clone", "{show}");
    assert_eq!(show["job"]["state"], "owner gone", "{show}");
    assert_eq!(show["job"]["owner_alive"], false, "{show}");
    assert_eq!(show["job"]["vfolder"], "dst", "{show}");
    assert_eq!(t.show("dst")["job"]["state"], "owner gone");
    let err = t.fails(&["delete", "src"]);
    assert!(
        err.contains("cloning") && err.contains("vfolderfs jobs --resume"),
        "{err}"
    );
    let jobs: serde_json::Value = serde_json::from_str(&t.ok(&["jobs", "--json"])).unwrap();
    let dst_job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["vfolder"] == "dst")
        .unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(dst_job["state"], "owner gone");
    let out = t.ok(&["jobs", "--resume"]);
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(t.show("src")["status"], "ready");
    assert_eq!(t.show("dst")["status"], "delete-complete");
    assert!(t.show("src")["job"].is_null());
    t.ok(&["delete", "src"]);
    assert_eq!(t.ok(&["jobs", "--resume"]).trim(), "no jobs to resume");
}

/// A job claimed in another PID namespace on this host (its pid there
/// means another process, or none, here) is not judged dead: it is left to
/// its owner while its lease holds, and that owner finishes it.
#[test]
fn a_job_owned_in_another_pid_namespace_is_not_taken_over() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    // Not as the namespace's pid 1 (which ignores the stop point's SIGSTOP):
    // under a shell, as pid 2 there.
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg("\"$B\" --store \"$S\" clone src dst; rc=$?; exit $rc")
        .env("B", common::bin())
        .env("S", t.path())
        .env("VFOLDERFS_TEST_STOP_AT", "clone-end")
        .env("VFOLDERFS_JOB_LEASE_MS", "600000")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = t.path().display().to_string();
    let stopped = || -> Option<i32> {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if cmd.contains(&store)
                && cmd.contains(" clone ")
                && !cmd.starts_with("unshare")
                && !cmd.starts_with("sh ")
                && stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
            {
                return Some(pid);
            }
        }
        None
    };
    struct Cont(Option<i32>);
    impl Drop for Cont {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(p, libc::SIGCONT) };
            }
        }
    }
    let mut pid = None;
    let found = common::eventually(Duration::from_secs(60), || {
        pid = stopped();
        pid.is_some()
    });
    let cont = Cont(pid);
    if !found {
        let _ = child.kill();
        panic!("the clone in a PID namespace did not reach its stop point");
    }
    let owner = t.show("dst")["job"]["owner"].as_str().unwrap().to_string();
    assert_eq!(t.show("dst")["job"]["state"], "running", "owner {owner}");
    let out = t.ok(&["jobs", "--resume"]);
    assert!(out.contains("held by a live process"), "{out}");
    assert_eq!(t.show("dst")["status"], "cloning", "taken over: {out}");
    assert_eq!(t.show("dst")["job"]["owner"], owner.as_str());
    drop(cont);
    let st = child.wait().unwrap();
    assert!(st.success(), "the clone's owner could not finish it");
    assert_eq!(t.show("dst")["status"], "ready");
}
