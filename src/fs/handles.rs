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
pub struct HandleTable {
    shards: Vec<Mutex<HashMap<u64, Arc<Handle>>>>,
    next: AtomicU64,
    io: Mutex<HashMap<u64, InodeIo>>,
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
