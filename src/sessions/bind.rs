//! The system calls of session binds: the new mount API (`open_tree`,
//! `mount_setattr`, `move_mount`, Linux 5.12+) and `openat2` (5.6+).
//!
//! A bind is made as a detached copy of the vfolder's mount
//! (`open_tree(OPEN_TREE_CLONE)`), restricted while still detached
//! (`mount_setattr`: `nosuid`, `nodev`, and `ro` when asked) and only then
//! attached onto the target's file descriptor (`move_mount`). So it never
//! appears anywhere without its restrictions, and the target is the
//! directory that was opened, not whatever its path names by then.
//! (`mount(MS_BIND|MS_NOSUID|MS_NODEV)` ignores the two flags — a bind
//! keeps its source's — and the remount that applies them comes after the
//! bind is visible.)

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// <linux/mount.h>; not all in the libc crate. The same on every architecture.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_NOSUID: u64 = 0x02;
const MOUNT_ATTR_NODEV: u64 = 0x04;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct open_how` (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn fd_or_err(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) })
}

/// `openat2(dir, name, O_PATH|O_DIRECTORY|O_CLOEXEC)` refusing symlinks
/// (`ELOOP`) and magic links anywhere in `name`.
pub(super) fn open_dir_nofollow(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a valid fd, C string and open_how of the size passed.
    fd_or_err(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// `open("/", O_PATH|O_DIRECTORY|O_CLOEXEC)`.
pub(super) fn open_root() -> io::Result<OwnedFd> {
    // SAFETY: a valid C string.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    fd_or_err(fd as libc::c_long)
}

/// `mkdirat(dir, name, 0777)` (less the umask); an existing entry is fine.
pub(super) fn mkdir_at(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid fd and C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(e)
}

/// A detached, non-recursive copy of the mount at `dir`/`name` (not
/// following a symlink there): `open_tree(OPEN_TREE_CLONE)`.
pub(super) fn clone_tree(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: a valid fd and C string.
    fd_or_err(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Makes the detached mount `tree` `nosuid,nodev` (and `ro` if asked).
pub(super) fn restrict(tree: &OwnedFd, read_only: bool) -> io::Result<()> {
    let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if read_only {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid fd, an empty C string and a mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the detached mount `tree` on the directory `target` refers to.
pub(super) fn attach_tree(tree: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    // SAFETY: valid fds and empty C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fstat` of a descriptor.
pub(super) fn stat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out-buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The vfolder id the vfolderfs mount gives the directory `fd` refers to
/// ([`crate::fs::VFOLDER_ID_XATTR`]); None where it gives none (a daemon
/// from before the attribute).
pub(super) fn vfolder_id(fd: &OwnedFd) -> io::Result<Option<String>> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::ErrorKind::InvalidInput)?;
    let name = std::ffi::CString::new(crate::fs::VFOLDER_ID_XATTR)
        .map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
    ))
}

/// Whether the descriptor is on a FUSE filesystem.
pub(super) fn is_fuse(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: a zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out-buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == libc::FUSE_SUPER_MAGIC)
}

/// The id of the mount `fd` is on (`statx` `STATX_MNT_ID`, Linux 5.8+).
pub(super) fn mount_id(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: a zeroed statx is a valid out-buffer.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty C string and an out-buffer.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::ErrorKind::Unsupported.into());
    }
    Ok(st.stx_mnt_id)
}

/// Lazily unmounts the mount `fd` is the root of, by `/proc/self/fd/N`
/// (the mount itself, not a path that could be changed meanwhile). Lazily,
/// as `fd` itself keeps it busy.
pub(super) fn unmount_fd(fd: &OwnedFd) -> io::Result<()> {
    let p = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
