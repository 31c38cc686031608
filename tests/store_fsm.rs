//! The state machine through the store: every (status, operation) pair, and
//! racing callers in threads and in processes; against both backends
//! (SQLite, and PostgreSQL on the server `scripts/test.sh` starts, a
//! database per test).

mod common;

use std::sync::{Arc, Barrier};

use common::{Backend, TempStore};
use vfolderfs::catalog::{Catalog, NewDir};
use vfolderfs::status::{Action, Op, Status};
use vfolderfs::store::{ListFilter, StoreError, TransitionArgs};

fn args(cause: &str) -> TransitionArgs<'_> {
    TransitionArgs {
        cause,
        ..Default::default()
    }
}

/// The operations that lead from ready to `target`.
fn path_to(target: Status) -> &'static [Op] {
    match target {
        Status::Ready => &[],
        Status::Performing => &[Op::RelocateStart],
        Status::Cloning => &[Op::CloneStart],
        Status::DeletePending => &[Op::Delete],
        Status::DeleteOngoing => &[Op::Delete, Op::Purge],
        Status::DeleteComplete => &[Op::Delete, Op::Purge, Op::PurgeDone],
        Status::DeleteError => &[Op::Delete, Op::Purge, Op::PurgeFailed],
    }
}

fn every_status_operation_pair(b: Backend) {
    let t = TempStore::with(b);
    let cat = Catalog::open(t.layout()).unwrap();
    let store = cat.store();
    let mut checked = 0;
    for (i, from) in Status::ALL.into_iter().enumerate() {
        for (j, op) in Op::ALL.into_iter().enumerate() {
            let name = format!("v{i}-{j}");
            let v = cat.create(&name, NewDir::default(), "test").unwrap();
            for step in path_to(from) {
                store.transition(&v.id, *step, args("setup")).unwrap();
            }
            assert_eq!(store.get(&v.id).unwrap().status, from);
            let before = store.history(&v.id).unwrap();
            let r = store.transition(&v.id, op, args("under test"));
            let after = store.history(&v.id).unwrap();
            if op.from_statuses().contains(&from) {
                let got = r.unwrap_or_else(|e| panic!("{op:?} from {from}: {e}"));
                assert_eq!(got.status, op.to_status(), "{op:?} from {from}");
                assert_eq!(after.len(), before.len() + 1);
                let last = after.last().unwrap();
                assert_eq!((last.from, last.to), (Some(from), op.to_status()));
                assert_eq!(last.cause, "under test");
            } else {
                match r {
                    Err(StoreError::Refused {
                        status,
                        op: o,
                        ref name,
                        ..
                    }) => {
                        assert_eq!((status, o), (from, Action::from(op)));
                        assert_eq!(name, &v.name);
                        let msg = r.unwrap_err().to_string();
                        assert!(
                            msg.contains(from.as_str()) && msg.contains(&v.name),
                            "{msg}"
                        );
                    }
                    other => panic!("{op:?} from {from} should be refused, got {other:?}"),
                }
                assert_eq!(
                    store.get(&v.id).unwrap().status,
                    from,
                    "refusal changed nothing"
                );
                assert_eq!(after, before, "refusal adds no history");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, Status::ALL.len() * Op::ALL.len());
}

fn names_are_unique_among_live_vfolders_only(b: Backend) {
    let t = TempStore::with(b);
    let cat = Catalog::open(t.layout()).unwrap();
    let a = cat.create("foo", NewDir::default(), "t").unwrap();
    assert!(matches!(
        cat.create("foo", NewDir::default(), "t"),
        Err(StoreError::NameTaken(_))
    ));
    cat.delete(&a, "t").unwrap();
    let b = cat.create("foo", NewDir::default(), "t").unwrap();
    cat.delete(&b, "t").unwrap();
    // Two trashed foos coexist, under distinct trash names.
    let trash = cat.trash().unwrap();
    assert_eq!(trash.len(), 2);
    let names: Vec<&str> = trash.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"foo"));
    assert!(names.contains(&format!("foo~{}", &a.id[..8]).as_str()));
    // A live foo blocks restoring either, unless under a new name.
    let c = cat.create("foo", NewDir::default(), "t").unwrap();
    assert!(matches!(
        cat.restore(&a, None, "t"),
        Err(StoreError::NameTaken(_))
    ));
    assert_eq!(
        cat.store().get(&a.id).unwrap().status,
        Status::DeletePending
    );
    let r = cat.restore(&a, Some("foo-old"), "t").unwrap();
    assert_eq!((r.name.as_str(), r.status), ("foo-old", Status::Ready));
    // Renaming: live only, keeps the status, records no status change.
    let h = cat.store().history(&c.id).unwrap().len();
    cat.store().rename(&c.id, "bar").unwrap();
    assert_eq!(cat.store().history(&c.id).unwrap().len(), h);
    assert!(matches!(
        cat.store().rename(&c.id, "foo-old"),
        Err(StoreError::NameTaken(_))
    ));
    assert!(matches!(
        cat.store().rename(&b.id, "baz"),
        Err(StoreError::Refused {
            op: Action::Rename,
            ..
        })
    ));
    // Names are metadata: the backing directory is keyed by id and stays put.
    let path = cat.layout().vfolder_path(&c.id);
    assert!(path.is_dir());
    assert!(path.ends_with(format!("{}/{}", &c.id[..2], c.id)));
}

fn racing_threads_exactly_one_wins(b: Backend) {
    let t = TempStore::with(b);
    let cat = Catalog::open(t.layout()).unwrap();
    for round in 0..5 {
        let v = cat
            .create(&format!("race{round}"), NewDir::default(), "t")
            .unwrap();
        let n = 12;
        let barrier = Arc::new(Barrier::new(n));
        let results: Vec<_> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let (barrier, id, t) = (barrier.clone(), v.id.clone(), &t);
                    sc.spawn(move || {
                        // Each thread its own connection, as separate processes would.
                        let s = t.open_store();
                        barrier.wait();
                        s.transition(&id, Op::Delete, args("race"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        StoreError::Refused {
                            status: Status::DeletePending,
                            ..
                        }
                    ),
                    "{e}"
                );
            }
        }
        let h = cat.store().history(&v.id).unwrap();
        assert_eq!(
            h.iter().filter(|e| e.to == Status::DeletePending).count(),
            1
        );
    }
}

fn racing_processes_exactly_one_wins(b: Backend) {
    let t = TempStore::with(b);
    t.ok(&["create", "shared"]);
    let n = 10;
    let children: Vec<_> = (0..n)
        .map(|_| {
            std::process::Command::new(common::bin())
                .args(t.store_args())
                .args(["delete", "shared"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let wins = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1);
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        // Losers either saw it in the trash already or lost the compare-and-set.
        assert!(
            err.contains("no vfolder named") || err.contains("its status is delete-pending"),
            "{err}"
        );
    }
    let h: serde_json::Value =
        serde_json::from_str(&t.ok(&["history", "shared", "--json"])).unwrap();
    let deletes = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to"] == "delete-pending")
        .count();
    assert_eq!(deletes, 1);
}

fn a_newer_store_is_refused_untouched(b: Backend) {
    let t = TempStore::with(b);
    t.ok(&["create", "x"]);
    t.set_schema_version(99);
    let err = t.fails(&["list"]);
    assert!(err.contains("schema version is 99"), "{err}");
    assert!(err.starts_with("vfolderfs: "), "{err}");
    assert_eq!(t.schema_version(), 99);
    assert_eq!(t.row_count(), 1);
}

#[test]
fn sqlite_store_opens_in_wal_mode_with_version() {
    let t = TempStore::new();
    let cat = Catalog::open(t.layout()).unwrap();
    assert!(cat.store().list(ListFilter::All).unwrap().is_empty());
    let c = rusqlite::Connection::open(cat.layout().db_path()).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(
        t.schema_version(),
        vfolderfs::store::schema::latest_version()
    );
}

#[test]
fn postgres_store_is_made_by_init_only_and_at_the_latest_version() {
    let t = TempStore::bare_pg();
    let err = t.fails(&["list"]);
    assert!(err.contains("no vfolderfs store in"), "{err}");
    assert_eq!(t.cli(&["list"]).status.code(), Some(3));
    assert!(t.ok(&["init"]).contains("initialized"));
    assert!(t.ok(&["init"]).contains("already exists"));
    assert_eq!(
        t.schema_version(),
        vfolderfs::store::pg_schema::latest_version()
    );
    let cat = Catalog::open(t.layout()).unwrap();
    assert!(cat.store().list(ListFilter::All).unwrap().is_empty());
}

fn the_work_list_holds_what_a_worker_must_act_on_and_nothing_else(b: Backend) {
    let t = TempStore::with(b);
    let cat = Catalog::open(t.layout()).unwrap();
    let store = cat.store();
    let mut expect = Vec::new();
    for (i, st) in Status::ALL.into_iter().enumerate() {
        let v = cat
            .create(&format!("s{i}"), NewDir::default(), "test")
            .unwrap();
        for step in path_to(st) {
            store.transition(&v.id, *step, args("setup")).unwrap();
        }
        if st.is_purging() || st.is_cloning() || st.is_relocating() || st.is_restorable() {
            expect.push(v.name.clone());
        }
    }
    // A ready vfolder with an old copy left behind by a relocation.
    let moved = cat.create("moved", NewDir::default(), "test").unwrap();
    t.sql(&format!(
        "UPDATE vfolders SET prev_volume = 'old' WHERE id = '{}'",
        moved.id
    ));
    expect.push("moved".into());
    expect.sort();
    let mut got: Vec<String> = store
        .list(ListFilter::Work)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    got.sort();
    assert_eq!(got, expect);
    assert!(
        !got.contains(&"s0".to_string()),
        "a plain ready vfolder is no work"
    );
}

fn the_change_feed_returns_what_changed_once_and_counts_deletions(b: Backend) {
    let t = TempStore::with(b);
    let cat = Catalog::open(t.layout()).unwrap();
    let store = cat.store();
    let a = cat.create("a", NewDir::default(), "test").unwrap();
    let b = cat.create("b", NewDir::default(), "test").unwrap();
    let all = store.changes_since(0).unwrap();
    let names: Vec<_> = all.rows.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "oldest change first");
    let quiet = store.changes_since(all.rev).unwrap();
    assert!(quiet.rows.is_empty());
    assert_eq!((quiet.rev, quiet.deletions), (all.rev, all.deletions));
    // A status change, then a rename: each row once, in that order.
    store.transition(&a.id, Op::Delete, args("t")).unwrap();
    store.rename(&b.id, "b2").unwrap();
    // Work on other tables is not a vfolder change.
    store.queue_job(&b.id, "noop", None).unwrap();
    let ch = store.changes_since(all.rev).unwrap();
    let got: Vec<_> = ch
        .rows
        .iter()
        .map(|v| (v.name.as_str(), v.status))
        .collect();
    assert_eq!(got, [("a", Status::DeletePending), ("b2", Status::Ready)]);
    assert!(ch.rev > all.rev);
    assert!(store.changes_since(ch.rev).unwrap().rows.is_empty());
    // Forgetting a purged row is a deletion: the counter moves.
    for op in [Op::Purge, Op::PurgeDone] {
        store.transition(&a.id, op, args("t")).unwrap();
    }
    let before = store.changes_since(ch.rev).unwrap();
    // Two changes of one row since: the row once, as it is now.
    assert_eq!(before.rows.len(), 1);
    assert_eq!(before.rows[0].status, Status::DeleteComplete);
    let forgotten = store.forget_purged(i64::MAX).unwrap();
    assert_eq!(forgotten.len(), 1);
    let after = store.changes_since(before.rev).unwrap();
    assert!(after.rows.is_empty());
    assert_eq!(after.deletions, before.deletions + 1);
}

/// Makes every insert into the jobs table fail (a full disk, or a crash
/// at that step), until [`allow_job_inserts`].
fn fail_job_inserts(t: &TempStore, b: Backend) {
    t.sql(match b {
        Backend::Sqlite => {
            "CREATE TRIGGER no_jobs BEFORE INSERT ON jobs \
             BEGIN SELECT RAISE(ABORT, 'no space left'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION no_jobs() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'no space left'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER no_jobs BEFORE INSERT ON jobs \
             FOR EACH ROW EXECUTE FUNCTION no_jobs();"
        }
    });
}

fn allow_job_inserts(t: &TempStore, b: Backend) {
    t.sql(match b {
        Backend::Sqlite => "DROP TRIGGER no_jobs;",
        Backend::Postgres => "DROP TRIGGER no_jobs ON jobs;",
    });
}

/// A clone starts whole or not at all: the source's status change, the
/// target's row and the copy's job are one transaction. With the job's
/// write failing, the source stays ready, no target is left (nor its
/// directory), and the clone works afterwards.
fn a_clone_starts_whole_or_not_at_all(b: Backend) {
    let t = TempStore::with(b);
    t.ok(&["create", "a"]);
    fail_job_inserts(&t, b);
    let err = t.fails(&["clone", "a", "b", "--no-wait"]);
    assert!(err.contains("no space left"), "{err}");
    assert_eq!(t.show("a")["status"], "ready");
    let rows = t.open_store().list(ListFilter::All).unwrap();
    assert_eq!(rows.len(), 1, "a target left behind: {rows:?}");
    let shards = t.layout().data_dir();
    // data/<shard>/<id>: count the vfolder directories.
    let dirs: usize = std::fs::read_dir(&shards)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| std::fs::read_dir(p).unwrap().count())
        .sum();
    assert_eq!(dirs, 1, "a target directory left behind");
    allow_job_inserts(&t, b);
    t.ok(&["clone", "a", "b"]);
    assert_eq!(t.show("b")["status"], "ready");
}

/// A store with vfolder `a` on the default volume and a second volume `v2`
/// (`volume add` makes its directory, private).
fn vfolder_and_volume(b: Backend) -> TempStore {
    let t = TempStore::with(b);
    let vol = t.dir.path().join("v2");
    t.ok(&["volume", "add", "v2", vol.to_str().unwrap()]);
    t.ok(&["create", "a"]);
    t
}

/// An operator's relocation starts whole or not at all: the status change,
/// its job and the pin against tiering are one transaction. Here the job's
/// write fails (a trigger stands in for a full disk or a crash between the
/// steps): the vfolder must stay `ready`, unpinned, and relocate normally
/// afterwards, not be left `performing` with no job to finish it.
fn a_relocation_starts_whole_or_not_at_all(b: Backend) {
    let t = vfolder_and_volume(b);
    fail_job_inserts(&t, b);
    let err = t.fails(&["relocate", "a", "--to", "v2", "--no-wait"]);
    assert!(err.contains("no space left"), "{err}");
    let v = t.show("a");
    assert_eq!(v["status"], "ready", "left half-started: {v}");
    assert_eq!(v["volume"], "default");
    let pins = t.open_store().pins().unwrap();
    assert!(
        pins.is_empty(),
        "pinned by a relocation that never started: {pins:?}"
    );
    allow_job_inserts(&t, b);
    t.ok(&["relocate", "a", "--to", "v2"]);
    let v = t.show("a");
    assert_eq!(
        (v["status"].as_str(), v["volume"].as_str()),
        (Some("ready"), Some("v2"))
    );
}

/// A relocation is refused while the previous copy of an earlier one still
/// waits to be removed (its removal waits for every live mount to confirm
/// the switch; the SQL below leaves the row as such a wait does). Started
/// anyway, its job would replace the removal's and its switch overwrite the
/// record of the old copy, which would then never be removed.
fn a_relocation_waits_for_the_previous_copy_to_go(b: Backend) {
    let t = vfolder_and_volume(b);
    t.sql("UPDATE vfolders SET prev_volume = 'v2' WHERE name = 'a'");
    let err = t.fails(&["relocate", "a", "--to", "v2", "--no-wait"]);
    assert!(
        err.contains("previous copy on volume v2") && err.contains("\"a\""),
        "{err}"
    );
    let v = t.show("a");
    assert_eq!(
        (v["status"].as_str(), v["volume"].as_str()),
        (Some("ready"), Some("default"))
    );
    let rows = t.open_store().list(ListFilter::All).unwrap();
    assert_eq!(rows[0].prev_volume.as_deref(), Some("v2"));
    // Once the old copy is gone, it relocates.
    t.sql("UPDATE vfolders SET prev_volume = NULL WHERE name = 'a'");
    t.ok(&["relocate", "a", "--to", "v2"]);
    assert_eq!(t.show("a")["volume"], "v2");
}

/// Each test above, once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Postgres)
            })*
        }
    };
}

on_both_backends!(
    every_status_operation_pair,
    names_are_unique_among_live_vfolders_only,
    racing_threads_exactly_one_wins,
    racing_processes_exactly_one_wins,
    a_newer_store_is_refused_untouched,
    the_work_list_holds_what_a_worker_must_act_on_and_nothing_else,
    the_change_feed_returns_what_changed_once_and_counts_deletions,
    a_relocation_starts_whole_or_not_at_all,
    a_clone_starts_whole_or_not_at_all,
    a_relocation_waits_for_the_previous_copy_to_go,
);
