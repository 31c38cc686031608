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

/// A temporary directory holding a store (and, for mount tests, a mount point).
pub struct TempStore {
    pub dir: tempfile::TempDir,
}

impl TempStore {
    /// A new store, made with `vfolderfs init` (nothing else makes one).
    pub fn new() -> TempStore {
        let t = Self::bare();
        t.ok(&["init"]);
        t
    }

    /// A temporary directory whose store path has no store (yet).
    pub fn bare() -> TempStore {
        TempStore {
            dir: tempfile::Builder::new()
                .prefix("vfolderfs-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Runs `vfolderfs --store STORE args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    /// Runs the CLI with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.arg("--store")
            .arg(self.path())
            .args(args)
            .env_remove("RUST_LOG");
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
