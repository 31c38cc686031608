//! Lifecycle correctness (issue 14 §3–§6): attachments block what would
//! break them, stable trash names, jobs whose owner died, the trash
//! retention's compare-and-set, owner identity across PID namespaces, and
//! readdirplus stopping cleanly at a failing entry.

mod common;

use std::time::Duration;

use common::TempStore;
use vfolderfs::catalog::Catalog;
use vfolderfs::layout::Layout;
use vfolderfs::status::Status;
use vfolderfs::workers::pool::retention_purge;

fn catalog(t: &TempStore) -> Catalog {
    Catalog::open(Layout::new(t.path())).unwrap()
}

/// The scanner read a trashed row past its retention; before it requested
/// the purge, the vfolder was restored and deleted again. The purge must
/// not happen: the new deletion has a retention of its own.
#[test]
fn a_vfolder_restored_and_deleted_again_keeps_its_new_retention() {
    let t = TempStore::new();
    t.ok(&["create", "x"]);
    t.ok(&["delete", "x", "--no-wait"]);
    let cat = catalog(&t);
    let listed = cat
        .store()
        .get_live("x")
        .err()
        .map(|_| ())
        .map_or_else(|| unreachable!(), |()| cat.resolve_trashed("x").unwrap());
    assert_eq!(listed.status, Status::DeletePending);
    std::thread::sleep(Duration::from_millis(5));
    t.ok(&["restore", "x", "--no-wait"]);
    t.ok(&["delete", "x", "--no-wait"]);
    let keep = Duration::from_secs(3600);
    // As if the scanner had read `listed` more than `keep` ago.
    let now = listed.status_changed_at + keep.as_millis() as i64 + 1;
    assert!(!retention_purge(&cat, &listed, keep, now).unwrap());
    assert_eq!(
        cat.store().get(&listed.id).unwrap().status,
        Status::DeletePending
    );
    // Read afresh, its own (new) deletion is what counts: past it, it goes.
    let fresh = cat.store().get(&listed.id).unwrap();
    let now = fresh.status_changed_at + keep.as_millis() as i64 + 1;
    assert!(retention_purge(&cat, &fresh, keep, now).unwrap());
    assert!(cat.store().get(&listed.id).unwrap().status.is_purging());
}

/// A readdirplus whose entry fails part way returns the entries it had
/// added (their lookups were counted) instead of an error for the whole
/// reply; the failing entry's error comes with the next reply.
#[test]
fn readdirplus_returns_what_it_collected_before_a_failing_entry() {
    let t = TempStore::new();
    t.ok(&["create", "d"]);
    let backing = std::path::PathBuf::from(t.show("d")["path"].as_str().unwrap());
    for i in 0..40 {
        std::fs::write(backing.join(format!("file-{i:02}")), b"x").unwrap();
    }
    // The order getdents gives (the mount passes its offsets through).
    let order: Vec<String> = std::fs::read_dir(&backing)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let failing = order[10].clone();
    let m = common::Mount::on_env(t, &[], &[("VFOLDERFS_TEST_FAIL_LOOKUP", &failing)]);
    let mut seen = Vec::new();
    let mut error = None;
    for e in std::fs::read_dir(m.p("d")).unwrap() {
        match e {
            Ok(e) => seen.push(e.file_name().into_string().unwrap()),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    // Old code: the whole first reply became EIO, and nothing was listed.
    assert!(
        seen.len() >= 10 && seen[..10] == order[..10],
        "the entries before the failing one come first: {seen:?} ({error:?})"
    );
    match error {
        // The next readdirplus started at the failing entry.
        Some(e) => assert_eq!(common::errno(&e), libc::EIO, "{e}"),
        // The kernel went on with a plain readdir (no lookups): all of it.
        None => {
            let (mut a, mut b) = (seen.clone(), order.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
    }
}
