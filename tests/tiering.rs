//! Tiering: volumes' tiers and watermarks, usage, pins, the plan and its
//! run. Clocks are simulated with `VFOLDERFS_TEST_NOW` (test-only) and
//! usage rows written through the store's API, as mounts write them.

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Mount, TempStore, Tmpfs, eventually};
use serde_json::Value;
use vfolderfs::store::{Store, StoreError, UsageDelta};
use vfolderfs::tier::{DAY_MS, day_of};

const NOW_ENV: &str = "VFOLDERFS_TEST_NOW";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Runs the CLI at simulated time `now` and insists on success.
fn at(t: &TempStore, now: i64, args: &[&str]) -> String {
    let o = t.cli_env(args, &[(NOW_ENV, &now.to_string())]);
    assert!(
        o.status.success(),
        "vfolderfs {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn volume_of(t: &TempStore, name: &str) -> String {
    t.show(name)["volume"].as_str().unwrap().to_string()
}

fn fill(t: &TempStore, name: &str, bytes: usize) {
    fs::write(path_of(t, name).join("data"), vec![7u8; bytes]).unwrap();
}

/// Usage as a mount records it: `opens` on the day of `at`.
fn used(s: &dyn Store, t: &TempStore, name: &str, at: i64, opens: u64) {
    let id = t.show(name)["id"].as_str().unwrap().to_string();
    s.record_usage(&[UsageDelta {
        vfolder_id: id,
        day: day_of(at),
        opens,
        bytes_read: 0,
        bytes_written: 0,
        at,
    }])
    .unwrap();
}

/// A store with a fast and a capacity tmpfs volume.
fn two_tiers(fast: &str, cap: &str) -> (TempStore, Tmpfs, Tmpfs) {
    let t = TempStore::new();
    let f = Tmpfs::new(&t, "fast", fast);
    let c = Tmpfs::new(&t, "cap", cap);
    t.ok(&[
        "volume",
        "add",
        "fast",
        f.0.to_str().unwrap(),
        "--tier",
        "fast",
    ]);
    t.ok(&[
        "volume",
        "add",
        "cap",
        c.0.to_str().unwrap(),
        "--tier",
        "capacity",
    ]);
    (t, f, c)
}

fn history_causes(t: &TempStore, name: &str) -> Vec<String> {
    json(&t.ok(&["history", name, "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cause"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn idle_demoted_hot_promoted_deterministically_with_causes_in_history() {
    let (t, _f, _c) = two_tiers("32m", "64m");
    let vols = json(&t.ok(&["volume", "list", "--json"]));
    let tiers: Vec<(String, Value)> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["tier"].clone()))
        .collect();
    assert!(tiers.contains(&("fast".into(), "fast".into())), "{tiers:?}");
    assert!(
        tiers.contains(&("cap".into(), "capacity".into())),
        "{tiers:?}"
    );
    assert!(
        tiers.contains(&("default".into(), Value::Null)),
        "{tiers:?}"
    );
    t.ok(&["create", "idle", "--volume", "fast"]);
    t.ok(&["create", "busy", "--volume", "fast"]);
    t.ok(&["create", "hot", "--volume", "cap"]);
    t.ok(&["create", "untiered"]);
    fill(&t, "idle", 100_000);
    let s = t.open_store();
    let now = now_ms() + 40 * DAY_MS;
    used(s.as_ref(), &t, "busy", now - DAY_MS, 3);
    used(s.as_ref(), &t, "hot", now, 500);
    used(s.as_ref(), &t, "hot", now - 2 * DAY_MS, 1);
    let args = ["tier", "plan", "--json", "--promote-opens", "100"];
    let plan = at(&t, now, &args);
    assert_eq!(plan, at(&t, now, &args), "the plan is not deterministic");
    let plan = json(&plan);
    let moves: Vec<(String, String, String)> = plan["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["vfolder"].as_str().unwrap().into(),
                m["to"].as_str().unwrap().into(),
                m["cause"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            ("idle".into(), "cap".into(), "tier: idle 40 days".into()),
            (
                "hot".into(),
                "fast".into(),
                "tier: opened 500 times in a day".into()
            ),
        ]
    );
    // Nothing moved by planning.
    assert_eq!(volume_of(&t, "idle"), "fast");
    let out = json(&at(
        &t,
        now,
        &["tier", "run", "--json", "--promote-opens", "100"],
    ));
    assert_eq!(out["moves"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(volume_of(&t, "idle"), "cap");
    assert_eq!(volume_of(&t, "hot"), "fast");
    assert_eq!(volume_of(&t, "busy"), "fast");
    assert_eq!(volume_of(&t, "untiered"), "default");
    assert_eq!(
        fs::read(path_of(&t, "idle").join("data")).unwrap(),
        vec![7u8; 100_000]
    );
    assert!(
        history_causes(&t, "idle").contains(&"tier: idle 40 days".to_string()),
        "{:?}",
        history_causes(&t, "idle")
    );
    // Usage shows in show --json.
    let hot = t.show("hot");
    let days = hot["usage"]["days"].as_array().unwrap();
    assert!(days.iter().any(|d| d["opens"] == 500), "{hot}");
    // Done: a second run moves nothing.
    let again = json(&at(&t, now, &args));
    assert!(again["moves"].as_array().unwrap().is_empty(), "{again}");
}

#[test]
fn pinned_and_attached_vfolders_never_move() {
    let (t, _f, c) = two_tiers("32m", "64m");
    for n in ["pinned", "relocated", "attached"] {
        t.ok(&["create", n, "--volume", "fast"]);
    }
    t.ok(&["tier", "pin", "pinned"]);
    // An explicit relocation pins too (there and back).
    t.ok(&["relocate", "relocated", "--to", "cap"]);
    t.ok(&["relocate", "relocated", "--to", "fast"]);
    let id = t.show("attached")["id"].as_str().unwrap().to_string();
    t.sql(&format!(
        "INSERT INTO attachments (vfolder_id, session, target, read_only, mnt_ns, source, created_at) \
         VALUES ('{id}', 's1', '/x', 1, 1, '/mnt/attached', 0)"
    ));
    let now = now_ms() + 60 * DAY_MS;
    let plan = json(&at(&t, now, &["tier", "plan", "--json"]));
    assert!(plan["moves"].as_array().unwrap().is_empty(), "{plan}");
    let held: Vec<(String, String)> = plan["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["vfolder"].as_str().unwrap().into(),
                h["why"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held[0].0 == "attached" && held[0].1.contains("attached to 1 session"));
    assert!(held[1].0 == "pinned" && held[1].1.contains("pinned (tier pin"));
    assert!(held[2].0 == "relocated" && held[2].1.contains("relocate to fast"));
    at(&t, now, &["tier", "run"]);
    for n in ["pinned", "relocated", "attached"] {
        assert_eq!(volume_of(&t, n), "fast", "{n} moved");
    }
    // The store refuses a tier move of a pinned or attached vfolder in the
    // same transaction that would start it, naming the vfolder.
    let s = t.open_store();
    let pid = t.show("pinned")["id"].as_str().unwrap().to_string();
    match s.start_tier_move(&pid, "cap", "tier: test") {
        Err(e @ StoreError::Pinned { .. }) => assert!(e.to_string().contains("\"pinned\"")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.start_tier_move(&id, "cap", "tier: test"),
        Err(StoreError::Attached { .. })
    ));
    // Unpinned, it moves.
    t.ok(&["tier", "unpin", "pinned"]);
    at(&t, now, &["tier", "run"]);
    assert_eq!(volume_of(&t, "pinned"), "cap");
    assert!(path_of(&t, "pinned").starts_with(&c.0));
    assert_eq!(volume_of(&t, "relocated"), "fast");
}

#[test]
fn the_fast_tier_sheds_its_coldest_down_to_the_low_watermark() {
    let (t, f, _c) = two_tiers("10m", "64m");
    t.ok(&[
        "volume",
        "set",
        "fast",
        "--high-watermark",
        "50",
        "--low-watermark",
        "30",
    ]);
    let shown = json(&t.ok(&["volume", "show", "fast", "--json"]));
    assert_eq!(shown["high_watermark"], 50);
    assert_eq!(shown["low_watermark"], 30);
    let s = t.open_store();
    let now = now_ms();
    // v0 coldest .. v3 hottest, 2 MiB each: 80 % used.
    for i in 0..4 {
        let n = format!("v{i}");
        t.ok(&["create", &n, "--volume", "fast"]);
        fill(&t, &n, 2 << 20);
        used(s.as_ref(), &t, &n, now - (4 - i) * 3_600_000, 1);
    }
    let args = ["tier", "plan", "--json", "--demote-after", "off"];
    let plan = json(&at(&t, now, &args));
    let order: Vec<&str> = plan["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["vfolder"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["v0", "v1", "v2"], "{plan}");
    assert_eq!(plan["moves"][0]["reason"], "watermark");
    at(&t, now, &["tier", "run", "--demote-after", "off"]);
    for (n, v) in [("v0", "cap"), ("v1", "cap"), ("v2", "cap"), ("v3", "fast")] {
        assert_eq!(volume_of(&t, n), v, "{n}");
    }
    let st = vfolderfs::volumes::probe(&f.0).space.unwrap();
    let used_pct = (st.1 - st.0) * 100 / st.1;
    assert!(used_pct <= 50, "fast volume still {used_pct}% used");
    // Nothing is promoted back over the high watermark, and nothing more moves.
    let again = json(&at(&t, now, &args));
    assert!(again["moves"].as_array().unwrap().is_empty(), "{again}");
}

#[test]
fn bad_policy_input_is_refused_and_changes_nothing() {
    let (t, _f, _c) = two_tiers("8m", "8m");
    t.ok(&["create", "a", "--volume", "fast"]);
    let bad = t.dir.path().join("bad.toml");
    for (text, says) in [
        ("demote_afterr = \"7d\"\n", "demote_afterr"),
        ("high_watermark = 40\nlow_watermark = 60\n", "low_watermark"),
        ("demote_after = \"tomorrow\"\n", "demote_after"),
        ("max_concurrent = 0\n", "max_concurrent"),
    ] {
        fs::write(&bad, text).unwrap();
        let now = (now_ms() + 90 * DAY_MS).to_string();
        for args in [
            vec!["tier", "run", "--policy", bad.to_str().unwrap()],
            vec![
                "tier",
                "auto",
                "--every",
                "1h",
                "--policy",
                bad.to_str().unwrap(),
            ],
        ] {
            let o = t.cli_env(&args, &[(NOW_ENV, &now)]);
            assert_eq!(o.status.code(), Some(2), "{args:?} {text}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(says), "{text}: {err}");
        }
    }
    assert_eq!(volume_of(&t, "a"), "fast");
    let auto = json(&t.ok(&["tier", "auto", "--json"]));
    assert_eq!(auto["every"], Value::Null, "{auto}");
    let e = t.fails(&[
        "volume",
        "set",
        "fast",
        "--high-watermark",
        "50",
        "--low-watermark",
        "60",
    ]);
    assert!(e.contains("below high watermark"), "{e}");
    let e = t.fails(&["volume", "set", "fast", "--tier", "warm"]);
    assert!(e.contains("warm"), "{e}");
    let e = t.fails(&["tier", "run", "--high-watermark", "200"]);
    assert!(e.contains("high_watermark"), "{e}");
    let shown = json(&t.ok(&["volume", "show", "fast", "--json"]));
    assert_eq!(shown["tier"], "fast");
    assert_eq!(shown["high_watermark"], Value::Null);
}

#[test]
fn a_tier_move_racing_writes_loses_no_acknowledged_write() {
    let (t, _f, _c) = two_tiers("64m", "64m");
    t.ok(&["create", "w", "--volume", "fast"]);
    for i in 0..300 {
        fs::write(path_of(&t, "w").join(format!("old{i}")), format!("{i}")).unwrap();
    }
    let m = Mount::on(t, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, dir) = (stop.clone(), acked.clone(), m.p("w"));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let p = dir.join(format!("new{i}"));
                let ok = (|| -> std::io::Result<()> {
                    use std::io::Write;
                    let mut f = fs::File::create(&p)?;
                    f.write_all(format!("{i}").as_bytes())?;
                    f.sync_all()
                })();
                if ok.is_ok() {
                    acked.lock().unwrap().push(i);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let now = (now_ms() + 40 * DAY_MS).to_string();
    let o = m
        .store
        .cli_env(&["tier", "run", "--no-wait"], &[(NOW_ENV, &now)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        eventually(Duration::from_secs(60), || volume_of(&m.store, "w")
            == "cap"
            && m.store.show("w")["status"] == "ready"),
        "the move never finished"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for i in &acked {
        assert_eq!(
            fs::read_to_string(m.p(&format!("w/new{i}"))).unwrap(),
            i.to_string(),
            "acknowledged write new{i} lost"
        );
    }
    for i in 0..300 {
        assert_eq!(
            fs::read_to_string(m.p(&format!("w/old{i}"))).unwrap(),
            i.to_string()
        );
    }
    assert!(history_causes(&m.store, "w").contains(&"tier: idle 40 days".to_string()));
}

#[test]
fn a_mount_records_usage_in_batches() {
    let m = Mount::new(&[]);
    m.store.ok(&["create", "u"]);
    for i in 0..5 {
        fs::write(m.p(&format!("u/f{i}")), b"abc").unwrap();
        fs::read(m.p(&format!("u/f{i}"))).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(15), || {
            let u = m.store.show("u")["usage"].clone();
            u["days"].as_array().is_some_and(|d| {
                d.iter().any(|d| d["opens"].as_u64().unwrap_or(0) >= 10)
                    && d.iter()
                        .any(|d| d["bytes_written"].as_u64().unwrap_or(0) >= 15)
            }) && u["last_access"].is_string()
        }),
        "{}",
        m.store.show("u")
    );
}
