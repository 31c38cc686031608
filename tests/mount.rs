//! The real mount, driven with ordinary tools run as processes.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{Mount, TempStore, errno, eventually};

#[test]
fn root_lists_live_vfolders_and_trash() {
    let t = TempStore::new();
    t.ok(&["create", "alpha"]);
    t.ok(&["create", "beta"]);
    t.ok(&["delete", "beta"]);
    let m = Mount::on(t, &[]);
    let ls = m.sh_ok("ls -a");
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        [".", "..", ".trash", "alpha"]
    );
    assert_eq!(m.sh_ok("ls .trash").trim(), "beta");
    assert!(fs::metadata(m.p("beta")).is_err());
    m.sh_ok("ls -la . .trash alpha .trash/beta");
}

#[test]
fn root_gestures_manage_vfolders() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir new && test -d new");
    assert_eq!(m.store.show("new")["status"], "ready");
    m.sh_ok("mv new renamed");
    assert_eq!(m.store.show("renamed")["status"], "ready");
    assert!(!m.store.cli(&["show", "new"]).status.success());
    // rmdir of a non-empty vfolder refuses; of an empty one, trashes it.
    m.sh_ok("touch renamed/f");
    let e = fs::remove_dir(m.p("renamed")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY);
    m.sh_ok("rm renamed/f && rmdir renamed");
    assert_eq!(m.store.show("renamed")["status"], "delete-pending");
    assert_eq!(m.sh_ok("ls .trash").trim(), "renamed");
    // Move out of the trash restores, under a new name if given.
    m.sh_ok("mv .trash/renamed back");
    assert_eq!(m.store.show("back")["status"], "ready");
    // And into the trash deletes.
    m.sh_ok("mv back .trash/");
    assert_eq!(m.store.show("back")["status"], "delete-pending");
    // mkdir over an existing name.
    m.sh_ok("mkdir one");
    let e = fs::create_dir(m.p("one")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    // Restoring into a clash: EEXIST, nothing changes.
    m.sh_ok("mkdir back");
    let e = fs::rename(m.p(".trash/back"), m.p("back")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    assert_eq!(m.sh_ok("ls .trash").trim(), "back");
}

#[test]
fn root_refuses_files_and_bad_names() {
    let m = Mount::new(&[]);
    let e = fs::File::create(m.p("file")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM);
    let e = std::os::unix::fs::symlink("/", m.p("link")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM);
    let long = "x".repeat(256);
    let e = fs::create_dir(m.p(&long)).unwrap_err();
    assert_eq!(errno(&e), libc::ENAMETOOLONG);
    let e = fs::create_dir(m.p("bad\nname")).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);
    let e = fs::create_dir(m.p(".trash")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    let out = m.store.ok(&["list", "--all", "--json"]);
    assert_eq!(out.trim(), "[]");
    // A long name inside a vfolder is the backing filesystem's ENAMETOOLONG.
    m.sh_ok("mkdir v");
    let e = fs::File::create(m.p(&format!("v/{long}"))).unwrap_err();
    assert_eq!(errno(&e), libc::ENAMETOOLONG);
    let e = fs::metadata(m.p(&format!("v/{long}"))).unwrap_err();
    assert_eq!(errno(&e), libc::ENAMETOOLONG);
}

#[test]
fn passthrough_with_ordinary_tools() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir -p v/a/b/c && cd v && echo hello > a/b/c/f && cat a/b/c/f");
    m.sh_ok(
        "cd v && ln a/b/c/f hard && ln -s a/b/c/f soft && test \"$(cat soft)\" = hello \
         && touch -d '2001-02-03 04:05:06' a/b/c/f && chmod 640 a/b/c/f \
         && dd if=/dev/urandom of=big bs=64k count=40 status=none && truncate -s 100000 big \
         && mkfifo fifo && test -p fifo",
    );
    let st = fs::metadata(m.p("v/a/b/c/f")).unwrap();
    assert_eq!(st.mode() & 0o7777, 0o640);
    assert_eq!(st.nlink(), 2);
    assert_eq!(
        st.mtime(),
        fs::metadata(m.p("v/hard")).unwrap().mtime(),
        "hard links share attributes"
    );
    assert_eq!(st.ino(), fs::metadata(m.p("v/hard")).unwrap().ino());
    assert_eq!(fs::metadata(m.p("v/big")).unwrap().len(), 100000);
    // cp -a, tar, find, stat, xattrs.
    m.sh_ok("cp -a v/a v/copy && diff -r v/a v/copy");
    m.sh_ok("cd v && tar cf ../../t.tar a && mkdir x && tar xf ../../t.tar -C x && diff -r a x/a");
    let n = m.sh_ok("find v -type f | wc -l");
    assert!(n.trim().parse::<u32>().unwrap() >= 5, "{n}");
    m.sh_ok("stat v/a/b/c/f v/soft v/fifo >/dev/null && df . v >/dev/null");
    m.sh_ok(
        "setfattr -n user.k -v val v/a/b/c/f && getfattr -n user.k --only-values v/a/b/c/f | grep -qx val \
         && getfattr -d v/a/b/c/f | grep -q user.k && setfattr -x user.k v/a/b/c/f \
         && ! getfattr -n user.k v/a/b/c/f 2>/dev/null",
    );
    // rm -rf a tree.
    m.sh_ok("rm -rf v/copy v/x && test ! -e v/copy");
    // The backing directory holds the same.
    let path = m.store.show("v")["path"].as_str().unwrap().to_string();
    assert_eq!(
        fs::read(format!("{path}/a/b/c/f")).unwrap(),
        b"hello\n".to_vec()
    );
}

#[test]
fn inode_numbers_are_stable_across_rename() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir -p v/d && touch v/f");
    let f = fs::metadata(m.p("v/f")).unwrap().ino();
    let d = fs::metadata(m.p("v/d")).unwrap().ino();
    m.sh_ok("mv v/f v/d/g && mv v/d v/e");
    assert_eq!(fs::metadata(m.p("v/e/g")).unwrap().ino(), f);
    assert_eq!(fs::metadata(m.p("v/e")).unwrap().ino(), d);
    // After the kernel forgets (drop caches), the numbers are the same.
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
    assert_eq!(fs::metadata(m.p("v/e/g")).unwrap().ino(), f);
}

#[test]
fn rename_flags_and_cross_vfolder_rename() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir a b && echo 1 > a/one && echo 2 > a/two && echo 3 > b/three");
    // Between vfolders: EXDEV, and mv falls back to copying.
    let e = fs::rename(m.p("a/one"), m.p("b/one")).unwrap_err();
    assert_eq!(errno(&e), libc::EXDEV);
    m.sh_ok("mv a/one b/one && test ! -e a/one && test \"$(cat b/one)\" = 1");
    // RENAME_NOREPLACE and RENAME_EXCHANGE pass through.
    m.sh_ok("echo 1 > a/one");
    let r = renameat2(&m.p("a/one"), &m.p("a/two"), libc::RENAME_NOREPLACE);
    assert_eq!(r, Err(libc::EEXIST));
    renameat2(&m.p("a/one"), &m.p("a/two"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read_to_string(m.p("a/one")).unwrap(), "2\n");
    assert_eq!(fs::read_to_string(m.p("a/two")).unwrap(), "1\n");
}

fn renameat2(a: &std::path::Path, b: &std::path::Path, flags: u32) -> Result<(), i32> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn utimensat_omit_and_now_pass_through() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && touch -d '2001-01-01' v/f");
    let before = fs::metadata(m.p("v/f")).unwrap();
    // Change only mtime; atime must stay (UTIME_OMIT).
    m.sh_ok("touch -m -d '2010-01-01' v/f");
    let after = fs::metadata(m.p("v/f")).unwrap();
    assert_eq!(after.atime(), before.atime());
    assert_ne!(after.mtime(), before.mtime());
    m.sh_ok("touch -a v/f");
    let now = fs::metadata(m.p("v/f")).unwrap();
    assert_eq!(now.mtime(), after.mtime());
    assert!(now.atime() > after.atime());
}

#[test]
fn files_belong_to_the_caller_and_permissions_hold() {
    let m = Mount::new(&["--allow-other"]);
    m.sh_ok("mkdir shared && chmod 1777 shared && echo secret > shared/private && chmod 600 shared/private");
    // A second user creates a file: it is theirs.
    m.sh_ok("setpriv --reuid 4242 --regid 4242 --clear-groups sh -c 'echo mine > shared/theirs'");
    let st = fs::metadata(m.p("shared/theirs")).unwrap();
    assert_eq!((st.uid(), st.gid()), (4242, 4242));
    let path = m.store.show("shared")["path"].as_str().unwrap().to_string();
    let backing = fs::metadata(format!("{path}/theirs")).unwrap();
    assert_eq!((backing.uid(), backing.gid()), (4242, 4242));
    // ... and cannot read root's 0600 file.
    let o = m.sh("setpriv --reuid 4242 --regid 4242 --clear-groups cat shared/private");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    // chown to one of the caller's supplementary groups succeeds.
    m.sh_ok(
        "setpriv --reuid 4242 --regid 4242 --groups 4343 sh -c 'chown 4242:4343 shared/theirs'",
    );
    assert_eq!(fs::metadata(m.p("shared/theirs")).unwrap().gid(), 4343);
    // Writing into a directory through a supplementary group works.
    m.sh_ok("mkdir shared/grp && chgrp 4343 shared/grp && chmod 770 shared/grp");
    m.sh_ok("setpriv --reuid 4242 --regid 4242 --groups 4343 sh -c 'touch shared/grp/x'");
    // Without the group: refused.
    let o = m.sh("setpriv --reuid 4242 --regid 4242 --clear-groups touch shared/grp/y");
    assert!(!o.status.success());
    // setuid bits are not honoured (nosuid by default).
    let opts = m.sh_ok("grep \" $M \" /proc/mounts");
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
}

#[test]
fn status_change_from_cli_refuses_writes_within_100ms() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && echo start > v/f");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.p("v/f"))
        .unwrap();
    f.write_all(b"before\n").unwrap();
    m.store.ok(&["delete", "v"]);
    let changed = Instant::now();
    // Within 100 ms the open handle's writes are refused with EROFS.
    assert!(
        eventually(Duration::from_secs(2), || {
            matches!(f.write_all(b"x"), Err(ref e) if errno(e) == libc::EROFS)
        }),
        "writes through an open handle were never refused"
    );
    let took = changed.elapsed();
    eprintln!("status change reached the mount in {took:?}");
    // Nothing more reaches the backing file from now on.
    let path = m.store.show("v")["path"].as_str().unwrap().to_string();
    let len = fs::metadata(format!("{path}/f")).unwrap().len();
    for _ in 0..20 {
        let e = f.write_all(b"after\n").unwrap_err();
        assert_eq!(errno(&e), libc::EROFS);
    }
    assert_eq!(fs::metadata(format!("{path}/f")).unwrap().len(), len);
    // The root no longer shows it, without waiting for a cache timeout.
    let e = fs::metadata(m.p("v")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    assert!(!m.sh_ok("ls").contains('v'));
    // It is browsable read-only in the trash.
    assert_eq!(m.sh_ok("head -1 .trash/v/f").trim(), "start");
    let e = fs::File::create(m.p(".trash/v/new")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    let e = fs::remove_file(m.p(".trash/v/f")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.p(".trash/v/f"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    // Restored by the CLI: visible and writable again.
    m.store.ok(&["restore", "v"]);
    assert!(eventually(Duration::from_secs(2), || f
        .write_all(b"again\n")
        .is_ok()));
    assert!(eventually(Duration::from_secs(2), || m.p("v/f").exists()));
}

#[test]
fn every_write_kind_is_refused_when_not_writable() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && mkdir v/d && echo data > v/f && ln -s f v/s");
    let f = fs::File::open(m.p("v/f")).unwrap();
    m.store.ok(&["delete", "v"]);
    assert!(eventually(Duration::from_secs(2), || !m.p("v").exists()));
    let t = |rel: &str| m.p(&format!(".trash/v/{rel}"));
    let checks: Vec<(&str, std::io::Result<()>)> = vec![
        ("create", fs::File::create(t("n")).map(drop)),
        ("mkdir", fs::create_dir(t("n"))),
        ("rmdir", fs::remove_dir(t("d"))),
        ("unlink", fs::remove_file(t("f"))),
        ("rename", fs::rename(t("f"), t("g"))),
        ("link", fs::hard_link(t("f"), t("h"))),
        ("symlink", std::os::unix::fs::symlink("x", t("y"))),
        (
            "chmod",
            fs::set_permissions(t("f"), fs::Permissions::from_mode(0o600)),
        ),
    ];
    for (what, r) in checks {
        let e = r.expect_err(what);
        assert_eq!(errno(&e), libc::EROFS, "{what}: {e}");
    }
    let o = m.sh("setfattr -n user.x -v 1 .trash/v/f 2>&1");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Read-only"));
    let o = m.sh("truncate -s 0 .trash/v/f 2>&1");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Read-only"));
    let o = m.sh("touch .trash/v/f 2>&1");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Read-only"));
    // Reads still work, through the handle opened before.
    let mut s = String::new();
    use std::io::Read;
    (&f).read_to_string(&mut s).unwrap();
    assert_eq!(s, "data\n");
}

#[test]
fn stale_mount_is_cleared_and_sigterm_unmounts() {
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let m = Mount::on(t, &[]);
    m.sh_ok("echo x > v/f");
    let pid = m.daemon_pid();
    // SAFETY: signalling our own child daemon.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || {
        matches!(fs::metadata(&m.mnt), Err(ref e) if errno(e) == libc::ENOTCONN)
    }));
    // The next mount on the same mount point clears it.
    let o = m.store.cli(&["mount", m.mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(m.sh_ok("cat v/f").trim(), "x");
    // SIGTERM ends the daemon and unmounts.
    let pid = m.daemon_pid();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(eventually(Duration::from_secs(5), || {
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(m.mnt.to_str().unwrap())
    }));
}

#[test]
fn mounting_twice_is_refused() {
    let m = Mount::new(&[]);
    let o = m.store.cli(&["mount", m.mnt.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already mounted"));
    m.sh_ok("ls");
}

#[test]
fn inode_table_holds_no_fd_per_file_and_a_bounded_number_per_directory() {
    let m = Mount::new(&["-o", "dir_fds=64"]);
    m.sh_ok("mkdir v && cd v && for i in $(seq 1 300); do mkdir d$i && echo $i > d$i/f; done");
    let pid = m.daemon_pid();
    // The daemon's fds on what is inside the vfolder (not the store
    // connections the watcher opens and closes every second).
    let inside = std::path::PathBuf::from(m.store.show("v")["path"].as_str().unwrap());
    let fds = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read_link(e.path()).ok())
            .filter(|t| t.starts_with(&inside) && *t != inside)
            .count()
    };
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
    let base = fds();
    // Every directory and file looked up and read: files are file handles
    // (no fd), directories share a cache of 64 fds.
    m.sh_ok("cat v/d*/f > /dev/null && ls -lR v > /dev/null");
    let high = fds();
    assert!(
        high < base + 64 + 16,
        "300 directories and files held {} fds (from {base})",
        high
    );
    // Directories whose fd was evicted are reopened by handle when used.
    m.sh_ok("for i in 1 2 3 150 300; do echo new > v/d$i/g; test \"$(cat v/d$i/f)\" = $i; done");
    m.sh_ok("mkdir v/d1/sub && mv v/d2/f v/d1/sub/moved && test -f v/d1/sub/moved && rm -r v/d3");
    // When the kernel forgets, the daemon lets go.
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
    assert!(
        eventually(Duration::from_secs(5), || fds() <= base),
        "inode table kept {} fds after the kernel forgot (from {base})",
        fds()
    );
    // Everything is still reachable after all that.
    assert_eq!(m.sh_ok("cat v/d150/f").trim(), "150");
    assert_eq!(m.sh_ok("cat v/d1/sub/moved").trim(), "2");
}

#[test]
fn reads_use_passthrough_and_writers_coexist_when_first() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && dd if=/dev/urandom of=v/f bs=1M count=4 status=none");
    let want = fs::read(m.p("v/f")).unwrap();
    // A writer open first, then readers: both work (readers served by the daemon).
    let mut w = fs::OpenOptions::new().write(true).open(m.p("v/f")).unwrap();
    assert_eq!(fs::read(m.p("v/f")).unwrap(), want);
    w.write_all(b"XY").unwrap();
    drop(w);
    assert_eq!(&fs::read(m.p("v/f")).unwrap()[..2], b"XY");
    // With a passthrough reader holding the file, a writer gets ETXTBSY.
    // (A reader opened while the kernel still sends the releases of the
    // handles above is served by the daemon instead, and blocks nobody:
    // retry until the releases are in.)
    let mut r = None;
    let refused = eventually(Duration::from_secs(3), || {
        let reader = fs::File::open(m.p("v/f")).unwrap();
        match fs::OpenOptions::new().write(true).open(m.p("v/f")) {
            Err(e) => {
                assert_eq!(errno(&e), libc::ETXTBSY);
                r = Some(reader);
                true
            }
            Ok(_) => false,
        }
    });
    assert!(
        refused,
        "a writer was never refused while a reader held the file"
    );
    drop(r);
    fs::OpenOptions::new().write(true).open(m.p("v/f")).unwrap();
}

#[test]
fn passthrough_readers_cost_the_daemon_no_open_file() {
    use std::os::fd::AsRawFd;
    let m = Mount::new(&[]);
    let pid = m.daemon_pid();
    // The daemon's open files inside the vfolder (`f1` … `f400`), not the
    // vfolder's own directory or the store connections, which the daemon
    // opens when it first needs them.
    let store = m.store.path().to_path_buf();
    let fds = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read_link(e.path()).ok())
            .filter(|t| {
                let name = t.file_name().map(|n| n.to_string_lossy().into_owned());
                t.starts_with(&store)
                    && name.is_some_and(|n| {
                        n.len() > 1
                            && n.starts_with('f')
                            && n[1..].bytes().all(|b| b.is_ascii_digit())
                    })
            })
            .count()
    };
    let base = 0;
    m.sh_ok("mkdir v && cd v && for i in $(seq 1 400); do echo $i > f$i; done");
    // The writers' releases reach the daemon after their close() returns:
    // until they are in, a new reader is served by the daemon instead.
    assert!(eventually(Duration::from_secs(5), || fds() == base));
    // 800 opens of 400 files, all held: the kernel keeps the backing files.
    let held: Vec<fs::File> = (1..=400)
        .chain(1..=400)
        .map(|i| fs::File::open(m.p(&format!("v/f{i}"))).unwrap())
        .collect();
    assert!(
        fds() < base + 16,
        "{} daemon fds for 800 open readers",
        fds()
    );
    let mut s = String::new();
    use std::io::Read;
    (&held[399]).read_to_string(&mut s).unwrap();
    assert_eq!(s, "400\n");
    // What still reaches the daemon on such a handle works, also once the
    // file is unlinked: fstat, SEEK_DATA, fsync.
    let f = &held[10];
    fs::remove_file(m.p("v/f11")).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!((md.len(), md.nlink()), (3, 0));
    // SAFETY: a valid fd.
    assert_eq!(unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) }, 0);
    assert_eq!(unsafe { libc::fsync(f.as_raw_fd()) }, 0);
    drop(held);
    assert!(eventually(Duration::from_secs(5), || fds() == base));
}

#[test]
fn nopassthrough_serves_every_open() {
    let m = Mount::new(&["-o", "nopassthrough"]);
    m.sh_ok("mkdir v && echo abc > v/f");
    let _r = fs::File::open(m.p("v/f")).unwrap();
    let mut w = fs::OpenOptions::new()
        .append(true)
        .open(m.p("v/f"))
        .unwrap();
    w.write_all(b"def\n").unwrap();
    assert_eq!(fs::read_to_string(m.p("v/f")).unwrap(), "abc\ndef\n");
}

#[test]
fn an_unreadable_store_fails_closed() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && echo a > v/f");
    let mut w = fs::OpenOptions::new()
        .append(true)
        .open(m.p("v/f"))
        .unwrap();
    // The database file becomes unreadable (here: overwritten with garbage):
    // the mount cannot read statuses, so it refuses writes and keeps
    // serving reads.
    let db = m.store.path().join("vfolders.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }
    let good = fs::read(&db).unwrap();
    fs::write(&db, vec![0x5a; good.len()]).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            matches!(w.write_all(b"x"), Err(ref e) if errno(e) == libc::EROFS)
        }),
        "writes were not refused while the store was unreadable"
    );
    assert_eq!(
        fs::read_to_string(m.p("v/f")).unwrap().lines().next(),
        Some("a")
    );
    fs::write(&db, &good).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || w.write_all(b"y").is_ok()),
        "writes did not resume once the store was readable"
    );
}

#[test]
fn fallocate_copy_file_range_seek_and_special_files() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && cd v && fallocate -l 1M pre && test $(stat -c %s pre) = 1048576");
    m.sh_ok("cd v && dd if=/dev/urandom of=src bs=64k count=8 status=none && cp --reflink=never src dst && cmp src dst");
    // A sparse file keeps its hole through SEEK_DATA/SEEK_HOLE.
    m.sh_ok("cd v && truncate -s 10M sparse && printf x | dd of=sparse bs=1 seek=5M conv=notrunc status=none");
    let blocks = fs::metadata(m.p("v/sparse")).unwrap().blocks();
    assert!(blocks < 100, "sparse file allocated {blocks} blocks");
    m.sh_ok("cd v && python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('sock')\" && test -S sock");
    m.sh_ok("cd v && mkfifo p && test -p p && rm p sock");
}

#[test]
fn syncs_allocations_and_range_copies_on_open_handles_follow_the_status() {
    use std::os::fd::AsRawFd;
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && mkdir v/d && printf 0123456789 > v/src");
    let w = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("v/dst"))
        .unwrap();
    let src = fs::File::open(m.p("v/src")).unwrap();
    let dir = fs::File::open(m.p("v/d")).unwrap();
    let last = || std::io::Error::last_os_error().raw_os_error().unwrap();
    let copy = |n: usize| unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            std::ptr::null_mut(),
            w.as_raw_fd(),
            std::ptr::null_mut(),
            n,
            0,
        )
    };
    // While writable: every call works and does what it says.
    assert_eq!(copy(4), 4);
    assert_eq!(unsafe { libc::fallocate(w.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(unsafe { libc::fsync(w.as_raw_fd()) }, 0);
    assert_eq!(unsafe { libc::fdatasync(w.as_raw_fd()) }, 0);
    assert_eq!(unsafe { libc::fsync(dir.as_raw_fd()) }, 0);
    assert_eq!(fs::metadata(m.p("v/dst")).unwrap().len(), 1 << 20);
    assert_eq!(&fs::read(m.p("v/dst")).unwrap()[..4], b"0123");
    // In the trash: what changes data is refused, syncing what is there is not.
    m.store.ok(&["delete", "v"]);
    assert!(eventually(Duration::from_secs(2), || !m.p("v").exists()));
    assert_eq!(copy(4), -1);
    assert_eq!(last(), libc::EROFS);
    assert_eq!(unsafe { libc::fallocate(w.as_raw_fd(), 0, 0, 2 << 20) }, -1);
    assert_eq!(last(), libc::EROFS);
    assert_eq!(unsafe { libc::fsync(w.as_raw_fd()) }, 0);
    assert_eq!(unsafe { libc::fsync(dir.as_raw_fd()) }, 0);
    assert_eq!(fs::metadata(m.p(".trash/v/dst")).unwrap().len(), 1 << 20);
}

#[test]
fn mount_helper_takes_mount8_arguments() {
    // mount(8) runs /sbin/mount.vfolderfs STORE MOUNTPOINT -o OPTS; a link
    // in the temporary directory stands in for the installed one.
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let helper = t.dir.path().join("mount.vfolderfs");
    std::os::unix::fs::symlink(common::bin(), &helper).unwrap();
    let mnt = t.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let o = std::process::Command::new(&helper)
        .arg(t.path())
        .arg(&mnt)
        .args(["-o", "rw,allow_other,noatime,threads=2,nofail"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // From here the guard owns the mount and unmounts it whatever happens.
    let m = Mount { store: t, mnt };
    let opts = m.sh_ok("grep \" $M \" /proc/mounts");
    assert!(
        opts.contains("allow_other") && opts.contains("noatime"),
        "{opts}"
    );
    m.sh_ok("test -d v && echo x > v/f");
    // Unknown options are refused before anything is mounted.
    let bad = std::process::Command::new(&helper)
        .arg(m.store.path())
        .arg(m.store.dir.path())
        .args(["-o", "frobnicate"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("frobnicate"));
}

#[test]
fn mmap_writes_and_posix_acls_work() {
    let m = Mount::new(&["--allow-other"]);
    m.sh_ok("mkdir v && chmod 755 v && printf 'aaaaaaaa' > v/f");
    // A shared writable mapping of a file opened for writing.
    m.sh_ok(
        "/usr/bin/python3 -c \"import mmap; f=open('v/f','r+b'); mm=mmap.mmap(f.fileno(),8); \
         mm[0:4]=b'bbbb'; mm.flush(); mm.close(); f.close()\"",
    );
    assert_eq!(fs::read_to_string(m.p("v/f")).unwrap(), "bbbbaaaa");
    // An ACL entry grants what the mode bits alone would not.
    m.sh_ok("chmod 600 v/f");
    let o = m.sh("setpriv --reuid 4242 --regid 4242 --clear-groups cat v/f");
    assert!(!o.status.success());
    m.sh_ok("setfacl -m u:4242:r v/f && getfacl v/f | grep -q 'user:4242:r'");
    assert_eq!(
        m.sh_ok("setpriv --reuid 4242 --regid 4242 --clear-groups cat v/f"),
        "bbbbaaaa"
    );
    // And removing it takes the grant away again.
    m.sh_ok("setfacl -b v/f");
    let o = m.sh("setpriv --reuid 4242 --regid 4242 --clear-groups cat v/f");
    assert!(!o.status.success());
}

#[test]
fn a_vfolder_made_by_the_cli_is_there_at_once() {
    let m = Mount::new(&[]);
    for i in 0..20 {
        let n = format!("now{i}");
        m.store.ok(&["create", &n]);
        // No wait for the watcher's next poll.
        fs::write(m.p(&format!("{n}/f")), b"x").unwrap();
    }
    m.store.ok(&["delete", "now3"]);
    assert!(m.sh_ok("ls .trash").contains("now3"));
    m.store.ok(&["restore", "now3", "--as", "again"]);
    assert_eq!(fs::read(m.p("again/f")).unwrap(), b"x");
}

#[test]
fn open_counts_per_vfolder_are_reported() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir hot cold && echo x > hot/f && echo y > cold/f");
    for _ in 0..10 {
        fs::read(m.p("hot/f")).unwrap();
    }
    fs::read(m.p("cold/f")).unwrap();
    // Recorded every few seconds, and once more at unmount.
    m.unmount();
    let list: serde_json::Value = serde_json::from_str(&m.store.ok(&["list", "--json"])).unwrap();
    let opens = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["opens"]
            .as_u64()
            .unwrap()
    };
    assert!(opens("hot") >= 11, "hot: {}", opens("hot"));
    assert!(
        opens("cold") >= 2 && opens("cold") < opens("hot"),
        "cold: {}",
        opens("cold")
    );
}

#[test]
fn paths_past_path_max_and_link_counts_after_changes() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v");
    // Walk down relative to the working directory until the full path is
    // well past PATH_MAX (4096): the daemon works by fd, so depth is no limit.
    let walk = |root: &std::path::Path, make: bool| {
        // chdir one relative component at a time: no path string is ever long.
        let script = format!(
            "import os\nos.chdir({root:?})\nfor i in range(30):\n    n='d'*200\n    \
             {mk}os.chdir(n)\n{end}",
            root = root.to_str().unwrap(),
            mk = if make { "os.mkdir(n); " } else { "" },
            end = if make {
                "open('f','w').write('deep')\nprint(open('f').read())\nprint(len(os.getcwd()))"
            } else {
                "print(open('f').read())"
            },
        );
        std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    };
    let o = walk(&m.p("v"), true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("deep"));
    let depth: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(depth > 6000, "path length {depth}");
    // The backing directory holds it, 30 levels down.
    let path = std::path::PathBuf::from(m.store.show("v")["path"].as_str().unwrap());
    let o = walk(&path, false);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "deep");
    // Link counts seen through other names stay true after link, unlink, rename.
    m.sh_ok("cd v && echo x > a && ln a b && ln a c");
    assert_eq!(fs::metadata(m.p("v/a")).unwrap().nlink(), 3);
    m.sh_ok("cd v && rm b && mv c e");
    assert_eq!(fs::metadata(m.p("v/a")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.p("v/e")).unwrap().nlink(), 2);
    m.sh_ok("cd v && chmod 600 e");
    assert_eq!(fs::metadata(m.p("v/a")).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_vanished_store_fails_closed_and_is_not_recreated() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && echo a > v/f");
    let db = m.store.path().join("vfolders.db");
    let aside = m.store.dir.path().join("aside");
    fs::create_dir(&aside).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = m.store.path().join(format!("vfolders.db{suffix}"));
        if from.exists() {
            fs::rename(&from, aside.join(format!("vfolders.db{suffix}"))).unwrap();
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || {
            matches!(fs::write(m.p("v/g"), b"x"), Err(ref e) if errno(e) == libc::EROFS)
        }),
        "writes were not refused without a store"
    );
    // Reads and the listing go on; no empty store was made in its place.
    assert_eq!(fs::read_to_string(m.p("v/f")).unwrap(), "a\n");
    assert!(m.sh_ok("ls").contains('v'));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!db.exists(), "the mount made a new, empty database");
    for suffix in ["", "-wal", "-shm"] {
        let from = aside.join(format!("vfolders.db{suffix}"));
        if from.exists() {
            fs::rename(&from, m.store.path().join(format!("vfolders.db{suffix}"))).unwrap();
        }
    }
    assert!(eventually(Duration::from_secs(5), || fs::write(
        m.p("v/g"),
        b"x"
    )
    .is_ok()));
}

#[test]
fn the_mount_follows_a_stream_of_cli_changes() {
    let m = Mount::new(&[]);
    let names = ["a", "b", "c", "d", "e", "f"];
    // A small deterministic generator: the same sequence every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    let state = |all: bool| -> Vec<serde_json::Value> {
        let args: &[&str] = if all {
            &["list", "--all", "--json"]
        } else {
            &["list", "--json"]
        };
        serde_json::from_str::<Vec<serde_json::Value>>(&m.store.ok(args)).unwrap()
    };
    let mut changed = 0;
    for i in 0..150 {
        let live: Vec<String> = state(false)
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        let trashed: Vec<String> = state(true)
            .iter()
            .filter(|v| v["status"] == "delete-pending")
            .map(|v| v["trash_name"].as_str().unwrap().to_string())
            .collect();
        let pick = |v: &Vec<String>, k: usize| v.get(k % v.len().max(1)).cloned();
        let (a, b) = (next(1000), next(1000));
        let name = names[next(names.len())];
        // Failures (a name taken, nothing to act on) are part of the stream.
        let o = match next(5) {
            0 => m.store.cli(&["create", name]),
            1 => match pick(&live, a) {
                Some(v) => m.store.cli(&["rename", &v, name]),
                None => m.store.cli(&["create", name]),
            },
            2 => match pick(&live, a) {
                Some(v) => m.store.cli(&["delete", &v]),
                None => m.store.cli(&["create", name]),
            },
            3 => match pick(&trashed, b) {
                Some(t) => m.store.cli(&["restore", &t]),
                None => m.store.cli(&["create", name]),
            },
            _ => match pick(&trashed, b) {
                Some(t) => m.store.cli(&["purge", &t]),
                None => m.store.cli(&["create", name]),
            },
        };
        changed += usize::from(o.status.success());
        if i % 7 == 0 {
            // Looking at the root in between (it catches up by itself too).
            m.sh_ok("ls -a . .trash > /dev/null");
        }
    }
    assert!(changed > 60, "only {changed} changes took");
    // End with two trashed vfolders of one name (named apart in .trash).
    let _ = m.store.cli(&["create", "a"]);
    for _ in 0..2 {
        m.store.ok(&["delete", "a"]);
        m.store.ok(&["create", "a"]);
    }
    let want_live = {
        let mut v: Vec<String> = state(false)
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let want_trash = {
        let mut v: Vec<String> = state(true)
            .iter()
            .filter(|v| v["status"] == "delete-pending")
            .map(|v| v["trash_name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let listing = |dir: &str| {
        let mut v: Vec<String> = fs::read_dir(m.p(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".trash")
            .collect();
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(2), || listing(".") == want_live
            && listing(".trash") == want_trash),
        "mount shows {:?} and {:?}; the store {:?} and {:?}",
        listing("."),
        listing(".trash"),
        want_live,
        want_trash
    );
    // And every name shown can be entered and is the vfolder the store says.
    for n in &want_live {
        m.sh_ok(&format!("touch '{n}/probe' && rm '{n}/probe'"));
    }
}
