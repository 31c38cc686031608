//! Small-file reads as a data loader makes them (open, read, close, many
//! files): what each costs in FUSE requests, and that the kernel-passthrough
//! backing id an inode's readers share is right for every one of them.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::{Mount, TempStore, eventually};

/// The request counters of a mount's metrics (`op` → count), read from its
/// unix-socket listener.
fn requests(sock: &Path) -> std::collections::HashMap<String, u64> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter_map(|l| l.strip_prefix("vfolderfs_requests_total{op=\""))
        .filter_map(|l| {
            let (op, rest) = l.split_once("\"} ")?;
            Some((op.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// Opens, reads and closes `path` the way a loader's `os.open`/`os.read`
/// does: no `stat` of the open file.
fn read_once(path: &Path) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        out.extend_from_slice(&buf[..k]);
    }
    out
}

#[test]
fn a_warm_small_file_read_costs_one_open_and_one_release() {
    let t = TempStore::new();
    t.ok(&["create", "data"]);
    let sock = t.dir.path().join("metrics.sock");
    let m = Mount::on(
        t,
        &["-o", &format!("metrics_listen=unix:{}", sock.display())],
    );
    let n = 200u64;
    let blob: Vec<u8> = (0..32 * 1024).map(|i| (i % 251) as u8).collect();
    for i in 0..n {
        fs::write(m.p(&format!("data/f{i}")), &blob).unwrap();
    }
    // A first epoch: names and attributes cached, FLUSH answered once.
    for i in 0..n {
        assert!(read_once(&m.p(&format!("data/f{i}"))) == blob, "f{i}");
    }
    // Releases reach the daemon after close() returns: counted once every
    // open and create has its release.
    let settled = || {
        let mut now = requests(&sock);
        let n =
            |r: &std::collections::HashMap<String, u64>, op: &str| r.get(op).copied().unwrap_or(0);
        assert!(eventually(Duration::from_secs(10), || {
            now = requests(&sock);
            n(&now, "release") == n(&now, "open") + n(&now, "create")
        }));
        now
    };
    let before = settled();
    for i in 0..n {
        assert!(read_once(&m.p(&format!("data/f{i}"))) == blob, "f{i}");
    }
    let after = settled();
    let delta =
        |op: &str| after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0);
    assert_eq!(delta("open"), n, "one OPEN per file");
    assert_eq!(delta("release"), n, "one RELEASE per file");
    for op in ["lookup", "getattr", "flush", "read"] {
        assert_eq!(delta(op), 0, "no {op} for a warm open/read/close");
    }
}

#[test]
fn a_shared_backing_id_outlives_its_first_opener() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && dd if=/dev/urandom of=v/f bs=64k count=16 status=none");
    let want = fs::read(m.p("v/f")).unwrap();
    // Two readers of one inode share its backing id.
    let mut first = fs::File::open(m.p("v/f")).unwrap();
    let mut second = fs::File::open(m.p("v/f")).unwrap();
    let mut head = vec![0u8; 4096];
    first.read_exact(&mut head).unwrap();
    assert_eq!(head, want[..4096]);
    // The first closes (its release reaches the daemon); the second reads
    // on through the backing file the kernel still holds.
    drop(first);
    std::thread::sleep(Duration::from_millis(50));
    let mut rest = Vec::new();
    second.read_to_end(&mut rest).unwrap();
    assert!(rest == want, "the second reader read the file");
    // A third reader shares the id the second still holds.
    assert!(
        read_once(&m.p("v/f")) == want,
        "the third reader read the file"
    );
    drop(second);
    // With the last reader gone the id is released: a writer is no longer
    // refused (until then it would get ETXTBSY, README).
    assert!(eventually(Duration::from_secs(5), || {
        fs::OpenOptions::new().write(true).open(m.p("v/f")).is_ok()
    }));
}

#[test]
fn a_file_replaced_by_rename_is_read_fresh() {
    let m = Mount::new(&[]);
    m.sh_ok("mkdir v && printf old > v/f");
    assert_eq!(read_once(&m.p("v/f")), b"old");
    // A reader holds the old inode while a new file replaces its name.
    let mut held = fs::File::open(m.p("v/f")).unwrap();
    fs::write(m.p("v/g"), b"new, and longer").unwrap();
    fs::rename(m.p("v/g"), m.p("v/f")).unwrap();
    assert_eq!(read_once(&m.p("v/f")), b"new, and longer");
    assert_eq!(fs::read(m.p("v/f")).unwrap(), b"new, and longer");
    // The old handle reads the old inode, as natively.
    let mut old = Vec::new();
    held.read_to_end(&mut old).unwrap();
    assert_eq!(old, b"old");
    drop(held);
    // Rewritten in place (same inode) after being read: read fresh too.
    fs::write(m.p("v/f"), b"rewritten").unwrap();
    assert_eq!(read_once(&m.p("v/f")), b"rewritten");
}
