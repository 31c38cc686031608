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

/// The longest time between two renewals of a mount's lease, whatever the
/// lease: a mount reads the list of live mounts before every renewal, and
/// must learn of a new one within about a second (it caches names and
/// attributes for an hour while alone, see [`crate::fs::caching`]), however
/// rarely a long lease would need renewing.
pub const MAX_RENEW_INTERVAL: Duration = Duration::from_millis(750);

/// How many renewals of another live mount a new mount waits for before it
/// serves ([`MountLease::wait_seen`]). A mount reads the mount list, renews,
/// and only then drops what its kernel cached (the rest of its watcher's
/// pass): the first renewal seen may follow a read made before the new mount
/// registered, the second follows a read that saw it but may precede the
/// drop, the third comes after that drop.
pub const SEEN_RENEWALS: u32 = 3;

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

    /// Records the mount (again) as live with what `reg` has applied so far,
    /// BEFORE the full read of the store that it will then confirm
    /// ([`Self::confirm`]): a command that commits a change after this
    /// record is made waits for the mount; one whose change was committed
    /// before is in the read. Registering does not let the mount write: only
    /// a confirmation does (a mount that re-registers after its lease lapsed
    /// still has the view it had before, which commands that saw it lapsed
    /// did not wait for).
    pub fn register(&mut self, store: &dyn Store, reg: &Registry) -> Result<()> {
        self.rec.applied_rev = reg.applied_rev();
        self.rec.draining = reg.poll_drains();
        store.register_mount(&self.rec, self.lease)?;
        // The next confirmation renews, whatever it has to say.
        self.last = None;
        Ok(())
    }

    /// Confirms what `reg` has applied after a read of the store that began
    /// at `began`, when it changed or a quarter of the lease (at most
    /// [`MAX_RENEW_INTERVAL`]) has passed;
    /// extends the mount's write deadline on success. `Ok(false)`: the
    /// lease had lapsed (the mount was stopped, or could not reach the
    /// store): reread everything, then [`Self::register`].
    pub fn confirm(&mut self, store: &dyn Store, reg: &Registry, began: u64) -> Result<bool> {
        let applied = reg.applied_rev();
        let draining = reg.poll_drains();
        if let Some((a, d, at)) = &self.last
            && *a == applied
            && *d == draining
            && at.elapsed() < (self.lease / 4).min(MAX_RENEW_INTERVAL)
        {
            return Ok(true);
        }
        // Who else serves the store, read before every renewal: a mount
        // that saw two renewals of ours after it registered knows we
        // cache for it ([`Self::wait_seen`], [`crate::fs::caching`]).
        self.note_others(store, reg)?;
        if !store.renew_mount(&self.rec.id, applied, &draining, self.lease)? {
            return Ok(false);
        }
        reg.set_deadline(self.deadline(began));
        self.last = Some((applied, draining, Instant::now()));
        Ok(true)
    }

    /// Whether any mount of `mounts` but this one is live at store time `now`.
    fn others_live(&self, now: crate::store::Millis, mounts: &[MountRecord]) -> bool {
        mounts
            .iter()
            .any(|m| m.id != self.rec.id && m.lease_until >= now)
    }

    /// Reads which other mounts of the store are live and tells `reg`.
    fn note_others(&self, store: &dyn Store, reg: &Registry) -> Result<()> {
        let (now, mounts) = store.mounts()?;
        reg.set_shared(self.others_live(now, &mounts));
        Ok(())
    }

    /// After [`Self::register`], before serving: waits until every other
    /// live mount of the store has renewed its lease [`SEEN_RENEWALS`] times
    /// since (so has read the mount list, this mount in it, and dropped what
    /// its kernel cached for long, and caches names and attributes briefly
    /// from then on) or has let its lease lapse. At most `limit`, but never
    /// less than four of the longest
    /// renewal intervals (a short lease of this mount's own says nothing about
    /// how often the others renew); returns the mounts still not seen then.
    /// Meanwhile this mount's own lease is kept in the store, and at the end
    /// the store is read again and confirmed: the mount starts serving with a
    /// full lease, however long it waited.
    pub fn wait_seen(
        &mut self,
        store: &dyn Store,
        reg: &Registry,
        limit: Duration,
    ) -> Result<Vec<String>> {
        use std::collections::HashMap;
        let limit = limit.max(MAX_RENEW_INTERVAL * (SEEN_RENEWALS + 1));
        let start = Instant::now();
        // id → (lease_until last seen, renewals seen since registering)
        let mut seen: HashMap<String, (i64, u32)> = HashMap::new();
        let mut renewed = Instant::now();
        let waiting = loop {
            // Live meanwhile (what it records as applied is true); lapsed
            // already (a starved host): recorded again.
            if renewed.elapsed() >= (self.lease / 4).min(MAX_RENEW_INTERVAL) {
                let (applied, draining) = (reg.applied_rev(), reg.poll_drains());
                if !store.renew_mount(&self.rec.id, applied, &draining, self.lease)? {
                    self.register(store, reg)?;
                }
                renewed = Instant::now();
            }
            let (now, mounts) = store.mounts()?;
            let mut waiting = Vec::new();
            for m in mounts
                .iter()
                .filter(|m| m.id != self.rec.id && m.lease_until >= now)
            {
                let e = seen.entry(m.id.clone()).or_insert((m.lease_until, 0));
                if e.0 != m.lease_until {
                    *e = (m.lease_until, e.1 + 1);
                }
                if e.1 < SEEN_RENEWALS {
                    waiting.push(format!("{} pid {} at {}", m.node, m.pid, m.mountpoint));
                }
            }
            reg.set_shared(self.others_live(now, &mounts));
            if waiting.is_empty() || start.elapsed() >= limit {
                break waiting;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The view confirmed before the wait may be older than the lease
        // by now: read and confirm again.
        let began = crate::fs::vfolders::clock();
        reg.refresh(store)?;
        self.last = None;
        self.confirm(store, reg, began)?;
        Ok(waiting)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// A live mount that renewed only twice since a new mount registered
    /// may not have dropped its kernel cache yet (it renews before it
    /// drops): the new mount does not count it as seen.
    #[test]
    fn two_renewals_do_not_count_as_seen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        SqliteStore::create(&db).unwrap();
        let store = SqliteStore::open(&db).unwrap();
        // The other mount: a long lease, so it never lapses in this test.
        let mut other = MountLease::new("other", Duration::from_secs(3600));
        other.register(&store, &Registry::new()).unwrap();
        let mut me = MountLease::new("me", DEFAULT_LEASE);
        let reg = Registry::new();
        me.register(&store, &reg).unwrap();
        let id = other.id().to_string();
        let renewer = std::thread::spawn(move || {
            let store = SqliteStore::open(&db).unwrap();
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(400));
                assert!(
                    store
                        .renew_mount(&id, 0, &[], Duration::from_secs(3600))
                        .unwrap()
                );
            }
        });
        let unseen = me
            .wait_seen(&store, &reg, Duration::from_millis(10))
            .unwrap();
        renewer.join().unwrap();
        assert_eq!(unseen.len(), 1, "{unseen:?}");
        assert!(reg.sharing().shared());
    }
}
