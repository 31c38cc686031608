//! The commands on one vfolder's row and name: `create`, `list`, `show`,
//! `history`, `rename`, `delete`, `restore`, and `gc` of purged rows.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};

use super::output::{self, history_json, print_detail, print_table, vfolder_detail_json};
use super::{CliError, Kind, cause, fmt_time, jobs, vfolder_json};
use crate::catalog::{Catalog, NewDir};
use crate::store::{ListFilter, Millis, StoreError, VFolder};

/// Waits until every live mount has confirmed the change just made to `v`
/// (see [`crate::enforce`]), for at most `wait` (`None`: `--no-wait`).
pub(super) fn confirm(cat: &Catalog, v: &VFolder, wait: Option<Duration>) -> Result<(), CliError> {
    if let Some(timeout) = wait {
        crate::enforce::confirm_latest(cat.store().as_ref(), &v.id, &v.name, timeout, None)?;
    }
    Ok(())
}

/// Prints a vfolder as its JSON detail object under `json`, else `human`.
fn print_vfolder(cat: &Catalog, v: &VFolder, json: bool, human: String) -> Result<i32, CliError> {
    if json {
        println!("{}", vfolder_detail_json(cat, v)?);
    } else {
        println!("{human}");
    }
    Ok(0)
}

/// `create NAME [--volume V]`.
pub(super) fn create(
    cat: &Catalog,
    name: &str,
    volume: Option<&str>,
    wait: Option<Duration>,
    json: bool,
) -> Result<i32, CliError> {
    let v = cat.create_on(name, NewDir::default(), volume, &cause("create"))?;
    confirm(cat, &v, wait)?;
    let human = format!(
        "created vfolder {:?} ({}) on volume {}",
        v.name, v.id, v.volume
    );
    print_vfolder(cat, &v, json, human)
}

/// `list [--all]`.
pub(super) fn list(cat: &Catalog, all: bool, json: bool) -> Result<i32, CliError> {
    let filter = if all {
        ListFilter::All
    } else {
        ListFilter::Live
    };
    let list = cat.store().list(filter)?;
    let trash = if all { cat.trash()? } else { Vec::new() };
    let trash_name = |v: &VFolder| {
        trash
            .iter()
            .find(|(_, t)| t.id == v.id)
            .map(|(n, _)| n.clone())
    };
    let sizes = cat.store().sizes()?;
    let retention = cat.store().trash_retention()?;
    if !json {
        print_table(
            &list,
            &trash_name,
            &|v| jobs::status_text(cat, v),
            &sizes,
            retention,
        );
        return Ok(0);
    }
    let opens = cat.store().opens()?;
    let mut arr = Vec::new();
    for v in &list {
        let mut o = vfolder_json(cat, v, trash_name(v));
        o["opens"] = json!(opens.get(&v.id).copied().unwrap_or(0));
        o["size"] = output::size_json(sizes.get(&v.id));
        if v.status.is_restorable() {
            o["deleted_at"] = json!(fmt_time(v.status_changed_at));
            o["purge_after"] = json!(output::purge_after(v, retention).map(fmt_time));
        }
        if let Some(j) = jobs::job_json(cat, v)? {
            o["job"] = j;
        }
        arr.push(o);
    }
    println!("{}", Value::Array(arr));
    Ok(0)
}

/// `show NAME [--size]`.
pub(super) fn show(cat: &Catalog, name: &str, size: bool, json: bool) -> Result<i32, CliError> {
    let v = cat.resolve(name)?;
    if size && jobs::count(cat, &v, &AtomicBool::new(false)).is_none() {
        return Err(CliError::Unmeasurable {
            name: v.name,
            status: v.status,
        });
    }
    let mut obj = vfolder_detail_json(cat, &v)?;
    if let Some(j) = jobs::job_json(cat, &v)? {
        obj["job"] = j;
    }
    if json {
        println!("{obj}");
    } else {
        print_detail(&obj);
    }
    Ok(0)
}

/// `history NAME`.
pub(super) fn history(cat: &Catalog, name: &str, json: bool) -> Result<i32, CliError> {
    let v = cat.resolve(name)?;
    let h = cat.store().history(&v.id)?;
    if json {
        let arr: Vec<Value> = h.iter().map(history_json).collect();
        println!("{}", Value::Array(arr));
        return Ok(0);
    }
    for e in &h {
        println!(
            "{}  {:15} -> {:15} {}",
            fmt_time(e.at),
            e.from.map_or("-", |s| s.as_str()),
            e.to.as_str(),
            e.cause
        );
    }
    Ok(0)
}

/// `rename OLD NEW`.
pub(super) fn rename(
    cat: &Catalog,
    old: &str,
    new: &str,
    wait: Option<Duration>,
    json: bool,
) -> Result<i32, CliError> {
    let v = cat.resolve_live(old)?;
    let v = cat.store().rename(&v.id, new)?;
    confirm(cat, &v, wait)?;
    let human = format!("renamed vfolder {old:?} to {:?}", v.name);
    print_vfolder(cat, &v, json, human)
}

/// `delete NAME`: to the trash.
pub(super) fn delete(
    cat: &Catalog,
    name: &str,
    wait: Option<Duration>,
    json: bool,
) -> Result<i32, CliError> {
    let v = cat.resolve_live(name)?;
    let v = cat.delete(&v, &cause("delete"))?;
    confirm(cat, &v, wait)?;
    let human = format!("moved vfolder {:?} to the trash ({})", v.name, v.id);
    print_vfolder(cat, &v, json, human)
}

/// `restore NAME [--as NEW]`: out of the trash.
pub(super) fn restore(
    cat: &Catalog,
    name: &str,
    as_name: Option<&str>,
    wait: Option<Duration>,
    json: bool,
) -> Result<i32, CliError> {
    let v = match cat.resolve_trashed(name) {
        Ok(v) => v,
        // Not in the trash: name the status it has, if it exists at all.
        Err(StoreError::NotFound(_)) => {
            let v = cat.resolve(name)?;
            return Err(StoreError::Refused {
                name: v.name,
                id: v.id,
                status: v.status,
                op: crate::status::Op::Restore.into(),
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let v = match cat.restore(&v, as_name, &cause("restore")) {
        Err(StoreError::NameTaken(n)) => {
            return Err(CliError::Of {
                kind: Kind::Exists,
                message: format!(
                    "cannot restore vfolder {:?}: a live vfolder named {n:?} already \
                     exists; restore it under another name with `--as NEW`",
                    v.name
                ),
                vfolder: Some(v.name),
            });
        }
        r => r?,
    };
    confirm(cat, &v, wait)?;
    let human = format!("restored vfolder {:?} ({})", v.name, v.id);
    print_vfolder(cat, &v, json, human)
}

/// `gc --older-than AGE`: forgets purged rows (the audit table keeps them).
pub(super) fn gc(cat: &Catalog, older_than: &str, json: bool) -> Result<i32, CliError> {
    let age = if older_than.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(older_than).map_err(|err| CliError::Duration {
            arg: format!("bad duration {older_than:?}"),
            err,
        })?
    };
    let before = crate::store::sqlite::now_millis() - age.as_millis() as Millis;
    let gone = cat.store().forget_purged(before)?;
    if json {
        let arr: Vec<Value> = gone
            .iter()
            .map(|e| json!({"id": e.id, "name": e.name, "purged_at": fmt_time(e.purged_at)}))
            .collect();
        println!("{}", Value::Array(arr));
    } else {
        println!(
            "forgot {} purged vfolder(s); they remain in the audit table",
            gone.len()
        );
    }
    Ok(0)
}
