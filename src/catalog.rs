//! The vfolder catalog: lifecycle operations that touch both the store and
//! the data directory, and the names by which vfolders are found. Shared by
//! the CLI and the mount. Its data volumes (opened once, checked for this
//! store's marker) are in `data_volumes`; the backing directories on them
//! (made, opened, moved, removed by fd) in `backing`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::backing::sys;
use crate::layout::Layout;
use crate::privacy;
use crate::status::Op;
use crate::store::{
    ListFilter, PgStore, Result, SqliteStore, Store, StoreError, TransitionArgs, VFolder,
};
use crate::volumes::{self, VolumeError};

mod backing;
mod data_volumes;

/// The volume every store has: its own `data/` directory.
pub const DEFAULT_VOLUME: &str = "default";

/// A data volume: a directory (typically its own disk) holding backing directories.
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    fd: OwnedFd,
}

impl Volume {
    /// An `O_PATH` fd on the volume's directory.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A store opened for use: the database and its data volumes.
pub struct Catalog {
    layout: Layout,
    store: Arc<dyn Store>,
    volumes: RwLock<HashMap<String, Arc<Volume>>>,
    /// Volumes found unmarked, and when: asked again only after
    /// [`UNMARKED_RECHECK`] (a lookup on a node whose shared filesystem is
    /// missing must not cost a store query each).
    unmarked: RwLock<HashMap<String, (std::time::Instant, VolumeError)>>,
}

/// How long a volume found unavailable (no identity marker) stays so before
/// it is looked at again.
pub const UNMARKED_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Who a new vfolder's root directory belongs to, and its mode.
#[derive(Debug, Clone, Copy)]
pub struct NewDir {
    /// Permission bits of the root directory.
    pub mode: u32,
    /// Owner, when it is not the calling process's.
    pub owner: Option<(u32, u32)>,
}

impl Default for NewDir {
    fn default() -> Self {
        NewDir {
            mode: 0o755,
            owner: None,
        }
    }
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let p = path.into();
    move |e| StoreError::Io(p.display().to_string(), e)
}

impl Catalog {
    /// Opens the store at `layout`, which must exist ([`StoreError::Missing`]
    /// otherwise: only [`Catalog::init`] makes a store). Tightens whatever
    /// of the store other users could reach (logged; see [`crate::privacy`]).
    pub fn open(layout: Layout) -> Result<Catalog> {
        Self::open_with(layout, true)
    }

    /// Opens the store as it is, tightening nothing (fsck reports loose
    /// modes, and repairs them only when asked).
    pub fn open_as_is(layout: Layout) -> Result<Catalog> {
        Self::open_with(layout, false)
    }

    fn open_with(layout: Layout, tighten: bool) -> Result<Catalog> {
        if let Some(url) = layout.database() {
            let store: Arc<dyn Store> = Arc::new(PgStore::open(url)?);
            return Self::finish_open(layout, store, tighten);
        }
        let db = layout.db_path();
        match fs::symlink_metadata(&db) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(layout.root().display().to_string()));
            }
            Err(e) => return Err(io_err(&db)(e)),
            Ok(_) => {}
        }
        if tighten {
            // Before SQLite opens it: new -wal and -shm files take the database's mode.
            privacy::tighten_all(&privacy::loose_db_files(&layout));
        }
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db)?);
        Self::finish_open(layout, store, tighten)
    }

    fn finish_open(layout: Layout, store: Arc<dyn Store>, tighten: bool) -> Result<Catalog> {
        privacy::make_private_dir(&layout.data_dir()).map_err(io_err(layout.data_dir()))?;
        let cat = Catalog {
            layout,
            store,
            volumes: RwLock::new(HashMap::new()),
            unmarked: RwLock::new(HashMap::new()),
        };
        match cat.volume(DEFAULT_VOLUME) {
            Ok(_) => {}
            // Listing, showing and fsck go on; what needs the data there
            // is refused by the same check when it asks.
            Err(e @ StoreError::Volume(VolumeError::Unmarked { .. })) => log::warn!("{e}"),
            Err(e) => return Err(e),
        }
        if tighten {
            privacy::tighten_all(&cat.loose_dirs()?);
        }
        Ok(cat)
    }

    /// Makes a new store at `layout` (the directory, `data/` and the
    /// database with a new store id, all private to this user) and opens
    /// it; returns whether it was made (false: it existed and was opened).
    /// A directory holding anything but an empty `data/` and no database is
    /// refused ([`StoreError::NotEmpty`]): it may be a store whose database
    /// was moved away.
    pub fn init(layout: Layout) -> Result<(Catalog, bool)> {
        if let Some(url) = layout.database() {
            // The database decides whether the store exists; the data
            // directory may be shared with nodes that made it already.
            let (store, made) = PgStore::create(url)?;
            privacy::make_private_dir(layout.root()).map_err(io_err(layout.root()))?;
            return Ok((Self::finish_open(layout, Arc::new(store), true)?, made));
        }
        let (root, db) = (layout.root().to_path_buf(), layout.db_path());
        if fs::symlink_metadata(&db).is_ok() {
            return Ok((Self::open(layout)?, false));
        }
        privacy::make_private_dir(&root).map_err(io_err(&root))?;
        for e in fs::read_dir(&root).map_err(io_err(&root))? {
            let e = e.map_err(io_err(&root))?;
            let empty_data = e.file_name() == "data"
                && e.file_type().is_ok_and(|t| t.is_dir())
                && fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none());
            if !empty_data {
                return Err(StoreError::NotEmpty(root.display().to_string()));
            }
        }
        // An empty directory of ours (made just now, or given empty).
        fs::set_permissions(&root, fs::Permissions::from_mode(privacy::DIR_MODE))
            .map_err(io_err(&root))?;
        privacy::make_private_dir(&layout.data_dir()).map_err(io_err(layout.data_dir()))?;
        fs::set_permissions(
            layout.data_dir(),
            fs::Permissions::from_mode(privacy::DIR_MODE),
        )
        .map_err(io_err(layout.data_dir()))?;
        match SqliteStore::create(&db) {
            Ok(s) => drop(s),
            // Another init won the race: the store exists.
            Err(StoreError::Io(_, e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok((Self::open(layout)?, false));
            }
            Err(e) => return Err(e),
        }
        Ok((Self::open(layout)?, true))
    }

    /// What other users could reach in this store: database files, the
    /// store directory, volume roots and shard directories.
    pub fn loose_modes(&self) -> Result<Vec<privacy::Loose>> {
        let mut out = privacy::loose_db_files(&self.layout);
        out.extend(self.loose_dirs()?);
        Ok(out)
    }

    fn loose_dirs(&self) -> Result<Vec<privacy::Loose>> {
        // A volume that overlaps another (accepted before volumes were
        // checked) may have a vfolder's own directories where shards should
        // be: those are the users', never tightened.
        let refused: Vec<String> = self
            .volume_refusals()?
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        let volumes: Vec<PathBuf> = self
            .volume_list()?
            .into_iter()
            .filter(|(n, _)| !refused.contains(n))
            .map(|(_, p)| p)
            .collect();
        Ok(privacy::loose_dirs(&self.layout, &volumes))
    }

    /// The store's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The store interface.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Creates a ready vfolder on `volume` (the default if None): its
    /// directory first, then its row, so that a crash in between leaves at
    /// worst an unlisted empty directory.
    pub fn create_on(
        &self,
        name: &str,
        dir: NewDir,
        volume: Option<&str>,
        cause: &str,
    ) -> Result<VFolder> {
        crate::name::validate(name).map_err(|e| StoreError::InvalidName(name.to_string(), e))?;
        let volume = volume.unwrap_or(DEFAULT_VOLUME);
        self.usable_volume(volume)?;
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        drop(self.make_backing(&id, volume, dir)?);
        let made = self.store.create(&id, name, volume, cause);
        match made {
            Err(_) => {
                let _ = self.remove_backing_root(&id, volume);
            }
            Ok(_) => self.remake_if_moved(&id, volume, dir)?,
        }
        made
    }

    /// Creates a ready vfolder on the default volume.
    pub fn create(&self, name: &str, dir: NewDir, cause: &str) -> Result<VFolder> {
        self.create_on(name, dir, None, cause)
    }

    /// Moves a live vfolder to the trash.
    pub fn delete(&self, v: &VFolder, cause: &str) -> Result<VFolder> {
        self.store.transition(
            &v.id,
            Op::Delete,
            TransitionArgs {
                cause,
                ..Default::default()
            },
        )
    }

    /// Restores a trashed vfolder, optionally under a new name.
    pub fn restore(&self, v: &VFolder, new_name: Option<&str>, cause: &str) -> Result<VFolder> {
        self.store.transition(
            &v.id,
            Op::Restore,
            TransitionArgs {
                cause,
                new_name,
                ..Default::default()
            },
        )
    }

    /// The trash as listed by the mount and accepted by the CLI: each trashed
    /// vfolder once, with its distinct display name (see [`trash_names`]).
    pub fn trash(&self) -> Result<Vec<(String, VFolder)>> {
        Ok(trash_names(self.store.list(ListFilter::Trash)?))
    }

    /// Finds a vfolder the way the CLI names one: a live name, then a trash
    /// name (as listed, or the stable `NAME~1a2b3c4d` form of any trashed
    /// vfolder), then a full id or a unique id prefix of 8 or more hex
    /// digits, then the newest row of any status with that name.
    pub fn resolve(&self, sel: &str) -> Result<VFolder> {
        match self.store.get_live(sel) {
            Err(StoreError::NotFound(_)) => {}
            other => return other,
        }
        if let Some(v) = find_trashed(&self.trash()?, sel)? {
            return Ok(v);
        }
        if let Some(v) = self.resolve_id(sel)? {
            return Ok(v);
        }
        self.store
            .list(ListFilter::All)?
            .into_iter()
            .filter(|v| v.name == sel)
            .max_by_key(|v| (v.status_changed_at, v.created_at))
            .ok_or_else(|| StoreError::NotFound(sel.to_string()))
    }

    /// A live vfolder by its name, else by its id or a unique id prefix (of
    /// any status: the operation then names the status that refuses it).
    pub fn resolve_live(&self, sel: &str) -> Result<VFolder> {
        match self.store.get_live(sel) {
            Err(StoreError::NotFound(n)) => self.resolve_id(sel)?.ok_or(StoreError::NotFound(n)),
            other => other,
        }
    }

    /// The vfolder whose id is `sel` or starts with it (8 or more hex
    /// digits, hyphens allowed); None if none does, [`StoreError::Ambiguous`]
    /// if several do.
    pub fn resolve_id(&self, sel: &str) -> Result<Option<VFolder>> {
        if !crate::name::looks_like_id_prefix(sel) {
            return Ok(None);
        }
        match self.store.get(sel) {
            Err(StoreError::NotFound(_)) => {}
            other => return other.map(Some),
        }
        let mut found: Vec<VFolder> = self
            .store
            .list(ListFilter::All)?
            .into_iter()
            .filter(|v| crate::name::id_has_prefix(&v.id, sel))
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(StoreError::Ambiguous {
                sel: sel.to_string(),
                count: n,
            }),
        }
    }

    /// Finds a vfolder in the trash by its trash name (as listed, or its
    /// stable `NAME~1a2b3c4d` form), its id or a unique id prefix.
    pub fn resolve_trashed(&self, sel: &str) -> Result<VFolder> {
        let trash = self.trash()?;
        if let Some(v) = find_trashed(&trash, sel)? {
            return Ok(v);
        }
        if crate::name::looks_like_id_prefix(sel) {
            let mut found: Vec<&VFolder> = trash
                .iter()
                .map(|(_, v)| v)
                .filter(|v| crate::name::id_has_prefix(&v.id, sel))
                .collect();
            match found.len() {
                0 => {}
                1 => return Ok(found.pop().expect("one").clone()),
                n => {
                    return Err(StoreError::Ambiguous {
                        sel: sel.to_string(),
                        count: n,
                    });
                }
            }
        }
        Err(StoreError::NotFound(format!("{sel} (in the trash)")))
    }
}

/// The trashed vfolder `sel` names in `trash` (as [`trash_names`] gives
/// it): its listed name, or else the stable form `NAME~HEX` (8 or more hex
/// digits starting its id) of any trashed vfolder named `NAME` — also the
/// one listed as plain `NAME`, so that the form keeps naming it whatever
/// else comes to or leaves the trash.
pub fn find_trashed<T: Clone + HasId>(trash: &[(String, T)], sel: &str) -> Result<Option<T>> {
    if let Some((_, v)) = trash.iter().find(|(n, _)| n == sel) {
        return Ok(Some(v.clone()));
    }
    let Some((name, hex)) = crate::name::split_trash_suffix(sel) else {
        return Ok(None);
    };
    let mut found: Vec<&T> = trash
        .iter()
        .filter(|(n, v)| {
            let listed_as_name = n == name
                || crate::name::split_trash_suffix(n).is_some_and(|(base, _)| base == name);
            listed_as_name && crate::name::id_has_prefix(v.id(), hex)
        })
        .map(|(_, v)| v)
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().cloned()),
        n => Err(StoreError::Ambiguous {
            sel: sel.to_string(),
            count: n,
        }),
    }
}

/// Something with a vfolder id (a row, or the mount's state of one).
pub trait HasId {
    /// The vfolder's id.
    fn id(&self) -> &str;
}

impl HasId for VFolder {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Gives every trashed vfolder a distinct display name: the newest of a
/// name keeps it, the others get `NAME~HEX`, HEX being the first 8 hex
/// digits of the id (more, if two same-named ones share those). A
/// vfolder whose own name already has that form (made before such names
/// were reserved) always gets the suffix. Display names never collide:
/// a plain one never has the form, and a suffixed one splits back at its
/// last `~` into its name and a prefix unique among that name's entries.
pub fn trash_names(trashed: Vec<VFolder>) -> Vec<(String, VFolder)> {
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, v) in trashed.iter().enumerate() {
        groups.entry(v.name.clone()).or_default().push(i);
    }
    let mut names: Vec<String> = vec![String::new(); trashed.len()];
    for (name, idx) in groups {
        let newest = idx
            .iter()
            .copied()
            .max_by_key(|&i| {
                let v = &trashed[i];
                (v.status_changed_at, v.created_at, v.id.clone())
            })
            .expect("a group has members");
        let plain_ok = crate::name::split_trash_suffix(&name).is_none();
        // Each id's digits, sorted: the prefix an id needs to be unique in
        // its group is one longer than its longest common prefix with a
        // neighbour (O(n log n) for a name trashed many times over).
        let mut hex: Vec<(String, usize)> = idx
            .iter()
            .map(|&i| (trashed[i].id.replace('-', ""), i))
            .collect();
        hex.sort();
        let common =
            |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        for (k, (me, i)) in hex.iter().enumerate() {
            let i = *i;
            names[i] = if i == newest && plain_ok {
                name.clone()
            } else {
                let before = k.checked_sub(1).map_or(0, |p| common(&hex[p].0, me));
                let after = hex.get(k + 1).map_or(0, |n| common(&n.0, me));
                let len = (before.max(after) + 1).max(8).min(me.len());
                format!("{name}~{}", &me[..len])
            };
        }
    }
    names.into_iter().zip(trashed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    fn row(id: &str, name: &str, at: i64) -> VFolder {
        VFolder {
            id: id.into(),
            name: name.into(),
            status: Status::DeletePending,
            created_at: at,
            status_changed_at: at,
            error: None,
            volume: DEFAULT_VOLUME.into(),
            prev_volume: None,
            clone_src: None,
        }
    }

    #[test]
    fn same_named_entries_get_the_shortest_unique_suffix() {
        let rows = || {
            vec![
                row("13b29a5a-0c00-4000-8000-000000000001", "foo", 1),
                row("13b29a5a-0d00-4000-8000-000000000002", "foo", 2),
                row("20661723-0000-4000-8000-000000000003", "foo", 3),
                row("13b29a5a-0c00-4000-8000-000000000004", "foo", 0),
            ]
        };
        let names: HashMap<String, String> = trash_names(rows())
            .into_iter()
            .map(|(n, v)| (v.id, n))
            .collect();
        assert_eq!(names["20661723-0000-4000-8000-000000000003"], "foo");
        assert_eq!(
            names["13b29a5a-0d00-4000-8000-000000000002"],
            "foo~13b29a5a0d"
        );
        // These two differ only in their last digit: all 32 are needed.
        assert_eq!(
            names["13b29a5a-0c00-4000-8000-000000000001"],
            "foo~13b29a5a0c0040008000000000000001"
        );
        assert_eq!(
            names["13b29a5a-0c00-4000-8000-000000000004"],
            "foo~13b29a5a0c0040008000000000000004"
        );
        let distinct: std::collections::HashSet<&String> = names.values().collect();
        assert_eq!(distinct.len(), 4);
        let listed = trash_names(rows());
        for (id, n) in &names {
            assert_eq!(find_trashed(&listed, n).unwrap().unwrap().id, *id);
        }
        // The 8-digit form is ambiguous for the three that share it.
        assert!(matches!(
            find_trashed(&listed, "foo~13b29a5a"),
            Err(StoreError::Ambiguous { count: 3, .. })
        ));
    }
}
