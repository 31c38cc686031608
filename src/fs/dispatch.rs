//! The thin layer between the kernel and the filesystem: each FUSE request
//! mapped to one operation of [`VfolderFs`], its result to one reply.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle as Fh, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::info;

use super::error::FsError;
use super::handles::{DirHandle, Handle};
use super::vfolders::{ROOT_INO, TRASH_INO};
use super::{Node, SELINUX_XATTR, VfolderFs, attr, cname, reply_empty, reply_entry, xattr_read};
use crate::backing::sys;
use crate::metrics::counters::{self as metrics, FuseOp};

/// Makes the request thread act for the request (see `VfolderFs::act`) before
/// any backing call, or replies with the error.
macro_rules! act {
    ($fs:expr, $req:expr, $reply:expr, $($ino:expr),+) => {
        if let Err(e) = $fs.act($req, &[$($ino),+]) {
            return $reply.error(e.errno());
        }
    };
}

impl Filesystem for VfolderFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_BIG_WRITES
                | InitFlags::FUSE_ASYNC_READ,
        );
        if self.cfg.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough = true;
            info!("kernel passthrough enabled for read-only opens");
        } else {
            info!("kernel passthrough not in use");
        }
        // The daemon clears setuid/setgid on writes, truncations and chowns
        // (by making them as the caller, without CAP_FSETID unless the caller
        // has it), so the kernel must not send the mode changes of its own
        // kill-priv emulation, which a non-owner's chmod would fail.
        if config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_err()
        {
            log::warn!("the kernel lacks FUSE_HANDLE_KILLPRIV_V2");
        }
        // ACLs checked and cached by the kernel (ls -l asks for each file).
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        self.direct_writes = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        if let Some(u) = &self.cfg.io_uring {
            u.negotiate(config);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        metrics::request(FuseOp::Lookup);
        act!(self, req, reply, parent.0);
        match self.do_lookup(parent, name) {
            // Node id 0 is a negative entry, cached for the entry TTL.
            Err(FsError::CacheableMiss) => {
                let negative = attr::virtual_dir(0, 1, self.started);
                reply.entry(&self.ttl_negative(parent.0), &negative, Generation(0));
            }
            r => reply_entry(reply, self.ttl_entry(parent.0), r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        metrics::request(FuseOp::Forget);
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<Fh>, reply: ReplyAttr) {
        metrics::request(FuseOp::Getattr);
        act!(self, req, reply, ino.0);
        // An open file answers for itself (it may be unlinked already).
        if let Some(h) = fh.and_then(|f| self.file(f).ok())
            && let Handle::File(f) = &*h
            && let Ok(st) = f.fd().and_then(|fd| sys::fstat(fd.as_fd()))
        {
            return reply.attr(&self.ttl_attr(ino.0), &attr::from_stat(ino.0, &st));
        }
        match self.do_getattr(ino) {
            Ok(a) => reply.attr(&self.ttl_attr(ino.0), &a),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<Fh>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        metrics::request(FuseOp::Setattr);
        act!(self, req, reply, ino.0);
        match self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(a) => reply.attr(&self.ttl_attr(ino.0), &a),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        metrics::request(FuseOp::Readlink);
        act!(self, req, reply, ino.0);
        match self
            .inode(ino)
            .and_then(|i| Ok(sys::readlinkat(i.fd()?.as_fd(), sys::EMPTY)?))
        {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        metrics::request(FuseOp::Mknod);
        act!(self, req, reply, parent.0);
        reply_entry(
            reply,
            self.ttl_entry(parent.0),
            self.do_mknod(parent, name, mode, rdev),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        metrics::request(FuseOp::Mkdir);
        act!(self, req, reply, parent.0);
        reply_entry(
            reply,
            self.ttl_entry(parent.0),
            self.do_mkdir(req, parent, name, mode),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics::request(FuseOp::Unlink);
        act!(self, req, reply, parent.0);
        reply_empty(reply, self.do_unlink(parent, name, false));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics::request(FuseOp::Rmdir);
        act!(self, req, reply, parent.0);
        reply_empty(reply, self.do_unlink(parent, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        metrics::request(FuseOp::Symlink);
        act!(self, req, reply, parent.0);
        reply_entry(
            reply,
            self.ttl_entry(parent.0),
            self.do_symlink(parent, link_name, target),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        metrics::request(FuseOp::Rename);
        act!(self, req, reply, parent.0, newparent.0);
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        metrics::request(FuseOp::Link);
        act!(self, req, reply, ino.0, newparent.0);
        reply_entry(
            reply,
            self.ttl_entry(newparent.0),
            self.do_link(ino, newparent, newname),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        metrics::request(FuseOp::Open);
        act!(self, req, reply, ino.0);
        self.do_open(ino, flags, reply);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        metrics::request(FuseOp::Read);
        act!(self, req, reply, ino.0);
        self.do_read(fh, offset, size, reply);
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        metrics::request(FuseOp::Write);
        // As the caller: a write by one without CAP_FSETID clears setuid and
        // setgid in the backing filesystem, as natively (FUSE_HANDLE_KILLPRIV_V2).
        act!(self, req, reply, ino.0);
        match self.do_write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: Fh, _lock: LockOwner, reply: ReplyEmpty) {
        metrics::request(FuseOp::Flush);
        // Nothing to do at close (data goes straight to the backing file;
        // locks are the kernel's): ENOSYS tells the kernel to stop asking.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        metrics::request(FuseOp::Release);
        if let Some(h) = self.handles.remove(fh.0)
            && let Handle::File(f) = &*h
            && self.passthrough
        {
            self.handles.release_mode(f);
        }
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: Fh, datasync: bool, reply: ReplyEmpty) {
        metrics::request(FuseOp::Fsync);
        act!(self, req, reply, ino.0);
        self.with_file_blocking(fh, reply, move |f| {
            Ok(sys::fsync(f.fd()?.as_fd(), datasync)?)
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        metrics::request(FuseOp::Opendir);
        act!(self, req, reply, ino.0);
        match self.do_opendir(req, ino) {
            Ok(fh) => {
                // Listings of a writable vfolder change only through this
                // mount, which tells the kernel; it also revalidates them by
                // the directory's mtime. Others (being cloned into, moved)
                // are read fresh every time.
                let cache = match self.handles.get(fh).as_deref() {
                    Some(Handle::Dir(DirHandle::Backing { vf, .. })) => vf.is_writable(),
                    _ => false,
                };
                let flags = if cache {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(Fh(fh), flags)
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: Fh, offset: u64, mut reply: ReplyDirectory) {
        metrics::request(FuseOp::Readdir);
        act!(self, req, reply, ino.0);
        let r = self.walk_dir(ino, fh, offset, |i, next, kind, name| {
            Ok(!reply.add(INodeNo(i), next, kind, name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        metrics::request(FuseOp::Readdirplus);
        act!(self, req, reply, ino.0);
        match self.do_readdirplus(ino, fh, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        metrics::request(FuseOp::Releasedir);
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: Fh, datasync: bool, reply: ReplyEmpty) {
        metrics::request(FuseOp::Fsyncdir);
        act!(self, req, reply, ino.0);
        match self.file(fh) {
            Ok(h) => self.blocking.run(Self::as_current(move || {
                let r = match &*h {
                    Handle::Dir(DirHandle::Backing { fd, .. }) => {
                        sys::fsync(fd.lock().as_fd(), datasync).map_err(FsError::from)
                    }
                    _ => Ok(()),
                };
                reply_empty(reply, r);
            })),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        metrics::request(FuseOp::Statfs);
        act!(self, req, reply, ino.0);
        let r = match self.node(ino) {
            Ok(Node::Backing(i)) => i
                .fd()
                .and_then(|fd| sys::fstatvfs(fd.as_fd()))
                .map_err(FsError::from),
            _ => sys::fstatvfs(self.data.as_fd()).map_err(FsError::from),
        };
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        metrics::request(FuseOp::Setxattr);
        if self.no_selinux && name == SELINUX_XATTR {
            return reply.error(Errno::EOPNOTSUPP);
        }
        act!(self, req, reply, ino.0);
        let r = self.with_proc_path(ino, |i, p| {
            let n = cname(name)?;
            let _w = i.begin_write()?;
            Ok(sys::setxattr(p, &n, value, flags)?)
        });
        reply_empty(reply, r);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        metrics::request(FuseOp::Getxattr);
        if self.no_selinux && name == SELINUX_XATTR {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if matches!(ino.0, ROOT_INO | TRASH_INO) {
            return reply.error(Errno::ENODATA);
        }
        if name == super::VFOLDER_ID_XATTR {
            // Answered by the daemon only, never read from the backing.
            return match self.inode(ino) {
                Ok(i) if i.is_vf_root => Self::reply_xattr(reply, size, Ok(i.vf.id.clone().into())),
                _ => reply.error(Errno::ENODATA),
            };
        }
        act!(self, req, reply, ino.0);
        let r = self.with_proc_path(ino, |_i, p| {
            let n = cname(name)?;
            if size == 0 {
                let len = sys::getxattr(p, &n, &mut [])?;
                return Ok(vec![0; len]);
            }
            let mut buf = vec![0u8; size as usize];
            let len = sys::getxattr(p, &n, &mut buf)?;
            buf.truncate(len);
            Ok(buf)
        });
        Self::reply_xattr(reply, size, r);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        metrics::request(FuseOp::Listxattr);
        if matches!(ino.0, ROOT_INO | TRASH_INO) {
            return Self::reply_xattr(reply, size, Ok(Vec::new()));
        }
        act!(self, req, reply, ino.0);
        let r = self.with_proc_path(ino, |_i, p| xattr_read(|b| sys::listxattr(p, b)));
        Self::reply_xattr(reply, size, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics::request(FuseOp::Removexattr);
        act!(self, req, reply, ino.0);
        let r = self.with_proc_path(ino, |i, p| {
            let n = cname(name)?;
            let _w = i.begin_write()?;
            Ok(sys::removexattr(p, &n)?)
        });
        reply_empty(reply, r);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        metrics::request(FuseOp::Access);
        let r = match self.node(ino) {
            Ok(Node::Backing(i)) if mask.contains(AccessFlags::W_OK) => i.begin_write().map(drop),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        reply_empty(reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        metrics::request(FuseOp::Create);
        act!(self, req, reply, parent.0);
        match self.do_create(parent, name, mode, flags) {
            Ok((a, fh)) => reply.created(
                &self.ttl_entry(parent.0),
                &a,
                Generation(0),
                Fh(fh),
                self.served_open_flags(flags),
            ),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        metrics::request(FuseOp::Fallocate);
        act!(self, req, reply, ino.0);
        self.with_file_blocking(fh, reply, move |f| {
            let _w = f.inode.begin_write()?;
            Ok(sys::fallocate(f.fd()?.as_fd(), mode, offset, length)?)
        });
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        metrics::request(FuseOp::Lseek);
        act!(self, req, reply, ino.0);
        match self.with_file(fh, |f| Ok(sys::lseek(f.fd()?.as_fd(), offset, whence)?)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: Fh,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: Fh,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        metrics::request(FuseOp::CopyFileRange);
        let (hin, hout) = match (self.file(fh_in), self.file(fh_out)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e.errno()),
        };
        act!(self, req, reply, ino_out.0);
        self.blocking.run(Self::as_current(move || {
            let r = (|| {
                let (Handle::File(fin), Handle::File(fout)) = (&*hin, &*hout) else {
                    return Err(FsError::Invalid);
                };
                let _w = fout.inode.begin_write()?;
                Ok(sys::copy_file_range(
                    fin.fd()?.as_fd(),
                    offset_in,
                    fout.fd()?.as_fd(),
                    offset_out,
                    len,
                    flags.bits() as u32,
                )?)
            })();
            match r {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(e.errno()),
            }
        }));
    }
}
