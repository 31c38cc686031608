//! Changing names in a backing directory: making, removing, renaming and
//! linking entries (the root's and the trash's own names are in `root`).

use super::*;

impl VfolderFs {
    /// Parent of a create-type operation: a writable backing directory.
    pub(super) fn writable_parent(&self, parent: INodeNo) -> FsResult<Arc<Inode>> {
        match self.node(parent)? {
            Node::Root => Err(FsError::NotPermitted),
            Node::Trash => Err(FsError::ReadOnly(crate::status::Status::DeletePending)),
            Node::Backing(p) => Ok(p),
        }
    }

    pub(super) fn do_mknod(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let p = self.writable_parent(parent)?;
        let n = cname(name)?;
        let _w = p.begin_write()?;
        sys::mknodat(p.fd()?.as_fd(), &n, mode, rdev as u64)?;
        self.lookup_in(&p, &n)
    }

    pub(super) fn do_mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
    ) -> FsResult<FileAttr> {
        if parent.0 == ROOT_INO {
            return self.root_mkdir(req, name, mode);
        }
        let p = self.writable_parent(parent)?;
        let n = cname(name)?;
        let _w = p.begin_write()?;
        sys::mkdirat(p.fd()?.as_fd(), &n, mode)?;
        self.lookup_in(&p, &n)
    }

    pub(super) fn do_symlink(
        &self,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> FsResult<FileAttr> {
        let p = self.writable_parent(parent)?;
        let n = cname(name)?;
        let t = sys::cstr(target)?;
        let _w = p.begin_write()?;
        sys::symlinkat(&t, p.fd()?.as_fd(), &n)?;
        self.lookup_in(&p, &n)
    }

    pub(super) fn do_unlink(&self, parent: INodeNo, name: &OsStr, dir: bool) -> FsResult<()> {
        match self.node(parent)? {
            Node::Root if dir => self.root_rmdir(name),
            Node::Trash if dir => self.trash_rmdir(name),
            Node::Root | Node::Trash => Err(FsError::NotPermitted),
            Node::Backing(p) => {
                let n = cname(name)?;
                let _w = p.begin_write()?;
                let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
                sys::unlinkat(p.fd()?.as_fd(), &n, flags)?;
                Ok(())
            }
        }
    }

    pub(super) fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        match (self.node(parent)?, self.node(newparent)?) {
            (Node::Backing(a), Node::Backing(b)) => {
                if !Arc::ptr_eq(&a.vf, &b.vf) {
                    return Err(FsError::CrossVfolder);
                }
                let (n1, n2) = (cname(name)?, cname(newname)?);
                let _w = a.begin_write()?;
                b.check_current()?;
                sys::renameat2(a.fd()?.as_fd(), &n1, b.fd()?.as_fd(), &n2, flags.bits())?;
                Ok(())
            }
            (Node::Backing(_), _) | (_, Node::Backing(_)) => Err(FsError::CrossVfolder),
            (from, to) => self.root_rename(
                matches!(from, Node::Trash),
                name,
                matches!(to, Node::Trash),
                newname,
                flags,
            ),
        }
    }

    pub(super) fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> FsResult<FileAttr> {
        let i = self.inode(ino)?;
        let p = self.writable_parent(newparent)?;
        if !Arc::ptr_eq(&i.vf, &p.vf) {
            return Err(FsError::CrossVfolder);
        }
        let n = cname(newname)?;
        let _w = p.begin_write()?;
        i.check_current()?;
        sys::link_fd(i.fd()?.as_fd(), p.fd()?.as_fd(), &n)?;
        self.lookup_in(&p, &n)
    }
}
