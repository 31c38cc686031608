//! The inode table: every backing inode the kernel knows, keyed by node id
//! and by (device, inode), released when the kernel forgets it. Directories
//! hold an `O_PATH` fd (they are the anchors of every `*at` call); other
//! inodes hold a kernel file handle and are reopened by it when needed, so a
//! walk over millions of files costs no open file per file.
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

use super::vfolders::{ROOT_INO, TRASH_INO, VfState};
use crate::backing::sys::{self, FileHandle};

/// How an inode is reached.
enum Anchor {
    /// An `O_PATH | O_NOFOLLOW` fd (directories, and where handles fail).
    Fd(OwnedFd),
    /// A file handle, reopened against an fd of its mount.
    Handle(FileHandle, Arc<OwnedFd>),
}

/// An fd on an inode for the length of one operation.
pub enum InodeFd<'a> {
    /// The inode's own fd.
    Held(BorrowedFd<'a>),
    /// Reopened from its handle; closed when dropped.
    Opened(OwnedFd),
}

impl InodeFd<'_> {
    /// The fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InodeFd::Held(b) => *b,
            InodeFd::Opened(o) => o.as_fd(),
        }
    }
}

/// One backing inode.
pub struct Inode {
    /// Node id (and `st_ino`).
    pub nodeid: u64,
    anchor: Anchor,
    /// (st_dev, st_ino) of the backing inode.
    pub key: (u64, u64),
    /// `S_IFMT` bits of the backing inode.
    pub fmt: u32,
    /// The vfolder it belongs to.
    pub vf: Arc<VfState>,
    /// Whether this is a vfolder's root directory.
    pub is_vf_root: bool,
    nlookup: AtomicU64,
}

impl Inode {
    /// An `O_PATH` fd on the inode (directories: their own; others: reopened
    /// by handle, `ESTALE` once the inode is gone).
    pub fn fd(&self) -> io::Result<InodeFd<'_>> {
        match &self.anchor {
            Anchor::Fd(fd) => Ok(InodeFd::Held(fd.as_fd())),
            Anchor::Handle(h, mount) => {
                sys::open_handle(mount.as_fd(), h, libc::O_PATH | libc::O_NOFOLLOW)
                    .map(InodeFd::Opened)
            }
        }
    }

    /// Whether `fd` (just opened on a name) is this very inode, not a new
    /// one that got a freed inode number: directories are pinned by their fd
    /// so their numbers cannot be reused; for others the handles (which
    /// carry the generation) must agree.
    fn is_same_inode(&self, fd: &OwnedFd) -> bool {
        match &self.anchor {
            Anchor::Fd(_) => true,
            Anchor::Handle(h, _) => sys::handle_of(fd.as_fd()).is_ok_and(|(other, _)| other == *h),
        }
    }

    /// Opens the inode with real access `flags` (never following a symlink,
    /// never creating): straight from its handle, or by reopening its fd.
    pub fn open(&self, flags: i32) -> io::Result<OwnedFd> {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW);
        match &self.anchor {
            Anchor::Fd(fd) => sys::reopen(fd.as_fd(), flags),
            Anchor::Handle(h, mount) => sys::open_handle(mount.as_fd(), h, flags),
        }
    }
}

const HIGH_RANGE: u64 = 1 << 62;
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    by_id: HashMap<u64, Arc<Inode>>,
}

/// The table. Sharded by node id so that parallel requests rarely contend.
pub struct InodeTable {
    shards: Vec<Mutex<Shard>>,
    /// One fd per mount seen, for `open_by_handle_at`.
    mounts: Mutex<HashMap<i32, Arc<OwnedFd>>>,
    /// (dev, ino) → node id; one lock so that lookups of one inode agree.
    by_key: Mutex<HashMap<(u64, u64), u64>>,
    next_high: AtomicU64,
    main_dev: u64,
}

impl InodeTable {
    /// An empty table; `main_dev` is the data directory's device, whose
    /// inode numbers are used as node ids.
    pub fn new(main_dev: u64) -> InodeTable {
        InodeTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            mounts: Mutex::new(HashMap::new()),
            by_key: Mutex::new(HashMap::new()),
            next_high: AtomicU64::new(HIGH_RANGE),
            main_dev,
        }
    }

    fn shard(&self, nodeid: u64) -> &Mutex<Shard> {
        &self.shards[(nodeid as usize) % SHARDS]
    }

    /// The inode with this node id.
    pub fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        self.shard(nodeid).lock().by_id.get(&nodeid).cloned()
    }

    /// Counts one kernel lookup of the backing inode `fd`/`st` found in
    /// directory `parent` (None: a vfolder's root), adding it to the table
    /// if new (the fd is dropped when the inode is known already).
    pub fn insert_lookup(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        vf: &Arc<VfState>,
        parent: Option<BorrowedFd<'_>>,
    ) -> Arc<Inode> {
        let is_vf_root = parent.is_none();
        let key = (st.st_dev, st.st_ino);
        let mut keys = self.by_key.lock();
        if let Some(&nid) = keys.get(&key)
            && let Some(ino) = self.get(nid)
        {
            if ino.is_same_inode(&fd) {
                ino.nlookup.fetch_add(1, Ordering::AcqRel);
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
        let anchor = self.anchor(fd, st, parent);
        let ino = Arc::new(Inode {
            nodeid,
            anchor,
            key,
            fmt: st.st_mode & libc::S_IFMT,
            vf: vf.clone(),
            is_vf_root,
            nlookup: AtomicU64::new(1),
        });
        if is_vf_root {
            vf.root_nodeid.store(nodeid, Ordering::Release);
        }
        self.shard(nodeid).lock().by_id.insert(nodeid, ino.clone());
        keys.insert(key, nodeid);
        ino
    }

    /// Keeps a directory's fd; trades any other inode's fd for its handle
    /// when its mount has (or its parent directory gives) an fd to reopen by.
    fn anchor(&self, fd: OwnedFd, st: &libc::stat, parent: Option<BorrowedFd<'_>>) -> Anchor {
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Anchor::Fd(fd);
        }
        let Ok((h, mount_id)) = sys::handle_of(fd.as_fd()) else {
            // No handles on this filesystem: keep the fd.
            return Anchor::Fd(fd);
        };
        let mut mounts = self.mounts.lock();
        if let Some(m) = mounts.get(&mount_id) {
            return Anchor::Handle(h, m.clone());
        }
        // open_by_handle_at wants a real (not O_PATH) fd on the same mount:
        // the parent directory, reopened, if it is on this mount.
        let Some(p) = parent else {
            return Anchor::Fd(fd);
        };
        match (
            sys::handle_of(p),
            sys::reopen(p, libc::O_RDONLY | libc::O_DIRECTORY),
        ) {
            (Ok((_, pm)), Ok(dirfd)) if pm == mount_id => {
                let m = Arc::new(dirfd);
                mounts.insert(mount_id, m.clone());
                Anchor::Handle(h, m)
            }
            _ => Anchor::Fd(fd),
        }
    }

    /// The kernel dropped `n` lookups of `nodeid`.
    pub fn forget(&self, nodeid: u64, n: u64) {
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
