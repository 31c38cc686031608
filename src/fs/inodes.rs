//! The inode table: every backing inode the kernel knows, keyed by node id
//! and by (device, inode), released when the kernel forgets it. Inodes hold
//! a kernel file handle and are reopened by it when needed, so a walk over
//! millions of files and directories costs no open file each. Directories
//! (the anchors of every `*at` call) keep an `O_PATH` fd in a bounded cache
//! of recently used ones ([`DirFds`]), so the hot ones cost no reopen.
//!
//! Node ids double as the `st_ino` users see (fuser sends `attr.ino` as the
//! node id), so a backing inode keeps its own inode number whenever that
//! number is free in the table; collisions (other devices, the reserved ids
//! 1 and 2) get numbers from a high range instead.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::error::{FsError, FsResult};
use super::vfolders::{ROOT_INO, TRASH_INO, VfState};
use crate::backing::creds;
use crate::backing::handle::{InodeRef, KernelHandle, MountFd, MountFds};
use crate::backing::sys;

/// The most directory fds kept open by default (fewer when the open-file
/// limit is low: a quarter of it).
pub const DIR_FDS_MAX: usize = 65536;

/// One shard: node id → (fd, when last used), and the shard's own clock
/// (eviction is per shard, so no clock is shared between threads).
#[derive(Default)]
struct DirShard {
    map: HashMap<u64, (Arc<OwnedFd>, u64)>,
    tick: u64,
}

/// Open `O_PATH` fds of recently used directories, bounded; an evicted one
/// is reopened by its handle when next needed. Sharded by node id.
pub struct DirFds {
    shards: Vec<Mutex<DirShard>>,
    per_shard: usize,
}

impl DirFds {
    /// A cache of at most about `capacity` fds.
    pub fn new(capacity: usize) -> DirFds {
        DirFds {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(DirShard::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// A quarter of the open-file limit, at most [`DIR_FDS_MAX`].
    pub fn default_capacity() -> usize {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct it is given.
        let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
            r.rlim_cur as usize
        } else {
            1024
        };
        (cur / 4).clamp(64, DIR_FDS_MAX)
    }

    fn shard(&self, nodeid: u64) -> &Mutex<DirShard> {
        &self.shards[(nodeid as usize) % SHARDS]
    }

    fn get(&self, nodeid: u64) -> Option<Arc<OwnedFd>> {
        let mut sh = self.shard(nodeid).lock();
        sh.tick += 1;
        let now = sh.tick;
        sh.map.get_mut(&nodeid).map(|(fd, used)| {
            *used = now;
            fd.clone()
        })
    }

    fn put(&self, nodeid: u64, fd: Arc<OwnedFd>) {
        let mut sh = self.shard(nodeid).lock();
        sh.tick += 1;
        let now = sh.tick;
        if sh.map.len() >= self.per_shard && !sh.map.contains_key(&nodeid) {
            // Full: the least recently used goes (closed once no request
            // still uses it).
            if let Some(old) = sh
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                sh.map.remove(&old);
            }
        }
        sh.map.insert(nodeid, (fd, now));
    }

    fn remove(&self, nodeid: u64) {
        self.shard(nodeid).lock().map.remove(&nodeid);
    }

    /// How many fds it holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An fd on an inode for the length of one operation.
pub enum InodeFd<'a> {
    /// The inode's own fd.
    Held(BorrowedFd<'a>),
    /// Reopened from its handle; closed when dropped.
    Opened(OwnedFd),
    /// A directory's cached fd (kept open while used, even if evicted).
    Cached(Arc<OwnedFd>),
}

impl InodeFd<'_> {
    /// The fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InodeFd::Held(b) => *b,
            InodeFd::Opened(o) => o.as_fd(),
            InodeFd::Cached(c) => c.as_fd(),
        }
    }
}

/// One backing inode.
pub struct Inode {
    /// Node id (and `st_ino`).
    pub nodeid: u64,
    /// How it is reached: an `O_PATH | O_NOFOLLOW` fd where handles fail,
    /// else its kernel handle.
    reach: InodeRef,
    /// A directory reached by handle: the cache its fd lives in while used.
    dir_fds: Option<Arc<DirFds>>,
    /// (st_dev, st_ino) of the backing inode.
    pub key: (u64, u64),
    /// `S_IFMT` bits of the backing inode.
    pub fmt: u32,
    /// The vfolder it belongs to.
    pub vf: Arc<VfState>,
    /// Whether this is a vfolder's root directory.
    pub is_vf_root: bool,
    nlookup: AtomicU64,
    /// The vfolder's location epoch it was found under (raised when the
    /// same backing inode is found again under a newer one).
    epoch: AtomicU64,
    /// When it was last looked up for the kernel ([`now_ms`]) and the
    /// registry's cache generation then: what [`InodeTable::known_fresh`]
    /// asks. Set as the lookup is counted, also for an entry a full
    /// readdirplus reply then forgets again (a later listing only does a
    /// full lookup it could have spared).
    looked_ms: AtomicU64,
    looked_gen: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts with the process.
pub fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Inode {
    /// Its kernel file handle, unless it is held by an fd.
    pub fn handle(&self) -> Option<&KernelHandle> {
        self.reach.handle()
    }

    /// Notes that the kernel was just given an entry for it, under cache
    /// generation `gen`.
    fn looked(&self, cache_gen: u64) {
        self.looked_ms.store(now_ms(), Ordering::Relaxed);
        self.looked_gen.store(cache_gen, Ordering::Relaxed);
    }

    /// The location epoch it belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Fails with [`FsError::Moved`] once its vfolder moved to a new copy
    /// (two atomic loads).
    #[inline]
    pub fn check_current(&self) -> FsResult<()> {
        if self.epoch() >= self.vf.epoch() {
            Ok(())
        } else {
            Err(FsError::Moved)
        }
    }

    /// [`VfState::begin_write`] for a change through this inode: also fails
    /// if the vfolder moved to a new copy. The epoch is read after the
    /// status, so a write allowed by a status stored after a move sees it.
    pub fn begin_write(&self) -> FsResult<impl Sized + '_> {
        let g = self.vf.begin_write()?;
        self.check_current()?;
        Ok(g)
    }

    /// An `O_PATH` fd on the inode (directories: their own; others: reopened
    /// by handle, `ESTALE` once the inode is gone).
    pub fn fd(&self) -> io::Result<InodeFd<'_>> {
        if let InodeRef::Fd(fd) = &self.reach {
            return Ok(InodeFd::Held(fd.as_fd()));
        }
        let Some(cache) = &self.dir_fds else {
            return by_handle(&self.reach).map(InodeFd::Opened);
        };
        if let Some(fd) = cache.get(self.nodeid) {
            return Ok(InodeFd::Cached(fd));
        }
        let fd = Arc::new(by_handle(&self.reach)?);
        cache.put(self.nodeid, fd.clone());
        Ok(InodeFd::Cached(fd))
    }

    /// Whether `fd` (just opened on a name) is this very inode, not a new
    /// one that got a freed inode number: an inode held by its fd is pinned
    /// so its number cannot be reused; for the others the handles (which
    /// carry the generation) must agree.
    fn is_same_inode(&self, fd: &OwnedFd) -> bool {
        let Some(h) = self.reach.handle() else {
            return true;
        };
        match &self.dir_fds {
            // An fd still open in the cache pins the inode: its number
            // cannot have been reused.
            Some(cache) if cache.get(self.nodeid).is_some() => true,
            _ => KernelHandle::of(fd.as_fd()).is_ok_and(|(other, _)| other == *h),
        }
    }

    /// Opens the inode with real access `flags` (never following a symlink,
    /// never creating) as this thread's caller: its `O_PATH` fd is reopened
    /// through `/proc/self/fd`, so the backing filesystem checks the caller's
    /// rights on the inode itself, whatever the kernel's cached mode says.
    pub fn open(&self, flags: i32) -> io::Result<OwnedFd> {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW);
        sys::reopen(self.fd()?.as_fd(), flags)
    }

    /// Reopens the inode read-only for a handle whose opener was already
    /// granted read access (a kernel-passthrough reader's fstat, lseek or
    /// fsync): the right was checked at open, as an open fd keeps it natively
    /// even after a chmod.
    pub fn reopen_granted(&self) -> io::Result<OwnedFd> {
        granted(|| self.reach.open(libc::O_RDONLY))
    }
}

/// Reaches an inode by its handle, as an `O_PATH` fd.
fn by_handle(reach: &InodeRef) -> io::Result<OwnedFd> {
    // Privileged step: open_by_handle_at demands CAP_DAC_READ_SEARCH. With
    // O_PATH it opens no data and checks nothing the caller could lack: the
    // kernel resolved the caller's path to this inode before asking.
    creds::with_caps(creds::cap::bit(creds::cap::DAC_READ_SEARCH), || {
        reach.open(libc::O_PATH | libc::O_NOFOLLOW)
    })?
}

/// Runs a read-only reopen for a handle already granted read access.
fn granted(f: impl FnOnce() -> io::Result<OwnedFd>) -> io::Result<OwnedFd> {
    // Privileged step: CAP_DAC_READ_SEARCH (read access only) for an opener
    // whose read access was checked when it opened; see reopen_granted.
    creds::with_caps(creds::cap::bit(creds::cap::DAC_READ_SEARCH), f)?
}

const HIGH_RANGE: u64 = 1 << 62;
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    by_id: HashMap<u64, Arc<Inode>>,
}

/// The table. Sharded by node id so that parallel requests rarely contend.
///
/// LOCK ORDER (a lock may be taken while holding the ones before it, never
/// the other way round):
///
/// 1. `by_key` — the (dev, ino) → node id map. Held across a whole lookup
///    insertion and a whole forget, so that two lookups of one inode agree on
///    its node id and a forget cannot race an insertion of the same key.
/// 2. a shard (`shards[nodeid % SHARDS]`) — at most one at a time.
/// 3. `mounts` (the mount-fd map, [`MountFds`]) and the [`DirFds`] cache —
///    leaves: nothing is locked while holding them. (`mounts` is taken
///    under `by_key` when a new inode's mount is first probed.)
///
/// The [`super::handles::HandleTable`]'s locks are never taken with these.
///
/// Invariants (checked by [`InodeTable::check`], run in debug builds every
/// [`CHECK_EVERY`] forgets, and by the tests):
/// - every `by_key` value names a live entry whose own key is that key;
/// - every live entry has `nlookup > 0` (the kernel holds it), and its node
///   id is unique across shards;
/// - `nlookup` changes only under `by_key` (insertion, forget), except the
///   increment of a found entry, which also holds `by_key`.
pub struct InodeTable {
    /// Entries by node id. GUARDED_BY its own mutex; see the lock order.
    shards: Vec<Mutex<Shard>>,
    /// One fd per mount seen, for `open_by_handle_at`; `None` for a mount
    /// where reopening by handle does not work (inodes there keep an fd).
    mounts: MountFds,
    /// Directories' fds while they are used.
    dir_fds: Arc<DirFds>,
    /// (dev, ino) → node id; one lock so that lookups of one inode agree.
    /// Taken first (see the lock order).
    by_key: Mutex<HashMap<(u64, u64), u64>>,
    next_high: AtomicU64,
    main_dev: u64,
    /// Forgets since start (debug builds check the invariants every
    /// [`CHECK_EVERY`]).
    forgets: AtomicU64,
}

/// How many forgets pass between two invariant checks in debug builds.
pub const CHECK_EVERY: u64 = 256;

impl InodeTable {
    /// An empty table; `main_dev` is the data directory's device, whose
    /// inode numbers are used as node ids; at most about `dir_fds`
    /// directory fds stay open.
    pub fn new(main_dev: u64, dir_fds: usize) -> InodeTable {
        InodeTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            mounts: MountFds::default(),
            dir_fds: Arc::new(DirFds::new(dir_fds)),
            by_key: Mutex::new(HashMap::new()),
            next_high: AtomicU64::new(HIGH_RANGE),
            main_dev,
            forgets: AtomicU64::new(0),
        }
    }

    /// Checks the table's invariants (see the type's documentation); the
    /// first one broken, in words. Takes every lock in the documented order.
    pub fn check(&self) -> Result<(), String> {
        let keys = self.by_key.lock();
        let mut seen = std::collections::HashSet::new();
        for (i, sh) in self.shards.iter().enumerate() {
            let sh = sh.lock();
            for (nid, ino) in &sh.by_id {
                if (*nid as usize) % SHARDS != i || ino.nodeid != *nid {
                    return Err(format!("node {nid} filed in shard {i}"));
                }
                if !seen.insert(*nid) {
                    return Err(format!("node {nid} twice"));
                }
                if ino.nlookup.load(Ordering::Acquire) == 0 {
                    return Err(format!("node {nid} kept with no lookup"));
                }
            }
        }
        for (key, nid) in keys.iter() {
            let Some(ino) = self.shard(*nid).lock().by_id.get(nid).cloned() else {
                return Err(format!("key {key:?} names node {nid}, which is gone"));
            };
            if ino.key != *key {
                return Err(format!("key {key:?} names node {nid} of key {:?}", ino.key));
            }
        }
        Ok(())
    }

    fn shard(&self, nodeid: u64) -> &Mutex<Shard> {
        &self.shards[(nodeid as usize) % SHARDS]
    }

    /// Every node id in the table (the inodes the kernel holds).
    pub fn node_ids(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for sh in &self.shards {
            v.extend(sh.lock().by_id.keys().copied());
        }
        v
    }

    /// The inode with this node id.
    pub fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        self.shard(nodeid).lock().by_id.get(&nodeid).cloned()
    }

    /// Counts one kernel lookup of the backing inode `fd`/`st` found in
    /// directory `parent` (None: a vfolder's root), adding it to the table
    /// if new (the fd is dropped when the inode is known already). `epoch`
    /// is the vfolder's location epoch read before the inode was reached
    /// (the parent's own, for a name looked up in it).
    pub fn insert_lookup(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        vf: &Arc<VfState>,
        parent: Option<BorrowedFd<'_>>,
        epoch: u64,
        cache_gen: u64,
    ) -> Arc<Inode> {
        let is_vf_root = parent.is_none();
        let key = (st.st_dev, st.st_ino);
        let mut keys = self.by_key.lock();
        if let Some(&nid) = keys.get(&key)
            && let Some(ino) = self.get(nid)
        {
            if ino.is_same_inode(&fd) {
                ino.nlookup.fetch_add(1, Ordering::AcqRel);
                // Found in the copy of `epoch`: it belongs to that copy.
                ino.epoch.fetch_max(epoch, Ordering::AcqRel);
                ino.looked(cache_gen);
                return ino;
            }
            // The number was freed and reused while the kernel still holds
            // the old inode: the new one gets an entry (and node id) of its own.
            keys.remove(&key);
        }
        let wanted = st.st_ino;
        let nodeid = if st.st_dev == self.main_dev
            && wanted != ROOT_INO
            && wanted != TRASH_INO
            && wanted < HIGH_RANGE
            && !self.shard(wanted).lock().by_id.contains_key(&wanted)
        {
            wanted
        } else {
            self.next_high.fetch_add(1, Ordering::Relaxed)
        };
        let (reach, dir_fds) = self.reach(nodeid, fd, st, parent);
        let ino = Arc::new(Inode {
            nodeid,
            reach,
            dir_fds,
            key,
            fmt: st.st_mode & libc::S_IFMT,
            vf: vf.clone(),
            is_vf_root,
            nlookup: AtomicU64::new(1),
            epoch: AtomicU64::new(epoch),
            looked_ms: AtomicU64::new(now_ms()),
            looked_gen: AtomicU64::new(cache_gen),
        });
        if is_vf_root {
            vf.root_nodeid.store(nodeid, Ordering::Release);
        }
        self.shard(nodeid).lock().by_id.insert(nodeid, ino.clone());
        keys.insert(key, nodeid);
        ino
    }

    /// Trades the inode's fd for its handle when its mount can reopen by
    /// handle (a directory's fd goes to the cache, hot); keeps the fd
    /// otherwise.
    fn reach(
        &self,
        nodeid: u64,
        fd: OwnedFd,
        st: &libc::stat,
        parent: Option<BorrowedFd<'_>>,
    ) -> (InodeRef, Option<Arc<DirFds>>) {
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let Ok((h, mount_id)) = KernelHandle::of(fd.as_fd()) else {
            // No handles on this filesystem: keep the fd.
            return (InodeRef::Fd(fd), None);
        };
        let Some(mount) = self.mount_fd(mount_id, &h, fd.as_fd(), is_dir, parent) else {
            return (InodeRef::Fd(fd), None);
        };
        if is_dir {
            self.dir_fds.put(nodeid, Arc::new(fd));
            (InodeRef::Handle(h, mount), Some(self.dir_fds.clone()))
        } else {
            (InodeRef::Handle(h, mount), None)
        }
    }

    /// An fd to reopen handles of mount `mount_id` against, found the first
    /// time from the inode itself (a directory) or its parent, and checked
    /// by reopening `h` (which needs `CAP_DAC_READ_SEARCH`).
    fn mount_fd(
        &self,
        mount_id: i32,
        h: &KernelHandle,
        fd: BorrowedFd<'_>,
        is_dir: bool,
        parent: Option<BorrowedFd<'_>>,
    ) -> Option<Arc<MountFd>> {
        self.mounts.get_or_probe(mount_id, || {
            // open_by_handle_at wants a real (not O_PATH) fd on the same
            // mount: the directory itself, or the parent directory if on
            // this mount.
            let dir = if is_dir {
                Some(fd)
            } else {
                parent.filter(|p| KernelHandle::of(*p).is_ok_and(|(_, pm)| pm == mount_id))
            };
            let dir = dir.ok_or(io::ErrorKind::NotFound)?;
            // Privileged step (CAP_DAC_READ_SEARCH): the daemon's own
            // reference fd for the mount, and the probe whether handles work
            // there; nothing is opened for a caller, and the outcome must not
            // depend on who happened to ask first.
            creds::with_caps(creds::cap::bit(creds::cap::DAC_READ_SEARCH), || {
                MountFd::probe(dir, h)
            })?
        })
    }

    /// The inode with backing `key` if the kernel holds it and was given an
    /// entry for it less than `within` ago under cache generation `cache_gen`
    /// (nothing invalidated since): its cached name and attributes are
    /// still good, so a listing need not send them again. The caller still
    /// checks that the name it read is this inode (its handle).
    pub fn known_fresh(&self, key: (u64, u64), cache_gen: u64, within: u64) -> Option<Arc<Inode>> {
        let nid = *self.by_key.lock().get(&key)?;
        let ino = self.get(nid)?;
        let fresh = ino.looked_gen.load(Ordering::Relaxed) == cache_gen
            && now_ms().saturating_sub(ino.looked_ms.load(Ordering::Relaxed)) < within
            && ino.nlookup.load(Ordering::Acquire) > 0;
        fresh.then_some(ino)
    }

    /// The kernel dropped `n` lookups of `nodeid`.
    pub fn forget(&self, nodeid: u64, n: u64) {
        self.forget_one(nodeid, n);
        if cfg!(debug_assertions)
            && self.forgets.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == CHECK_EVERY - 1
            && let Err(e) = self.check()
        {
            panic!("inode table invariant broken: {e}");
        }
    }

    fn forget_one(&self, nodeid: u64, n: u64) {
        let mut keys = self.by_key.lock();
        let mut shard = self.shard(nodeid).lock();
        let Some(ino) = shard.by_id.get(&nodeid) else {
            return;
        };
        let prev = ino
            .nlookup
            .fetch_sub(n.min(ino.nlookup.load(Ordering::Acquire)), Ordering::AcqRel);
        if prev <= n {
            let ino = shard.by_id.remove(&nodeid).expect("present");
            self.dir_fds.remove(nodeid);
            if keys.get(&ino.key) == Some(&nodeid) {
                keys.remove(&ino.key);
            }
            if ino.is_vf_root {
                let _ = ino.vf.root_nodeid.compare_exchange(
                    nodeid,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/").unwrap().into())
    }

    #[test]
    fn the_invariant_check_passes_on_lookups_and_forgets_and_catches_a_dangling_key() {
        let dir = tempfile::tempdir().unwrap();
        let dfd: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let st = sys::fstat(dfd.as_fd()).unwrap();
        let t = InodeTable::new(st.st_dev, 64);
        let vf = crate::fs::vfolders::VfState::for_test("v");
        let mut ids = Vec::new();
        for i in 0..20 {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, b"x").unwrap();
            let f: OwnedFd = std::fs::File::open(&p).unwrap().into();
            let fst = sys::fstat(f.as_fd()).unwrap();
            // Looked up twice: one entry, two lookups.
            let a = t.insert_lookup(f, &fst, &vf, Some(dfd.as_fd()), 0, 0);
            let g: OwnedFd = std::fs::File::open(&p).unwrap().into();
            let b = t.insert_lookup(g, &fst, &vf, Some(dfd.as_fd()), 0, 0);
            assert_eq!(a.nodeid, b.nodeid);
            ids.push(a.nodeid);
        }
        assert_eq!(t.check(), Ok(()));
        for id in &ids[..10] {
            t.forget(*id, 2);
        }
        for id in &ids[10..] {
            t.forget(*id, 1);
        }
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.node_ids().len(), 10);
        // A key naming an entry that is gone is caught.
        t.by_key.lock().insert((st.st_dev, u64::MAX - 1), ids[0]);
        assert!(t.check().unwrap_err().contains("gone"));
    }

    /// The periodic check runs by itself in debug builds (the build every
    /// test runs): a broken invariant panics within [`CHECK_EVERY`] forgets.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "inode table invariant broken")]
    fn debug_builds_check_the_invariants_every_few_forgets() {
        let t = InodeTable::new(0, 64);
        t.by_key.lock().insert((0, 7), 7);
        for _ in 0..CHECK_EVERY {
            // Forgetting an unknown node changes nothing but counts.
            t.forget(u64::MAX, 1);
        }
    }

    #[test]
    fn the_directory_fd_cache_stays_bounded_and_keeps_what_is_used() {
        let c = DirFds::new(SHARDS * 2);
        // Two per shard: node ids 0..16 and 16..32 fill every shard.
        for id in 0..(SHARDS as u64 * 2) {
            c.put(id, fd());
        }
        assert_eq!(c.len(), SHARDS * 2);
        // Node 0 used again, then a third id in its shard: the least
        // recently used of that shard (16) goes, 0 stays.
        assert!(c.get(0).is_some());
        let third = SHARDS as u64 * 2;
        c.put(third, fd());
        assert_eq!(c.len(), SHARDS * 2);
        assert!(c.get(0).is_some() && c.get(third).is_some());
        assert!(c.get(SHARDS as u64).is_none());
        // An fd still in use outlives its eviction.
        let held = c.get(third).unwrap();
        c.remove(third);
        assert!(c.get(third).is_none());
        assert!(sys::fstat(held.as_fd()).is_ok());
        // Many more puts never grow it past its bound.
        for id in 100..10_000 {
            c.put(id, fd());
        }
        assert!(c.len() <= SHARDS * 2);
    }
}
