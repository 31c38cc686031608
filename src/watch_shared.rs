//! The watcher of a mount whose store is a database shared by many nodes
//! (PostgreSQL): it keeps the mount's registry in step with the store,
//! woken by the store's change announcements (`LISTEN/NOTIFY`) and polling
//! as a fallback, confirms what it applied under the mount's lease (the
//! enforcement protocol, [`crate::enforce`]), and fails closed while the
//! database cannot be reached: writes are refused once the lease lapses
//! (reads go on), and allowed again, by itself, once the database answers
//! and the mount has reread it and registered again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fuser::Notifier;
use log::{error, warn};

use crate::daemon::{FULL_REFRESH, HEALTH_CHECK, POLL_INTERVAL, send_invalidations};
use crate::enforce::MountLease;
use crate::fs::vfolders::{Registry, clock};
use crate::store::{Store, StoreError};

/// How long the watcher sleeps between polls when nothing is announced
/// and no write is draining (an announcement wakes it at once).
pub const IDLE_POLL: Duration = Duration::from_millis(200);

/// Watches `store` (whose id must stay `store_id`) until `stop`.
pub fn watch(
    store: Arc<dyn Store>,
    store_id: &str,
    reg: &Registry,
    (notifier, dev): (&Notifier, &std::os::fd::OwnedFd),
    stop: &AtomicBool,
    mut lease: MountLease,
) {
    use std::os::fd::AsFd;
    let s = store.as_ref();
    let mut listen = s.change_listener();
    let mut w = Watch {
        last: None,
        last_full: Instant::now(),
        last_check: Instant::now(),
        failed: false,
    };
    while !stop.load(Ordering::Acquire) {
        let began = clock();
        let step = w.step(s, store_id, reg, &mut lease, began);
        w.record(reg, step);
        send_invalidations(reg, notifier, dev.as_fd());
        // Writes draining: their end must be confirmed soon; otherwise
        // sleep until a change is announced, polling now and then.
        let wait = if w.failed || !reg.poll_drains().is_empty() {
            POLL_INTERVAL
        } else {
            IDLE_POLL
        };
        match listen.as_mut() {
            Some(l) if !w.failed => {
                l(wait);
            }
            _ => std::thread::sleep(wait.max(POLL_INTERVAL)),
        }
    }
    if let Err(e) = lease.remove(s) {
        warn!("forgetting this mount in the store: {e}");
    }
}

/// What the watcher remembers between polls.
struct Watch {
    /// The change token of the last read.
    last: Option<u64>,
    /// When every row was last reread.
    last_full: Instant,
    /// When the store's identity was last checked.
    last_check: Instant,
    /// Whether the last poll failed (changes may have been missed).
    failed: bool,
}

impl Watch {
    /// One poll: the store's identity now and then, the changes (or every
    /// row, after a failure and once in a while), and the lease renewed, or
    /// taken again after it lapsed.
    fn step(
        &mut self,
        s: &dyn Store,
        store_id: &str,
        reg: &Registry,
        lease: &mut MountLease,
        began: u64,
    ) -> Result<(), StoreError> {
        if self.last_check.elapsed() >= HEALTH_CHECK {
            self.last_check = Instant::now();
            match s.store_id()? {
                Some(id) if id == store_id => {}
                found => {
                    return Err(StoreError::Foreign {
                        path: "the database".into(),
                        expected: store_id.to_string(),
                        found,
                    });
                }
            }
        }
        // After a failure, changes may have been missed: reread all.
        let full = self.failed || self.last_full.elapsed() >= FULL_REFRESH;
        let tok = s.change_token()?;
        if full || self.last != Some(tok) {
            if full {
                reg.refresh(s)?;
                self.last_full = Instant::now();
            } else {
                reg.sync(s)?;
            }
            self.last = Some(tok);
        }
        if !lease.confirm(s, reg, began)? {
            warn!("this mount's lease lapsed: rereading the store before serving writes again");
            // Live again first, then the read, then its confirmation (see
            // `MountLease::register`): a change a command committed while
            // this mount was counted gone is in the read.
            lease.register(s, reg)?;
            let again = clock();
            reg.refresh(s)?;
            lease.confirm(s, reg, again)?;
        }
        Ok(())
    }

    /// Records a poll's outcome: the mount refuses writes while the store
    /// cannot be read, and says so once each way.
    fn record(&mut self, reg: &Registry, step: Result<(), StoreError>) {
        match step {
            Ok(()) => {
                self.failed = false;
                if reg.set_healthy(true) {
                    warn!("store reachable again: writes allowed by status");
                }
            }
            Err(e) => {
                self.failed = true;
                if reg.set_healthy(false) {
                    error!("store unavailable, refusing writes until it recovers: {e}");
                }
            }
        }
    }
}
