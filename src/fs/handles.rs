//! Open file and directory handles, and the kernel passthrough backing ids
//! shared by the read-only opens of one inode.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use fuser::BackingId;
use parking_lot::Mutex;

use super::error::{FsError, FsResult};
use super::inodes::{Inode, InodeFd};
use super::vfolders::VfState;

/// An open regular file.
pub struct FileHandle {
    /// The backing file, opened with the caller's access mode; `None` for a
    /// kernel-passthrough read-only open: the kernel holds the file, and the
    /// rare call that still reaches the daemon (fstat, fsync, lseek) reopens
    /// it by inode, so open files cost the daemon no open file each.
    pub fd: Option<OwnedFd>,
    /// The inode, to reopen it by.
    pub inode: Arc<Inode>,
    /// The vfolder it belongs to (checked on every write).
    pub vf: Arc<VfState>,
    /// Keeps the kernel passthrough mapping alive until release.
    pub backing: Option<Arc<BackingId>>,
    /// Node id of the inode, for the I/O-mode bookkeeping at release.
    pub nodeid: u64,
}

/// An open directory.
pub enum DirHandle {
    /// A backing directory, read with `getdents64`.
    Backing {
        /// The directory fd (its offset is the stream position).
        fd: Mutex<OwnedFd>,
        /// The vfolder it belongs to.
        vf: Arc<VfState>,
        /// The vfolder's location epoch of the directory it was opened on.
        epoch: u64,
    },
    /// The root or `.trash`: the names as they were at opendir.
    Virtual(Vec<(String, Arc<VfState>)>),
}

/// Either kind of handle.
pub enum Handle {
    /// A file.
    File(FileHandle),
    /// A directory.
    Dir(DirHandle),
}

impl Handle {
    /// Fails with [`FsError::Moved`] if the handle is on a copy its vfolder
    /// has moved away from (a file through its inode, a directory by the
    /// epoch it was opened under).
    #[inline]
    pub fn check_current(&self) -> FsResult<()> {
        match self {
            Handle::File(f) => f.inode.check_current(),
            Handle::Dir(DirHandle::Backing { vf, epoch, .. }) if *epoch < vf.epoch() => {
                Err(FsError::Moved)
            }
            Handle::Dir(_) => Ok(()),
        }
    }
}

impl FileHandle {
    /// An fd for I/O: the handle's own, or the inode reopened read-only.
    pub fn fd(&self) -> std::io::Result<InodeFd<'_>> {
        match &self.fd {
            Some(fd) => Ok(InodeFd::Held(fd.as_fd())),
            None => self.inode.reopen_granted().map(InodeFd::Opened),
        }
    }
}

const SHARDS: usize = 16;
/// How many 1 ms waits a writer gets for releases still in flight.
const RELEASE_GRACE_STEPS: usize = 100;

/// The handle table, sharded by handle number.
///
/// LOCK ORDER: every lock here is a leaf, taken alone and never while
/// another lock of this table (or of the [`super::inodes::InodeTable`]) is
/// held:
///
/// - a shard (`shards[fh % SHARDS]`): GUARDS handle number → handle; at
///   most one at a time, held only for the map operation (a handle is used
///   through its `Arc` after the lock is let go);
/// - `io`: GUARDS each inode's I/O mode ([`InodeIo`]); held across the whole
///   decision of [`HandleTable::open_mode`] (including making the kernel
///   backing id, so two opens of one inode cannot both make one) and across
///   [`HandleTable::release_mode`]; never while a shard is held.
///
/// `next` and `no_passthrough` are atomics outside any lock; a vfolder's
/// open-file count (`VfState::handles`) is changed by `insert` and `remove`
/// beside the shard lock, not under it.
///
/// Invariants, when no open or release is in flight (between a `remove` and
/// its `release_mode` a handle is out of the shards but still counted):
/// - with kernel passthrough off, `io` stays empty; on, an `io` entry's
///   `served` is the number of regular-file handles of that node id in the
///   shards without a backing id (daemon-served opens);
/// - an inode has daemon-served opens or a live backing id, never both (the
///   kernel forbids mixing); an entry with neither is removed;
/// - every file handle in the shards is counted once in its vfolder's
///   `handles`.
pub struct HandleTable {
    /// Handle number → handle. GUARDED_BY each shard's mutex (a leaf).
    shards: Vec<Mutex<HashMap<u64, Arc<Handle>>>>,
    /// The next handle number (never reused while the daemon runs).
    next: AtomicU64,
    /// Node id → how its open handles do their I/O. GUARDED_BY its mutex
    /// (a leaf, never taken with a shard).
    io: Mutex<HashMap<u64, InodeIo>>,
    /// Set once the kernel refused passthrough: every later open is served.
    no_passthrough: std::sync::atomic::AtomicBool,
}

/// How the open handles of one inode do their I/O. The kernel requires all
/// opens of an inode to be passthrough while one is (sharing one backing
/// file), and none to be while a daemon-served open exists.
#[derive(Default)]
struct InodeIo {
    backing: Weak<BackingId>,
    served: usize,
}

/// The I/O mode granted to a new open.
pub enum IoMode {
    /// Kernel passthrough to the shared backing file.
    Passthrough(Arc<BackingId>),
    /// Served by the daemon (every write checked).
    Served,
}

/// A writer cannot open an inode that readers hold in passthrough mode.
#[derive(Debug)]
pub struct PassthroughBusy;

impl Default for HandleTable {
    fn default() -> Self {
        Self::new()
    }
}

impl HandleTable {
    /// An empty table.
    pub fn new() -> HandleTable {
        HandleTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next: AtomicU64::new(1),
            io: Mutex::new(HashMap::new()),
            no_passthrough: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn shard(&self, fh: u64) -> &Mutex<HashMap<u64, Arc<Handle>>> {
        &self.shards[(fh as usize) % SHARDS]
    }

    /// Stores a handle; returns its number.
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        if let Handle::File(f) = &h {
            f.vf.handles.fetch_add(1, Ordering::Relaxed);
        }
        self.shard(fh).lock().insert(fh, Arc::new(h));
        fh
    }

    /// The handle with this number.
    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh).lock().get(&fh).cloned()
    }

    /// Removes a handle.
    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        let h = self.shard(fh).lock().remove(&fh);
        if let Some(Handle::File(f)) = h.as_deref() {
            f.vf.handles.fetch_sub(1, Ordering::Relaxed);
        }
        h
    }

    /// Decides the I/O mode of a new open of `nodeid`: passthrough for a
    /// read-only open when no daemon-served open exists (sharing the inode's
    /// backing id, made by `make` if none), daemon-served otherwise. A
    /// daemon-served open is refused while passthrough opens exist.
    pub fn open_mode(
        &self,
        nodeid: u64,
        read_only: bool,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Result<IoMode, PassthroughBusy> {
        let mut make = Some(make);
        // The kernel sends RELEASE after a file is closed, so a reader that
        // just closed may still be counted here: give in-flight releases a
        // moment before refusing a writer.
        for _ in 0..RELEASE_GRACE_STEPS {
            match self.try_open_mode(nodeid, read_only, &mut make) {
                Err(PassthroughBusy) => std::thread::sleep(std::time::Duration::from_millis(1)),
                done => return done,
            }
        }
        self.try_open_mode(nodeid, read_only, &mut make)
    }

    fn try_open_mode(
        &self,
        nodeid: u64,
        read_only: bool,
        make: &mut Option<impl FnOnce() -> std::io::Result<BackingId>>,
    ) -> Result<IoMode, PassthroughBusy> {
        let mut map = self.io.lock();
        let e = map.entry(nodeid).or_default();
        let live = e.backing.upgrade();
        if read_only
            && e.served == 0
            && (live.is_some() || !self.no_passthrough.load(Ordering::Relaxed))
        {
            if let Some(b) = live {
                return Ok(IoMode::Passthrough(b));
            }
            match make.take().map(|f| f()) {
                Some(Ok(b)) => {
                    let b = Arc::new(b);
                    e.backing = Arc::downgrade(&b);
                    return Ok(IoMode::Passthrough(b));
                }
                // Refused once (no CAP_SYS_ADMIN, too deep a stack): every
                // later open is served by the daemon.
                Some(Err(err)) if !self.no_passthrough.swap(true, Ordering::Relaxed) => {
                    log::warn!("kernel passthrough refused ({err}); serving reads instead");
                }
                Some(Err(_)) | None => {}
            }
        } else if live.is_some() {
            return Err(PassthroughBusy);
        }
        e.served += 1;
        Ok(IoMode::Served)
    }

    /// Forgets the I/O mode bookkeeping of a released handle.
    pub fn release_mode(&self, h: &FileHandle) {
        let mut map = self.io.lock();
        if let Some(e) = map.get_mut(&h.nodeid) {
            if h.backing.is_none() {
                e.served = e.served.saturating_sub(1);
            }
            if e.served == 0 && e.backing.strong_count() <= usize::from(h.backing.is_some()) {
                map.remove(&h.nodeid);
            }
        }
    }
}
