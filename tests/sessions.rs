//! Session mounts with real bind mounts, each session in its own mount
//! namespace (`unshare -m`).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Mount, TempStore, errno, eventually};
use vfolderfs::catalog::{Catalog, NewDir};
use vfolderfs::layout::Layout;
use vfolderfs::status::{Action, Op, Status};
use vfolderfs::store::{StoreError, TransitionArgs};

/// A session: a process in its own mount namespace that ran `script`
/// successfully, touched `ready`, and sleeps until killed.
struct Session {
    child: Child,
}

impl Session {
    fn start(m: &Mount, script: &str) -> Session {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ready = m.store.dir.path().join(format!("ready-{n}"));
        let _ = fs::remove_file(&ready);
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "{{ {script}; }} && touch {r} && exec sleep 600",
                r = ready.display()
            ))
            .env("B", common::bin())
            .env("S", m.store.path())
            .env("M", &m.mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut s = Session { child };
        // A failing script (any part of an && chain too) ends the session.
        let mut exited = false;
        eventually(Duration::from_secs(10), || {
            exited = exited || s.child.try_wait().is_ok_and(|w| w.is_some());
            exited || ready.exists()
        });
        if !ready.exists() {
            let _ = s.child.kill();
            let out = s.child.wait_with_output_ref();
            panic!("session did not start: {out}");
        }
        let _ = fs::remove_file(&ready);
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a command inside the session's mount namespace.
    fn exec(&self, m: &Mount, script: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "sh", "-c", script])
            .env("B", common::bin())
            .env("S", m.store.path())
            .output()
            .unwrap()
    }
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> String {
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target(m: &Mount, name: &str) -> PathBuf {
    m.store.dir.path().join("sessions").join(name)
}

/// How many attachments `show` reports for a vfolder.
fn attachments(m: &Mount, name: &str) -> usize {
    m.store.show(name)["attachments"].as_array().unwrap().len()
}

#[test]
fn a_session_reads_and_writes_through_an_attached_vfolder() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data && echo from-host > data/in");
    let t = target(&m, "s1");
    let s = Session::start(
        &m,
        &format!(
            "$B --store $S attach data --session s1 --target {t} && \
             test \"$(cat {t}/in)\" = from-host && echo from-session > {t}/out",
            t = t.display()
        ),
    );
    assert_eq!(
        fs::read_to_string(m.p("data/out")).unwrap(),
        "from-session\n"
    );
    // Not visible in the host namespace: the bind lives in the session's.
    assert!(!common::is_mounted(&t));
    let v = m.store.show("data");
    let atts = v["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 1);
    assert_eq!(atts[0]["session"], "s1");
    assert_eq!(atts[0]["mode"], "rw");
    let list: serde_json::Value =
        serde_json::from_str(&m.store.ok(&["sessions", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Deleting it is refused, through mv and through the CLI.
    let e = fs::rename(m.p("data"), m.p(".trash/data")).unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    let e = fs::rename(m.p("data"), m.p("renamed")).unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    let err = m.store.fails(&["delete", "data"]);
    assert!(
        err.contains("\"data\"") && err.contains("attached"),
        "{err}"
    );
    let err = m.store.fails(&["rename", "data", "other"]);
    assert!(err.contains("attached"), "{err}");
    assert_eq!(m.store.show("data")["status"], "ready");

    // Detach inside the session: unmounted and forgotten; then delete works.
    let o = s.exec(&m, "$B --store $S detach --session s1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("detached"));
    let o = s.exec(
        &m,
        &format!("grep -c ' {} ' /proc/self/mountinfo || true", t.display()),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
    // Detaching again succeeds and says so.
    let o = s.exec(&m, "$B --store $S detach --session s1");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("already detached"));
    m.store.ok(&["delete", "data"]);
}

#[test]
fn read_only_attach_refuses_writes() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data && echo x > data/f");
    let t = target(&m, "ro");
    let s = Session::start(
        &m,
        &format!(
            "$B --store $S attach data --session ro --target {t} --read-only",
            t = t.display()
        ),
    );
    let o = s.exec(&m, &format!("cat {t}/f && echo y > {t}/g", t = t.display()));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"));
    assert!(String::from_utf8_lossy(&o.stdout).contains('x'));
    assert!(!m.p("data/g").exists());
    assert_eq!(m.store.show("data")["attachments"][0]["mode"], "ro");
}

#[test]
fn attaching_a_trashed_or_missing_vfolder_is_refused_and_mounts_nothing() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir gone && mv gone .trash/");
    let t = target(&m, "x");
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "$B --store $S attach gone --session x --target {t}; rc=$?; \
             grep -c ' {t} ' /proc/self/mountinfo; exit $rc",
            t = t.display()
        ))
        .env("B", common::bin())
        .env("S", m.store.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("\"gone\"") && err.contains("delete-pending"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
    // By the store interface, the status is named.
    let cat = Catalog::open(Layout::new(m.store.path())).unwrap();
    let id = m.store.show("gone")["id"].as_str().unwrap().to_string();
    match cat
        .store()
        .attach(&id, "x", "/nowhere", false, 1, "/m/gone", None)
    {
        Err(StoreError::Refused {
            status,
            op: Action::Attach { .. },
            ..
        }) => assert_eq!(status, Status::DeletePending),
        other => panic!("{other:?}"),
    }
    assert!(cat.store().attachments(None).unwrap().is_empty());
}

#[test]
fn attach_racing_delete_ends_consistently() {
    let t = TempStore::new();
    let layout = Layout::new(t.path());
    let cat = Catalog::open(layout.clone()).unwrap();
    for round in 0..20 {
        let v = cat
            .create(&format!("r{round}"), NewDir::default(), "t")
            .unwrap();
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, layout, id) = (barrier.clone(), layout.clone(), v.id.clone());
                std::thread::spawn(move || {
                    let cat = Catalog::open(layout).unwrap();
                    barrier.wait();
                    if i % 2 == 0 {
                        cat.store()
                            .attach(
                                &id,
                                &format!("s{i}"),
                                &format!("/t/{i}"),
                                false,
                                1,
                                "/m",
                                None,
                            )
                            .is_ok()
                    } else {
                        let args = TransitionArgs {
                            cause: "race",
                            ..Default::default()
                        };
                        cat.store().transition(&id, Op::Delete, args).is_ok()
                    }
                })
            })
            .collect();
        let wins: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let status = cat.store().get(&v.id).unwrap().status;
        let atts = cat.store().attachments(Some(&v.id)).unwrap().len();
        let deleted = wins.iter().enumerate().any(|(i, w)| i % 2 == 1 && *w);
        let attached = wins
            .iter()
            .enumerate()
            .filter(|(i, w)| i % 2 == 0 && **w)
            .count();
        assert_eq!(atts, attached, "every successful attach has its record");
        if deleted {
            assert_eq!((status, atts), (Status::DeletePending, 0), "round {round}");
        } else {
            assert_eq!(status, Status::Ready, "round {round}");
            assert!(atts > 0);
        }
    }
}

#[test]
fn a_killed_sessions_stale_attachment_is_pruned() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data");
    let t = target(&m, "k");
    let mut s = Session::start(
        &m,
        &format!(
            "$B --store $S attach data --session k --target {}",
            t.display()
        ),
    );
    assert_eq!(attachments(&m, "data"), 1);
    // While the session lives, prune keeps it.
    m.store.ok(&["sessions", "--prune"]);
    assert_eq!(attachments(&m, "data"), 1);
    let _ = s.child.kill();
    let _ = s.child.wait();
    let o = m.store.cli(&["sessions", "--prune"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("pruned stale attachment"));
    assert_eq!(attachments(&m, "data"), 0);
    m.store.ok(&["delete", "data"]);
    // In this namespace too: a target unmounted behind vfolderfs's back.
    m.sh_ok("mkdir d2");
    let t2 = target(&m, "here");
    m.store.ok(&[
        "attach",
        "d2",
        "--session",
        "h",
        "--target",
        t2.to_str().unwrap(),
    ]);
    let guard = common::Undo::new(&["umount", "-l"], &t2);
    assert!(common::is_mounted(&t2));
    assert!(Command::new("umount").arg(&t2).status().unwrap().success());
    drop(guard);
    m.store.ok(&["sessions", "--prune"]);
    assert_eq!(attachments(&m, "d2"), 0);
}

#[test]
fn detach_by_target_and_without_a_mount_running() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir a");
    let t = target(&m, "bt");
    m.store.ok(&[
        "attach",
        "a",
        "--session",
        "z",
        "--target",
        t.to_str().unwrap(),
    ]);
    assert!(common::is_mounted(&t));
    let out = m.store.ok(&["detach", "--target", t.to_str().unwrap()]);
    assert!(out.contains("detached"), "{out}");
    assert!(!common::is_mounted(&t));
    m.unmount();
    let err = m.store.fails(&[
        "attach",
        "a",
        "--session",
        "z",
        "--target",
        t.to_str().unwrap(),
    ]);
    assert!(err.contains("no vfolderfs mount"), "{err}");
    assert!(m.store.ok(&["sessions", "--json"]).trim() == "[]");
}

/// Runs `attach` with `session` in a throwaway mount namespace; returns the
/// output and how many mounts sat at the target in that namespace.
fn attach_in_new_ns(
    m: &Mount,
    session: &str,
    t: &std::path::Path,
) -> (std::process::Output, usize) {
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "\"$B\" --store \"$S\" attach data --session \"$ID\" --target \"$T\"; rc=$?; \
             grep -c \" $T \" /proc/self/mountinfo; exit $rc",
        )
        .env("B", common::bin())
        .env("S", m.store.path())
        .env("ID", session)
        .env("T", t)
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(usize::MAX);
    (o, n)
}

#[test]
fn session_ids_must_be_non_empty_printable_and_at_most_255_bytes() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data");
    let long = "s".repeat(256);
    let cases: [(&str, &str); 5] = [
        ("", "empty"),
        (&long, "255 bytes"),
        ("a\nb", "control character"),
        ("tab\there", "control character"),
        ("del\u{7f}", "control character"),
    ];
    for (i, (id, why)) in cases.iter().enumerate() {
        let t = target(&m, &format!("bad{i}"));
        let (o, mounted) = attach_in_new_ns(&m, id, &t);
        let err = String::from_utf8_lossy(&o.stderr);
        // The CLI's usage-error path: exit status 2, the rule in the message.
        assert_eq!(o.status.code(), Some(2), "{id:?}: {err}");
        assert!(
            err.contains("session id") && err.contains(why),
            "{id:?}: {err}"
        );
        assert_eq!(mounted, 0, "{id:?}: something was mounted");
        assert_eq!(attachments(&m, "data"), 0, "{id:?}: a record was made");
        // detach checks the same rule.
        let o = m.store.cli(&["detach", "--session", id]);
        assert_eq!(o.status.code(), Some(2), "detach {id:?}");
    }
    // At the limits: 255 bytes, any printable Unicode.
    for (i, id) in ["s".repeat(255), "세션 1 ✓".to_string()].iter().enumerate() {
        let t = target(&m, &format!("good{i}"));
        let (o, mounted) = attach_in_new_ns(&m, id, &t);
        assert!(
            o.status.success(),
            "{id:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(mounted, 1);
    }
    assert_eq!(attachments(&m, "data"), 2);
}

#[test]
fn a_second_attach_in_a_namespace_finds_the_mount_not_the_first_bind() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir a b");
    let (ta, tb) = (target(&m, "a"), target(&m, "b"));
    let s = Session::start(
        &m,
        &format!(
            "$B --store $S attach a --session s --target {ta} && \
             $B --store $S attach b --session s --target {tb} && \
             touch {ta}/in-a {tb}/in-b",
            ta = ta.display(),
            tb = tb.display()
        ),
    );
    assert!(m.p("a/in-a").exists() && m.p("b/in-b").exists());
    let o = s.exec(&m, "$B --store $S detach --session s");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The per-mount options (mountinfo field 6) of the topmost mount at
/// `point` in the mount namespace of `pid`.
fn mount_options(pid: u32, point: &std::path::Path) -> Vec<String> {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let want = point.to_string_lossy().replace(' ', "\\040");
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .unwrap_or_else(|| panic!("nothing mounted at {}:\n{info}", point.display()));
    line.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

#[test]
fn session_binds_are_nosuid_nodev_even_from_a_suid_dev_mount() {
    for opts in [&[][..], &["-o", "suid,dev"][..]] {
        let m = Mount::new(opts);
        m.sh_ok("mkdir data");
        if !opts.is_empty() {
            // The premise: the vfolderfs mount itself allows suid and devices.
            let own = mount_options(std::process::id(), &m.mnt);
            assert!(
                !own.iter().any(|o| o == "nosuid" || o == "nodev"),
                "{own:?}"
            );
        }
        let (rw, ro) = (target(&m, "rw"), target(&m, "ro"));
        let s = Session::start(
            &m,
            &format!(
                "$B --store $S attach data --session s --target {rw} && \
                 $B --store $S attach data --session s --target {ro} --read-only",
                rw = rw.display(),
                ro = ro.display()
            ),
        );
        for (t, mode) in [(&rw, "rw"), (&ro, "ro")] {
            let o = mount_options(s.pid(), t);
            for want in [mode, "nosuid", "nodev"] {
                assert!(
                    o.iter().any(|x| x == want),
                    "{opts:?} {mode} bind: {want} missing from {o:?}"
                );
            }
        }
    }
}

/// Runs `vfolderfs attach ARGS` in a throwaway mount namespace; returns the
/// output and, for each of `watch`, how many mounts were at it or below it
/// in that namespace afterwards.
fn attach_watching(
    m: &Mount,
    args: &[&str],
    watch: &[&std::path::Path],
) -> (std::process::Output, Vec<usize>) {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "\"$B\" --store \"$S\" attach \"$@\"; rc=$?; \
             for w in $WATCH; do cut -d' ' -f5 /proc/self/mountinfo | grep -c \"^$w\" ; done; \
             exit $rc",
        )
        .arg("sh")
        .args(args)
        .env("B", common::bin())
        .env("S", m.store.path())
        .env(
            "WATCH",
            watch
                .iter()
                .map(|w| w.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
    let o = c.output().unwrap();
    let counts = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (o, counts)
}

/// A directory other users can reach (temporary directories are 0700).
fn open_dir(m: &Mount, name: &str) -> PathBuf {
    let d = m.store.dir.path().join(name);
    fs::create_dir_all(&d).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(m.store.dir.path())
        .arg(&d)
        .status()
        .unwrap();
    d
}

#[test]
fn attach_refuses_a_target_whose_component_a_user_swapped_for_a_symlink() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data");
    let base = open_dir(&m, "pub");
    let elsewhere = open_dir(&m, "elsewhere");
    let user = base.join("user");
    fs::create_dir_all(user.join("sub")).unwrap();
    // The user owns a directory on the target's path ...
    assert!(
        Command::new("chown")
            .args(["-R", "65533:65533"])
            .arg(&user)
            .status()
            .unwrap()
            .success()
    );
    // ... and replaces a component with a symlink to somewhere else.
    let o = Command::new("setpriv")
        .args(["--reuid", "65533", "--regid", "65533", "--clear-groups"])
        .args([
            "sh",
            "-c",
            "rmdir \"$1/sub\" && ln -s \"$2\" \"$1/sub\"",
            "sh",
        ])
        .arg(&user)
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = user.join("sub/t");
    let (o, counts) = attach_watching(
        &m,
        &["data", "--session", "s", "--target", t.to_str().unwrap()],
        &[&elsewhere, &user],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "attach followed the symlink");
    assert!(
        err.contains(&user.join("sub").display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(counts, [0, 0], "something was mounted");
    assert!(!elsewhere.join("t").exists(), "created behind the symlink");
    assert_eq!(attachments(&m, "data"), 0);
}

#[test]
fn attach_refuses_a_target_that_is_a_symlink() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data");
    let elsewhere = open_dir(&m, "elsewhere");
    let link = m.store.dir.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (o, counts) = attach_watching(
        &m,
        &["data", "--session", "s", "--target", link.to_str().unwrap()],
        &[&elsewhere, &link],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "attach followed the symlink");
    assert!(
        err.contains(&link.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(counts, [0, 0], "something was mounted");
    assert_eq!(attachments(&m, "data"), 0);
}

#[test]
fn targets_are_recorded_absolute_and_normalized_and_detach_matches_them() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data");
    let dir = m.store.dir.path();
    let given = format!("{}/sessions//a/./b/../rel/", dir.display());
    let want = dir.join("sessions/a/rel");
    m.store
        .ok(&["attach", "data", "--session", "n", "--target", &given]);
    let _guard = common::Undo::new(&["umount", "-l"], &want);
    assert!(common::is_mounted(&want));
    assert_eq!(
        m.store.show("data")["attachments"][0]["target"],
        want.display().to_string()
    );
    // A relative target is taken against the working directory.
    let o = std::process::Command::new(common::bin())
        .current_dir(dir)
        .args(["--store", m.store.path().to_str().unwrap()])
        .args(["attach", "data", "--session", "r", "--target", "sessions/r"])
        .output()
        .unwrap();
    let _guard2 = common::Undo::new(&["umount", "-l"], &dir.join("sessions/r"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(common::is_mounted(&dir.join("sessions/r")));
    let out = m.store.ok(&["detach", "--target", &given]);
    assert!(out.contains("detached"), "{out}");
    assert!(!common::is_mounted(&want));
    m.store.ok(&[
        "detach",
        "--target",
        dir.join("sessions/r").to_str().unwrap(),
    ]);
    assert!(!common::is_mounted(&dir.join("sessions/r")));
    assert_eq!(attachments(&m, "data"), 0);
}

/// Mount points (mountinfo field 5) in the mount namespace of `pid`.
fn mount_points(pid: u32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

#[test]
fn detach_is_not_steered_by_a_symlink_swapped_into_the_target_path() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir data");
    let base = open_dir(&m, "pub");
    let elsewhere = open_dir(&m, "elsewhere");
    let user = base.join("user");
    fs::create_dir_all(user.join("sub")).unwrap();
    fs::create_dir_all(elsewhere.join("t")).unwrap();
    assert!(
        Command::new("chown")
            .args(["-R", "65533:65533"])
            .arg(&user)
            .status()
            .unwrap()
            .success()
    );
    let t = user.join("sub/t");
    let victim = elsewhere.join("t");
    // In the session: the bind, and another mount the user must not reach.
    let s = Session::start(
        &m,
        &format!(
            "$B --store $S attach data --session s --target {t} && \
             mount -t tmpfs victim {v}",
            t = t.display(),
            v = victim.display()
        ),
    );
    let points = mount_points(s.pid());
    assert!(points.contains(&t.display().to_string()), "{points:?}");
    // The user moves the directory away and puts a symlink in its place.
    let o = Command::new("setpriv")
        .args(["--reuid", "65533", "--regid", "65533", "--clear-groups"])
        .args([
            "sh",
            "-c",
            "mv \"$1/sub\" \"$1/moved\" && ln -s \"$2\" \"$1/sub\"",
            "sh",
        ])
        .arg(&user)
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = s.exec(&m, "$B --store $S detach --session s");
    let err = String::from_utf8_lossy(&o.stderr);
    let points = mount_points(s.pid());
    assert!(
        points.contains(&victim.display().to_string()),
        "detach unmounted {} through the symlink ({err})",
        victim.display()
    );
    assert!(!o.status.success(), "detach claimed success");
    assert!(err.contains("symbolic link"), "{err}");
    // The bind (now under the moved directory) and its record remain.
    assert!(
        points.contains(&user.join("moved/t").display().to_string()),
        "{points:?}"
    );
    assert_eq!(attachments(&m, "data"), 1);
}

#[test]
fn attach_right_after_mkdir_through_the_mount_succeeds() {
    // The daemon invalidates a new vfolder's entry a moment after creating
    // it; an attach whose mount copy was made before that must not fail.
    let m = Mount::new(&[]);
    let dir = m.store.dir.path().join("sessions");
    let s = Session::start(
        &m,
        &format!(
            "for i in $(seq 1 20); do mkdir $M/v$i && \
             $B --store $S attach v$i --session s --target {d}/t$i >/dev/null && \
             $B --store $S attach v$i --session s --target {d}/r$i --read-only >/dev/null \
             || exit 1; done",
            d = dir.display()
        ),
    );
    let o = s.exec(&m, "grep -c ' fuse' /proc/self/mountinfo");
    let n: usize = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(
        n >= 41,
        "{n} fuse mounts in the session: the mount and 40 binds expected"
    );
}
