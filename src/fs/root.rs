//! The virtual top of the mount: the root, listing live vfolders, and
//! `.trash`, listing pending deletions. Gestures here are lifecycle
//! operations: mkdir creates, rename renames, rmdir and moving into `.trash`
//! delete, moving out of `.trash` restores.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use fuser::{FileAttr, RenameFlags, Request};

use super::VfolderFs;
use super::attr;
use super::error::{FsError, FsResult};
use super::inodes::Inode;
use super::vfolders::{ROOT_INO, TRASH_INO, VfState};
use crate::backing::sys;
use crate::catalog::NewDir;
use crate::name::{self, TRASH_DIR};
use crate::workers::pool::Task;
use crate::workers::purge;

/// A name for a new vfolder (mkdir, the target of a rename or restore).
fn valid_name(n: &OsStr) -> FsResult<&str> {
    name::validate_os(n).map_err(FsError::BadName)
}

/// A name that may be an existing vfolder's (lookup, rmdir, a rename's source).
fn existing_name(n: &OsStr) -> FsResult<&str> {
    name::validate_existing_bytes(n.as_bytes()).map_err(FsError::BadName)
}

impl VfolderFs {
    fn refresh_now(&self) {
        if let Err(e) = self.reg.sync(self.cat.store().as_ref()) {
            log::warn!("refreshing vfolder states: {e}");
        }
    }

    /// Catches up with changes other processes committed since the last
    /// look (cheap when there are none), so that a vfolder created or
    /// restored by the CLI a moment ago is there at once, not at the next
    /// poll. Returns whether anything was reread.
    pub(super) fn catch_up(&self) -> bool {
        let Ok(tok) = self.cat.store().change_token() else {
            return false;
        };
        if self
            .seen_token
            .swap(tok, std::sync::atomic::Ordering::AcqRel)
            == tok
        {
            return false;
        }
        self.refresh_now();
        true
    }

    pub(super) fn root_attr(&self) -> FileAttr {
        let n = self.reg.counts().0 as u32;
        attr::virtual_dir(ROOT_INO, 3 + n, self.started)
    }

    pub(super) fn trash_attr(&self) -> FileAttr {
        let n = self.reg.counts().1 as u32;
        attr::virtual_dir(TRASH_INO, 2 + n, self.started)
    }

    pub(super) fn root_lookup(&self, name: &OsStr) -> FsResult<FileAttr> {
        if name == TRASH_DIR {
            return Ok(self.trash_attr());
        }
        let n = existing_name(name)?;
        let vf = match self.reg.live(n) {
            Some(vf) => vf,
            None if self.catch_up() => self.reg.live(n).ok_or(FsError::NotFound)?,
            None => return Err(FsError::NotFound),
        };
        self.lookup_vf_root(&vf)
    }

    pub(super) fn trash_lookup(&self, name: &OsStr) -> FsResult<FileAttr> {
        let n = name.to_str().ok_or(FsError::NotFound)?;
        let vf = match self.reg.trashed(n) {
            Some(vf) => vf,
            None if self.catch_up() => self.reg.trashed(n).ok_or(FsError::NotFound)?,
            None => return Err(FsError::NotFound),
        };
        self.lookup_vf_root(&vf)
    }

    pub(super) fn root_mkdir(&self, req: &Request, name: &OsStr, mode: u32) -> FsResult<FileAttr> {
        let n = valid_name(name)?;
        if !self.reg.is_healthy() {
            return Err(FsError::ReadOnly(crate::status::Status::Ready));
        }
        let cause = format!("mount mkdir (uid {}, pid {})", req.uid(), req.pid());
        let dir = NewDir {
            mode: mode & 0o7777,
            owner: Some((req.uid(), req.gid())),
        };
        self.cat.create(n, dir, &cause)?;
        self.refresh_now();
        let vf = self.reg.live(n).ok_or(FsError::NotFound)?;
        self.lookup_vf_root(&vf)
    }

    pub(super) fn root_rmdir(&self, name: &OsStr) -> FsResult<()> {
        let n = existing_name(name)?;
        let vf = self.reg.live(n).ok_or(FsError::NotFound)?;
        let fd = self
            .cat
            .open_backing(&vf.id, &vf.volume(), libc::O_RDONLY | libc::O_NOFOLLOW)?;
        let mut buf = vec![0u8; 4096];
        let filled = sys::getdents(fd.as_fd(), &mut buf)?;
        if sys::parse_dirents(&buf[..filled]).any(|e| e.name != b"." && e.name != b"..") {
            return Err(FsError::NotEmpty);
        }
        let v = self.cat.store().get(&vf.id)?;
        self.cat.delete(&v, "mount rmdir")?;
        self.refresh_now();
        Ok(())
    }

    pub(super) fn trash_rmdir(&self, name: &OsStr) -> FsResult<()> {
        let n = name.to_str().ok_or(FsError::NotFound)?;
        let vf = self.reg.trashed(n).ok_or(FsError::NotFound)?;
        self.purge_trashed(&vf, "mount rmdir in .trash")
    }

    /// Starts the purge of a trashed vfolder (or lets a running one go on)
    /// and hands it to the pool.
    pub(super) fn purge_trashed(&self, vf: &VfState, cause: &str) -> FsResult<()> {
        let pool = self.purge.as_ref().ok_or(FsError::NotPermitted)?;
        // The store is the daemon's: `rm -r` of a trashed vfolder arrives as
        // an opendir inside it, on a thread acting as the caller.
        crate::backing::creds::enter_daemon()?;
        if self.cat.store().get(&vf.id)?.status.is_purged() {
            // A small purge can finish between rm's opendir and its rmdir.
            return Ok(());
        }
        purge::request(&self.cat, &vf.id, cause)?;
        pool.submit(Task::Purge(vf.id.clone()));
        self.refresh_now();
        Ok(())
    }

    /// Whether `req` comes from a recursive `rm` opening a trashed vfolder's
    /// root (read from its command line): the whole tree is one purge then.
    pub(super) fn is_trash_rm(&self, ino: &Inode, req: &Request) -> bool {
        if !ino.vf.status().is_in_trash() || self.purge.is_none() {
            return false;
        }
        // Only who may rmdir in .trash (it belongs to the daemon's user):
        // reading a trashed vfolder must not let anyone else destroy it.
        let trash = self.trash_attr();
        if req.uid() != 0 && req.uid() != trash.uid {
            return false;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{}/cmdline", req.pid())) else {
            return false;
        };
        let mut args = cmd.split(|&b| b == 0).filter(|a| !a.is_empty());
        let Some(argv0) = args.next() else {
            return false;
        };
        if argv0.rsplit(|&b| b == b'/').next() != Some(b"rm") {
            return false;
        }
        args.take_while(|a| *a != b"--").any(|a| {
            a == b"--recursive"
                || (a.len() > 1
                    && a[0] == b'-'
                    && a[1] != b'-'
                    && a.iter().any(|&c| c == b'r' || c == b'R'))
        })
    }

    pub(super) fn root_rename(
        &self,
        from_trash: bool,
        name: &OsStr,
        to_trash: bool,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(FsError::Invalid);
        }
        if name == TRASH_DIR && !from_trash {
            return Err(FsError::NotPermitted);
        }
        match (from_trash, to_trash) {
            (false, false) => {
                let old = existing_name(name)?;
                let new = valid_name(newname)?;
                let vf = self.reg.live(old).ok_or(FsError::NotFound)?;
                if old == new {
                    return Ok(());
                }
                self.cat.store().rename(&vf.id, new)?;
            }
            (false, true) => {
                let old = existing_name(name)?;
                let vf = self.reg.live(old).ok_or(FsError::NotFound)?;
                let v = self.cat.store().get(&vf.id)?;
                self.cat.delete(&v, "mount rename into .trash")?;
            }
            (true, false) => {
                let tn = name.to_str().ok_or(FsError::NotFound)?;
                let new = valid_name(newname)?;
                let vf = self.reg.trashed(tn).ok_or(FsError::NotFound)?;
                let v = self.cat.store().get(&vf.id)?;
                self.cat
                    .restore(&v, Some(new), "mount rename out of .trash")?;
            }
            (true, true) => return Err(FsError::NotPermitted),
        }
        self.refresh_now();
        Ok(())
    }
}
