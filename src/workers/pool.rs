//! The job pool: a fixed set of worker threads fed by a channel, running one
//! job per vfolder at a time (purge, clone, relocation, removing a relocated
//! vfolder's old copy), and a scanner that finds work in the store: purges to
//! resume, clones and relocations queued or interrupted, trash past its
//! retention. A vfolder is queued at most once per process; across processes
//! the job claim in the store decides.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};
use parking_lot::Mutex;

use super::{Outcome, clone, purge, relocate, this_owner};
use crate::catalog::Catalog;
use crate::layout::Layout;
use crate::store::{ListFilter, Result, StoreError, VFolder};

/// One unit of work, on one vfolder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Remove a `delete-ongoing` vfolder's data.
    Purge(String),
    /// Copy into a `cloning` target from its source.
    Clone(String),
    /// Move a `performing` vfolder to its target volume.
    Relocate(String),
    /// Remove the old copy a finished relocation left behind.
    Cleanup(String),
}

impl Task {
    /// The vfolder it works on.
    pub fn id(&self) -> &str {
        match self {
            Task::Purge(i) | Task::Clone(i) | Task::Relocate(i) | Task::Cleanup(i) => i,
        }
    }

    /// The task a vfolder's row asks for, if any.
    pub fn for_row(v: &VFolder) -> Option<Task> {
        if v.status.is_purging() {
            Some(Task::Purge(v.id.clone()))
        } else if v.status.is_cloning() && v.clone_src.is_some() {
            Some(Task::Clone(v.id.clone()))
        } else if v.status.is_relocating() {
            Some(Task::Relocate(v.id.clone()))
        } else if v.prev_volume.is_some() && !v.status.is_relocating() {
            Some(Task::Cleanup(v.id.clone()))
        } else {
            None
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How many jobs run at once.
    pub workers: usize,
    /// How often the store is scanned for work.
    pub scan_every: Duration,
    /// Pause after each removed or copied entry (testing aid; see
    /// [`purge::THROTTLE_ENV`]).
    pub throttle: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 2,
            scan_every: Duration::from_secs(1),
            throttle: purge::throttle_from_env(),
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

/// The background job pool of one process.
pub struct JobPool {
    tx: Mutex<Option<Sender<Task>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl JobPool {
    /// Starts `cfg.workers` workers and a scanner on the store at `layout`.
    pub fn start(layout: &Layout, cfg: PoolConfig) -> Result<JobPool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
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
                    .name(format!("vfolderfs-job-{i}"))
                    .spawn(move || worker(&cat, &rx, &shared, &owner, pause))
                    .map_err(|e| StoreError::Os("starting a worker", e))?,
            );
        }
        let cat = Catalog::open(layout.clone())?;
        let (scan_tx, scan_shared) = (tx.clone(), shared.clone());
        threads.push(
            thread::Builder::new()
                .name("vfolderfs-job-scan".into())
                .spawn(move || scan(&cat, &scan_tx, &scan_shared, &cfg))
                .map_err(|e| StoreError::Os("starting the job scanner", e))?,
        );
        Ok(JobPool {
            tx: Mutex::new(Some(tx)),
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Queues a task unless its vfolder is queued or worked on already;
    /// returns whether it was queued now.
    pub fn submit(&self, task: Task) -> bool {
        submit(&self.shared, self.tx.lock().as_ref(), task)
    }

    /// The most jobs seen running at once.
    pub fn peak(&self) -> usize {
        self.shared.peak.load(Ordering::Acquire)
    }

    /// How many vfolders are queued or worked on in this process.
    pub fn depth(&self) -> usize {
        self.shared.queued.lock().len()
    }

    /// The vfolders queued or worked on in this process.
    pub fn queued_ids(&self) -> Vec<String> {
        self.shared.queued.lock().iter().cloned().collect()
    }

    /// How many jobs run now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }

    /// How many jobs this pool completed.
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::Acquire)
    }

    /// Stops the workers between two entries and waits for them; their
    /// vfolders keep their transient status for the next start.
    pub fn shutdown(&self) {
        self.shared.cancel.store(true, Ordering::Release);
        self.tx.lock().take();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for JobPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn submit(shared: &Shared, tx: Option<&Sender<Task>>, task: Task) -> bool {
    let Some(tx) = tx else { return false };
    if shared.cancel.load(Ordering::Acquire) {
        return false;
    }
    if !shared.queued.lock().insert(task.id().to_string()) {
        return false;
    }
    tx.send(task).is_ok()
}

/// Runs one task to its end (or until `cancel`) in this thread.
pub fn run_task(
    cat: &Catalog,
    task: &Task,
    owner: &str,
    cancel: &AtomicBool,
    pause: Option<Duration>,
) -> Result<Outcome> {
    match task {
        Task::Purge(id) => purge::purge_one(cat, id, owner, cancel, pause, &mut |_| {}),
        Task::Clone(id) => clone::run(cat, id, owner, cancel, pause, &mut |_| {}),
        Task::Relocate(id) => relocate::run(cat, id, owner, cancel, pause, &mut |_| {}),
        Task::Cleanup(id) => relocate::cleanup(cat, id, owner, cancel),
    }
}

fn worker(
    cat: &Catalog,
    rx: &Receiver<Task>,
    shared: &Shared,
    owner: &str,
    pause: Option<Duration>,
) {
    while let Ok(task) = rx.recv() {
        if shared.cancel.load(Ordering::Acquire) {
            break;
        }
        let now = shared.running.fetch_add(1, Ordering::AcqRel) + 1;
        shared.peak.fetch_max(now, Ordering::AcqRel);
        match run_task(cat, &task, owner, &shared.cancel, pause) {
            Ok(Outcome::Complete(_)) => {
                shared.completed.fetch_add(1, Ordering::AcqRel);
            }
            Ok(o) => log::debug!("{task:?}: {o:?}"),
            Err(e) => warn!("{task:?}: {e}"),
        }
        shared.running.fetch_sub(1, Ordering::AcqRel);
        shared.queued.lock().remove(task.id());
    }
}

/// The trash retention for one row as the scanner listed it: if it has
/// been in the trash longer than `keep` at `now`, requests its purge —
/// only if it is still in that same deletion
/// ([`purge::request_expired`]), so a vfolder restored and deleted again
/// since the list was read keeps its new retention. Returns whether its
/// purge was requested.
pub fn retention_purge(cat: &Catalog, listed: &VFolder, keep: Duration, now: i64) -> Result<bool> {
    if !listed.status.is_restorable() || now - listed.status_changed_at <= keep.as_millis() as i64 {
        return Ok(false);
    }
    purge::request_expired(cat, listed, "trash retention expired")
}

fn scan(cat: &Catalog, tx: &Sender<Task>, shared: &Shared, cfg: &PoolConfig) {
    while !shared.cancel.load(Ordering::Acquire) {
        match cat.store().list(ListFilter::Work) {
            Ok(all) => {
                let now = crate::store::sqlite::now_millis();
                // The store-wide retention, read on every scan that finds
                // trash (a change by `vfolderfs retention` holds from the
                // next second on every mount); none read when there is none.
                let mut retention: Option<Option<Duration>> = None;
                for v in all {
                    let keep = if v.status.is_restorable() {
                        *retention.get_or_insert_with(|| {
                            cat.store().trash_retention().unwrap_or_else(|e| {
                                // Unknown: purge nothing by age this time.
                                warn!("reading the trash retention: {e}");
                                None
                            })
                        })
                    } else {
                        None
                    };
                    let expired = match keep {
                        Some(keep) => match retention_purge(cat, &v, keep, now) {
                            Ok(e) => e,
                            Err(e) => {
                                warn!("retention purge of {:?}: {e}", v.name);
                                continue;
                            }
                        },
                        None => false,
                    };
                    let task = if expired {
                        Some(Task::Purge(v.id.clone()))
                    } else {
                        Task::for_row(&v)
                    };
                    if let Some(t) = task {
                        let what = format!("{t:?}");
                        if submit(shared, Some(tx), t) {
                            info!("queued {what} for {:?}", v.name);
                        }
                    }
                }
            }
            Err(e) => warn!("scanning for work: {e}"),
        }
        let deadline = Instant::now() + cfg.scan_every;
        while Instant::now() < deadline && !shared.cancel.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}
