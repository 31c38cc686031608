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
    let mut last = None;
    let mut last_full = Instant::now();
    let mut last_check = Instant::now();
    let mut failed = false;
    while !stop.load(Ordering::Acquire) {
        let began = clock();
        let step = (|| {
            if last_check.elapsed() >= HEALTH_CHECK {
                last_check = Instant::now();
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
            let full = failed || last_full.elapsed() >= FULL_REFRESH;
            let tok = s.change_token()?;
            if full || last != Some(tok) {
                if full {
                    reg.refresh(s)?;
                    last_full = Instant::now();
                } else {
                    reg.sync(s)?;
                }
                last = Some(tok);
            }
            match lease.confirm(s, reg, began)? {
                true => {}
                false => {
                    warn!(
                        "this mount's lease lapsed: rereading the store before serving writes again"
                    );
                    // Live again first, then the read, then its
                    // confirmation (see `MountLease::register`): a change a
                    // command committed while this mount was counted gone is
                    // in the read.
                    lease.register(s, reg)?;
                    let again = clock();
                    reg.refresh(s)?;
                    lease.confirm(s, reg, again)?;
                }
            }
            Ok::<(), StoreError>(())
        })();
        match step {
            Ok(()) => {
                failed = false;
                if reg.set_healthy(true) {
                    warn!("store reachable again: writes allowed by status");
                }
            }
            Err(e) => {
                failed = true;
                if reg.set_healthy(false) {
                    error!("store unavailable, refusing writes until it recovers: {e}");
                }
            }
        }
        send_invalidations(reg, notifier, dev.as_fd());
        // Writes draining: their end must be confirmed soon; otherwise
        // sleep until a change is announced, polling now and then.
        let wait = if failed || !reg.poll_drains().is_empty() {
            POLL_INTERVAL
        } else {
            IDLE_POLL
        };
        match listen.as_mut() {
            Some(l) if !failed => {
                l(wait);
            }
            _ => std::thread::sleep(wait.max(POLL_INTERVAL)),
        }
    }
    if let Err(e) = lease.remove(s) {
        warn!("forgetting this mount in the store: {e}");
    }
}
