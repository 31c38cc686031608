//! The FUSE layer: maps kernel requests to backing operations and asks the
//! status model whether they are allowed. The root and `.trash` are virtual
//! (see [`root`]); inside a vfolder everything passes through to its backing
//! directory by file descriptor.

pub mod attr;
pub mod caching;
mod dispatch;
pub mod error;
pub mod handles;
pub mod inodes;
mod names;
pub mod offload;
mod readdir;
pub mod root;
pub mod vfolders;
mod xattr;

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, FileAttr, FileHandle as Fh, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyDirectoryPlus, Request, TimeOrNow,
};

use crate::backing::creds;
use crate::backing::sys;
use crate::catalog::Catalog;
use crate::workers::pool::JobPool;
use error::{FsError, FsResult};
use handles::{DirHandle, FileHandle, Handle, HandleTable, IoMode};
use inodes::{Inode, InodeTable};
use vfolders::{ROOT_INO, Registry, TRASH_INO, VfState};

/// The SELinux label attribute, answered "not supported" on hosts without
/// SELinux, so that `ls -l` stops asking for every file.
const SELINUX_XATTR: &str = "security.selinux";

/// Tunables of a mount.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache names and attributes.
    pub cache: caching::CacheConfig,
    /// Use kernel passthrough for read-only opens when the kernel offers it.
    pub passthrough: bool,
    /// How many directory fds may stay open (None: a quarter of the
    /// open-file limit when the filesystem is made).
    pub dir_fds: Option<usize>,
    /// Ask for FUSE over io_uring at INIT (`-o io_uring`); what INIT
    /// granted is recorded here for the daemon.
    pub io_uring: Option<std::sync::Arc<crate::transport::uring::Negotiation>>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache: caching::CacheConfig::default(),
            passthrough: true,
            dir_fds: None,
            io_uring: None,
        }
    }
}

/// Threads for calls that may block for long (`fsync`, `fallocate`,
/// `copy_file_range`); beyond them such calls run in their request loop.
const BLOCKING_THREADS: usize = 8;

/// The filesystem served by a mount.
pub struct VfolderFs {
    cat: Arc<Catalog>,
    /// The data directory, for statfs at the virtual top.
    data: std::os::fd::OwnedFd,
    reg: Arc<Registry>,
    inodes: Arc<InodeTable>,
    handles: HandleTable,
    cfg: FsConfig,
    passthrough: bool,
    direct_writes: bool,
    no_selinux: bool,
    started: SystemTime,
    purge: Option<Arc<JobPool>>,
    /// Where calls that may block for long run.
    blocking: offload::Offload,
    /// The store's change token when the registry was last brought up to date here.
    seen_token: std::sync::atomic::AtomicU64,
}

impl VfolderFs {
    /// How long the kernel may cache a name in directory `parent` (and the
    /// attributes that come with it: fuser has one timeout per entry
    /// reply). Names at the top and in `.trash` follow status changes,
    /// whose invalidations can cross a lookup in flight: short there.
    fn ttl_entry(&self, parent: u64) -> Duration {
        let s = self.reg.sharing();
        let t = self.cfg.cache.entry(s).min(self.cfg.cache.attr(s));
        if parent == ROOT_INO || parent == TRASH_INO {
            t.min(caching::SHARED_TTL)
        } else {
            t
        }
    }

    /// How long the kernel may cache that `parent` has no such name.
    fn ttl_negative(&self, parent: u64) -> Duration {
        let t = self.cfg.cache.negative(self.reg.sharing());
        if parent == ROOT_INO || parent == TRASH_INO {
            t.min(caching::SHARED_TTL)
        } else {
            t
        }
    }

    /// How long the kernel may cache the attributes of `ino`.
    fn ttl_attr(&self, ino: u64) -> Duration {
        let t = self.cfg.cache.attr(self.reg.sharing());
        if ino == ROOT_INO || ino == TRASH_INO {
            t.min(caching::SHARED_TTL)
        } else {
            t
        }
    }
}

fn cname(name: &OsStr) -> FsResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| FsError::Invalid)
}

/// A name's entry for the kernel: its attributes and how long it may cache
/// them.
pub(crate) struct Entry {
    /// How long the kernel may cache the name and attributes.
    pub ttl: Duration,
    /// The attributes (node id 0: a cached negative entry).
    pub attr: FileAttr,
}

/// A file opened for the kernel.
pub(crate) struct Opened {
    /// The handle number.
    pub fh: u64,
    /// How the kernel treats the open.
    pub flags: FopenFlags,
    /// The inode's kernel-passthrough backing id, for a passthrough open.
    pub backing: Option<Arc<BackingId>>,
}

/// A file created and opened for the kernel.
pub(crate) struct Created {
    /// The new name's entry.
    pub entry: Entry,
    /// The open handle.
    pub opened: Opened,
}

/// A call that may block for long, made ready on the request thread (its
/// handle resolved) and run on the blocking pool as the caller.
pub(crate) type Job<T> = Box<dyn FnOnce() -> FsResult<T> + Send + 'static>;

/// Where a node id lives.
enum Node {
    Root,
    Trash,
    Backing(Arc<Inode>),
}

impl VfolderFs {
    /// A filesystem over `cat`, whose vfolder states `reg` holds (refreshed
    /// by the daemon's watcher).
    pub fn new(cat: Arc<Catalog>, reg: Arc<Registry>, cfg: FsConfig) -> std::io::Result<Self> {
        let data = sys::open_dir_path(&cat.layout().data_dir())?;
        let st = sys::fstat(data.as_fd())?;
        // A move keeps the copy (and so inodes and handles stay valid) when
        // it was one rename: both volumes on one filesystem, the test the
        // relocation itself makes. Unknown: a new copy (fail safe, ESTALE).
        let weak = Arc::downgrade(&cat);
        reg.set_keeps_copy(Box::new(move |from, to| {
            weak.upgrade()
                .is_some_and(|c| c.same_filesystem(from, to).unwrap_or(false))
        }));
        let inodes = Arc::new(InodeTable::new(
            st.st_dev,
            cfg.dir_fds.unwrap_or_else(inodes::DirFds::default_capacity),
        ));
        let weak = Arc::downgrade(&inodes);
        reg.set_known_nodes(Box::new(move || {
            weak.upgrade().map(|t| t.node_ids()).unwrap_or_default()
        }));
        Ok(VfolderFs {
            data,
            cat,
            reg,
            inodes,
            handles: HandleTable::new(),
            passthrough: false,
            direct_writes: false,
            no_selinux: !std::path::Path::new("/sys/fs/selinux/enforce").exists(),
            cfg,
            started: SystemTime::now(),
            purge: None,
            blocking: offload::Offload::new(BLOCKING_THREADS),
            seen_token: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Hands purges requested through the mount to `pool`.
    pub fn with_purge_pool(mut self, pool: Arc<JobPool>) -> Self {
        self.purge = Some(pool);
        self
    }

    fn node(&self, ino: INodeNo) -> FsResult<Node> {
        match ino.0 {
            ROOT_INO => Ok(Node::Root),
            TRASH_INO => Ok(Node::Trash),
            n => {
                let i = self.inodes.get(n).ok_or(FsError::Stale)?;
                i.check_current()?;
                Ok(Node::Backing(i))
            }
        }
    }

    fn inode(&self, ino: INodeNo) -> FsResult<Arc<Inode>> {
        match self.node(ino)? {
            Node::Backing(i) => Ok(i),
            Node::Root | Node::Trash => Err(FsError::NotPermitted),
        }
    }

    fn file(&self, fh: Fh) -> FsResult<Arc<Handle>> {
        let h = self.handles.get(fh.0).ok_or(FsError::Stale)?;
        h.check_current()?;
        Ok(h)
    }

    /// Looks `name` up in a backing directory and counts the kernel's lookup.
    fn lookup_in(&self, parent: &Inode, name: &CString) -> FsResult<FileAttr> {
        self.lookup_node(parent, name).map(|(_, a)| a)
    }

    /// [`Self::lookup_in`], with the inode.
    fn lookup_node(&self, parent: &Inode, name: &CString) -> FsResult<(Arc<Inode>, FileAttr)> {
        // Read before the name is: an invalidation crossing this lookup
        // leaves the entry counted as older than it.
        let cache_gen = self.reg.cache_gen();
        let pfd = parent.fd()?;
        let fd = sys::openat(pfd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (st, mount_root) = sys::statx_fd(fd.as_fd())?;
        if mount_root {
            // Something is mounted over this name inside the backing
            // directory: the mount never crosses into it.
            return Err(FsError::MountInside);
        }
        let ino = self.inodes.insert_lookup(
            fd,
            &st,
            &parent.vf,
            Some(pfd.as_fd()),
            parent.epoch(),
            cache_gen,
        );
        let a = attr::from_stat(ino.nodeid, &st);
        Ok((ino, a))
    }

    /// Looks up a vfolder's root directory and counts the kernel's lookup.
    fn lookup_vf_root(&self, vf: &Arc<VfState>) -> FsResult<FileAttr> {
        vf.check_readable()?;
        // The epoch before the volume: the registry stores them the other
        // way round, so the copy opened is at least as new as the epoch.
        let epoch = vf.epoch();
        let fd = self
            .cat
            .open_backing(&vf.id, &vf.volume(), libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = sys::fstat(fd.as_fd())?;
        let ino = self
            .inodes
            .insert_lookup(fd, &st, vf, None, epoch, self.reg.cache_gen());
        Ok(attr::from_stat(ino.nodeid, &st))
    }

    fn stat_attr(&self, ino: &Inode) -> FsResult<FileAttr> {
        let st = sys::fstat(ino.fd()?.as_fd())?;
        Ok(attr::from_stat(ino.nodeid, &st))
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> FsResult<FileAttr> {
        match self.node(parent)? {
            Node::Root => self.root_lookup(name),
            Node::Trash => self.trash_lookup(name),
            Node::Backing(p) => {
                p.vf.check_readable()?;
                match self.lookup_in(&p, &cname(name)?) {
                    // Inside a writable vfolder names appear only through this
                    // mount, which replaces a cached miss itself; elsewhere (a
                    // clone target filling up) misses are answered afresh.
                    Err(FsError::Io(e))
                        if e.raw_os_error() == Some(libc::ENOENT) && p.vf.is_writable() =>
                    {
                        Err(FsError::CacheableMiss)
                    }
                    r => r,
                }
            }
        }
    }

    /// A lookup's answer: the entry, or a cached negative entry for a name
    /// known to be missing.
    fn do_lookup_entry(&self, parent: INodeNo, name: &OsStr) -> FsResult<Entry> {
        match self.do_lookup(parent, name) {
            // Node id 0 is a negative entry, cached for the entry TTL.
            Err(FsError::CacheableMiss) => Ok(Entry {
                ttl: self.ttl_negative(parent.0),
                attr: attr::virtual_dir(0, 1, self.started),
            }),
            r => r.map(|attr| self.entry(parent, attr)),
        }
    }

    /// The entry of a name in `parent` with these attributes.
    fn entry(&self, parent: INodeNo, attr: FileAttr) -> Entry {
        Entry {
            ttl: self.ttl_entry(parent.0),
            attr,
        }
    }

    /// Attributes for the kernel: an open file answers for itself (it may be
    /// unlinked already), anything else through its inode.
    fn do_getattr_fh(&self, ino: INodeNo, fh: Option<Fh>) -> FsResult<(Duration, FileAttr)> {
        let ttl = self.ttl_attr(ino.0);
        if let Some(h) = fh.and_then(|f| self.file(f).ok())
            && let Handle::File(f) = &*h
            && let Ok(st) = f.fd().and_then(|fd| sys::fstat(fd.as_fd()))
        {
            return Ok((ttl, attr::from_stat(ino.0, &st)));
        }
        Ok((ttl, self.do_getattr(ino)?))
    }

    fn do_readlink(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let i = self.inode(ino)?;
        Ok(sys::readlinkat(i.fd()?.as_fd(), sys::EMPTY)?)
    }

    fn do_getattr(&self, ino: INodeNo) -> FsResult<FileAttr> {
        match self.node(ino)? {
            Node::Root => Ok(self.root_attr()),
            Node::Trash => Ok(self.trash_attr()),
            Node::Backing(i) => self.stat_attr(&i),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<Fh>,
    ) -> FsResult<FileAttr> {
        let i = self.inode(ino)?;
        let _w = i.begin_write()?;
        let handle = fh.and_then(|f| self.handles.get(f.0));
        // The handle's own fd where it has one; else the inode (a handle
        // without one is a passthrough reader: reopening it would be a
        // syscall for nothing).
        let hfd = match handle.as_deref() {
            Some(Handle::File(f)) => f.fd.as_ref().map(|fd| fd.as_fd()),
            _ => None,
        };
        if let Some(m) = mode {
            match hfd {
                Some(fd) => sys::fchmod(fd, m & 0o7777)?,
                None => sys::fchmod_path_fd(i.fd()?.as_fd(), m & 0o7777)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            sys::fchown_path_fd(
                i.fd()?.as_fd(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(sz) = size {
            match hfd {
                Some(fd) => sys::ftruncate(fd, sz)?,
                None => {
                    let fd = i.open(libc::O_WRONLY | libc::O_NONBLOCK)?;
                    sys::ftruncate(fd.as_fd(), sz)?;
                }
            }
        }
        if atime.is_some() || mtime.is_some() {
            let times = [attr::timespec(atime), attr::timespec(mtime)];
            match hfd {
                Some(fd) => sys::futimens(fd, &times)?,
                None => sys::utimensat(
                    i.fd()?.as_fd(),
                    sys::EMPTY,
                    &times,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )?,
            }
        }
        self.stat_attr(&i)
    }

    fn open_flags(flags: i32) -> i32 {
        // The daemon opens by inode; creation flags were handled by create().
        flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT)
    }

    /// Opens a file for the kernel. A read-only open of a regular file
    /// shares the inode's kernel-passthrough backing id, which `backing`
    /// registers from an fd when the inode has none yet.
    fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        backing: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> FsResult<Opened> {
        let i = self.inode(ino)?;
        i.vf.check_readable()?;
        let wants_write =
            (flags.0 & libc::O_ACCMODE) != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let _w = if wants_write {
            Some(i.begin_write()?)
        } else {
            None
        };
        let oflags = Self::open_flags(flags.0);
        let read_only = !wants_write || i.fmt != libc::S_IFREG;
        // Opened as the caller on every open, also when the inode's
        // backing id already exists: the backing filesystem checks the
        // caller's rights, not the kernel's possibly stale cached mode.
        let fd = i.open(oflags)?;
        let mode = if self.passthrough && i.fmt == libc::S_IFREG {
            // For a passthrough reader the fd only makes the inode's
            // backing id; the kernel keeps it, the daemon does not.
            self.handles
                .open_mode(i.nodeid, read_only, || {
                    // Privileged step: FUSE_DEV_IOC_BACKING_OPEN demands
                    // CAP_SYS_ADMIN; the file was opened as the caller.
                    creds::with_caps(creds::cap::bit(creds::cap::SYS_ADMIN), || {
                        backing(fd.as_fd())
                    })?
                })
                .map_err(|_| FsError::PassthroughBusy)?
        } else {
            IoMode::Served
        };
        let (fd, backing, flags) = match mode {
            IoMode::Passthrough(b) => (None, Some(b), FopenFlags::empty()),
            IoMode::Served => (Some(fd), None, self.served_open_flags(flags.0)),
        };
        i.vf.opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fh = self.handles.insert(Handle::File(FileHandle {
            fd,
            inode: i.clone(),
            vf: i.vf.clone(),
            backing: backing.clone(),
            nodeid: i.nodeid,
        }));
        Ok(Opened { fh, flags, backing })
    }

    /// Forgets a released file handle (and, with the last opener of an
    /// inode, its passthrough backing id) or directory handle.
    fn do_release(&self, fh: Fh) {
        if let Some(h) = self.handles.remove(fh.0)
            && let Handle::File(f) = &*h
            && self.passthrough
        {
            self.handles.release_mode(f);
        }
    }

    /// How the kernel treats a daemon-served open: writers bypass the page
    /// cache (one request per write, no second copy; mmap still works through
    /// FUSE_DIRECT_IO_ALLOW_MMAP), readers keep it.
    fn served_open_flags(&self, flags: i32) -> FopenFlags {
        if self.direct_writes && (flags & libc::O_ACCMODE) != libc::O_RDONLY {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        }
    }

    fn do_create(&self, parent: INodeNo, name: &OsStr, mode: u32, flags: i32) -> FsResult<Created> {
        let p = self.writable_parent(parent)?;
        let n = cname(name)?;
        let _w = p.begin_write()?;
        // As the caller: if the name exists after all (the kernel's negative
        // entry was stale), this is an ordinary open with the caller's rights.
        let fd = sys::openat(
            p.fd()?.as_fd(),
            &n,
            (flags | libc::O_CREAT | libc::O_NOFOLLOW) & !(libc::O_NOCTTY | libc::O_DIRECT),
            mode,
        )?;
        let (inode, attr) = self.lookup_node(&p, &n)?;
        if self.passthrough
            && self
                .handles
                .open_mode(attr.ino.0, false, || Err(std::io::Error::other("unused")))
                .is_err()
        {
            self.inodes.forget(attr.ino.0, 1);
            return Err(FsError::PassthroughBusy);
        }
        p.vf.opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fh = self.handles.insert(Handle::File(FileHandle {
            fd: Some(fd),
            inode,
            vf: p.vf.clone(),
            backing: None,
            nodeid: attr.ino.0,
        }));
        Ok(Created {
            entry: self.entry(parent, attr),
            opened: Opened {
                fh,
                flags: self.served_open_flags(flags),
                backing: None,
            },
        })
    }

    /// Reads from a daemon-served handle into `buf`; returns how many bytes
    /// it read (fewer than asked only at the end of the file).
    fn do_read(&self, fh: Fh, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        self.with_file(fh, |f| {
            let fd = f.fd()?;
            let mut done = 0;
            while done < buf.len() {
                let n = sys::pread(fd.as_fd(), &mut buf[done..], offset + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            f.vf.bytes_read
                .fetch_add(done as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(done)
        })
    }

    fn do_write(&self, fh: Fh, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.with_file(fh, |f| {
            let _w = f.inode.begin_write()?;
            let fd = f.fd()?;
            let mut done = 0;
            while done < data.len() {
                let n = sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            f.vf.bytes_written
                .fetch_add(done as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(done as u32)
        })
    }

    fn with_file<T>(&self, fh: Fh, f: impl FnOnce(&FileHandle) -> FsResult<T>) -> FsResult<T> {
        let h = self.file(fh)?;
        match &*h {
            Handle::File(file) => f(file),
            Handle::Dir(_) => Err(FsError::Invalid),
        }
    }

    /// [`Self::with_file`] for a call that may block for long: resolves the
    /// handle here and returns the call to run on the blocking pool.
    fn file_job<T: 'static>(
        &self,
        fh: Fh,
        f: impl FnOnce(&FileHandle) -> FsResult<T> + Send + 'static,
    ) -> FsResult<Job<T>> {
        let h = self.file(fh)?;
        Ok(Box::new(move || match &*h {
            Handle::File(file) => f(file),
            Handle::Dir(_) => Err(FsError::Invalid),
        }))
    }

    fn do_fsync(&self, fh: Fh, datasync: bool) -> FsResult<Job<()>> {
        self.file_job(fh, move |f| Ok(sys::fsync(f.fd()?.as_fd(), datasync)?))
    }

    fn do_fallocate(&self, fh: Fh, offset: u64, length: u64, mode: i32) -> FsResult<Job<()>> {
        self.file_job(fh, move |f| {
            let _w = f.inode.begin_write()?;
            Ok(sys::fallocate(f.fd()?.as_fd(), mode, offset, length)?)
        })
    }

    fn do_lseek(&self, fh: Fh, offset: i64, whence: i32) -> FsResult<i64> {
        self.with_file(fh, |f| Ok(sys::lseek(f.fd()?.as_fd(), offset, whence)?))
    }

    /// Copies between two open files inside the backing filesystem (the
    /// target's vfolder must be writable while it runs).
    #[allow(clippy::too_many_arguments)]
    fn do_copy_file_range(
        &self,
        fh_in: Fh,
        offset_in: u64,
        fh_out: Fh,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> FsResult<Job<u32>> {
        let (hin, hout) = (self.file(fh_in)?, self.file(fh_out)?);
        Ok(Box::new(move || {
            let (Handle::File(fin), Handle::File(fout)) = (&*hin, &*hout) else {
                return Err(FsError::Invalid);
            };
            let _w = fout.inode.begin_write()?;
            let n = sys::copy_file_range(
                fin.fd()?.as_fd(),
                offset_in,
                fout.fd()?.as_fd(),
                offset_out,
                len,
                flags,
            )?;
            Ok(n as u32)
        }))
    }

    fn do_fsyncdir(&self, fh: Fh, datasync: bool) -> FsResult<Job<()>> {
        let h = self.file(fh)?;
        Ok(Box::new(move || match &*h {
            Handle::Dir(DirHandle::Backing { fd, .. }) => {
                Ok(sys::fsync(fd.lock().as_fd(), datasync)?)
            }
            _ => Ok(()),
        }))
    }

    /// The filesystem statistics of a vfolder's volume, or of the data
    /// directory at the virtual top.
    fn do_statfs(&self, ino: INodeNo) -> FsResult<libc::statvfs> {
        Ok(match self.node(ino) {
            Ok(Node::Backing(i)) => i.fd().and_then(|fd| sys::fstatvfs(fd.as_fd()))?,
            _ => sys::fstatvfs(self.data.as_fd())?,
        })
    }

    /// `access(2)`: the kernel checked the mode bits (`default_permissions`);
    /// a check for writing also asks whether the vfolder may be changed.
    fn do_access(&self, ino: INodeNo, mask: AccessFlags) -> FsResult<()> {
        match self.node(ino)? {
            Node::Backing(i) if mask.contains(AccessFlags::W_OK) => i.begin_write().map(drop),
            _ => Ok(()),
        }
    }

    /// Wraps a job for the blocking pool so that it runs with this request
    /// thread's identity (the caller's), wherever it runs.
    fn as_current(job: impl FnOnce() + Send + 'static) -> impl FnOnce() + Send + 'static {
        let id = creds::current();
        move || match creds::enter(&id) {
            Ok(()) => job(),
            Err(e) => log::error!("cannot act as uid {}: {e}; call dropped", id.uid),
        }
    }

    /// Makes this request thread act for `req`: as the daemon where any of
    /// `inos` is the virtual root or `.trash` (lifecycle gestures with rules
    /// of their own, which touch the store), as the caller everywhere else.
    fn act(&self, req: &Request, inos: &[u64]) -> FsResult<()> {
        let r = if inos.iter().any(|&i| i == ROOT_INO || i == TRASH_INO) {
            creds::enter_daemon()
        } else {
            creds::enter_caller(req.uid(), req.gid(), req.pid())
        };
        r.map_err(FsError::from)
    }

    /// Opens a directory. Listings of a writable vfolder change only through
    /// this mount, which tells the kernel; it also revalidates them by the
    /// directory's mtime: they are cached. Others (being cloned into, moved)
    /// are read fresh every time.
    fn do_opendir(&self, req: &Request, ino: INodeNo) -> FsResult<Opened> {
        let h = match self.node(ino)? {
            Node::Root => {
                self.catch_up();
                DirHandle::Virtual(self.reg.names(false))
            }
            Node::Trash => {
                self.catch_up();
                DirHandle::Virtual(self.reg.names(true))
            }
            Node::Backing(i) if i.is_vf_root && self.is_trash_rm(&i, req) => {
                // `rm -r .trash/NAME`: one purge request, and nothing to descend into.
                self.purge_trashed(&i.vf, &format!("mount rm -r (pid {})", req.pid()))?;
                DirHandle::Virtual(Vec::new())
            }
            Node::Backing(i) => {
                i.vf.check_readable()?;
                let fd = i.open(libc::O_RDONLY | libc::O_DIRECTORY)?;
                DirHandle::Backing {
                    fd: parking_lot::Mutex::new(fd),
                    vf: i.vf.clone(),
                    epoch: i.epoch(),
                }
            }
        };
        let flags = match &h {
            DirHandle::Backing { vf, .. } if vf.is_writable() => {
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
            }
            _ => FopenFlags::empty(),
        };
        Ok(Opened {
            fh: self.handles.insert(Handle::Dir(h)),
            flags,
            backing: None,
        })
    }
}

/// The extended attribute by which a vfolder's root directory on the mount
/// says which vfolder it is (its id). Answered by the daemon, never read
/// from the backing directory; `trusted.*`, so the kernel lets only
/// privileged callers (the session attach) ask. Inode numbers cannot tell
/// it: those of volumes on other filesystems are the mount's own.
pub const VFOLDER_ID_XATTR: &str = "trusted.vfolderfs.id";

/// Environment variable naming an entry whose lookup in a readdirplus
/// fails with `EIO`: a testing aid for a listing that fails part way. Read
/// once per process. Not for production.
pub const FAIL_LOOKUP_ENV: &str = "VFOLDERFS_TEST_FAIL_LOOKUP";

fn fail_lookup_for_test(name: &[u8]) -> bool {
    static NAME: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| std::env::var_os(FAIL_LOOKUP_ENV).map(|v| v.as_bytes().to_vec()))
        .as_deref()
        == Some(name)
}
