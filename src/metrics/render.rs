//! The Prometheus text format (version 0.0.4) of a mount's metrics.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::counters::*;
use crate::fs::vfolders::Registry;
use crate::status::Status;
use crate::store::Store;
use crate::workers::pool::JobPool;

/// What the render reads besides the static counters.
pub struct Sources<'a> {
    /// The mount's vfolder states (open handles, store health).
    pub reg: &'a Registry,
    /// The background job pool (queue depth, running, completed).
    pub pool: &'a JobPool,
    /// The store, for the progress of this process's jobs.
    pub store: &'a dyn Store,
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The symbolic name of an errno, for the `errno` label.
pub fn errno_name(e: usize) -> String {
    let n = match e as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        libc::ENXIO => "ENXIO",
        0 => "other",
        _ => return format!("E{e}"),
    };
    n.to_string()
}

/// Resident memory in bytes and open file descriptors of this process.
fn process() -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * page;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

/// Renders every metric.
pub fn render(src: &Sources<'_>) -> String {
    let mut out = String::with_capacity(8192);
    requests(&mut out);
    statuses(&mut out);
    per_vfolder(&mut out, src);
    jobs(&mut out, src);
    store_and_process(&mut out, src);
    out
}

/// FUSE requests: by operation, errors by errno, those on io_uring queues.
fn requests(out: &mut String) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    head(
        out,
        "vfolderfs_requests_total",
        "counter",
        "FUSE requests received, by operation.",
    );
    for (i, op) in OPS.iter().enumerate() {
        let _ = writeln!(
            out,
            "vfolderfs_requests_total{{op=\"{op}\"}} {}",
            load(&REQUESTS[i])
        );
    }
    head(
        out,
        "vfolderfs_request_errors_total",
        "counter",
        "FUSE requests answered with an error, by operation and errno.",
    );
    for (i, op) in OPS.iter().enumerate() {
        for (e, c) in ERRORS[i].iter().enumerate() {
            let n = load(c);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "vfolderfs_request_errors_total{{op=\"{op}\",errno=\"{}\"}} {n}",
                    errno_name(e)
                );
            }
        }
    }
    head(
        out,
        "vfolderfs_uring_requests_total",
        "counter",
        "FUSE requests received on io_uring queues (the rest came on /dev/fuse).",
    );
    let _ = writeln!(
        out,
        "vfolderfs_uring_requests_total {}",
        load(&URING_REQUESTS)
    );
    head(
        out,
        "vfolderfs_uring_queues",
        "gauge",
        "io_uring queues serving requests, one per CPU (0: /dev/fuse only).",
    );
    let _ = writeln!(
        out,
        "vfolderfs_uring_queues {}",
        URING_QUEUES.load(Ordering::Relaxed)
    );
}

/// Writes refused by status, and status changes applied with their delay.
fn statuses(out: &mut String) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    head(
        out,
        "vfolderfs_writes_refused_total",
        "counter",
        "Changes refused with EROFS, by the vfolder's status.",
    );
    for s in Status::ALL {
        let _ = writeln!(
            out,
            "vfolderfs_writes_refused_total{{status=\"{}\"}} {}",
            s.as_str(),
            load(&REFUSED[s as usize])
        );
    }
    head(
        out,
        "vfolderfs_status_changes_applied_total",
        "counter",
        "Status changes (and creations) this mount applied from the store.",
    );
    let _ = writeln!(
        out,
        "vfolderfs_status_changes_applied_total {}",
        load(&STATUS_CHANGES)
    );
    head(
        out,
        "vfolderfs_status_change_delay_seconds",
        "histogram",
        "Time from a status change in the store to this mount applying it.",
    );
    let mut cum = 0;
    for (i, b) in DELAY_BUCKETS.iter().enumerate() {
        cum += load(&DELAY_COUNTS[i]);
        let _ = writeln!(
            out,
            "vfolderfs_status_change_delay_seconds_bucket{{le=\"{b}\"}} {cum}"
        );
    }
    let total = load(&STATUS_CHANGES);
    let _ = writeln!(
        out,
        "vfolderfs_status_change_delay_seconds_bucket{{le=\"+Inf\"}} {total}"
    );
    let _ = writeln!(
        out,
        "vfolderfs_status_change_delay_seconds_sum {}",
        load(&DELAY_SUM_MICROS) as f64 / 1e6
    );
    let _ = writeln!(out, "vfolderfs_status_change_delay_seconds_count {total}");
}

/// Per vfolder: open handles and the usage tiering reads.
fn per_vfolder(out: &mut String, src: &Sources<'_>) {
    head(
        out,
        "vfolderfs_open_handles",
        "gauge",
        "Files open through this mount, by vfolder (those with any).",
    );
    for (id, name, n) in src.reg.handle_counts() {
        let _ = writeln!(
            out,
            "vfolderfs_open_handles{{vfolder_id=\"{id}\",vfolder=\"{}\"}} {n}",
            escape(&name)
        );
    }
    let usage = src.reg.usage_named();
    for (metric, help, pick) in [
        (
            "vfolderfs_vfolder_opens_total",
            "Files opened through this mount since it started, by vfolder (tiering's usage).",
            0,
        ),
        (
            "vfolderfs_vfolder_read_bytes_total",
            "Bytes read through the daemon (not through kernel passthrough) since this mount started, by vfolder.",
            1,
        ),
        (
            "vfolderfs_vfolder_written_bytes_total",
            "Bytes written through this mount since it started, by vfolder.",
            2,
        ),
    ] {
        head(out, metric, "counter", help);
        for (id, name, o, r, w) in &usage {
            let n = [*o, *r, *w][pick];
            let _ = writeln!(
                out,
                "{metric}{{vfolder_id=\"{id}\",vfolder=\"{}\"}} {n}",
                escape(name)
            );
        }
    }
}

/// Background jobs in this process.
fn jobs(out: &mut String, src: &Sources<'_>) {
    head(
        out,
        "vfolderfs_jobs_queued",
        "gauge",
        "Background jobs (purges, clones, relocations) queued or running in this process.",
    );
    let _ = writeln!(out, "vfolderfs_jobs_queued {}", src.pool.depth());
    head(
        out,
        "vfolderfs_jobs_running",
        "gauge",
        "Background jobs running in this process.",
    );
    let _ = writeln!(out, "vfolderfs_jobs_running {}", src.pool.running());
    head(
        out,
        "vfolderfs_jobs_completed_total",
        "counter",
        "Background jobs this process completed.",
    );
    let _ = writeln!(
        out,
        "vfolderfs_jobs_completed_total {}",
        src.pool.completed()
    );
    head(
        out,
        "vfolderfs_job_entries_done",
        "gauge",
        "Entries removed or copied so far by the jobs queued or running in this process.",
    );
    for id in src.pool.queued_ids() {
        if let Ok(Some(j)) = src.store.job(&id) {
            let _ = writeln!(
                out,
                "vfolderfs_job_entries_done{{vfolder_id=\"{id}\",kind=\"{}\"}} {}",
                escape(&j.kind),
                j.done
            );
        }
    }
}

/// The store's health, and the daemon's memory and open files.
fn store_and_process(out: &mut String, src: &Sources<'_>) {
    head(
        out,
        "vfolderfs_store_up",
        "gauge",
        "1 if the store was readable at the last check (else writes are refused).",
    );
    let _ = writeln!(out, "vfolderfs_store_up {}", u8::from(src.reg.is_healthy()));
    head(
        out,
        "vfolderfs_store_last_success_timestamp_seconds",
        "gauge",
        "When the watcher last read the store successfully (Unix time).",
    );
    let _ = writeln!(
        out,
        "vfolderfs_store_last_success_timestamp_seconds {}",
        STORE_LAST_OK_MILLIS.load(Ordering::Relaxed) as f64 / 1000.0
    );
    let (rss, fds) = process();
    head(
        out,
        "vfolderfs_resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon.",
    );
    let _ = writeln!(out, "vfolderfs_resident_memory_bytes {rss}");
    head(
        out,
        "vfolderfs_open_fds",
        "gauge",
        "Open file descriptors of the daemon.",
    );
    let _ = writeln!(out, "vfolderfs_open_fds {fds}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}
