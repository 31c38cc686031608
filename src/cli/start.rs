//! The commands that start a background job on a vfolder and, unless
//! `--no-wait`, run it here until it ends: `clone`, `relocate`, `purge`.

use std::sync::atomic::AtomicBool;

use super::jobs::{self, run_job};
use super::output::vfolder_detail_json;
use super::{CliError, cause};
use crate::catalog::Catalog;
use crate::store::{StoreError, VFolder};
use crate::workers::{clone, purge, relocate};

/// Prints the vfolder a job ended with as JSON, under `--json` (the human
/// forms print their own last line).
fn print_result(cat: &Catalog, id: &str, json: bool) -> Result<(), CliError> {
    if json {
        let v = cat.store().get(id)?;
        println!("{}", vfolder_detail_json(cat, &v)?);
    }
    Ok(())
}

/// Under `--no-wait`: prints the vfolder the queued job works on.
fn print_queued(cat: &Catalog, v: &VFolder, json: bool, human: String) -> Result<i32, CliError> {
    if json {
        println!("{}", vfolder_detail_json(cat, v)?);
    } else {
        println!("{human}");
    }
    Ok(0)
}

/// `clone SRC DST [--volume V]`.
pub(super) fn clone(
    cat: &Catalog,
    src: &str,
    dst: &str,
    volume: Option<&str>,
    no_wait: bool,
    json: bool,
) -> Result<i32, CliError> {
    let (s, d) = clone::start(cat, src, dst, volume, &cause("clone"))?;
    if no_wait {
        let human = format!("cloning {src:?} into {dst:?} ({}) in the background", d.id);
        return print_queued(cat, &d, json, human);
    }
    let id = d.id.clone();
    let what = format!("cloning {:?} into {:?}", s.name, d.name);
    let r = run_job(cat, &d, &s, what, &|cat, owner, stop, p| {
        clone::run(cat, &id, owner, stop, purge::throttle_from_env(), p)
    });
    if r.is_err() && cat.store().get(&id).is_ok_and(|v| v.status.is_purging()) {
        // No daemon may be running: remove the partial copy now.
        let owner = crate::workers::this_owner();
        let never = AtomicBool::new(false);
        let _ = purge::purge_one(cat, &id, &owner, &never, None, &mut |_| {});
    }
    r.and_then(|code| print_result(cat, &id, json).map(|()| code))
}

/// `relocate NAME --to VOLUME`.
pub(super) fn relocate(
    cat: &Catalog,
    name: &str,
    to: &str,
    no_wait: bool,
    json: bool,
) -> Result<i32, CliError> {
    // An explicit relocation pins the vfolder against tiering (in the same
    // transaction as its start).
    let pin = cause(&format!("relocate to {to}"));
    let v = relocate::start(cat, name, to, &cause("relocate"), &pin)?;
    if no_wait {
        let human = format!("relocating {name:?} to volume {to} in the background");
        return print_queued(cat, &v, json, human);
    }
    let id = v.id.clone();
    let what = format!("relocating {:?} to {to}", v.name);
    let r = run_job(cat, &v, &v, what, &|cat, owner, stop, p| {
        relocate::run(cat, &id, owner, stop, purge::throttle_from_env(), p)
    });
    r.and_then(|code| print_result(cat, &id, json).map(|()| code))
}

/// `purge NAME`: a trashed vfolder by its trash name, else any by name or id
/// (a failed one may be purged too; others are refused by status).
pub(super) fn purge(cat: &Catalog, name: &str, no_wait: bool, json: bool) -> Result<i32, CliError> {
    let v = match cat.resolve_trashed(name) {
        Ok(v) => v,
        Err(StoreError::NotFound(_)) => cat.resolve(name)?,
        Err(e) => return Err(e.into()),
    };
    let code = jobs::purge(cat, &v, no_wait)?;
    print_result(cat, &v.id, json)?;
    Ok(code)
}
