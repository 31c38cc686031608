//! Cloning a vfolder: the target is created `cloning` beside its source
//! (also `cloning`, so it refuses writes and stays consistent), the copy runs
//! as a job, and one transaction ends it: both ready, or the source ready and
//! the target's partial data on to the purge. A clone interrupted by
//! shutdown or a crash is rolled back at the next start.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{info, warn};

use super::{Heartbeat, Outcome, Settled};
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
            cat.remake_if_moved(&id, &volume, dir)?;
            cat.store().queue_job(&id, KIND, None)?;
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
    let Some((job, d)) = super::claim(store.as_ref(), dst, KIND, owner)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    let Some(src_id) = d.clone_src.clone().filter(|_| d.status.is_cloning()) else {
        store.release_job(dst, owner, true)?;
        return Ok(Outcome::NotApplicable);
    };
    let claim = job.claim();
    // The clone's end (both ready, or the source ready and the target on to
    // the purge, which removes its partial data under a claim of its own)
    // is fenced: made only while this claim holds.
    let cancelled = |by: &str| -> Result<Outcome> {
        let why = format!("clone cancelled by {by}; rolled back");
        fenced!(
            &claim,
            "rolling the cancelled clone back",
            store.finish_clone(&claim, Some(&why), &format!("{why} ({owner})"))
        );
        store.release_job(dst, owner, true)?;
        info!("{why}: {:?}", d.name);
        Ok(Outcome::CancelledBy(by.to_string()))
    };
    if let Some(by) = &job.cancel {
        return cancelled(by);
    }
    if job.claims > 1 {
        let why = "clone interrupted (shutdown or crash); rolled back";
        fenced!(
            &claim,
            "rolling the clone back",
            store.finish_clone(&claim, Some(why), &format!("{why} ({owner})"))
        );
        store.release_job(dst, owner, true)?;
        info!("rolled back the interrupted clone into {:?}", d.name);
        return Ok(Outcome::RolledBack(why.into()));
    }
    let s = store.get(&src_id)?;
    // The source is read only once every mount refuses writes to it and
    // the writes begun before have drained.
    match super::settle(store.as_ref(), &src_id, &s.name, cancel)? {
        Settled::Confirmed => {}
        Settled::Cancelled => {
            if let Some(by) = super::cancel_request(store.as_ref(), dst) {
                return cancelled(&by);
            }
            store.release_job(dst, owner, false)?;
            return Ok(Outcome::Cancelled);
        }
        Settled::Unconfirmed(e) => {
            let why = format!("clone abandoned: {e}");
            fenced!(
                &claim,
                "abandoning the clone",
                store.finish_clone(&claim, Some(&why), &format!("{why} ({owner})"))
            );
            store.release_job(dst, owner, true)?;
            warn!("{why}");
            return Ok(Outcome::RolledBack(why));
        }
    }
    let open = |v: &VFolder| {
        cat.open_backing(&v.id, &v.volume, libc::O_RDONLY | libc::O_NOFOLLOW)
            .map_err(|err| CopyError::Failed {
                path: cat.backing_path(v).display().to_string(),
                err,
            })
    };
    let result = open(&s).and_then(|sfd| {
        let dfd = open(&d)?;
        copy_beating(
            store.as_ref(),
            dst,
            owner,
            cancel,
            pause,
            sfd.as_fd(),
            dfd.as_fd(),
            progress,
        )
    });
    match result {
        Ok(st) => {
            super::stop_point("clone-end");
            let cause = format!(
                "clone done: {} entries, {} bytes from {:?} ({owner})",
                st.entries, st.bytes, s.name
            );
            fenced!(
                &claim,
                "ending the clone",
                store.finish_clone(&claim, None, &cause)
            );
            store.release_job(dst, owner, true)?;
            for v in [dst, src_id.as_str()] {
                if let Err(e) = store.record_size(v, st.bytes, st.entries) {
                    warn!("recording the size of {v}: {e}");
                }
            }
            info!(
                "cloned {:?} into {:?}: {} entries",
                s.name, d.name, st.entries
            );
            Ok(Outcome::Complete(st.entries))
        }
        Err(CopyError::Cancelled) => {
            if !super::holds(store.as_ref(), &claim) {
                return Ok(super::claim_lost(&claim, "ending the clone"));
            }
            if let Some(by) = super::cancel_request(store.as_ref(), dst) {
                return cancelled(&by);
            }
            store.release_job(dst, owner, false)?;
            Ok(Outcome::Cancelled)
        }
        Err(e) => {
            let msg = e.to_string();
            let cause = format!("clone failed: {msg}; rolled back ({owner})");
            fenced!(
                &claim,
                "rolling the failed clone back",
                store.finish_clone(&claim, Some(&msg), &cause)
            );
            store.release_job(dst, owner, true)?;
            warn!("clone of {:?} into {:?} failed: {msg}", s.name, d.name);
            Ok(Outcome::Failed(msg))
        }
    }
}
