//! An inode reached by its kernel file handle or, where handles do not work,
//! by an fd kept open.
//!
//! A kernel file handle ([`KernelHandle`], from `name_to_handle_at`) names an
//! inode for as long as it lives and costs no open file; `open_by_handle_at`
//! turns it back into an fd, given a real fd on the same mount ([`MountFd`])
//! and `CAP_DAC_READ_SEARCH`. The filesystem's inode table and the tree copy
//! both hold many inodes at once this way ([`InodeRef`]); both need the same
//! mount probe, so it lives here once.
//!
//! Nothing here raises a capability: the callers know why they may, and say so
//! where they do (`creds::with_caps`).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use parking_lot::Mutex;

use super::sys;

/// A kernel file handle (`struct file_handle`): stable for the life of an
/// inode (it carries the generation, so a reused inode number gets another
/// one), costs no open file, and reopens with `open_by_handle_at`. Not
/// fuser's `FileHandle` (an open file's number in the FUSE protocol).
#[derive(Clone, PartialEq, Eq)]
pub struct KernelHandle {
    /// `struct file_handle` as the kernel wrote it (header and bytes).
    raw: Box<[u8]>,
}

const MAX_HANDLE_SZ: usize = 128;

impl KernelHandle {
    /// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the handle of the inode an
    /// fd refers to, and the id of its mount.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<(KernelHandle, i32)> {
        Self::name_to_handle(fd, sys::EMPTY, libc::AT_EMPTY_PATH)
    }

    /// `name_to_handle_at(dir, name, 0)`: the handle of what the single name
    /// `name` in `dir` is now (a symlink itself, never its target), and the
    /// id of its mount, without opening it. `name` must be one component:
    /// the caller passes a name read from the directory.
    pub fn at(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<(KernelHandle, i32)> {
        debug_assert!(!name.to_bytes().contains(&b'/'));
        Self::name_to_handle(dir, name, 0)
    }

    fn name_to_handle(
        fd: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        flags: libc::c_int,
    ) -> io::Result<(KernelHandle, i32)> {
        // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
        let mut buf = vec![0u8; 8 + MAX_HANDLE_SZ];
        buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
        let mut mount_id: libc::c_int = 0;
        // SAFETY: buf holds a file_handle header announcing MAX_HANDLE_SZ
        // bytes; name is NUL-terminated.
        let r = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr(),
                &mut mount_id,
                flags,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let n = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        buf.truncate(8 + n.min(MAX_HANDLE_SZ));
        Ok((
            KernelHandle {
                raw: buf.into_boxed_slice(),
            },
            mount_id,
        ))
    }

    /// `open_by_handle_at(mount, handle, flags)` (needs `CAP_DAC_READ_SEARCH`).
    pub fn open(&self, mount: &MountFd, flags: i32) -> io::Result<OwnedFd> {
        let mut raw = self.raw.to_vec();
        // SAFETY: raw is a complete file_handle as the kernel produced it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount.0.as_raw_fd(),
                raw.as_mut_ptr(),
                flags | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// A real (not `O_PATH`) fd on a mount, to reopen that mount's handles
/// against, and known to work: made only by a probe that reopened a handle.
pub struct MountFd(OwnedFd);

impl MountFd {
    /// Probes whether handles reopen on `dir`'s mount: reopens `dir` (a
    /// directory, `O_PATH` or not) as the mount's fd and `h` (an inode on the
    /// same mount) by handle against it. `Ok(None)`: the mount refuses (no
    /// export support, or no `CAP_DAC_READ_SEARCH`); `Err`: `dir` could not
    /// be reopened, nothing learned.
    pub fn probe(dir: BorrowedFd<'_>, h: &KernelHandle) -> io::Result<Option<MountFd>> {
        let m = MountFd(sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?);
        Ok(h.open(&m, libc::O_PATH).is_ok().then_some(m))
    }

    /// [`MountFd::probe`] with `dir`'s own handle: the mount fd for a tree
    /// rooted at `dir`, if handles work there.
    pub fn for_dir(dir: BorrowedFd<'_>) -> Option<MountFd> {
        let (h, _) = KernelHandle::of(dir).ok()?;
        MountFd::probe(dir, &h).ok().flatten()
    }
}

/// One [`MountFd`] per mount id seen, decided once per mount: `None` for a
/// mount where reopening by handle does not work (its inodes keep an fd).
/// Its lock is a leaf: nothing else is locked while it is held.
#[derive(Default)]
pub struct MountFds {
    /// GUARDED_BY its mutex: mount id → its fd, or `None` if refused.
    map: Mutex<HashMap<i32, Option<Arc<MountFd>>>>,
}

impl MountFds {
    /// The fd of mount `mount_id`, asking `probe` the first time (under the
    /// lock, so a mount is probed once). A refusal (`Ok(None)`) is
    /// remembered; `Err` (no directory to probe from yet) is not.
    pub fn get_or_probe(
        &self,
        mount_id: i32,
        probe: impl FnOnce() -> io::Result<Option<MountFd>>,
    ) -> Option<Arc<MountFd>> {
        let mut map = self.map.lock();
        if let Some(m) = map.get(&mount_id) {
            return m.clone();
        }
        let m = probe().ok()?.map(Arc::new);
        if m.is_none() {
            log::warn!("reopening by file handle refused; inodes keep an open file each");
        }
        map.insert(mount_id, m.clone());
        m
    }
}

/// An inode reached by its kernel handle (no open file while it waits) or,
/// where handles do not work, by an fd kept open.
pub enum InodeRef {
    /// A handle, reopened against its mount's fd.
    Handle(KernelHandle, Arc<MountFd>),
    /// An fd kept open (`O_PATH` or not).
    Fd(OwnedFd),
}

impl InodeRef {
    /// Trades `fd` for its handle when `mount` (the fd's mount) can reopen
    /// it; keeps `fd` otherwise.
    pub fn of(fd: OwnedFd, mount: Option<&Arc<MountFd>>) -> InodeRef {
        match (mount, KernelHandle::of(fd.as_fd())) {
            (Some(m), Ok((h, _))) => InodeRef::Handle(h, m.clone()),
            _ => InodeRef::Fd(fd),
        }
    }

    /// The handle, if it is reached by one.
    pub fn handle(&self) -> Option<&KernelHandle> {
        match self {
            InodeRef::Handle(h, _) => Some(h),
            InodeRef::Fd(_) => None,
        }
    }

    /// A new fd on it with `flags`: reopened by handle, or (kept fd) a
    /// duplicate for `O_PATH` and a reopen through `/proc/self/fd` for real
    /// access. Reopening by handle needs `CAP_DAC_READ_SEARCH`.
    pub fn open(&self, flags: i32) -> io::Result<OwnedFd> {
        match self {
            InodeRef::Handle(h, m) => h.open(m, flags),
            InodeRef::Fd(fd) if flags & libc::O_PATH != 0 => fd.try_clone(),
            InodeRef::Fd(fd) => sys::reopen(fd.as_fd(), flags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_names_one_inode_and_reopens_it_on_its_mount() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let d: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let f: OwnedFd = std::fs::File::open(&p).unwrap().into();
        let (hd, md) = KernelHandle::of(d.as_fd()).unwrap();
        let (hf, mf) = KernelHandle::of(f.as_fd()).unwrap();
        assert_eq!(md, mf);
        assert!(hd != hf);
        // Tests run as root (the suite mounts FUSE): handles reopen.
        let m = Arc::new(
            MountFd::probe(d.as_fd(), &hd)
                .unwrap()
                .expect("handles work"),
        );
        let r = InodeRef::of(f, Some(&m));
        assert!(r.handle() == Some(&hf));
        let again = r.open(libc::O_RDONLY).unwrap();
        let (st1, st2) = (
            sys::fstat(again.as_fd()).unwrap(),
            std::fs::metadata(&p).unwrap(),
        );
        assert_eq!(st1.st_ino, std::os::unix::fs::MetadataExt::ino(&st2));
        // Without a mount fd the fd is kept, and still opens.
        let kept = InodeRef::of(again, None);
        assert!(kept.handle().is_none());
        assert!(kept.open(libc::O_PATH).is_ok());
        // The map probes a mount once and remembers the answer.
        let fds = MountFds::default();
        let mut probes = 0;
        for _ in 0..3 {
            let got = fds.get_or_probe(md, || {
                probes += 1;
                MountFd::probe(d.as_fd(), &hd)
            });
            assert!(got.is_some());
        }
        assert_eq!(probes, 1);
    }
}
