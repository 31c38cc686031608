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
