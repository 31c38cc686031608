//! The enforcement protocol: a status change is in force on every live
//! mount when the command that made it returns.
//!
//! Each mount records itself in the store ([`MountRecord`]) with a lease,
//! and, as its watcher applies the store's change feed, the position it has
//! applied (`applied_rev`: from then on its new writes see every change up
//! to there) and the vfolders whose writes from before their last status
//! change are still running (`draining`). Applying never waits for a write:
//! the status is stored at once and refuses new writes; the drain is only
//! watched, so a write stuck on one volume holds up the confirmation of that
//! one vfolder and nothing else.
//!
//! A command that changed vfolder V at change-feed position R returns once
//! every mount whose lease holds has `applied_rev >= R` and V not draining
//! ([`wait_confirmed`]). A mount whose lease lapsed is not waited for, which
//! is safe because a mount refuses every write once it has not confirmed
//! its view within its lease (its own monotonic clock, counted from before
//! the read it confirmed), and it can renew a lease only while that lease
//! still holds in the store: a lapsed mount must reread the store and
//! register again ([`MountLease::confirm`]). So "lapsed" and "still
//! writing under the old status" cannot both be true.

use std::time::{Duration, Instant};

use crate::fs::vfolders::Registry;
use crate::store::{MountRecord, Result, Store, StoreError};

/// How long a mount may serve writes without confirming its view of the
/// store (`-o lease=`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// How long a command waits for every live mount to confirm its change
/// before it says which did not (`--confirm-timeout`).
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A mount's record in the store and its lease.
pub struct MountLease {
    rec: MountRecord,
    lease: Duration,
    /// What was last confirmed, and when.
    last: Option<(u64, Vec<String>, Instant)>,
}

impl MountLease {
    /// A new mount instance at `mountpoint` with leases of `lease`.
    pub fn new(mountpoint: &str, lease: Duration) -> MountLease {
        MountLease {
            rec: MountRecord {
                id: uuid::Uuid::new_v4().hyphenated().to_string(),
                node: node_name(),
                pid: std::process::id(),
                mountpoint: mountpoint.to_string(),
                started_at: crate::store::sqlite::now_millis(),
                lease_until: 0,
                applied_rev: 0,
                draining: Vec::new(),
            },
            lease,
            last: None,
        }
    }

    /// This mount instance's id.
    pub fn id(&self) -> &str {
        &self.rec.id
    }

    fn deadline(&self, began: u64) -> u64 {
        began.saturating_add(self.lease.as_nanos() as u64)
    }

    /// Records the mount (again) with what `reg` has applied: call it after
    /// a full read of the store that began at `began` ([`crate::fs::vfolders::clock`]).
    pub fn register(&mut self, store: &dyn Store, reg: &Registry, began: u64) -> Result<()> {
        self.rec.applied_rev = reg.applied_rev();
        self.rec.draining = reg.poll_drains();
        store.register_mount(&self.rec, self.lease)?;
        reg.set_deadline(self.deadline(began));
        self.last = Some((
            self.rec.applied_rev,
            self.rec.draining.clone(),
            Instant::now(),
        ));
        Ok(())
    }

    /// Confirms what `reg` has applied after a read of the store that began
    /// at `began`, when it changed or a quarter of the lease has passed;
    /// extends the mount's write deadline on success. `Ok(false)`: the
    /// lease had lapsed (the mount was stopped, or could not reach the
    /// store): reread everything, then [`Self::register`].
    pub fn confirm(&mut self, store: &dyn Store, reg: &Registry, began: u64) -> Result<bool> {
        let applied = reg.applied_rev();
        let draining = reg.poll_drains();
        if let Some((a, d, at)) = &self.last
            && *a == applied
            && *d == draining
            && at.elapsed() < self.lease / 4
        {
            return Ok(true);
        }
        if !store.renew_mount(&self.rec.id, applied, &draining, self.lease)? {
            return Ok(false);
        }
        reg.set_deadline(self.deadline(began));
        self.last = Some((applied, draining, Instant::now()));
        Ok(true)
    }

    /// Forgets the mount (a clean unmount).
    pub fn remove(&self, store: &dyn Store) -> Result<()> {
        store.remove_mount(&self.rec.id)
    }
}

/// Environment variable naming this node in the store's mount records
/// (default: the host name).
pub const NODE_ENV: &str = "VFOLDERFS_NODE";

/// This node's name: `$VFOLDERFS_NODE`, else the host name.
pub fn node_name() -> String {
    if let Ok(n) = std::env::var(NODE_ENV)
        && !n.is_empty()
    {
        return n;
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".to_string();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The mounts (live by their lease) that have not yet confirmed position
/// `rev` for vfolder `id`, as "node pid mountpoint".
pub fn unconfirmed(store: &dyn Store, id: &str, rev: u64) -> Result<Vec<String>> {
    let (now, mounts) = store.mounts()?;
    Ok(mounts
        .iter()
        .filter(|m| m.lease_until >= now)
        .filter(|m| m.applied_rev < rev || m.draining.iter().any(|d| d == id))
        .map(|m| format!("{} pid {} at {}", m.node, m.pid, m.mountpoint))
        .collect())
}

/// Waits until every live mount has confirmed the change of vfolder `id`
/// (named `name` in messages) at change-feed position `rev`, at most
/// `timeout`; `cancel` (when set) ends the wait early with the same error.
pub fn wait_confirmed(
    store: &dyn Store,
    id: &str,
    name: &str,
    rev: u64,
    timeout: Duration,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let pending = unconfirmed(store, id, rev)?;
        if pending.is_empty() {
            return Ok(());
        }
        let cancelled = cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Acquire));
        if start.elapsed() >= timeout || cancelled {
            return Err(StoreError::Unconfirmed {
                name: name.to_string(),
                mounts: pending,
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// [`wait_confirmed`] for the vfolder's latest change.
pub fn confirm_latest(
    store: &dyn Store,
    id: &str,
    name: &str,
    timeout: Duration,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let rev = store.rev_of(id)?;
    wait_confirmed(store, id, name, rev, timeout, cancel)
}
