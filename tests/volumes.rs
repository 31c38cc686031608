//! Data volumes: which directories are accepted, how they are shown and
//! removed, the words of volume errors, and fsck never taking a live
//! vfolder's directory (or anything inside one) for an orphan.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Mount, TempStore, Undo, eventually};

/// `vfolderfs::cli::EXIT_VOLUME`.
const EXIT_VOLUME: i32 = 11;

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs the CLI, insists on the volume exit status; returns stderr.
fn refused(t: &TempStore, args: &[&str]) -> String {
    let o = t.cli(args);
    assert_eq!(
        o.status.code(),
        Some(EXIT_VOLUME),
        "vfolderfs {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

fn volume_names(t: &TempStore) -> Vec<String> {
    let j: serde_json::Value = serde_json::from_str(&t.ok(&["volume", "list", "--json"])).unwrap();
    j.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// Records a volume straight in the database, as a store made before
/// volumes were checked may have one.
fn record_volume_unchecked(t: &TempStore, name: &str, path: &Path) {
    let db = rusqlite::Connection::open(t.path().join("vfolders.db")).unwrap();
    db.execute(
        "INSERT INTO volumes (name, path, created_at) VALUES (?1, ?2, 0)",
        rusqlite::params![name, path.to_str().unwrap()],
    )
    .unwrap();
}

#[test]
fn a_volume_inside_a_vfolderfs_mount_is_refused() {
    let m = Mount::new(&[]);
    m.store.ok(&["create", "v"]);
    assert!(
        eventually(Duration::from_secs(20), || m.p("v").is_dir()),
        "the new vfolder never showed in the mount"
    );
    // Relocating into the store's own mount deadlocks the kernel: only the
    // refusal is checked, and nothing may be made inside the mount.
    let inside = m.p("v/vol");
    let err = refused(
        &m.store,
        &["volume", "add", "loop", inside.to_str().unwrap()],
    );
    assert!(
        err.contains("loop") && err.contains("inside the vfolderfs mount"),
        "{err}"
    );
    assert!(
        !path_of(&m.store, "v").join("vol").exists(),
        "made {inside:?}"
    );
    // The mount point itself, and a directory holding it, are refused too.
    let err = refused(&m.store, &["volume", "add", "top", m.mnt.to_str().unwrap()]);
    assert!(err.contains("vfolderfs mount"), "{err}");
    assert_eq!(volume_names(&m.store), ["default"]);
    // A store that recorded such a volume before the checks: fsck reports it
    // without reading through the mount, and nothing is moved onto it. (The
    // fsck assertion comes first: on code without the checks the
    // relocation would hang the kernel.)
    fs::create_dir(&inside).unwrap();
    record_volume_unchecked(&m.store, "loop", &inside);
    let o = m.store.cli(&["fsck"]);
    let out = stdout(&o);
    assert!(
        !o.status.success() && out.contains("volume loop") && out.contains("vfolderfs mount"),
        "{out}"
    );
    let err = refused(&m.store, &["relocate", "v", "--to", "loop"]);
    assert!(err.contains("vfolderfs mount"), "{err}");
    assert_eq!(m.store.show("v")["volume"], "default");
}

#[test]
fn a_volume_on_another_fuse_filesystem_is_refused() {
    let t = TempStore::new();
    let src = t.dir.path().join("bindfs-src");
    let mnt = t.dir.path().join("bindfs-mnt");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("bindfs")
        .arg(&src)
        .arg(&mnt)
        .status()
        .expect("bindfs (Debian package bindfs) is needed for this test");
    assert!(ok.success(), "bindfs failed");
    let _undo = Undo::new(&["umount", "-l"], &mnt);
    let err = refused(
        &t,
        &["volume", "add", "f", mnt.join("vol").to_str().unwrap()],
    );
    assert!(err.contains("FUSE"), "{err}");
    assert!(!src.join("vol").exists());
}

#[test]
fn overlapping_volumes_and_the_store_are_refused() {
    let t = TempStore::new();
    let store = t.path();
    let a = t.dir.path().join("a");
    t.ok(&["volume", "add", "a", a.to_str().unwrap()]);
    let link = t.dir.path().join("link-to-a");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let bind = t.dir.path().join("bind-of-store");
    fs::create_dir(&bind).unwrap();
    let ok = Command::new("mount")
        .arg("--bind")
        .arg(&store)
        .arg(&bind)
        .status()
        .unwrap();
    assert!(ok.success());
    let _unbind = Undo::new(&["umount", "-l"], &bind);
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("same", store.join("data"), "store directory"),
        ("root", store.clone(), "store directory"),
        ("under", store.join("elsewhere"), "store directory"),
        ("parent", t.dir.path().to_path_buf(), "contains the store"),
        ("again", a.clone(), "volume \"a\""),
        ("nested", a.join("deeper"), "inside volume \"a\""),
        ("viasym", link.join("deeper"), "inside volume \"a\""),
        ("viabind", bind.join("data"), "store directory"),
        ("viabind2", bind.join("data/new"), "store directory"),
    ];
    for (name, path, why) in cases {
        let err = refused(&t, &["volume", "add", name, path.to_str().unwrap()]);
        assert!(err.contains(name) && err.contains(why), "{name}: {err}");
    }
    assert!(!store.join("elsewhere").exists());
    assert!(!a.join("deeper").exists());
    assert_eq!(volume_names(&t), ["default", "a"]);
    // A volume that contains an existing one.
    let b_parent = t.dir.path().join("b");
    let b = b_parent.join("inner");
    t.ok(&["volume", "add", "b", b.to_str().unwrap()]);
    let err = refused(&t, &["volume", "add", "outer", b_parent.to_str().unwrap()]);
    assert!(err.contains("contains volume \"b\""), "{err}");
}

#[test]
fn volume_errors_use_volume_words() {
    let t = TempStore::new();
    let a = t.dir.path().join("a");
    t.ok(&["volume", "add", "a", a.to_str().unwrap()]);
    let err = refused(
        &t,
        &[
            "volume",
            "add",
            "a",
            t.dir.path().join("a2").to_str().unwrap(),
        ],
    );
    assert!(err.contains("a volume named \"a\" already exists"), "{err}");
    let err = refused(&t, &["volume", "add", "default", "/nonexistent-x"]);
    assert!(
        err.contains("a volume named \"default\" already exists"),
        "{err}"
    );
    t.ok(&["create", "x"]);
    let err = refused(&t, &["relocate", "x", "--to", "nowhere"]);
    assert!(err.contains("no volume named \"nowhere\""), "{err}");
    assert!(!err.contains("vfolder named"), "{err}");
    let err = refused(&t, &["relocate", "x", "--to", "default"]);
    assert!(
        err.contains("\"x\"") && err.contains("already") && !err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(t.show("x")["status"], "ready");
    let err = refused(&t, &["create", "y", "--volume", "nowhere"]);
    assert!(err.contains("no volume named \"nowhere\""), "{err}");
    let err = refused(&t, &["volume", "show", "nowhere"]);
    assert!(err.contains("no volume named \"nowhere\""), "{err}");
}

#[test]
fn volume_show_counts_vfolders_and_says_unavailable() {
    let t = TempStore::new();
    let a = t.dir.path().join("a");
    t.ok(&["volume", "add", "a", a.to_str().unwrap()]);
    t.ok(&["create", "x", "--volume", "a"]);
    t.ok(&["create", "y", "--volume", "a"]);
    t.ok(&["delete", "y"]);
    t.ok(&["create", "z"]);
    let j: serde_json::Value =
        serde_json::from_str(&t.ok(&["volume", "show", "a", "--json"])).unwrap();
    assert_eq!(j["vfolders"], 2, "{j}");
    assert_eq!(j["by_status"]["ready"], 1, "{j}");
    assert_eq!(j["by_status"]["delete-pending"], 1, "{j}");
    assert_eq!(j["available"], true, "{j}");
    assert_eq!(j["path"], a.to_str().unwrap(), "{j}");
    assert!(
        j["filesystem"].is_string() && j["free_bytes"].as_u64().is_some(),
        "{j}"
    );
    let text = t.ok(&["volume", "show", "a"]);
    assert!(text.contains("reachable") && text.contains("2 ("), "{text}");
    // The volume's directory goes away (a disk not mounted, say).
    fs::rename(&a, t.dir.path().join("a-away")).unwrap();
    let text = t.ok(&["volume", "show", "a"]);
    assert!(text.contains("unavailable"), "{text}");
    let j: serde_json::Value =
        serde_json::from_str(&t.ok(&["volume", "show", "a", "--json"])).unwrap();
    assert_eq!(j["available"], false, "{j}");
    assert!(j["free_bytes"].is_null(), "{j}");
    let list = t.ok(&["volume", "list"]);
    let line = list.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(
        line.contains("unavailable") && !line.contains("0.0 B"),
        "{list}"
    );
}

#[test]
fn volume_remove_is_refused_while_any_vfolder_uses_it() {
    let t = TempStore::new();
    let a = t.dir.path().join("a");
    t.ok(&["volume", "add", "a", a.to_str().unwrap()]);
    t.ok(&["create", "x", "--volume", "a"]);
    t.ok(&["delete", "x"]);
    // Trashed, still there.
    let err = refused(&t, &["volume", "remove", "a"]);
    assert!(
        err.contains("\"a\"") && err.contains("x (delete-pending)"),
        "{err}"
    );
    let err = refused(&t, &["volume", "remove", "default"]);
    assert!(err.contains("default"), "{err}");
    let err = refused(&t, &["volume", "remove", "nowhere"]);
    assert!(err.contains("no volume named \"nowhere\""), "{err}");
    // Purged, its row kept: still refused until gc forgets it.
    t.ok(&["purge", "x"]);
    let err = refused(&t, &["volume", "remove", "a"]);
    assert!(err.contains("gc"), "{err}");
    t.ok(&["gc", "--older-than", "0s"]);
    t.ok(&["volume", "remove", "a"]);
    assert_eq!(volume_names(&t), ["default"]);
    assert!(a.is_dir(), "the directory is left as it is");
    let err = refused(&t, &["create", "y", "--volume", "a"]);
    assert!(err.contains("no volume named \"a\""), "{err}");
}

#[test]
fn fsck_repair_never_moves_live_data_of_a_volume_equal_to_the_store_data() {
    let t = TempStore::new();
    t.ok(&["create", "live"]);
    let live = path_of(&t, "live");
    fs::write(live.join("f"), b"mine").unwrap();
    t.ok(&["create", "trashed"]);
    let trashed = path_of(&t, "trashed");
    t.ok(&["delete", "trashed"]);
    // What `volume add same STORE/data` used to accept.
    record_volume_unchecked(&t, "same", &t.path().join("data"));
    let o = t.cli(&["fsck", "--repair", "--grace", "0s"]);
    let out = stdout(&o);
    assert!(!o.status.success(), "the bad volume remains:\n{out}");
    assert!(
        out.contains("volume same") && out.contains("should not be"),
        "{out}"
    );
    assert!(
        !out.contains("volume default"),
        "the store's own volume is not the bad one: {out}"
    );
    assert_eq!(fs::read(live.join("f")).unwrap(), b"mine", "{out}");
    assert!(trashed.is_dir(), "{out}");
    assert!(!t.path().join("data/lost+found").exists(), "{out}");
    assert_eq!(t.show("live")["status"], "ready");
    // The way out: remove the bad volume (nothing is on it).
    t.ok(&["volume", "remove", "same"]);
    assert!(t.ok(&["fsck"]).contains("consistent"));
}

#[test]
fn fsck_repair_never_touches_files_inside_a_vfolder_a_nested_volume_points_into() {
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let v = path_of(&t, "v");
    fs::create_dir(v.join("dd")).unwrap();
    fs::set_permissions(v.join("dd"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(v.join("dd/file"), b"user data").unwrap();
    // A volume nested inside the default one: here, a vfolder's own directory.
    record_volume_unchecked(&t, "nested", &v);
    let o = t.cli(&["fsck", "--repair", "--grace", "0s"]);
    let out = stdout(&o);
    assert!(out.contains("volume nested"), "{out}");
    assert!(
        !out.contains("volume default"),
        "the store's own volume is not the bad one: {out}"
    );
    assert_eq!(fs::read(v.join("dd/file")).unwrap(), b"user data", "{out}");
    assert!(!v.join("lost+found").exists(), "{out}");
    let mode = fs::metadata(v.join("dd")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "a user's directory was tightened as a shard");
}

#[test]
fn fsck_leaves_a_fresh_unclaimed_directory_to_the_create_making_it() {
    let t = TempStore::new();
    t.ok(&["create", "fine"]);
    // What `create` has made the moment before it records the row.
    let id = "abcdef01-2345-6789-abcd-ef0123456789";
    let fresh = t.path().join("data/ab").join(id);
    fs::create_dir_all(&fresh).unwrap();
    let o = t.cli(&["fsck", "--repair"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(fresh.is_dir(), "moved away: {out}");
    assert!(out.contains("not judged"), "{out}");
    // Once old enough (here: a zero grace period), it is an orphan.
    let o = t.cli(&["fsck", "--repair", "--grace", "0s"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(!fresh.exists());
}

#[test]
fn an_interrupted_clone_is_repaired_in_one_pass_in_plain_words() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let src = path_of(&t, "src");
    for i in 0..300 {
        fs::write(src.join(format!("f{i}")), b"data").unwrap();
    }
    let mut child = Command::new(common::bin())
        .arg("--store")
        .arg(t.path())
        .args(["clone", "src", "dst"])
        .env("VFOLDERFS_PURGE_THROTTLE_US", "20000")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let copying = eventually(Duration::from_secs(30), || {
        let o = t.cli(&["show", "dst", "--json"]);
        o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|j| j["path"].as_str().map(PathBuf::from))
                .and_then(|p| fs::read_dir(p).ok())
                .is_some_and(|d| d.count() > 3)
    });
    // Our own child, by its pid.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(copying, "the clone never started copying");
    assert_eq!(t.show("dst")["status"], "cloning");
    assert_eq!(t.show("src")["status"], "cloning");
    let o = t.cli(&["fsck", "--repair"]);
    let out = stdout(&o);
    assert!(o.status.success(), "one pass repairs it all:\n{out}");
    for debug in ["Purge(", "Clone(", "Complete(", "RolledBack(", "(\""] {
        assert!(!out.contains(debug), "Rust debug text {debug:?}:\n{out}");
    }
    assert!(t.ok(&["fsck"]).contains("consistent"));
    assert_eq!(t.show("src")["status"], "ready");
    let j: serde_json::Value =
        serde_json::from_str(&t.ok(&["fsck", "--repair", "--json"])).unwrap();
    assert_eq!(j["remaining"], 0, "{j}");
    assert!(j["repairs"].as_array().unwrap().is_empty(), "{j}");
}

#[test]
fn nothing_is_placed_on_a_volume_that_should_never_have_been_accepted() {
    let t = TempStore::new();
    t.ok(&["create", "x"]);
    // A store made before volumes were checked: a volume inside the
    // default one. (One inside the store's own mount is refused the same
    // way; relocating there would hang the kernel, so it is not tried here.)
    let inside = t.path().join("data/inside");
    fs::create_dir(&inside).unwrap();
    record_volume_unchecked(&t, "inside", &inside);
    for args in [
        &["relocate", "x", "--to", "inside"][..],
        &["create", "y", "--volume", "inside"],
        &["clone", "x", "z", "--volume", "inside"],
    ] {
        let err = refused(&t, args);
        assert!(
            err.contains("volume \"inside\"") && err.contains("store directory"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(t.show("x")["status"], "ready");
    assert_eq!(t.show("x")["volume"], "default");
    assert!(fs::read_dir(&inside).unwrap().next().is_none());
}

#[test]
fn fsck_repair_judges_an_orphan_again_just_before_moving_it() {
    use vfolderfs::catalog::Catalog;
    use vfolderfs::fsck::{self, Finding, Options};
    use vfolderfs::layout::Layout;
    let t = TempStore::new();
    let cat = Catalog::open(Layout::new(t.path())).unwrap();
    let id = "abcdef01-2345-6789-abcd-ef0123456789";
    let dir = t.path().join("data/ab").join(id);
    fs::create_dir_all(&dir).unwrap();
    let opts = Options {
        grace: Duration::ZERO,
    };
    let found = fsck::check(&cat, &opts).unwrap().findings;
    assert!(
        found
            .iter()
            .any(|f| matches!(f, Finding::Orphan { id: i, .. } if i.ends_with(id))),
        "{found:?}"
    );
    // A create that made the directory before the check records its row
    // between the check and the repair.
    cat.store().create(id, "late", "default", "test").unwrap();
    let done = fsck::repair(&cat, &found, &opts);
    assert!(dir.is_dir(), "moved a claimed directory: {done:?}");
    assert!(
        done.iter()
            .any(|(_, r)| r.as_ref().is_ok_and(|s| s.contains("no longer an orphan"))),
        "{done:?}"
    );
    assert_eq!(t.show("late")["status"], "ready");
}

#[test]
fn fsck_repair_during_live_jobs_leaves_their_copies_and_claims_alone() {
    let t = TempStore::new();
    let fast = common::Tmpfs::new(&t, "fast", "64m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    for name in ["moving", "source"] {
        t.ok(&["create", name]);
        let p = path_of(&t, name);
        for i in 0..400 {
            fs::write(p.join(format!("f{i}")), b"data").unwrap();
        }
    }
    let m = Mount::on_env(t, &[], &[("VFOLDERFS_PURGE_THROTTLE_US", "5000")]);
    let t = &m.store;
    // A relocation across filesystems and a clone, both copying in the
    // mount's pool while fsck repairs with no grace at all.
    t.ok(&["relocate", "moving", "--to", "fast", "--no-wait"]);
    t.ok(&["clone", "source", "copy", "--volume", "fast", "--no-wait"]);
    let busy = |name: &str| {
        t.show(name)["job"]["owner"]
            .as_str()
            .is_some_and(|o| !o.is_empty())
    };
    assert!(
        eventually(Duration::from_secs(30), || busy("moving") && busy("copy")),
        "the jobs never started"
    );
    for _ in 0..3 {
        let o = t.cli(&["fsck", "--repair", "--grace", "0s"]);
        let out = stdout(&o);
        assert!(!out.contains("moved to"), "moved a live job's copy:\n{out}");
        assert!(
            !out.contains("\"moving\"") && !out.contains("\"copy\""),
            "touched a live job:\n{out}"
        );
    }
    assert!(
        eventually(Duration::from_secs(120), || {
            t.show("moving")["status"] == "ready"
                && t.show("moving")["volume"] == "fast"
                && t.show("copy")["status"] == "ready"
        }),
        "the jobs did not finish: {} {}",
        t.show("moving"),
        t.show("copy")
    );
    for name in ["moving", "copy"] {
        let n = fs::read_dir(path_of(t, name)).unwrap().count();
        assert_eq!(n, 400, "{name}");
    }
    assert!(
        eventually(Duration::from_secs(30), || t
            .cli(&["fsck", "--grace", "0s"])
            .status
            .success()),
        "{}",
        stdout(&t.cli(&["fsck", "--grace", "0s"]))
    );
}

#[test]
fn a_mount_over_or_inside_the_stores_data_is_refused() {
    let t = TempStore::new();
    let a = t.dir.path().join("a");
    t.ok(&["volume", "add", "a", a.to_str().unwrap()]);
    fs::create_dir(a.join("sub")).unwrap();
    fs::create_dir(t.path().join("inner")).unwrap();
    let cases = [
        (t.path().join("data"), "store directory"),
        (t.path().join("inner"), "store directory"),
        (a.clone(), "volume \"a\""),
        (a.join("sub"), "volume \"a\""),
        (t.dir.path().to_path_buf(), "contains the store directory"),
    ];
    for (mp, why) in cases {
        // Unmounted on drop should the refusal fail to come.
        let _undo = Undo::new(&["umount", "-l"], &mp);
        let o = t.cli(&["mount", mp.to_str().unwrap()]);
        let err = stderr(&o);
        assert!(!o.status.success(), "mounted at {mp:?}");
        assert!(
            err.contains("cannot mount here") && err.contains(why),
            "{mp:?}: {err}"
        );
        assert!(!common::is_mounted(&mp));
    }
    // Beside them is fine.
    let m = Mount::on(t, &[]);
    assert!(common::is_mounted(&m.mnt));
}

/// A volume on shared storage whose filesystem is not mounted shows as an
/// empty local directory: it carries no identity marker, so nothing is
/// created there, a purge of a vfolder on it fails (retryable) instead of
/// "completing" on nothing, and fsck does not judge its vfolders; once the
/// filesystem is back, everything goes on. A directory marked as another
/// store's volume is refused the same way.
#[test]
fn a_volume_whose_shared_filesystem_is_missing_is_unavailable_not_empty() {
    let t = TempStore::new();
    let src = t.dir.path().join("nfs-export");
    let vol = t.dir.path().join("nfs-mount");
    for d in [&src, &vol] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let bind = |on: bool| {
        let ok = if on {
            Command::new("mount")
                .arg("--bind")
                .arg(&src)
                .arg(&vol)
                .status()
        } else {
            Command::new("umount").arg(&vol).status()
        };
        assert!(ok.unwrap().success());
    };
    bind(true);
    let _undo = Undo::new(&["umount", "-l"], &vol);
    t.ok(&["volume", "add", "shared", vol.to_str().unwrap()]);
    assert!(src.join(".vfolderfs-volume").exists(), "no marker written");
    t.ok(&["create", "b", "--volume", "shared"]);
    std::fs::write(path_of(&t, "b").join("f"), b"data").unwrap();
    t.ok(&["delete", "b"]);
    // The shared filesystem goes away: an empty local directory remains.
    bind(false);
    let e = refused(&t, &["create", "c", "--volume", "shared"]);
    assert!(e.contains("unavailable"), "{e}");
    assert!(!t.cli(&["purge", "b"]).status.success());
    assert_eq!(t.show("b")["status"], "delete-error");
    let o = t.cli(&["fsck", "--json"]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("unavailable"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_dir(&vol).unwrap().count(),
        0,
        "wrote into the stand-in"
    );
    // Back: the purge goes through, on the real data.
    bind(true);
    t.ok(&["purge", "b"]);
    assert_eq!(t.show("b")["status"], "delete-complete");
    assert!(
        !src.join(path_of(&t, "b").strip_prefix(&vol).unwrap())
            .exists()
    );
    // Another store's volume directory is not this one's.
    let other = t.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(
        other.join(".vfolderfs-volume"),
        "vfolderfs volume\nstore 00000000-0000-0000-0000-000000000000\nname shared\n",
    )
    .unwrap();
    let e = refused(&t, &["volume", "add", "theirs", other.to_str().unwrap()]);
    assert!(e.contains("another store"), "{e}");
    assert!(
        !t.ok(&["volume", "list"]).contains("theirs"),
        "recorded anyway"
    );
}
