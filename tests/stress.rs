//! Load: file I/O in several vfolders while their statuses flip through the
//! CLI. No deadlock, no panic, no lost transition, and no write lands after
//! the moment a status stopped allowing writes (plus the 100 ms the mount is
//! allowed to take to learn of it).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Mount;

const GRACE_MS: i64 = 100;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn io_under_flipping_statuses() {
    let m = Mount::new(&[]);
    let names = ["a", "b", "c"];
    for n in names {
        m.sh_ok(&format!("mkdir {n} && echo start > {n}/log"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // (vfolder, start ms, end ms) of every write that succeeded.
    let wrote: Arc<Mutex<Vec<(String, i64, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    for n in names {
        for k in 0..2 {
            let (stop, wrote, dir, refused) =
                (stop.clone(), wrote.clone(), m.p(n), refused.clone());
            threads.push(std::thread::spawn(move || {
                // One handle held all along, one opened per write.
                let mut held = std::fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join("log"))
                    .unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let t0 = now_ms();
                    let ok = if k == 0 {
                        held.write_all(format!("{k} {i}\n").as_bytes()).is_ok()
                    } else {
                        std::fs::write(dir.join(format!("f{i}")), b"x").is_ok()
                    };
                    let t1 = now_ms();
                    if ok {
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
    let target = m.store.dir.path().join("att");
    let end = std::time::Instant::now() + Duration::from_secs(6);
    let mut round = 0;
    while std::time::Instant::now() < end {
        let n = names[round % names.len()];
        match round % 4 {
            0 | 1 => {
                let _ = m.store.cli(&["delete", n]);
                std::thread::sleep(Duration::from_millis(80));
                let _ = m.store.cli(&["restore", n]);
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
        // Windows in which the status forbade writes, with their times.
        let mut closed: Vec<(i64, i64)> = Vec::new();
        let mut since: Option<i64> = None;
        for e in h {
            let at = humantime::parse_rfc3339(e["at"].as_str().unwrap())
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let writable = e["to"] == "ready";
            match (writable, since) {
                (false, None) => since = Some(at),
                (true, Some(s)) => {
                    closed.push((s, at));
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(s) = since {
            closed.push((s, i64::MAX));
        }
        assert!(!closed.is_empty(), "{n} was never non-writable");
        for (v, t0, _t1) in wrote.iter().filter(|w| w.0 == n) {
            for (from, to) in &closed {
                assert!(
                    !(*t0 > from + GRACE_MS && *t0 < *to),
                    "a write to {v} started {} ms into a non-writable window ({from}..{to})",
                    t0 - from
                );
            }
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
