//! A vfolderfs mount unmounted while session binds still hold it: `umount`
//! succeeds (the kernel detaches the mount point), but each bind keeps the
//! filesystem alive, so the daemon goes on serving the binds until they are
//! detached. These name the sessions that hold it.

use std::path::Path;

use crate::catalog::Catalog;
use crate::mountinfo;
use crate::store::Attachment;

/// Whether this store's whole mount (not a session bind of one of its
/// vfolders) is still at `mountpoint` in this mount namespace.
pub fn mounted_at(cat: &Catalog, mountpoint: &Path) -> bool {
    let store = cat.layout().root().display().to_string();
    mountinfo::own().is_ok_and(|list| {
        list.iter().any(|m| {
            m.point == mountpoint && m.is_fuse() && m.source == store && m.root == Path::new("/")
        })
    })
}

/// The attachments bound from the mount at `mountpoint`.
pub fn holders(cat: &Catalog, mountpoint: &Path) -> Vec<Attachment> {
    cat.store()
        .attachments(None)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| Path::new(&a.source).starts_with(mountpoint))
        .collect()
}

/// One line naming who holds the mount at `mountpoint`: "session S (vfolder
/// V at T)", joined by "; ".
pub fn describe(cat: &Catalog, held: &[Attachment]) -> String {
    held.iter()
        .map(|a| {
            let name = cat
                .store()
                .get(&a.vfolder_id)
                .map(|v| v.name)
                .unwrap_or_else(|_| a.vfolder_id.clone());
            format!("session {:?} (vfolder {name:?} at {})", a.session, a.target)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
