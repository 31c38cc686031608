//! Data volumes of a catalog: the list from the store, each opened once and
//! checked for this store's identity marker, adding and removing them.

use super::*;

impl Catalog {
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
    pub(super) fn marker_for(&self, name: &str) -> Result<String> {
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
    pub(super) fn check_marker(
        &self,
        name: &str,
        path: &std::path::Path,
        fd: BorrowedFd<'_>,
    ) -> Result<()> {
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
}
