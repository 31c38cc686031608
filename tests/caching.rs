//! The kernel's cache of names and attributes: long while a mount is the only
//! live mount of its store, brief beside another one, and dropped wherever a
//! tree changed behind the mount. Every way a change can reach a tree is
//! checked to show on the mount: this mount, another mount of the store, a
//! clone or relocation finishing, a restore. No latency is asserted: where
//! the kernel is asynchronous the check has a generous deadline, far beyond
//! the brief timeout and far below the long one.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use common::{LoopVolume, Mount, OtherMount, TempStore, Tmpfs, eventually};

fn size(p: &std::path::Path) -> Option<u64> {
    fs::metadata(p).ok().map(|m| m.len())
}

/// A mount alone caches for long; once a second mount of the store is up,
/// the first has dropped what it cached (names, negative names and
/// attributes) and what the second changes shows on the first.
#[test]
fn a_second_mount_sees_its_changes_on_the_first() {
    let t = TempStore::new();
    let other = OtherMount(t.dir.path().join("mnt-b"));
    fs::create_dir_all(&other.0).unwrap();
    let a = Mount::on(t, &[]);
    a.store.ok(&["create", "v"]);
    a.sh_ok("echo one > v/f && echo x > v/old && mkdir v/d");
    // The mount has sent every invalidation owed for `v` once it confirmed
    // a later change (passes run in order): nothing but the second mount
    // can make it drop what it caches next.
    a.store.ok(&["create", "later"]);
    // Cached by the first mount: a size, a name, a missing name, a listing.
    assert_eq!(size(&a.p("v/f")), Some(4));
    assert!(a.p("v/old").exists());
    assert!(!a.p("v/new").exists());
    assert!(a.p("v/d").is_dir());
    let names = |p: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a.p("v")), ["d", "f", "old"]);
    a.store.ok(&["mount", other.0.to_str().unwrap()]);
    let b = |rel: &str| other.0.join(rel);
    fs::OpenOptions::new()
        .append(true)
        .open(b("v/f"))
        .unwrap()
        .write_all(b"two\n")
        .unwrap();
    fs::rename(b("v/old"), b("v/renamed")).unwrap();
    fs::write(b("v/new"), b"n").unwrap();
    fs::remove_dir(b("v/d")).unwrap();
    fs::write(b("v/d"), b"now a file").unwrap();
    let seen = eventually(Duration::from_secs(20), || {
        size(&a.p("v/f")) == Some(8)
            && !a.p("v/old").exists()
            && a.p("v/renamed").exists()
            && a.p("v/new").exists()
            && a.p("v/d").is_file()
            && names(a.p("v")) == ["d", "f", "new", "renamed"]
    });
    assert!(seen, "the first mount kept showing what it cached before");
    assert_eq!(fs::read_to_string(a.p("v/f")).unwrap(), "one\ntwo\n");
    // And the other way round: both brief now.
    fs::write(a.p("v/from-a"), b"a").unwrap();
    assert!(eventually(Duration::from_secs(20), || b("v/from-a").exists()));
}

/// This mount's own changes show at once however long it caches, also to
/// another user's view of the same inode through another name.
#[test]
fn own_changes_show_at_once_with_long_timeouts() {
    let m = Mount::new(&[
        "-o",
        "attr_timeout=3600,entry_timeout=3600,negative_timeout=3600",
    ]);
    m.sh_ok("mkdir v && echo one > v/f && ln v/f v/g");
    assert_eq!(fs::metadata(m.p("v/g")).unwrap().nlink(), 2);
    assert!(!m.p("v/h").exists());
    m.sh_ok("echo longer > v/f && rm v/f && ln v/g v/h && chmod 600 v/g");
    let g = fs::metadata(m.p("v/g")).unwrap();
    assert_eq!((g.len(), g.nlink(), g.mode() & 0o777), (7, 2, 0o600));
    assert!(!m.p("v/f").exists());
    assert_eq!(fs::read_to_string(m.p("v/h")).unwrap(), "longer\n");
}

/// A relocation to another filesystem and a clone finish behind the mount
/// (new copies, new inodes): a tree the kernel cached before is seen fresh
/// when the command returns.
#[test]
fn trees_changed_by_jobs_show_fresh_when_the_command_returns() {
    let t = TempStore::new();
    let cold = Tmpfs::new(&t, "cold", "64m");
    let m = Mount::on(t, &[]);
    m.store
        .ok(&["volume", "add", "cold", cold.0.to_str().unwrap()]);
    m.sh_ok("mkdir r && echo data > r/f && mkdir r/sub && echo deep > r/sub/g");
    // Cached before: names, attributes, inode numbers of the old copy.
    let before = fs::metadata(m.p("r/sub/g")).unwrap().ino();
    assert!(!m.p("r/sub/none").exists());
    m.store.ok(&["relocate", "r", "--to", "cold"]);
    let after = fs::metadata(m.p("r/sub/g")).unwrap();
    assert_ne!(after.ino(), before, "still the old copy's inode");
    assert_eq!(fs::read_to_string(m.p("r/sub/g")).unwrap(), "deep\n");
    fs::write(m.p("r/sub/g"), b"written after\n").unwrap();
    assert_eq!(
        fs::read_to_string(m.p("r/sub/g")).unwrap(),
        "written after\n"
    );

    // A clone target listed while it was being filled is seen whole.
    m.sh_ok("mkdir src && for i in $(seq 1 200); do echo $i > src/f$i; done");
    m.store.ok(&["clone", "src", "dst"]);
    let n = fs::read_dir(m.p("dst")).unwrap().count();
    assert_eq!(n, 200);
    assert_eq!(fs::read_to_string(m.p("dst/f200")).unwrap(), "200\n");
}

/// A vfolder replaced under its name, and restored: the names inside follow
/// the vfolder the name points to now.
#[test]
fn a_name_given_to_another_vfolder_and_back_shows_the_right_tree() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir foo && echo first > foo/x");
    assert!(m.p("foo/x").exists());
    assert!(!m.p("foo/y").exists());
    m.store.ok(&["delete", "foo"]);
    m.store.ok(&["create", "foo"]);
    assert!(
        !m.p("foo/x").exists(),
        "the old vfolder's file under the new one"
    );
    fs::write(m.p("foo/y"), b"second").unwrap();
    assert_eq!(fs::read_to_string(m.p(".trash/foo/x")).unwrap(), "first\n");
    m.store.ok(&["delete", "foo"]);
    let trashed: Vec<serde_json::Value> =
        serde_json::from_str(&m.store.ok(&["list", "--all", "--json"])).unwrap();
    let first = trashed
        .iter()
        .find(|v| {
            let p = v["path"].as_str().unwrap_or_default();
            v["status"] == "delete-pending" && PathBuf::from(p).join("x").exists()
        })
        .expect("the first foo in the trash");
    m.store.ok(&["restore", first["id"].as_str().unwrap()]);
    assert_eq!(fs::read_to_string(m.p("foo/x")).unwrap(), "first\n");
    assert!(
        !m.p("foo/y").exists(),
        "the second vfolder's file under the first"
    );
}

/// A listing names every entry by the inode its name is now. A readdirplus
/// sends only the name (no attributes, no lookup) for an inode the kernel
/// holds with a fresh entry; here the kernel still holds an old inode whose
/// number the backing filesystem (ext4, which hands a freed number out again
/// at once) gave to a new file behind the mount, as another mount or node
/// would: the new file must be listed with the `d_ino` that `stat` gives it,
/// not as the old inode. Long timeouts keep the old entry fresh throughout.
#[test]
fn a_listing_never_names_a_new_file_as_an_old_inode_with_its_number() {
    let t = TempStore::new();
    let vol = LoopVolume::new(&t, "e4");
    t.ok(&["volume", "add", "e4", vol.dir.to_str().unwrap()]);
    t.ok(&["create", "v", "--volume", "e4"]);
    let backing = PathBuf::from(t.show("v")["path"].as_str().unwrap()).join("d");
    let m = Mount::on(
        t,
        &[
            "-o",
            "attr_timeout=3600,entry_timeout=3600,negative_timeout=3600",
        ],
    );
    m.sh_ok("mkdir v/d && touch v/d/a v/d/b");
    let mut reused = None;
    for k in 0..100 {
        // Made through the mount: the kernel holds it, its entry fresh.
        let old = format!("old{k}");
        fs::write(m.p(&format!("v/d/{old}")), b"o").unwrap();
        fs::metadata(m.p(&format!("v/d/{old}"))).unwrap();
        let number = fs::metadata(backing.join(&old)).unwrap().ino();
        // Behind the mount: removed, and a new file made.
        fs::remove_file(backing.join(&old)).unwrap();
        let new = format!("new{k}");
        fs::write(backing.join(&new), b"n").unwrap();
        if fs::metadata(backing.join(&new)).unwrap().ino() == number {
            reused = Some(new);
            break;
        }
        fs::remove_file(backing.join(&new)).unwrap();
    }
    let new = reused.expect("ext4 never gave a freed inode number out again: nothing was tested");
    let mut seen = Vec::new();
    for e in fs::read_dir(m.p("v/d")).unwrap() {
        let e = e.unwrap();
        let st = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(
            e.ino(),
            st.ino(),
            "{:?} listed with another inode's number",
            e.file_name()
        );
        seen.push(e.file_name().to_string_lossy().into_owned());
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", new.as_str()]);
    assert_eq!(fs::read_to_string(m.p(&format!("v/d/{new}"))).unwrap(), "n");
}

/// On a filesystem that records no file types in its directories (ext4
/// without `filetype`: every `d_type` is `DT_UNKNOWN`), a listing still gives
/// each entry its type, whether the kernel already held the inode (a name
/// sent alone) or not: tools such as `rm -rf` and `find` act on `d_type`.
#[test]
fn listings_give_file_types_where_the_backing_directories_record_none() {
    let t = TempStore::new();
    let vol = LoopVolume::with_mkfs(&t, "e4", &["-O", "^filetype"]);
    t.ok(&["volume", "add", "e4", vol.dir.to_str().unwrap()]);
    t.ok(&["create", "v", "--volume", "e4"]);
    let m = Mount::on(t, &[]);
    m.sh_ok("mkdir v/d v/d/sub && touch v/d/f && ln -s f v/d/l && mkfifo v/d/p");
    let kinds = |rel: &str| -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = fs::read_dir(m.p(rel))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                let k = if t.is_dir() {
                    "dir"
                } else if t.is_symlink() {
                    "symlink"
                } else if t.is_file() {
                    "file"
                } else {
                    "other"
                };
                (e.file_name().to_string_lossy().into_owned(), k)
            })
            .collect();
        v.sort();
        v
    };
    let want = |names: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
        names.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    };
    let all = want(&[
        ("f", "file"),
        ("l", "symlink"),
        ("p", "other"),
        ("sub", "dir"),
    ]);
    // Made through the mount: the kernel holds each one.
    assert_eq!(kinds("v/d"), all);
    // The same entries made behind the mount: unknown to the kernel.
    m.sh_ok("mkdir v/e");
    let backing = PathBuf::from(m.store.show("v")["path"].as_str().unwrap()).join("e");
    fs::create_dir(backing.join("sub")).unwrap();
    fs::write(backing.join("f"), b"x").unwrap();
    std::os::unix::fs::symlink("f", backing.join("l")).unwrap();
    let o = std::process::Command::new("mkfifo")
        .arg(backing.join("p"))
        .status()
        .unwrap();
    assert!(o.success());
    assert_eq!(kinds("v/e"), all);
    // A directory too big for one reply: the kernel asks for the rest with
    // plain READDIR (no lookups), which must not guess either.
    m.sh_ok("mkdir v/g");
    let g = backing.with_file_name("g");
    let mut big = Vec::new();
    for i in 0..300 {
        fs::create_dir(g.join(format!("dir{i:03}"))).unwrap();
        fs::write(g.join(format!("file{i:03}")), b"").unwrap();
        big.push((format!("dir{i:03}"), "dir"));
        big.push((format!("file{i:03}"), "file"));
    }
    big.sort();
    assert_eq!(kinds("v/g"), big);
    // rm -rf, which trusts d_type, removes the lot.
    m.sh_ok("rm -rf v/d v/e v/g");
    assert!(!m.p("v/d").exists() && !m.p("v/e").exists() && !m.p("v/g").exists());
}
