//! A store is private to the user that runs vfolderfs: users reach vfolders
//! only through the mount, which checks every request against the vfolder's
//! status. So the store directory, every data volume and the shard
//! directories in it are `0700`, and the database with the files SQLite
//! keeps beside it `0600`. (A vfolder's own directory keeps the mode its
//! users gave it: that is what they see through the mount.)
//!
//! Nothing here needs `0711`: the daemon reaches backing directories by file
//! descriptor, never by a path another user must be able to search.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::layout::Layout;

/// Mode of the store directory, volume roots and shard directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database and SQLite's files beside it.
pub const FILE_MODE: u32 = 0o600;

/// A store path that other users could reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loose {
    /// The path.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// What they should be: the owner's bits only.
    pub want: u32,
}

impl fmt::Display for Loose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {:04o}, should be {:04o} (only vfolderfs's user may reach a store; \
             users go through the mount)",
            self.path.display(),
            self.mode,
            self.want
        )
    }
}

/// `Some` if the directory or regular file at `path` (not followed) grants
/// anything to its group or others; a missing path is fine.
fn check(path: &Path) -> Option<Loose> {
    let m = fs::symlink_metadata(path).ok()?;
    if !m.is_dir() && !m.is_file() {
        return None;
    }
    let mode = m.mode() & 0o7777;
    (mode & 0o077 != 0).then(|| Loose {
        path: path.to_path_buf(),
        mode,
        want: mode & 0o700,
    })
}

/// The database files that are loose: `vfolders.db` and its `-wal`,
/// `-shm` and `-journal` (SQLite makes new ones with the database's mode,
/// so these are tightened before SQLite opens the database).
pub fn loose_db_files(layout: &Layout) -> Vec<Loose> {
    let db = layout.db_path();
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .filter_map(|s| {
            let mut p = db.clone().into_os_string();
            p.push(s);
            check(Path::new(&p))
        })
        .collect()
}

/// The loose directories: the store directory, and each volume's root with
/// the directories directly in it (its shards and `lost+found`). Symlinks to
/// the store or a volume are followed (paths are reported resolved); a
/// volume that cannot be read is skipped (fsck reports missing data).
pub fn loose_dirs(layout: &Layout, volumes: &[PathBuf]) -> Vec<Loose> {
    let mut out = Vec::new();
    if let Ok(root) = fs::canonicalize(layout.root()) {
        out.extend(check(&root));
    }
    for v in volumes {
        let Ok(v) = fs::canonicalize(v) else {
            continue;
        };
        out.extend(check(&v));
        let Ok(entries) = fs::read_dir(&v) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(check(&e.path()));
            }
        }
    }
    out
}

/// Sets `l.path` to `l.want`, by a descriptor opened without following a
/// symlink, if it is still the same kind of file and still loose.
pub fn tighten(l: &Loose) -> io::Result<()> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&l.path)?;
    let m = f.metadata()?;
    if !m.is_dir() && !m.is_file() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    if m.mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(m.mode() & 0o700))?;
    }
    Ok(())
}

/// Tightens each of `loose`, logging what was changed (or could not be).
pub fn tighten_all(loose: &[Loose]) {
    for l in loose {
        match tighten(l) {
            Ok(()) => log::warn!(
                "tightened {} from {:04o} to {:04o}: a store is private to vfolderfs's user",
                l.path.display(),
                l.mode,
                l.want
            ),
            Err(e) => log::warn!("{l}; it could not be tightened: {e}"),
        }
    }
}

/// Makes directory `path` (its parents as usual) with [`DIR_MODE`] whatever
/// the umask; returns false if it existed already (left as it is).
pub fn make_private_dir(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
    Ok(true)
}
