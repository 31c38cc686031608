//! The real binary against temporary stores.

mod common;

use common::TempStore;

#[test]
fn lifecycle_through_the_cli() {
    let t = TempStore::new();
    let out = t.ok(&["create", "data"]);
    assert!(out.contains("created vfolder \"data\""), "{out}");
    let v = t.show("data");
    for key in [
        "id",
        "name",
        "status",
        "path",
        "created_at",
        "status_changed_at",
        "error",
    ] {
        assert!(v.get(key).is_some(), "show --json lacks {key}: {v}");
    }
    assert_eq!(v["status"], "ready");
    let path = std::path::PathBuf::from(v["path"].as_str().unwrap());
    assert!(path.is_dir(), "backing directory exists");
    std::fs::write(path.join("f"), b"x").unwrap();

    t.ok(&["rename", "data", "data2"]);
    assert_eq!(t.show("data2")["id"], v["id"]);
    t.ok(&["delete", "data2"]);
    assert_eq!(t.show("data2")["status"], "delete-pending");
    // Trashed vfolders are not listed by default, and are with --all.
    let live: serde_json::Value = serde_json::from_str(&t.ok(&["list", "--json"])).unwrap();
    assert_eq!(live.as_array().unwrap().len(), 0);
    let all: serde_json::Value = serde_json::from_str(&t.ok(&["list", "--all", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    t.ok(&["restore", "data2"]);
    assert_eq!(t.show("data2")["status"], "ready");
    // Data never moved.
    assert_eq!(std::fs::read(path.join("f")).unwrap(), b"x");

    let h: serde_json::Value =
        serde_json::from_str(&t.ok(&["history", "data2", "--json"])).unwrap();
    let steps: Vec<(serde_json::Value, serde_json::Value)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].clone(), e["to"].clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (serde_json::Value::Null, "ready".into()),
            ("ready".into(), "delete-pending".into()),
            ("delete-pending".into(), "ready".into()),
        ]
    );
    for e in h.as_array().unwrap() {
        assert!(e["at"].is_string() && e["cause"].is_string());
    }
}

#[test]
fn refusals_name_the_vfolder_and_its_status() {
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    t.ok(&["delete", "a"]);
    let err = t.fails(&["delete", "a"]);
    assert!(err.starts_with("vfolderfs: "), "{err}");
    t.ok(&["create", "b"]);
    let err = t.fails(&["restore", "b"]);
    assert!(err.contains("\"b\"") && err.contains("ready"), "{err}");
    assert_eq!(err.lines().count(), 1);
    let err = t.fails(&["show", "nope"]);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn restore_clash_and_restore_as() {
    let t = TempStore::new();
    t.ok(&["create", "x"]);
    t.ok(&["delete", "x"]);
    t.ok(&["create", "x"]);
    let err = t.fails(&["restore", "x"]);
    assert!(err.contains("already exists"), "{err}");
    t.ok(&["restore", "x", "--as", "x-old"]);
    assert_eq!(t.show("x-old")["status"], "ready");
    assert_eq!(t.show("x")["status"], "ready");
}

#[test]
fn same_named_trash_entries_get_distinct_names() {
    let t = TempStore::new();
    t.ok(&["create", "dup"]);
    let first = t.show("dup")["id"].as_str().unwrap().to_string();
    t.ok(&["delete", "dup"]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    t.ok(&["create", "dup"]);
    t.ok(&["delete", "dup"]);
    let older = format!("dup~{}", &first[..8]);
    assert_eq!(t.show(&older)["id"], first.as_str());
    assert_eq!(t.show(&older)["trash_name"], older.as_str());
    t.ok(&["restore", &older]);
    assert_eq!(t.show("dup")["id"], first.as_str());
    assert_eq!(t.show("dup")["status"], "ready");
}

#[test]
fn invalid_names_are_refused_and_nothing_is_written() {
    let t = TempStore::new();
    t.ok(&["create", "ok"]);
    let long = "a".repeat(256);
    let cases: [(&str, &str); 8] = [
        ("", "empty"),
        (&long, "256 bytes"),
        ("a/b", "'/'"),
        ("a\nb", "control character"),
        ("tab\there", "control character"),
        (".", "not names"),
        ("..", "not names"),
        (".trash", "reserved"),
    ];
    for (name, why) in cases {
        let err = t.fails(&["create", name]);
        assert!(err.contains(why), "{name:?}: {err}");
        let err = t.fails(&["rename", "ok", name]);
        assert!(err.contains(why), "rename to {name:?}: {err}");
    }
    t.ok(&["delete", "ok"]);
    let err = t.fails(&["restore", "ok", "--as", "a/b"]);
    assert!(err.contains("'/'"), "{err}");
    let all: serde_json::Value = serde_json::from_str(&t.ok(&["list", "--all", "--json"])).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["name"], "ok");
    assert_eq!(all[0]["status"], "delete-pending");
    // Exactly one backing directory exists: the refused ones made none.
    let data = t.path().join("data");
    let dirs: usize = std::fs::read_dir(&data)
        .unwrap()
        .map(|s| s.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| std::fs::read_dir(p).unwrap().count())
        .sum();
    assert_eq!(dirs, 1);
    // Invalid UTF-8 from the command line is refused too.
    use std::os::unix::ffi::OsStrExt;
    let o = std::process::Command::new(common::bin())
        .arg("--store")
        .arg(t.path())
        .arg("create")
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    // 255 bytes of multi-byte UTF-8 is fine.
    let name = "é".repeat(127) + "a";
    assert_eq!(name.len(), 255);
    t.ok(&["create", &name]);
}

#[test]
fn store_location_from_env_and_flag() {
    let t = TempStore::new();
    let env_store = t.dir.path().join("from-env");
    for args in [&["init"][..], &["create", "e"]] {
        let o = std::process::Command::new(common::bin())
            .args(args)
            .env("VFOLDERFS_STORE", &env_store)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(env_store.join("vfolders.db").is_file());
    assert!(env_store.join("data").is_dir());
    // --store wins over the environment.
    let o = std::process::Command::new(common::bin())
        .arg("--store")
        .arg(t.path())
        .args(["list", "--json"])
        .env("VFOLDERFS_STORE", &env_store)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
}
