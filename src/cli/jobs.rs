//! Background jobs run from the CLI: in this process with a progress line,
//! or followed while another process holds them.

use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use super::output::human_bytes;
use super::progress::{Progress, Unit};
use super::{CliError, Kind, cause, fmt_time, interrupt};
use crate::backing::copy::CopyStats;
use crate::backing::count;
use crate::catalog::Catalog;
use crate::say;
use crate::store::{Job, ListFilter, StoreError, VFolder};
use crate::workers::pool::Task;
use crate::workers::{Outcome, purge};

pub(super) type JobFn<'a> = dyn Fn(&Catalog, &str, &AtomicBool, &mut dyn FnMut(&CopyStats)) -> crate::store::Result<Outcome>
    + 'a;

/// Counts `v`'s tree (entries and bytes; see [`count::count_tree`]) for a
/// job's totals, and records it as `v`'s size. None when it cannot be
/// counted (its data missing, a tree too deep) or `stop` was set.
pub(super) fn count(cat: &Catalog, v: &VFolder, stop: &AtomicBool) -> Option<CopyStats> {
    let fd = cat
        .open_backing(&v.id, &v.volume, libc::O_RDONLY | libc::O_NOFOLLOW)
        .ok()?;
    let total = count::count_tree(fd.as_fd(), stop).ok().flatten()?;
    if let Err(e) = cat.store().record_size(&v.id, total.bytes, total.entries) {
        log::warn!("recording the size of {:?}: {e}", v.name);
    }
    Some(total)
}

/// The error of a job that was cancelled and ended the cancelled way.
fn cancelled(what: &str, by: &str, how: &str, v: &VFolder) -> CliError {
    CliError::Of {
        kind: Kind::Cancelled,
        message: format!("{what}: cancelled by {by}; {how}"),
        vfolder: Some(v.name.clone()),
    }
}

/// Runs a copy job (its row on `on`, copying `source`) in this process with
/// its progress on stderr, or follows another process that holds it, until
/// the vfolder settles. Ctrl-C or `SIGTERM` cancels it (see
/// [`interrupt`]).
pub(super) fn run_job(
    cat: &Catalog,
    on: &VFolder,
    source: &VFolder,
    what: String,
    job: &JobFn<'_>,
) -> Result<i32, CliError> {
    let owner = crate::workers::this_owner();
    // Ctrl-C from here on cancels (the count included).
    let _guard = interrupt::guard(cat.store().clone(), on.id.clone(), what.clone());
    let total = count(cat, source, interrupt::stop_flag());
    let mut progress = Progress::new(what.clone(), Unit::Bytes, total);
    let mut totals_set = false;
    loop {
        let outcome = job(cat, &owner, interrupt::stop_flag(), &mut |s| {
            if !totals_set && let Some(t) = total {
                totals_set = true;
                let _ = cat
                    .store()
                    .set_job_totals(&on.id, &owner, t.entries, t.bytes);
            }
            progress.update(s);
        })?;
        match outcome {
            Outcome::Complete(n) => {
                let last = progress.last();
                match progress.total() {
                    // Nothing was copied: the data moved by one rename.
                    Some(t) if n == 0 && last.entries == 0 => {
                        progress.finish("moved by rename (same filesystem)", &t)
                    }
                    _ => progress.finish("done", &last),
                }
                say!("done: {:?} ({n} entries)", on.name);
                return Ok(0);
            }
            Outcome::CancelledBy(by) => {
                progress.clear();
                return Err(cancelled(&what, &by, "rolled back", on));
            }
            Outcome::Failed(msg) | Outcome::RolledBack(msg) => {
                progress.clear();
                return Err(CliError::Job(format!("{what} failed: {msg}")));
            }
            Outcome::ClaimLost => return Err(lost(&what, on)),
            Outcome::HeldElsewhere | Outcome::Cancelled | Outcome::NotApplicable => {
                let now = cat.store().get(&on.id)?;
                if now.status.is_cloning() || now.status.is_relocating() {
                    if let Some(j) = cat.store().job(&on.id)? {
                        progress.update(&CopyStats {
                            entries: j.done,
                            bytes: j.bytes,
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    continue;
                }
                progress.clear();
                if now.status.is_visible() {
                    say!("done: {:?} is {}", now.name, now.status);
                    return Ok(0);
                }
                return Err(CliError::Job(format!(
                    "{what} did not complete: its status is {}{}",
                    now.status,
                    now.error.map(|e| format!(" ({e})")).unwrap_or_default()
                )));
            }
        }
    }
}

/// This process was stopped past its job's lease and another process took
/// the job over: it made no final step, and does not follow the job further.
fn lost(what: &str, v: &VFolder) -> CliError {
    CliError::Job(format!(
        "{what} ({:?}): this process lost its claim on the job to another process \
         (it was stopped longer than the lease); it stopped without a final step, \
         and the other process carries on",
        v.name
    ))
}

/// `purge`: moves `v` to `delete-ongoing` (an explicit purge also resumes
/// one stopped by `vfolderfs cancel`) and, unless `no_wait`, removes its
/// data here with a progress line, or follows the process that does.
pub(super) fn purge(cat: &Catalog, v: &VFolder, no_wait: bool) -> Result<i32, CliError> {
    purge::request(cat, &v.id, &cause("purge"))?;
    // An explicit purge resumes one stopped by `vfolderfs cancel`: the
    // request is withdrawn (unless a live process is still stopping it).
    if let Some(j) = cat.store().job(&v.id)?
        && j.cancel.is_some()
        && JobState::of(&j) != JobState::Running
    {
        cat.store().set_job_cancel(&v.id, None)?;
    }
    if no_wait {
        say!("queued the purge of vfolder {:?} ({})", v.name, v.id);
        return Ok(0);
    }
    run_purge(cat, v)
}

/// Runs the purge of `v` here (Ctrl-C stops it, resumable), or follows
/// another process's until the vfolder leaves `delete-ongoing`.
fn run_purge(cat: &Catalog, v: &VFolder) -> Result<i32, CliError> {
    let owner = crate::workers::this_owner();
    let what = format!("purging {:?}", v.name);
    let _guard = interrupt::guard(cat.store().clone(), v.id.clone(), what.clone());
    let stop = interrupt::stop_flag();
    let total = count(cat, v, stop);
    let mut progress = Progress::new(what.clone(), Unit::Entries, total);
    let mut totals_set = false;
    loop {
        let mut show = |done: u64| {
            if !totals_set && let Some(t) = total {
                totals_set = true;
                let _ = cat
                    .store()
                    .set_job_totals(&v.id, &owner, t.entries, t.bytes);
            }
            progress.update(&CopyStats {
                entries: done,
                bytes: 0,
            });
        };
        let pause = purge::throttle_from_env();
        match purge::purge_one(cat, &v.id, &owner, stop, pause, &mut show)? {
            Outcome::NotApplicable | Outcome::RolledBack(_) | Outcome::HeldElsewhere => {}
            Outcome::Cancelled if !stop.load(std::sync::atomic::Ordering::Acquire) => {}
            o => return purge_ended(v, &what, o, &mut progress, total),
        }
        // Another process is on it: follow its progress until it ends.
        let now = cat.store().get(&v.id)?;
        if now.status.is_purging() {
            if let Some(j) = cat.store().job(&v.id)? {
                show(j.done);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        progress.clear();
        if let Some(err) = now.error {
            return Err(CliError::Job(format!(
                "purge of vfolder {:?} failed: {err}",
                v.name
            )));
        }
        say!(
            "purged vfolder {:?} ({}) (status {})",
            v.name,
            v.id,
            now.status
        );
        return Ok(0);
    }
}

/// What a purge run here ended with, `o` (other than a stop that leaves
/// it to another process), as the command's result.
fn purge_ended(
    v: &VFolder,
    what: &str,
    o: Outcome,
    progress: &mut Progress,
    total: Option<CopyStats>,
) -> Result<i32, CliError> {
    if !matches!(o, Outcome::Complete(_)) {
        progress.clear();
    }
    match o {
        Outcome::Complete(n) => {
            let bytes = total.map_or(0, |t| t.bytes);
            progress.finish("purged", &CopyStats { entries: n, bytes });
            say!(
                "purged vfolder {:?} ({}): {n} entries removed",
                v.name,
                v.id
            );
            Ok(0)
        }
        Outcome::CancelledBy(by) => Err(cancelled(
            what,
            &by,
            &format!(
                "stopped after {} entries; it stays delete-ongoing until \
                 `vfolderfs purge {}` resumes it",
                progress.last().entries,
                v.id
            ),
            v,
        )),
        Outcome::Failed(msg) => Err(CliError::Job(format!(
            "purge of vfolder {:?} failed: {msg} (status delete-error; fix the cause and run purge again)",
            v.name
        ))),
        Outcome::ClaimLost => Err(lost("purging", v)),
        // Only a stop by a signal to this process comes here: the others
        // are followed (another process is on the purge).
        Outcome::Cancelled
        | Outcome::NotApplicable
        | Outcome::RolledBack(_)
        | Outcome::HeldElsewhere => Err(cancelled(
            what,
            "a signal",
            "stopped; it stays delete-ongoing until resumed",
            v,
        )),
    }
}

/// Where a job stands, as far as its owner goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobState {
    /// Queued for a mount's pool; no process has claimed it yet.
    Queued,
    /// Claimed by a process that is alive (or not known dead) and whose
    /// lease holds.
    Running,
    /// Its owner is gone: known dead, or its lease lapsed. Anyone may take
    /// it over (`vfolderfs jobs --resume`, or a mount's pool).
    OwnerGone,
    /// A purge stopped by `vfolderfs cancel` (or a signal), waiting for an
    /// explicit resume (`vfolderfs purge`, `vfolderfs jobs --resume`).
    Cancelled,
}

impl JobState {
    pub(super) fn of(j: &Job) -> JobState {
        let gone = j.lease_until < crate::store::sqlite::now_millis()
            || crate::workers::owner_dead(&j.owner);
        if j.cancel.is_some() && (j.owner.is_empty() || gone) {
            JobState::Cancelled
        } else if j.owner.is_empty() {
            JobState::Queued
        } else if gone {
            JobState::OwnerGone
        } else {
            JobState::Running
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::OwnerGone => "owner gone",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// The job that holds vfolder `v`, with the vfolder it is recorded on: its
/// own, or (for a clone's source, whose job is recorded on the target) the
/// clone target's.
pub(super) fn job_holding(
    cat: &Catalog,
    v: &VFolder,
) -> crate::store::Result<Option<(VFolder, Job)>> {
    if let Some(j) = cat.store().job(&v.id)? {
        return Ok(Some((v.clone(), j)));
    }
    if !v.status.is_cloning() || v.clone_src.is_some() {
        return Ok(None);
    }
    for t in cat.store().list(ListFilter::Work)? {
        if t.clone_src.as_deref() == Some(v.id.as_str())
            && let Some(j) = cat.store().job(&t.id)?
        {
            return Ok(Some((t, j)));
        }
    }
    Ok(None)
}

/// The `"job"` object of `show --json` and `list --json`: kind, state,
/// owner, progress, and the vfolder it is recorded on.
pub(super) fn job_json(cat: &Catalog, v: &VFolder) -> crate::store::Result<Option<Value>> {
    Ok(job_holding(cat, v)?.map(|(on, j)| {
        let state = JobState::of(&j);
        json!({
            "kind": j.kind,
            "state": state.as_str(),
            "owner": j.owner,
            "owner_alive": state == JobState::Running,
            "started_at": fmt_time(j.started_at),
            "done": j.done,
            "bytes": j.bytes,
            "total_entries": j.total.map(|t| t.0),
            "total_bytes": j.total.map(|t| t.1),
            "cancel_requested_by": j.cancel,
            "resumed": j.claims > 1,
            "vfolder": on.name,
            "vfolder_id": on.id,
        })
    }))
}

/// The status column of `list`: the status, and "(owner gone)" when the
/// job holding the vfolder has no live owner.
pub(super) fn status_text(cat: &Catalog, v: &VFolder) -> String {
    let transient = v.status.is_cloning() || v.status.is_relocating() || v.status.is_purging();
    match transient
        .then(|| job_holding(cat, v).ok().flatten())
        .flatten()
    {
        Some((_, j)) if JobState::of(&j) == JobState::OwnerGone => {
            format!("{} (owner gone)", v.status)
        }
        _ => v.status.to_string(),
    }
}

/// `vfolderfs jobs [--json] [--resume]`: lists background jobs (and
/// vfolders whose status calls for one) with their state; with `--resume`,
/// runs in this process every one that no live process holds, to its end:
/// a purge resumes, an interrupted clone is rolled back (its partial copy
/// purged), a relocation is finished or rolled back, an old copy removed.
pub(super) fn jobs_cmd(cat: &Catalog, json_out: bool, resume: bool) -> Result<i32, CliError> {
    if resume {
        return resume_all(cat);
    }
    let mut rows = Vec::new();
    for v in cat.store().list(ListFilter::Work)? {
        let task = Task::for_row(&v);
        let job = cat.store().job(&v.id)?;
        if task.is_none() && job.is_none() {
            continue;
        }
        let state = job.as_ref().map_or(JobState::Queued, JobState::of);
        rows.push(json!({
            "vfolder": v.name,
            "vfolder_id": v.id,
            "status": v.status.as_str(),
            "kind": job.as_ref().map(|j| j.kind.clone()).or_else(|| task.as_ref().map(task_kind)),
            "state": state.as_str(),
            "owner": job.as_ref().map(|j| j.owner.clone()),
            "started_at": job.as_ref().map(|j| fmt_time(j.started_at)),
            "done": job.as_ref().map_or(0, |j| j.done),
            "bytes": job.as_ref().map_or(0, |j| j.bytes),
            "total_entries": job.as_ref().and_then(|j| j.total.map(|t| t.0)),
            "total_bytes": job.as_ref().and_then(|j| j.total.map(|t| t.1)),
            "cancel_requested_by": job.as_ref().and_then(|j| j.cancel.clone()),
            "resumed": job.as_ref().is_some_and(|j| j.claims > 1),
        }));
    }
    if json_out {
        println!("{}", Value::Array(rows));
        return Ok(0);
    }
    println!(
        "{:20}  {:16}  {:10}  {:>32}  OWNER",
        "VFOLDER", "KIND", "STATE", "PROGRESS"
    );
    for r in &rows {
        println!(
            "{:20}  {:16}  {:10}  {:>32}  {}",
            r["vfolder"].as_str().unwrap_or("?"),
            r["kind"].as_str().unwrap_or("-"),
            r["state"].as_str().unwrap_or("-"),
            progress_text(r),
            r["owner"].as_str().unwrap_or("-")
        );
    }
    if rows.iter().any(|r| r["state"] != "running") {
        println!(
            "jobs not running: a mount's pool takes them up, or run `vfolderfs jobs --resume`"
        );
    }
    Ok(0)
}

/// A job row's progress for the table: entries (and bytes, for a copy)
/// done, of the totals when counted, with the percent.
fn progress_text(r: &Value) -> String {
    let n = |k: &str| r[k].as_u64();
    let done = n("done").unwrap_or(0);
    let bytes = n("bytes").unwrap_or(0);
    let copy = r["kind"] != purge::KIND;
    let mut out = match n("total_entries") {
        Some(t) => format!("{done}/{t} entries"),
        None => format!("{done} entries"),
    };
    if copy {
        out += &match n("total_bytes") {
            Some(t) => format!(", {}/{}", human_bytes(bytes), human_bytes(t)),
            None => format!(", {}", human_bytes(bytes)),
        };
    }
    let (d, t) = if copy {
        (bytes, n("total_bytes"))
    } else {
        (done, n("total_entries"))
    };
    if let Some(t) = t.filter(|&t| t > 0) {
        out += &format!(" {:.0}%", (d as f64 * 100.0 / t as f64).min(100.0));
    }
    out
}

fn task_kind(t: &Task) -> String {
    match t {
        Task::Purge(_) => purge::KIND,
        Task::Clone(_) => crate::workers::clone::KIND,
        Task::Relocate(_) => crate::workers::relocate::KIND,
        Task::Cleanup(_) => crate::workers::relocate::CLEANUP_KIND,
    }
    .to_string()
}

/// Runs every job no live process holds, until none is left (a rolled-back
/// clone leaves its target's purge to run next); exit status 1 if any failed.
fn resume_all(cat: &Catalog) -> Result<i32, CliError> {
    let owner = crate::workers::this_owner();
    let never = std::sync::atomic::AtomicBool::new(false);
    let pause = purge::throttle_from_env();
    let mut failed = 0;
    let mut held_said = std::collections::HashSet::new();
    let mut any = false;
    for _pass in 0..8 {
        let mut progressed = false;
        for v in cat.store().list(ListFilter::Work)? {
            let Some(task) = Task::for_row(&v) else {
                continue;
            };
            let kind = task_kind(&task);
            // Resuming explicitly: a purge stopped by `vfolderfs cancel`
            // goes on (a clone or relocation asked to stop rolls back).
            if let Task::Purge(id) = &task
                && let Some(j) = cat.store().job(id)?
                && j.cancel.is_some()
                && JobState::of(&j) != JobState::Running
            {
                cat.store().set_job_cancel(id, None)?;
            }
            let outcome = crate::workers::pool::run_task(cat, &task, &owner, &never, pause);
            let what = format!("{kind} of {:?} ({})", v.name, v.id);
            match outcome {
                Ok(Outcome::Complete(n)) => {
                    println!("{what}: done ({n} entries)");
                    progressed = true;
                }
                Ok(Outcome::RolledBack(why)) => {
                    println!("{what}: rolled back: {why}");
                    progressed = true;
                }
                Ok(Outcome::Failed(msg)) => {
                    println!("{what}: failed: {msg}");
                    failed += 1;
                    progressed = true;
                }
                Ok(Outcome::HeldElsewhere) => {
                    if held_said.insert(v.id.clone()) {
                        let by = cat.store().job(&v.id)?.map(|j| j.owner).unwrap_or_default();
                        println!("{what}: held by a live process ({by}); left to it");
                    }
                }
                Ok(Outcome::ClaimLost) => {
                    println!("{what}: another process took it over; left to it");
                }
                Ok(Outcome::CancelledBy(by)) => {
                    println!("{what}: cancelled by {by}");
                    progressed = true;
                }
                Ok(Outcome::Cancelled) => {
                    println!("{what}: stopped before its end; run again");
                    failed += 1;
                }
                Ok(Outcome::NotApplicable) => {}
                Err(e) => {
                    println!("{what}: {e}");
                    failed += 1;
                }
            }
            any = true;
        }
        if !progressed {
            break;
        }
    }
    if !any {
        println!("no jobs to resume");
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// A hint for a refusal caused by a job no live process holds: names the
/// job and says how to finish it. `layout` is the store's.
pub(super) fn refusal_hint(layout: &crate::layout::Layout, e: &CliError) -> Option<String> {
    // Only a transition: a rename or attach refusal names no job.
    let CliError::Store(StoreError::Refused {
        id,
        op: crate::status::Action::Transition(_),
        ..
    }) = e
    else {
        return None;
    };
    let cat = Catalog::open(layout.clone()).ok()?;
    let v = cat.store().get(id).ok()?;
    let (on, j) = job_holding(&cat, &v).ok()??;
    match JobState::of(&j) {
        JobState::Running => None,
        state => Some(format!(
            "its {} job (on {:?}, {} entries done) is {}: run `vfolderfs jobs --resume` to \
             finish or roll it back (a running mount's pool also does)",
            j.kind,
            on.name,
            j.done,
            state.as_str()
        )),
    }
}
