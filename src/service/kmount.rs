//! The kernel mount of a FUSE session, made here rather than by fuser so
//! that it has the type `fuse.vfolderfs` (what `mount -t`, fstab, `findmnt
//! -t` and monitoring tools filter on) and the flags asked for (`ro`, ...),
//! and so that a clean unmount is ours to report.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The filesystem type in `/proc/self/mountinfo`.
pub const FSTYPE: &str = "fuse.vfolderfs";

/// What the kernel mount is asked for.
#[derive(Debug, Clone, Default)]
pub struct KernelMount {
    /// Shown as the mount's source (the store's path).
    pub source: String,
    /// Let other users in (`allow_other`).
    pub allow_other: bool,
    /// Honour setuid bits (else `nosuid`).
    pub suid: bool,
    /// Honour device nodes (else `nodev`).
    pub dev: bool,
    /// A read-only mount: the kernel refuses every change with `EROFS`.
    pub read_only: bool,
    /// `noatime`.
    pub noatime: bool,
    /// `noexec`.
    pub noexec: bool,
}

impl KernelMount {
    /// The mount(2) flags.
    pub fn flags(&self) -> libc::c_ulong {
        let mut f = 0;
        if !self.suid {
            f |= libc::MS_NOSUID;
        }
        if !self.dev {
            f |= libc::MS_NODEV;
        }
        if self.read_only {
            f |= libc::MS_RDONLY;
        }
        if self.noatime {
            f |= libc::MS_NOATIME;
        }
        if self.noexec {
            f |= libc::MS_NOEXEC;
        }
        f
    }

    /// Opens `/dev/fuse` and mounts it on `mountpoint`; returns the device
    /// to serve the session on. `EPERM` (not root) is returned as is, for
    /// the caller to fall back on fusermount.
    pub fn mount(&self, mountpoint: &Path) -> io::Result<OwnedFd> {
        let mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
        let dev = CString::new("/dev/fuse").expect("no NUL");
        // SAFETY: a valid path; the result is checked.
        let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut data = format!(
            "fd={},rootmode={mode:o},user_id={uid},group_id={gid},default_permissions",
            fd.as_raw_fd()
        );
        if self.allow_other {
            data.push_str(",allow_other");
        }
        let cstr =
            |s: &[u8]| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
        let source = cstr(self.source.as_bytes())?;
        let target = cstr(mountpoint.as_os_str().as_bytes())?;
        let fstype = cstr(FSTYPE.as_bytes())?;
        let data = cstr(data.as_bytes())?;
        // SAFETY: valid C strings; the kernel copies them.
        let r = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                self.flags(),
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}
