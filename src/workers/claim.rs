//! A job claim held by this process, as a value: [`ClaimGuard`] ends the
//! claim exactly once, by [`ClaimGuard::finish`] (the job is done: its row
//! goes), [`ClaimGuard::release`] (stopped: anyone may resume it) or, if
//! neither was called, by its `Drop`, which releases. A forgotten release
//! is thus impossible, and an early return (`?` on a store error) or a
//! panic leaves the job resumable at once instead of held until its lease
//! lapses. Drop never finishes: only a job that reached its end says so.
//!
//! Named `ClaimGuard` rather than `Claim`: [`crate::store::Claim`] is the
//! claim as granted (owner, kind, fencing token), which the guard carries
//! and dereferences to, so fenced store steps take `&guard` as they took
//! `&claim`.

use std::cell::Cell;
use std::ops::Deref;

use super::Outcome;
use crate::store::{Claim, Job, Result, Store, StoreError, VFolder};

/// A job claim this process holds until it is finished, released, lost to
/// another owner, or dropped (released).
///
/// Invariant: while `armed`, the job row may still carry this owner's
/// claim, and the guard owes it one `release_job`; once disarmed it owes
/// nothing (finished, released, or lost to a takeover that the new owner
/// now ends).
pub struct ClaimGuard<'a> {
    store: &'a dyn Store,
    claim: Claim,
    armed: Cell<bool>,
}

impl<'a> ClaimGuard<'a> {
    /// Claims `owner`'s job of `kind` on vfolder `id` (see
    /// [`Store::claim_job`]) and reads the vfolder; None if another live
    /// process holds the job. The job row comes with it (its progress, its
    /// argument, whether it was resumed or asked to stop).
    pub fn take(
        store: &'a dyn Store,
        id: &str,
        kind: &str,
        owner: &str,
    ) -> Result<Option<(ClaimGuard<'a>, Job, VFolder)>> {
        let Some(job) = store.claim_job(id, kind, owner, super::lease(), &super::owner_dead)?
        else {
            return Ok(None);
        };
        let guard = ClaimGuard {
            store,
            claim: job.claim(),
            armed: Cell::new(true),
        };
        // A failed read drops the guard: the claim is released.
        let v = store.get(id)?;
        Ok(Some((guard, job, v)))
    }

    /// The job is done (or rolled back, or not applicable): its row goes.
    pub fn finish(self) -> Result<()> {
        self.end(true)
    }

    /// The job stops unfinished: its claim is released for anyone (the pool,
    /// `jobs --resume`) to resume.
    pub fn release(self) -> Result<()> {
        self.end(false)
    }

    /// The claim was lost before `step` (this process was stopped past its
    /// lease and another took the job over): logs it and owes nothing more;
    /// the new owner ends the job.
    pub fn lost(&self, step: &str) -> Outcome {
        self.armed.set(false);
        log::warn!(
            "{} job on {}: this process ({}) lost its claim {} to another process; \
             stopping without {step}",
            self.claim.kind,
            self.claim.vfolder_id,
            self.claim.owner,
            self.claim.token
        );
        Outcome::ClaimLost
    }

    /// Whether the claim is still held (a read, not a fence: for telling a
    /// stop on a lost claim from a shutdown).
    pub fn holds(&self) -> bool {
        let c = &self.claim;
        self.store
            .job(&c.vfolder_id)
            .ok()
            .flatten()
            .is_some_and(|j| j.owner == c.owner && j.kind == c.kind && j.claims == c.token)
    }

    fn end(self, finished: bool) -> Result<()> {
        self.armed.set(false);
        self.store
            .release_job(&self.claim.vfolder_id, &self.claim.owner, finished)
    }
}

/// Ends a job after its fenced final step returned `ended`: finishes the
/// claim and gives `then`; if the step found the claim lost, gives
/// [`Outcome::ClaimLost`] and touches nothing more; on another error the
/// guard is dropped (released) and the error returned. The step comes
/// first so that it may borrow the guard this then takes.
pub fn end_job<T>(
    ended: Result<T>,
    claim: ClaimGuard<'_>,
    step: &str,
    then: Outcome,
) -> Result<Outcome> {
    match ended {
        Err(StoreError::ClaimLost { .. }) => Ok(claim.lost(step)),
        Err(e) => Err(e),
        Ok(_) => {
            claim.finish()?;
            Ok(then)
        }
    }
}

impl Deref for ClaimGuard<'_> {
    type Target = Claim;

    fn deref(&self) -> &Claim {
        &self.claim
    }
}

impl Drop for ClaimGuard<'_> {
    /// Releases (never finishes) a claim nothing ended: on an early return
    /// or a panic the job stays resumable.
    fn drop(&mut self) {
        if !self.armed.get() {
            return;
        }
        let c = &self.claim;
        if let Err(e) = self.store.release_job(&c.vfolder_id, &c.owner, false) {
            log::warn!("releasing the {} job on {}: {e}", c.kind, c.vfolder_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClaimGuard;
    use crate::store::{SqliteStore, Store};

    fn store_with_job() -> (tempfile::TempDir, SqliteStore, String) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::create(&dir.path().join("db")).unwrap();
        let v = s.create("id-1", "ds", "default", "cause").unwrap();
        s.queue_job(&v.id, "purge", None).unwrap();
        (dir, s, v.id)
    }

    fn lease_until(s: &SqliteStore, id: &str) -> Option<i64> {
        s.job(id).unwrap().map(|j| j.lease_until)
    }

    #[test]
    fn a_dropped_claim_is_released_not_finished() {
        let (_d, s, id) = store_with_job();
        {
            let (g, _, _) = ClaimGuard::take(&s, &id, "purge", "me").unwrap().unwrap();
            assert!(g.holds());
            assert!(lease_until(&s, &id).unwrap() > 0);
        }
        assert_eq!(lease_until(&s, &id), Some(0), "released, the row kept");
    }

    #[test]
    fn a_panic_releases_the_claim() {
        let (_d, s, id) = store_with_job();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _g = ClaimGuard::take(&s, &id, "purge", "me").unwrap().unwrap();
            panic!("a job step panicked");
        }));
        assert!(r.is_err());
        assert_eq!(lease_until(&s, &id), Some(0));
    }

    #[test]
    fn finish_removes_the_job_and_a_lost_claim_is_left_alone() {
        let (_d, s, id) = store_with_job();
        let (g, _, _) = ClaimGuard::take(&s, &id, "purge", "me").unwrap().unwrap();
        g.finish().unwrap();
        assert_eq!(lease_until(&s, &id), None);

        s.queue_job(&id, "purge", None).unwrap();
        let (g, _, _) = ClaimGuard::take(&s, &id, "purge", "me").unwrap().unwrap();
        let held = lease_until(&s, &id).unwrap();
        assert_eq!(g.lost("testing"), crate::workers::Outcome::ClaimLost);
        drop(g);
        assert_eq!(
            lease_until(&s, &id),
            Some(held),
            "a lost claim is not released"
        );
    }
}
