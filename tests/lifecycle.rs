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

/// The trash names of the mount (`ls .trash`) and of the CLI (`list --all`).
fn trash_listings(m: &common::Mount) -> (Vec<String>, Vec<String>) {
    let mut mount: Vec<String> = std::fs::read_dir(m.p(".trash"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    mount.sort();
    let all: serde_json::Value =
        serde_json::from_str(&m.store.ok(&["list", "--all", "--json"])).unwrap();
    let mut cli: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["trash_name"].as_str().map(str::to_string))
        .collect();
    cli.sort();
    (mount, cli)
}

/// Every trashed vfolder keeps a stable `NAME~ID8` name for as long as it
/// is in the trash, on the CLI and on the mount, whatever else comes and
/// goes; the mount and the CLI list the same names.
#[test]
fn trash_names_are_stable_and_the_mount_and_the_cli_agree() {
    let m = common::Mount::new(&[]);
    let s = &m.store;
    s.ok(&["create", "foo"]);
    let old = s.show("foo")["id"].as_str().unwrap().to_string();
    s.ok(&["delete", "foo"]);
    s.ok(&["create", "foo"]);
    let new = s.show("foo")["id"].as_str().unwrap().to_string();
    s.ok(&["delete", "foo"]);
    let old_tn = format!("foo~{}", &old[..8]);
    let new_tn = format!("foo~{}", &new[..8]);
    let (mount, cli) = trash_listings(&m);
    assert_eq!(mount, cli);
    let mut want = vec!["foo".to_string(), old_tn.clone()];
    want.sort();
    assert_eq!(mount, want);
    // Both stable forms name their own vfolder, also the one listed as `foo`.
    assert_eq!(s.show(&old_tn)["id"], old.as_str());
    assert_eq!(s.show(&new_tn)["id"], new.as_str());
    let ino = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(m.p(p)).unwrap().ino()
    };
    let backing_ino = |id: &str| {
        use std::os::unix::fs::MetadataExt;
        let path = s.show(id)["path"].as_str().unwrap().to_string();
        std::fs::metadata(path).unwrap().ino()
    };
    assert_eq!(ino(&format!(".trash/{new_tn}")), backing_ino(&new));
    // The newer one leaves the trash: the older keeps its stable name.
    s.ok(&["restore", "foo"]);
    assert_eq!(s.show(&old_tn)["id"], old.as_str());
    assert_eq!(ino(&format!(".trash/{old_tn}")), backing_ino(&old));
    let (mount, cli) = trash_listings(&m);
    assert_eq!(mount, cli);
    assert_eq!(mount, ["foo"]);
    // An id prefix of 8 hex digits resolves anywhere a name does.
    assert_eq!(s.show(&new[..8])["name"], "foo");
    assert_eq!(s.show(&old[..13])["id"], old.as_str());
    s.ok(&["rename", &new[..8], "bar"]);
    assert_eq!(s.show("bar")["id"], new.as_str());
    // The stable form works for gestures on the mount too (restore by mv).
    std::fs::rename(m.p(&format!(".trash/{old_tn}")), m.p("foo-again")).unwrap();
    assert_eq!(s.show("foo-again")["id"], old.as_str());
}

/// A vfolder's own name cannot take the trash-name form, so it can never
/// be mistaken for (or hide) another trashed vfolder; and rows named so
/// before the rule are still listed exactly once.
#[test]
fn a_name_in_the_trash_name_form_is_refused_and_old_ones_do_not_collide() {
    let m = common::Mount::new(&[]);
    let s = &m.store;
    let err = s.fails(&["create", "foo~13b29a5a"]);
    assert!(err.contains("reserved for trash names"), "{err}");
    let e = std::fs::create_dir(m.p("foo~13b29a5a")).unwrap_err();
    assert_eq!(common::errno(&e), libc::EINVAL);
    s.ok(&["create", "ok"]);
    let err = s.fails(&["rename", "ok", "ok~0123456789"]);
    assert!(err.contains("reserved for trash names"), "{err}");
    // Rows from before the rule: a trashed `foo` whose trash name would
    // have been `foo~13b29a5a`, and a trashed vfolder named exactly that.
    use vfolderfs::catalog::trash_names;
    use vfolderfs::store::VFolder;
    let row = |id: &str, name: &str, at: i64| VFolder {
        id: id.into(),
        name: name.into(),
        status: Status::DeletePending,
        created_at: at,
        status_changed_at: at,
        error: None,
        volume: "default".into(),
        prev_volume: None,
        clone_src: None,
    };
    let rows = vec![
        row("13b29a5a-0000-4000-8000-000000000001", "foo", 1),
        row("20661723-0000-4000-8000-000000000002", "foo", 2),
        row("aaaaaaaa-0000-4000-8000-000000000003", "foo~13b29a5a", 3),
    ];
    let mut names: Vec<String> = trash_names(rows.clone())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["foo", "foo~13b29a5a", "foo~13b29a5a~aaaaaaaa"],
        "each listed once, under distinct names"
    );
    let listed = trash_names(rows);
    let find = |sel: &str| {
        vfolderfs::catalog::find_trashed(&listed, sel)
            .unwrap()
            .map(|v| v.id)
    };
    assert_eq!(
        find("foo~13b29a5a").unwrap(),
        "13b29a5a-0000-4000-8000-000000000001"
    );
    assert_eq!(
        find("foo~13b29a5a~aaaaaaaa").unwrap(),
        "aaaaaaaa-0000-4000-8000-000000000003"
    );
    assert_eq!(
        find("foo~20661723").unwrap(),
        "20661723-0000-4000-8000-000000000002"
    );
}
