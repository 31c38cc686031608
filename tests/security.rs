//! A hostile local user on a shared node: every backing call made for a
//! caller is allowed only by the caller's own rights, even when the kernel's
//! cached view of the tree is stale (a second mount of the same store), and
//! writes by non-owners clear setuid/setgid as on native filesystems.
//!
//! Two unprivileged users: Alice (65532) and Bob (65533). Commands run with
//! the working directory already inside the mount (entered as root), so the
//! test's 0700 temporary directory need not be opened up.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Mount, OtherMount};

const ALICE: u32 = 65532;
const BOB: u32 = 65533;

/// Runs `script` as `uid` (no supplementary groups unless `groups` names
/// some), with `dir` as working directory.
fn as_user(uid: u32, groups: &[u32], dir: &Path, script: &str) -> Output {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    c.args(["sh", "-c", script])
        .current_dir(dir)
        .output()
        .expect("run setpriv")
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Two mounts of one store with a world-writable sticky vfolder `shared`.
fn two_mounts() -> (Mount, OtherMount, PathBuf, PathBuf) {
    let a = Mount::new(&["--allow-other"]);
    a.sh_ok("mkdir shared && chmod 1777 shared");
    let b = OtherMount::new(&a.store, "mnt-b", &[]);
    let (da, db) = (a.p("shared"), b.0.join("shared"));
    (a, b, da, db)
}

#[test]
fn a_stale_negative_entry_never_opens_another_users_file() {
    let (_a, _b, da, db) = two_mounts();
    // Bob looks the names up on mount A: misses, cached as negative entries.
    for n in ["secret", "diary", "victim", "d", "l", "s", "n"] {
        refused(&as_user(BOB, &[], &da, &format!("stat {n}")), "stat");
    }
    // Alice, umask 077, writes her private files through mount B.
    ok(
        &as_user(
            ALICE,
            &[],
            &db,
            "umask 077 && echo alice-secret > secret && echo alice-diary > diary \
             && echo alice-victim > victim && mkdir d && echo x > l && echo x > s && echo x > n",
        ),
        "alice writes",
    );
    // Within the negative entries' lifetime, Bob creates over them on A.
    let rw_creat =
        "exec /usr/bin/python3 -c 'import os; os.open(\"secret\", os.O_RDWR | os.O_CREAT, 0o666)'";
    let e = refused(
        &as_user(BOB, &[], &da, rw_creat),
        "open(O_RDWR|O_CREAT) of Alice's file",
    );
    assert!(e.contains("Permission denied"), "{e}");
    let e = refused(
        &as_user(BOB, &[], &da, ": > diary"),
        "truncate Alice's file",
    );
    assert!(e.contains("Permission denied"), "{e}");
    // Every other creating call meets the existing name as the kernel would.
    refused(&as_user(BOB, &[], &da, "mkdir d"), "mkdir over d");
    refused(
        &as_user(BOB, &[], &da, "ln -s elsewhere s"),
        "symlink over s",
    );
    refused(&as_user(BOB, &[], &da, "mkfifo n"), "mknod over n");
    ok(&as_user(BOB, &[], &da, "echo bob > mine"), "bob's own file");
    refused(&as_user(BOB, &[], &da, "ln mine l"), "link over l");
    // Renaming onto Alice's file in a sticky directory is refused too.
    refused(
        &as_user(BOB, &[], &da, "mv -T mine victim"),
        "rename over victim",
    );
    // Nothing of hers changed (seen through B: A may still hold the
    // negative entries until they expire, as the kernel caches them).
    for (n, want) in [
        ("secret", "alice-secret\n"),
        ("diary", "alice-diary\n"),
        ("victim", "alice-victim\n"),
    ] {
        assert_eq!(fs::read_to_string(db.join(n)).unwrap(), want, "{n}");
        let st = fs::metadata(db.join(n)).unwrap();
        assert_eq!((st.uid(), st.mode() & 0o777), (ALICE, 0o600), "{n}");
    }
    assert!(fs::metadata(db.join("d")).unwrap().is_dir());
    assert!(fs::metadata(db.join("s")).unwrap().is_file());
    assert_eq!(fs::metadata(db.join("l")).unwrap().nlink(), 1);
}

#[test]
fn a_stale_mode_never_lets_another_user_read() {
    let (_a, _b, da, db) = two_mounts();
    ok(
        &as_user(ALICE, &[], &db, "echo open > f && chmod 644 f"),
        "alice",
    );
    // Bob reads it through A (the kernel caches its 0644 mode there) ...
    assert_eq!(
        ok(&as_user(BOB, &[], &da, "cat f"), "bob reads while 0644"),
        "open\n"
    );
    // ... Alice makes it private through B and writes a secret.
    ok(
        &as_user(ALICE, &[], &db, "chmod 600 f && echo secret > f"),
        "alice",
    );
    // A's cached mode is stale, but the backing call is made as Bob.
    let e = refused(&as_user(BOB, &[], &da, "cat f"), "bob reads a 0600 file");
    assert!(e.contains("Permission denied"), "{e}");
    let e = refused(
        &as_user(BOB, &[], &da, "echo bob >> f"),
        "bob writes a 0600 file",
    );
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(fs::read_to_string(db.join("f")).unwrap(), "secret\n");
}

#[test]
fn supplementary_groups_count_and_dropped_capabilities_are_honoured() {
    let m = Mount::new(&["--allow-other"]);
    m.sh_ok("mkdir shared && chmod 1777 shared && mkdir shared/grp && chgrp 4343 shared/grp && chmod 2770 shared/grp");
    let d = m.p("shared");
    // Through a supplementary group only: allowed, and the file gets the group.
    ok(
        &as_user(ALICE, &[4343], &d, "echo x > grp/a && chgrp 4343 grp/a"),
        "group member",
    );
    assert_eq!(fs::metadata(d.join("grp/a")).unwrap().gid(), 4343);
    refused(&as_user(BOB, &[], &d, "touch grp/b"), "non-member");
    // Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH is refused a 0600
    // file it does not own, as natively.
    ok(
        &as_user(ALICE, &[], &d, "echo private > p && chmod 600 p"),
        "alice",
    );
    assert_eq!(fs::read_to_string(d.join("p")).unwrap(), "private\n");
    let o = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            "cat",
            "p",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    let e = refused(&o, "root without DAC capabilities reads a 0600 file");
    assert!(e.contains("Permission denied"), "{e}");
}

/// `mode` after `uid` opens `name` for writing and writes one byte.
fn mode_after_write(dir: &Path, uid: u32, name: &str) -> u32 {
    ok(
        &as_user(uid, &[], dir, &format!("printf x 1<> {name}")),
        "write",
    );
    fs::metadata(dir.join(name)).unwrap().mode() & 0o7777
}

#[test]
fn writes_by_non_owners_clear_setuid_and_setgid() {
    let m = Mount::new(&["--allow-other", "-o", "suid"]);
    m.sh_ok("mkdir shared && chmod 1777 shared");
    let d = m.p("shared");
    for mode in [0o4777, 0o2777, 0o6777] {
        let n = format!("f{mode:o}");
        ok(
            &as_user(ALICE, &[], &d, &format!("touch {n} && chmod {mode:o} {n}")),
            "alice",
        );
        assert_eq!(fs::metadata(d.join(&n)).unwrap().mode() & 0o7777, mode);
        assert_eq!(
            mode_after_write(&d, BOB, &n),
            0o777,
            "{n} after Bob's write"
        );
    }
    // Truncation by a non-owner clears them too.
    ok(
        &as_user(ALICE, &[], &d, "echo data > t && chmod 6777 t"),
        "alice",
    );
    ok(&as_user(BOB, &[], &d, "truncate -s 1 t"), "bob truncates");
    assert_eq!(fs::metadata(d.join("t")).unwrap().mode() & 0o7777, 0o777);
    // Root's writes keep them (CAP_FSETID), as on native filesystems.
    ok(&as_user(ALICE, &[], &d, "touch r && chmod 4755 r"), "alice");
    fs::write(d.join("r"), b"root").unwrap();
    assert_eq!(fs::metadata(d.join("r")).unwrap().mode() & 0o7777, 0o4755);
    // The owner's own write clears setuid as well (no CAP_FSETID).
    assert_eq!(mode_after_write(&d, ALICE, "r"), 0o755);
    // Modes through a fresh stat of the backing file agree.
    let path = m.store.show("shared")["path"].as_str().unwrap().to_string();
    let st = fs::metadata(format!("{path}/f6777")).unwrap();
    assert_eq!(st.permissions().mode() & 0o7777, 0o777);
}

#[test]
fn a_live_backing_id_never_lets_another_user_read() {
    let (_a, _b, da, db) = two_mounts();
    ok(
        &as_user(ALICE, &[], &db, "echo open > f && chmod 644 f"),
        "alice",
    );
    // A reader holds the file on mount A: the inode's kernel-passthrough
    // backing id exists, and a later reader of the inode would share it.
    let held = fs::File::open(da.join("f")).unwrap();
    assert_eq!(
        ok(&as_user(BOB, &[], &da, "cat f"), "bob reads while 0644"),
        "open\n"
    );
    ok(
        &as_user(ALICE, &[], &db, "chmod 600 f && echo secret > f"),
        "alice",
    );
    // A's cached mode is stale and the backing id is still live, but the
    // open is made as Bob before any sharing.
    let e = refused(&as_user(BOB, &[], &da, "cat f"), "bob reads a 0600 file");
    assert!(e.contains("Permission denied"), "{e}");
    drop(held);
}
