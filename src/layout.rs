//! Where a store lives and how its data directory is laid out.

use std::path::{Path, PathBuf};

/// Environment variable naming the store directory (or database).
pub const STORE_ENV: &str = "VFOLDERFS_STORE";

/// Environment variable naming the data directory of a store kept in
/// PostgreSQL (`--data`).
pub const DATA_ENV: &str = "VFOLDERFS_DATA";

/// The layout of one store: its database (`vfolders.db` in the store
/// directory, or a PostgreSQL database) and `data/`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    database: Option<String>,
}

impl Layout {
    /// A layout rooted at `root` (not created yet), its database the SQLite
    /// file in it.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout {
            root: root.into(),
            database: None,
        }
    }

    /// A store kept in the PostgreSQL database `conninfo` (a URL or a libpq
    /// `key=value` string), its data under `root` (on shared storage when
    /// several nodes mount it).
    pub fn postgres(root: impl Into<PathBuf>, conninfo: &str) -> Layout {
        Layout {
            root: root.into(),
            database: Some(conninfo.to_string()),
        }
    }

    /// The store chosen by `--store`, else `$VFOLDERFS_STORE`, else the
    /// embedded default. A `postgres://` URL selects PostgreSQL; its data
    /// directory is `data` (`--data`), else `$VFOLDERFS_DATA`, else the
    /// default store directory.
    pub fn resolve(flag: Option<&Path>, data: Option<&Path>) -> Layout {
        let chosen = flag.map(Path::to_path_buf).or_else(|| {
            std::env::var_os(STORE_ENV)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        match chosen {
            Some(p) if p.to_str().is_some_and(crate::store::pgconf::is_postgres) => {
                let root = data.map(Path::to_path_buf).unwrap_or_else(|| {
                    std::env::var_os(DATA_ENV)
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .unwrap_or_else(default_root)
                });
                Layout::postgres(root, p.to_str().unwrap_or_default())
            }
            Some(p) => Layout::new(p),
            None => Layout::new(default_root()),
        }
    }

    /// The PostgreSQL connection string, for a store kept there.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The store directory (for PostgreSQL, the directory holding `data/`).
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
        Path::new(Layout::shard_of(id)).join(id)
    }

    /// The shard directory (under a volume's root) that holds vfolder
    /// `id`'s backing directory: the id's first two hex digits.
    pub fn shard_of(id: &str) -> &str {
        id.get(..2).unwrap_or(id)
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
