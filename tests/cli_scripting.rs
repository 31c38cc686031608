//! What scripts rely on: quiet exit on a closed pipe, distinct exit
//! statuses, `--json` results and JSON errors, messages that say what to do
//! next, the rules for new names, completions and the manual page.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::{TempStore, bin};
use serde_json::Value;

const EXIT_USAGE: i32 = 2;
const EXIT_NO_STORE: i32 = 3;
const EXIT_NOT_FOUND: i32 = 5;
const EXIT_EXISTS: i32 = 6;
const EXIT_REFUSED: i32 = 7;
const EXIT_BUSY: i32 = 8;
const EXIT_UNAVAILABLE: i32 = 9;
const EXIT_PROBLEMS: i32 = 10;

/// Runs the CLI with stdout on a pipe whose reading end is already closed
/// (as `vfolderfs list | head -0` once head is gone), with SIGPIPE ignored
/// as the test harness has it: every write gets `EPIPE`.
fn into_closed_pipe(t: &TempStore, args: &[&str]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new descriptors owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(rd);
    Command::new(bin())
        .arg("--store")
        .arg(t.path())
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(wr))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_every_printing_command_quietly() {
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    t.ok(&["create", "b"]);
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["history", "a"],
        &["show", "a"],
        &["sessions"],
        &["volume", "list"],
        &["completions", "bash"],
    ] {
        let o = into_closed_pipe(&t, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.signal() == Some(libc::SIGPIPE) || o.status.success(),
            "{args:?}: {:?}: {err}",
            o.status
        );
        assert!(err.is_empty(), "{args:?} wrote to stderr: {err}");
    }
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn each_kind_of_failure_has_its_exit_status() {
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    assert_eq!(code(&t.cli(&["show", "nope"])), Some(EXIT_NOT_FOUND));
    assert_eq!(code(&t.cli(&["create", "a"])), Some(EXIT_EXISTS));
    assert_eq!(code(&t.cli(&["purge", "a"])), Some(EXIT_REFUSED));
    assert_eq!(code(&t.cli(&["restore", "a"])), Some(EXIT_REFUSED));
    assert_eq!(code(&t.cli(&["create", "a/b"])), Some(EXIT_USAGE));
    assert_eq!(code(&t.cli(&["frobnicate"])), Some(EXIT_USAGE));
    let bare = TempStore::bare();
    assert_eq!(code(&bare.cli(&["list"])), Some(EXIT_NO_STORE));

    // fsck's findings are not an ordinary failure.
    let gone = t.show("a")["path"].as_str().unwrap().to_string();
    std::fs::remove_dir(&gone).unwrap();
    assert_eq!(code(&t.cli(&["fsck"])), Some(EXIT_PROBLEMS));
    assert_eq!(code(&t.cli(&["fsck", "--json"])), Some(EXIT_PROBLEMS));
}

#[test]
fn a_locked_store_is_busy() {
    let t = TempStore::new();
    let conn = rusqlite::Connection::open(t.path().join("vfolders.db")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let o = t.cli(&["create", "late"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), Some(EXIT_BUSY), "{err}");
    conn.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn an_unreadable_database_is_unavailable_and_named() {
    let t = TempStore::bare();
    std::fs::create_dir_all(t.path()).unwrap();
    let db = t.path().join("vfolders.db");
    std::fs::write(&db, b"this is not a database, not at all; ".repeat(200)).unwrap();
    let o = t.cli(&["list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), Some(EXIT_UNAVAILABLE), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
}

#[test]
fn errors_are_json_on_stderr_under_json() {
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    let o = t.cli(&["create", "a", "--json"]);
    assert_eq!(code(&o), Some(EXIT_EXISTS));
    assert!(o.stdout.is_empty());
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(e["error"]["kind"], "exists");
    assert_eq!(e["error"]["vfolder"], "a");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    let o = t.cli(&["show", "nope", "--json"]);
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(e["error"]["kind"], "not_found");

    let o = t.cli(&["purge", "a", "--json"]);
    assert_eq!(code(&o), Some(EXIT_REFUSED));
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(e["error"]["kind"], "refused");
    assert_eq!(e["error"]["vfolder"], "a");

    let o = t.cli(&["list", "--json", "--bogus"]);
    assert_eq!(code(&o), Some(EXIT_USAGE));
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(e["error"]["kind"], "usage");
    assert_eq!(e["error"]["vfolder"], Value::Null);
}

fn json_ok(t: &TempStore, args: &[&str]) -> Value {
    let out = t.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

#[test]
fn mutating_commands_print_the_result_as_json() {
    let t = TempStore::bare();
    let init = json_ok(&t, &["init", "--json"]);
    assert_eq!(init["created"], true);
    assert!(init["id"].is_string());
    assert_eq!(json_ok(&t, &["init", "--json"])["created"], false);

    let v = json_ok(&t, &["create", "a", "--json"]);
    assert_eq!(
        (v["name"].as_str(), v["status"].as_str()),
        (Some("a"), Some("ready"))
    );
    assert_eq!(v["opens"], 0);
    assert_eq!(v["attachments"], serde_json::json!([]));
    std::fs::write(format!("{}/f", v["path"].as_str().unwrap()), b"data").unwrap();

    let v = json_ok(&t, &["rename", "a", "b", "--json"]);
    assert_eq!(v["name"], "b");
    let c = json_ok(&t, &["clone", "b", "c", "--json"]);
    assert_eq!(
        (c["name"].as_str(), c["status"].as_str()),
        (Some("c"), Some("ready"))
    );
    let vol = t.dir.path().join("vol2");
    let added = json_ok(
        &t,
        &["volume", "add", "v2", vol.to_str().unwrap(), "--json"],
    );
    assert_eq!(added["name"], "v2");
    let r = json_ok(&t, &["relocate", "c", "--to", "v2", "--json"]);
    assert_eq!(
        (r["volume"].as_str(), r["status"].as_str()),
        (Some("v2"), Some("ready"))
    );

    let d = json_ok(&t, &["delete", "b", "--json"]);
    assert_eq!(
        (d["status"].as_str(), d["trash_name"].as_str()),
        (Some("delete-pending"), Some("b"))
    );
    let r = json_ok(&t, &["restore", "b", "--as", "b2", "--json"]);
    assert_eq!(
        (r["name"].as_str(), r["status"].as_str()),
        (Some("b2"), Some("ready"))
    );
    json_ok(&t, &["delete", "b2", "--json"]);
    let p = json_ok(&t, &["purge", "b2", "--json"]);
    assert_eq!(p["status"], "delete-complete");
    let g = json_ok(&t, &["gc", "--older-than", "0", "--json"]);
    assert_eq!(g.as_array().map(Vec::len), Some(1));
    assert_eq!(
        json_ok(&t, &["detach", "--session", "s", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn messages_say_what_to_do_next() {
    let t = TempStore::new();
    t.ok(&["create", "scratch"]);
    t.ok(&["delete", "scratch"]);
    t.ok(&["create", "scratch"]);
    let err = t.fails(&["restore", "scratch"]);
    assert!(err.contains("--as NEW"), "{err}");

    t.ok(&["create", "datasets"]);
    let err = t.fails(&["purge", "datasets"]);
    assert!(err.contains("vfolderfs delete datasets"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let mp = t.dir.path().join("no-such-dir");
    let o = t.cli(&["mount", mp.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(mp.to_str().unwrap()), "{err}");
}

#[test]
fn show_spells_out_attachments_and_opens() {
    let t = TempStore::new();
    t.ok(&["create", "a"]);
    let out = t.ok(&["show", "a"]);
    let line = out.lines().find(|l| l.starts_with("attachments")).unwrap();
    assert!(line.ends_with(" none"), "{out}");
    assert!(!out.contains('['), "raw JSON in the table: {out}");
    assert_eq!(t.show("a")["opens"], 0);
    let list = t.ok(&["list"]);
    let head = list.lines().next().unwrap();
    assert!(
        head.contains("VOLUME") && head.contains("STATUS CHANGED"),
        "{list}"
    );
}

#[test]
fn new_names_have_no_edge_spaces_and_no_leading_dash() {
    let t = TempStore::new();
    for bad in [" a", "a ", "\ta", "-x", "--", " "] {
        let o = t.cli(&["create", "--", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), Some(EXIT_USAGE), "{bad:?}: {err}");
        assert!(err.contains("invalid vfolder name"), "{bad:?}: {err}");
    }
    t.ok(&["create", "ok-name "[..7].trim()]);
    assert_eq!(
        code(&t.cli(&["rename", "ok-name", "--", "-y"])),
        Some(EXIT_USAGE)
    );
    assert_eq!(code(&t.cli(&["clone", "ok-name", " c"])), Some(EXIT_USAGE));
    t.ok(&["delete", "ok-name"]);
    assert_eq!(
        code(&t.cli(&["restore", "ok-name", "--as", "c "])),
        Some(EXIT_USAGE)
    );
    let list: Value = serde_json::from_str(&t.ok(&["list", "--all", "--json"])).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "refused names wrote nothing"
    );
}

#[test]
fn completions_and_manual_page() {
    let t = TempStore::new();
    for sh in ["bash", "zsh", "fish"] {
        let out = t.ok(&["completions", sh]);
        assert!(out.contains("vfolderfs") && out.contains("restore"), "{sh}");
    }
    let man = t.ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH vfolderfs"),
        "{man}"
    );
    let dir = t.dir.path().join("man1");
    t.ok(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(dir.join("vfolderfs.1").is_file());
    assert!(dir.join("vfolderfs-restore.1").is_file());
}
