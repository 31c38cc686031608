//! `vfolderfs wait` and `vfolderfs cancel`: following one job, wherever it
//! runs (a mount's pool, another CLI), through its row in the store, and
//! asking it to stop.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::json;

use super::jobs::{JobState, job_holding};
use super::progress::{Progress, Unit};
use super::{CliError, EXIT_CANCELLED, EXIT_FAILED, Kind};
use crate::backing::copy::CopyStats;
use crate::catalog::Catalog;
use crate::store::{Job, StoreError, VFolder};
use crate::workers::pool::Task;
use crate::workers::{Outcome, clone, purge, relocate};

/// How a followed job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It did its work.
    Completed,
    /// It was cancelled: rolled back (clone, relocation) or stopped
    /// (purge, resumable).
    Cancelled,
    /// It failed, or was rolled back for another reason (its error says).
    Failed,
    /// Its owner is gone and nobody took it over (yet).
    OwnerGone,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::Cancelled => "cancelled",
            End::Failed => "failed",
            End::OwnerGone => "owner_gone",
        }
    }
}

/// The job named by `sel` (a vfolder's name, trash name or id; a clone's
/// source names its clone's job), with the vfolder its row is on.
fn find(cat: &Catalog, sel: &str) -> Result<(VFolder, Job), CliError> {
    let v = cat.resolve(sel)?;
    job_holding(cat, &v)?.ok_or_else(|| CliError::Of {
        kind: Kind::NotFound,
        message: format!(
            "no job on vfolder {:?} (its status is {}); `vfolderfs jobs` lists them",
            v.name, v.status
        ),
        vfolder: Some(v.name.clone()),
    })
}

fn unit(kind: &str) -> Unit {
    if kind == purge::KIND || kind == relocate::CLEANUP_KIND {
        Unit::Entries
    } else {
        Unit::Bytes
    }
}

fn what(kind: &str, on: &VFolder) -> String {
    match kind {
        clone::KIND => format!("clone into {:?}", on.name),
        relocate::KIND => format!("relocation of {:?}", on.name),
        purge::KIND => format!("purge of {:?}", on.name),
        k => format!("{k} of {:?}", on.name),
    }
}

/// Whether the status change that ended `id`'s clone or relocation (the
/// last one out of cloning or performing) names a cancellation.
fn end_cause_cancelled(cat: &Catalog, id: &str) -> bool {
    cat.store()
        .history(id)
        .ok()
        .and_then(|h| {
            h.iter()
                .rev()
                .find(|e| e.from.is_some_and(|f| f.is_cloning() || f.is_relocating()))
                .map(|e| e.cause.contains("cancelled by"))
        })
        .unwrap_or(false)
}

/// How a job of `kind` (with argument `arg`) on `on` ended, its row gone
/// (or replaced by the next job: a rolled-back clone's purge, a
/// relocation's cleanup).
fn ended(cat: &Catalog, kind: &str, arg: Option<&str>, on: &VFolder) -> Result<End, CliError> {
    let now = match cat.store().get(&on.id) {
        Ok(v) => v,
        // Forgotten since (a rolled-back clone's target, purged and gc'd).
        Err(StoreError::NotFound(_)) => return Ok(End::Failed),
        Err(e) => return Err(e.into()),
    };
    let cancelled = || end_cause_cancelled(cat, &on.id);
    Ok(match kind {
        clone::KIND if now.status.is_visible() && !now.status.is_cloning() => End::Completed,
        clone::KIND if cancelled() => End::Cancelled,
        clone::KIND => End::Failed,
        relocate::KIND if arg == Some(now.volume.as_str()) => End::Completed,
        relocate::KIND if cancelled() => End::Cancelled,
        relocate::KIND => End::Failed,
        purge::KIND if now.error.is_some() => End::Failed,
        purge::KIND if now.status.is_purging() => End::OwnerGone,
        _ => End::Completed,
    })
}

/// Follows the job `job` on `on` until it ends, showing its progress from
/// the store; prints the end (a line, or a JSON object) and returns it.
fn follow(cat: &Catalog, on: &VFolder, job: Job, json_out: bool) -> Result<End, CliError> {
    let started = Instant::now();
    let what = what(&job.kind, on);
    let mut progress = Progress::new(what.clone(), unit(&job.kind), job.total.map(stats));
    let mut last = job.clone();
    let mut gone_since: Option<Instant> = None;
    let end = loop {
        let row = cat.store().job(&on.id)?;
        match row {
            Some(j) if j.kind == job.kind => {
                progress.update(&CopyStats {
                    entries: j.done,
                    bytes: j.bytes,
                });
                let state = JobState::of(&j);
                last = j;
                match state {
                    JobState::Cancelled => break End::Cancelled,
                    JobState::OwnerGone => {
                        // A released claim may be taken over by a mount's
                        // pool at its next scan: give it a few seconds.
                        let since = *gone_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(5) {
                            break End::OwnerGone;
                        }
                    }
                    JobState::Running | JobState::Queued => gone_since = None,
                }
            }
            _ => break ended(cat, &job.kind, job.arg.as_deref(), on)?,
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    progress.clear();
    let now = cat.store().get(&on.id).ok();
    let done = CopyStats {
        entries: last.done,
        bytes: last.bytes,
    };
    if json_out {
        println!(
            "{}",
            json!({
                "vfolder": on.name,
                "vfolder_id": on.id,
                "kind": job.kind,
                "outcome": end.as_str(),
                "status": now.as_ref().map(|v| v.status.as_str()),
                "volume": now.as_ref().map(|v| v.volume.clone()),
                "error": now.as_ref().and_then(|v| v.error.clone()),
                "cancel_requested_by": last.cancel,
                "entries": done.entries,
                "bytes": done.bytes,
                "elapsed_s": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        let status = now
            .as_ref()
            .map(|v| format!("; {:?} is {} on {}", v.name, v.status, v.volume))
            .unwrap_or_default();
        let err = now
            .as_ref()
            .and_then(|v| v.error.clone())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let how = match end {
            End::OwnerGone => {
                "its owner is gone: `vfolderfs jobs --resume` (or a mount's pool) takes it up"
            }
            e => e.as_str(),
        };
        println!(
            "{what}: {how}{err}{status}; {} entries, {} bytes seen in {:.1}s",
            done.entries,
            done.bytes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(end)
}

fn stats(t: (u64, u64)) -> CopyStats {
    CopyStats {
        entries: t.0,
        bytes: t.1,
    }
}

/// `vfolderfs wait JOB|NAME [--json]`: follows the job until it ends.
/// Exit status 0 when it completed, [`EXIT_CANCELLED`] when it was
/// cancelled, [`EXIT_FAILED`] when it failed or its owner is gone.
pub(super) fn wait_cmd(cat: &Catalog, sel: &str, json_out: bool) -> Result<i32, CliError> {
    let (on, job) = find(cat, sel)?;
    Ok(match follow(cat, &on, job, json_out)? {
        End::Completed => 0,
        End::Cancelled => EXIT_CANCELLED,
        End::Failed | End::OwnerGone => EXIT_FAILED,
    })
}

/// `vfolderfs cancel JOB|NAME [--no-wait] [--json]`: records the
/// cancellation in the job's row; the process running it ends it the
/// cancelled way at its next check (a clone or relocation rolls back, a
/// purge stops, resumable). A job no live process runs (queued, owner
/// gone) is ended so here and now. Waits for the end unless `no_wait`:
/// exit status 0 when the job ended cancelled, [`EXIT_FAILED`] when it
/// completed (or failed) before the request took effect.
pub(super) fn cancel_cmd(
    cat: &Catalog,
    sel: &str,
    no_wait: bool,
    json_out: bool,
) -> Result<i32, CliError> {
    let (on, job) = find(cat, sel)?;
    if job.kind == relocate::CLEANUP_KIND {
        return Err(CliError::Of {
            kind: Kind::Refused,
            message: format!(
                "the job on {:?} removes the old copy its finished relocation left; \
                 it cannot be cancelled (the relocation is done)",
                on.name
            ),
            vfolder: Some(on.name.clone()),
        });
    }
    let owner = crate::workers::this_owner();
    let by = format!("`vfolderfs cancel` ({owner})");
    if !cat.store().set_job_cancel(&on.id, Some(&by))? {
        return Err(CliError::Of {
            kind: Kind::NotFound,
            message: format!("the job on {:?} ended meanwhile", on.name),
            vfolder: Some(on.name.clone()),
        });
    }
    let state = JobState::of(&job);
    if state == JobState::Running {
        if no_wait {
            crate::say!(
                "asked the {} to stop; `vfolderfs wait {}` follows it",
                what(&job.kind, &on),
                on.id
            );
            return Ok(0);
        }
        return Ok(match follow(cat, &on, job, json_out)? {
            End::Cancelled => 0,
            End::Completed => {
                eprintln!("it completed before the cancellation took effect");
                EXIT_FAILED
            }
            End::Failed | End::OwnerGone => EXIT_FAILED,
        });
    }
    // Nobody runs it: end it here the cancelled way, under its claim.
    cancel_here(cat, &on, &job, &owner, &by, json_out)
}

/// Ends the job on `on`, which no live process runs, here the cancelled
/// way (asked by `by`), and says how it ended.
fn cancel_here(
    cat: &Catalog,
    on: &VFolder,
    job: &Job,
    owner: &str,
    by: &str,
    json_out: bool,
) -> Result<i32, CliError> {
    let Some(task) = Task::for_row(&cat.store().get(&on.id)?) else {
        return Err(CliError::Job(format!(
            "the job on {:?} has nothing left to do",
            on.name
        )));
    };
    let never = AtomicBool::new(false);
    let outcome = crate::workers::pool::run_task(cat, &task, owner, &never, None)?;
    if let (Task::Clone(id), Outcome::CancelledBy(_)) = (&task, &outcome) {
        // The partial target goes now (no mount may be running).
        let _ = purge::purge_one(cat, id, owner, &never, None, &mut |_| {});
    }
    let now = cat.store().get(&on.id).ok();
    let (code, how) = match &outcome {
        Outcome::CancelledBy(_) => (0, "cancelled".to_string()),
        Outcome::HeldElsewhere => (
            EXIT_FAILED,
            "another process took it up meanwhile; `vfolderfs wait` follows it".into(),
        ),
        o => (EXIT_FAILED, format!("{o:?}")),
    };
    if json_out {
        println!(
            "{}",
            json!({
                "vfolder": on.name,
                "vfolder_id": on.id,
                "kind": job.kind,
                "outcome": if code == 0 { "cancelled" } else { "failed" },
                "status": now.as_ref().map(|v| v.status.as_str()),
                "volume": now.as_ref().map(|v| v.volume.clone()),
                "error": now.as_ref().and_then(|v| v.error.clone()),
                "cancel_requested_by": by,
            })
        );
    } else {
        println!(
            "{}: {how}{}",
            what(&job.kind, on),
            now.map(|v| format!("; {:?} is {} on {}", v.name, v.status, v.volume))
                .unwrap_or_default()
        );
    }
    Ok(code)
}
