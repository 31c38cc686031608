//! What only the PostgreSQL store has to get right: libpq-style connection
//! settings (TLS modes, the password file, no password in messages),
//! row locking between attachments and deletions, a change feed that
//! misses nothing under concurrent writers, and change announcements.
//! Needs the server `scripts/test.sh` starts (fails without it).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{PgDb, TempStore};
use vfolderfs::catalog::{Catalog, NewDir};
use vfolderfs::status::{Action, Op, Status};
use vfolderfs::store::pgconf::PgConf;
use vfolderfs::store::{PgStore, RelocationStart, Store, StoreError, TransitionArgs};

fn args(cause: &str) -> TransitionArgs<'_> {
    TransitionArgs {
        cause,
        ..Default::default()
    }
}

fn port() -> String {
    std::env::var("VFOLDERFS_TEST_PG_PORT")
        .expect("VFOLDERFS_TEST_PG_PORT is not set: run scripts/test.sh (it starts PostgreSQL)")
}

fn ca() -> String {
    std::env::var("VFOLDERFS_TEST_PG_CA").expect("VFOLDERFS_TEST_PG_CA")
}

/// Connects with `url`; the error's full text if it fails.
fn connect(url: &str) -> Result<(), String> {
    let conf = PgConf::parse(url)?;
    let tls = conf.tls()?;
    conf.config
        .connect(tls)
        .map(drop)
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
}

#[test]
fn tls_modes_check_what_libpq_checks() {
    let (p, ca) = (port(), ca());
    let url = |host: &str, mode: &str, root: &str| {
        format!("postgres://vfolderfs@{host}:{p}/postgres?sslmode={mode}&sslrootcert={root}")
    };
    // The server's certificate names localhost and 127.0.0.1.
    connect(&url("localhost", "verify-full", &ca)).unwrap();
    connect(&url("127.0.0.1", "verify-full", &ca)).unwrap();
    // Another address of this host is not in it: verify-full refuses the
    // server during the handshake; verify-ca checks the chain only.
    let full = connect(&url("127.0.0.2", "verify-full", &ca)).unwrap_err();
    assert!(full.contains("TLS") || full.contains("tls"), "{full}");
    connect(&url("127.0.0.2", "verify-ca", &ca)).unwrap();
    // A chain from an unknown CA fails verify-ca; require does not check it.
    let other = "/etc/ssl/certs/ca-certificates.crt";
    assert!(connect(&url("localhost", "verify-ca", other)).is_err());
    connect(&format!(
        "postgres://vfolderfs@127.0.0.1:{p}/postgres?sslmode=require"
    ))
    .unwrap();
}

#[test]
fn the_password_comes_from_the_password_file_and_never_shows() {
    let p = port();
    let real = std::env::var("PGPASSFILE").expect("PGPASSFILE");
    let d = tempfile::tempdir().unwrap();
    let loose = d.path().join("pgpass");
    std::fs::copy(&real, &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    // A password file others can read is ignored, as libpq does.
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!("postgres://vfolderfs@127.0.0.1:{p}/postgres?sslmode=disable");
    let e = connect(&format!("{url}&passfile={}", loose.display())).unwrap_err();
    assert!(e.to_lowercase().contains("password"), "{e}");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o600)).unwrap();
    connect(&format!("{url}&passfile={}", loose.display())).unwrap();
    // A wrong password given in the URL never appears in a message.
    let t = TempStore::bare();
    let o = std::process::Command::new(common::bin())
        .args([
            "--store",
            &format!("postgres://vfolderfs:hunter2secret@127.0.0.1:{p}/postgres?sslmode=disable"),
            "--data",
        ])
        .arg(t.path())
        .arg("list")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot connect to"), "{err}");
    assert!(!err.contains("hunter2secret"), "{err}");
    assert!(err.contains("vfolderfs:***@"), "{err}");
}

#[test]
fn attach_and_delete_racing_from_two_nodes_end_consistently() {
    let t = TempStore::new_pg();
    let cat = Catalog::open(t.layout()).unwrap();
    let url = t.pg.as_ref().unwrap().url.clone();
    for round in 0..30 {
        let v = cat
            .create(&format!("r{round}"), NewDir::default(), "t")
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (a, d) = {
            let (b1, b2) = (barrier.clone(), barrier);
            let (u1, u2) = (url.clone(), url.clone());
            let (i1, i2) = (v.id.clone(), v.id.clone());
            let a = std::thread::spawn(move || {
                let s = PgStore::open(&u1).unwrap();
                b1.wait();
                s.attach(&i1, "s", &format!("/t/{round}"), false, 1, "/m", None)
                    .map(drop)
            });
            let d = std::thread::spawn(move || {
                let s = PgStore::open(&u2).unwrap();
                b2.wait();
                s.transition(&i2, Op::Delete, args("race")).map(drop)
            });
            (a.join().unwrap(), d.join().unwrap())
        };
        let now = cat.store().get(&v.id).unwrap();
        let attached = cat.store().attachments(Some(&v.id)).unwrap().len();
        match (a, d) {
            (Ok(()), Err(StoreError::Attached { .. })) => {
                assert_eq!((now.status, attached), (Status::Ready, 1));
            }
            (
                Err(StoreError::Refused {
                    op: Action::Attach { .. },
                    ..
                }),
                Ok(()),
            ) => {
                assert_eq!((now.status, attached), (Status::DeletePending, 0));
            }
            other => panic!("round {round}: inconsistent outcome {other:?}"),
        }
    }
}

#[test]
fn the_change_feed_misses_nothing_under_concurrent_writers() {
    let t = TempStore::new_pg();
    let cat = Catalog::open(t.layout()).unwrap();
    let url = t.pg.as_ref().unwrap().url.clone();
    let ids: Vec<String> = (0..8)
        .map(|i| {
            cat.create(&format!("f{i}"), NewDir::default(), "t")
                .unwrap()
                .id
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    // A reader keeping a copy from the feed alone, as a mount does.
    let reader = {
        let (url, done) = (url.clone(), done.clone());
        std::thread::spawn(move || {
            let s = PgStore::open(&url).unwrap();
            let mut copy: HashMap<String, (Status, String)> = HashMap::new();
            let mut rev = 0;
            loop {
                let last = done.load(Ordering::Acquire);
                let ch = s.changes_since(rev).unwrap();
                for v in ch.rows {
                    copy.insert(v.id, (v.status, v.name));
                }
                rev = ch.rev;
                if last {
                    return copy;
                }
            }
        })
    };
    let writers: Vec<_> = ids
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, id)| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = PgStore::open(&url).unwrap();
                for j in 0..25 {
                    s.transition(&id, Op::Delete, args("w")).unwrap();
                    s.transition(&id, Op::Restore, args("w")).unwrap();
                    s.rename(&id, &format!("f{i}-{j}")).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let copy = reader.join().unwrap();
    for v in cat.store().list(vfolderfs::store::ListFilter::All).unwrap() {
        assert_eq!(copy.get(&v.id), Some(&(v.status, v.name.clone())), "{v:?}");
    }
}

#[test]
fn a_status_change_is_announced_to_listeners() {
    let db = PgDb::new();
    let (s, made) = PgStore::create(&db.url).unwrap();
    assert!(made);
    let mut wait = s.change_listener().expect("PostgreSQL announces changes");
    // The first call connects and counts as a change (nothing is missed
    // before LISTEN); then quiet...
    assert!(wait(Duration::from_secs(5)));
    assert!(!wait(Duration::from_millis(300)));
    // ... until another connection changes a vfolder.
    let other = PgStore::open(&db.url).unwrap();
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    other.create(&id, "n", "default", "t").unwrap();
    assert!(wait(Duration::from_secs(30)));
    other.transition(&id, Op::Delete, args("t")).unwrap();
    assert!(wait(Duration::from_secs(30)));
}

/// Tiering's store functions on PostgreSQL: usage batches from two mounts
/// add up (one statement per table per batch), the last access only moves
/// forward, pins refuse a tier move in its own transaction, the settings'
/// compare-and-set elects one winner, volume tiers are kept.
#[test]
fn tiering_store_on_postgres() {
    use vfolderfs::store::{UsageDelta, VolumeTier};
    use vfolderfs::tier::Tier;
    let t = TempStore::new_pg();
    t.ok(&["create", "a"]);
    t.ok(&["create", "b"]);
    let s = t.open_store();
    let a = s.get_live("a").unwrap().id;
    let b = s.get_live("b").unwrap().id;
    let d = |id: &str, day: i64, opens: u64, at: i64| UsageDelta {
        vfolder_id: id.into(),
        day,
        opens,
        bytes_read: opens * 10,
        bytes_written: 1,
        at,
    };
    // Two mounts' batches, one with a vfolder forgotten meanwhile.
    s.record_usage(&[
        d(&a, 100, 3, 5000),
        d(&b, 100, 1, 4000),
        d("gone", 100, 9, 1),
    ])
    .unwrap();
    s.record_usage(&[d(&b, 100, 2, 3000), d(&a, 101, 4, 9000)])
        .unwrap();
    let u = s.usage_since(100, None).unwrap();
    let got: Vec<(String, i64, u64, u64)> = u
        .iter()
        .map(|u| (u.vfolder_id.clone(), u.day, u.opens, u.bytes_read))
        .collect();
    let mut want = vec![
        (a.clone(), 100, 3, 30),
        (a.clone(), 101, 4, 40),
        (b.clone(), 100, 3, 30),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(s.usage_since(101, Some(&a)).unwrap().len(), 1);
    let last = s.last_access(None).unwrap();
    assert_eq!(last.get(&a), Some(&9000));
    assert_eq!(last.get(&b), Some(&4000), "the last access went backwards");
    assert!(!last.contains_key("gone"));
    // Pins.
    t.ok(&[
        "volume",
        "add",
        "cap",
        t.dir.path().join("cap").to_str().unwrap(),
        "--tier",
        "capacity",
    ]);
    assert!(s.set_pin(&a, Some("test pin")).unwrap());
    assert!(matches!(
        s.start_relocation(&a, "cap", "tier: test", RelocationStart::Tier),
        Err(StoreError::Pinned { .. })
    ));
    assert_eq!(s.get(&a).unwrap().status, Status::Ready);
    assert!(s.set_pin(&a, None).unwrap());
    assert!(!s.set_pin(&a, None).unwrap());
    let v = s
        .start_relocation(&a, "cap", "tier: idle 31 days", RelocationStart::Tier)
        .unwrap();
    assert_eq!(v.status, Status::Performing);
    assert_eq!(s.job(&a).unwrap().unwrap().arg.as_deref(), Some("cap"));
    assert_eq!(
        s.history(&a).unwrap().last().unwrap().cause,
        "tier: idle 31 days"
    );
    // Settings: one compare-and-set wins.
    assert!(s.swap_setting("tier_last_pass", None, Some("1")).unwrap());
    assert!(!s.swap_setting("tier_last_pass", None, Some("2")).unwrap());
    assert!(
        s.swap_setting("tier_last_pass", Some("1"), Some("2"))
            .unwrap()
    );
    assert_eq!(s.setting("tier_last_pass").unwrap().as_deref(), Some("2"));
    // Volume tiers.
    s.set_volume_tier(&VolumeTier {
        volume: "default".into(),
        tier: Some(Tier::Fast),
        high_watermark: Some(80),
        low_watermark: Some(60),
    })
    .unwrap();
    let tiers = s.volume_tiers().unwrap();
    assert_eq!(tiers.len(), 2, "{tiers:?}");
    assert_eq!(tiers[0].volume, "cap");
    assert_eq!(tiers[1].tier, Some(Tier::Fast));
    assert!(
        s.set_volume_tier(&VolumeTier {
            volume: "nowhere".into(),
            tier: None,
            high_watermark: None,
            low_watermark: None,
        })
        .is_err()
    );
}
