//! Cloning a vfolder: the target is created `cloning` beside its source
//! (also `cloning`, so it refuses writes and stays consistent), the copy runs
//! as a job, and one transaction ends it: both ready, or the source ready and
//! the target's partial data on to the purge. A clone interrupted by
//! shutdown or a crash is rolled back at the next start.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{info, warn};

use super::{ClaimGuard, Heartbeat, Outcome, Settled, end_job};
use crate::backing::copy::{self, CopyError, CopyStats};
use crate::backing::sys;
use crate::catalog::{Catalog, NewDir};
use crate::store::{Result, StoreError, VFolder};

/// Job kind recorded in the store.
pub const KIND: &str = "clone";

/// Starts cloning live vfolder `src` into a new vfolder `dst` on `volume`
/// (the source's if None); the copy is left to [`run`].
pub fn start(
    cat: &Catalog,
    src: &str,
    dst: &str,
    volume: Option<&str>,
    cause: &str,
) -> Result<(VFolder, VFolder)> {
    crate::name::validate(dst).map_err(|e| StoreError::InvalidName(dst.to_string(), e))?;
    let s = cat.store().get_live(src)?;
    let volume = volume.unwrap_or(&s.volume).to_string();
    cat.usable_volume(&volume)?;
    let root = cat
        .open_backing(&s.id, &s.volume, libc::O_PATH | libc::O_NOFOLLOW)
        .map_err(|e| StoreError::Io(cat.backing_path(&s).display().to_string(), e))?;
    let st = sys::fstat(root.as_fd())
        .map_err(|e| StoreError::Io(cat.backing_path(&s).display().to_string(), e))?;
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    let dir = NewDir {
        mode: st.st_mode & 0o7777,
        owner: Some((st.st_uid, st.st_gid)),
    };
    drop(cat.make_backing(&id, &volume, dir)?);
    let started = cat.store().begin_clone(&s.id, &id, dst, &volume, cause);
    match started {
        Ok(pair) => {
            // The job is queued already (with the rows): if this fails, the
            // job finds no target and rolls the clone back.
            cat.remake_if_moved(&id, &volume, dir)?;
            Ok(pair)
        }
        Err(e) => {
            let _ = cat.remove_backing_root(&id, &volume);
            Err(e)
        }
    }
}

/// Copies `src` into `dst` (see [`copy::copy_tree`]) while keeping `owner`'s
/// claim on `id` alive; stops on shutdown or a lost claim.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_beating(
    store: &dyn crate::store::Store,
    id: &str,
    owner: &str,
    cancel: &AtomicBool,
    pause: Option<Duration>,
    src: std::os::fd::BorrowedFd<'_>,
    dst: std::os::fd::BorrowedFd<'_>,
    progress: &mut dyn FnMut(&CopyStats),
) -> std::result::Result<CopyStats, CopyError> {
    let stop = AtomicBool::new(false);
    // The pause slows each copied entry in the copying threads; the
    // heartbeat here only renews the claim and watches for shutdown.
    let mut beat = Heartbeat::new(store, id, owner, cancel, None).watching_cancel();
    copy::copy_tree(src, dst, super::COPY_THREADS, pause, &stop, &mut |st| {
        if beat.beat(st.entries, st.bytes) {
            stop.store(true, Ordering::Release);
        }
        progress(st);
    })
}

/// Runs the clone into `dst` under a job claim for `owner`; `progress`
/// sees files and bytes copied so far.
pub fn run(
    cat: &Catalog,
    dst: &str,
    owner: &str,
    cancel: &AtomicBool,
    pause: Option<Duration>,
    progress: &mut dyn FnMut(&CopyStats),
) -> Result<Outcome> {
    let store = cat.store();
    let Some((claim, job, d)) = ClaimGuard::take(store.as_ref(), dst, KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    let Some(src_id) = d.clone_src.clone().filter(|_| d.status.is_cloning()) else {
        claim.finish()?;
        return Ok(Outcome::NotApplicable);
    };
    let a = Attempt { cat, owner, d };
    if let Some(by) = &job.cancel {
        return a.cancelled(claim, by);
    }
    if job.claims > 1 {
        let why = "clone interrupted (shutdown or crash); rolled back";
        let then = Outcome::RolledBack(why.into());
        let o = a.roll_back(claim, "rolling the clone back", why, then)?;
        if o != Outcome::ClaimLost {
            info!("rolled back the interrupted clone into {:?}", a.d.name);
        }
        return Ok(o);
    }
    let s = store.get(&src_id)?;
    // The source is read only once every mount refuses writes to it and
    // the writes begun before have drained.
    match super::settle(store.as_ref(), &src_id, &s.name, cancel)? {
        Settled::Confirmed => {}
        Settled::Cancelled => return a.stopped(claim),
        Settled::Unconfirmed(e) => {
            let why = format!("clone abandoned: {e}");
            let then = Outcome::RolledBack(why.clone());
            let o = a.roll_back(claim, "abandoning the clone", &why, then)?;
            if o != Outcome::ClaimLost {
                warn!("{why}");
            }
            return Ok(o);
        }
    }
    let result = a.copy(&s, cancel, pause, progress);
    a.end(claim, &s, result)
}

/// One attempt at a clone into `d`, for `owner`.
struct Attempt<'a> {
    cat: &'a Catalog,
    owner: &'a str,
    d: VFolder,
}

impl Attempt<'_> {
    fn store(&self) -> &dyn crate::store::Store {
        self.cat.store().as_ref()
    }

    /// The clone's fenced end as a roll-back for `why` (the source ready,
    /// the target on to the purge, which removes its partial data under a
    /// claim of its own), then the job finished: gives `then`, or
    /// [`Outcome::ClaimLost`].
    fn roll_back(
        &self,
        claim: ClaimGuard<'_>,
        step: &str,
        why: &str,
        then: Outcome,
    ) -> Result<Outcome> {
        let cause = format!("{why} ({})", self.owner);
        let ended = self.store().finish_clone(&claim, Some(why), &cause);
        end_job(ended, claim, step, then)
    }

    /// Asked to stop by `by`: rolled back.
    fn cancelled(&self, claim: ClaimGuard<'_>, by: &str) -> Result<Outcome> {
        let why = format!("clone cancelled by {by}; rolled back");
        let then = Outcome::CancelledBy(by.to_string());
        let o = self.roll_back(claim, "rolling the cancelled clone back", &why, then)?;
        if o != Outcome::ClaimLost {
            info!("{why}: {:?}", self.d.name);
        }
        Ok(o)
    }

    /// Stopped before its end: cancelled if someone asked, else shut down
    /// (released for the next start to roll back).
    fn stopped(&self, claim: ClaimGuard<'_>) -> Result<Outcome> {
        if let Some(by) = super::cancel_request(self.store(), &self.d.id) {
            return self.cancelled(claim, &by);
        }
        claim.release()?;
        Ok(Outcome::Cancelled)
    }

    /// Copies `s` into the target, renewing the claim as it goes.
    fn copy(
        &self,
        s: &VFolder,
        cancel: &AtomicBool,
        pause: Option<Duration>,
        progress: &mut dyn FnMut(&CopyStats),
    ) -> std::result::Result<CopyStats, CopyError> {
        let open = |v: &VFolder| {
            self.cat
                .open_backing(&v.id, &v.volume, libc::O_RDONLY | libc::O_NOFOLLOW)
                .map_err(|err| CopyError::Failed {
                    path: self.cat.backing_path(v).display().to_string(),
                    err,
                })
        };
        let sfd = open(s)?;
        let dfd = open(&self.d)?;
        copy_beating(
            self.store(),
            &self.d.id,
            self.owner,
            cancel,
            pause,
            sfd.as_fd(),
            dfd.as_fd(),
            progress,
        )
    }

    /// Ends the clone of `s` by the copy's `result` (fenced): both ready,
    /// or rolled back.
    fn end(
        &self,
        claim: ClaimGuard<'_>,
        s: &VFolder,
        result: std::result::Result<CopyStats, CopyError>,
    ) -> Result<Outcome> {
        let (d, owner) = (&self.d, self.owner);
        match result {
            Ok(st) => {
                super::stop_point("clone-end");
                let cause = format!(
                    "clone done: {} entries, {} bytes from {:?} ({owner})",
                    st.entries, st.bytes, s.name
                );
                let ended = self.store().finish_clone(&claim, None, &cause);
                let o = end_job(
                    ended,
                    claim,
                    "ending the clone",
                    Outcome::Complete(st.entries),
                )?;
                if o == Outcome::ClaimLost {
                    return Ok(o);
                }
                for v in [d.id.as_str(), s.id.as_str()] {
                    if let Err(e) = self.store().record_size(v, st.bytes, st.entries) {
                        warn!("recording the size of {v}: {e}");
                    }
                }
                info!(
                    "cloned {:?} into {:?}: {} entries",
                    s.name, d.name, st.entries
                );
                Ok(o)
            }
            Err(CopyError::Cancelled) => {
                if !claim.holds() {
                    return Ok(claim.lost("ending the clone"));
                }
                self.stopped(claim)
            }
            Err(e) => {
                let msg = e.to_string();
                let cause = format!("clone failed: {msg}; rolled back ({owner})");
                let ended = self.store().finish_clone(&claim, Some(&msg), &cause);
                let o = end_job(
                    ended,
                    claim,
                    "rolling the failed clone back",
                    Outcome::Failed(msg.clone()),
                )?;
                if o != Outcome::ClaimLost {
                    warn!("clone of {:?} into {:?} failed: {msg}", s.name, d.name);
                }
                Ok(o)
            }
        }
    }
}
