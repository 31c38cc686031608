//! Where a store lives and how its data directory is laid out.

use std::path::{Path, PathBuf};

/// Environment variable naming the store directory.
pub const STORE_ENV: &str = "VFOLDERFS_STORE";

/// The on-disk layout of one store: `vfolders.db` and `data/`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The store directory chosen by `--store`, else `$VFOLDERFS_STORE`,
    /// else the embedded default.
    pub fn resolve(flag: Option<&Path>) -> Layout {
        if let Some(p) = flag {
            return Layout::new(p);
        }
        if let Some(p) = std::env::var_os(STORE_ENV).filter(|p| !p.is_empty()) {
            return Layout::new(PathBuf::from(p));
        }
        Layout::new(default_root())
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("vfolders.db")
    }

    /// The directory holding every backing directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A vfolder's backing directory relative to [`Layout::data_dir`]:
    /// `3f/3f2a…`, sharded by the id's first two hex digits.
    pub fn relative_path(id: &str) -> PathBuf {
        let shard = id.get(..2).unwrap_or(id);
        Path::new(shard).join(id)
    }

    /// A vfolder's backing directory.
    pub fn vfolder_path(&self, id: &str) -> PathBuf {
        self.data_dir().join(Self::relative_path(id))
    }
}

/// `/var/lib/vfolderfs` for root, `$XDG_DATA_HOME/vfolderfs` (or
/// `~/.local/share/vfolderfs`) for anyone else.
pub fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/vfolderfs");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(x).join("vfolderfs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/vfolderfs")
}
