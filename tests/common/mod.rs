//! Helpers shared by the integration tests: temporary stores, running the
//! real binary, and mounts that always unmount.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vfolderfs")
}

/// The admin URL of the test PostgreSQL server that `scripts/test.sh`
/// starts. Tests that need PostgreSQL fail (never skip) without it.
pub fn pg_admin_url() -> String {
    match std::env::var("VFOLDERFS_TEST_PG") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "VFOLDERFS_TEST_PG is not set: this test needs PostgreSQL; run scripts/test.sh, \
             which starts a throwaway server (scripts/pg-server.sh)"
        ),
    }
}

/// Connects to `url` (an admin URL of a test server, `…/postgres?…`),
/// to its database `db` if given.
pub fn pg_client_at(url: &str, db: Option<&str>) -> postgres::Client {
    let mut url = url.to_string();
    if let Some(db) = db {
        url = url.replacen("/postgres?", &format!("/{db}?"), 1);
    }
    let conf = vfolderfs::store::pgconf::PgConf::parse(&url).expect("test server URL");
    conf.config
        .connect(conf.tls().expect("tls"))
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL {url}: {e:?}"))
}

/// Connects to the test server's database `db` (the admin URL's otherwise).
pub fn pg_client(db: Option<&str>) -> postgres::Client {
    pg_client_at(&pg_admin_url(), db)
}

/// A database of its own on a test server for one test, dropped on drop.
pub struct PgDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl PgDb {
    /// Makes a new, empty database on the test server.
    pub fn new() -> PgDb {
        Self::on(&pg_admin_url())
    }

    /// Makes a new, empty database on the server of admin URL `admin`.
    pub fn on(admin: &str) -> PgDb {
        let name = format!("vft_{}", uuid::Uuid::new_v4().simple());
        pg_client_at(admin, None)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("CREATE DATABASE");
        let url = admin.replacen("/postgres?", &format!("/{name}?"), 1);
        PgDb {
            name,
            url,
            admin: admin.to_string(),
        }
    }

    /// A connection to it.
    pub fn client(&self) -> postgres::Client {
        pg_client_at(&self.admin, Some(&self.name))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let Ok(conf) = vfolderfs::store::pgconf::PgConf::parse(&self.admin) else {
            return;
        };
        if let Ok(tls) = conf.tls()
            && let Ok(mut c) = conf.config.connect(tls)
        {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A temporary directory holding a store (and, for mount tests, a mount
/// point); with `pg`, the store's database is that PostgreSQL database and
/// the directory holds its data.
pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
}

/// Which store backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl TempStore {
    /// A new store, made with `vfolderfs init` (nothing else makes one).
    pub fn new() -> TempStore {
        let t = Self::bare();
        t.ok(&["init"]);
        t
    }

    /// A new store of the given backend.
    pub fn with(b: Backend) -> TempStore {
        match b {
            Backend::Sqlite => Self::new(),
            Backend::Postgres => Self::new_pg(),
        }
    }

    /// A new store in a PostgreSQL database of its own.
    pub fn new_pg() -> TempStore {
        let t = Self::bare_pg();
        t.ok(&["init"]);
        t
    }

    /// A temporary directory whose store path has no store (yet).
    pub fn bare() -> TempStore {
        TempStore {
            dir: Self::tempdir(),
            pg: None,
        }
    }

    /// An empty PostgreSQL database and a data directory: no store yet.
    pub fn bare_pg() -> TempStore {
        TempStore {
            dir: Self::tempdir(),
            pg: Some(PgDb::new()),
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("vfolderfs-test-")
            .tempdir()
            .expect("tempdir")
    }

    /// The store directory (with PostgreSQL: the data directory).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The store's layout, for opening it in-process.
    pub fn layout(&self) -> vfolderfs::layout::Layout {
        match &self.pg {
            Some(db) => vfolderfs::layout::Layout::postgres(self.path(), &db.url),
            None => vfolderfs::layout::Layout::new(self.path()),
        }
    }

    /// The `--store` (and `--data`) arguments naming this store.
    pub fn store_args(&self) -> Vec<std::ffi::OsString> {
        match &self.pg {
            Some(db) => vec![
                "--store".into(),
                db.url.clone().into(),
                "--data".into(),
                self.path().into(),
            ],
            None => vec!["--store".into(), self.path().into()],
        }
    }

    /// Opens the store's database alone (a connection of its own).
    pub fn open_store(&self) -> Box<dyn vfolderfs::store::Store> {
        match &self.pg {
            Some(db) => Box::new(vfolderfs::store::PgStore::open(&db.url).expect("open store")),
            None => Box::new(
                vfolderfs::store::SqliteStore::open(&self.layout().db_path()).expect("open store"),
            ),
        }
    }

    /// Runs SQL that both backends understand on the store's database.
    pub fn sql(&self, stmt: &str) {
        match &self.pg {
            Some(db) => {
                db.client().batch_execute(stmt).expect("sql");
            }
            None => {
                rusqlite::Connection::open(self.layout().db_path())
                    .expect("open db")
                    .execute_batch(stmt)
                    .expect("sql");
            }
        }
    }

    /// Sets the schema version the database claims.
    pub fn set_schema_version(&self, v: i64) {
        match &self.pg {
            Some(_) => self.sql(&format!(
                "INSERT INTO vfolderfs_schema (version) VALUES ({v})"
            )),
            None => self.sql(&format!("PRAGMA user_version = {v}")),
        }
    }

    /// The schema version the database claims.
    pub fn schema_version(&self) -> i64 {
        match &self.pg {
            Some(db) => db
                .client()
                .query_one("SELECT max(version)::bigint FROM vfolderfs_schema", &[])
                .expect("version")
                .get(0),
            None => rusqlite::Connection::open(self.layout().db_path())
                .expect("open db")
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .expect("version"),
        }
    }

    /// How many vfolder rows the database holds.
    pub fn row_count(&self) -> i64 {
        match &self.pg {
            Some(db) => db
                .client()
                .query_one("SELECT count(*) FROM vfolders", &[])
                .expect("count")
                .get(0),
            None => rusqlite::Connection::open(self.layout().db_path())
                .expect("open db")
                .query_row("SELECT count(*) FROM vfolders", [], |r| r.get(0))
                .expect("count"),
        }
    }

    /// Runs `vfolderfs --store STORE args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    /// Runs the CLI with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.args(self.store_args()).args(args).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run vfolderfs")
    }

    /// Runs the CLI and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "vfolderfs {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 output")
    }

    /// Runs the CLI and insists on failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            !o.status.success(),
            "vfolderfs {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).expect("utf-8 output")
    }

    /// `show --json` of a vfolder.
    pub fn show(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["show", name, "--json"])).expect("json")
    }
}

/// A mount of a temporary store that is always unmounted on drop (lazily if busy).
pub struct Mount {
    pub store: TempStore,
    pub mnt: PathBuf,
}

/// Whether something is mounted at `mnt` in this mount namespace.
pub fn is_mounted(mnt: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

impl Mount {
    /// Mounts a new empty store with extra `mount` arguments. Panics (loudly)
    /// if the mount cannot be made: these tests never skip.
    pub fn new(extra: &[&str]) -> Mount {
        let store = TempStore::new();
        Self::on(store, extra)
    }

    /// Mounts an existing temporary store.
    pub fn on(store: TempStore, extra: &[&str]) -> Mount {
        Self::on_env(store, extra, &[])
    }

    /// Mounts an existing temporary store, the daemon getting extra environment variables.
    pub fn on_env(store: TempStore, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        let mnt = store.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let m = Mount { store, mnt };
        let mut args = vec!["mount", m.mnt.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = m.store.cli_env(&args, env);
        assert!(
            o.status.success(),
            "FUSE mount failed (root and /dev/fuse are required): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(is_mounted(&m.mnt), "mount returned but nothing is mounted");
        m
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Runs a shell command with the mount as working directory; returns the output.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.mnt)
            .env("M", &self.mnt)
            .output()
            .expect("run sh")
    }

    /// Runs a shell command and insists on success; returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "`{script}` failed ({:?}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Remounts the same store on the same mount point.
    pub fn remount(&self, extra: &[&str], env: &[(&str, &str)]) {
        let mut args = vec!["mount", self.mnt.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = self.store.cli_env(&args, env);
        assert!(
            o.status.success(),
            "remount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The pid of this mount's daemon.
    pub fn daemon_pid(&self) -> i32 {
        self.try_daemon_pid()
            .unwrap_or_else(|| panic!("no daemon found for {}", self.store.path().display()))
    }

    /// The pid of this mount's daemon, if one is running.
    pub fn try_daemon_pid(&self) -> Option<i32> {
        let store = self.store.path();
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(store.to_str().unwrap()) && cmd.contains(" mount ") {
                return Some(pid);
            }
        }
        None
    }

    /// Unmounts now and waits for the daemon to go.
    pub fn unmount(&self) {
        let pid = self.try_daemon_pid();
        self.unmount_only();
        if let Some(pid) = pid {
            // Gone, or a zombie waiting for init to reap it: either way done.
            let alive = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
                    .unwrap_or(false)
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn unmount_only(&self) {
        if !is_mounted(&self.mnt) {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Polls `f` until it returns true or `limit` passes; returns whether it did.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The errno of an io::Error.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A tmpfs mounted inside a test's temporary directory; unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(t: &TempStore, name: &str, size: &str) -> Tmpfs {
        let p = t.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs failed");
        Tmpfs(p)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs a command when dropped (unbinding a mount, clearing a file flag),
/// so a test's system changes are undone even when an assertion fails.
pub struct Undo(Vec<std::ffi::OsString>);

impl Undo {
    /// `program args... path` on drop.
    pub fn new(cmd: &[&str], path: &Path) -> Undo {
        let mut v: Vec<std::ffi::OsString> = cmd.iter().map(|a| a.into()).collect();
        v.push(path.as_os_str().to_owned());
        Undo(v)
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = Command::new(&self.0[0]).args(&self.0[1..]).status();
    }
}

/// Another mount point of a test's store (a second mount of one store),
/// unmounted on drop, lazily if busy.
pub struct OtherMount(pub PathBuf);

impl OtherMount {
    /// Mounts `store` again at `DIR/name` with `--allow-other` and `extra`
    /// arguments; panics (loudly) if it cannot.
    pub fn new(store: &TempStore, name: &str, extra: &[&str]) -> OtherMount {
        let mnt = store.dir.path().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let mut args = vec!["mount", mnt.to_str().unwrap(), "--allow-other"];
        args.extend_from_slice(extra);
        let o = store.cli(&args);
        assert!(
            o.status.success(),
            "second mount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        OtherMount(mnt)
    }
}

impl Drop for OtherMount {
    fn drop(&mut self) {
        if is_mounted(&self.0)
            && !Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// An ext4 image on a loop device mounted in the test's directory: a volume
/// that can be frozen. Thawed and unmounted on drop, whatever happened.
pub struct LoopVolume {
    pub dir: PathBuf,
}

impl LoopVolume {
    pub fn new(t: &TempStore, name: &str) -> LoopVolume {
        Self::with_mkfs(t, name, &[])
    }

    /// [`Self::new`] with extra `mkfs.ext4` options (features on or off).
    pub fn with_mkfs(t: &TempStore, name: &str, mkfs: &[&str]) -> LoopVolume {
        let img = t.dir.path().join(format!("{name}.img"));
        let dir = t.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let run = |c: &mut Command| {
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(mkfs)
            .arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir));
        // A volume must be private to vfolderfs's user.
        run(Command::new("chmod").arg("700").arg(&dir));
        LoopVolume { dir }
    }

    pub fn freeze(&self) {
        let ok = Command::new("fsfreeze").arg("-f").arg(&self.dir).status();
        assert!(ok.unwrap().success(), "fsfreeze -f");
    }

    pub fn thaw(&self) {
        // Fails (harmlessly) when the volume is not frozen.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for LoopVolume {
    fn drop(&mut self) {
        self.thaw();
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
