//! The embedded SQLite backend of [`Store`].
//!
//! This file opens the database and keeps the vfolder rows (create, list,
//! transitions, renames, history, the change feed); every multi-statement
//! write goes through [`SqliteStore::write_tx`]. The [`Store`] methods of
//! the other concepts are one-line calls into a submodule each: `jobs`
//! (claims and the fenced steps that end a job), `attachments`, `mounts`
//! (and their open counts), `volumes` and `audit` (forgetting purged rows).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params, params_from_iter,
};

use super::{
    Attachment, AuditEntry, Changes, Claim, HistoryEntry, Job, ListFilter, Millis, MountRecord,
    RelocationStart, Result, Store, StoreError, TransitionArgs, VFolder, schema,
};
use crate::name;
use crate::status::{Action, Op, Status};
use crate::volumes::VolumeError;

mod attachments;
mod audit;
mod jobs;
mod mounts;
mod volumes;

/// How long a statement waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] in one SQLite file, opened in WAL mode.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

/// Now, in the store's time unit.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Db(what, e)
}

const COLUMNS: &str =
    "id, name, status, created_at, status_changed_at, error, volume, prev_volume, clone_src";

fn row_to_vfolder(r: &Row<'_>) -> rusqlite::Result<VFolder> {
    let status: String = r.get(2)?;
    let status = status.parse::<Status>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(VFolder {
        id: r.get(0)?,
        name: r.get(1)?,
        status,
        created_at: r.get(3)?,
        status_changed_at: r.get(4)?,
        error: r.get(5)?,
        volume: r.get(6)?,
        prev_volume: r.get(7)?,
        clone_src: r.get(8)?,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn checked_name(n: &str) -> Result<()> {
    name::validate(n).map_err(|e| StoreError::InvalidName(n.to_string(), e))
}

impl SqliteStore {
    /// Opens an existing database file and migrates it forward. A missing
    /// file is an error: only [`SqliteStore::create`] makes one, so that a
    /// typo or a database moved away never turns into a new, empty store.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_existing(path, BUSY_TIMEOUT)
    }

    /// Like [`SqliteStore::open`], waiting at most `busy` for another
    /// process's lock before a statement fails.
    pub fn open_existing(path: &Path, busy: Duration) -> Result<SqliteStore> {
        Self::open_flags(path, busy)
    }

    /// Makes a new database at `path` (which must not exist) with the latest
    /// schema and a new store id. The file is created `0600` whatever the
    /// umask; SQLite gives the `-wal` and `-shm` files it makes beside it
    /// the database's mode.
    pub fn create(path: &Path) -> Result<SqliteStore> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e| StoreError::Io(path.display().to_string(), e);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        drop(f);
        Self::open_flags(path, BUSY_TIMEOUT)
    }

    /// Reads a page of the vfolders table: fails if the database cannot be
    /// read (garbage, locked past the busy timeout).
    pub fn check_readable(&self) -> Result<()> {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM vfolders LIMIT 1)",
            [],
            |_| Ok(()),
        )
        .map_err(db("reading the vfolders table"))
    }

    fn open_flags(path: &Path, busy: Duration) -> Result<SqliteStore> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db("opening the database"))?;
        conn.busy_timeout(busy)
            .map_err(db("setting the busy timeout"))?;
        // journal_mode answers with a row; WAL persists in the file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db("enabling WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "cannot switch the journal to WAL (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")
            .map_err(db("setting pragmas"))?;
        let found = schema::migrate(&mut conn)?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        if found > 0 && found < schema::latest_version() {
            log::info!(
                "{}: schema migrated from version {found} to {}",
                path.display(),
                schema::latest_version()
            );
        }
        if found > 0 && found < schema::STORE_ID_VERSION {
            log::warn!(
                "{}: a store made by an older vfolderfs now has the store id {}",
                path.display(),
                store.store_id()?.unwrap_or_default()
            );
        }
        Ok(store)
    }

    fn get_in(conn: &Connection, id: &str) -> Result<VFolder> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM vfolders WHERE id = ?1"),
            [id],
            row_to_vfolder,
        )
        .optional()
        .map_err(db("reading a vfolder"))?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }
}

impl Store for SqliteStore {
    fn create(&self, id: &str, name: &str, volume: &str, cause: &str) -> Result<VFolder> {
        self.write_tx("committing a creation", |tx| {
            Self::insert_in(tx, id, name, volume, Status::Ready, None, cause)
        })
    }

    fn get(&self, id: &str) -> Result<VFolder> {
        Self::get_in(&self.conn.lock(), id)
    }

    fn get_live(&self, name: &str) -> Result<VFolder> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM vfolders WHERE name = ?1 ORDER BY created_at"
            ))
            .map_err(db("looking up a vfolder"))?;
        let rows = stmt
            .query_map([name], row_to_vfolder)
            .map_err(db("looking up a vfolder"))?;
        for v in rows {
            let v = v.map_err(db("looking up a vfolder"))?;
            if v.status.holds_name() {
                return Ok(v);
            }
        }
        Err(StoreError::NotFound(name.to_string()))
    }

    fn list(&self, filter: ListFilter) -> Result<Vec<VFolder>> {
        // The filter's statuses come from the status model; the status
        // index keeps purged history rows out of the way.
        let statuses: Vec<String> = filter
            .statuses()
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let statuses = statuses.join(", ");
        let sql = if filter == ListFilter::Work {
            // Both halves use an index (status; the partial one on rows
            // with an old copy).
            format!(
                "SELECT {COLUMNS} FROM vfolders WHERE status IN ({statuses}) \
                 UNION SELECT {COLUMNS} FROM vfolders WHERE prev_volume IS NOT NULL \
                 ORDER BY name, created_at, id"
            )
        } else {
            format!(
                "SELECT {COLUMNS} FROM vfolders WHERE status IN ({statuses}) \
                 ORDER BY name, created_at, id"
            )
        };
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&sql).map_err(db("listing vfolders"))?;
        let rows = stmt
            .query_map([], row_to_vfolder)
            .map_err(db("listing vfolders"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("listing vfolders"))
    }

    fn transition(&self, id: &str, op: Op, args: TransitionArgs<'_>) -> Result<VFolder> {
        self.write_tx("committing a status change", |tx| {
            Self::transition_in(tx, id, op, &args, &[])
        })
    }

    fn rename(&self, id: &str, new_name: &str) -> Result<VFolder> {
        checked_name(new_name)?;
        self.write_tx("committing a rename", |tx| {
            let current = Self::get_in(tx, id)?;
            if !Action::Rename.allows(current.status) {
                return Err(StoreError::Refused {
                    name: current.name,
                    id: current.id,
                    status: current.status,
                    op: Action::Rename,
                });
            }
            Self::check_unattached(tx, &current, "rename")?;
            tx.execute(
                "UPDATE vfolders SET name = ?1 WHERE id = ?2",
                params![new_name, id],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::NameTaken(new_name.to_string())
                } else {
                    StoreError::Db("renaming a vfolder", e)
                }
            })?;
            Self::get_in(tx, id)
        })
    }

    fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        let conn = self.conn.lock();
        Self::get_in(&conn, id)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT from_status, to_status, at, cause FROM status_history \
                 WHERE vfolder_id = ?1 ORDER BY seq",
            )
            .map_err(db("reading history"))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Millis>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(db("reading history"))?;
        let mut out = Vec::new();
        for row in rows {
            let (from, to, at, cause) = row.map_err(db("reading history"))?;
            let parse = |s: &str| {
                s.parse::<Status>()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            };
            out.push(HistoryEntry {
                from: from.as_deref().map(parse).transpose()?,
                to: parse(&to)?,
                at,
                cause,
            });
        }
        Ok(out)
    }

    fn store_id(&self) -> Result<Option<String>> {
        self.conn
            .lock()
            .query_row("SELECT value FROM store_info WHERE key = 'id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db("reading the store id"))
    }

    fn trash_retention(&self) -> Result<Option<Duration>> {
        // Stored in `store_info` as whole seconds, 0 for forever.
        let v: Option<String> = self
            .conn
            .lock()
            .query_row(
                "SELECT value FROM store_info WHERE key = 'trash_retention_secs'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading the trash retention"))?;
        super::retention_from_setting(v.as_deref())
    }

    fn set_trash_retention(&self, keep: Option<Duration>) -> Result<()> {
        let secs = super::retention_setting(keep);
        self.conn
            .lock()
            .execute(
                "INSERT INTO store_info (key, value) VALUES ('trash_retention_secs', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [secs],
            )
            .map_err(db("setting the trash retention"))?;
        Ok(())
    }

    fn change_token(&self) -> Result<u64> {
        let conn = self.conn.lock();
        let v: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db("polling for changes"))?;
        Ok(v as u64)
    }

    fn changes_since(&self, rev: u64) -> Result<Changes> {
        let mut conn = self.conn.lock();
        // One read transaction: the rows and the counters agree.
        let tx = conn.transaction().map_err(db("reading changes"))?;
        let rows = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM vfolders WHERE rev > ?1 ORDER BY rev"
                ))
                .map_err(db("reading changes"))?;
            let rows = stmt
                .query_map([rev as i64], row_to_vfolder)
                .map_err(db("reading changes"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("reading changes"))?
        };
        let (now, deletions): (i64, i64) = tx
            .query_row(
                "SELECT (SELECT value FROM store_meta WHERE key = 'rev'), \
                        (SELECT value FROM store_meta WHERE key = 'vfolder_deletions')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("reading changes"))?;
        tx.commit().map_err(db("reading changes"))?;
        Ok(Changes {
            rows,
            rev: now as u64,
            deletions: deletions as u64,
        })
    }

    fn claim_job(
        &self,
        id: &str,
        kind: &str,
        owner: &str,
        lease: Duration,
        holder_dead: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Job>> {
        jobs::claim_job(self, id, kind, owner, lease, holder_dead)
    }

    fn queue_job(&self, id: &str, kind: &str, arg: Option<&str>) -> Result<()> {
        jobs::queue_job(self, id, kind, arg)
    }

    fn renew_job(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        done: u64,
        bytes: u64,
    ) -> Result<bool> {
        jobs::renew_job(self, id, owner, lease, done, bytes)
    }

    fn set_job_totals(&self, id: &str, owner: &str, entries: u64, bytes: u64) -> Result<bool> {
        jobs::set_job_totals(self, id, owner, entries, bytes)
    }

    fn set_job_cancel(&self, id: &str, by: Option<&str>) -> Result<bool> {
        jobs::set_job_cancel(self, id, by)
    }

    fn record_size(&self, id: &str, bytes: u64, files: u64) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO vfolder_sizes (vfolder_id, bytes, files, measured_at) \
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = ?1) \
             ON CONFLICT(vfolder_id) DO UPDATE SET bytes = ?2, files = ?3, measured_at = ?4",
            params![id, bytes as i64, files as i64, now_millis()],
        )
        .map_err(db("recording a size"))?;
        Ok(())
    }

    fn sizes(&self) -> Result<std::collections::HashMap<String, super::Size>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare("SELECT vfolder_id, bytes, files, measured_at FROM vfolder_sizes")
            .map_err(db("reading sizes"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    super::Size {
                        bytes: r.get::<_, i64>(1)? as u64,
                        files: r.get::<_, i64>(2)? as u64,
                        at: r.get(3)?,
                    },
                ))
            })
            .map_err(db("reading sizes"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("reading sizes"))
    }

    fn release_job(&self, id: &str, owner: &str, finished: bool) -> Result<()> {
        jobs::release_job(self, id, owner, finished)
    }

    fn job(&self, id: &str) -> Result<Option<Job>> {
        jobs::job(self, id)
    }

    fn forget_purged(&self, before: Millis) -> Result<Vec<AuditEntry>> {
        audit::forget_purged(self, before)
    }

    fn attach(
        &self,
        id: &str,
        session: &str,
        target: &str,
        read_only: bool,
        mnt_ns: u64,
        source: &str,
        pending: Option<&str>,
    ) -> Result<Attachment> {
        attachments::attach(
            self, id, session, target, read_only, mnt_ns, source, pending,
        )
    }

    fn confirm_attachment(&self, seq: i64) -> Result<bool> {
        attachments::confirm_attachment(self, seq)
    }

    fn detach(&self, seq: i64) -> Result<bool> {
        attachments::detach(self, seq)
    }

    fn attachments(&self, vfolder: Option<&str>) -> Result<Vec<Attachment>> {
        attachments::attachments(self, vfolder)
    }

    fn rev_of(&self, id: &str) -> Result<u64> {
        let conn = self.conn.lock();
        let rev: Option<i64> = conn
            .query_row("SELECT rev FROM vfolders WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(db("reading a change position"))?;
        rev.map(|r| r as u64)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    fn register_mount(&self, m: &MountRecord, lease: Duration) -> Result<()> {
        mounts::register_mount(self, m, lease)
    }

    fn renew_mount(
        &self,
        id: &str,
        applied_rev: u64,
        draining: &[String],
        lease: Duration,
    ) -> Result<bool> {
        mounts::renew_mount(self, id, applied_rev, draining, lease)
    }

    fn remove_mount(&self, id: &str) -> Result<()> {
        mounts::remove_mount(self, id)
    }

    fn mounts(&self) -> Result<(Millis, Vec<MountRecord>)> {
        mounts::mounts(self)
    }

    fn begin_clone(
        &self,
        src: &str,
        dst_id: &str,
        dst_name: &str,
        volume: &str,
        cause: &str,
    ) -> Result<(VFolder, VFolder)> {
        jobs::begin_clone(self, src, dst_id, dst_name, volume, cause)
    }

    fn confirm_claim(&self, claim: &Claim, lease: Duration) -> Result<()> {
        jobs::confirm_claim(self, claim, lease)
    }

    fn finish_purge(&self, claim: &Claim, error: Option<&str>, cause: &str) -> Result<VFolder> {
        jobs::finish_purge(self, claim, error, cause)
    }

    fn finish_clone(&self, claim: &Claim, error: Option<&str>, cause: &str) -> Result<VFolder> {
        jobs::finish_clone(self, claim, error, cause)
    }

    fn switch_volume(&self, claim: &Claim, volume: Option<&str>, cause: &str) -> Result<VFolder> {
        jobs::switch_volume(self, claim, volume, cause)
    }

    fn clear_prev_volume(&self, claim: &Claim) -> Result<()> {
        jobs::clear_prev_volume(self, claim)
    }

    fn add_volume(&self, name: &str, path: &str) -> Result<()> {
        volumes::add_volume(self, name, path)
    }

    fn remove_volume(&self, name: &str) -> Result<()> {
        volumes::remove_volume(self, name)
    }

    fn volumes(&self) -> Result<Vec<(String, String)>> {
        volumes::volumes(self)
    }

    fn record_opens(&self, owner: &str, counts: &[(String, u64)]) -> Result<()> {
        mounts::record_opens(self, owner, counts)
    }

    fn opens(&self) -> Result<std::collections::HashMap<String, u64>> {
        mounts::opens(self)
    }

    fn volume_tiers(&self) -> Result<Vec<super::VolumeTier>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT volume, tier, high_watermark, low_watermark FROM volume_tiers \
                 WHERE volume = ?1 OR volume IN (SELECT name FROM volumes) ORDER BY volume",
            )
            .map_err(db("reading volume tiers"))?;
        let rows = stmt
            .query_map([crate::catalog::DEFAULT_VOLUME], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(db("reading volume tiers"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("reading volume tiers"))?;
        rows.into_iter()
            .map(|(volume, tier, high, low)| {
                Ok(super::VolumeTier {
                    volume,
                    tier: tier
                        .map(|t| t.parse::<crate::tier::Tier>().map_err(StoreError::Corrupt))
                        .transpose()?,
                    high_watermark: high.map(|v| v as u8),
                    low_watermark: low.map(|v| v as u8),
                })
            })
            .collect()
    }

    fn set_volume_tier(&self, t: &super::VolumeTier) -> Result<()> {
        self.write_tx("recording a volume tier", |tx| {
            Self::volume_known_in(tx, &t.volume)?;
            tx.execute(
                "INSERT INTO volume_tiers (volume, tier, high_watermark, low_watermark) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (volume) DO UPDATE SET tier = ?2, \
                 high_watermark = ?3, low_watermark = ?4",
                params![
                    t.volume,
                    t.tier.map(|t| t.as_str()),
                    t.high_watermark.map(i64::from),
                    t.low_watermark.map(i64::from)
                ],
            )
            .map_err(db("recording a volume tier"))?;
            Ok(())
        })
    }

    fn record_usage(&self, batch: &[super::UsageDelta]) -> Result<()> {
        self.write_tx("committing usage", |tx| {
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO vfolder_usage (vfolder_id, day, opens, bytes_read, bytes_written) \
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = ?1) \
                     ON CONFLICT (vfolder_id, day) DO UPDATE SET opens = opens + excluded.opens, \
                     bytes_read = bytes_read + excluded.bytes_read, \
                     bytes_written = bytes_written + excluded.bytes_written",
                )
                .map_err(db("recording usage"))?;
            let mut seen = tx
                .prepare_cached(
                    "INSERT INTO vfolder_access (vfolder_id, last_access) \
                     SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = ?1) \
                     ON CONFLICT (vfolder_id) DO UPDATE \
                     SET last_access = max(last_access, excluded.last_access)",
                )
                .map_err(db("recording usage"))?;
            for d in batch {
                add.execute(params![
                    d.vfolder_id,
                    d.day,
                    d.opens as i64,
                    d.bytes_read as i64,
                    d.bytes_written as i64
                ])
                .map_err(db("recording usage"))?;
                seen.execute(params![d.vfolder_id, d.at])
                    .map_err(db("recording usage"))?;
            }
            Ok(())
        })
    }

    fn usage_since(&self, day: i64, vfolder: Option<&str>) -> Result<Vec<super::UsageDay>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT vfolder_id, day, opens, bytes_read, bytes_written FROM vfolder_usage \
                 WHERE day >= ?1 AND (?2 IS NULL OR vfolder_id = ?2) ORDER BY vfolder_id, day",
            )
            .map_err(db("reading usage"))?;
        let rows = stmt
            .query_map(params![day, vfolder], |r| {
                Ok(super::UsageDay {
                    vfolder_id: r.get(0)?,
                    day: r.get(1)?,
                    opens: r.get::<_, i64>(2)? as u64,
                    bytes_read: r.get::<_, i64>(3)? as u64,
                    bytes_written: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(db("reading usage"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("reading usage"))
    }

    fn last_access(
        &self,
        vfolder: Option<&str>,
    ) -> Result<std::collections::HashMap<String, Millis>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT vfolder_id, last_access FROM vfolder_access \
                 WHERE ?1 IS NULL OR vfolder_id = ?1",
            )
            .map_err(db("reading last accesses"))?;
        let rows = stmt
            .query_map(params![vfolder], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db("reading last accesses"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("reading last accesses"))
    }

    fn pins(&self) -> Result<Vec<super::Pin>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT vfolder_id, pinned_at, cause FROM tier_pins ORDER BY vfolder_id",
            )
            .map_err(db("reading pins"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(super::Pin {
                    vfolder_id: r.get(0)?,
                    at: r.get(1)?,
                    cause: r.get(2)?,
                })
            })
            .map_err(db("reading pins"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("reading pins"))
    }

    fn set_pin(&self, id: &str, cause: Option<&str>) -> Result<bool> {
        self.write_tx("recording a pin", |tx| {
            Self::get_in(tx, id)?;
            Self::pin_in(tx, id, cause)
        })
    }

    fn start_relocation(
        &self,
        id: &str,
        to: &str,
        cause: &str,
        start: RelocationStart<'_>,
    ) -> Result<VFolder> {
        self.write_tx("starting a relocation", |tx| {
            let cur = Self::get_in(tx, id)?;
            if let Some(volume) = cur.prev_volume {
                return Err(StoreError::OldCopyPending {
                    name: cur.name,
                    volume,
                });
            }
            if start == RelocationStart::Tier {
                let pinned: Option<String> = tx
                    .query_row(
                        "SELECT cause FROM tier_pins WHERE vfolder_id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db("reading a pin"))?;
                if let Some(cause) = pinned {
                    return Err(StoreError::Pinned {
                        name: cur.name,
                        cause,
                    });
                }
            }
            Self::volume_known_in(tx, to)?;
            let v = Self::transition_in(
                tx,
                id,
                Op::RelocateStart,
                &TransitionArgs {
                    cause,
                    ..Default::default()
                },
                &[],
            )?;
            jobs::queue_job_in(tx, id, crate::workers::relocate::KIND, Some(to))?;
            if let RelocationStart::Pinning(why) = start {
                Self::pin_in(tx, id, Some(why))?;
            }
            Ok(v)
        })
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .lock()
            .query_row("SELECT value FROM store_info WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db("reading a setting"))
    }

    fn swap_setting(&self, key: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool> {
        self.write_tx("changing a setting", |tx| {
            let cur: Option<String> = tx
                .query_row("SELECT value FROM store_info WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db("reading a setting"))?;
            if cur.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(v) => tx.execute(
                    "INSERT INTO store_info (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                ),
                None => tx.execute("DELETE FROM store_info WHERE key = ?1", [key]),
            }
            .map_err(db("changing a setting"))?;
            Ok(true)
        })
    }

    fn audit(&self) -> Result<Vec<AuditEntry>> {
        audit::audit(self)
    }
}

impl SqliteStore {
    /// The one compare-and-set every status change goes through: `UPDATE
    /// … WHERE id = ? AND status IN (from-statuses)`, its history row, and
    /// any extra columns set in the same statement.
    fn transition_in(
        tx: &Connection,
        id: &str,
        op: Op,
        args: &TransitionArgs<'_>,
        extra: &[(&'static str, Value)],
    ) -> Result<VFolder> {
        if let Some(n) = args.new_name {
            checked_name(n)?;
        }
        let from = op.from_statuses();
        let to = op.to_status();
        let now = now_millis();
        let current = Self::get_in(tx, id)?;
        if op.blocked_by_attachments() {
            Self::check_unattached(tx, &current, op.verb())?;
        }
        let placeholders = vec!["?"; from.len()].join(", ");
        let extra_sets: String = extra.iter().map(|(c, _)| format!(", {c} = ?")).collect();
        let since = if args.if_changed_at.is_some() {
            " AND status_changed_at = ?"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE vfolders SET status = ?, status_changed_at = ?, name = ?, error = ?{extra_sets} \
             WHERE id = ? AND status IN ({placeholders}){since}"
        );
        let new_name = args.new_name.unwrap_or(&current.name);
        let mut values: Vec<Value> = vec![
            Value::Text(to.as_str().into()),
            Value::Integer(now),
            Value::Text(new_name.into()),
            args.error.map_or(Value::Null, |e| Value::Text(e.into())),
        ];
        values.extend(extra.iter().map(|(_, v)| v.clone()));
        values.push(Value::Text(id.into()));
        values.extend(from.iter().map(|s| Value::Text(s.as_str().into())));
        values.extend(args.if_changed_at.map(Value::Integer));
        let changed = tx.execute(&sql, params_from_iter(values)).map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken(new_name.to_string())
            } else {
                StoreError::Db("changing a status", e)
            }
        })?;
        if changed == 0 {
            return Err(StoreError::Refused {
                name: current.name,
                id: current.id,
                status: current.status,
                op: op.into(),
            });
        }
        tx.execute(
            "INSERT INTO status_history (vfolder_id, from_status, to_status, at, cause) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, current.status.as_str(), to.as_str(), now, args.cause],
        )
        .map_err(db("recording history"))?;
        Self::get_in(tx, id)
    }

    /// Pins `id` against tiering with `cause`, or unpins it with `None`;
    /// whether anything changed.
    fn pin_in(tx: &Connection, id: &str, cause: Option<&str>) -> Result<bool> {
        let n = match cause {
            Some(c) => tx.execute(
                "INSERT INTO tier_pins (vfolder_id, pinned_at, cause) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (vfolder_id) DO UPDATE SET pinned_at = ?2, cause = ?3",
                params![id, now_millis(), c],
            ),
            None => tx.execute("DELETE FROM tier_pins WHERE vfolder_id = ?1", [id]),
        }
        .map_err(db("recording a pin"))?;
        Ok(n > 0)
    }

    /// Inserts a new row in `status` with its creation history row.
    /// [`VolumeError::NotFound`] unless `volume` is the default or recorded.
    fn volume_known_in(tx: &Connection, volume: &str) -> Result<()> {
        if volume == crate::catalog::DEFAULT_VOLUME {
            return Ok(());
        }
        let known: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM volumes WHERE name = ?1)",
                params![volume],
                |r| r.get(0),
            )
            .map_err(db("looking up a volume"))?;
        if known {
            Ok(())
        } else {
            Err(VolumeError::NotFound(volume.to_string()).into())
        }
    }

    fn insert_in(
        tx: &Connection,
        id: &str,
        name: &str,
        volume: &str,
        status: Status,
        clone_src: Option<&str>,
        cause: &str,
    ) -> Result<VFolder> {
        checked_name(name)?;
        Self::volume_known_in(tx, volume)?;
        let now = now_millis();
        tx.execute(
            "INSERT INTO vfolders (id, name, status, created_at, status_changed_at, volume, clone_src) \
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
            params![id, name, status.as_str(), now, volume, clone_src],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken(name.to_string())
            } else {
                StoreError::Db("creating a vfolder", e)
            }
        })?;
        tx.execute(
            "INSERT INTO status_history (vfolder_id, from_status, to_status, at, cause) \
             VALUES (?1, NULL, ?2, ?3, ?4)",
            params![id, status.as_str(), now, cause],
        )
        .map_err(db("recording history"))?;
        Self::get_in(tx, id)
    }

    fn check_unattached(conn: &Connection, v: &VFolder, what: &'static str) -> Result<()> {
        let count: i64 = conn
            .query_row(
                "SELECT count(*) FROM attachments WHERE vfolder_id = ?1",
                [&v.id],
                |r| r.get(0),
            )
            .map_err(db("counting attachments"))?;
        if count > 0 {
            return Err(StoreError::Attached {
                name: v.name.clone(),
                count: count as usize,
                what,
            });
        }
        Ok(())
    }

    /// A write transaction: runs `f` in one `BEGIN IMMEDIATE` transaction
    /// (the database's write lock is taken at the start, so two writers
    /// never both read and then fail to upgrade) and commits it. An error
    /// from `f` rolls everything back; `what` names the commit in its error.
    /// Every multi-statement write goes through here.
    fn write_tx<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        let v = f(&tx)?;
        tx.commit().map_err(db(what))?;
        Ok(v)
    }

    /// [`Self::write_tx`] made only while `claim` still holds, checked in
    /// the same transaction (fencing).
    fn fenced<T>(
        &self,
        claim: &Claim,
        what: &'static str,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        self.write_tx(what, |tx| {
            Self::check_claim(tx, claim)?;
            f(tx)
        })
    }

    /// Ends the clone into `dst` in `tx`: the source back to ready (if it
    /// still exists), the target ready or (with `error`) on to its purge.
    fn finish_clone_in(
        tx: &Connection,
        dst: &str,
        error: Option<&str>,
        cause: &str,
    ) -> Result<VFolder> {
        let d = Self::get_in(tx, dst)?;
        let args = TransitionArgs {
            cause,
            error,
            ..Default::default()
        };
        if let Some(src) = &d.clone_src {
            let src_args = TransitionArgs {
                cause,
                ..Default::default()
            };
            match Self::transition_in(tx, src, Op::CloneEnd, &src_args, &[]) {
                // The source may have been forgotten meanwhile; the target decides.
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let op = Op::clone_end(error.is_some());
        Self::transition_in(tx, dst, op, &args, &[("clone_src", Value::Null)])
    }

    /// The fence: [`StoreError::ClaimLost`] unless the job row still has
    /// `claim`'s owner, kind and token. Called inside the transaction that
    /// makes the fenced step.
    fn check_claim(conn: &Connection, claim: &Claim) -> Result<()> {
        let held = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE vfolder_id = ?1 AND owner = ?2 \
                 AND kind = ?3 AND claims = ?4)",
                params![claim.vfolder_id, claim.owner, claim.kind, claim.token],
                |r| r.get::<_, bool>(0),
            )
            .map_err(db("checking a job claim"))?;
        if held {
            Ok(())
        } else {
            Err(StoreError::ClaimLost {
                id: claim.vfolder_id.clone(),
                owner: claim.owner.clone(),
                token: claim.token,
            })
        }
    }

    fn job_in(conn: &Connection, id: &str) -> Result<Option<Job>> {
        conn.query_row(
            "SELECT j.vfolder_id, j.kind, j.owner, j.lease_until, j.started_at, j.claims, j.done, \
             j.arg, ifnull(p.bytes, 0), p.total_entries, p.total_bytes, p.cancel_by \
             FROM jobs j LEFT JOIN job_progress p ON p.vfolder_id = j.vfolder_id \
             WHERE j.vfolder_id = ?1",
            [id],
            |r| {
                Ok(Job {
                    vfolder_id: r.get(0)?,
                    kind: r.get(1)?,
                    owner: r.get(2)?,
                    lease_until: r.get(3)?,
                    started_at: r.get(4)?,
                    claims: r.get(5)?,
                    done: r.get::<_, i64>(6)? as u64,
                    arg: r.get(7)?,
                    bytes: r.get::<_, i64>(8)? as u64,
                    total: match (r.get::<_, Option<i64>>(9)?, r.get::<_, Option<i64>>(10)?) {
                        (Some(e), Some(b)) => Some((e as u64, b as u64)),
                        _ => None,
                    },
                    cancel: r.get(11)?,
                })
            },
        )
        .optional()
        .map_err(db("reading a job"))
    }
}
