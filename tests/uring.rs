//! FUSE over io_uring (`-o io_uring`, `--io-uring`): negotiated at INIT and
//! really serving (the rings' request counter moves, not only /dev/fuse's),
//! the core operations through the rings, a refusal by status, load from
//! threads on every CPU, unmount while busy, and the fallback to /dev/fuse
//! when the kernel's `enable_uring` is off.
//!
//! `scripts/test.sh` turns `/sys/module/fuse/parameters/enable_uring` on
//! for the run and puts it back after. These tests never skip: with it off,
//! the io_uring tests fail saying so. The fallback test turns it off for its
//! own mount and back on (a guard restores it, even on panic); the tests of
//! this file take one lock so that none mounts while it is off.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::*;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// One mount at a time in this file (see the module doc).
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets `enable_uring`, restoring the previous value on drop.
struct Param(String);

impl Param {
    fn set(v: &str) -> Param {
        let old = std::fs::read_to_string(PARAM).expect("the fuse module has enable_uring");
        std::fs::write(PARAM, v).expect("set enable_uring");
        Param(old.trim().to_string())
    }
}

impl Drop for Param {
    fn drop(&mut self) {
        let _ = std::fs::write(PARAM, &self.0);
    }
}

fn require_enabled() {
    let v = std::fs::read_to_string(PARAM).expect("the fuse module has enable_uring");
    assert_eq!(
        v.trim(),
        "Y",
        "{PARAM} is off: the io_uring tests need it on (scripts/test.sh turns it on for the run)"
    );
}

/// The queues the kernel makes: one per possible CPU.
fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap()
        + 1
}

/// A metric's value from the mount's unix-socket listener.
fn metric(sock: &Path, name: &str) -> f64 {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

struct Served {
    m: Mount,
    sock: PathBuf,
    log: PathBuf,
}

/// Mounts with io_uring asked for (`how`: the option or the flag).
fn mount(t: TempStore, how: &[&str]) -> Served {
    let sock = t.dir.path().join("metrics.sock");
    let log = t.dir.path().join("daemon.log");
    let opts = format!(
        "metrics_listen=unix:{},log={}",
        sock.display(),
        log.display()
    );
    let mut args = how.to_vec();
    args.extend(["-o", &opts]);
    let m = Mount::on(t, &args);
    Served { m, sock, log }
}

fn log_text(s: &Served) -> String {
    std::fs::read_to_string(&s.log).unwrap_or_default()
}

/// Insists the rings were negotiated and registered (the log line and the
/// gauge), and that requests now arrive on them.
fn assert_on_rings(s: &Served) {
    assert!(
        eventually(Duration::from_secs(20), || log_text(s)
            .contains("FUSE over io_uring negotiated")),
        "io_uring was not negotiated although enable_uring is on; the log:\n{}",
        log_text(s)
    );
    assert!(!log_text(s).contains("serving on /dev/fuse"));
    assert_eq!(
        metric(&s.sock, "vfolderfs_uring_queues"),
        possible_cpus() as f64
    );
    let before = metric(&s.sock, "vfolderfs_uring_requests_total");
    for i in 0..20 {
        std::fs::write(s.m.p(&format!("a/probe{i}")), b"x").unwrap();
    }
    let after = metric(&s.sock, "vfolderfs_uring_requests_total");
    // 20 creates, writes and releases at least: all of them on the rings.
    assert!(
        after - before >= 60.0,
        "requests did not go through the rings: {before} -> {after}"
    );
    for i in 0..20 {
        std::fs::remove_file(s.m.p(&format!("a/probe{i}"))).unwrap();
    }
}

#[test]
fn io_uring_is_negotiated_and_serves_the_core_operations() {
    let _l = lock();
    require_enabled();
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    t.ok(&["create", "gone"]);
    let s = mount(t, &["-o", "io_uring"]);
    assert_on_rings(&s);
    let p = |r: &str| s.m.p(r);

    // create, write, read (a large write spans many payloads).
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(p("a/big"), &big).unwrap();
    assert_eq!(std::fs::read(p("a/big")).unwrap(), big);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(p("a/big"))
        .unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    assert_eq!(
        std::fs::metadata(p("a/big")).unwrap().len(),
        big.len() as u64 + 4
    );
    // rename, unlink
    std::fs::rename(p("a/big"), p("a/moved")).unwrap();
    assert!(std::fs::metadata(p("a/big")).is_err());
    std::fs::remove_file(p("a/moved")).unwrap();
    assert_eq!(
        errno(&std::fs::metadata(p("a/moved")).unwrap_err()),
        libc::ENOENT
    );
    // mkdir, readdir, rmdir (and ENOTEMPTY passed back)
    std::fs::create_dir(p("a/d")).unwrap();
    for i in 0..50 {
        std::fs::write(p(&format!("a/d/f{i:02}")), i.to_string()).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(p("a/d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 50);
    assert_eq!(names[7], "f07");
    assert_eq!(
        errno(&std::fs::remove_dir(p("a/d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    std::fs::remove_dir_all(p("a/d")).unwrap();
    // setattr: mode, size, times
    std::fs::write(p("a/s"), b"0123456789").unwrap();
    std::fs::set_permissions(p("a/s"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p("a/s"))
        .unwrap();
    f.set_len(3).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    let md = std::fs::metadata(p("a/s")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!(md.len(), 3);
    assert_eq!(
        md.modified().unwrap(),
        std::time::UNIX_EPOCH + Duration::from_secs(1_000_000)
    );
    // xattrs: set, get, list, remove, and ENODATA back
    s.m.sh_ok(
        "setfattr -n user.k -v hello a/s && getfattr --only-values -n user.k a/s | grep -qx hello \
         && getfattr -d a/s | grep -q user.k && setfattr -x user.k a/s",
    );
    let o = s.m.sh("getfattr -n user.k a/s");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such attribute"));
    // A write into a trashed vfolder is refused with EROFS, through the ring.
    s.m.store.ok(&["delete", "gone"]);
    let e = std::fs::write(p(".trash/gone/x"), b"no").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    assert!(
        log_text(&s)
            .matches("FUSE over io_uring negotiated")
            .count()
            == 1
    );
}

/// Runs `f` on a thread pinned to `cpu`, so that its requests land on that
/// CPU's queue.
fn on_cpu<T: Send + 'static>(
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t is empty; cpu is a possible CPU.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        f()
    })
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn io_uring_serves_concurrent_sessions_on_every_cpu() {
    let _l = lock();
    require_enabled();
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    let s = mount(t, &["--io-uring"]);
    assert_on_rings(&s);
    // Session-style load: several workers per CPU, each making, reading,
    // renaming and removing its own files and directory.
    let cpus = online_cpus();
    let mut threads = Vec::new();
    for w in 0..(2 * cpus).max(4) {
        let root = s.m.p("a");
        threads.push(on_cpu(w % cpus, move || {
            let dir = root.join(format!("w{w}"));
            std::fs::create_dir(&dir).unwrap();
            for i in 0..150 {
                let f = dir.join(format!("f{i}"));
                let body = format!("worker {w} file {i}").repeat(1 + i % 40);
                std::fs::write(&f, &body).unwrap();
                assert_eq!(std::fs::read_to_string(&f).unwrap(), body);
                if i % 3 == 0 {
                    std::fs::rename(&f, dir.join(format!("r{i}"))).unwrap();
                }
            }
            let n = std::fs::read_dir(&dir).unwrap().count();
            assert_eq!(n, 150);
            std::fs::remove_dir_all(&dir).unwrap();
        }));
    }
    for t in threads {
        t.join().expect("a worker failed");
    }
    assert_eq!(std::fs::read_dir(s.m.p("a")).unwrap().count(), 0);
    // Every queue served: each one answers a request made on its CPU.
    let before = metric(&s.sock, "vfolderfs_uring_requests_total");
    for cpu in 0..cpus {
        let p = s.m.p(&format!("a/cpu{cpu}"));
        on_cpu(cpu, move || std::fs::write(&p, b"x").unwrap())
            .join()
            .unwrap();
    }
    assert!(metric(&s.sock, "vfolderfs_uring_requests_total") - before >= 2.0 * cpus as f64);
}

#[test]
fn io_uring_mount_unmounts_while_busy() {
    let _l = lock();
    require_enabled();
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    let s = mount(t, &["-o", "io_uring"]);
    assert_on_rings(&s);
    let pid = s.m.daemon_pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..online_cpus().max(2) {
        let (root, stop) = (s.m.p("a"), stop.clone());
        workers.push(on_cpu(w % online_cpus(), move || {
            let mut i = 0u64;
            // Until the mount goes away under it.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = root.join(format!("w{w}-{}", i % 64));
                if std::fs::write(&f, b"busy").is_err() {
                    break;
                }
                i += 1;
            }
            i
        }));
    }
    // A file held open keeps a plain unmount busy: the guard unmounts lazily.
    let held = std::fs::File::open(s.m.p("a")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = std::process::Command::new("umount")
        .arg(&s.m.mnt)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a busy mount unmounted plainly");
    let o = std::process::Command::new("umount")
        .arg("-l")
        .arg(&s.m.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(done > 0);
    drop(held);
    // The last user gone, the connection ends: the rings' threads and the
    // daemon exit.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    };
    assert!(
        eventually(Duration::from_secs(30), || !alive()),
        "the daemon did not exit after the unmount; its log:\n{}",
        log_text(&s)
    );
    assert!(log_text(&s).contains("unmounted"));
}

#[test]
fn io_uring_falls_back_to_dev_fuse_when_the_kernel_has_it_off() {
    let _l = lock();
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    let s = {
        let _off = Param::set("N");
        mount(t, &["-o", "io_uring"])
        // enable_uring is back as it was: the setting counts at INIT only.
    };
    std::fs::write(s.m.p("a/f"), b"on /dev/fuse").unwrap();
    assert_eq!(std::fs::read(s.m.p("a/f")).unwrap(), b"on /dev/fuse");
    std::fs::create_dir(s.m.p("a/d")).unwrap();
    std::fs::rename(s.m.p("a/f"), s.m.p("a/d/g")).unwrap();
    std::fs::remove_dir_all(s.m.p("a/d")).unwrap();
    let log = log_text(&s);
    assert_eq!(
        log.matches("does not offer FUSE over io_uring").count(),
        1,
        "one log line says why; the log:\n{log}"
    );
    assert_eq!(log.lines().filter(|l| l.contains("io_uring")).count(), 1);
    assert_eq!(metric(&s.sock, "vfolderfs_uring_queues"), 0.0);
    assert_eq!(metric(&s.sock, "vfolderfs_uring_requests_total"), 0.0);
}

const ALICE: u32 = 65532;
const BOB: u32 = 65533;

/// Runs `script` as `uid` with no supplementary groups, in `dir`.
fn as_user(uid: u32, dir: &Path, script: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("run setpriv")
}

/// Requests served from the rings (and the work they hand to the blocking
/// pool: fallocate, copy_file_range, fsync) act as the caller, exactly as
/// on /dev/fuse: another user's 0600 file, a directory they may not write,
/// a chown to someone else are refused; writes by a non-owner clear
/// setuid/setgid, also when made on the blocking pool.
#[test]
fn io_uring_requests_act_as_the_caller() {
    let _l = lock();
    require_enabled();
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    t.ok(&["create", "shared"]);
    let s = mount(t, &["-o", "io_uring", "--allow-other"]);
    assert_on_rings(&s);
    s.m.sh_ok("chmod 1777 shared");
    let d = s.m.p("shared");
    let run = |uid, script: &str| {
        let o = as_user(uid, &d, script);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let before = metric(&s.sock, "vfolderfs_uring_requests_total");
    let (good, e) = run(
        ALICE,
        "umask 022 && echo secret > p && chmod 600 p && mkdir priv && \
         echo x > sx && chmod 6777 sx && echo y > fx && chmod 6777 fx && \
         echo z > cx && chmod 6777 cx && echo src > src",
    );
    assert!(good, "alice's setup: {e}");
    let (good, _) = run(BOB, "cat p");
    assert!(!good, "bob read alice's 0600 file through the rings");
    let (good, _) = run(BOB, "touch priv/b");
    assert!(
        !good,
        "bob created in alice's 0755 directory through the rings"
    );
    assert!(std::fs::metadata(d.join("priv/b")).is_err());
    let (good, e) = run(BOB, "echo b > mine");
    assert!(good, "{e}");
    let (good, _) = run(BOB, &format!("chown {ALICE} mine"));
    assert!(!good, "bob gave a file away through the rings");
    assert_eq!(std::fs::metadata(d.join("mine")).unwrap().uid(), BOB);
    // A write by a non-owner clears setuid/setgid (request thread).
    let (good, e) = run(BOB, "printf w 1<> sx");
    assert!(good, "{e}");
    assert_eq!(std::fs::metadata(d.join("sx")).unwrap().mode() & 0o7000, 0);
    // fallocate runs on the blocking pool: as Bob there too.
    let (good, e) = run(BOB, "fallocate -o 0 -l 8192 fx");
    assert!(good, "{e}");
    assert_eq!(std::fs::metadata(d.join("fx")).unwrap().mode() & 0o7000, 0);
    // copy_file_range runs on the blocking pool: as Bob there too.
    let (good, e) = run(
        BOB,
        "/usr/bin/python3 -c 'import os; s=os.open(\"src\", os.O_RDONLY); \
         t=os.open(\"cx\", os.O_WRONLY); os.copy_file_range(s, t, 3, 0, 0)'",
    );
    assert!(good, "{e}");
    assert_eq!(std::fs::metadata(d.join("cx")).unwrap().mode() & 0o7000, 0);
    let after = metric(&s.sock, "vfolderfs_uring_requests_total");
    assert!(
        after - before >= 20.0,
        "not on the rings: {before} -> {after}"
    );
}

/// A write stuck on a frozen volume holds up only its own vfolder, over
/// io_uring as on /dev/fuse: requests made on the same CPU (the same ring)
/// for a vfolder on a healthy volume are still answered. (On /dev/fuse the
/// stuck write holds one of several request threads; over io_uring it holds
/// one of its CPU queue's entries, each served by a thread of its own.)
#[test]
fn io_uring_a_write_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder() {
    let _l = lock();
    require_enabled();
    a_write_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder(&["-o", "io_uring"], true);
}

/// The same on /dev/fuse (the control: it holds there).
#[test]
fn dev_fuse_a_write_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder() {
    let _l = lock();
    a_write_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder(&[], false);
}

fn a_write_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder(how: &[&str], rings: bool) {
    let t = TempStore::new();
    let vol = LoopVolume::new(&t, "frz");
    t.ok(&["volume", "add", "frz", vol.dir.to_str().unwrap()]);
    t.ok(&["create", "fz", "--volume", "frz"]);
    t.ok(&["create", "a"]);
    t.ok(&["create", "third"]);
    let s = mount(t, how);
    if rings {
        assert_on_rings(&s);
    }
    s.m.sh_ok("echo a > fz/f && echo a > third/f");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(s.m.p("fz/f"))
        .unwrap();
    vol.freeze();
    // The stuck write is made on CPU 0, so it lands on ring 0.
    let stuck = on_cpu(0, move || {
        let r = f.write_all(&[b'y'; 4096]).and_then(|()| f.sync_all());
        (r, f)
    });
    let pid = s.m.daemon_pid();
    let waiting = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('D')))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    let blocked = eventually(Duration::from_secs(60), waiting);
    // Another vfolder, on a healthy volume, from the same CPU.
    let (tx, rx) = std::sync::mpsc::channel();
    let third = s.m.p("third/g");
    let _other = on_cpu(0, move || {
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&third)
            .and_then(|mut g| g.write_all(b"x\n"));
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let answered = rx.recv_timeout(Duration::from_secs(60));
    // Thawed before any assertion, so that the mount can go whatever happened.
    vol.thaw();
    let (r, _f) = stuck.join().unwrap();
    r.unwrap();
    assert!(blocked, "no daemon thread ever waited on the frozen volume");
    assert_eq!(
        answered,
        Ok(Ok(())),
        "a write into another vfolder, made on the CPU whose ring holds a write \
         stuck on a frozen volume, was not answered within 60 s"
    );
}

/// The enforcement promise over io_uring: once `vfolderfs delete` returns,
/// no new write succeeds, also through a file opened for writing before
/// (on every CPU's ring).
#[test]
fn io_uring_no_write_succeeds_after_delete_returns() {
    let _l = lock();
    require_enabled();
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    t.ok(&["create", "doomed"]);
    let s = mount(t, &["-o", "io_uring"]);
    assert_on_rings(&s);
    let cpus = online_cpus();
    let files: Vec<std::fs::File> = (0..cpus)
        .map(|c| {
            let p = s.m.p(&format!("doomed/f{c}"));
            on_cpu(c, move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap();
                f.write_all(b"before\n").unwrap();
                f
            })
            .join()
            .unwrap()
        })
        .collect();
    s.m.store.ok(&["delete", "doomed"]);
    for (c, mut f) in files.into_iter().enumerate() {
        let e = on_cpu(c, move || f.write_all(b"after\n").unwrap_err())
            .join()
            .unwrap();
        assert_eq!(errno(&e), libc::EROFS, "cpu {c}: {e}");
    }
    for c in 0..cpus {
        let body = std::fs::read_to_string(s.m.p(&format!(".trash/doomed/f{c}"))).unwrap();
        assert_eq!(body, "before\n");
    }
}

/// The daemon's threads named `prefix*` now waiting uninterruptibly.
fn blocked_threads(pid: impl std::fmt::Display, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    comm.starts_with(prefix)
                        && stat
                            .rsplit_once(") ")
                            .is_some_and(|(_, r)| r.starts_with('D'))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Calls that run on the blocking pool (fallocate) and are stuck on a
/// frozen volume hold up only their own vfolder: requests made afterwards
/// on another CPU, for a vfolder on a healthy volume, are still answered,
/// even on a ring whose entries the pool's threads answered before.
fn pool_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder(how: &[&str], rings: bool) {
    let t = TempStore::new();
    let vol = LoopVolume::new(&t, "frz");
    t.ok(&["volume", "add", "frz", vol.dir.to_str().unwrap()]);
    t.ok(&["create", "fz", "--volume", "frz"]);
    t.ok(&["create", "a"]);
    t.ok(&["create", "ok"]);
    let s = mount(t, how);
    if rings {
        assert_on_rings(&s);
    }
    let cpus = online_cpus();
    assert!(cpus >= 2, "needs two CPUs");
    s.m.sh_ok("for i in 0 1 2 3 4 5 6 7; do echo a > fz/f$i; done; echo a > ok/f");
    // On CPU 1: calls answered from the blocking pool (fsync), many times
    // over, so that every entry of ring 1 was last answered by a pool thread.
    let okf = s.m.p("ok/f");
    on_cpu(1, move || {
        let f = std::fs::OpenOptions::new().append(true).open(&okf).unwrap();
        for _ in 0..64 {
            f.sync_all().unwrap();
        }
    })
    .join()
    .unwrap();
    // On CPU 0: fallocate on the frozen volume from 8 threads, which blocks
    // every thread of the pool (8).
    let files: Vec<std::fs::File> = (0..8)
        .map(|i| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.m.p(&format!("fz/f{i}")))
                .unwrap()
        })
        .collect();
    vol.freeze();
    let stuck: Vec<_> = files
        .into_iter()
        .map(|f| {
            on_cpu(0, move || {
                use std::os::fd::AsRawFd;
                // SAFETY: plain fallocate on an open file.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
                (r, f)
            })
        })
        .collect();
    let pid = s.m.daemon_pid();
    let blocked = eventually(Duration::from_secs(60), || {
        blocked_threads(pid, "vfs-blocking") >= 8
    });
    // On CPU 1: ordinary writes to a healthy vfolder (answered in the
    // request loop, not the pool).
    let (tx, rx) = std::sync::mpsc::channel();
    let okg = s.m.p("ok/g");
    let _other = on_cpu(1, move || {
        let r = (0..64).try_for_each(|i| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&okg)
                .and_then(|mut g| g.write_all(format!("{i}\n").as_bytes()))
        });
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let answered = rx.recv_timeout(Duration::from_secs(60));
    vol.thaw();
    for h in stuck {
        let (r, _f) = h.join().unwrap();
        assert_eq!(r, 0, "fallocate after the thaw");
    }
    assert!(
        blocked,
        "the pool's threads never all waited on the frozen volume"
    );
    assert_eq!(
        answered,
        Ok(Ok(())),
        "writes into a healthy vfolder on CPU 1 were not answered within 60 s \
         while the blocking pool waited on a frozen volume"
    );
}

#[test]
fn dev_fuse_pool_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder() {
    let _l = lock();
    pool_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder(&[], false);
}

#[test]
fn io_uring_pool_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder() {
    let _l = lock();
    require_enabled();
    pool_stuck_on_a_frozen_volume_holds_up_only_its_own_vfolder(&["-o", "io_uring"], true);
}
