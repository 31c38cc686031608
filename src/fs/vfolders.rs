//! The mount's in-memory view of the store: every vfolder's status as an
//! atomic (O(1) checks on the hot path, no query per request), the names
//! shown at the root and in `.trash`, and the invalidations owed to the
//! kernel when any of that changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::error::{FsError, FsResult};
use crate::catalog::trash_names;
use crate::status::Status;
use crate::store::{ListFilter, Store, StoreError, VFolder};

/// Node id of the mount root.
pub const ROOT_INO: u64 = 1;
/// Node id of the virtual `.trash` directory.
pub const TRASH_INO: u64 = 2;

/// One vfolder as the mount sees it.
pub struct VfState {
    /// The vfolder's id.
    pub id: String,
    status: AtomicU8,
    healthy: Arc<AtomicBool>,
    /// Writes hold it shared while they run; a status change that forbids
    /// writes takes it exclusively once, so no write is in flight after it.
    gate: RwLock<()>,
    /// Node id of its root directory while the kernel knows it (0 if not).
    pub root_nodeid: AtomicU64,
    volume: RwLock<Arc<str>>,
    /// Files opened in it through this mount (a measure of how hot it is).
    pub opens: AtomicU64,
}

impl VfState {
    fn new(id: &str, status: Status, volume: &str, healthy: Arc<AtomicBool>) -> VfState {
        VfState {
            id: id.to_string(),
            status: AtomicU8::new(status as u8),
            healthy,
            gate: RwLock::new(()),
            root_nodeid: AtomicU64::new(0),
            volume: RwLock::new(Arc::from(volume)),
            opens: AtomicU64::new(0),
        }
    }

    /// The volume holding its backing directory.
    pub fn volume(&self) -> Arc<str> {
        self.volume.read().clone()
    }

    /// The status last seen in the store.
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire)).unwrap_or(Status::DeleteComplete)
    }

    fn set_status(&self, s: Status) {
        let old = self.status.swap(s as u8, Ordering::AcqRel);
        if old != s as u8 && !s.is_writable() {
            // Wait for writes that passed their check under the old status.
            drop(self.gate.write());
        }
    }

    /// Fails unless the vfolder's data may be read.
    pub fn check_readable(&self) -> FsResult<()> {
        if self.status().is_readable() {
            Ok(())
        } else {
            Err(FsError::Gone)
        }
    }

    /// Whether a change would be allowed now (no guard held).
    pub fn is_writable(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.status().is_writable()
    }

    /// Checks that the vfolder may be changed and holds that true until the
    /// guard is dropped: do the write while holding it.
    pub fn begin_write(&self) -> FsResult<RwLockReadGuard<'_, ()>> {
        let g = self.gate.read();
        let st = self.status();
        if !st.is_writable() {
            return Err(FsError::ReadOnly(st));
        }
        if !self.healthy.load(Ordering::Acquire) {
            // Fail closed: the store could not be read lately.
            return Err(FsError::ReadOnly(st));
        }
        Ok(g)
    }
}

/// An invalidation the kernel is owed (sent from outside request handlers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    /// A name in a directory (the root or `.trash`).
    Entry(u64, String),
    /// An inode's attributes.
    Inode(u64),
}

/// What the kernel may have cached about a vfolder: its root name, trash
/// name, volume, and whether it was writable (writable vfolders get cached
/// listings and negative entries, so leaving or entering that state
/// invalidates them).
type Published = (Option<String>, Option<String>, String, bool);

#[derive(Default)]
struct Snapshot {
    live: HashMap<String, Arc<VfState>>,
    trash: HashMap<String, Arc<VfState>>,
    /// id → (root name, trash name, volume) as last published.
    names: HashMap<String, Published>,
}

/// The registry of vfolder states and the names at the root.
pub struct Registry {
    by_id: RwLock<HashMap<String, Arc<VfState>>>,
    snap: RwLock<Arc<Snapshot>>,
    healthy: Arc<AtomicBool>,
    refresh_lock: Mutex<()>,
    pending: Mutex<Vec<Inval>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry (everything absent until the first refresh).
    pub fn new() -> Registry {
        Registry {
            by_id: RwLock::new(HashMap::new()),
            snap: RwLock::new(Arc::new(Snapshot::default())),
            healthy: Arc::new(AtomicBool::new(true)),
            refresh_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The live vfolder with this root name.
    pub fn live(&self, name: &str) -> Option<Arc<VfState>> {
        self.snap.read().live.get(name).cloned()
    }

    /// The trashed vfolder with this trash name.
    pub fn trashed(&self, name: &str) -> Option<Arc<VfState>> {
        self.snap.read().trash.get(name).cloned()
    }

    /// The root's names (or the trash's), sorted.
    pub fn names(&self, trash: bool) -> Vec<(String, Arc<VfState>)> {
        let snap = self.snap.read().clone();
        let map = if trash { &snap.trash } else { &snap.live };
        let mut v: Vec<_> = map.iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// How many vfolders the root and the trash list.
    pub fn counts(&self) -> (usize, usize) {
        let snap = self.snap.read();
        (snap.live.len(), snap.trash.len())
    }

    /// Opens counted per vfolder id (those with any).
    pub fn open_counts(&self) -> Vec<(String, u64)> {
        self.by_id
            .read()
            .iter()
            .map(|(id, st)| (id.clone(), st.opens.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Whether the last refresh could read the store.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Marks the store unreadable (writes refused) or readable again;
    /// returns whether that changed.
    pub fn set_healthy(&self, ok: bool) -> bool {
        self.healthy.swap(ok, Ordering::AcqRel) != ok
    }

    /// Invalidations collected since the last call.
    pub fn take_pending(&self) -> Vec<Inval> {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Reloads every vfolder from the store, updates statuses and names, and
    /// queues the kernel invalidations for what changed.
    pub fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let rows = store.list(ListFilter::Current)?;
        self.apply_rows(rows);
        Ok(())
    }

    fn apply_rows(&self, rows: Vec<VFolder>) {
        let _serial = self.refresh_lock.lock();
        let mut by_id = self.by_id.write();
        let mut seen: HashMap<&str, Status> = HashMap::with_capacity(rows.len());
        let mut snap = Snapshot::default();
        let mut trashed = Vec::new();
        for v in &rows {
            seen.insert(v.id.as_str(), v.status);
            let st = by_id
                .entry(v.id.clone())
                .or_insert_with(|| {
                    Arc::new(VfState::new(
                        &v.id,
                        v.status,
                        &v.volume,
                        self.healthy.clone(),
                    ))
                })
                .clone();
            st.set_status(v.status);
            if *st.volume.read().as_ref() != *v.volume {
                *st.volume.write() = Arc::from(v.volume.as_str());
            }
            if v.status.is_visible() {
                snap.live.insert(v.name.clone(), st);
                snap.names.insert(
                    v.id.clone(),
                    (
                        Some(v.name.clone()),
                        None,
                        v.volume.clone(),
                        v.status.is_writable(),
                    ),
                );
            } else if v.status.is_in_trash() {
                trashed.push(v.clone());
            }
        }
        for (tn, v) in trash_names(trashed) {
            snap.trash.insert(tn.clone(), by_id[&v.id].clone());
            snap.names
                .insert(v.id.clone(), (None, Some(tn), v.volume.clone(), false));
        }
        // Rows no longer listed (purged, or forgotten): their data is gone.
        by_id.retain(|id, st| {
            if seen.contains_key(id.as_str()) {
                true
            } else {
                st.set_status(Status::DeleteComplete);
                st.root_nodeid.load(Ordering::Acquire) != 0
            }
        });
        let old = self.snap.read().clone();
        let mut inval = Vec::new();
        let empty: Published = (None, None, String::new(), false);
        let ids = old.names.keys().chain(snap.names.keys());
        for id in ids {
            let was = old.names.get(id).unwrap_or(&empty);
            let now = snap.names.get(id).unwrap_or(&empty);
            if was == now {
                continue;
            }
            for (n, parent) in [(&was.0, ROOT_INO), (&was.1, TRASH_INO)] {
                if let Some(n) = n {
                    inval.push(Inval::Entry(parent, n.clone()));
                }
            }
            for (n, parent) in [(&now.0, ROOT_INO), (&now.1, TRASH_INO)] {
                if let Some(n) = n {
                    inval.push(Inval::Entry(parent, n.clone()));
                }
            }
            if let Some(st) = by_id.get(id) {
                let nid = st.root_nodeid.load(Ordering::Acquire);
                if nid != 0 {
                    inval.push(Inval::Inode(nid));
                }
            }
        }
        inval.dedup();
        if !inval.is_empty() {
            inval.push(Inval::Inode(ROOT_INO));
            inval.push(Inval::Inode(TRASH_INO));
            self.pending.lock().extend(inval);
        }
        *self.snap.write() = Arc::new(snap);
    }
}
