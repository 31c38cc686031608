//! The purge pool: a fixed set of worker threads fed by a channel, each
//! removing one vfolder's data at a time. A vfolder is queued at most once
//! per process, and claimed in the store with a lease so that no two
//! processes remove it at once. Shutdown stops workers between two files and
//! leaves the row `delete-ongoing` for the next start to resume.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};
use parking_lot::Mutex;

use super::{LEASE, RENEW_EVERY, owner_dead, this_owner};
use crate::backing::remove::{self, RemoveError};
use crate::catalog::Catalog;
use crate::layout::Layout;
use crate::status::Op;
use crate::store::{ListFilter, Result, StoreError, TransitionArgs};

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

/// How a purge attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The data is gone; the vfolder is `delete-complete`.
    Complete(u64),
    /// Removal failed; the vfolder is `delete-error` with this message.
    Failed(String),
    /// Stopped by shutdown; the vfolder stays `delete-ongoing`.
    Cancelled,
    /// Another live process holds the job.
    HeldElsewhere,
    /// The vfolder is not being purged (nothing to do).
    NotPurging,
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
    let Some(job) = store.claim_job(id, KIND, owner, LEASE, None, &owner_dead)? else {
        return Ok(Outcome::HeldElsewhere);
    };
    let v = store.get(id)?;
    if !v.status.is_purging() {
        store.release_job(id, owner, true)?;
        return Ok(Outcome::NotPurging);
    }
    if job.claims > 1 {
        info!("resuming the purge of {:?} ({id})", v.name);
    }
    let lost = AtomicBool::new(false);
    let stop = || cancel.load(Ordering::Acquire) || lost.load(Ordering::Acquire);
    let mut done = job.done;
    let mut last_renew = Instant::now();
    let result = match cat.open_backing(id, &v.volume, libc::O_RDONLY | libc::O_NOFOLLOW) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(RemoveError::Failed {
            path: ".".into(),
            err: e,
        }),
        Ok(fd) => {
            let stop_flag = AtomicBool::new(false);
            let r = remove::empty_dir(fd, &stop_flag, &mut || {
                done += 1;
                if let Some(p) = pause {
                    thread::sleep(p);
                }
                if last_renew.elapsed() >= RENEW_EVERY {
                    last_renew = Instant::now();
                    match store.renew_job(id, owner, LEASE, done) {
                        Ok(true) => {}
                        Ok(false) => lost.store(true, Ordering::Release),
                        Err(e) => warn!("renewing the purge of {id}: {e}"),
                    }
                }
                progress(done);
                if stop() {
                    stop_flag.store(true, Ordering::Release);
                }
            });
            r.and_then(|()| {
                if stop() {
                    return Err(RemoveError::Cancelled);
                }
                cat.remove_backing_root(id, &v.volume)
                    .map_err(|err| RemoveError::Failed {
                        path: ".".into(),
                        err,
                    })
            })
        }
    };
    match result {
        Ok(()) => {
            let cause = format!("purge done: {done} entries removed ({owner})");
            store.transition(
                id,
                Op::PurgeDone,
                TransitionArgs {
                    cause: &cause,
                    ..Default::default()
                },
            )?;
            store.release_job(id, owner, true)?;
            info!("purged {:?} ({id}): {done} entries", v.name);
            Ok(Outcome::Complete(done))
        }
        Err(RemoveError::Cancelled) => {
            let _ = store.renew_job(id, owner, LEASE, done);
            store.release_job(id, owner, false)?;
            Ok(Outcome::Cancelled)
        }
        Err(e) => {
            let msg = e.to_string();
            let cause = format!("purge failed ({owner})");
            store.transition(
                id,
                Op::PurgeFailed,
                TransitionArgs {
                    cause: &cause,
                    error: Some(&msg),
                    ..Default::default()
                },
            )?;
            store.release_job(id, owner, true)?;
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

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How many vfolders are removed at once.
    pub workers: usize,
    /// Trash entries older than this are purged automatically (None: never).
    pub retention: Option<Duration>,
    /// How often the store is scanned for work (resumption, retention).
    pub scan_every: Duration,
    /// Pause after each removed entry (testing aid; see [`THROTTLE_ENV`]).
    pub throttle: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 2,
            retention: Some(Duration::from_secs(30 * 86400)),
            scan_every: Duration::from_secs(1),
            throttle: throttle_from_env(),
        }
    }
}

struct Shared {
    queued: Mutex<HashSet<String>>,
    cancel: AtomicBool,
    running: AtomicUsize,
    peak: AtomicUsize,
    completed: AtomicUsize,
}

/// The background purge pool of one process.
pub struct PurgePool {
    tx: Mutex<Option<Sender<String>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PurgePool {
    /// Starts `cfg.workers` workers and a scanner on the store at `layout`.
    pub fn start(layout: &Layout, cfg: PoolConfig) -> Result<PurgePool> {
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        let shared = Arc::new(Shared {
            queued: Mutex::new(HashSet::new()),
            cancel: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
        });
        let owner = this_owner();
        let mut threads = Vec::new();
        for i in 0..cfg.workers.max(1) {
            let cat = Catalog::open(layout.clone())?;
            let (rx, shared, owner) = (rx.clone(), shared.clone(), owner.clone());
            let pause = cfg.throttle;
            threads.push(
                thread::Builder::new()
                    .name(format!("vfolderfs-purge-{i}"))
                    .spawn(move || worker(&cat, &rx, &shared, &owner, pause))
                    .map_err(|e| StoreError::Io("starting a purge worker".into(), e))?,
            );
        }
        let cat = Catalog::open(layout.clone())?;
        let scan_tx = tx.clone();
        let scan_shared = shared.clone();
        threads.push(
            thread::Builder::new()
                .name("vfolderfs-purge-scan".into())
                .spawn(move || scan(&cat, &scan_tx, &scan_shared, &cfg))
                .map_err(|e| StoreError::Io("starting the purge scanner".into(), e))?,
        );
        Ok(PurgePool {
            tx: Mutex::new(Some(tx)),
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Queues vfolder `id` unless it is queued or being removed already;
    /// returns whether it was queued now.
    pub fn submit(&self, id: &str) -> bool {
        submit(&self.shared, self.tx.lock().as_ref(), id)
    }

    /// The most removals seen running at once.
    pub fn peak(&self) -> usize {
        self.shared.peak.load(Ordering::Acquire)
    }

    /// How many purges this pool completed.
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::Acquire)
    }

    /// Stops the workers between two files and waits for them; purges in
    /// progress stay `delete-ongoing` for the next start.
    pub fn shutdown(&self) {
        self.shared.cancel.store(true, Ordering::Release);
        self.tx.lock().take();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for PurgePool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn submit(shared: &Shared, tx: Option<&Sender<String>>, id: &str) -> bool {
    let Some(tx) = tx else { return false };
    if shared.cancel.load(Ordering::Acquire) {
        return false;
    }
    if !shared.queued.lock().insert(id.to_string()) {
        return false;
    }
    tx.send(id.to_string()).is_ok()
}

fn worker(
    cat: &Catalog,
    rx: &Receiver<String>,
    shared: &Shared,
    owner: &str,
    pause: Option<Duration>,
) {
    while let Ok(id) = rx.recv() {
        if shared.cancel.load(Ordering::Acquire) {
            break;
        }
        let now = shared.running.fetch_add(1, Ordering::AcqRel) + 1;
        shared.peak.fetch_max(now, Ordering::AcqRel);
        match purge_one(cat, &id, owner, &shared.cancel, pause, &mut |_| {}) {
            Ok(Outcome::Complete(_)) => {
                shared.completed.fetch_add(1, Ordering::AcqRel);
            }
            Ok(_) => {}
            Err(e) => warn!("purging {id}: {e}"),
        }
        shared.running.fetch_sub(1, Ordering::AcqRel);
        shared.queued.lock().remove(&id);
    }
}

fn scan(cat: &Catalog, tx: &Sender<String>, shared: &Shared, cfg: &PoolConfig) {
    while !shared.cancel.load(Ordering::Acquire) {
        match cat.store().list(ListFilter::All) {
            Ok(all) => {
                let now = crate::store::sqlite::now_millis();
                for v in all {
                    let expired = cfg.retention.is_some_and(|keep| {
                        v.status.is_restorable()
                            && now - v.status_changed_at > keep.as_millis() as i64
                    });
                    if expired && let Err(e) = request(cat, &v.id, "trash retention expired") {
                        warn!("retention purge of {:?}: {e}", v.name);
                        continue;
                    }
                    if (expired || v.status.is_purging()) && submit(shared, Some(tx), &v.id) {
                        info!("queued the purge of {:?} ({})", v.name, v.id);
                    }
                }
            }
            Err(e) => warn!("scanning for purges: {e}"),
        }
        let deadline = Instant::now() + cfg.scan_every;
        while Instant::now() < deadline && !shared.cancel.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}
