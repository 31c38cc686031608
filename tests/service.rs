//! The conventions of FUSE mounts and systemd: the `fuse.vfolderfs` type,
//! mount(8)'s helpers, `-o ro`, a quiet clean unmount, the log file
//! (checked before daemonizing, start-up lines in it, reopened on SIGHUP)
//! and readiness notification over `$NOTIFY_SOCKET`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Mount, TempStore, bin, errno, eventually, is_mounted};

/// The filesystem type of what is mounted at `mnt`.
fn fstype(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split(' ').nth(4) == Some(want.as_str()))
            .then(|| post.split(' ').next().unwrap().to_string())
    })
}

/// The mount options (per-mount flags) of what is mounted at `mnt`.
fn mount_flags(mnt: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_mount_has_type_fuse_vfolderfs() {
    let m = Mount::new(&[]);
    assert_eq!(fstype(&m.mnt).as_deref(), Some("fuse.vfolderfs"));
    let flags = mount_flags(&m.mnt);
    assert!(
        flags.contains("nosuid") && flags.contains("nodev"),
        "{flags}"
    );
}

#[test]
fn read_only_mount_serves_reads_and_refuses_changes() {
    let t = TempStore::new();
    t.ok(&["create", "data"]);
    let path = t.show("data")["path"].as_str().unwrap().to_string();
    std::fs::write(Path::new(&path).join("f"), b"hello").unwrap();
    let m = Mount::on(t, &["-o", "ro"]);
    assert!(mount_flags(&m.mnt).split(',').any(|f| f == "ro"));
    assert_eq!(std::fs::read(m.p("data/f")).unwrap(), b"hello");
    let e = std::fs::write(m.p("data/f"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    let e = std::fs::create_dir(m.p("new")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    let e = std::fs::rename(m.p("data"), m.p(".trash/data")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
}

/// Waits until the daemon of `m` has written `needle` to `log`.
fn log_has(log: &Path, needle: &str) -> bool {
    eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle))
    })
}

#[test]
fn the_log_file_gets_start_up_lines_no_warning_on_a_clean_unmount_and_reopens_on_sighup() {
    let t = TempStore::new();
    let log = t.dir.path().join("daemon.log");
    let opt = format!("log={}", log.display());
    let m = Mount::on(t, &["-o", &opt]);
    assert!(log_has(&log, "mounted "), "start-up line not in the log");
    // Rotation: the old file is moved away, SIGHUP makes a new one.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // SAFETY: signalling the daemon this test started.
    assert_eq!(unsafe { libc::kill(m.daemon_pid(), libc::SIGHUP) }, 0);
    assert!(
        log_has(&log, "reopened the log file"),
        "no new log after SIGHUP"
    );
    assert!(is_mounted(&m.mnt), "SIGHUP must not end the mount");
    m.unmount();
    assert!(log_has(&log, "unmounted "));
    let all = std::fs::read_to_string(&rotated).unwrap() + &std::fs::read_to_string(&log).unwrap();
    assert!(!all.contains("WARN") && !all.contains("ERROR"), "{all}");
}

#[test]
fn an_unusable_log_path_fails_before_the_daemon_starts() {
    let t = TempStore::new();
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let bad = t.dir.path().join("no-such-dir/d.log");
    let o = t.cli(&[
        "mount",
        mnt.to_str().unwrap(),
        "-o",
        &format!("log={}", bad.display()),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    let guard = Mount { store: t, mnt };
    assert!(!o.status.success(), "mount succeeded");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(!is_mounted(&guard.mnt));
}

#[test]
fn mount_fuse3_runs_vfolderfs_as_its_helper() {
    // mount(8) runs mount.fuse3 for `-t fuse.vfolderfs` (when no
    // mount.fuse.vfolderfs is installed) and for `vfolderfs#STORE` lines;
    // mount.fuse3 runs `vfolderfs STORE MOUNTPOINT -o OPTS` from $PATH.
    let t = TempStore::new();
    t.ok(&["create", "data"]);
    let bindir = t.dir.path().join("bin");
    std::fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(bin(), bindir.join("vfolderfs")).unwrap();
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let path = format!("{}:{}", bindir.display(), std::env::var("PATH").unwrap());
    let store = t.path();
    let o = Command::new("mount.fuse3")
        .arg(&store)
        .arg(&mnt)
        .args([
            "-t",
            "fuse.vfolderfs",
            "-o",
            "ro,nosuid,nodev,nofail,x-systemd.automount",
        ])
        .env("PATH", path)
        .output()
        .expect("mount.fuse3 (package fuse3)");
    let m = Mount { store: t, mnt };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fstype(&m.mnt).as_deref(), Some("fuse.vfolderfs"));
    assert!(mount_flags(&m.mnt).split(',').any(|f| f == "ro"));
    assert!(m.p("data").is_dir());
}

#[test]
fn mount_fuse_vfolderfs_is_the_helper_name_mount_looks_for() {
    // mount -t fuse.vfolderfs STORE MNT -o OPTS runs
    // /sbin/mount.fuse.vfolderfs STORE MNT -o OPTS (-t TYPE) first.
    let t = TempStore::new();
    let helper = t.dir.path().join("mount.fuse.vfolderfs");
    std::os::unix::fs::symlink(bin(), &helper).unwrap();
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new(&helper)
        .arg(t.path())
        .arg(&mnt)
        .args(["-o", "rw,noatime", "-t", "fuse.vfolderfs"])
        .output()
        .unwrap();
    let m = Mount { store: t, mnt };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fstype(&m.mnt).as_deref(), Some("fuse.vfolderfs"));
    assert!(mount_flags(&m.mnt).contains("noatime"));
}

/// Kills and unmounts a foreground daemon on drop.
struct Foreground {
    child: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Drop for Foreground {
    fn drop(&mut self) {
        // Only a child not yet reaped is signalled (a reaped one's pid may
        // belong to another process by now).
        if self.child.try_wait().ok().flatten().is_some() {
            if is_mounted(&self.mnt) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
            return;
        }
        // SAFETY: signalling the child this test started, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let done = eventually(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

#[test]
fn the_shipped_unit_starts_a_mount_that_notifies_readiness_once_it_answers() {
    // scripts/vfolderfs.service, as install.sh installs it, run the way
    // systemd runs a Type=notify service: its ExecStart with its
    // Environment and $NOTIFY_SOCKET (here a socket of the test's own).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/vfolderfs.service"
    ))
    .unwrap();
    let key = |k: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(key("Type"), ["notify"]);
    assert_eq!(key("Restart"), ["on-failure"]);
    let exec = key("ExecStart").pop().unwrap();
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("@BINDIR@/vfolderfs"));
    let args: Vec<&str> = words.collect();
    assert!(args.contains(&"--foreground"), "{exec}");
    let env = key("Environment");
    assert_eq!(env, ["VFOLDERFS_STORE=/var/lib/vfolderfs"]);

    let t = TempStore::new();
    t.ok(&["create", "data"]);
    let sock_path = t.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == "/mnt/vfolders" {
                mnt.display().to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    let child = Command::new(bin())
        .args(&args)
        .env("VFOLDERFS_STORE", t.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut fg = Foreground {
        child,
        mnt: mnt.clone(),
    };
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no notification within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.lines().any(|l| l == format!("MAINPID={pid}")), "{msg}");
    // Ready means serving: the mount answers.
    assert!(is_mounted(&mnt));
    assert!(mnt.join("data").is_dir());
    // SIGTERM: STOPPING=1, then the daemon unmounts and exits 0.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let st = fg.child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!is_mounted(&mnt));
}
