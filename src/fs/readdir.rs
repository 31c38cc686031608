//! Listing a directory handle: the root's and the trash's names as they
//! were at opendir, or `getdents64` on a backing directory's fd, each entry
//! looked up (readdirplus) so that the kernel caches it.

use super::*;
use crate::backing::handle::KernelHandle;
use inodes::InodeFd;

impl VfolderFs {
    /// Walks a directory handle from `offset`; `emit` gets (d_ino, next
    /// offset, d_type, name) and returns false when the reply is full. With
    /// `types`, an entry whose directory records no type (`DT_UNKNOWN`) is
    /// asked for it (one `fstatat`); without, it is given as a regular file
    /// (a readdirplus takes types from the inodes it looks up or knows).
    pub(super) fn walk_dir(
        &self,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        types: bool,
        mut emit: impl FnMut(u64, u64, fuser::FileType, &OsStr) -> FsResult<bool>,
    ) -> FsResult<()> {
        let h = self.file(fh)?;
        let Handle::Dir(d) = &*h else {
            return Err(FsError::Invalid);
        };
        match d {
            DirHandle::Virtual(names) => {
                let dir_ino = ino.0;
                let fixed: [(u64, &str); 3] =
                    [(dir_ino, "."), (ROOT_INO, ".."), (TRASH_INO, ".trash")];
                let nfixed = if dir_ino == ROOT_INO { 3 } else { 2 };
                let total = nfixed + names.len();
                for idx in (offset as usize)..total {
                    let more = if idx < nfixed {
                        let (i, n) = fixed[idx];
                        emit(i, idx as u64 + 1, fuser::FileType::Directory, OsStr::new(n))?
                    } else {
                        let (n, vf) = &names[idx - nfixed];
                        let i = vf.root_nodeid.load(std::sync::atomic::Ordering::Acquire);
                        emit(
                            i.max(3),
                            idx as u64 + 1,
                            fuser::FileType::Directory,
                            OsStr::new(n),
                        )?
                    };
                    if !more {
                        break;
                    }
                }
                Ok(())
            }
            DirHandle::Backing { fd, vf, .. } => {
                vf.check_readable()?;
                let fd = fd.lock();
                sys::lseek(fd.as_fd(), offset as i64, libc::SEEK_SET)?;
                // About what one reply holds: a bigger read is mostly
                // thrown away (the next request seeks and reads again).
                let mut buf = [0u8; 8 * 1024];
                'outer: loop {
                    let n = sys::getdents(fd.as_fd(), &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    for e in sys::parse_dirents(&buf[..n]) {
                        let kind = if types && e.dtype == libc::DT_UNKNOWN {
                            // A filesystem that does not record types in
                            // its directories (ext4 without `filetype`, XFS
                            // with `ftype=0`): ask the inode.
                            CString::new(e.name)
                                .ok()
                                .and_then(|n| {
                                    sys::fstatat(fd.as_fd(), &n, libc::AT_SYMLINK_NOFOLLOW).ok()
                                })
                                .map_or(fuser::FileType::RegularFile, |st| {
                                    attr::kind_of(st.st_mode)
                                })
                        } else {
                            attr::kind_of_dtype(e.dtype)
                        };
                        if !emit(e.ino, e.next_off as u64, kind, OsStr::from_bytes(e.name))? {
                            break 'outer;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    pub(super) fn do_readdirplus(
        &self,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> FsResult<()> {
        let ttl = self.ttl_entry(ino.0);
        let parent = match self.node(ino)? {
            Node::Backing(p) => Some(p),
            _ => None,
        };
        // Once an entry is in the reply (and its lookup counted), a later
        // failure ends the reply instead of replacing it with an error: the
        // kernel must learn of every lookup counted for it, or those inodes
        // are never forgotten. The next readdirplus starts at the failing
        // entry and reports its error then.
        let added = std::cell::Cell::new(false);
        let known = KnownEntries::new(self, parent.as_deref(), ttl);
        let r = self.walk_dir(ino, fh, offset, false, |d_ino, next, _kind, name| {
            let bytes = name.as_bytes();
            if bytes == b"." || bytes == b".." {
                // The kernel takes no lookup reference for these; always
                // directories (whatever d_type the backing gave).
                let a = attr::virtual_dir(d_ino, 2, self.started);
                let full = reply.add(INodeNo(d_ino), next, name, &ttl, &a, Generation(0));
                added.set(added.get() || !full);
                return Ok(!full);
            }
            if let Some((nid, kind)) = known.as_ref().and_then(|k| k.fresh(self, d_ino, name)) {
                // The kernel holds this inode and its entry is fresh: the
                // name alone, no attributes and no lookup counted.
                if reply.add_name_only(INodeNo(nid), next, name, kind) {
                    return Ok(false);
                }
                added.set(true);
                return Ok(true);
            }
            let looked = match &parent {
                Some(_) if fail_lookup_for_test(bytes) => {
                    Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
                }
                Some(p) => {
                    let n = cname(name)?;
                    match self.lookup_in(p, &n) {
                        // A directory the caller may read but not search:
                        // its names are listed natively, so the entry is
                        // looked up by the daemon (privileged step,
                        // CAP_DAC_READ_SEARCH, O_PATH and attributes only);
                        // the kernel checks search permission on the
                        // directory before the caller can use any entry.
                        Err(FsError::Io(e)) if e.raw_os_error() == Some(libc::EACCES) => {
                            creds::with_caps(creds::cap::bit(creds::cap::DAC_READ_SEARCH), || {
                                self.lookup_in(p, &n)
                            })?
                        }
                        r => r,
                    }
                }
                None => self.do_lookup(ino, name),
            };
            let a = match looked {
                Ok(a) => a,
                // Vanished since getdents: skip it.
                Err(FsError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(true),
                Err(FsError::NotFound | FsError::Gone | FsError::CacheableMiss) => return Ok(true),
                // A mount inside the backing directory is not shown.
                Err(FsError::MountInside) => return Ok(true),
                Err(_) if added.get() => return Ok(false),
                Err(e) => return Err(e),
            };
            if reply.add(a.ino, next, name, &ttl, &a, Generation(0)) {
                // Did not fit: the kernel will not count this lookup.
                self.inodes.forget(a.ino.0, 1);
                return Ok(false);
            }
            added.set(true);
            Ok(true)
        });
        match r {
            Err(_) if added.get() => Ok(()),
            r => r,
        }
    }
}

/// What a readdirplus needs to tell an entry the kernel already holds, fresh,
/// from one it must be sent: the listed directory, an fd on it and its
/// mount, and how recent an entry must be.
struct KnownEntries<'a> {
    dir: &'a Inode,
    fd: InodeFd<'a>,
    mount_id: i32,
    cache_gen: u64,
    within_ms: u64,
    /// Cleared when the caller may not search the directory: every entry
    /// then takes the full lookup (which knows what to do), without a
    /// failing system call each.
    usable: std::cell::Cell<bool>,
}

impl<'a> KnownEntries<'a> {
    /// `None` where the shortcut does not apply: not a backing directory,
    /// or one whose handle cannot be taken.
    fn new(fs: &VfolderFs, dir: Option<&'a Inode>, ttl: Duration) -> Option<KnownEntries<'a>> {
        let dir = dir?;
        // Half the entry timeout: the kernel's entry, given at most that
        // long ago, outlives this reply by as long again.
        let within_ms = (ttl.as_millis() / 2) as u64;
        if within_ms == 0 {
            return None;
        }
        // Read before any name is. An invalidation sent while the listing
        // runs may still drop an entry sent here as a name alone; that only
        // costs the kernel a LOOKUP later, never a wrong answer: a name
        // alone gives the kernel nothing to cache.
        let cache_gen = fs.reg.cache_gen();
        let fd = dir.fd().ok()?;
        let (_, mount_id) = KernelHandle::of(fd.as_fd()).ok()?;
        Some(KnownEntries {
            dir,
            fd,
            mount_id,
            cache_gen,
            within_ms,
            usable: std::cell::Cell::new(true),
        })
    }

    /// The node id and type of `name` (read with inode number `d_ino`) if the kernel
    /// was given an entry for that very inode recently, under the current
    /// cache generation: one `name_to_handle_at` proves the name is still
    /// that inode (the handle carries the generation, so a reused inode
    /// number does not pass).
    fn fresh(&self, fs: &VfolderFs, d_ino: u64, name: &OsStr) -> Option<(u64, fuser::FileType)> {
        if !self.usable.get() || fail_lookup_for_test(name.as_bytes()) {
            return None;
        }
        let ino = fs
            .inodes
            .known_fresh((self.dir.key.0, d_ino), self.cache_gen, self.within_ms)?;
        if !Arc::ptr_eq(&ino.vf, &self.dir.vf) || ino.epoch() != self.dir.epoch() {
            return None;
        }
        let held = ino.handle()?;
        let n = cname(name).ok()?;
        let (now, mount_id) = match KernelHandle::at(self.fd.as_fd(), &n) {
            Ok(h) => h,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EACCES) {
                    self.usable.set(false);
                }
                return None;
            }
        };
        // The type of the inode named, not the directory's d_type: the
        // handle proves they are one inode, and some filesystems record no
        // type in their directories.
        (mount_id == self.mount_id && now == *held).then(|| (ino.nodeid, attr::kind_of(ino.fmt)))
    }
}
