//! The thin layer between the kernel and the filesystem: each FUSE request
//! mapped to one operation of [`VfolderFs`], which returns a result, and that
//! result to one reply ([`Answer`], the one place that turns an error into
//! the errno the caller sees). Calls that may block for long come back as a
//! job that runs on the blocking pool and answers from there.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle as Fh, Filesystem,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::info;

use super::error::FsResult;
use super::xattr::Xattr;
use super::{Created, Entry, Job, Opened, VfolderFs};
use crate::metrics::counters::{self as metrics, FuseOp};

/// Makes the request thread act for the request (see `VfolderFs::act`) before
/// any backing call, or answers with the error.
macro_rules! act {
    ($fs:expr, $req:expr, $reply:expr, $($ino:expr),+) => {
        if let Err(e) = $fs.act($req, &[$($ino),+]) {
            return $reply.answer(Err(e));
        }
    };
}

/// A reply that answers a filesystem result: the value in the reply's
/// form, an error as its errno (counted by [`super::error::FsError::errno`]).
trait Answer<T>: Sized {
    /// Sends the value.
    fn value(self, v: T);
    /// Sends the errno.
    fn errno(self, e: Errno);
    /// Sends the result.
    fn answer(self, r: FsResult<T>) {
        match r {
            Ok(v) => self.value(v),
            Err(e) => self.errno(e.errno()),
        }
    }
}

macro_rules! answer {
    ($reply:ty, $t:ty, |$r:ident, $v:ident| $send:expr) => {
        impl Answer<$t> for $reply {
            fn value(self, $v: $t) {
                let $r = self;
                $send
            }
            fn errno(self, e: Errno) {
                self.error(e)
            }
        }
    };
}

answer!(ReplyEmpty, (), |r, _v| r.ok());
answer!(ReplyEntry, Entry, |r, v| r.entry(
    &v.ttl,
    &v.attr,
    Generation(0)
));
answer!(ReplyAttr, (Duration, FileAttr), |r, v| r.attr(&v.0, &v.1));
answer!(ReplyData, &[u8], |r, v| r.data(v));
answer!(ReplyWrite, u32, |r, v| r.written(v));
answer!(ReplyLseek, i64, |r, v| r.offset(v));
answer!(ReplyDirectory, (), |r, _v| r.ok());
answer!(ReplyDirectoryPlus, (), |r, _v| r.ok());
answer!(ReplyOpen, Opened, |r, v| match &v.backing {
    Some(b) => r.opened_passthrough(Fh(v.fh), v.flags, b),
    None => r.opened(Fh(v.fh), v.flags),
});
answer!(ReplyCreate, Created, |r, v| r.created(
    &v.entry.ttl,
    &v.entry.attr,
    Generation(0),
    Fh(v.opened.fh),
    v.opened.flags,
));
answer!(ReplyXattr, Xattr, |r, v| match v {
    Xattr::Size(n) => r.size(n),
    Xattr::Data(d) => r.data(&d),
});
answer!(ReplyStatfs, libc::statvfs, |r, s| r.statfs(
    s.f_blocks,
    s.f_bfree,
    s.f_bavail,
    s.f_files,
    s.f_ffree,
    s.f_bsize as u32,
    s.f_namemax as u32,
    s.f_frsize as u32,
));

impl VfolderFs {
    /// Runs a job made ready by the filesystem on the blocking pool, as this
    /// request's caller, and answers from there.
    fn offload<T: 'static, R: Answer<T> + Send + 'static>(&self, reply: R, job: FsResult<Job<T>>) {
        match job {
            Ok(job) => self
                .blocking
                .run(Self::as_current(move || reply.answer(job()))),
            Err(e) => reply.answer(Err(e)),
        }
    }
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
        reply.answer(self.do_lookup_entry(parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        metrics::request(FuseOp::Forget);
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<Fh>, reply: ReplyAttr) {
        metrics::request(FuseOp::Getattr);
        act!(self, req, reply, ino.0);
        reply.answer(self.do_getattr_fh(ino, fh));
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
        let r = self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh);
        reply.answer(r.map(|a| (self.ttl_attr(ino.0), a)));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        metrics::request(FuseOp::Readlink);
        act!(self, req, reply, ino.0);
        match self.do_readlink(ino) {
            Ok(target) => reply.answer(Ok(&target[..])),
            Err(e) => reply.answer(Err(e)),
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
        let r = self.do_mknod(parent, name, mode, rdev);
        reply.answer(r.map(|a| self.entry(parent, a)));
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
        let r = self.do_mkdir(req, parent, name, mode);
        reply.answer(r.map(|a| self.entry(parent, a)));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics::request(FuseOp::Unlink);
        act!(self, req, reply, parent.0);
        reply.answer(self.do_unlink(parent, name, false));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics::request(FuseOp::Rmdir);
        act!(self, req, reply, parent.0);
        reply.answer(self.do_unlink(parent, name, true));
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
        let r = self.do_symlink(parent, link_name, target);
        reply.answer(r.map(|a| self.entry(parent, a)));
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
        reply.answer(self.do_rename(parent, name, newparent, newname, flags));
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
        let r = self.do_link(ino, newparent, newname);
        reply.answer(r.map(|a| self.entry(newparent, a)));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        metrics::request(FuseOp::Open);
        act!(self, req, reply, ino.0);
        let r = self.do_open(ino, flags, |fd| reply.open_backing(fd));
        reply.answer(r);
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
        // Into this request thread's buffer: no allocation per read.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            match self.do_read(fh, offset, buf) {
                Ok(n) => reply.answer(Ok(&buf[..n])),
                Err(e) => reply.answer(Err(e)),
            }
        });
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
        reply.answer(self.do_write(fh, offset, data));
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
        self.do_release(fh);
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: Fh, datasync: bool, reply: ReplyEmpty) {
        metrics::request(FuseOp::Fsync);
        act!(self, req, reply, ino.0);
        self.offload(reply, self.do_fsync(fh, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        metrics::request(FuseOp::Opendir);
        act!(self, req, reply, ino.0);
        reply.answer(self.do_opendir(req, ino));
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: Fh, offset: u64, mut reply: ReplyDirectory) {
        metrics::request(FuseOp::Readdir);
        act!(self, req, reply, ino.0);
        let r = self.walk_dir(ino, fh, offset, true, |i, next, kind, name| {
            Ok(!reply.add(INodeNo(i), next, kind, name))
        });
        reply.answer(r);
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
        let r = self.do_readdirplus(ino, fh, offset, &mut reply);
        reply.answer(r);
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
        self.do_release(fh);
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: Fh, datasync: bool, reply: ReplyEmpty) {
        metrics::request(FuseOp::Fsyncdir);
        act!(self, req, reply, ino.0);
        self.offload(reply, self.do_fsyncdir(fh, datasync));
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        metrics::request(FuseOp::Statfs);
        act!(self, req, reply, ino.0);
        reply.answer(self.do_statfs(ino));
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
        if self.is_absent_selinux(name) {
            return reply.errno(Errno::EOPNOTSUPP);
        }
        act!(self, req, reply, ino.0);
        reply.answer(self.do_setxattr(ino, name, value, flags));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        metrics::request(FuseOp::Getxattr);
        if let Some(r) = self.early_getxattr(ino, name, size) {
            return reply.answer(r);
        }
        act!(self, req, reply, ino.0);
        reply.answer(self.do_getxattr(ino, name, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        metrics::request(FuseOp::Listxattr);
        if let Some(r) = self.early_listxattr(ino, size) {
            return reply.answer(r);
        }
        act!(self, req, reply, ino.0);
        reply.answer(self.do_listxattr(ino, size));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics::request(FuseOp::Removexattr);
        act!(self, req, reply, ino.0);
        reply.answer(self.do_removexattr(ino, name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        metrics::request(FuseOp::Access);
        reply.answer(self.do_access(ino, mask));
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
        reply.answer(self.do_create(parent, name, mode, flags));
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
        self.offload(reply, self.do_fallocate(fh, offset, length, mode));
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
        reply.answer(self.do_lseek(fh, offset, whence));
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
        // The handles are resolved before the caller's identity is taken on.
        let job = self.do_copy_file_range(
            fh_in,
            offset_in,
            fh_out,
            offset_out,
            len,
            flags.bits() as u32,
        );
        if job.is_ok() {
            act!(self, req, reply, ino_out.0);
        }
        self.offload(reply, job);
    }
}
