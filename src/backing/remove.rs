//! Removing a vfolder's backing directory through file descriptors: never
//! following a symlink, never crossing into another filesystem or a mount
//! point inside the tree, never touching anything outside it, and stopping
//! between two entries when asked.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{TreeError, shorten_path};
use super::sys;

/// Why a removal stopped: the backing layer's one tree error.
pub type RemoveError = TreeError;

/// At most this many directory fds are open during a removal, however deep
/// the tree; deeper ancestors are reopened through `..` (checked by device
/// and inode number) on the way back up.
const MAX_OPEN: usize = 64;

/// One directory on the way down.
struct Level {
    /// Open while among the deepest [`MAX_OPEN`]; reopened on the way up.
    fd: Option<OwnedFd>,
    /// Its name in its parent (None for the root).
    name: Option<CString>,
    /// (device, inode): what a reopened `..` must be.
    id: (u64, u64),
    /// Where to go on reading it after coming back from a subdirectory.
    resume: Option<i64>,
}

/// A path for a message: the names from the root down, shortened in the
/// middle when very long (a tree can be thousands of levels deep).
fn path_of(stack: &[Level], last: Option<&[u8]>) -> String {
    let mut parts: Vec<String> = stack
        .iter()
        .filter_map(|l| l.name.as_ref())
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .collect();
    if let Some(n) = last {
        parts.push(String::from_utf8_lossy(n).into_owned());
    }
    shorten_path(parts)
}

/// Removes everything inside the directory `root` (opened `O_RDONLY |
/// O_DIRECTORY`), calling `progress` after each removed entry, then leaves
/// `root` itself (empty) for the caller to remove. Memory and open files
/// stay bounded however deep the tree is.
pub fn empty_dir(
    root: OwnedFd,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(),
) -> Result<(), RemoveError> {
    let fail = |path: String, err: io::Error| RemoveError::Failed { path, err };
    let st = sys::fstat(root.as_fd()).map_err(|e| fail(".".into(), e))?;
    let root_dev = st.st_dev;
    let mut stack = vec![Level {
        fd: Some(root),
        name: None,
        id: (st.st_dev, st.st_ino),
        resume: None,
    }];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut filled, mut pos) = (0usize, 0usize);
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(RemoveError::Cancelled);
        }
        let t = stack.len() - 1;
        if let Some(off) = stack[t].resume.take() {
            // Back from a subdirectory: read on after its entry.
            let fd = stack[t].fd.as_ref().expect("the top level is open");
            sys::lseek(fd.as_fd(), off, libc::SEEK_SET)
                .map_err(|e| fail(path_of(&stack, None), e))?;
            filled = 0;
            pos = 0;
            continue;
        }
        if pos >= filled {
            let fd = stack[t].fd.as_ref().expect("the top level is open");
            filled =
                sys::getdents(fd.as_fd(), &mut buf).map_err(|e| fail(path_of(&stack, None), e))?;
            pos = 0;
            if filled == 0 {
                // Emptied: remove it from its parent, reopening the parent
                // through `..` if its fd was let go.
                if t == 0 {
                    return Ok(());
                }
                if stack[t - 1].fd.is_none() {
                    let up = reopen_parent(&stack[t], &stack[t - 1])
                        .map_err(|e| fail(path_of(&stack[..t], None), e))?;
                    stack[t - 1].fd = Some(up);
                }
                let done = stack.pop().expect("t > 0");
                let name = done.name.as_ref().expect("below the root");
                let parent = stack[t - 1].fd.as_ref().expect("open");
                sys::unlinkat(parent.as_fd(), name, libc::AT_REMOVEDIR)
                    .map_err(|e| fail(path_of(&stack, Some(name.as_bytes())), e))?;
                progress();
                filled = 0;
                pos = 0;
                continue;
            }
        }
        let Some(e) = sys::parse_dirents(&buf[pos..filled]).next() else {
            pos = filled;
            continue;
        };
        let (name_bytes, dtype, next_off) = (e.name.to_vec(), e.dtype, e.next_off);
        pos += e.reclen;
        if name_bytes == b"." || name_bytes == b".." {
            continue;
        }
        let here = |e: io::Error| fail(path_of(&stack, Some(&name_bytes)), e);
        let name = CString::new(name_bytes.clone())
            .map_err(|_| here(io::ErrorKind::InvalidData.into()))?;
        let dirfd = stack[t].fd.as_ref().expect("the top level is open").as_fd();
        let is_dir = if dtype == libc::DT_DIR || dtype == libc::DT_UNKNOWN {
            let (st, mount_root) = match sys::statx_at(dirfd, &name, libc::AT_STATX_DONT_SYNC) {
                Ok(p) => p,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(here(e)),
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir && (mount_root || st.st_dev != root_dev) {
                return Err(RemoveError::MountPoint(path_of(&stack, Some(&name_bytes))));
            }
            is_dir
        } else {
            false
        };
        if !is_dir {
            match sys::unlinkat(dirfd, &name, 0) {
                Ok(()) => progress(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(here(e)),
            }
            continue;
        }
        let child = sys::openat(
            dirfd,
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(here)?;
        let st = sys::fstat(child.as_fd()).map_err(here)?;
        stack[t].resume = Some(next_off);
        stack.push(Level {
            fd: Some(child),
            name: Some(name),
            id: (st.st_dev, st.st_ino),
            resume: None,
        });
        // Keep the deepest MAX_OPEN levels open (and the root).
        if stack.len() > MAX_OPEN {
            let k = stack.len() - MAX_OPEN;
            stack[k].fd = None;
        }
        filled = 0;
        pos = 0;
    }
}

/// Reopens `parent` (whose fd was let go) as `..` of `child`, refusing if it
/// is no longer the same directory (moved while we worked: never guess).
fn reopen_parent(child: &Level, parent: &Level) -> io::Result<OwnedFd> {
    let up = sys::openat(
        child.fd.as_ref().expect("open").as_fd(),
        c"..",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let st = sys::fstat(up.as_fd())?;
    if (st.st_dev, st.st_ino) != parent.id {
        return Err(io::Error::other(
            "the tree was moved during the removal; nothing outside it was touched",
        ));
    }
    Ok(up)
}
