//! How the CLI prints: the stable JSON forms, tables and times.

use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::store::{Attachment, HistoryEntry, Millis, VFolder};

pub(super) fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

pub(super) fn attachment_json(cat: &Catalog, a: &Attachment) -> Value {
    let name = cat.store().get(&a.vfolder_id).map(|v| v.name).ok();
    json!({
        "vfolder": name,
        "vfolder_id": a.vfolder_id,
        "session": a.session,
        "target": a.target,
        "mode": if a.read_only { "ro" } else { "rw" },
        "source": a.source,
        "mnt_ns": a.mnt_ns,
        "node": a.node,
        "attached_at": fmt_time(a.created_at),
    })
}

/// RFC 3339 UTC with milliseconds.
pub fn fmt_time(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The stable JSON form of a vfolder (documented in the README).
pub fn vfolder_json(cat: &Catalog, v: &VFolder, trash_name: Option<String>) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "status": v.status.as_str(),
        "path": cat.backing_path(v).display().to_string(),
        "volume": v.volume,
        "created_at": fmt_time(v.created_at),
        "status_changed_at": fmt_time(v.status_changed_at),
        "error": v.error,
        "trash_name": trash_name,
    })
}

pub(super) fn history_json(e: &HistoryEntry) -> Value {
    json!({
        "from": e.from.map(|s| s.as_str()),
        "to": e.to.as_str(),
        "at": fmt_time(e.at),
        "cause": e.cause,
    })
}

pub(super) fn print_table(list: &[VFolder], trash_name: &dyn Fn(&VFolder) -> Option<String>) {
    let names: Vec<String> = list
        .iter()
        .map(|v| trash_name(v).unwrap_or_else(|| v.name.clone()))
        .collect();
    let w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:w$}  {:15}  {:36}  CREATED", "NAME", "STATUS", "ID");
    for (v, n) in list.iter().zip(&names) {
        println!(
            "{n:w$}  {:15}  {:36}  {}",
            v.status.as_str(),
            v.id,
            fmt_time(v.created_at)
        );
    }
}
