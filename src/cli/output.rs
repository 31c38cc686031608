//! How the CLI prints: the stable JSON forms, tables and times.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use super::CliError;
use crate::catalog::Catalog;
use std::collections::HashMap;

use crate::store::{Attachment, HistoryEntry, Millis, Size, VFolder};

static JSON_MODE: AtomicBool = AtomicBool::new(false);

/// Records whether `--json` was given for this command.
pub(super) fn set_json_mode(on: bool) {
    JSON_MODE.store(on, Ordering::Relaxed);
}

/// Whether `--json` was given: human lines are then left out of stdout,
/// which carries only the JSON result.
pub fn json_mode() -> bool {
    JSON_MODE.load(Ordering::Relaxed)
}

/// `println!` for a human line: skipped under `--json`.
#[macro_export]
#[doc(hidden)]
macro_rules! say {
    ($($t:tt)*) => {
        if !$crate::cli::json_mode() {
            println!($($t)*);
        }
    };
}

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
        "pending": a.pending.is_some(),
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

/// A vfolder with everything known about it: [`vfolder_json`] with its trash
/// name, `opens`, `attachments` and, while a job holds it, `job` (the form of
/// `show --json` and of the mutating commands' `--json`).
pub(super) fn vfolder_detail_json(cat: &Catalog, v: &VFolder) -> Result<Value, CliError> {
    let tn = cat
        .trash()?
        .into_iter()
        .find(|(_, t)| t.id == v.id)
        .map(|(n, _)| n);
    let mut obj = vfolder_json(cat, v, tn);
    obj["opens"] = json!(cat.store().opens()?.get(&v.id).copied().unwrap_or(0));
    if v.status.is_restorable() {
        // When it was deleted, and when the store-wide retention purges it
        // (null: kept forever).
        obj["deleted_at"] = json!(fmt_time(v.status_changed_at));
        obj["purge_after"] = json!(purge_after(v, cat.store().trash_retention()?).map(fmt_time));
    }
    obj["size"] = size_json(cat.store().sizes()?.get(&v.id));
    obj["usage"] = usage_json(cat, &v.id)?;
    obj["pinned"] = json!(
        cat.store()
            .pins()?
            .into_iter()
            .find(|p| p.vfolder_id == v.id)
            .map(|p| json!({"at": fmt_time(p.at), "cause": p.cause}))
    );
    let atts = cat.store().attachments(Some(&v.id))?;
    obj["attachments"] = Value::Array(atts.iter().map(|a| attachment_json(cat, a)).collect());
    if let Some(j) = cat.store().job(&v.id)? {
        obj["job"] = json!({
            "kind": j.kind,
            "owner": j.owner,
            "started_at": fmt_time(j.started_at),
            "done": j.done,
            "resumed": j.claims > 1,
        });
    }
    Ok(obj)
}

/// A vfolder's usage as every mount recorded it: the last access and the
/// last 30 UTC days with any (`{"day": "2026-11-26", "opens",
/// "bytes_read", "bytes_written"}`, oldest first).
fn usage_json(cat: &Catalog, id: &str) -> Result<Value, CliError> {
    let today = crate::tier::day_of(crate::tier::now());
    let days: Vec<Value> = cat
        .store()
        .usage_since(today - 29, Some(id))?
        .into_iter()
        .map(|u| {
            json!({
                "day": fmt_time(u.day * crate::tier::DAY_MS)[..10].to_string(),
                "opens": u.opens,
                "bytes_read": u.bytes_read,
                "bytes_written": u.bytes_written,
            })
        })
        .collect();
    let last = cat.store().last_access(Some(id))?.get(id).copied();
    Ok(json!({"last_access": last.map(fmt_time), "days": days}))
}

/// `show` as a table: one field a line, attachments and the job spelled out.
pub(super) fn print_detail(obj: &Value) {
    let Some(map) = obj.as_object() else { return };
    for (k, val) in map {
        match (k.as_str(), val) {
            ("attachments", Value::Array(a)) if a.is_empty() => println!("{k:18} none"),
            ("attachments", Value::Array(a)) => {
                for (i, at) in a.iter().enumerate() {
                    let s = |f: &str| at[f].as_str().unwrap_or("?").to_string();
                    println!(
                        "{:18} session {} {} at {} (since {})",
                        if i == 0 { k.as_str() } else { "" },
                        s("session"),
                        s("mode"),
                        s("target"),
                        s("attached_at")
                    );
                }
            }
            ("job", j) => println!(
                "{k:18} {} by {}, {} entries{} done, since {}{}",
                j["kind"].as_str().unwrap_or("?"),
                j["owner"].as_str().unwrap_or("?"),
                match j["total_entries"].as_u64() {
                    Some(t) => format!("{}/{t}", j["done"]),
                    None => j["done"].to_string(),
                },
                match j["bytes"].as_u64() {
                    Some(b) if b > 0 => format!(", {}", human_bytes(b)),
                    _ => String::new(),
                },
                j["started_at"].as_str().unwrap_or("?"),
                if j["resumed"] == json!(true) {
                    " (resumed)"
                } else {
                    ""
                }
            ),
            ("size", Value::Object(z)) => println!(
                "{k:18} {} ({} bytes), {} files, measured {}",
                human_bytes(z.get("bytes").and_then(Value::as_u64).unwrap_or(0)),
                z.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                z.get("files").and_then(Value::as_u64).unwrap_or(0),
                z.get("measured_at").and_then(Value::as_str).unwrap_or("?")
            ),
            ("size", Value::Null) => {
                println!("{k:18} unknown (`vfolderfs show --size NAME` measures it)")
            }
            (_, Value::String(s)) => println!("{k:18} {s}"),
            ("usage", u) => {
                let days = u["days"].as_array().map_or(&[][..], |d| d.as_slice());
                let sum = |f: &str| days.iter().filter_map(|d| d[f].as_u64()).sum::<u64>();
                println!(
                    "{k:18} last access {}; {} opens, {} read, {} written in {} day(s) of the last 30",
                    u["last_access"].as_str().unwrap_or("never"),
                    sum("opens"),
                    human_bytes(sum("bytes_read")),
                    human_bytes(sum("bytes_written")),
                    days.len()
                );
            }
            ("pinned", Value::Object(p)) => println!(
                "{k:18} since {} ({})",
                p.get("at").and_then(|v| v.as_str()).unwrap_or("?"),
                p.get("cause").and_then(|v| v.as_str()).unwrap_or("?")
            ),
            (_, Value::Null) => println!("{k:18} -"),
            (_, other) => println!("{k:18} {other}"),
        }
    }
}

pub(super) fn history_json(e: &HistoryEntry) -> Value {
    json!({
        "from": e.from.map(|s| s.as_str()),
        "to": e.to.as_str(),
        "at": fmt_time(e.at),
        "cause": e.cause,
    })
}

/// A recorded size as JSON: `{"bytes", "files", "measured_at"}`, or null.
pub(super) fn size_json(size: Option<&Size>) -> Value {
    size.map_or(
        Value::Null,
        |z| json!({"bytes": z.bytes, "files": z.files, "measured_at": fmt_time(z.at)}),
    )
}

/// When the store-wide retention `keep` purges trashed `v` (None: never).
pub(super) fn purge_after(v: &VFolder, keep: Option<std::time::Duration>) -> Option<Millis> {
    keep.map(|k| v.status_changed_at + k.as_millis() as i64)
}

/// The `list` table: one vfolder a line with its size as last measured
/// (`-` when never), and, when trash entries are listed, when retention
/// purges each (`never` when retention is off).
pub(super) fn print_table(
    list: &[VFolder],
    trash_name: &dyn Fn(&VFolder) -> Option<String>,
    status: &dyn Fn(&VFolder) -> String,
    sizes: &HashMap<String, Size>,
    retention: Option<std::time::Duration>,
) {
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
    let vw = list
        .iter()
        .map(|v| v.volume.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let trash = list.iter().any(|v| v.status.is_restorable());
    let purge_col = |v: &VFolder| -> String {
        if !trash {
            String::new()
        } else if !v.status.is_restorable() {
            format!("{:24}  ", "-")
        } else {
            let at = purge_after(v, retention).map_or("never".to_string(), fmt_time);
            format!("{at:24}  ")
        }
    };
    println!(
        "{:w$}  {:15}  {:vw$}  {:>10}  {:>8}  {:24}  {:24}  {}ID",
        "NAME",
        "STATUS",
        "VOLUME",
        "SIZE",
        "FILES",
        "CREATED",
        "STATUS CHANGED",
        if trash {
            format!("{:24}  ", "PURGE AFTER")
        } else {
            String::new()
        }
    );
    for (v, n) in list.iter().zip(&names) {
        let z = sizes.get(&v.id);
        println!(
            "{n:w$}  {:15}  {:vw$}  {:>10}  {:>8}  {:24}  {:24}  {}{}",
            status(v),
            v.volume,
            z.map_or("-".to_string(), |z| human_bytes(z.bytes)),
            z.map_or("-".to_string(), |z| z.files.to_string()),
            fmt_time(v.created_at),
            fmt_time(v.status_changed_at),
            purge_col(v),
            v.id
        );
    }
}
