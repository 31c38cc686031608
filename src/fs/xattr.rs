//! Extended attributes: passed through to the backing inode as the caller,
//! except the vfolder id (answered by the daemon) and the SELinux label on
//! hosts without SELinux (not supported, so that `ls -l` stops asking).

use std::ffi::{CString, OsStr};

use fuser::INodeNo;

use super::error::{FsError, FsResult};
use super::inodes::Inode;
use super::vfolders::{ROOT_INO, TRASH_INO};
use super::{SELINUX_XATTR, VFOLDER_ID_XATTR, VfolderFs, cname};
use crate::backing::sys;

/// What a `getxattr` or `listxattr` answers.
pub(crate) enum Xattr {
    /// The size the value needs (the caller asked with size 0).
    Size(u32),
    /// The value.
    Data(Vec<u8>),
}

impl Xattr {
    /// The answer to a call that offered `size` bytes for `value`.
    fn fit(size: u32, value: Vec<u8>) -> FsResult<Xattr> {
        if size == 0 {
            Ok(Xattr::Size(value.len() as u32))
        } else if value.len() > size as usize {
            Err(FsError::TooSmall)
        } else {
            Ok(Xattr::Data(value))
        }
    }
}

impl VfolderFs {
    /// Whether `name` is the SELinux label on a host without SELinux.
    pub(super) fn is_absent_selinux(&self, name: &OsStr) -> bool {
        self.no_selinux && name == SELINUX_XATTR
    }

    pub(super) fn do_setxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.with_proc_path(ino, |i, p| {
            let n = cname(name)?;
            let _w = i.begin_write()?;
            Ok(sys::setxattr(p, &n, value, flags)?)
        })
    }

    /// Answered before the caller's identity is taken on (see dispatch): the
    /// SELinux label, the virtual directories and the vfolder id.
    pub(super) fn early_getxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
    ) -> Option<FsResult<Xattr>> {
        if self.is_absent_selinux(name) {
            return Some(Err(FsError::AttributeUnsupported));
        }
        if matches!(ino.0, ROOT_INO | TRASH_INO) {
            return Some(Err(FsError::NoAttribute));
        }
        if name == VFOLDER_ID_XATTR {
            // Answered by the daemon only, never read from the backing.
            return Some(match self.inode(ino) {
                Ok(i) if i.is_vf_root => Xattr::fit(size, i.vf.id.clone().into()),
                _ => Err(FsError::NoAttribute),
            });
        }
        None
    }

    pub(super) fn do_getxattr(&self, ino: INodeNo, name: &OsStr, size: u32) -> FsResult<Xattr> {
        let value = self.with_proc_path(ino, |_i, p| {
            let n = cname(name)?;
            if size == 0 {
                let len = sys::getxattr(p, &n, &mut [])?;
                return Ok(vec![0; len]);
            }
            let mut buf = vec![0u8; size as usize];
            let len = sys::getxattr(p, &n, &mut buf)?;
            buf.truncate(len);
            Ok(buf)
        })?;
        Xattr::fit(size, value)
    }

    /// The virtual directories have no attributes (answered as the daemon).
    pub(super) fn early_listxattr(&self, ino: INodeNo, size: u32) -> Option<FsResult<Xattr>> {
        matches!(ino.0, ROOT_INO | TRASH_INO).then(|| Xattr::fit(size, Vec::new()))
    }

    pub(super) fn do_listxattr(&self, ino: INodeNo, size: u32) -> FsResult<Xattr> {
        let value = self.with_proc_path(ino, |_i, p| read_sized(|b| sys::listxattr(p, b)))?;
        Xattr::fit(size, value)
    }

    pub(super) fn do_removexattr(&self, ino: INodeNo, name: &OsStr) -> FsResult<()> {
        self.with_proc_path(ino, |i, p| {
            let n = cname(name)?;
            let _w = i.begin_write()?;
            Ok(sys::removexattr(p, &n)?)
        })
    }

    /// Runs `f` with the inode and a `/proc/self/fd` path reaching it (the
    /// xattr calls have no `O_PATH`-fd form).
    fn with_proc_path<T>(
        &self,
        ino: INodeNo,
        f: impl FnOnce(&Inode, &CString) -> FsResult<T>,
    ) -> FsResult<T> {
        let i = self.inode(ino)?;
        let fd = i.fd()?;
        let path = sys::proc_fd_path(fd.as_fd());
        f(&i, &path)
    }
}

/// Calls a size-probing xattr function twice: once for the size, once for the data.
fn read_sized(mut f: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> FsResult<Vec<u8>> {
    loop {
        let n = f(&mut [])?;
        let mut buf = vec![0u8; n];
        match f(&mut buf) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
