//! Copying a vfolder's tree by file descriptor, preserving what `cp -a`
//! preserves: modes, owners, timestamps, symlinks, hard links (as links),
//! FIFOs and device nodes, sparse regions and extended attributes. Data goes
//! by reflink (`FICLONE`) where the filesystem can, else `copy_file_range`
//! over the data segments (`SEEK_DATA`/`SEEK_HOLE`), else read/write. Like
//! `cp -ax`, a mount point inside the tree is copied as an empty directory.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::error::{TreeError, shorten_path};
use super::handle::{InodeRef, MountFd};
use super::sys;

mod file;
use file::{copy_xattrs, set_meta, times_of};

/// Why a copy stopped: the backing layer's one tree error (never
/// [`TreeError::MountPoint`]: a mount point inside is copied as an empty
/// directory).
pub type CopyError = TreeError;

/// What has been copied so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries created (files, directories, links, nodes).
    pub entries: u64,
    /// Bytes of file data copied.
    pub bytes: u64,
}

/// The most one `copy_file_range` call copies: the byte count moves, and a
/// stop is seen, at least this often within one large file.
pub const CHUNK: u64 = 64 << 20;

/// What every copying thread shares.
struct Shared<'a> {
    cancel: &'a AtomicBool,
    pause: Option<Duration>,
    root_dev: u64,
    stop: AtomicBool,
    failed: Mutex<Option<CopyError>>,
    entries: AtomicU64,
    bytes: AtomicU64,
    reflink: AtomicBool,
    /// (dev, ino) of multiply-linked sources → their first copy.
    links: Mutex<HashMap<(u64, u64), LinkState>>,
    links_cv: Condvar,
    /// Directories waiting to be copied, and how many are not finished.
    queue: Mutex<(VecDeque<Arc<DirNode>>, usize)>,
    queue_cv: Condvar,
    /// Fds to reopen the source's and the destination's kernel handles
    /// against (`None`: handles do not work there, fds are kept instead).
    src_mount: Option<Arc<MountFd>>,
    dst_mount: Option<Arc<MountFd>>,
}

enum LinkState {
    /// Another thread is copying the first name.
    Copying,
    /// The first copy, to link further names to.
    Done(InodeRef),
}

/// A directory being copied: held until it and everything below it are
/// copied, then given its source's attributes. Memory per directory not
/// yet finished and no open file (with handles), however deep or wide.
struct DirNode {
    parent: Option<Arc<DirNode>>,
    /// Its name in its parent (empty for the root).
    name: Vec<u8>,
    src: InodeRef,
    dst: InodeRef,
    st: libc::stat,
    /// 1 for its own entries, plus 1 per subdirectory not finished.
    pending: AtomicUsize,
}

impl DirNode {
    /// Its path from the root, for messages (shortened when very deep).
    fn path(&self) -> String {
        let mut parts = Vec::new();
        let mut n = Some(self);
        while let Some(d) = n {
            if !d.name.is_empty() {
                parts.push(String::from_utf8_lossy(&d.name).into_owned());
            }
            n = d.parent.as_deref();
        }
        parts.reverse();
        shorten_path(parts)
    }
}

/// One copying thread's own state.
struct Ctx<'s, 'a> {
    sh: &'s Shared<'a>,
    buf: Vec<u8>,
}

fn at_node(node: &DirNode, err: io::Error) -> CopyError {
    CopyError::Failed {
        path: node.path(),
        err,
    }
}

fn at_name(node: &DirNode, name: &CStr, err: io::Error) -> CopyError {
    let dir = node.path();
    let name = String::from_utf8_lossy(name.to_bytes());
    CopyError::Failed {
        path: if dir == "." {
            name.into_owned()
        } else {
            format!("{dir}/{name}")
        },
        err,
    }
}

impl Ctx<'_, '_> {
    /// Whether the copy is being stopped (cancelled, or failed elsewhere).
    fn stopping(&self) -> bool {
        self.sh.stop.load(Ordering::Acquire) || self.sh.cancel.load(Ordering::Acquire)
    }

    fn tick(&mut self) -> Result<(), CopyError> {
        self.sh.entries.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = self.sh.pause {
            std::thread::sleep(p);
        }
        if self.sh.stop.load(Ordering::Acquire) || self.sh.cancel.load(Ordering::Acquire) {
            return Err(CopyError::Cancelled);
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        node: &Arc<DirNode>,
    ) -> Result<(), CopyError> {
        // The path is only worked out for a message (trees can be deep).
        let at = |e: io::Error| at_name(node, name, e);
        let st = match sys::fstatat(sdir, name, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(at(e)),
        };
        let fmt = st.st_mode & libc::S_IFMT;
        let key = (st.st_dev, st.st_ino);
        if fmt != libc::S_IFDIR && st.st_nlink > 1 && self.link_if_copied(key, ddir, name, node)? {
            return self.tick();
        }
        match fmt {
            libc::S_IFDIR => self.copy_subdir(sdir, ddir, name, node, st).map_err(at)?,
            libc::S_IFREG => self.copy_file(sdir, ddir, name, &st, &at)?,
            libc::S_IFLNK => self.copy_symlink(sdir, ddir, name, &st).map_err(at)?,
            _ => self.copy_node(ddir, name, &st).map_err(at)?,
        }
        self.tick()
    }

    /// Makes subdirectory `name` and queues it to be copied (a mount point:
    /// copied empty, like `cp -ax`).
    fn copy_subdir(
        &self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        node: &Arc<DirNode>,
        st: libc::stat,
    ) -> io::Result<()> {
        sys::mkdirat(ddir, name, 0o700)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let d = sys::openat(ddir, name, flags, 0)?;
        let crosses = st.st_dev != self.sh.root_dev || sys::statx_at(sdir, name, 0)?.1;
        let s = sys::openat(sdir, name, flags, 0)?;
        if crosses {
            copy_xattrs(s.as_fd(), d.as_fd())?;
            return set_meta(d.as_fd(), &st);
        }
        node.pending.fetch_add(1, Ordering::AcqRel);
        self.sh.push(Arc::new(DirNode {
            parent: Some(node.clone()),
            name: name.to_bytes().to_vec(),
            src: InodeRef::of(s, self.sh.src_mount.as_ref()),
            dst: InodeRef::of(d, self.sh.dst_mount.as_ref()),
            st,
            pending: AtomicUsize::new(1),
        }));
        Ok(())
    }

    /// Copies regular file `name`: its data, xattrs and attributes.
    fn copy_file(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        st: &libc::stat,
        at: &dyn Fn(io::Error) -> CopyError,
    ) -> Result<(), CopyError> {
        let s = sys::openat(sdir, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0).map_err(at)?;
        let d = sys::openat(
            ddir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(at)?;
        self.copy_data(s.as_fd(), d.as_fd(), st.st_size as u64)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::Interrupted && self.stopping() {
                    CopyError::Cancelled
                } else {
                    at(e)
                }
            })?;
        copy_xattrs(s.as_fd(), d.as_fd()).map_err(at)?;
        set_meta(d.as_fd(), st).map_err(at)?;
        self.remember_links(ddir, name, st).map_err(at)
    }

    /// Copies symlink `name`: its target, owner and times.
    fn copy_symlink(
        &self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        st: &libc::stat,
    ) -> io::Result<()> {
        let target = sys::readlinkat(sdir, name)?;
        let t = CString::new(target).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        sys::symlinkat(&t, ddir, name)?;
        // SAFETY: valid fd and name.
        let r = unsafe {
            libc::fchownat(
                ddir.as_raw_fd(),
                name.as_ptr(),
                st.st_uid,
                st.st_gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        sys::utimensat(ddir, name, &times_of(st), libc::AT_SYMLINK_NOFOLLOW)?;
        self.remember_links(ddir, name, st)
    }

    /// Recreates a FIFO, socket or device node `name` (never opened).
    fn copy_node(&self, ddir: BorrowedFd<'_>, name: &CStr, st: &libc::stat) -> io::Result<()> {
        sys::mknodat(ddir, name, st.st_mode, st.st_rdev)?;
        let p = sys::openat(ddir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        sys::fchown_path_fd(p.as_fd(), st.st_uid, st.st_gid)?;
        sys::fchmod_path_fd(p.as_fd(), st.st_mode & 0o7777)?;
        sys::utimensat(ddir, name, &times_of(st), libc::AT_SYMLINK_NOFOLLOW)?;
        if st.st_nlink > 1 {
            self.sh.copied(
                (st.st_dev, st.st_ino),
                InodeRef::of(p, self.sh.dst_mount.as_ref()),
            );
        }
        Ok(())
    }

    /// For a multiply-linked source: records the copy `ddir/name` so that
    /// its further names become links to it.
    fn remember_links(&self, ddir: BorrowedFd<'_>, name: &CStr, st: &libc::stat) -> io::Result<()> {
        if st.st_nlink > 1 {
            let p = sys::openat(ddir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            self.sh.copied(
                (st.st_dev, st.st_ino),
                InodeRef::of(p, self.sh.dst_mount.as_ref()),
            );
        }
        Ok(())
    }

    /// For a multiply-linked source: links `name` to its first copy and
    /// returns true, or claims the first copy for this thread (false).
    fn link_if_copied(
        &self,
        key: (u64, u64),
        ddir: BorrowedFd<'_>,
        name: &CStr,
        node: &Arc<DirNode>,
    ) -> Result<bool, CopyError> {
        let mut links = self.sh.links.lock();
        loop {
            match links.get(&key) {
                None => {
                    links.insert(key, LinkState::Copying);
                    return Ok(false);
                }
                Some(LinkState::Done(first)) => {
                    let r = first
                        .open(libc::O_PATH)
                        .and_then(|p| sys::link_fd(p.as_fd(), ddir, name));
                    r.map_err(|e| at_name(node, name, e))?;
                    return Ok(true);
                }
                Some(LinkState::Copying) => {
                    if self.sh.stop.load(Ordering::Acquire) {
                        return Err(CopyError::Cancelled);
                    }
                    self.sh
                        .links_cv
                        .wait_for(&mut links, Duration::from_millis(50));
                }
            }
        }
    }

    /// Copies the entries of `node`'s directory (subdirectories are queued).
    fn copy_dir(&mut self, node: &Arc<DirNode>) -> Result<(), CopyError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let here = |e: io::Error| at_node(node, e);
        let src = node.src.open(flags).map_err(here)?;
        let dst = node.dst.open(flags).map_err(here)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = sys::getdents(src.as_fd(), &mut buf).map_err(here)?;
            if n == 0 {
                return Ok(());
            }
            let names: Vec<Vec<u8>> = sys::parse_dirents(&buf[..n])
                .filter(|e| e.name != b"." && e.name != b"..")
                .map(|e| e.name.to_vec())
                .collect();
            for name in names {
                let c = CString::new(name).map_err(|_| here(io::ErrorKind::InvalidData.into()))?;
                self.copy_entry(src.as_fd(), dst.as_fd(), &c, node)?;
            }
        }
    }
}

impl Shared<'_> {
    fn push(&self, node: Arc<DirNode>) {
        let mut q = self.queue.lock();
        q.0.push_back(node);
        q.1 += 1;
        self.queue_cv.notify_one();
    }

    fn copied(&self, key: (u64, u64), first: InodeRef) {
        self.links.lock().insert(key, LinkState::Done(first));
        self.links_cv.notify_all();
    }

    fn fail(&self, e: CopyError) {
        let mut f = self.failed.lock();
        if f.is_none() && !matches!(e, CopyError::Cancelled) {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::Release);
        self.queue_cv.notify_all();
        self.links_cv.notify_all();
    }

    /// Takes the next directory, or None when all are done (or stopping).
    fn next(&self) -> Option<Arc<DirNode>> {
        let mut q = self.queue.lock();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            if let Some(t) = q.0.pop_front() {
                return Some(t);
            }
            if q.1 == 0 {
                return None;
            }
            self.queue_cv.wait_for(&mut q, Duration::from_millis(50));
        }
    }

    fn finished_one(&self) {
        let mut q = self.queue.lock();
        q.1 -= 1;
        if q.1 == 0 {
            self.queue_cv.notify_all();
        }
    }

    /// `node`'s own entries are copied: once nothing below it is pending
    /// either, it gets its source's attributes (after its contents, so its
    /// times stay and a read-only mode cannot stop the copy), and so on up.
    /// The root's are set by [`copy_tree`] at the very end.
    fn done(&self, node: Arc<DirNode>) -> Result<(), CopyError> {
        let mut n = node;
        while n.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let Some(parent) = n.parent.clone() else {
                return Ok(());
            };
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            let here = |e: io::Error| at_node(&n, e);
            let s = n.src.open(flags).map_err(here)?;
            let d = n.dst.open(flags).map_err(here)?;
            copy_xattrs(s.as_fd(), d.as_fd()).map_err(here)?;
            set_meta(d.as_fd(), &n.st).map_err(here)?;
            n = parent;
        }
        Ok(())
    }

    fn work(&self) {
        let mut ctx = Ctx {
            sh: self,
            buf: vec![0u8; 1 << 20],
        };
        while let Some(node) = self.next() {
            let r = ctx.copy_dir(&node).and_then(|()| self.done(node));
            if let Err(e) = r {
                self.fail(e);
            }
            self.finished_one();
        }
    }
}

/// Copies everything inside directory `src` into the empty directory `dst`
/// (both opened `O_RDONLY | O_DIRECTORY`) with up to `threads` threads, one
/// directory at a time each, then gives every directory, `dst` last, the
/// mode, owner, times and xattrs of its source. `progress` sees the running
/// totals (from this thread) and may stop the copy by setting `cancel`;
/// `pause` slows each entry (testing aid).
pub fn copy_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    threads: usize,
    pause: Option<Duration>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&CopyStats),
) -> Result<CopyStats, CopyError> {
    let root_err = |e| CopyError::Failed {
        path: ".".into(),
        err: e,
    };
    let st = sys::fstat(src).map_err(root_err)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let reopen = |fd| sys::reopen(fd, flags).map_err(root_err);
    let sh = Shared {
        cancel,
        pause,
        root_dev: st.st_dev,
        stop: AtomicBool::new(false),
        failed: Mutex::new(None),
        entries: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        reflink: AtomicBool::new(true),
        links: Mutex::new(HashMap::new()),
        links_cv: Condvar::new(),
        queue: Mutex::new((VecDeque::new(), 0)),
        queue_cv: Condvar::new(),
        src_mount: MountFd::for_dir(src).map(Arc::new),
        dst_mount: MountFd::for_dir(dst).map(Arc::new),
    };
    sh.push(Arc::new(DirNode {
        parent: None,
        name: Vec::new(),
        src: InodeRef::Fd(reopen(src)?),
        dst: InodeRef::Fd(reopen(dst)?),
        st,
        pending: AtomicUsize::new(1),
    }));
    let stats = |sh: &Shared<'_>| CopyStats {
        entries: sh.entries.load(Ordering::Relaxed),
        bytes: sh.bytes.load(Ordering::Relaxed),
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| scope.spawn(|| sh.work()))
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            progress(&stats(&sh));
            if cancel.load(Ordering::Acquire) {
                sh.fail(CopyError::Cancelled);
            }
        }
    });
    if let Some(e) = sh.failed.lock().take() {
        return Err(e);
    }
    if sh.stop.load(Ordering::Acquire) || cancel.load(Ordering::Acquire) {
        return Err(CopyError::Cancelled);
    }
    // Every directory below got its attributes once its contents were
    // copied; the root's come last.
    copy_xattrs(src, dst).map_err(root_err)?;
    set_meta(dst, &st).map_err(root_err)?;
    let s = stats(&sh);
    progress(&s);
    Ok(s)
}
