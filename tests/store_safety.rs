//! Store safety: a store and its volumes are private to the daemon's user,
//! a store is made only by `init`, and a mount never adopts another store.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Mount, TempStore, errno, eventually, is_mounted};

/// The exit status for "no store there" (documented in the README).
const EXIT_NO_STORE: i32 = 3;

/// An unprivileged uid with no passwd entry.
const ATTACKER: &str = "65533";

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn chmod(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

/// Runs `sh -c script` as the unprivileged attacker.
fn as_attacker(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            ATTACKER,
            "--regid",
            ATTACKER,
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv")
}

/// The database and the files SQLite keeps beside it.
fn db_files(store: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| store.join(format!("vfolders.db{s}")))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn another_user_cannot_write_into_a_trashed_vfolder_or_read_the_database() {
    let t = TempStore::new();
    // The temporary parent is 0700; open it so the attacker could reach the
    // store if the store itself let them.
    chmod(t.dir.path(), 0o755);
    t.ok(&["create", "shared"]);
    let dir = path_of(&t, "shared");
    // A folder the attacker used (through a mount) belongs to them.
    let o = Command::new("chown")
        .arg(format!("{ATTACKER}:{ATTACKER}"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(o.success());
    t.ok(&["delete", "shared"]);
    // While a connection is open, SQLite keeps -wal and -shm files beside
    // the database: they are as private as the database.
    let keep = rusqlite::Connection::open(t.path().join("vfolders.db")).unwrap();
    keep.execute_batch("SELECT count(*) FROM vfolders;")
        .unwrap();
    let files = db_files(&t.path());
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let bobfile = dir.join("bobfile");
    let o = as_attacker(&format!("echo sneaky > '{}'", bobfile.display()));
    assert!(
        !o.status.success() && !bobfile.exists(),
        "another user wrote into a trashed vfolder's backing directory"
    );
    for db in db_files(&t.path()) {
        let o = as_attacker(&format!("cat '{}' > /dev/null", db.display()));
        assert!(!o.status.success(), "another user read {}", db.display());
    }
    let o = as_attacker(&format!("ls '{}'", t.path().join("data").display()));
    assert!(
        !o.status.success(),
        "another user listed the data directory"
    );
}

#[test]
fn a_loose_store_of_an_older_version_is_tightened_on_open() {
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let vdir = path_of(&t, "v");
    let shard = vdir.parent().unwrap().to_path_buf();
    // What an older vfolderfs left: schema version 7 (no store id) and the
    // modes a 022 umask gives, -wal and -shm included (kept while this
    // connection is open).
    let keep = rusqlite::Connection::open(t.path().join("vfolders.db")).unwrap();
    keep.execute_batch("DROP TABLE IF EXISTS store_info; PRAGMA user_version = 7;")
        .unwrap();
    for d in [t.path(), t.path().join("data"), shard.clone()] {
        chmod(&d, 0o755);
    }
    for f in db_files(&t.path()) {
        chmod(&f, 0o644);
    }
    let o = t.cli(&["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains('v'));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("tightened"),
        "the tightening was not logged: {log}"
    );
    for d in [t.path(), t.path().join("data"), shard] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let files = db_files(&t.path());
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    drop(keep);
    // The vfolder's own directory is what its users see: left alone.
    assert_eq!(mode(&vdir), 0o755);
    // The store got an id by the migration, and keeps it.
    let id = |t: &TempStore| -> String {
        let c = rusqlite::Connection::open(t.path().join("vfolders.db")).unwrap();
        c.query_row("SELECT value FROM store_info WHERE key = 'id'", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let first = id(&t);
    assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first}");
    t.ok(&["list"]);
    assert_eq!(id(&t), first);
}

#[test]
fn volume_add_tightens_an_empty_dir_and_refuses_a_loose_one_in_use() {
    let t = TempStore::new();
    let empty = t.dir.path().join("vol-empty");
    fs::create_dir(&empty).unwrap();
    chmod(&empty, 0o755);
    t.ok(&["volume", "add", "e", empty.to_str().unwrap()]);
    assert_eq!(mode(&empty), 0o700);
    // A new directory is made private whatever the umask.
    let fresh = t.dir.path().join("vol-new/deeper");
    t.ok(&["volume", "add", "n", fresh.to_str().unwrap()]);
    assert_eq!(mode(&fresh), 0o700);
    // A loose directory with something in it may be relied on by others:
    // refused, untouched.
    let used = t.dir.path().join("vol-used");
    fs::create_dir(&used).unwrap();
    fs::write(used.join("theirs"), b"x").unwrap();
    chmod(&used, 0o755);
    let err = t.fails(&["volume", "add", "u", used.to_str().unwrap()]);
    assert!(err.contains("0755") && err.contains("vol-used"), "{err}");
    assert_eq!(mode(&used), 0o755);
    assert!(!t.ok(&["volume", "list"]).contains("vol-used"));
    // A vfolder on a volume gets a private shard.
    t.ok(&["create", "x", "--volume", "e"]);
    let shard = path_of(&t, "x").parent().unwrap().to_path_buf();
    assert!(shard.starts_with(&empty));
    assert_eq!(mode(&shard), 0o700);
}

#[test]
fn fsck_reports_loose_modes_and_repair_fixes_them() {
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let shard = path_of(&t, "v").parent().unwrap().to_path_buf();
    let data = t.path().join("data");
    let db = t.path().join("vfolders.db");
    chmod(&data, 0o755);
    chmod(&shard, 0o775);
    chmod(&db, 0o644);
    let o = t.cli(&["fsck"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "loose modes make fsck fail:\n{out}");
    for needle in [
        format!("{} is 0755", data.display()),
        format!("{} is 0775", shard.display()),
        format!("{} is 0644", db.display()),
    ] {
        assert!(out.contains(&needle), "{needle:?} not reported:\n{out}");
    }
    // Reporting changed nothing.
    assert_eq!(mode(&data), 0o755);
    let o = t.cli(&["fsck", "--repair"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&shard), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert!(t.ok(&["fsck"]).contains("consistent"));
}

#[test]
fn commands_refuse_a_missing_store_and_create_nothing() {
    let base = tempfile::tempdir().unwrap();
    let typo = base.path().join("x/nostore");
    let run = |args: &[&str], env: Option<&Path>| {
        let mut c = Command::new(common::bin());
        c.env_remove("RUST_LOG").env_remove("VFOLDERFS_STORE");
        match env {
            Some(p) => c.env("VFOLDERFS_STORE", p),
            None => c.arg("--store").arg(&typo),
        };
        c.args(args).output().unwrap()
    };
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["create", "x"],
        &["show", "x"],
        &["volume", "list"],
        &["fsck"],
        &["gc", "--older-than", "0"],
    ] {
        for env in [None, Some(typo.as_path())] {
            let o = run(args, env);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(EXIT_NO_STORE),
                "{args:?}: {err}{}",
                String::from_utf8_lossy(&o.stdout)
            );
            assert!(
                err.contains(typo.to_str().unwrap()) && err.contains("init"),
                "{args:?}: the message names neither the path nor init: {err}"
            );
            assert!(o.stdout.is_empty(), "{args:?} printed a result");
            assert!(
                !base.path().join("x").exists(),
                "{args:?} created something"
            );
        }
    }
    // init makes it; init again says so and succeeds, with the same id.
    let o = run(&["init"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(mode(&typo), 0o700);
    let o = run(&["init"], None);
    assert!(o.status.success());
    let again = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(again.contains("already"), "{again}");
    let id = |s: &str| {
        s.split_whitespace()
            .find_map(|w| uuid::Uuid::parse_str(w.trim_matches(|c| c == '(' || c == ')')).ok())
    };
    assert!(id(&first).is_some(), "{first}");
    assert_eq!(id(&first), id(&again), "{first} / {again}");
    assert!(run(&["list"], None).status.success());
}

#[test]
fn init_refuses_a_directory_with_other_contents() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("busy");
    fs::create_dir_all(dir.join("data/ab")).unwrap();
    chmod(&dir, 0o755);
    let o = Command::new(common::bin())
        .arg("--store")
        .arg(&dir)
        .arg("init")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
    assert!(!dir.join("vfolders.db").exists());
    assert_eq!(mode(&dir), 0o755, "a refused init changed the directory");
}

#[test]
fn mounting_a_missing_store_fails_and_creates_nothing() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("typo/path");
    let mnt = base.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Should a mount happen anyway, it is undone.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                let _ = Command::new("umount").arg("-l").arg(self.0).status();
            }
        }
    }
    let _undo = Unmount(&mnt);
    for extra in [&[][..], &["--foreground"]] {
        let o = Command::new(common::bin())
            .env_remove("RUST_LOG")
            .arg("--store")
            .arg(&store)
            .arg("mount")
            .arg(&mnt)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(EXIT_NO_STORE), "{extra:?}: {err}");
        assert!(
            err.contains(store.to_str().unwrap()) && err.contains("init"),
            "{err}"
        );
        assert!(!is_mounted(&mnt), "{extra:?} mounted");
        assert!(
            !base.path().join("typo").exists(),
            "{extra:?} created the store"
        );
    }
    // As mount(8)'s helper (`mount -t vfolderfs STORE MNT`, fstab).
    let helper = base.path().join("mount.vfolderfs");
    std::os::unix::fs::symlink(common::bin(), &helper).unwrap();
    let o = Command::new(&helper)
        .env_remove("RUST_LOG")
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "rw"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(EXIT_NO_STORE), "helper: {err}");
    assert!(err.contains(store.to_str().unwrap()), "{err}");
    assert!(!is_mounted(&mnt), "the helper mounted");
    assert!(
        !base.path().join("typo").exists(),
        "the helper created the store"
    );
}

/// Moves the database files of `from` into `to` (a directory).
fn move_db(from: &Path, to: &Path) {
    for s in ["", "-wal", "-shm"] {
        let f = from.join(format!("vfolders.db{s}"));
        if f.exists() {
            fs::rename(&f, to.join(format!("vfolders.db{s}"))).unwrap();
        }
    }
}

#[test]
fn a_mount_never_adopts_a_different_store() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && echo a > v/f");
    let store = m.store.path();
    let aside = m.store.dir.path().join("aside");
    fs::create_dir(&aside).unwrap();
    move_db(&store, &aside);
    assert!(
        eventually(Duration::from_secs(10), || {
            matches!(fs::write(m.p("v/g"), b"x"), Err(ref e) if errno(e) == libc::EROFS)
        }),
        "writes were not refused without a store"
    );
    // A command on the store neither recreates it nor succeeds.
    let o = m.store.cli(&["list"]);
    assert_eq!(o.status.code(), Some(EXIT_NO_STORE));
    assert!(
        !store.join("vfolders.db").exists(),
        "list recreated the store"
    );
    // Another, freshly made store takes its place.
    let other = TempStore::new();
    other.ok(&["create", "intruder"]);
    {
        let c = rusqlite::Connection::open(other.path().join("vfolders.db")).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }
    move_db(&other.path(), &store);
    assert!(store.join("vfolders.db").exists());
    // However long we look (many health checks), the mount keeps its own
    // view and keeps refusing changes.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let w = fs::write(m.p("v/g"), b"x");
        assert!(
            matches!(w, Err(ref e) if errno(e) == libc::EROFS),
            "a write was allowed over a foreign store: {w:?}"
        );
        let names: Vec<String> = fs::read_dir(&m.mnt)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"v".to_string()),
            "the mount dropped v: {names:?}"
        );
        assert!(
            !names.contains(&"intruder".to_string()),
            "the mount shows the foreign store: {names:?}"
        );
        let mk = fs::create_dir(m.p("newone"));
        assert!(
            matches!(mk, Err(ref e) if errno(e) == libc::EROFS),
            "mkdir at the root over a foreign store: {mk:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fs::read_to_string(m.p("v/f")).unwrap(), "a\n");
    // The right database back: writes resume.
    let gone = m.store.dir.path().join("foreign");
    fs::create_dir(&gone).unwrap();
    move_db(&store, &gone);
    move_db(&aside, &store);
    assert!(
        eventually(Duration::from_secs(10), || fs::write(m.p("v/g"), b"x")
            .is_ok()),
        "writes did not resume with the store's own database back"
    );
    m.sh_ok("mkdir w && test -d v");
    assert!(!m.sh_ok("ls").contains("intruder"));
}
