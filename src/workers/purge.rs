//! Purging: removing a `delete-ongoing` vfolder's data under a job claim.
//! The claim (owner and lease in the store) keeps two processes from removing
//! one vfolder at once; shutdown stops between two files and leaves the row
//! `delete-ongoing` for the next start to resume.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{error, info};

use super::{ClaimGuard, Heartbeat, Outcome, lease};
use crate::backing::remove::{self, RemoveError};
use crate::catalog::Catalog;
use crate::status::Op;
use crate::store::{Claim, Result, StoreError, TransitionArgs, VFolder};

/// Job kind recorded in the store.
pub const KIND: &str = "purge";

/// Environment variable slowing each removal step by this many
/// microseconds: a testing aid to catch a purge in the middle.
pub const THROTTLE_ENV: &str = "VFOLDERFS_PURGE_THROTTLE_US";

/// The throttle asked for by [`THROTTLE_ENV`], if any.
pub fn throttle_from_env() -> Option<Duration> {
    std::env::var(THROTTLE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&us| us > 0)
        .map(Duration::from_micros)
}

/// Removes one `delete-ongoing` vfolder's data, claiming the job for
/// `owner` first. `progress` sees the running count of removed entries;
/// `pause` slows each step (testing aid).
pub fn purge_one(
    cat: &Catalog,
    id: &str,
    owner: &str,
    cancel: &AtomicBool,
    pause: Option<Duration>,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let store = cat.store();
    // A purge stopped by `vfolderfs cancel` waits for an explicit resume
    // (`vfolderfs purge`, `jobs --resume`), which withdraws the request
    // first: the pool's scanner does not take it up again.
    if let Some(j) = store.job(id)?
        && let Some(by) = j.cancel
        && j.kind == KIND
    {
        return Ok(Outcome::CancelledBy(by));
    }
    let Some((claim, job, v)) = ClaimGuard::take(store.as_ref(), id, KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    if !v.status.is_purging() {
        claim.finish()?;
        return Ok(Outcome::NotApplicable);
    }
    if job.claims > 1 {
        info!("resuming the purge of {:?} ({id})", v.name);
    }
    let mut done = job.done;
    // Removing a delete-ongoing vfolder's data is what every owner of this
    // job does (that status only ends in delete-complete or delete-error),
    // so a stale owner removing along with a new one does no harm; the
    // status end below is what is fenced.
    let result = remove_copy(cat, &claim, &v.volume, cancel, pause, true, &mut |n| {
        done = job.done + n;
        progress(done);
    });
    match result {
        Ok(()) => {
            super::stop_point("purge-end");
            let cause = format!("purge done: {done} entries removed ({owner})");
            fenced!(
                &claim,
                "ending the purge",
                store.finish_purge(&claim, None, &cause)
            );
            claim.finish()?;
            info!("purged {:?} ({id}): {done} entries", v.name);
            Ok(Outcome::Complete(done))
        }
        Err(RemoveError::Cancelled) => {
            if !claim.holds() {
                return Ok(claim.lost("ending the purge"));
            }
            let _ = store.renew_job(id, owner, lease(), done, 0);
            claim.release()?;
            if let Some(by) = super::cancel_request(store.as_ref(), id) {
                info!(
                    "purge of {:?} ({id}) stopped after {done} entries: cancelled by {by}; \
                     it stays delete-ongoing until resumed",
                    v.name
                );
                return Ok(Outcome::CancelledBy(by));
            }
            Ok(Outcome::Cancelled)
        }
        Err(e) => {
            let msg = e.to_string();
            let cause = format!("purge failed ({owner})");
            fenced!(
                &claim,
                "recording the purge failure",
                store.finish_purge(&claim, Some(&msg), &cause)
            );
            claim.finish()?;
            error!("purge of {:?} ({id}) failed: {msg}", v.name);
            Ok(Outcome::Failed(msg))
        }
    }
}

/// Moves a purgeable vfolder to `delete-ongoing`; a vfolder already being
/// purged is left as it is. Refuses any other status.
pub fn request(cat: &Catalog, id: &str, cause: &str) -> Result<()> {
    let v = cat.store().get(id)?;
    if v.status.is_purging() {
        return Ok(());
    }
    match cat.store().transition(
        id,
        Op::Purge,
        TransitionArgs {
            cause,
            ..Default::default()
        },
    ) {
        // Lost the race to another requester: the purge is on, as asked.
        Err(StoreError::Refused { status, .. }) if status.is_purging() => Ok(()),
        other => other.map(drop),
    }
}

/// The trash retention's purge of `listed`, a row as read earlier (by the
/// scanner): moves it to `delete-ongoing` only if it is still in the trash
/// deletion it was read in, compared on its status and its
/// `status_changed_at` in the same compare-and-set. A vfolder restored (and
/// perhaps deleted again) since it was read is left alone: its retention
/// counts from its new deletion. Returns whether the purge was requested.
pub fn request_expired(cat: &Catalog, listed: &VFolder, cause: &str) -> Result<bool> {
    match cat.store().transition(
        &listed.id,
        Op::Purge,
        TransitionArgs {
            cause,
            if_changed_at: Some(listed.status_changed_at),
            ..Default::default()
        },
    ) {
        Ok(_) => Ok(true),
        // Its status changed since it was read (restored, deleted again,
        // purged by someone else): nothing to do on this read.
        Err(StoreError::Refused { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `claim`'s vfolder's backing directory on `volume` (a missing
/// one is fine) under that job claim, renewing it as it goes; stops between
/// two entries when `cancel` is set, the claim is lost or (with
/// `cancellable`) the job row records a cancellation request (all give
/// [`RemoveError::Cancelled`]; [`super::holds`] and
/// [`super::cancel_request`] tell them apart). A removal that ends a
/// cancelled job (a partial copy) is not `cancellable`.
///
/// Fencing: the claim is confirmed in a fenced transaction after the
/// directory is opened and before anything in it is removed, and again
/// just before the emptied directory itself is removed. The walk works on
/// the directory opened while the claim was held, so an owner stopped after
/// the confirmation and taken over meanwhile only removes what the new
/// owner removes too (the same copy; once the new owner has removed it, the
/// stale owner's descriptor points at an unlinked, empty directory), never
/// a copy made later at the same path. The final `rmdir` goes by name but
/// removes only an empty directory.
pub fn remove_copy(
    cat: &Catalog,
    claim: &Claim,
    volume: &str,
    cancel: &AtomicBool,
    pause: Option<Duration>,
    cancellable: bool,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<(), RemoveError> {
    let id = claim.vfolder_id.as_str();
    let store = cat.store();
    let mut beat = Heartbeat::new(store.as_ref(), id, &claim.owner, cancel, pause);
    if cancellable {
        beat = beat.watching_cancel();
    }
    let mut done = 0;
    let mut stopped = false;
    let fd = match cat.open_backing(id, volume, libc::O_RDONLY | libc::O_NOFOLLOW) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(RemoveError::Failed {
                path: ".".into(),
                err: e,
            });
        }
        Ok(fd) => fd,
    };
    confirm(store.as_ref(), claim)?;
    let stop_flag = AtomicBool::new(false);
    remove::empty_dir(fd, &stop_flag, &mut || {
        done += 1;
        stopped = beat.beat(done, 0);
        progress(done);
        if stopped {
            stop_flag.store(true, Ordering::Release);
        }
    })?;
    if stopped || cancel.load(Ordering::Acquire) {
        return Err(RemoveError::Cancelled);
    }
    confirm(store.as_ref(), claim)?;
    cat.remove_backing_root(id, volume)
        .map_err(|err| RemoveError::Failed {
            path: ".".into(),
            err,
        })
}

/// The fenced proof that `claim` is held, as a removal step's error.
fn confirm(store: &dyn crate::store::Store, claim: &Claim) -> std::result::Result<(), RemoveError> {
    match store.confirm_claim(claim, lease()) {
        Ok(()) => Ok(()),
        Err(StoreError::ClaimLost { .. }) => Err(RemoveError::Cancelled),
        Err(e) => Err(RemoveError::Failed {
            path: ".".into(),
            err: std::io::Error::other(e.to_string()),
        }),
    }
}
