//! Clone and relocate as tracked background operations.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, TempStore, Tmpfs, errno, eventually};

const SLOW: (&str, &str) = ("VFOLDERFS_PURGE_THROTTLE_US", "3000");

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn status(t: &TempStore, name: &str) -> String {
    t.show(name)["status"].as_str().unwrap().to_string()
}

/// Whether a process has claimed the job on this vfolder.
fn started(t: &TempStore, name: &str) -> bool {
    t.show(name)["job"]["owner"]
        .as_str()
        .is_some_and(|o| !o.is_empty())
}

fn sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        o.status.success(),
        "`{script}`: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every kind of file `cp -a` preserves.
fn rich_tree(p: &Path) {
    sh(&format!(
        "cd {} && mkdir -p d/e && echo hello > d/e/f && ln d/e/f hard && ln -s d/e/f soft \
         && ln -s /nonexistent dangling && mkfifo fifo && truncate -s 20M sparse \
         && printf x | dd of=sparse bs=1 seek=10M conv=notrunc status=none \
         && dd if=/dev/urandom of=blob bs=64k count=5 status=none \
         && setfattr -n user.tag -v blue d/e/f && setfattr -n user.dir -v yes d \
         && chown 1234:5678 d/e/f && chmod 640 d/e/f && chmod 2750 d \
         && chown -h 42:43 soft && touch -h -d '2002-02-02' soft \
         && touch -d '2001-01-01 01:01:01' blob d/e && touch -d '2003-03-03' d",
        p.display()
    ));
}

/// Path, type, mode, owner, links, size (not for directories: it depends
/// on the filesystem), mtime and link target of everything below `p`.
fn listing(p: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg("find . -printf '%p %y %m %U %G %n %s %T@ %l\\n' | sort")
        .current_dir(p)
        .output()
        .unwrap();
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(' ').collect();
            if f.get(1) == Some(&"d") {
                f[6] = "-";
            }
            f.join(" ") + "\n"
        })
        .collect()
}

/// The first lines that differ, for a readable failure.
fn first_differences(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(5)
        .map(|(x, y)| format!("\n  {x}\n  {y}"))
        .collect::<String>()
        + &format!("\n  ({} vs {} lines)", a.lines().count(), b.lines().count())
}

fn xattrs(p: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg("getfattr -R -d -h . 2>/dev/null | grep -v '^$'")
        .current_dir(p)
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap()
}

fn same_tree(a: &Path, b: &Path) {
    let (la, lb) = (listing(a), listing(b));
    assert!(
        la == lb,
        "modes, owners, links, sizes, times differ:{}",
        first_differences(&la, &lb)
    );
    let (xa, xb) = (xattrs(a), xattrs(b));
    assert!(
        xa == xb,
        "extended attributes differ:{}",
        first_differences(&xa, &xb)
    );
    sh(&format!(
        "cd {} && find . -type f | while read f; do cmp \"$f\" \"{}/$f\" || exit 1; done",
        a.display(),
        b.display()
    ));
}

#[test]
fn clone_preserves_what_cp_a_preserves() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let src = path_of(&t, "src");
    rich_tree(&src);
    let out = t.ok(&["clone", "src", "dst"]);
    assert!(out.contains("done"), "{out}");
    assert_eq!(status(&t, "src"), "ready");
    assert_eq!(status(&t, "dst"), "ready");
    let dst = path_of(&t, "dst");
    same_tree(&src, &dst);
    // Hard links stay links; sparse stays sparse.
    assert_eq!(
        fs::metadata(dst.join("hard")).unwrap().ino(),
        fs::metadata(dst.join("d/e/f")).unwrap().ino()
    );
    assert!(fs::metadata(dst.join("sparse")).unwrap().blocks() < 64);
    // The root directory's mode and owner too.
    let (a, b) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
    assert_eq!((a.mode(), a.uid(), a.gid()), (b.mode(), b.uid(), b.gid()));
    let h: serde_json::Value = serde_json::from_str(&t.ok(&["history", "dst", "--json"])).unwrap();
    let h = h.as_array().unwrap();
    assert_eq!(
        (h[0]["from"].clone(), h[0]["to"].clone()),
        (serde_json::Value::Null, "cloning".into())
    );
    assert_eq!(h.last().unwrap()["to"], "ready");
    // A clone onto a taken name, or from a missing vfolder, changes nothing.
    let err = t.fails(&["clone", "src", "dst"]);
    assert!(err.contains("already exists"), "{err}");
    let err = t.fails(&["clone", "nope", "x"]);
    assert!(err.contains("nope"), "{err}");
    assert_eq!(status(&t, "src"), "ready");
}

#[test]
fn during_a_clone_the_source_is_read_only_and_undeletable() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let src = path_of(&t, "src");
    for i in 0..1000 {
        fs::write(src.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let m = Mount::on_env(t, &[], &[SLOW]);
    let mut w = fs::OpenOptions::new()
        .append(true)
        .open(m.p("src/f1"))
        .unwrap();
    m.store.ok(&["clone", "src", "dst", "--no-wait"]);
    assert!(eventually(Duration::from_secs(5), || started(
        &m.store, "dst"
    )));
    assert_eq!(
        status(&m.store, "src"),
        "cloning",
        "the test needs a clone in progress"
    );
    // Writes to the source: refused, also through a handle opened before.
    assert!(eventually(Duration::from_secs(2), || {
        matches!(w.write_all(b"x"), Err(ref e) if errno(e) == libc::EROFS)
    }));
    let e = fs::File::create(m.p("src/new")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    // Reads go on.
    assert_eq!(fs::read_to_string(m.p("src/f7")).unwrap(), "7");
    // Delete, rename and purge are refused.
    let err = m.store.fails(&["delete", "src"]);
    assert!(err.contains("cloning"), "{err}");
    let e = fs::rename(m.p("src"), m.p(".trash/src")).unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    let e = fs::rename(m.p("src"), m.p("other")).unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    // The target is visible, read-only, until it is ready; a name not yet
    // copied is missing now and there as soon as the clone is done.
    assert!(m.p("dst").is_dir());
    let _ = fs::metadata(m.p("dst/f999"));
    let e = fs::File::create(m.p("dst/new")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    assert!(eventually(Duration::from_secs(30), || status(
        &m.store, "dst"
    ) == "ready"));
    assert_eq!(status(&m.store, "src"), "ready");
    assert!(eventually(Duration::from_secs(1), || m
        .p("dst/f999")
        .exists()));
    same_tree(&path_of(&m.store, "src"), &path_of(&m.store, "dst"));
    assert!(eventually(Duration::from_secs(2), || w
        .write_all(b"y")
        .is_ok()));
}

#[test]
fn a_failing_clone_rolls_back() {
    let t = TempStore::new();
    let small = Tmpfs::new(&t, "small", "1m");
    t.ok(&["volume", "add", "small", small.0.to_str().unwrap()]);
    t.ok(&["create", "src"]);
    sh(&format!(
        "dd if=/dev/urandom of={}/big bs=1M count=4 status=none",
        path_of(&t, "src").display()
    ));
    let err = t.fails(&["clone", "src", "dst", "--volume", "small"]);
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(status(&t, "src"), "ready");
    // The target's partial data went through the purge.
    assert_eq!(status(&t, "dst"), "delete-complete");
    let h: serde_json::Value = serde_json::from_str(&t.ok(&["history", "dst", "--json"])).unwrap();
    let causes: Vec<String> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["to"], e["cause"]))
        .collect();
    assert!(
        causes
            .iter()
            .any(|c| c.contains("clone failed") && c.contains("No space left")),
        "{causes:?}"
    );
    let left = fs::read_dir(&small.0)
        .unwrap()
        .flatten()
        .filter(|s| s.path().is_dir())
        .map(|s| fs::read_dir(s.path()).unwrap().count())
        .sum::<usize>();
    assert_eq!(left, 0, "no partial copy left on the volume");
    // The source can be written and cloned again.
    t.ok(&["clone", "src", "dst2"]);
}

#[test]
fn kill_9_during_a_clone_rolls_back_at_restart() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let src = path_of(&t, "src");
    for i in 0..1000 {
        fs::write(src.join(format!("f{i}")), b"data").unwrap();
    }
    let m = Mount::on_env(t, &[], &[SLOW]);
    m.store.ok(&["clone", "src", "dst", "--no-wait"]);
    assert!(eventually(Duration::from_secs(5), || started(
        &m.store, "dst"
    )));
    // SAFETY: signalling our own daemon.
    unsafe { libc::kill(m.daemon_pid(), libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || {
        matches!(fs::metadata(&m.mnt), Err(ref e) if errno(e) == libc::ENOTCONN)
    }));
    assert_eq!(status(&m.store, "dst"), "cloning");
    m.remount(&[], &[]);
    assert!(eventually(Duration::from_secs(20), || {
        status(&m.store, "src") == "ready" && status(&m.store, "dst") == "delete-complete"
    }));
    let dst_path = path_of(&m.store, "dst");
    assert!(!dst_path.exists());
    assert_eq!(fs::read_dir(&src).unwrap().count(), 1000);
}

#[test]
fn relocation_across_filesystems_keeps_data_readable_throughout() {
    let t = TempStore::new();
    let fast = Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    let vols: serde_json::Value =
        serde_json::from_str(&t.ok(&["volume", "list", "--json"])).unwrap();
    assert_eq!(vols.as_array().unwrap().len(), 2);
    assert!(vols[1]["free_bytes"].as_u64().unwrap() > 0);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    rich_tree(&old);
    for i in 0..600 {
        fs::write(old.join(format!("n{i}")), format!("{i}")).unwrap();
    }
    let before = listing(&old);
    let m = Mount::on_env(t, &[], &[SLOW]);
    m.store.ok(&["relocate", "v", "--to", "fast", "--no-wait"]);
    assert_eq!(status(&m.store, "v"), "performing");
    // (A chmod to the same mode changes nothing while it is still allowed.)
    assert!(eventually(Duration::from_secs(2), || {
        use std::os::unix::fs::PermissionsExt;
        let same = fs::Permissions::from_mode(0o644);
        matches!(fs::set_permissions(m.p("v/n0"), same), Err(ref e) if errno(e) == libc::EROFS)
    }));
    // Readable while it moves; writes refused.
    let mut reads = 0;
    while status(&m.store, "v") == "performing" {
        assert_eq!(fs::read_to_string(m.p("v/d/e/f")).unwrap(), "hello\n");
        let e = fs::File::create(m.p("v/new")).unwrap_err();
        assert_eq!(errno(&e), libc::EROFS);
        reads += 1;
        std::thread::sleep(Duration::from_millis(20));
        assert!(reads < 2000, "relocation never finished");
    }
    assert_eq!(status(&m.store, "v"), "ready");
    let new = path_of(&m.store, "v");
    assert!(new.starts_with(&fast.0), "{}", new.display());
    // Readable all along, also while the old copy is being retired.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while old.exists() {
        assert_eq!(fs::read_to_string(m.p("v/n7")).unwrap(), "7");
        assert!(
            std::time::Instant::now() < end,
            "the old copy was never removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = listing(&new);
    assert!(
        after == before,
        "relocated tree differs:{}",
        first_differences(&before, &after)
    );
    assert_eq!(fs::read_to_string(m.p("v/n7")).unwrap(), "7");
    assert!(eventually(Duration::from_secs(2), || fs::File::create(
        m.p("v/new")
    )
    .is_ok()));
    assert_eq!(m.store.show("v")["volume"], "fast");
}

#[test]
fn kill_9_during_relocation_ends_at_one_location() {
    let t = TempStore::new();
    let fast = Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    for i in 0..1000 {
        fs::write(old.join(format!("f{i}")), b"x").unwrap();
    }
    let m = Mount::on_env(t, &[], &[SLOW]);
    m.store.ok(&["relocate", "v", "--to", "fast", "--no-wait"]);
    assert!(eventually(Duration::from_secs(5), || started(
        &m.store, "v"
    )));
    // SAFETY: signalling our own daemon.
    unsafe { libc::kill(m.daemon_pid(), libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || {
        matches!(fs::metadata(&m.mnt), Err(ref e) if errno(e) == libc::ENOTCONN)
    }));
    m.remount(&[], &[]);
    assert!(eventually(Duration::from_secs(20), || status(
        &m.store, "v"
    ) == "ready"));
    // Rolled back: at the old location, complete, and nothing leaked on the new volume.
    assert_eq!(m.store.show("v")["volume"], "default");
    assert_eq!(fs::read_dir(&old).unwrap().count(), 1000);
    let leaked: usize = fs::read_dir(&fast.0)
        .unwrap()
        .flatten()
        .filter(|s| s.path().is_dir())
        .map(|s| fs::read_dir(s.path()).unwrap().count())
        .sum();
    assert_eq!(leaked, 0);
    let h = m.store.ok(&["history", "v"]);
    assert!(h.contains("interrupted; rolled back"), "{h}");
}

#[test]
fn relocation_within_one_filesystem_is_a_rename() {
    let t = TempStore::new();
    let other = t.dir.path().join("other-volume");
    t.ok(&["volume", "add", "cold", other.to_str().unwrap()]);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    fs::write(old.join("f"), b"same inode").unwrap();
    let ino = fs::metadata(old.join("f")).unwrap().ino();
    t.ok(&["relocate", "v", "--to", "cold"]);
    let new = path_of(&t, "v");
    assert!(new.starts_with(&other));
    assert_eq!(
        fs::metadata(new.join("f")).unwrap().ino(),
        ino,
        "moved, not copied"
    );
    assert!(t.ok(&["history", "v"]).contains("by rename"));
    assert!(!old.exists());
    // Relocating to where it is, or to an unknown volume, is refused.
    let err = t.fails(&["relocate", "v", "--to", "cold"]);
    assert!(err.contains("already"), "{err}");
    let err = t.fails(&["relocate", "v", "--to", "nowhere"]);
    assert!(err.contains("nowhere"), "{err}");
    assert_eq!(status(&t, "v"), "ready");
}

#[test]
fn a_wide_tree_with_links_across_directories_clones_exactly() {
    let t = TempStore::new();
    t.ok(&["create", "wide"]);
    let src = path_of(&t, "wide");
    for d in 0..40 {
        fs::create_dir_all(src.join(format!("d{d}/sub"))).unwrap();
        for f in 0..15 {
            fs::write(src.join(format!("d{d}/f{f}")), format!("{d}-{f}")).unwrap();
        }
    }
    // Each file also appears in the next directory, under another name.
    for d in 0..40 {
        for f in 0..15 {
            fs::hard_link(
                src.join(format!("d{d}/f{f}")),
                src.join(format!("d{}/sub/link-{d}-{f}", (d + 1) % 40)),
            )
            .unwrap();
        }
    }
    sh(&format!(
        "cd {} && chmod 555 d3 d7/sub && touch -d 2005-05-05 d3 d9/sub \
         && ln -s f1 d5/sym && ln d5/sym d6/sym-link && mkfifo d8/p && ln d8/p d2/p-link",
        src.display()
    ));
    t.ok(&["clone", "wide", "copy"]);
    let dst = path_of(&t, "copy");
    same_tree(&src, &dst);
    for d in 0..40 {
        for f in 0..15 {
            let a = fs::metadata(dst.join(format!("d{d}/f{f}"))).unwrap().ino();
            let b = fs::metadata(dst.join(format!("d{}/sub/link-{d}-{f}", (d + 1) % 40)))
                .unwrap()
                .ino();
            assert_eq!(a, b, "d{d}/f{f} and its link are one inode");
        }
    }
}

/// Makes a chain of `depth` directories named `d` under `root` (deeper than
/// a path can name, so by fd), with mode 0750 each and a file at the end.
fn chain(root: &Path, depth: usize) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let d = c"d";
    let mut fd: OwnedFd = fs::File::open(root).unwrap().into();
    for _ in 0..depth {
        // SAFETY: valid fd and names; the new fd is owned here.
        unsafe {
            assert_eq!(libc::mkdirat(fd.as_raw_fd(), d.as_ptr(), 0o750), 0);
            let n = libc::openat(
                fd.as_raw_fd(),
                d.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            );
            assert!(n >= 0);
            fd = OwnedFd::from_raw_fd(n);
        }
    }
    // SAFETY: as above.
    let f = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c"end".as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o640,
        )
    };
    assert!(f >= 0);
    // SAFETY: f is ours.
    drop(unsafe { OwnedFd::from_raw_fd(f) });
}

/// (mode, mtime) of every level of a chain made by [`chain`], and the end.
fn chain_meta(root: &Path) -> Vec<(u32, i64)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut out = Vec::new();
    let mut fd: OwnedFd = fs::File::open(root).unwrap().into();
    loop {
        // SAFETY: valid fd; the new fd is owned here.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        out.push((st.st_mode, st.st_mtime));
        let n = unsafe {
            libc::openat(
                fd.as_raw_fd(),
                c"d".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
        };
        if n < 0 {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(
                unsafe { libc::fstatat(fd.as_raw_fd(), c"end".as_ptr(), &mut st, 0) },
                0
            );
            out.push((st.st_mode, st.st_mtime));
            return out;
        }
        fd = unsafe { OwnedFd::from_raw_fd(n) };
    }
}

#[test]
fn trees_deeper_than_a_path_and_the_open_file_limit_clone_and_purge() {
    let t = TempStore::new();
    t.ok(&["create", "deep"]);
    let src = path_of(&t, "deep");
    // 2,500 levels: past PATH_MAX as a path, and far past the 100 open
    // files the CLI gets here.
    chain(&src, 2500);
    let limited = |args: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 100 && exec {} --store {} {args}",
                common::bin(),
                t.path().display()
            ))
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = limited("clone deep copy");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status(&t, "copy"), "ready");
    let want = chain_meta(&src);
    assert_eq!(want.len(), 2502);
    assert_eq!(
        chain_meta(&path_of(&t, "copy")),
        want,
        "every level as in the source"
    );
    // A purge that fails deep down says where, briefly.
    let bottom = {
        use std::os::fd::AsRawFd;
        let mut fd: std::os::fd::OwnedFd = fs::File::open(path_of(&t, "copy")).unwrap().into();
        for _ in 0..2500 {
            // SAFETY: valid fd; the new fd is owned here.
            let n = unsafe {
                libc::openat(
                    fd.as_raw_fd(),
                    c"d".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
            };
            assert!(n >= 0);
            fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(n) };
        }
        fd
    };
    let end = {
        use std::os::fd::AsRawFd;
        // Reached through this process's fd: no path names it.
        PathBuf::from(format!(
            "/proc/{}/fd/{}/end",
            std::process::id(),
            bottom.as_raw_fd()
        ))
    };
    let ok = Command::new("chattr").arg("+i").arg(&end).status().unwrap();
    assert!(ok.success(), "chattr +i failed (needs ext4 and root)");
    let guard = common::Undo::new(&["chattr", "-i"], &end);
    t.ok(&["delete", "copy"]);
    let o = limited("purge copy");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("levels deep") && err.contains("Operation not permitted"),
        "{err}"
    );
    assert!(err.len() < 1000, "a {}-byte message", err.len());
    assert_eq!(status(&t, "copy"), "delete-error");
    drop(guard);
    drop(bottom);
    for name in ["copy", "deep"] {
        if name == "deep" {
            t.ok(&["delete", "deep"]);
        }
        let o = limited(&format!("purge {name}"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(status(&t, name), "delete-complete");
    }
    assert!(!src.exists());
}
