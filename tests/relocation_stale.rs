//! No acknowledged write is lost by a relocation: after a switch to a copy on
//! another filesystem, handles, cached inodes and working directories from
//! the old copy work against the new copy or fail with `ESTALE`; they never
//! succeed into the copy that is about to be removed. A relocation within one
//! filesystem (a rename) keeps them working.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TempStore, Tmpfs, errno, eventually};

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

/// Whether `name` is ready on volume `vol`.
fn ready_on(t: &TempStore, name: &str, vol: &str) -> bool {
    let v = t.show(name);
    v["status"] == "ready" && v["volume"] == vol
}

/// A shell whose working directory is `dir`; it runs `script` once a line
/// arrives on its stdin.
fn shell_in(dir: &Path, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Lets a [`shell_in`] run; returns (stdout, stderr).
fn go(mut c: Child) -> (String, String) {
    c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let o = c.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The O_APPEND repro: a writer keeps appending through one handle while the
/// vfolder moves to another filesystem. Writes succeed before the move,
/// fail with `EROFS` while it copies, and with `ESTALE` after the switch
/// (or succeed into the new copy); every one that succeeded is in the file
/// afterwards, on the mount and in the new backing copy.
#[test]
fn no_acknowledged_write_is_lost_by_a_cross_filesystem_relocation() {
    appender_across_a_move(&[]);
}

/// The same with every open served by the daemon (no kernel passthrough):
/// the old reader's reads fail with `ESTALE` too.
#[test]
fn no_acknowledged_write_is_lost_by_a_relocation_without_passthrough() {
    appender_across_a_move(&["-o", "nopassthrough"]);
}

fn appender_across_a_move(opts: &[&str]) {
    let t = TempStore::new();
    let v2 = Tmpfs::new(&t, "v2", "64m");
    t.ok(&["volume", "add", "v2", v2.0.to_str().unwrap()]);
    t.ok(&["create", "r2"]);
    let old = path_of(&t, "r2");
    let m = Mount::on(t, opts);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.p("r2/log"))
        .unwrap();
    f.write_all(b"line 0\n").unwrap();
    // A reader opened before the move (kernel passthrough where offered).
    m.sh_ok("echo kept > r2/ro");
    let mut reader = fs::File::open(m.p("r2/ro")).unwrap();
    let mut acked: Vec<String> = vec!["line 0\n".into()];
    let mut errors: Vec<i32> = Vec::new();
    let mut write = |f: &mut fs::File, i: usize| {
        let line = format!("line {i}\n");
        match f.write(line.as_bytes()) {
            Ok(n) => {
                assert_eq!(n, line.len());
                acked.push(line);
            }
            Err(e) => errors.push(errno(&e)),
        }
    };
    m.store.ok(&["relocate", "r2", "--to", "v2", "--no-wait"]);
    let mut i = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until the old copy is gone (every mount switched), then some more.
    while old.exists() {
        write(&mut f, i);
        i += 1;
        assert!(Instant::now() < deadline, "the relocation never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ready_on(&m.store, "r2", "v2"));
    for _ in 0..5 {
        write(&mut f, i);
        i += 1;
    }
    let synced = f.sync_all();
    drop(f);
    assert!(
        errors
            .iter()
            .all(|&e| e == libc::EROFS || e == libc::ESTALE),
        "only EROFS (while copying) and ESTALE (after the switch): {errors:?}"
    );
    if let Err(e) = synced {
        assert_eq!(errno(&e), libc::ESTALE, "{e}");
    }
    let want: String = acked.concat();
    let new = path_of(&m.store, "r2");
    assert!(new.starts_with(&v2.0), "{}", new.display());
    assert_eq!(
        fs::read_to_string(new.join("log")).unwrap(),
        want,
        "every acknowledged write is in the new backing copy"
    );
    // After the switch the old handle no longer writes into the old copy.
    assert_eq!(
        errors.last(),
        Some(&libc::ESTALE),
        "writes after the switch fail with ESTALE"
    );
    // The reader reads the data as it was at the switch (passthrough: the
    // kernel reads the old file directly) or fails with ESTALE (served by
    // the daemon); the file is unchanged either way.
    let mut s = String::new();
    match std::io::Read::read_to_string(&mut reader, &mut s) {
        Ok(_) if opts.is_empty() => assert_eq!(s, "kept\n"),
        Ok(_) => panic!("a daemon-served reader of the old copy read {s:?}"),
        Err(e) => assert_eq!(errno(&e), libc::ESTALE, "{e}"),
    }
    // Path access goes to the new copy (the kernel retries a stale path
    // once, revalidating every name), reads and appends.
    assert_eq!(fs::read_to_string(m.p("r2/log")).unwrap(), want);
    assert_eq!(m.sh_ok("cat r2/log"), want);
    let mut g = OpenOptions::new().append(true).open(m.p("r2/log")).unwrap();
    g.write_all(b"after\n").unwrap();
    g.sync_all().unwrap();
    drop(g);
    assert_eq!(
        fs::read_to_string(new.join("log")).unwrap(),
        format!("{want}after\n")
    );
}

/// A process whose working directory is inside the vfolder (its root, or a
/// directory below) when it moves to another filesystem: `ls .` and `cat f`
/// relative to it fail with `ESTALE` or show the new copy, never the old
/// tree that is about to be removed.
#[test]
fn a_working_directory_inside_a_relocated_vfolder_never_shows_the_old_tree() {
    let t = TempStore::new();
    let v2 = Tmpfs::new(&t, "v2", "64m");
    t.ok(&["volume", "add", "v2", v2.0.to_str().unwrap()]);
    t.ok(&["create", "r2"]);
    let m = Mount::on(t, &[]);
    m.sh_ok("mkdir r2/d && echo old > r2/f && echo old > r2/d/g");
    let script = |file: &str| {
        format!(
            "if ls -a .; then echo LS-OK; fi; if cat {file}; then echo CAT-OK; fi; \
             if ls ..; then echo UP-OK; fi"
        )
    };
    // Both have looked at their directory, so the kernel caches it.
    let at_root = shell_in(&m.p("r2"), &script("f"));
    let below = shell_in(&m.p("r2/d"), &script("g"));
    assert!(m.sh_ok("ls r2 r2/d").contains('f'));
    m.store.ok(&["relocate", "r2", "--to", "v2"]);
    assert!(eventually(Duration::from_secs(30), || ready_on(
        &m.store, "r2", "v2"
    )));
    // Changes through the path land in the new copy.
    m.sh_ok("echo new > r2/f && echo new > r2/d/g && touch r2/added r2/d/added");
    let new = path_of(&m.store, "r2");
    assert_eq!(fs::read_to_string(new.join("d/g")).unwrap(), "new\n");
    for (what, shell) in [("the root", at_root), ("a directory below", below)] {
        let (out, err) = go(shell);
        let stale = |ok: &str| {
            assert!(
                err.contains("Stale file handle"),
                "{what}: without {ok}, the error must be ESTALE: {err}"
            );
        };
        if out.contains("LS-OK") {
            assert!(
                out.contains("added"),
                "{what}: ls . shows the old tree: {out}"
            );
        } else {
            stale("LS-OK");
        }
        if out.contains("CAT-OK") {
            assert!(out.contains("new"), "{what}: cat shows old data: {out}");
        } else {
            stale("CAT-OK");
        }
        if !out.contains("UP-OK") {
            stale("UP-OK");
        }
    }
    // New shells reach the new tree by path.
    let listed = m.sh_ok("cd r2/d && ls . && cat g");
    assert!(
        listed.contains("added") && listed.contains("new"),
        "{listed}"
    );
}

/// Within one filesystem a relocation is one rename: an open handle keeps
/// writing (into the same inode, now under the new volume), and a working
/// directory inside keeps working.
#[test]
fn an_open_handle_keeps_working_across_a_same_filesystem_relocation() {
    let t = TempStore::new();
    let cold = t.dir.path().join("cold-volume");
    t.ok(&["volume", "add", "cold", cold.to_str().unwrap()]);
    t.ok(&["create", "r2"]);
    let m = Mount::on(t, &[]);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.p("r2/log"))
        .unwrap();
    f.write_all(b"one\n").unwrap();
    let ino = fs::metadata(m.p("r2/log")).unwrap().ino();
    m.sh_ok("mkdir r2/d && echo g > r2/d/g");
    let cwd = shell_in(&m.p("r2/d"), "ls . && cat g && ls ../log");
    let reader = fs::File::open(m.p("r2/d/g")).unwrap();
    m.store.ok(&["relocate", "r2", "--to", "cold"]);
    assert!(eventually(Duration::from_secs(30), || ready_on(
        &m.store, "r2", "cold"
    )));
    assert!(m.store.ok(&["history", "r2"]).contains("by rename"));
    // Writes are allowed again once the mount has seen `ready`.
    assert!(eventually(Duration::from_secs(10), || f
        .write_all(b"two\n")
        .is_ok()));
    f.sync_all().unwrap();
    drop(f);
    let new = path_of(&m.store, "r2");
    assert!(new.starts_with(&cold), "{}", new.display());
    assert_eq!(fs::read_to_string(new.join("log")).unwrap(), "one\ntwo\n");
    assert_eq!(fs::read_to_string(m.p("r2/log")).unwrap(), "one\ntwo\n");
    assert_eq!(fs::metadata(m.p("r2/log")).unwrap().ino(), ino);
    let (out, err) = go(cwd);
    assert!(out.contains("g\n") && out.contains("../log"), "{out}{err}");
    // A reader opened before keeps reading.
    let mut lines = BufReader::new(reader).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "g");
}
