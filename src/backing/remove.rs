//! Removing a vfolder's backing directory through file descriptors: never
//! following a symlink, never crossing into another filesystem or a mount
//! point inside the tree, never touching anything outside it, and stopping
//! between two entries when asked.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::sys;

/// Why a removal stopped.
#[derive(Debug)]
pub enum RemoveError {
    /// A system call failed on `path` (relative to the vfolder's root).
    Failed {
        /// Where, relative to the vfolder root.
        path: String,
        /// The error.
        err: io::Error,
    },
    /// A mount point (or another filesystem) inside the tree was left alone.
    MountPoint(String),
    /// Cancelled (shutdown); what is left stays for a later run.
    Cancelled,
}

impl fmt::Display for RemoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoveError::Failed { path, err } => write!(f, "{path}: {err}"),
            RemoveError::MountPoint(p) => {
                write!(
                    f,
                    "{p}: a mount point inside the vfolder; unmount it and retry"
                )
            }
            RemoveError::Cancelled => write!(f, "cancelled"),
        }
    }
}

impl std::error::Error for RemoveError {}

struct Level {
    fd: OwnedFd,
    /// The name of this directory in its parent (None for the root).
    name: Option<CString>,
    path: String,
    buf: Vec<u8>,
    filled: usize,
    pos: usize,
}

/// Removes everything inside the directory `root` (opened `O_RDONLY |
/// O_DIRECTORY`), calling `progress` after each removed entry, then leaves
/// `root` itself (empty) for the caller to remove.
pub fn empty_dir(
    root: OwnedFd,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(),
) -> Result<(), RemoveError> {
    let fail = |path: &str, err: io::Error| RemoveError::Failed {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.to_string()
        },
        err,
    };
    let root_dev = sys::fstat(root.as_fd()).map_err(|e| fail("", e))?.st_dev;
    let mut stack = vec![Level {
        fd: root,
        name: None,
        path: String::new(),
        buf: vec![0; 64 * 1024],
        filled: 0,
        pos: 0,
    }];
    while let Some(top) = stack.last_mut() {
        if cancel.load(Ordering::Acquire) {
            return Err(RemoveError::Cancelled);
        }
        if top.pos >= top.filled {
            top.filled =
                sys::getdents(top.fd.as_fd(), &mut top.buf).map_err(|e| fail(&top.path, e))?;
            top.pos = 0;
            if top.filled == 0 {
                // Directory emptied: remove it from its parent.
                let done = stack.pop().expect("non-empty stack");
                if let (Some(name), Some(parent)) = (done.name, stack.last()) {
                    sys::unlinkat(parent.fd.as_fd(), &name, libc::AT_REMOVEDIR)
                        .map_err(|e| fail(&done.path, e))?;
                    progress();
                }
                continue;
            }
        }
        let Some(e) = sys::parse_dirents(&top.buf[top.pos..top.filled]).next() else {
            top.pos = top.filled;
            continue;
        };
        let reclen = {
            let rec = &top.buf[top.pos..];
            u16::from_ne_bytes([rec[16], rec[17]]) as usize
        };
        let name_bytes = e.name.to_vec();
        let dtype = e.dtype;
        top.pos += reclen;
        if name_bytes == b"." || name_bytes == b".." {
            continue;
        }
        let path = sys::join_rel(&top.path, &name_bytes);
        let name =
            CString::new(name_bytes).map_err(|_| fail(&path, io::ErrorKind::InvalidData.into()))?;
        let dirfd = top.fd.as_fd();
        let is_dir = if dtype == libc::DT_DIR || dtype == libc::DT_UNKNOWN {
            let (st, mount_root) = match sys::statx_at(dirfd, &name, libc::AT_STATX_DONT_SYNC) {
                Ok(p) => p,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(fail(&path, e)),
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir && (mount_root || st.st_dev != root_dev) {
                return Err(RemoveError::MountPoint(path));
            }
            is_dir
        } else {
            false
        };
        if is_dir {
            let fd = sys::openat(
                dirfd,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|e| fail(&path, e))?;
            stack.push(Level {
                fd,
                name: Some(name),
                path,
                buf: vec![0; 16 * 1024],
                filled: 0,
                pos: 0,
            });
        } else {
            match sys::unlinkat(dirfd, &name, 0) {
                Ok(()) => progress(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(fail(&path, e)),
            }
        }
    }
    Ok(())
}
