//! Relocating a vfolder to another data volume: ready → performing (readable,
//! attachable, writes refused), the data moved (one rename within a
//! filesystem, the clone engine's copy across filesystems), the location
//! switched in one transaction, the old copy removed; → ready. After a crash
//! at any step the vfolder ends ready at the old location or at the new one,
//! and no copy is left behind.

use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use log::{info, warn};

use super::{Outcome, Settled, purge};
use crate::backing::copy::{CopyError, CopyStats};
use crate::backing::sys;
use crate::catalog::{Catalog, NewDir};
use crate::status::Op;
use crate::store::{Result, StoreError, TransitionArgs, VFolder};
use crate::volumes::VolumeError;

/// Job kind recorded in the store.
pub const KIND: &str = "relocate";
/// Job kind of removing a relocated vfolder's old copy.
pub const CLEANUP_KIND: &str = "relocate-cleanup";

/// Starts relocating live vfolder `name` to volume `to`; the move is left to [`run`].
pub fn start(cat: &Catalog, name: &str, to: &str, cause: &str) -> Result<VFolder> {
    let v = cat.store().get_live(name)?;
    cat.usable_volume(to)?;
    if v.volume == to {
        return Err(VolumeError::AlreadyOn {
            vfolder: v.name,
            volume: to.to_string(),
        }
        .into());
    }
    let v = cat.store().transition(
        &v.id,
        Op::RelocateStart,
        TransitionArgs {
            cause,
            ..Default::default()
        },
    )?;
    cat.store().queue_job(&v.id, KIND, Some(to))?;
    Ok(v)
}

/// Runs (or resumes) the relocation of `id` under a job claim for `owner`.
///
/// Fencing: the switch (`switch_volume`) and clearing the old volume are
/// fenced store steps, made only while this claim holds. The filesystem
/// steps come in this order: a partial new copy is removed before the
/// fenced switch back, by [`purge::remove_copy`], which confirms the claim
/// in a fenced transaction before it removes anything (removing a partial
/// copy is what a new owner would do too); the old copy goes only after the
/// fenced switch, in [`cleanup`] under a claim of its own, confirmed the
/// same way. A rename within one filesystem is made only after a fenced
/// confirmation, and undone if the switch then finds the claim lost.
pub fn run(
    cat: &Catalog,
    id: &str,
    owner: &str,
    cancel: &AtomicBool,
    pause: Option<Duration>,
    progress: &mut dyn FnMut(&CopyStats),
) -> Result<Outcome> {
    let store = cat.store();
    let Some((job, v)) = super::claim(store.as_ref(), id, KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    if !v.status.is_relocating() {
        store.release_job(id, owner, true)?;
        return Ok(Outcome::NotApplicable);
    }
    let claim = job.claim();
    let from = v.volume.clone();
    let Some(to) = job.arg.clone().filter(|t| cat.volume(t).is_ok()) else {
        let why = "relocation has no usable target volume; rolled back";
        fenced!(
            &claim,
            "rolling the relocation back",
            store.switch_volume(&claim, None, why)
        );
        store.release_job(id, owner, true)?;
        return Ok(Outcome::RolledBack(why.into()));
    };
    // Removes the partial new copy under the claim; None when done.
    let remove_partial = || -> Result<Option<Outcome>> {
        match purge::remove_copy(cat, &claim, &to, cancel, None, false, &mut |_| {}) {
            Ok(()) => Ok(None),
            Err(_) if !super::holds(store.as_ref(), &claim) => Ok(Some(super::claim_lost(
                &claim,
                "removing the partial copy or switching",
            ))),
            Err(e) => {
                store.release_job(id, owner, false)?;
                warn!("removing the partial copy of {id} on {to}: {e}");
                Ok(Some(Outcome::Cancelled))
            }
        }
    };
    // The data moved by a rename: no old copy is left to remove.
    let renamed = |cause: String| -> Result<Outcome> {
        fenced!(
            &claim,
            "switching",
            store.switch_volume(&claim, Some(&to), &cause)
        );
        fenced!(
            &claim,
            "clearing the old volume",
            store.clear_prev_volume(&claim)
        );
        store.release_job(id, owner, true)?;
        Ok(Outcome::Complete(0))
    };
    // Asked to stop: the partial new copy removed, then the fenced switch
    // back (the vfolder ready on its old volume, the old copy untouched).
    let cancelled = |by: &str| -> Result<Outcome> {
        if let Some(o) = remove_partial()? {
            return Ok(o);
        }
        let why = format!("relocation to {to} cancelled by {by}; rolled back");
        fenced!(
            &claim,
            "rolling the cancelled relocation back",
            store.switch_volume(&claim, None, &format!("{why} ({owner})"))
        );
        store.release_job(id, owner, true)?;
        info!("{why}: {:?}", v.name);
        Ok(Outcome::CancelledBy(by.to_string()))
    };
    if job.claims > 1 {
        // Interrupted: finish a rename that happened, undo a partial copy.
        if !cat.backing_exists(id, &from) && cat.backing_exists(id, &to) {
            return renamed(format!("relocation to {to} completed on resume ({owner})"));
        }
        if let Some(by) = &job.cancel {
            return cancelled(by);
        }
        let why = format!("relocation to {to} interrupted; rolled back");
        if let Some(o) = remove_partial()? {
            return Ok(o);
        }
        fenced!(
            &claim,
            "rolling the relocation back",
            store.switch_volume(&claim, None, &format!("{why} ({owner})"))
        );
        store.release_job(id, owner, true)?;
        return Ok(Outcome::RolledBack(why));
    }
    if let Some(by) = &job.cancel {
        return cancelled(by);
    }
    if cat.same_filesystem(&from, &to)? {
        fenced!(
            &claim,
            "moving the data",
            store.confirm_claim(&claim, super::lease())
        );
        cat.rename_backing(id, &from, &to)
            .map_err(|e| StoreError::Io(cat.backing_path(&v).display().to_string(), e))?;
        let done = renamed(format!("relocated from {from} to {to} by rename ({owner})"))?;
        if done == Outcome::ClaimLost {
            // Stopped between the confirmation and the rename, and taken
            // over: the new owner saw the data where the row said and rolled
            // back; put the data back there. (A new owner that saw the
            // rename finished it instead, and the row names `to`.)
            let now = store.get(id)?;
            if now.volume == from
                && !cat.backing_exists(id, &from)
                && let Err(e) = cat.rename_backing(id, &to, &from)
            {
                warn!(
                    "moving {:?} back to {from} after losing the claim: {e}",
                    v.name
                );
            }
            return Ok(done);
        }
        info!("relocated {:?} to {to} (rename)", v.name);
        return Ok(done);
    }
    // Across filesystems: copy (once every mount refuses writes and the
    // writes begun before have drained), switch, remove the old copy.
    match super::settle(store.as_ref(), id, &v.name, cancel)? {
        Settled::Confirmed => {}
        Settled::Cancelled => {
            if let Some(by) = super::cancel_request(store.as_ref(), id) {
                return cancelled(&by);
            }
            store.release_job(id, owner, false)?;
            return Ok(Outcome::Cancelled);
        }
        Settled::Unconfirmed(e) => {
            let why = format!("relocation to {to} abandoned: {e}");
            fenced!(
                &claim,
                "abandoning the relocation",
                store.switch_volume(&claim, None, &format!("{why} ({owner})"))
            );
            store.release_job(id, owner, true)?;
            warn!("{why}");
            return Ok(Outcome::RolledBack(why));
        }
    }
    let fail = |msg: String| -> Result<Outcome> {
        // The partial copy first, while the claim (confirmed before any
        // removal) still shows it is this job's; then the fenced switch back.
        if let Some(o) = remove_partial()? {
            return Ok(o);
        }
        fenced!(
            &claim,
            "rolling the relocation back",
            store.switch_volume(
                &claim,
                None,
                &format!("relocation to {to} failed: {msg} ({owner})"),
            )
        );
        store.release_job(id, owner, true)?;
        warn!("relocation of {:?} to {to} failed: {msg}", v.name);
        Ok(Outcome::Failed(msg))
    };
    let src = match cat.open_backing(id, &from, libc::O_RDONLY | libc::O_NOFOLLOW) {
        Ok(fd) => fd,
        Err(e) => return fail(e.to_string()),
    };
    let st = match sys::fstat(src.as_fd()) {
        Ok(st) => st,
        Err(e) => return fail(e.to_string()),
    };
    let dir = NewDir {
        mode: st.st_mode & 0o7777,
        owner: Some((st.st_uid, st.st_gid)),
    };
    let dst = match cat.make_backing(id, &to, dir) {
        Ok(fd) => fd,
        Err(e) => return fail(e.to_string()),
    };
    let copied = super::clone::copy_beating(
        store.as_ref(),
        id,
        owner,
        cancel,
        pause,
        src.as_fd(),
        dst.as_fd(),
        progress,
    );
    let stats = match copied {
        Ok(s) => s,
        Err(CopyError::Cancelled) => {
            if !super::holds(store.as_ref(), &claim) {
                return Ok(super::claim_lost(&claim, "switching"));
            }
            if let Some(by) = super::cancel_request(store.as_ref(), id) {
                drop((src, dst));
                return cancelled(&by);
            }
            store.release_job(id, owner, false)?;
            return Ok(Outcome::Cancelled);
        }
        Err(e) => return fail(e.to_string()),
    };
    drop((src, dst));
    super::stop_point("relocate-switch");
    fenced!(
        &claim,
        "switching",
        store.switch_volume(
            &claim,
            Some(&to),
            &format!(
                "relocated from {from} to {to}: {} entries, {} bytes ({owner})",
                stats.entries, stats.bytes
            ),
        )
    );
    store.release_job(id, owner, true)?;
    if let Err(e) = store.record_size(id, stats.bytes, stats.entries) {
        warn!("recording the size of {:?}: {e}", v.name);
    }
    info!("relocated {:?} to {to}: {} entries", v.name, stats.entries);
    // The old copy goes once every mount has switched (cleanup waits for
    // their confirmation; if shut down first, the next start removes it).
    cleanup(cat, id, owner, cancel)?;
    Ok(Outcome::Complete(stats.entries))
}

/// Removes the old copy a finished relocation left behind (its row names
/// the old volume until this is done), under a claim of its own: the
/// removal confirms the claim in a fenced transaction before it removes
/// anything (see [`purge::remove_copy`]), and clearing the old volume is
/// fenced.
pub fn cleanup(cat: &Catalog, id: &str, owner: &str, cancel: &AtomicBool) -> Result<Outcome> {
    let store = cat.store();
    let Some((job, v)) = super::claim(store.as_ref(), id, CLEANUP_KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    let claim = job.claim();
    let Some(prev) = v.prev_volume.clone().filter(|p| *p != v.volume) else {
        fenced!(
            &claim,
            "clearing the old volume",
            store.clear_prev_volume(&claim)
        );
        store.release_job(id, owner, true)?;
        return Ok(Outcome::NotApplicable);
    };
    // Every mount must have switched to the new copy (and drained writes
    // begun before the relocation) before the old one goes.
    match super::settle(store.as_ref(), id, &v.name, cancel)? {
        Settled::Confirmed => {}
        Settled::Cancelled | Settled::Unconfirmed(_) => {
            // Tried again at the next start or scan; the row keeps the old volume.
            store.release_job(id, owner, false)?;
            return Ok(Outcome::Cancelled);
        }
    }
    let mut n = 0;
    super::stop_point("cleanup-remove");
    match purge::remove_copy(cat, &claim, &prev, cancel, None, false, &mut |d| n = d) {
        Ok(()) => {
            fenced!(
                &claim,
                "clearing the old volume",
                store.clear_prev_volume(&claim)
            );
            store.release_job(id, owner, true)?;
            Ok(Outcome::Complete(n))
        }
        Err(_) if !super::holds(store.as_ref(), &claim) => {
            Ok(super::claim_lost(&claim, "removing the old copy"))
        }
        Err(crate::backing::remove::RemoveError::Cancelled) => {
            store.release_job(id, owner, false)?;
            Ok(Outcome::Cancelled)
        }
        Err(e) => {
            store.release_job(id, owner, true)?;
            warn!("removing the old copy of {:?} on {prev}: {e}", v.name);
            Ok(Outcome::Failed(e.to_string()))
        }
    }
}
