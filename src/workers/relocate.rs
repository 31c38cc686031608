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

use super::{ClaimGuard, Outcome, Settled, end_job, purge};
use crate::backing::copy::{CopyError, CopyStats};
use crate::backing::sys;
use crate::catalog::{Catalog, NewDir};
use crate::store::{RelocationStart, Result, StoreError, VFolder};
use crate::volumes::VolumeError;

/// Job kind recorded in the store.
pub const KIND: &str = "relocate";
/// Job kind of removing a relocated vfolder's old copy.
pub const CLEANUP_KIND: &str = "relocate-cleanup";

/// Starts relocating live vfolder `name` to volume `to`, pinning it against
/// tiering with cause `pin`; the move is left to [`run`].
pub fn start(cat: &Catalog, name: &str, to: &str, cause: &str, pin: &str) -> Result<VFolder> {
    let v = cat.store().get_live(name)?;
    cat.usable_volume(to)?;
    if v.volume == to {
        return Err(VolumeError::AlreadyOn {
            vfolder: v.name,
            volume: to.to_string(),
        }
        .into());
    }
    // The status change, the job and the pin in one transaction: a crash
    // or a failing write cannot leave a `performing` row without its job.
    cat.store()
        .start_relocation(&v.id, to, cause, RelocationStart::Pinning(pin))
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
    let Some((claim, job, v)) = ClaimGuard::take(store.as_ref(), id, KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    if !v.status.is_relocating() {
        claim.finish()?;
        return Ok(Outcome::NotApplicable);
    }
    let Some(to) = job.arg.clone().filter(|t| cat.volume(t).is_ok()) else {
        let why = "relocation has no usable target volume; rolled back";
        let ended = store.switch_volume(&claim, None, why);
        let rolled_back = Outcome::RolledBack(why.into());
        return end_job(ended, claim, "rolling the relocation back", rolled_back);
    };
    let from = v.volume.clone();
    let r = Relocation {
        cat,
        owner,
        cancel,
        v,
        from,
        to,
    };
    if job.claims > 1 {
        return r.resume(claim, job.cancel.as_deref());
    }
    if let Some(by) = &job.cancel {
        return r.cancelled(claim, by);
    }
    if cat.same_filesystem(&r.from, &r.to)? {
        return r.by_rename(claim);
    }
    r.by_copy(claim, pause, progress)
}

/// One attempt at relocating `v` from volume `from` to `to`, for `owner`.
struct Relocation<'a> {
    cat: &'a Catalog,
    owner: &'a str,
    cancel: &'a AtomicBool,
    v: VFolder,
    from: String,
    to: String,
}

impl<'c> Relocation<'c> {
    fn store(&self) -> &'c dyn crate::store::Store {
        self.cat.store().as_ref()
    }

    /// Removes the partial new copy under the claim, and gives the claim
    /// back; or the outcome to stop with (the claim lost, or released
    /// after a failed removal).
    fn remove_partial<'s>(
        &self,
        claim: ClaimGuard<'s>,
    ) -> Result<std::result::Result<ClaimGuard<'s>, Outcome>> {
        let (id, to) = (&self.v.id, &self.to);
        match purge::remove_copy(self.cat, &claim, to, self.cancel, None, false, &mut |_| {}) {
            Ok(()) => Ok(Ok(claim)),
            Err(_) if !claim.holds() => {
                Ok(Err(claim.lost("removing the partial copy or switching")))
            }
            Err(e) => {
                claim.release()?;
                warn!("removing the partial copy of {id} on {to}: {e}");
                Ok(Err(Outcome::Cancelled))
            }
        }
    }

    /// The partial new copy removed, the fenced switch back (the vfolder
    /// ready on its old volume, the old copy untouched) with the history
    /// `cause` (the owner added), the job finished; gives `then`.
    fn roll_back(
        &self,
        claim: ClaimGuard<'_>,
        step: &str,
        cause: &str,
        then: Outcome,
    ) -> Result<Outcome> {
        let claim = match self.remove_partial(claim)? {
            Ok(c) => c,
            Err(o) => return Ok(o),
        };
        let cause = format!("{cause} ({})", self.owner);
        let ended = self.store().switch_volume(&claim, None, &cause);
        end_job(ended, claim, step, then)
    }

    /// The data is on the new volume (moved by a rename: no old copy is
    /// left to remove): the fenced switch and clearing, the job finished.
    fn renamed(&self, claim: ClaimGuard<'_>, cause: String) -> Result<Outcome> {
        fenced!(
            &claim,
            "switching",
            self.store().switch_volume(&claim, Some(&self.to), &cause)
        );
        let ended = self.store().clear_prev_volume(&claim);
        end_job(
            ended,
            claim,
            "clearing the old volume",
            Outcome::Complete(0),
        )
    }

    /// Asked to stop by `by`: rolled back.
    fn cancelled(&self, claim: ClaimGuard<'_>, by: &str) -> Result<Outcome> {
        let why = format!("relocation to {} cancelled by {by}; rolled back", self.to);
        let o = self.roll_back(
            claim,
            "rolling the cancelled relocation back",
            &why,
            Outcome::CancelledBy(by.to_string()),
        )?;
        if matches!(o, Outcome::CancelledBy(_)) {
            info!("{why}: {:?}", self.v.name);
        }
        Ok(o)
    }

    /// Stopped before the switch: cancelled if someone asked, else shut
    /// down (released for the next start to resume).
    fn stopped(&self, claim: ClaimGuard<'_>) -> Result<Outcome> {
        if let Some(by) = super::cancel_request(self.store(), &self.v.id) {
            return self.cancelled(claim, &by);
        }
        claim.release()?;
        Ok(Outcome::Cancelled)
    }

    /// A relocation interrupted (shutdown or crash): finishes a rename
    /// that happened, else undoes a partial copy.
    fn resume(&self, claim: ClaimGuard<'_>, cancel: Option<&str>) -> Result<Outcome> {
        let (id, to, owner) = (&self.v.id, &self.to, self.owner);
        if !self.cat.backing_exists(id, &self.from) && self.cat.backing_exists(id, to) {
            return self.renamed(
                claim,
                format!("relocation to {to} completed on resume ({owner})"),
            );
        }
        if let Some(by) = cancel {
            return self.cancelled(claim, by);
        }
        let why = format!("relocation to {to} interrupted; rolled back");
        let rolled_back = Outcome::RolledBack(why.clone());
        self.roll_back(claim, "rolling the relocation back", &why, rolled_back)
    }

    /// Within one filesystem: a rename, after a fenced confirmation; undone
    /// if the switch then finds the claim lost.
    fn by_rename(&self, claim: ClaimGuard<'_>) -> Result<Outcome> {
        let (id, from, to, v) = (&self.v.id, &self.from, &self.to, &self.v);
        fenced!(
            &claim,
            "moving the data",
            self.store().confirm_claim(&claim, super::lease())
        );
        self.cat
            .rename_backing(id, from, to)
            .map_err(|e| StoreError::Io(self.cat.backing_path(v).display().to_string(), e))?;
        let cause = format!("relocated from {from} to {to} by rename ({})", self.owner);
        let done = self.renamed(claim, cause)?;
        if done == Outcome::ClaimLost {
            // Stopped between the confirmation and the rename, and taken
            // over: the new owner saw the data where the row said and rolled
            // back; put the data back there. (A new owner that saw the
            // rename finished it instead, and the row names `to`.)
            let now = self.store().get(id)?;
            if now.volume == *from
                && !self.cat.backing_exists(id, from)
                && let Err(e) = self.cat.rename_backing(id, to, from)
            {
                warn!(
                    "moving {:?} back to {from} after losing the claim: {e}",
                    v.name
                );
            }
            return Ok(done);
        }
        info!("relocated {:?} to {to} (rename)", v.name);
        Ok(done)
    }

    /// A failure before the switch, `msg`: rolled back.
    fn fail(&self, claim: ClaimGuard<'_>, msg: String) -> Result<Outcome> {
        // The partial copy first, while the claim (confirmed before any
        // removal) still shows it is this job's; then the fenced switch back.
        let cause = format!("relocation to {} failed: {msg}", self.to);
        let failed = Outcome::Failed(msg.clone());
        let o = self.roll_back(claim, "rolling the relocation back", &cause, failed)?;
        if matches!(o, Outcome::Failed(_)) {
            warn!(
                "relocation of {:?} to {} failed: {msg}",
                self.v.name, self.to
            );
        }
        Ok(o)
    }

    /// Across filesystems: copy (once every mount refuses writes and the
    /// writes begun before have drained), switch, remove the old copy.
    fn by_copy(
        &self,
        claim: ClaimGuard<'_>,
        pause: Option<Duration>,
        progress: &mut dyn FnMut(&CopyStats),
    ) -> Result<Outcome> {
        let (id, to, owner) = (self.v.id.as_str(), &self.to, self.owner);
        match super::settle(self.store(), id, &self.v.name, self.cancel)? {
            Settled::Confirmed => {}
            Settled::Cancelled => return self.stopped(claim),
            Settled::Unconfirmed(e) => {
                let why = format!("relocation to {to} abandoned: {e}");
                let cause = format!("{why} ({owner})");
                let ended = self.store().switch_volume(&claim, None, &cause);
                let rolled_back = Outcome::RolledBack(why.clone());
                let o = end_job(ended, claim, "abandoning the relocation", rolled_back)?;
                if o != Outcome::ClaimLost {
                    warn!("{why}");
                }
                return Ok(o);
            }
        }
        let copied = match self.copy(pause, progress) {
            Ok(r) => r,
            Err(msg) => return self.fail(claim, msg),
        };
        let stats = match copied {
            Ok(s) => s,
            Err(CopyError::Cancelled) => {
                if !claim.holds() {
                    return Ok(claim.lost("switching"));
                }
                return self.stopped(claim);
            }
            Err(e) => return self.fail(claim, e.to_string()),
        };
        super::stop_point("relocate-switch");
        let cause = format!(
            "relocated from {} to {to}: {} entries, {} bytes ({owner})",
            self.from, stats.entries, stats.bytes
        );
        let ended = self.store().switch_volume(&claim, Some(to), &cause);
        let o = end_job(ended, claim, "switching", Outcome::Complete(stats.entries))?;
        if o == Outcome::ClaimLost {
            return Ok(o);
        }
        if let Err(e) = self.store().record_size(id, stats.bytes, stats.entries) {
            warn!("recording the size of {:?}: {e}", self.v.name);
        }
        info!(
            "relocated {:?} to {to}: {} entries",
            self.v.name, stats.entries
        );
        // The old copy goes once every mount has switched (cleanup waits for
        // their confirmation; if shut down first, the next start removes it).
        cleanup(self.cat, id, owner, self.cancel)?;
        Ok(o)
    }

    /// Copies the data from the old volume into a new copy on the target,
    /// renewing the claim as it goes; both directories are closed on
    /// return. The outer error is a failure to open them, as a message.
    fn copy(
        &self,
        pause: Option<Duration>,
        progress: &mut dyn FnMut(&CopyStats),
    ) -> std::result::Result<std::result::Result<CopyStats, CopyError>, String> {
        let id = &self.v.id;
        let src = self
            .cat
            .open_backing(id, &self.from, libc::O_RDONLY | libc::O_NOFOLLOW)
            .map_err(|e| e.to_string())?;
        let st = sys::fstat(src.as_fd()).map_err(|e| e.to_string())?;
        let dir = NewDir {
            mode: st.st_mode & 0o7777,
            owner: Some((st.st_uid, st.st_gid)),
        };
        let dst = self
            .cat
            .make_backing(id, &self.to, dir)
            .map_err(|e| e.to_string())?;
        Ok(super::clone::copy_beating(
            self.store(),
            id,
            self.owner,
            self.cancel,
            pause,
            src.as_fd(),
            dst.as_fd(),
            progress,
        ))
    }
}

/// Removes the old copy a finished relocation left behind (its row names
/// the old volume until this is done), under a claim of its own: the
/// removal confirms the claim in a fenced transaction before it removes
/// anything (see [`purge::remove_copy`]), and clearing the old volume is
/// fenced.
pub fn cleanup(cat: &Catalog, id: &str, owner: &str, cancel: &AtomicBool) -> Result<Outcome> {
    let store = cat.store();
    let Some((claim, _, v)) = ClaimGuard::take(store.as_ref(), id, CLEANUP_KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    let Some(prev) = v.prev_volume.clone().filter(|p| *p != v.volume) else {
        let ended = store.clear_prev_volume(&claim);
        return end_job(
            ended,
            claim,
            "clearing the old volume",
            Outcome::NotApplicable,
        );
    };
    // Every mount must have switched to the new copy (and drained writes
    // begun before the relocation) before the old one goes.
    match super::settle(store.as_ref(), id, &v.name, cancel)? {
        Settled::Confirmed => {}
        Settled::Cancelled | Settled::Unconfirmed(_) => {
            // Tried again at the next start or scan; the row keeps the old volume.
            claim.release()?;
            return Ok(Outcome::Cancelled);
        }
    }
    let mut n = 0;
    super::stop_point("cleanup-remove");
    match purge::remove_copy(cat, &claim, &prev, cancel, None, false, &mut |d| n = d) {
        Ok(()) => {
            let ended = store.clear_prev_volume(&claim);
            end_job(
                ended,
                claim,
                "clearing the old volume",
                Outcome::Complete(n),
            )
        }
        Err(_) if !claim.holds() => Ok(claim.lost("removing the old copy")),
        Err(crate::backing::remove::RemoveError::Cancelled) => {
            claim.release()?;
            Ok(Outcome::Cancelled)
        }
        Err(e) => {
            claim.finish()?;
            warn!("removing the old copy of {:?} on {prev}: {e}", v.name);
            Ok(Outcome::Failed(e.to_string()))
        }
    }
}
