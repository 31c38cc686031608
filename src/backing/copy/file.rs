//! One file's contents in a tree copy: its data (a reflink where the
//! filesystem can, else `copy_file_range` over the data segments, else
//! read/write; holes kept), its extended attributes, and its owner, mode and
//! times.

use super::*;

const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies extended attributes from `src` to `dst` (both open fds).
pub(super) fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    let list = |buf: &mut [u8]| -> io::Result<usize> {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::flistxattr(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    };
    let n = match list(&mut []) {
        Ok(n) => n,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if n == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; n];
    let n = list(&mut names)?;
    names.truncate(n);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: valid fd and name; a null buffer asks for the size.
        let size =
            unsafe { libc::fgetxattr(src.as_raw_fd(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut val = vec![0u8; size as usize];
        // SAFETY: valid fd, name and buffer.
        let size = unsafe {
            libc::fgetxattr(
                src.as_raw_fd(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: valid fd, name and value.
        let r = unsafe {
            libc::fsetxattr(
                dst.as_raw_fd(),
                cname.as_ptr(),
                val.as_ptr().cast(),
                size as usize,
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Owner, mode and times of `st` onto an open `dst` (owner first: chown
/// clears set-id bits).
pub(super) fn set_meta(dst: BorrowedFd<'_>, st: &libc::stat) -> io::Result<()> {
    sys::fchown(dst, st.st_uid, st.st_gid)?;
    sys::fchmod(dst, st.st_mode & 0o7777)?;
    sys::futimens(dst, &times_of(st))
}

/// The access and modification times of `st`, for `utimensat`.
pub(super) fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

impl Ctx<'_, '_> {
    /// Copies file data from `src` to `dst`, keeping holes.
    pub(super) fn copy_data(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        size: u64,
    ) -> io::Result<()> {
        if self.sh.reflink.load(Ordering::Relaxed) {
            // SAFETY: FICLONE takes the source fd as its argument.
            let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
            if r == 0 {
                self.sh.bytes.fetch_add(size, Ordering::Relaxed);
                return Ok(());
            }
            // Not supported here: do not ask again in this copy.
            self.sh.reflink.store(false, Ordering::Relaxed);
        }
        let mut pos: i64 = 0;
        while (pos as u64) < size {
            let data = match sys::lseek(src, pos, libc::SEEK_DATA) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                Err(e) => return Err(e),
            };
            let hole = sys::lseek(src, data, libc::SEEK_HOLE).unwrap_or(size as i64);
            self.copy_range(src, dst, data as u64, (hole - data) as u64)?;
            pos = hole;
        }
        // A trailing hole: the size must match.
        sys::ftruncate(dst, size)
    }

    fn copy_range(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        mut off: u64,
        mut len: u64,
    ) -> io::Result<()> {
        let mut use_cfr = true;
        while len > 0 {
            if self.stopping() {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if use_cfr {
                match sys::copy_file_range(src, off, dst, off, len.min(CHUNK), 0) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        off += n as u64;
                        len -= n as u64;
                        self.sh.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        // The testing aid slows each chunk too, so that a
                        // test sees the count move within one file.
                        if let Some(p) = self.sh.pause
                            && len > 0
                        {
                            std::thread::sleep(p);
                        }
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
                        ) =>
                    {
                        use_cfr = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            let want = (len as usize).min(self.buf.len());
            let n = sys::pread(src, &mut self.buf[..want], off)?;
            if n == 0 {
                return Ok(());
            }
            let mut w = 0;
            while w < n {
                w += sys::pwrite(dst, &self.buf[w..n], off + w as u64)?;
            }
            off += n as u64;
            len -= n as u64;
            self.sh.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}
