//! The vfolder catalog: lifecycle operations that touch both the store and
//! the data directory, and the names by which vfolders are found. Shared by
//! the CLI and the mount.

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

    /// Added volumes that should never have been accepted (see
    /// [`crate::volumes`]): (name, path, why). The default volume is the
    /// store's own and never one of them: an added volume overlapping it is
    /// (it overlaps the store directory). An unreadable volume is not
    /// judged here.
    pub fn volume_refusals(&self) -> Result<Vec<(String, PathBuf, String)>> {
        let added = self.store.volumes()?;
        if added.is_empty() {
            return Ok(Vec::new());
        }
        let occupied = self.occupied()?;
        let mut out = Vec::new();
        for (name, path) in added {
            let path = PathBuf::from(path);
            let Ok(canon) = fs::canonicalize(&path) else {
                continue;
            };
            let others: Vec<volumes::Occupied> = occupied
                .iter()
                .filter(|o| o.path != path)
                .cloned()
                .collect();
            if let Some(why) = volumes::refusal(&canon, &others) {
                out.push((name, path, why));
            }
        }
        Ok(out)
    }

    /// The store's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The store interface.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every volume: (name, path), the default first.
    pub fn volume_list(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = vec![(DEFAULT_VOLUME.to_string(), self.layout.data_dir())];
        out.extend(
            self.store
                .volumes()?
                .into_iter()
                .map(|(n, p)| (n, PathBuf::from(p))),
        );
        Ok(out)
    }

    /// The volume named `name`, opened.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        if let Some(v) = self.volumes.read().get(name) {
            return Ok(v.clone());
        }
        let path = self
            .volume_list()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
        if let Some((at, e)) = self.unmarked.read().get(name)
            && at.elapsed() < UNMARKED_RECHECK
        {
            return Err(e.clone().into());
        }
        let fd = sys::open_dir_path(&path).map_err(io_err(&path))?;
        if let Err(e) = self.check_marker(name, &path, fd.as_fd()) {
            if let StoreError::Volume(v @ VolumeError::Unmarked { .. }) = &e {
                self.unmarked
                    .write()
                    .insert(name.to_string(), (std::time::Instant::now(), v.clone()));
            }
            return Err(e);
        }
        self.unmarked.write().remove(name);
        let v = Arc::new(Volume {
            name: name.to_string(),
            path,
            fd,
        });
        self.volumes.write().insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// The identity marker volume `name` of this store carries.
    fn marker_for(&self, name: &str) -> Result<String> {
        Ok(volumes::marker_text(
            &self.store.store_id()?.unwrap_or_default(),
            name,
        ))
    }

    /// Whether the directory opened as volume `name` is that volume of this
    /// store: its identity marker ([`volumes::MARKER`]) says so. A directory
    /// without one is marked now only if nothing says data should be there
    /// (no vfolder that may hold data lives on the volume) or the data is
    /// there (the directory of such a vfolder exists: a store from before
    /// markers); otherwise it is refused as unavailable, which is what an
    /// empty local directory standing in for an unmounted shared filesystem
    /// looks like. Not cached when refused: it is asked again next time.
    fn check_marker(&self, name: &str, path: &std::path::Path, fd: BorrowedFd<'_>) -> Result<()> {
        let want = self.marker_for(name)?;
        let unmarked = |why: String| -> StoreError {
            VolumeError::Unmarked {
                name: name.to_string(),
                path: path.display().to_string(),
                why,
            }
            .into()
        };
        match volumes::read_marker(fd).map_err(io_err(path))? {
            Some(m) if m == want => Ok(()),
            Some(m) => Err(unmarked(format!("is {}", volumes::foreign_marker(&m)))),
            None => {
                // Rows that may hold data here: not purged, not mid-purge.
                let rows: Vec<VFolder> = self
                    .store
                    .list(ListFilter::All)?
                    .into_iter()
                    .filter(|v| v.volume == name || v.prev_volume.as_deref() == Some(name))
                    .filter(|v| !v.status.is_purged())
                    .collect();
                let present = rows.iter().any(|v| {
                    sys::open_beneath(
                        fd,
                        &Layout::relative_path(&v.id),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )
                    .is_ok()
                });
                if rows.is_empty() || present {
                    volumes::write_marker(fd, &want).map_err(io_err(path))
                } else {
                    Err(unmarked(format!(
                        "has no vfolderfs marker and none of the {} vfolder directories that \
                         should be there (is the shared filesystem mounted?)",
                        rows.len()
                    )))
                }
            }
        }
    }

    /// What a new volume must not overlap: the store directory (which holds
    /// the default volume) and every added volume.
    pub fn occupied(&self) -> Result<Vec<volumes::Occupied>> {
        let mut out = vec![volumes::Occupied {
            label: "the store directory".into(),
            path: self.layout.root().to_path_buf(),
        }];
        for (n, p) in self.store.volumes()? {
            out.push(volumes::Occupied {
                label: format!("volume {n:?}"),
                path: PathBuf::from(p),
            });
        }
        Ok(out)
    }

    /// Adds a data volume at `path`, after checking that the directory may
    /// be one ([`crate::volumes`]: not on FUSE, not in a vfolderfs mount, not
    /// overlapping another volume or the store; refused with
    /// [`VolumeError::Unsafe`] before anything is made). A missing
    /// directory is made `0700`; an existing one that other users can reach
    /// is tightened to `0700` if it is empty, and refused
    /// ([`StoreError::LoosePath`]) if not, since something else may rely on it.
    pub fn add_volume(&self, name: &str, path: &std::path::Path) -> Result<()> {
        if name == DEFAULT_VOLUME || self.store.volumes()?.iter().any(|(n, _)| n == name) {
            return Err(VolumeError::Exists(name.to_string()).into());
        }
        let occupied = self.occupied()?;
        let unsafe_path = |p: &std::path::Path, why: String| VolumeError::Unsafe {
            name: name.to_string(),
            path: p.display().to_string(),
            why,
        };
        if let Some(why) = volumes::mount_table_refusal(path) {
            return Err(unsafe_path(path, why).into());
        }
        let planned = volumes::prospective(path).map_err(io_err(path))?;
        if let Some(why) = volumes::refusal(&planned, &occupied) {
            return Err(unsafe_path(&planned, why).into());
        }
        let made = privacy::make_private_dir(&planned).map_err(io_err(&planned))?;
        let canon = fs::canonicalize(&planned).map_err(io_err(&planned))?;
        // Again on the directory as made: a symlink or mount may have
        // appeared on the way meanwhile.
        if let Some(why) = volumes::refusal(&canon, &occupied) {
            if made {
                let _ = fs::remove_dir(&canon);
            }
            return Err(unsafe_path(&canon, why).into());
        }
        let meta = fs::metadata(&canon).map_err(io_err(&canon))?;
        if !meta.is_dir() {
            return Err(io_err(&canon)(std::io::ErrorKind::NotADirectory.into()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            let empty = fs::read_dir(&canon)
                .map_err(io_err(&canon))?
                .next()
                .is_none();
            if !empty {
                return Err(StoreError::LoosePath {
                    path: canon.display().to_string(),
                    mode,
                });
            }
            privacy::tighten_all(&[privacy::Loose {
                path: canon.clone(),
                mode,
                want: mode & 0o700,
            }]);
            let now = fs::metadata(&canon).map_err(io_err(&canon))?.mode();
            if now & 0o077 != 0 {
                return Err(StoreError::LoosePath {
                    path: canon.display().to_string(),
                    mode: now & 0o7777,
                });
            }
        }
        // A directory marked as another store's (or another volume's) is
        // not taken over.
        let want = self.marker_for(name)?;
        let dfd = sys::open_dir_path(&canon).map_err(io_err(&canon))?;
        if let Some(m) = volumes::read_marker(dfd.as_fd()).map_err(io_err(&canon))?
            && m != want
        {
            return Err(
                unsafe_path(&canon, format!("it is {}", volumes::foreign_marker(&m))).into(),
            );
        }
        self.store.add_volume(name, &canon.display().to_string())?;
        // Its identity marker, now (see `check_marker`).
        self.volume(name).map(drop)
    }

    /// Volume `name`, refused ([`VolumeError::Unsafe`]) if it should never
    /// have been accepted (a store made before volumes were checked may have
    /// one inside a vfolderfs mount, where moving data deadlocks the kernel):
    /// what new data is placed on.
    pub fn usable_volume(&self, name: &str) -> Result<Arc<Volume>> {
        if name == DEFAULT_VOLUME {
            // The store's own; an added volume overlapping it is the one refused.
            return self.volume(name);
        }
        // Refused before it is opened (opening marks a directory as the
        // volume: nothing is written into one that should never be).
        if !self.store.volumes()?.iter().any(|(n, _)| n == name) {
            return Err(VolumeError::NotFound(name.to_string()).into());
        }
        if let Some((_, path, why)) = self
            .volume_refusals()?
            .into_iter()
            .find(|(n, _, _)| n == name)
        {
            return Err(VolumeError::Unsafe {
                name: name.to_string(),
                path: path.display().to_string(),
                why,
            }
            .into());
        }
        self.volume(name)
    }

    /// Forgets volume `name` (refused while any vfolder row, of any status,
    /// uses it: see [`Store::remove_volume`]); its directory is left as it is.
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        self.store.remove_volume(name)?;
        self.volumes.write().remove(name);
        Ok(())
    }

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
    fn shard_fd(&self, volume: &str, id: &str, create: bool) -> std::io::Result<OwnedFd> {
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
