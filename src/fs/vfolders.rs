//! The mount's in-memory view of the store: every vfolder's status as an
//! atomic (O(1) checks on the hot path, no query per request), the names
//! shown at the root and in `.trash`, and the invalidations owed to the
//! kernel when any of that changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::error::{FsError, FsResult};
use crate::catalog::trash_names;
use crate::fs::caching::Sharing;
use crate::status::Status;
use crate::store::{Changes, ListFilter, Store, StoreError, VFolder};

/// Node id of the mount root.
pub const ROOT_INO: u64 = 1;
/// Node id of the virtual `.trash` directory.
pub const TRASH_INO: u64 = 2;

/// Whether this mount may serve writes at all: the store was readable at
/// its last look, and the mount's lease holds (it confirmed its view of the
/// store recently enough; see [`crate::enforce`]).
pub struct Health {
    healthy: AtomicBool,
    /// Until when writes may be served, in nanoseconds of [`clock`]
    /// (`u64::MAX`: no lease, as in tools and tests without a watcher).
    deadline: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            healthy: AtomicBool::new(true),
            deadline: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether writes may be served now.
    pub fn may_write(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && clock() < self.deadline.load(Ordering::Acquire)
    }
}

/// Nanoseconds of `CLOCK_BOOTTIME`: monotonic, and it goes on while the
/// process is stopped and while the system is suspended (a paused VM), so a
/// mount that was stopped or suspended wakes up past its lease.
pub fn clock() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// One vfolder as the mount sees it.
pub struct VfState {
    /// The vfolder's id.
    pub id: String,
    status: AtomicU8,
    health: Arc<Health>,
    /// Writes in flight: counted up before a write checks the status and
    /// down when it ends. A status change that forbids writes is stored
    /// first, then this is watched until it reads zero: from then on no
    /// write that passed its check under the old status is running.
    inflight: AtomicU64,
    /// Node id of its root directory while the kernel knows it (0 if not).
    pub root_nodeid: AtomicU64,
    volume: RwLock<Arc<str>>,
    /// Files opened in it through this mount (a measure of how hot it is).
    pub opens: AtomicU64,
    /// Bytes read from it through the daemon (reads through kernel
    /// passthrough do not reach the daemon).
    pub bytes_read: AtomicU64,
    /// Bytes written to it through this mount.
    pub bytes_written: AtomicU64,
    /// Files open in it through this mount now (handles not yet released).
    pub handles: AtomicI64,
    /// Location epoch: bumped when its data moves to a new copy (another
    /// filesystem), before the status that allows writes again is stored.
    epoch: AtomicU64,
}

impl crate::catalog::HasId for Arc<VfState> {
    fn id(&self) -> &str {
        &self.id
    }
}

impl VfState {
    /// A state for unit tests of the tables that point at one.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str) -> Arc<VfState> {
        Arc::new(VfState::new(
            id,
            Status::Ready,
            "default",
            Arc::new(Health::new()),
        ))
    }

    fn new(id: &str, status: Status, volume: &str, health: Arc<Health>) -> VfState {
        VfState {
            id: id.to_string(),
            status: AtomicU8::new(status as u8),
            health,
            inflight: AtomicU64::new(0),
            root_nodeid: AtomicU64::new(0),
            volume: RwLock::new(Arc::from(volume)),
            opens: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            handles: AtomicI64::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    /// The location epoch: inodes and handles made under an older one belong
    /// to a copy the vfolder has moved away from. Read after the status (as
    /// [`Self::begin_write`] does), it is at least the epoch stored with it.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The volume holding its backing directory.
    pub fn volume(&self) -> Arc<str> {
        self.volume.read().clone()
    }

    /// The status last seen in the store.
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire)).unwrap_or(Status::DeleteComplete)
    }

    /// Stores the status at once (new writes see it) and returns whether
    /// writes that began under the old one must be waited for: it allowed
    /// writes and the new one does not. Never blocks: the drain is watched
    /// by the registry ([`Registry::poll_drains`]), off this path.
    fn set_status(&self, s: Status) -> bool {
        let old = self.status.swap(s as u8, Ordering::SeqCst);
        Status::from_u8(old).is_some_and(|o| o.is_writable()) && !s.is_writable()
    }

    /// Whether writes that passed their check are still running.
    fn is_drained(&self) -> bool {
        self.inflight.load(Ordering::SeqCst) == 0
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
        self.health.may_write() && self.status().is_writable()
    }

    /// Checks that the vfolder may be changed and holds that true until the
    /// guard is dropped: do the write while holding it. Never waits: a
    /// refused write is refused at once, whatever else is stuck.
    pub fn begin_write(&self) -> FsResult<WriteGuard<'_>> {
        // Counted first, checked after (both SeqCst): either this write sees
        // a status change stored before, or the drain sees this write.
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let g = WriteGuard(self);
        let st =
            Status::from_u8(self.status.load(Ordering::SeqCst)).unwrap_or(Status::DeleteComplete);
        if !st.is_writable() {
            return Err(FsError::ReadOnly(st));
        }
        if !self.health.may_write() {
            // Fail closed: the store could not be read lately, or this
            // mount's lease lapsed.
            return Err(FsError::ReadOnly(st));
        }
        Ok(g)
    }
}

/// A write in progress (see [`VfState::begin_write`]).
pub struct WriteGuard<'a>(&'a VfState);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An invalidation the kernel is owed (sent from outside request handlers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    /// A name in a directory (the root or `.trash`).
    Entry(u64, String),
    /// An inode's attributes.
    Inode(u64),
    /// Every name the kernel cached, and every inode's attributes: another
    /// mount appeared, or this mount's lease lapsed (see
    /// [`crate::fs::caching`]).
    All,
    /// Every name the kernel cached (one notification, however many inodes):
    /// a tree changed behind the mount (a relocation's new copy, a clone's
    /// end); its names are looked up again, which brings fresh attributes.
    Names,
}

impl Inval {
    /// Whether it drops anything the kernel cached from inside vfolders
    /// (what a listing may rely on, see [`Registry::cache_gen`]). A name at
    /// the root or in `.trash`, or the attributes of the root, `.trash` or a
    /// vfolder's root, do not: a backing directory never lists those.
    pub fn reaches_into_vfolders(&self) -> bool {
        matches!(self, Inval::All | Inval::Names)
    }
}

/// What the kernel may have cached about a vfolder: its root name, trash
/// name, volume, and whether it was writable (writable vfolders get cached
/// listings and negative entries, so leaving or entering that state
/// invalidates them).
type Published = (Option<String>, Option<String>, String, bool);

#[derive(Default, Clone)]
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
    health: Arc<Health>,
    /// Vfolders whose writes from before their last status change may still
    /// be running.
    draining: Mutex<HashMap<String, Arc<VfState>>>,
    /// Serializes refreshes; where the change feed was read up to.
    cursor: Mutex<Cursor>,
    pending: Mutex<Vec<Inval>>,
    /// Whether moving a vfolder between two volumes keeps its copy (one
    /// rename within a filesystem); unset: every move makes a new copy.
    keeps_copy: std::sync::OnceLock<KeepsCopy>,
    /// Whether other mounts of the store are live (how long the kernel may
    /// cache).
    sharing: Sharing,
    /// The node ids the kernel knows (to drop their cached attributes).
    known_nodes: std::sync::OnceLock<KnownNodes>,
    /// Raised before the kernel's cached names or attributes inside vfolders
    /// are invalidated: an entry given under an older generation may be gone.
    cache_gen: std::sync::atomic::AtomicU64,
}

/// Lists the node ids the kernel holds.
pub type KnownNodes = Box<dyn Fn() -> Vec<u64> + Send + Sync>;

/// Tells whether a move from the first volume to the second keeps the
/// vfolder's copy (a rename) rather than making a new one.
pub type KeepsCopy = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The registry's copy of the store, kept in step from its change feed.
#[derive(Default)]
struct Cursor {
    /// (change-feed position, deletion count) of the last read; `None`
    /// until the first.
    at: Option<(u64, u64)>,
    /// Current rows (not purged) as last read.
    rows: HashMap<String, VFolder>,
    /// Name → ids of the trashed vfolders that had it.
    trash_groups: HashMap<String, HashSet<String>>,
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
            health: Arc::new(Health::new()),
            draining: Mutex::new(HashMap::new()),
            cursor: Mutex::new(Cursor::default()),
            pending: Mutex::new(Vec::new()),
            keeps_copy: std::sync::OnceLock::new(),
            sharing: Sharing::default(),
            known_nodes: std::sync::OnceLock::new(),
            cache_gen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether other mounts of the store are live.
    pub fn sharing(&self) -> &Sharing {
        &self.sharing
    }

    /// Sets how to list the node ids the kernel holds (once; later calls
    /// are ignored).
    pub fn set_known_nodes(&self, f: KnownNodes) {
        let _ = self.known_nodes.set(f);
    }

    /// The node ids the kernel holds (none before [`Self::set_known_nodes`]).
    pub fn known_nodes(&self) -> Vec<u64> {
        self.known_nodes.get().map(|f| f()).unwrap_or_default()
    }

    /// Records whether other mounts of the store are live. When one
    /// appears, replies are short-lived from now on and what the kernel
    /// cached before is dropped (see [`crate::fs::caching`]).
    pub fn set_shared(&self, shared: bool) {
        if !self.sharing.set(shared) {
            return;
        }
        if shared {
            log::info!(
                "another mount of this store is live: names and attributes are cached briefly"
            );
            self.pending.lock().push(Inval::All);
        } else {
            log::info!("the only live mount of this store: names and attributes are cached long");
        }
    }

    /// Sets how to tell a rename from a copy when a vfolder's volume
    /// changes (once; later calls are ignored).
    pub fn set_keeps_copy(&self, f: KeepsCopy) {
        let _ = self.keeps_copy.set(f);
    }

    /// The live vfolder with this root name.
    pub fn live(&self, name: &str) -> Option<Arc<VfState>> {
        self.snap.read().live.get(name).cloned()
    }

    /// The trashed vfolder with this trash name: as listed, or the stable
    /// `NAME~1a2b3c4d` form of any trashed vfolder (see
    /// [`crate::catalog::find_trashed`]; ambiguous forms find nothing).
    pub fn trashed(&self, name: &str) -> Option<Arc<VfState>> {
        let snap = self.snap.read();
        if let Some(v) = snap.trash.get(name) {
            return Some(v.clone());
        }
        crate::name::split_trash_suffix(name)?;
        let listed: Vec<(String, Arc<VfState>)> = snap
            .trash
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        crate::catalog::find_trashed(&listed, name).ok().flatten()
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

    /// Usage counted per vfolder id since this mount started (those with
    /// any), for the tiering's usage flush ([`crate::tier::usage`]).
    pub fn usage_counts(&self) -> Vec<crate::tier::usage::Counted> {
        self.by_id
            .read()
            .iter()
            .map(|(id, st)| crate::tier::usage::Counted {
                id: id.clone(),
                opens: st.opens.load(Ordering::Relaxed),
                bytes_read: st.bytes_read.load(Ordering::Relaxed),
                bytes_written: st.bytes_written.load(Ordering::Relaxed),
            })
            .filter(|c| c.opens > 0 || c.bytes_read > 0 || c.bytes_written > 0)
            .collect()
    }

    /// (id, name, open handles) of the vfolders with files open through
    /// this mount now (for the metrics).
    pub fn handle_counts(&self) -> Vec<(String, String, i64)> {
        let open: Vec<(String, i64)> = self
            .by_id
            .read()
            .iter()
            .map(|(id, st)| (id.clone(), st.handles.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let cur = self.cursor.lock();
        open.into_iter()
            .map(|(id, n)| {
                let name = cur
                    .rows
                    .get(&id)
                    .map(|v| v.name.clone())
                    .unwrap_or_default();
                (id, name, n)
            })
            .collect()
    }

    /// The usage this mount counted with each vfolder's name (for the
    /// metrics): (id, name, opens, bytes read, bytes written).
    pub fn usage_named(&self) -> Vec<(String, String, u64, u64, u64)> {
        let counted = self.usage_counts();
        let cur = self.cursor.lock();
        let mut v: Vec<_> = counted
            .into_iter()
            .map(|c| {
                let name = cur
                    .rows
                    .get(&c.id)
                    .map(|v| v.name.clone())
                    .unwrap_or_default();
                (c.id, name, c.opens, c.bytes_read, c.bytes_written)
            })
            .collect();
        v.sort();
        v
    }

    /// Whether the last refresh could read the store.
    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Acquire)
    }

    /// Whether this mount may serve writes now (store readable, lease holds).
    pub fn may_write(&self) -> bool {
        self.health.may_write()
    }

    /// Whether the mount's lease lapsed: it has not confirmed its view of the
    /// store in time (other mounts no longer wait for it).
    pub fn lease_lapsed(&self) -> bool {
        clock() >= self.health.deadline.load(Ordering::Acquire)
    }

    /// Lets writes be served until `deadline` ([`clock`] nanoseconds): the
    /// lease a confirmation of the store's view bought.
    pub fn set_deadline(&self, deadline: u64) {
        self.health.deadline.store(deadline, Ordering::Release);
    }

    /// The change-feed position applied (0 before the first read).
    pub fn applied_rev(&self) -> u64 {
        self.cursor.lock().at.map_or(0, |(rev, _)| rev)
    }

    /// Forgets the drains that finished; returns the ids still draining,
    /// sorted.
    pub fn poll_drains(&self) -> Vec<String> {
        let mut d = self.draining.lock();
        d.retain(|_, st| !st.is_drained());
        let mut v: Vec<String> = d.keys().cloned().collect();
        v.sort();
        v
    }

    /// Marks the store unreadable (writes refused) or readable again;
    /// returns whether that changed.
    pub fn set_healthy(&self, ok: bool) -> bool {
        self.health.healthy.swap(ok, Ordering::AcqRel) != ok
    }

    /// Invalidations collected since the last call (the caller sends them:
    /// the cache generation is raised first if any reaches into vfolders).
    pub fn take_pending(&self) -> Vec<Inval> {
        let v = std::mem::take(&mut *self.pending.lock());
        // Not for every status change of every vfolder: those only touch
        // names at the top, and would keep listings from trusting anything.
        if v.iter().any(Inval::reaches_into_vfolders) {
            self.kernel_cache_dropping();
        }
        v
    }

    /// The current cache generation (see [`Self::kernel_cache_dropping`]).
    pub fn cache_gen(&self) -> u64 {
        self.cache_gen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Called before the kernel's cached names or attributes inside vfolders
    /// are invalidated: entries given before no longer count as cached.
    pub fn kernel_cache_dropping(&self) {
        self.cache_gen
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Reloads every vfolder from the store, updates statuses and names, and
    /// queues the kernel invalidations for what changed.
    pub fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let mut cur = self.cursor.lock();
        let all = store.changes_since(0)?;
        self.apply_all(&mut cur, all);
        Ok(())
    }

    /// Brings the registry up to date with what changed in the store since
    /// the last look, reading only the changed rows (everything again after
    /// rows were deleted, or the first time).
    pub fn sync(&self, store: &dyn Store) -> Result<(), StoreError> {
        let mut cur = self.cursor.lock();
        let Some((rev, deletions)) = cur.at else {
            let all = store.changes_since(0)?;
            self.apply_all(&mut cur, all);
            return Ok(());
        };
        let ch = store.changes_since(rev)?;
        if ch.deletions != deletions {
            let all = store.changes_since(0)?;
            self.apply_all(&mut cur, all);
        } else {
            cur.at = Some((ch.rev, ch.deletions));
            self.apply_changes(&mut cur, ch.rows, true);
        }
        Ok(())
    }

    /// Rebuilds from every row: each current row is applied as a change, and
    /// each vfolder the store no longer lists as current (purged, forgotten)
    /// as gone; one mechanism for both ([`Self::apply_changes`]).
    fn apply_all(&self, cur: &mut Cursor, all: Changes) {
        cur.at = Some((all.rev, all.deletions));
        let mut changed: Vec<VFolder> = all
            .rows
            .into_iter()
            .filter(|v| ListFilter::Current.admits(v.status))
            .collect();
        let listed: HashSet<&str> = changed.iter().map(|v| v.id.as_str()).collect();
        let gone: Vec<VFolder> = cur
            .rows
            .values()
            .filter(|v| !listed.contains(v.id.as_str()))
            .map(|v| VFolder {
                status: Status::DeleteComplete,
                ..v.clone()
            })
            .collect();
        changed.extend(gone);
        self.apply_changes(cur, changed, false);
        // States kept for a root the kernel knew, once it forgot it.
        self.by_id.write().retain(|id, st| {
            cur.rows.contains_key(id) || st.root_nodeid.load(Ordering::Acquire) != 0
        });
    }

    /// Applies changed rows only: their states, and the names of the
    /// vfolders they touch (a trashed name depends on the others trashed
    /// under the same name).
    /// `metered`: count the status changes in the metrics (changes read from
    /// the feed; not a first read or a rebuild).
    fn apply_changes(&self, cur: &mut Cursor, changed: Vec<VFolder>, metered: bool) {
        if changed.is_empty() {
            return;
        }
        let mut by_id = self.by_id.write();
        let mut affected: HashSet<String> = HashSet::new();
        let mut groups: HashSet<String> = HashSet::new();
        let now = crate::store::sqlite::now_millis();
        for v in changed {
            if metered && cur.rows.get(&v.id).map(|o| o.status) != Some(v.status) {
                crate::metrics::counters::status_change(now - v.status_changed_at);
            }
            affected.insert(v.id.clone());
            if let Some(old) = cur.rows.get(&v.id)
                && old.status.is_in_trash()
            {
                groups.insert(old.name.clone());
                if let Some(g) = cur.trash_groups.get_mut(&old.name) {
                    g.remove(&v.id);
                    if g.is_empty() {
                        cur.trash_groups.remove(&old.name);
                    }
                }
            }
            let st = self.state_for(&mut by_id, &v);
            if ListFilter::Current.admits(v.status) {
                if v.status.is_in_trash() {
                    groups.insert(v.name.clone());
                    cur.trash_groups
                        .entry(v.name.clone())
                        .or_default()
                        .insert(v.id.clone());
                }
                cur.rows.insert(v.id.clone(), v);
            } else {
                // Purged: its data is gone.
                cur.rows.remove(&v.id);
                if st.root_nodeid.load(Ordering::Acquire) == 0 {
                    by_id.remove(&v.id);
                }
            }
        }
        let mut trash_name_of: HashMap<String, String> = HashMap::new();
        for g in &groups {
            if let Some(ids) = cur.trash_groups.get(g) {
                affected.extend(ids.iter().cloned());
                let rows = ids.iter().map(|id| cur.rows[id].clone()).collect();
                for (tn, v) in trash_names(rows) {
                    trash_name_of.insert(v.id, tn);
                }
            }
        }
        let mut guard = self.snap.write();
        let snap = Arc::make_mut(&mut guard);
        let mut updates = Vec::new();
        for id in &affected {
            let now = match cur.rows.get(id) {
                Some(v) if v.status.is_visible() => published(v, None),
                Some(v) if v.status.is_in_trash() => published(v, trash_name_of.get(id).cloned()),
                _ => UNPUBLISHED.clone(),
            };
            let was = snap.names.get(id).unwrap_or(&UNPUBLISHED);
            if *was != now {
                updates.push((id, was.clone(), now));
            }
        }
        // Names may pass from one vfolder to another: all removals first.
        for (id, was, _) in &updates {
            if let Some(n) = &was.0
                && snap.live.get(n).is_some_and(|s| s.id == **id)
            {
                snap.live.remove(n);
            }
            if let Some(n) = &was.1
                && snap.trash.get(n).is_some_and(|s| s.id == **id)
            {
                snap.trash.remove(n);
            }
        }
        let mut inval = Vec::new();
        for (id, was, now) in &updates {
            if let Some(st) = by_id.get(*id) {
                if let Some(n) = &now.0 {
                    snap.live.insert(n.clone(), st.clone());
                }
                if let Some(n) = &now.1 {
                    snap.trash.insert(n.clone(), st.clone());
                }
            }
            if *now == UNPUBLISHED {
                snap.names.remove(*id);
            } else {
                snap.names.insert((*id).clone(), now.clone());
            }
            invalidations(id, was, now, &by_id, &mut inval);
        }
        self.queue(inval);
    }

    /// The state of `v`'s vfolder (made if new), brought to its row.
    fn state_for(&self, by_id: &mut HashMap<String, Arc<VfState>>, v: &VFolder) -> Arc<VfState> {
        let st = by_id
            .entry(v.id.clone())
            .or_insert_with(|| {
                Arc::new(VfState::new(
                    &v.id,
                    v.status,
                    &v.volume,
                    self.health.clone(),
                ))
            })
            .clone();
        // The volume, and the epoch if the data is a new copy, before the
        // status: a write that sees `ready` sees the new location and epoch.
        let old = st.volume();
        let mut behind = false;
        if *old != *v.volume {
            *st.volume.write() = Arc::from(v.volume.as_str());
            if !self.keeps_copy.get().is_some_and(|f| f(&old, &v.volume)) {
                st.epoch.fetch_add(1, Ordering::AcqRel);
                behind = true;
            }
        }
        // A clone's target was filled behind the mount; a new copy has new
        // inodes: what the kernel cached there goes, race-free (a lookup in
        // flight is stamped with the old epoch).
        behind |= st.status().is_cloning() && !v.status.is_cloning();
        if behind {
            self.pending.lock().push(Inval::Names);
        }
        if st.set_status(v.status) && !st.is_drained() {
            self.draining.lock().insert(v.id.clone(), st.clone());
        }
        st
    }

    fn queue(&self, mut inval: Vec<Inval>) {
        inval.dedup();
        if !inval.is_empty() {
            inval.push(Inval::Inode(ROOT_INO));
            inval.push(Inval::Inode(TRASH_INO));
            self.pending.lock().extend(inval);
        }
    }
}

static UNPUBLISHED: Published = (None, None, String::new(), false);

/// What the kernel may cache of `v` (with its trash name if trashed).
fn published(v: &VFolder, trash_name: Option<String>) -> Published {
    if trash_name.is_some() {
        (None, trash_name, v.volume.clone(), false)
    } else {
        (
            Some(v.name.clone()),
            None,
            v.volume.clone(),
            v.status.is_writable(),
        )
    }
}

/// The invalidations owed when what the kernel may cache of vfolder `id`
/// goes from `was` to `now`: its old and new names, and its root's
/// attributes.
fn invalidations(
    id: &str,
    was: &Published,
    now: &Published,
    by_id: &HashMap<String, Arc<VfState>>,
    out: &mut Vec<Inval>,
) {
    if was == now {
        return;
    }
    for (n, parent) in [(&was.0, ROOT_INO), (&was.1, TRASH_INO)] {
        if let Some(n) = n {
            out.push(Inval::Entry(parent, n.clone()));
        }
    }
    for (n, parent) in [(&now.0, ROOT_INO), (&now.1, TRASH_INO)] {
        if let Some(n) = n {
            out.push(Inval::Entry(parent, n.clone()));
        }
    }
    if let Some(st) = by_id.get(id) {
        let nid = st.root_nodeid.load(Ordering::Acquire);
        if nid != 0 {
            out.push(Inval::Inode(nid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Create(u8),
        SetStatus(u8, u8),
        Rename(u8, u8),
        Move(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4).prop_map(Step::Create),
            (0u8..8, 0u8..7).prop_map(|(i, s)| Step::SetStatus(i, s)),
            (0u8..8, 0u8..4).prop_map(|(i, n)| Step::Rename(i, n)),
            (0u8..8).prop_map(Step::Move),
        ]
    }

    const NAMES: [&str; 4] = ["a", "b", "c", "a~x"];

    /// Applies `step` to `rows` as the store would allow (a name held by
    /// one live vfolder only); returns the rows it changed.
    fn apply(rows: &mut Vec<VFolder>, step: &Step, clock: i64) -> Vec<VFolder> {
        let taken = |rows: &Vec<VFolder>, name: &str, except: &str| {
            rows.iter()
                .any(|r| r.id != except && r.status.holds_name() && r.name == name)
        };
        match *step {
            Step::Create(n) => {
                let name = NAMES[n as usize];
                if taken(rows, name, "") {
                    return vec![];
                }
                let v = VFolder {
                    id: format!("{:08x}-0000", rows.len()),
                    name: name.into(),
                    status: Status::Ready,
                    created_at: clock,
                    status_changed_at: clock,
                    error: None,
                    volume: "default".into(),
                    prev_volume: None,
                    clone_src: None,
                };
                rows.push(v.clone());
                vec![v]
            }
            Step::SetStatus(i, s) | Step::Rename(i, s) if rows.is_empty() => {
                let _ = (i, s);
                vec![]
            }
            Step::SetStatus(i, s) => {
                let k = i as usize % rows.len();
                let st = Status::ALL[s as usize % Status::ALL.len()];
                if st.holds_name() && taken(rows, &rows[k].name.clone(), &rows[k].id.clone()) {
                    return vec![];
                }
                rows[k].status = st;
                rows[k].status_changed_at = clock;
                vec![rows[k].clone()]
            }
            Step::Rename(i, n) => {
                let k = i as usize % rows.len();
                let name = NAMES[n as usize];
                if rows[k].status.holds_name() && taken(rows, name, &rows[k].id.clone()) {
                    return vec![];
                }
                rows[k].name = name.into();
                vec![rows[k].clone()]
            }
            Step::Move(i) => {
                if rows.is_empty() {
                    return vec![];
                }
                let k = i as usize % rows.len();
                rows[k].volume = format!("{}x", rows[k].volume);
                vec![rows[k].clone()]
            }
        }
    }

    type View = (
        Vec<(String, String)>,
        Vec<(String, String)>,
        Vec<(String, Published)>,
        Vec<(String, Status, String)>,
    );

    fn view(r: &Registry) -> View {
        let snap = r.snap.read().clone();
        let ids = |m: &HashMap<String, Arc<VfState>>| {
            let mut v: Vec<_> = m.iter().map(|(n, s)| (n.clone(), s.id.clone())).collect();
            v.sort();
            v
        };
        let mut names: Vec<_> = snap
            .names
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        names.sort();
        let mut states: Vec<_> = r
            .by_id
            .read()
            .values()
            .map(|s| (s.id.clone(), s.status(), s.volume().to_string()))
            .collect();
        states.sort();
        (ids(&snap.live), ids(&snap.trash), names, states)
    }

    fn pending(r: &Registry) -> Vec<String> {
        let mut v: Vec<String> = r.take_pending().iter().map(|i| format!("{i:?}")).collect();
        v.sort();
        v.dedup();
        v
    }

    proptest! {
        /// Following the change feed gives exactly what rereading every row
        /// gives: the same names, states and invalidations after every step.
        #[test]
        fn changes_applied_one_by_one_match_a_full_reread(steps in proptest::collection::vec(step(), 1..60)) {
            let inc = Registry::new();
            let full = Registry::new();
            let mut rows = Vec::new();
            for (t, s) in steps.iter().enumerate() {
                let changed = apply(&mut rows, s, t as i64);
                inc.apply_changes(&mut inc.cursor.lock(), changed, true);
                full.apply_all(
                    &mut full.cursor.lock(),
                    Changes { rows: rows.clone(), rev: 0, deletions: 0 },
                );
                prop_assert_eq!(view(&inc), view(&full), "after {:?}", s);
                prop_assert_eq!(pending(&inc), pending(&full), "after {:?}", s);
            }
        }
    }
}
