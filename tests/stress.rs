//! Load: file I/O in several vfolders, through two mounts of one store,
//! while their statuses flip through the CLI and every CPU is kept busy. No
//! deadlock, no panic, no lost transition, and the enforcement protocol's
//! promise: once a status command has returned, no write begun after that
//! moment succeeds on any mount. No latency is asserted.

mod common;

use std::io::Write;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::Mount;

/// Microseconds on one monotonic clock shared by every thread of the test.
fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Busy loops on every CPU, killed on drop.
struct CpuHogs(Vec<Child>);

impl CpuHogs {
    fn start() -> CpuHogs {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        CpuHogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn io_under_flipping_statuses() {
    let m = Mount::new(&[]);
    let b = common::OtherMount(m.store.dir.path().join("mnt-b"));
    std::fs::create_dir_all(&b.0).unwrap();
    m.store.ok(&["mount", b.0.to_str().unwrap()]);
    let names = ["a", "b", "c"];
    for n in names {
        m.sh_ok(&format!("mkdir {n} && echo start > {n}/log"));
    }
    // A new vfolder shows on the other mount once its watcher applied it
    // (creating one restricts nothing, so nothing waits for that).
    for n in names {
        let log = b.0.join(n).join("log");
        assert!(
            common::eventually(Duration::from_secs(20), || log.exists()),
            "{n} never showed on the second mount"
        );
    }
    let _hogs = CpuHogs::start();
    let stop = Arc::new(AtomicBool::new(false));
    // (vfolder, when the write began, when it returned) of every write that
    // succeeded.
    let wrote: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    for n in names {
        for (k, root) in [(0, m.mnt.clone()), (1, m.mnt.clone()), (2, b.0.clone())] {
            let (stop, wrote, dir, refused) =
                (stop.clone(), wrote.clone(), root.join(n), refused.clone());
            // One handle held all along (opened here, before the flipper
            // can delete the vfolder), one opened per write.
            let mut held = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("log"))
                .unwrap_or_else(|e| panic!("opening {}: {e}", dir.join("log").display()));
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let t0 = now_us();
                    let ok = if k == 1 {
                        std::fs::write(dir.join(format!("f{i}")), b"x").is_ok()
                    } else {
                        held.write_all(format!("{k} {i}\n").as_bytes()).is_ok()
                    };
                    if ok {
                        let t1 = now_us();
                        wrote.lock().unwrap().push((n.to_string(), t0, t1));
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
            }));
        }
    }
    // The flipper: delete/restore, clone, attach/detach, through the CLI.
    // Windows in which a vfolder was known not writable: from the moment a
    // delete command returned (successfully) to the moment the restore
    // command began.
    let mut closed: Vec<(String, u64, u64)> = Vec::new();
    let target = m.store.dir.path().join("att");
    let end = Instant::now() + Duration::from_secs(6);
    let mut round = 0;
    while Instant::now() < end {
        let n = names[round % names.len()];
        match round % 4 {
            0 | 1 => {
                let o = m.store.cli(&["delete", n]);
                let returned = now_us();
                std::thread::sleep(Duration::from_millis(80));
                let began = now_us();
                let r = m.store.cli(&["restore", n]);
                if o.status.success() {
                    closed.push((n.to_string(), returned, began));
                }
                let _ = r;
            }
            2 => {
                let _ = m.store.cli(&["clone", n, &format!("{n}-c{round}")]);
            }
            _ => {
                let _ = m.store.cli(&[
                    "attach",
                    n,
                    "--session",
                    "s",
                    "--target",
                    target.to_str().unwrap(),
                ]);
                let _ = m.store.cli(&["delete", n]);
                let _ = m.store.cli(&["detach", "--session", "s"]);
            }
        }
        std::thread::sleep(Duration::from_millis(40));
        round += 1;
    }
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
    assert!(!closed.is_empty(), "no delete went through");
    {
        let wrote = wrote.lock().unwrap();
        for (n, from, to) in &closed {
            // Begun after the delete returned and over before the restore
            // began: it ran wholly while the vfolder was not writable. (One
            // begun in the window but still running when the restore began
            // may rightly succeed: under the CPU hogs its thread can be
            // descheduled between its timestamp and the call.)
            for (v, t0, t1) in wrote.iter().filter(|w| &w.0 == n) {
                assert!(
                    !(t0 > from && t1 < to),
                    "a write to {v} began {} µs after the delete command returned, and succeeded \
                     {} µs before the restore began",
                    t0 - from,
                    to - t1
                );
            }
        }
    }
    // The mount still answers, and every vfolder ends where it should.
    m.sh_ok("ls -la . .trash > /dev/null");
    let wrote = wrote.lock().unwrap();
    assert!(
        wrote.len() > 100,
        "the writers made little progress: {}",
        wrote.len()
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "no write was ever refused: the statuses did not flip"
    );
    for n in names {
        let h: serde_json::Value =
            serde_json::from_str(&m.store.ok(&["history", n, "--json"])).unwrap();
        let h = h.as_array().unwrap();
        // No lost transition: each starts where the previous ended.
        for w in h.windows(2) {
            assert_eq!(w[0]["to"], w[1]["from"], "{n}: {w:?}");
        }
    }
    assert!(
        m.store.ok(&["fsck"]).contains("consistent") || {
            // Clones may still be finishing; fsck must settle.
            common::eventually(Duration::from_secs(20), || {
                m.store.cli(&["fsck"]).status.success()
            })
        }
    );
}
