//! Backing directories: where a vfolder's directory is on its volume, and
//! making, opening, moving and removing it (fd-relative: the volume's fd, the
//! shard directory, the leaf).

use super::*;

impl Catalog {
    /// Where a vfolder's backing directory is.
    pub fn backing_path(&self, v: &VFolder) -> PathBuf {
        self.path_on(&v.volume, &v.id)
    }

    /// Where vfolder `id`'s backing directory is on `volume`.
    pub fn path_on(&self, volume: &str, id: &str) -> PathBuf {
        let root = self
            .volume(volume)
            .map(|v| v.path.clone())
            .unwrap_or_else(|_| PathBuf::from(format!("<unknown volume {volume}>")));
        root.join(Layout::relative_path(id))
    }

    /// Opens vfolder `id`'s backing directory on `volume` (`openat2` beneath
    /// the volume, no symlinks, no mount crossing).
    pub fn open_backing(&self, id: &str, volume: &str, flags: i32) -> std::io::Result<OwnedFd> {
        let vol = self.volume(volume).map_err(std::io::Error::other)?;
        let rel = Layout::relative_path(id);
        sys::open_beneath(vol.fd(), &rel, flags | libc::O_DIRECTORY, 0)
    }

    /// Whether vfolder `id` has a backing directory on `volume`.
    pub fn backing_exists(&self, id: &str, volume: &str) -> bool {
        self.open_backing(id, volume, libc::O_PATH | libc::O_NOFOLLOW)
            .is_ok()
    }

    /// Removes a vfolder's (emptied) backing directory itself; a missing one is fine.
    pub fn remove_backing_root(&self, id: &str, volume: &str) -> std::io::Result<()> {
        let (_, leaf) = shard_and_leaf(id)?;
        let shard_fd = match self.shard_fd(volume, id, false) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            other => other?,
        };
        match sys::unlinkat(shard_fd.as_fd(), &leaf, libc::AT_REMOVEDIR) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// An `O_PATH` fd on the shard directory of vfolder `id` on `volume`,
    /// made first if `create`.
    pub(super) fn shard_fd(
        &self,
        volume: &str,
        id: &str,
        create: bool,
    ) -> std::io::Result<OwnedFd> {
        let vol = self.volume(volume).map_err(std::io::Error::other)?;
        shard_fd_on(&vol, id, create)
    }

    /// Whether two volumes are on one filesystem (a move between them is a rename).
    pub fn same_filesystem(&self, a: &str, b: &str) -> Result<bool> {
        let (va, vb) = (self.volume(a)?, self.volume(b)?);
        let sa = sys::fstat(va.fd()).map_err(io_err(&va.path))?;
        let sb = sys::fstat(vb.fd()).map_err(io_err(&vb.path))?;
        Ok(sa.st_dev == sb.st_dev)
    }

    /// Moves vfolder `id`'s backing directory from one volume to another on
    /// the same filesystem with one rename (never replacing anything).
    pub fn rename_backing(&self, id: &str, from: &str, to: &str) -> std::io::Result<()> {
        let (_, leaf) = shard_and_leaf(id)?;
        let src = self.shard_fd(from, id, false)?;
        let dst = self.shard_fd(to, id, true)?;
        sys::renameat2(
            src.as_fd(),
            &leaf,
            dst.as_fd(),
            &leaf,
            libc::RENAME_NOREPLACE,
        )
    }

    /// Makes vfolder `id`'s backing directory on `volume`; returns it opened.
    pub fn make_backing(&self, id: &str, volume: &str, dir: NewDir) -> Result<OwnedFd> {
        let vol = self.volume(volume)?;
        let path = vol.path.join(Layout::relative_path(id));
        let (_, leaf) = shard_and_leaf(id).map_err(io_err(&path))?;
        let shard_fd = shard_fd_on(&vol, id, true).map_err(io_err(&path))?;
        sys::mkdirat(shard_fd.as_fd(), &leaf, dir.mode & 0o7777).map_err(io_err(&path))?;
        let finish = || -> std::io::Result<OwnedFd> {
            let fd = sys::openat(
                shard_fd.as_fd(),
                &leaf,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            // mkdirat applies the umask; the requested mode is what counts.
            sys::fchmod(fd.as_fd(), dir.mode & 0o7777)?;
            if let Some((uid, gid)) = dir.owner {
                sys::fchown(fd.as_fd(), uid, gid)?;
            }
            Ok(fd)
        };
        finish().map_err(|e| {
            let _ = sys::unlinkat(shard_fd.as_fd(), &leaf, libc::AT_REMOVEDIR);
            io_err(&path)(e)
        })
    }

    /// After the row of a new (still empty) directory was inserted: if an
    /// `fsck --repair` moved the directory away meanwhile (this process
    /// was stalled past fsck's grace period between `mkdir` and the row),
    /// makes it again. See [`crate::fsck`].
    pub fn remake_if_moved(&self, id: &str, volume: &str, dir: NewDir) -> Result<()> {
        if self.backing_exists(id, volume) {
            return Ok(());
        }
        log::warn!(
            "the new directory of {id} on {volume} was moved away before its row was in; making it again"
        );
        match self.make_backing(id, volume, dir) {
            Ok(fd) => drop(fd),
            Err(StoreError::Io(_, e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Vfolder `id`'s shard directory name and its own, as C strings (a NUL
/// inside is `InvalidInput`).
fn shard_and_leaf(id: &str) -> std::io::Result<(CString, CString)> {
    let c = |s: &str| {
        CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    Ok((c(Layout::shard_of(id))?, c(id)?))
}

/// [`Catalog::shard_fd`] on a volume already looked up.
fn shard_fd_on(vol: &Volume, id: &str, create: bool) -> std::io::Result<OwnedFd> {
    let (shard, _) = shard_and_leaf(id)?;
    if create {
        match sys::mkdirat(vol.fd(), &shard, privacy::DIR_MODE) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    sys::openat(
        vol.fd(),
        &shard,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}
