//! Removing a vfolder's backing directory through file descriptors: never
//! following a symlink, never crossing into another filesystem or a mount
//! point inside the tree, never touching anything outside it, and stopping
//! between two entries when asked.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
    let st = sys::fstat(root.as_fd()).map_err(TreeError::at_root)?;
    let mut w = Walk {
        stack: vec![Level {
            fd: Some(root),
            name: None,
            id: (st.st_dev, st.st_ino),
            resume: None,
        }],
        root_dev: st.st_dev,
        buf: vec![0u8; 64 * 1024],
        filled: 0,
        pos: 0,
        progress,
    };
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(RemoveError::Cancelled);
        }
        if w.seek_back()? {
            continue;
        }
        if w.pos >= w.filled {
            match w.read_more()? {
                Read::Entries => {}
                Read::Emptied if w.stack.len() == 1 => return Ok(()),
                Read::Emptied => {
                    w.ascend()?;
                    continue;
                }
            }
        }
        w.next_entry()?;
    }
}

/// What reading the deepest directory gave.
enum Read {
    /// Entries in the buffer.
    Entries,
    /// None left: it is empty.
    Emptied,
}

/// A removal under way: the directories from the root down to the one being
/// read, and what was read of it.
struct Walk<'p> {
    stack: Vec<Level>,
    /// The tree's device: a directory on another one is a mount inside.
    root_dev: u64,
    buf: Vec<u8>,
    /// How much of `buf` the last `getdents` filled, and how far it is used.
    filled: usize,
    pos: usize,
    progress: &'p mut dyn FnMut(),
}

impl Walk<'_> {
    /// The deepest directory's fd (it is always open).
    fn top_fd(&self) -> BorrowedFd<'_> {
        let top = self.stack.last().expect("the root is never popped");
        top.fd.as_ref().expect("the top level is open").as_fd()
    }

    /// An error at the deepest directory, or at `name` inside it.
    fn fail(&self, name: Option<&[u8]>, err: io::Error) -> TreeError {
        TreeError::Failed {
            path: path_of(&self.stack, name),
            err,
        }
    }

    /// Forgets what was read (the next read starts at the fd's offset).
    fn forget_buffer(&mut self) {
        self.filled = 0;
        self.pos = 0;
    }

    /// Back from a subdirectory: seeks the deepest directory to just after
    /// that subdirectory's entry. True if it did.
    fn seek_back(&mut self) -> Result<bool, TreeError> {
        let t = self.stack.len() - 1;
        let Some(off) = self.stack[t].resume.take() else {
            return Ok(false);
        };
        sys::lseek(self.top_fd(), off, libc::SEEK_SET).map_err(|e| self.fail(None, e))?;
        self.forget_buffer();
        Ok(true)
    }

    /// Reads the next entries of the deepest directory.
    fn read_more(&mut self) -> Result<Read, TreeError> {
        let fd = self.stack.last().expect("root").fd.as_ref().expect("open");
        let n = sys::getdents(fd.as_fd(), &mut self.buf).map_err(|e| self.fail(None, e))?;
        self.filled = n;
        self.pos = 0;
        Ok(if n == 0 { Read::Emptied } else { Read::Entries })
    }

    /// The deepest directory (not the root) is empty: removes it from its
    /// parent, reopening the parent through `..` if its fd was let go.
    fn ascend(&mut self) -> Result<(), TreeError> {
        let t = self.stack.len() - 1;
        if self.stack[t - 1].fd.is_none() {
            let up = reopen_parent(&self.stack[t], &self.stack[t - 1]).map_err(|e| {
                TreeError::Failed {
                    path: path_of(&self.stack[..t], None),
                    err: e,
                }
            })?;
            self.stack[t - 1].fd = Some(up);
        }
        let done = self.stack.pop().expect("t > 0");
        let name = done.name.as_ref().expect("below the root");
        sys::unlinkat(self.top_fd(), name, libc::AT_REMOVEDIR)
            .map_err(|e| self.fail(Some(name.as_bytes()), e))?;
        (self.progress)();
        self.forget_buffer();
        Ok(())
    }

    /// Handles the next entry in the buffer: removes a non-directory,
    /// descends into a directory, refuses a mount point.
    fn next_entry(&mut self) -> Result<(), TreeError> {
        let Some(e) = sys::parse_dirents(&self.buf[self.pos..self.filled]).next() else {
            self.pos = self.filled;
            return Ok(());
        };
        let (name_bytes, dtype, next_off) = (e.name.to_vec(), e.dtype, e.next_off);
        self.pos += e.reclen;
        if name_bytes == b"." || name_bytes == b".." {
            return Ok(());
        }
        let here = |w: &Self, e: io::Error| w.fail(Some(&name_bytes), e);
        let name = CString::new(name_bytes.clone())
            .map_err(|_| here(self, io::ErrorKind::InvalidData.into()))?;
        let is_dir = if dtype == libc::DT_DIR || dtype == libc::DT_UNKNOWN {
            let (st, mount_root) =
                match sys::statx_at(self.top_fd(), &name, libc::AT_STATX_DONT_SYNC) {
                    Ok(p) => p,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                    Err(e) => return Err(here(self, e)),
                };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir && (mount_root || st.st_dev != self.root_dev) {
                return Err(RemoveError::MountPoint(path_of(
                    &self.stack,
                    Some(&name_bytes),
                )));
            }
            is_dir
        } else {
            false
        };
        if !is_dir {
            match sys::unlinkat(self.top_fd(), &name, 0) {
                Ok(()) => (self.progress)(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(here(self, e)),
            }
            return Ok(());
        }
        self.descend(name, next_off).map_err(|e| here(self, e))
    }

    /// Opens subdirectory `name` of the deepest directory and makes it the
    /// deepest, to come back at `next_off`; lets go of the fd of a level
    /// beyond the deepest [`MAX_OPEN`].
    fn descend(&mut self, name: CString, next_off: i64) -> io::Result<()> {
        let child = sys::openat(
            self.top_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let st = sys::fstat(child.as_fd())?;
        let t = self.stack.len() - 1;
        self.stack[t].resume = Some(next_off);
        self.stack.push(Level {
            fd: Some(child),
            name: Some(name),
            id: (st.st_dev, st.st_ino),
            resume: None,
        });
        // Keep the deepest MAX_OPEN levels open (and the root).
        if self.stack.len() > MAX_OPEN {
            let k = self.stack.len() - MAX_OPEN;
            self.stack[k].fd = None;
        }
        self.forget_buffer();
        Ok(())
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
