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
use vfolderfs::store::{RelocationStart, Store, StoreError, UsageDelta};
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
    match s.start_relocation(&pid, "cap", "tier: test", RelocationStart::Tier) {
        Err(e @ StoreError::Pinned { .. }) => assert!(e.to_string().contains("\"pinned\"")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.start_relocation(&id, "cap", "tier: test", RelocationStart::Tier),
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

/// A planning pass over 20,000 vfolders on each backend: the plan is right at
/// that scale (every idle vfolder demoted once, the used half left alone), and
/// its cost is printed (`scripts/bench.sh --tier-plan` runs it in release
/// with `--nocapture`): wall time, queries, rows read. No timed assertion.
#[test]
fn plan_cost_with_20000_vfolders() {
    let mut backends = vec![common::Backend::Sqlite];
    if std::env::var("VFOLDERFS_TEST_PG").is_ok() {
        backends.push(common::Backend::Postgres);
    }
    for b in backends {
        let t = TempStore::with(b);
        // The capacity volume on a tmpfs of its own: on the host's disk,
        // whether the demotions fit under its watermark depends on how full
        // that disk is (seen: no move at all with / at 77%).
        let cap_fs = Tmpfs::new(&t, "cap", "64m");
        let cap = cap_fs.0.clone();
        t.ok(&[
            "volume",
            "add",
            "cap",
            cap.to_str().unwrap(),
            "--tier",
            "capacity",
        ]);
        t.ok(&["volume", "set", "default", "--tier", "fast"]);
        let now = now_ms();
        // 20,000 vfolders on the fast volume, sizes known; half used today.
        let (series, uuid) = match b {
            common::Backend::Sqlite => (
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT i FROM n",
                "printf('00000000-0000-4000-8000-%012d', i)",
            ),
            common::Backend::Postgres => (
                "SELECT generate_series(1, 20000) AS i",
                "'00000000-0000-4000-8000-' || lpad(i::text, 12, '0')",
            ),
        };
        t.sql(&format!(
            "INSERT INTO vfolders (id, name, status, created_at, status_changed_at, volume) \
             SELECT {uuid}, 'v' || i, 'ready', {old}, {old}, 'default' FROM ({series}) s;
             INSERT INTO vfolder_sizes (vfolder_id, bytes, files, measured_at) \
             SELECT {uuid}, 1000, 1, {now} FROM ({series}) s;
             INSERT INTO vfolder_usage (vfolder_id, day, opens, bytes_read, bytes_written) \
             SELECT {uuid}, {day}, 5, 0, 0 FROM ({series}) s WHERE i % 2 = 0;
             INSERT INTO vfolder_access (vfolder_id, last_access) \
             SELECT {uuid}, {now} FROM ({series}) s WHERE i % 2 = 0;",
            old = now - 60 * DAY_MS,
            day = day_of(now),
        ));
        let cat = vfolderfs::catalog::Catalog::open(t.layout()).unwrap();
        let policy = vfolderfs::tier::policy::Policy::default();
        let mut best = Duration::MAX;
        let mut plan = None;
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            plan = Some(vfolderfs::tier::plan::make(&cat, &policy, now).unwrap());
            best = best.min(t0.elapsed());
        }
        let plan = plan.unwrap();
        // The odd-numbered half was last used 60 days ago: each demoted once,
        // to the capacity volume; the half used today stays.
        assert_eq!(plan.moves.len(), 10_000, "{b:?}");
        let mut ids: Vec<&str> = plan.moves.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 10_000, "{b:?}: a vfolder planned twice");
        assert!(plan.moves.iter().all(|m| m.to == "cap"), "{b:?}");
        let inp = vfolderfs::tier::plan::gather(&cat, &policy, now).unwrap();
        let rows =
            inp.vfolders.len() + inp.sizes.len() + inp.last_access.len() + inp.day_opens.len();
        println!(
            "{b:?}: plan over {} vfolders: {} moves, best of 5 {:?}; rows read {rows} \
             (vfolders {}, sizes {}, last access {}, usage {}), 8 queries",
            inp.vfolders.len(),
            plan.moves.len(),
            best,
            inp.vfolders.len(),
            inp.sizes.len(),
            inp.last_access.len(),
            inp.day_opens.len()
        );
    }
}

#[test]
fn a_mount_makes_the_automatic_passes_once_enabled() {
    let (t, _f, _c) = two_tiers("16m", "16m");
    t.ok(&["create", "old", "--volume", "fast"]);
    t.ok(&["create", "kept", "--volume", "fast"]);
    t.ok(&["tier", "pin", "kept"]);
    let now = (now_ms() + 40 * DAY_MS).to_string();
    let m = Mount::on_env(t, &[], &[(NOW_ENV, &now)]);
    // Not enabled: nothing moves.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(volume_of(&m.store, "old"), "fast");
    let e = m.store.fails(&["tier", "auto", "--demote-after", "7d"]);
    assert!(e.contains("--every"), "{e}");
    let shown = json(&m.store.ok(&[
        "tier",
        "auto",
        "--every",
        "1s",
        "--demote-after",
        "7d",
        "--json",
    ]));
    assert_eq!(shown["seconds"], 1, "{shown}");
    assert!(
        shown["policy"]
            .as_str()
            .unwrap()
            .contains("demote_after = \"7days\""),
        "{shown}"
    );
    assert!(
        eventually(Duration::from_secs(60), || volume_of(&m.store, "old")
            == "cap"
            && m.store.show("old")["status"] == "ready"),
        "the mount made no pass"
    );
    assert!(history_causes(&m.store, "old").contains(&"tier: idle 40 days".to_string()));
    assert_eq!(volume_of(&m.store, "kept"), "fast");
    m.store.ok(&["tier", "auto", "--every", "off"]);
    assert_eq!(
        json(&m.store.ok(&["tier", "auto", "--json"]))["every"],
        Value::Null
    );
}

/// A volume removed and added again under the same name (another disk,
/// say) starts untiered, with no watermarks: the removed volume's tier
/// settings do not come back with the name.
#[test]
fn a_removed_volume_leaves_no_tier_to_a_new_one_of_its_name() {
    let t = TempStore::new();
    let a = Tmpfs::new(&t, "a", "8m");
    let b = Tmpfs::new(&t, "b", "8m");
    t.ok(&[
        "volume",
        "add",
        "vol",
        a.0.to_str().unwrap(),
        "--tier",
        "fast",
    ]);
    t.ok(&[
        "volume",
        "set",
        "vol",
        "--high-watermark",
        "50",
        "--low-watermark",
        "40",
    ]);
    let shown = json(&t.ok(&["volume", "show", "vol", "--json"]));
    assert_eq!(shown["tier"], "fast");
    t.ok(&["volume", "remove", "vol"]);
    t.ok(&["volume", "add", "vol", b.0.to_str().unwrap()]);
    let shown = json(&t.ok(&["volume", "show", "vol", "--json"]));
    assert_eq!(shown["tier"], Value::Null, "{shown}");
    assert_eq!(shown["high_watermark"], Value::Null, "{shown}");
    assert_eq!(shown["low_watermark"], Value::Null, "{shown}");
}
