//! Long jobs seen and controlled from the CLI (issue 16, section 2): progress
//! lines with totals and a final line, `vfolderfs wait` following a job run
//! by another process, `vfolderfs cancel` and Ctrl-C ending a clone, a
//! relocation or a purge the documented way, and the sizes `list`/`show`
//! print.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TempStore, Tmpfs, bin, eventually};
use serde_json::Value;

const THROTTLE: &str = "VFOLDERFS_PURGE_THROTTLE_US";

fn path_of(t: &TempStore, name: &str) -> PathBuf {
    PathBuf::from(t.show(name)["path"].as_str().unwrap())
}

fn status(t: &TempStore, name: &str) -> String {
    t.show(name)["status"].as_str().unwrap().to_string()
}

/// `n` small files under `dir/d`.
fn fill(dir: &Path, n: usize) {
    fs::create_dir_all(dir.join("d")).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("d/f{i}")), format!("file {i}\n")).unwrap();
    }
}

/// Starts `vfolderfs --store S args` in the background, output captured.
fn spawn(t: &TempStore, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin());
    c.arg("--store")
        .arg(t.path())
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("spawn vfolderfs")
}

/// The `jobs --json` row of vfolder `name`.
fn job_row(t: &TempStore, name: &str) -> Option<Value> {
    let all: Value = serde_json::from_str(&t.ok(&["jobs", "--json"])).unwrap();
    all.as_array()?
        .iter()
        .find(|r| r["vfolder"] == name)
        .cloned()
}

/// Waits until the job on `name` runs and has done some work.
fn until_running(t: &TempStore, name: &str) {
    assert!(
        eventually(Duration::from_secs(30), || {
            job_row(t, name)
                .is_some_and(|r| r["state"] == "running" && r["done"].as_u64().unwrap_or(0) > 0)
        }),
        "the job on {name} never ran: {:?}",
        job_row(t, name)
    );
}

/// Waits for a background CLI to end; its exit status and stderr.
fn finish(c: Child) -> (i32, String, String) {
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn fsck_clean(t: &TempStore) {
    let o = t.cli(&["fsck"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "fsck: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn history_causes(t: &TempStore, name: &str) -> String {
    t.ok(&["history", name, "--json"])
}

#[test]
fn wait_follows_a_job_of_another_process_to_its_end() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    fill(&path_of(&t, "src"), 300);
    let clone = spawn(&t, &["clone", "src", "dst"], &[(THROTTLE, "10000")]);
    until_running(&t, "dst");
    let o = t.cli(&["wait", "dst", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let end: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(end["outcome"], "completed", "{end}");
    assert_eq!(end["kind"], "clone");
    assert_eq!(end["vfolder"], "dst");
    assert_eq!(end["status"], "ready", "{end}");
    assert!(end["entries"].as_u64().unwrap() > 0, "{end}");
    for k in ["vfolder_id", "bytes", "elapsed_s", "error", "volume"] {
        assert!(end.get(k).is_some(), "no {k} in {end}");
    }
    // Wait returned at the end: the clone is ready now, not later.
    assert_eq!(status(&t, "dst"), "ready");
    assert_eq!(status(&t, "src"), "ready");
    let (code, _, _) = finish(clone);
    assert_eq!(code, 0);
    // Nothing to wait for any more.
    assert_eq!(t.cli(&["wait", "dst"]).status.code(), Some(5));
}

#[test]
fn cancel_of_a_clone_rolls_it_back() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    let src = path_of(&t, "src");
    fill(&src, 400);
    let clone = spawn(&t, &["clone", "src", "dst"], &[(THROTTLE, "20000")]);
    until_running(&t, "dst");
    let dst_id = t.show("dst")["id"].as_str().unwrap().to_string();
    let o = t.cli(&["cancel", "src", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let end: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(end["outcome"], "cancelled", "{end}");
    let (code, _, err) = finish(clone);
    assert_eq!(code, 12, "the cancelled clone's exit status: {err}");
    assert!(err.contains("cancelled by `vfolderfs cancel`"), "{err}");
    // The source is ready and whole; the partial target purged.
    assert_eq!(status(&t, "src"), "ready");
    assert_eq!(fs::read_dir(src.join("d")).unwrap().count(), 400);
    assert!(eventually(Duration::from_secs(20), || {
        status(&t, &dst_id) == "delete-complete"
    }));
    assert!(history_causes(&t, &dst_id).contains("clone cancelled by `vfolderfs cancel`"));
    fsck_clean(&t);
}

#[test]
fn cancel_of_a_relocation_rolls_it_back() {
    let t = TempStore::new();
    let other = Tmpfs::new(&t, "other", "64m");
    t.ok(&["volume", "add", "other", other.0.to_str().unwrap()]);
    t.ok(&["create", "v"]);
    let old = path_of(&t, "v");
    fill(&old, 400);
    let reloc = spawn(
        &t,
        &["relocate", "v", "--to", "other"],
        &[(THROTTLE, "20000")],
    );
    until_running(&t, "v");
    let o = t.cli(&["cancel", "v"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (code, _, err) = finish(reloc);
    assert_eq!(code, 12, "{err}");
    let v = t.show("v");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["volume"], "default", "{v}");
    // The old copy is whole; the partial new one is gone.
    assert_eq!(fs::read_dir(old.join("d")).unwrap().count(), 400);
    let left: Vec<_> = walk(&other.0);
    assert!(left.is_empty(), "left on the target volume: {left:?}");
    assert!(history_causes(&t, "v").contains("cancelled by `vfolderfs cancel`"));
    fsck_clean(&t);
}

/// Regular files and symlinks below `root` (directories do not count: the
/// volume's own fan-out directories stay; nor does its identity marker).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            } else if e.path() != root.join(".vfolderfs-volume") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn cancel_of_a_purge_stops_it_resumably() {
    let t = TempStore::new();
    t.ok(&["create", "p"]);
    let id = t.show("p")["id"].as_str().unwrap().to_string();
    let dir = path_of(&t, "p");
    fill(&dir, 400);
    t.ok(&["delete", "p"]);
    let purge = spawn(&t, &["purge", &id], &[(THROTTLE, "20000")]);
    until_running(&t, "p");
    let o = t.cli(&["cancel", &id]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (code, _, err) = finish(purge);
    assert_eq!(code, 12, "{err}");
    // Stopped part way: delete-ongoing, some data left, a cancelled job.
    assert_eq!(status(&t, &id), "delete-ongoing");
    assert!(dir.join("d").exists());
    let left = fs::read_dir(dir.join("d")).unwrap().count();
    assert!(left > 0 && left < 400, "{left} left");
    let row = job_row(&t, "p").expect("the stopped job stays recorded");
    assert_eq!(row["state"], "cancelled", "{row}");
    assert!(
        row["cancel_requested_by"]
            .as_str()
            .unwrap()
            .contains("vfolderfs cancel")
    );
    fsck_clean(&t);
    // `wait` on it reports the cancellation.
    assert_eq!(t.cli(&["wait", &id]).status.code(), Some(12));
    // An explicit purge resumes it to its end.
    t.ok(&["purge", &id]);
    assert_eq!(status(&t, &id), "delete-complete");
    assert!(!dir.exists());
    fsck_clean(&t);
}

#[test]
fn cancel_of_a_job_nobody_runs_ends_it_here() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    fill(&path_of(&t, "src"), 10);
    // Queued for a mount's pool; no mount runs.
    t.ok(&["clone", "src", "dst", "--no-wait"]);
    let dst_id = t.show("dst")["id"].as_str().unwrap().to_string();
    assert_eq!(job_row(&t, "dst").unwrap()["state"], "queued");
    t.ok(&["cancel", "dst"]);
    assert_eq!(status(&t, "src"), "ready");
    assert_eq!(status(&t, &dst_id), "delete-complete");
    fsck_clean(&t);
    // No job left to cancel.
    assert_eq!(t.cli(&["cancel", "src"]).status.code(), Some(5));
}

#[test]
fn sigint_on_a_foreground_clone_rolls_it_back() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    fill(&path_of(&t, "src"), 400);
    let clone = spawn(&t, &["clone", "src", "dst"], &[(THROTTLE, "20000")]);
    until_running(&t, "dst");
    let dst_id = t.show("dst")["id"].as_str().unwrap().to_string();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(clone.id() as i32, libc::SIGINT) }, 0);
    let (code, _, err) = finish(clone);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("cancelled by SIGINT"), "{err}");
    assert_eq!(status(&t, "src"), "ready");
    // The interrupted CLI purged its partial target before it exited.
    assert_eq!(status(&t, &dst_id), "delete-complete");
    assert!(history_causes(&t, &dst_id).contains("clone cancelled by SIGINT"));
    fsck_clean(&t);
}

/// `"N entries, SIZE (B bytes) in T s"` of a final progress line.
fn final_numbers(line: &str) -> (u64, u64) {
    let after = line.rsplit(": ").next().unwrap();
    let entries: u64 = after.split(' ').next().unwrap().parse().unwrap();
    let bytes: u64 = after
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after.ends_with('s') && after.contains(" in "), "{line}");
    (entries, bytes)
}

#[test]
fn progress_lines_when_not_a_terminal_and_a_final_line() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    fill(&path_of(&t, "src"), 200);
    let env = [(THROTTLE, "5000"), ("VFOLDERFS_PROGRESS_INTERVAL", "100ms")];
    let c = spawn(&t, &["clone", "src", "dst"], &env);
    let (code, _, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    // Periodic lines against the counted totals: 201 entries (d and 200 files).
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/201 entries") && l.contains('%') && l.contains("ETA")),
        "{err}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("cloning \"src\" into \"dst\": done: "),
        "{err}"
    );
    let (entries, bytes) = final_numbers(last);
    assert_eq!(entries, 201);
    let expect: u64 = (0..200).map(|i| format!("file {i}\n").len() as u64).sum();
    assert_eq!(bytes, expect);

    // A relocation by rename names itself and what it moved.
    let same = t.dir.path().join("same");
    t.ok(&["volume", "add", "same", same.to_str().unwrap()]);
    let o = t.cli(&["relocate", "dst", "--to", "same"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.contains("moved by rename"), "{err}");
    assert_eq!(final_numbers(last), (201, expect), "{err}");
}

#[test]
fn the_byte_count_moves_within_one_large_file() {
    let t = TempStore::new();
    let fast = Tmpfs::new(&t, "fast", "512m");
    t.ok(&["volume", "add", "fast", fast.0.to_str().unwrap()]);
    t.ok(&["create", "big", "--volume", "fast"]);
    let size: u64 = 192 << 20;
    let f = fs::File::create(path_of(&t, "big").join("blob")).unwrap();
    // Data, not a hole: written in 1 MiB pieces.
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let piece = vec![7u8; 1 << 20];
        for _ in 0..(size >> 20) {
            w.write_all(&piece).unwrap();
        }
    }
    // 300 ms after each 64 MiB chunk (and entry); a line every 50 ms.
    let env = [
        (THROTTLE, "300000"),
        ("VFOLDERFS_PROGRESS_INTERVAL", "50ms"),
    ];
    let c = spawn(&t, &["clone", "big", "copy"], &env);
    let (code, _, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    // Some line shows part of the file copied (64 or 128 of 192 MiB).
    assert!(
        err.lines()
            .any(|l| l.contains("64.0 MiB/192.0 MiB") || l.contains("128.0 MiB/192.0 MiB")),
        "{err}"
    );
    let (entries, bytes) = final_numbers(err.lines().last().unwrap());
    assert_eq!((entries, bytes), (1, size));
}

#[test]
fn json_shapes_of_jobs_list_and_show() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    fill(&path_of(&t, "src"), 300);
    let clone = spawn(&t, &["clone", "src", "dst"], &[(THROTTLE, "10000")]);
    until_running(&t, "dst");
    assert!(eventually(Duration::from_secs(10), || {
        job_row(&t, "dst").is_some_and(|r| r["total_entries"] == 301)
    }));
    let row = job_row(&t, "dst").unwrap();
    for k in [
        "vfolder",
        "vfolder_id",
        "status",
        "kind",
        "state",
        "owner",
        "started_at",
        "done",
        "bytes",
        "total_entries",
        "total_bytes",
        "cancel_requested_by",
        "resumed",
    ] {
        assert!(row.get(k).is_some(), "no {k} in {row}");
    }
    assert_eq!(row["kind"], "clone");
    assert!(row["cancel_requested_by"].is_null());
    let shown = t.show("src");
    assert_eq!(shown["job"]["total_entries"], 301, "{shown}");
    let (code, _, _) = finish(clone);
    assert_eq!(code, 0);

    // Sizes: recorded at the clone's end, for both.
    let list: Value = serde_json::from_str(&t.ok(&["list", "--json"])).unwrap();
    for v in list.as_array().unwrap() {
        assert_eq!(v["size"]["files"], 301, "{v}");
        assert!(v["size"]["bytes"].as_u64().unwrap() > 0);
        assert!(v["size"]["measured_at"].is_string());
    }
    // Unknown until measured; `show --size` measures.
    t.ok(&["create", "fresh"]);
    fill(&path_of(&t, "fresh"), 3);
    assert!(t.show("fresh")["size"].is_null());
    let s: Value = serde_json::from_str(&t.ok(&["show", "fresh", "--size", "--json"])).unwrap();
    assert_eq!(s["size"]["files"], 4, "{s}");
    // A trash entry: when it was deleted, when retention purges it.
    t.ok(&["retention", "7d"]);
    t.ok(&["delete", "fresh"]);
    let all: Value = serde_json::from_str(&t.ok(&["list", "--all", "--json"])).unwrap();
    let trashed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "fresh")
        .unwrap();
    let deleted = trashed["deleted_at"].as_str().unwrap();
    let purge = trashed["purge_after"].as_str().unwrap();
    let secs = |s: &str| {
        humantime::parse_rfc3339(s)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert_eq!(secs(purge) - secs(deleted), 7 * 86400);
    assert_eq!(trashed["size"]["files"], 4);
    // The table: size columns, and PURGE AFTER once trash is listed.
    let table = t.ok(&["list", "--all"]);
    let head = table.lines().next().unwrap();
    assert!(
        head.contains("SIZE") && head.contains("FILES") && head.contains("PURGE AFTER"),
        "{table}"
    );
    let line = table.lines().find(|l| l.starts_with("fresh")).unwrap();
    assert!(line.contains(purge), "{table}");
    assert!(
        !t.ok(&["list"])
            .lines()
            .next()
            .unwrap()
            .contains("PURGE AFTER")
    );
}

#[test]
fn wait_and_cancel_reach_jobs_of_a_mounts_pool() {
    let t = TempStore::new();
    t.ok(&["create", "src"]);
    fill(&path_of(&t, "src"), 300);
    t.ok(&["create", "p"]);
    let pid = t.show("p")["id"].as_str().unwrap().to_string();
    fill(&path_of(&t, "p"), 150);
    t.ok(&["delete", "p"]);
    t.ok(&["create", "q"]);
    let qid = t.show("q")["id"].as_str().unwrap().to_string();
    let qdir = path_of(&t, "q");
    fill(&qdir, 400);
    t.ok(&["delete", "q"]);
    let m = common::Mount::on_env(t, &[], &[(THROTTLE, "20000")]);
    let t = &m.store;
    // A purge run by the pool: wait follows it to its end.
    t.ok(&["purge", &pid, "--no-wait"]);
    until_running(t, "p");
    let o = t.cli(&["wait", &pid, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let end: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(end["outcome"], "completed", "{end}");
    assert_eq!(end["status"], "delete-complete", "{end}");
    // A clone run by the pool: cancel rolls it back there.
    t.ok(&["clone", "src", "dst", "--no-wait"]);
    let dst_id = t.show("dst")["id"].as_str().unwrap().to_string();
    until_running(t, "dst");
    let o = t.cli(&["cancel", "dst", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let end: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(end["outcome"], "cancelled", "{end}");
    assert_eq!(status(t, "src"), "ready");
    // The pool purges the partial target.
    assert!(eventually(Duration::from_secs(30), || {
        status(t, &dst_id) == "delete-complete"
    }));
    assert!(!m.p("dst").exists());
    fsck_clean(t);
    // A purge the pool runs, cancelled: it stops, and the pool (which scans
    // every second) does not take it up again by itself.
    t.ok(&["purge", &qid, "--no-wait"]);
    until_running(t, "q");
    t.ok(&["cancel", &qid]);
    assert_eq!(job_row(t, "q").unwrap()["state"], "cancelled");
    let left = fs::read_dir(qdir.join("d")).unwrap().count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(t, &qid), "delete-ongoing");
    assert_eq!(fs::read_dir(qdir.join("d")).unwrap().count(), left);
    fsck_clean(t);
    // Resumed explicitly, here.
    t.ok(&["purge", &qid]);
    assert_eq!(status(t, &qid), "delete-complete");
}

/// The store contract the CLI relies on (and another backend must keep):
/// progress, totals and a cancellation request belong to one job row and
/// go with it; only the owner records totals; a request needs a job.
#[test]
fn job_progress_and_cancel_go_with_their_job_row() {
    use vfolderfs::catalog::Catalog;
    use vfolderfs::layout::Layout;
    use vfolderfs::store::Store;
    let t = TempStore::new();
    t.ok(&["create", "v"]);
    let cat = Catalog::open(Layout::new(t.path())).unwrap();
    let store: &dyn Store = cat.store().as_ref();
    let id = t.show("v")["id"].as_str().unwrap().to_string();
    let alive = |_: &str| false;
    let lease = Duration::from_secs(60);
    assert!(!store.set_job_cancel(&id, Some("x")).unwrap(), "no job yet");
    store
        .claim_job(&id, "purge", "A", lease, &alive)
        .unwrap()
        .unwrap();
    assert!(store.renew_job(&id, "A", lease, 5, 500).unwrap());
    assert!(
        !store.set_job_totals(&id, "B", 9, 900).unwrap(),
        "not B's job"
    );
    assert!(store.set_job_totals(&id, "A", 10, 1000).unwrap());
    assert!(store.set_job_cancel(&id, Some("someone")).unwrap());
    let j = store.job(&id).unwrap().unwrap();
    assert_eq!((j.done, j.bytes, j.total), (5, 500, Some((10, 1000))));
    assert_eq!(j.cancel.as_deref(), Some("someone"));
    // Released (not finished): all kept, for the next owner and for `jobs`.
    store.release_job(&id, "A", false).unwrap();
    let j = store.job(&id).unwrap().unwrap();
    assert_eq!(j.cancel.as_deref(), Some("someone"));
    // Withdrawn by an explicit resume.
    assert!(store.set_job_cancel(&id, None).unwrap());
    assert_eq!(store.job(&id).unwrap().unwrap().cancel, None);
    // Finished: the next job on the vfolder starts clean.
    store.set_job_cancel(&id, Some("someone")).unwrap();
    store
        .claim_job(&id, "purge", "A", lease, &alive)
        .unwrap()
        .unwrap();
    store.release_job(&id, "A", true).unwrap();
    store
        .claim_job(&id, "clone", "C", lease, &alive)
        .unwrap()
        .unwrap();
    let j = store.job(&id).unwrap().unwrap();
    assert_eq!((j.bytes, j.total, j.cancel), (0, None, None));
    // Sizes: recorded, replaced, per vfolder.
    store.record_size(&id, 10, 2).unwrap();
    store.record_size(&id, 20, 3).unwrap();
    store.record_size("no-such-vfolder", 1, 1).unwrap();
    let sizes = store.sizes().unwrap();
    assert_eq!(sizes.len(), 1);
    assert_eq!((sizes[&id].bytes, sizes[&id].files), (20, 3));
}
