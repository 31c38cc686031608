//! The mount's Prometheus metrics, read the ways a collector reads them (the
//! textfile written atomically, HTTP on a unix socket and on a loopback
//! port) and parsed with a Prometheus text-format parser.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::{Mount, TempStore, errno, eventually};
use prometheus_parse::{Scrape, Value};

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of `name` with exactly these labels (0 if absent).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .sum()
}

fn http_get(stream: &mut dyn ReadWrite, path: &str) -> (String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn scrape_unix(sock: &Path) -> Scrape {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let (head, body) = http_get(&mut s, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    parse(&body)
}

#[test]
fn metrics_count_requests_errors_refusals_status_changes_and_handles() {
    let t = TempStore::new();
    t.ok(&["create", "hot"]);
    t.ok(&["create", "gone"]);
    let file = t.dir.path().join("vfolderfs.prom");
    let sock = t.dir.path().join("metrics.sock");
    let opts = format!(
        "metrics_file={},metrics_listen=unix:{}",
        file.display(),
        sock.display()
    );
    let m = Mount::on(t, &["-o", &opts]);
    // Requests and an open handle.
    std::fs::write(m.p("hot/a"), b"data").unwrap();
    let held = std::fs::File::open(m.p("hot/a")).unwrap();
    // A miss and a refusal by status: a write into a trashed vfolder.
    assert!(std::fs::metadata(m.p("hot/missing")).is_err());
    m.store.ok(&["delete", "gone"]);
    let e = std::fs::write(m.p(".trash/gone/x"), b"no").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);

    let s = scrape_unix(&sock);
    assert!(value(&s, "vfolderfs_requests_total", &[("op", "write")]) >= 1.0);
    assert!(value(&s, "vfolderfs_requests_total", &[("op", "lookup")]) >= 1.0);
    assert!(
        value(
            &s,
            "vfolderfs_request_errors_total",
            &[("op", "lookup"), ("errno", "ENOENT")]
        ) >= 1.0
    );
    assert!(
        value(
            &s,
            "vfolderfs_request_errors_total",
            &[("op", "create"), ("errno", "EROFS")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &s,
            "vfolderfs_writes_refused_total",
            &[("status", "delete-pending")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "vfolderfs_writes_refused_total", &[("status", "ready")]),
        0.0
    );
    // The delete was applied by this mount (the CLI waited for it).
    assert!(value(&s, "vfolderfs_status_changes_applied_total", &[]) >= 1.0);
    let count = s
        .samples
        .iter()
        .find(|x| x.metric == "vfolderfs_status_change_delay_seconds")
        .map(|x| match &x.value {
            Value::Histogram(h) => h.last().map(|b| b.count).unwrap_or(0.0),
            _ => panic!("not a histogram"),
        })
        .expect("the delay histogram");
    assert!(count >= 1.0);
    assert_eq!(
        value(&s, "vfolderfs_open_handles", &[("vfolder", "hot")]),
        1.0
    );
    assert_eq!(value(&s, "vfolderfs_store_up", &[]), 1.0);
    assert!(value(&s, "vfolderfs_store_last_success_timestamp_seconds", &[]) > 1.7e9);
    assert!(value(&s, "vfolderfs_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&s, "vfolderfs_open_fds", &[]) > 0.0);
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric == "vfolderfs_jobs_queued")
    );
    drop(held);
    assert!(eventually(Duration::from_secs(20), || {
        value(
            &scrape_unix(&sock),
            "vfolderfs_open_handles",
            &[("vfolder", "hot")],
        ) == 0.0
    }));

    // The textfile: complete at every moment (renamed into place), and
    // rewritten every few seconds.
    let first = std::fs::read_to_string(&file).unwrap();
    let f = parse(&first);
    assert!(value(&f, "vfolderfs_store_up", &[]) == 1.0);
    assert!(eventually(Duration::from_secs(30), || {
        let now = parse(&std::fs::read_to_string(&file).unwrap());
        value(&now, "vfolderfs_requests_total", &[("op", "write")]) >= 1.0
            && value(
                &now,
                "vfolderfs_writes_refused_total",
                &[("status", "delete-pending")],
            ) == 1.0
    }));
    let left: Vec<_> = std::fs::read_dir(m.store.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    drop(m);
}

#[test]
fn the_http_listener_serves_on_loopback_only() {
    let t = TempStore::new();
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = t.cli(&[
        "mount",
        mnt.to_str().unwrap(),
        "-o",
        "metrics_listen=0.0.0.0:9",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let m = Mount::on(t, &["-o", &format!("metrics_listen=127.0.0.1:{port}")]);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (head, body) = http_get(&mut c, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let s = parse(&body);
    let types: HashMap<_, _> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(types.get("vfolderfs_requests_total"), Some(&"counter"));
    assert_eq!(
        types.get("vfolderfs_status_change_delay_seconds"),
        Some(&"histogram")
    );
    assert!(value(&s, "vfolderfs_store_up", &[]) == 1.0);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (head, _) = http_get(&mut c, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop(m);
}

#[test]
fn job_progress_and_completion_are_visible() {
    let t = TempStore::new();
    t.ok(&["create", "big"]);
    let path = t.show("big")["path"].as_str().unwrap().to_string();
    for i in 0..300 {
        std::fs::write(Path::new(&path).join(format!("f{i}")), b"x").unwrap();
    }
    let sock = t.dir.path().join("metrics.sock");
    let opts = format!("metrics_listen=unix:{}", sock.display());
    // Each removed entry waits 20 ms: the purge is caught in the middle.
    let m = Mount::on_env(
        t,
        &["-o", &opts],
        &[("VFOLDERFS_PURGE_THROTTLE_US", "20000")],
    );
    m.store.ok(&["delete", "big"]);
    m.store.ok(&["purge", "big", "--no-wait"]);
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = scrape_unix(&sock);
            value(&s, "vfolderfs_job_entries_done", &[("kind", "purge")]) > 0.0
                && value(&s, "vfolderfs_jobs_queued", &[]) >= 1.0
        }),
        "the purge's progress never showed"
    );
    assert!(
        eventually(Duration::from_secs(120), || {
            value(&scrape_unix(&sock), "vfolderfs_jobs_completed_total", &[]) >= 1.0
        }),
        "the purge never completed"
    );
    let s = scrape_unix(&sock);
    assert_eq!(value(&s, "vfolderfs_jobs_queued", &[]), 0.0);
    assert!(
        !s.samples
            .iter()
            .any(|x| x.metric == "vfolderfs_job_entries_done")
    );
}
