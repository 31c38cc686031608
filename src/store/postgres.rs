//! The PostgreSQL backend of [`Store`]: one database shared by the mounts
//! of every node of a cluster.
//!
//! Every write is one transaction at READ COMMITTED that first locks the
//! vfolder row it is about (`SELECT … FOR NO KEY UPDATE`), then checks and
//! changes it with the same compare-and-set as the SQLite backend, so
//! status changes, attachments and job claims of one vfolder take turns;
//! serialization failures and deadlocks are retried. Every time, lease and
//! claim deadline is the database's clock (`clock_timestamp()`), never a
//! node's. Connections come from a small pool; one that broke (the
//! database restarted, the network went away) is dropped and the next use
//! connects again, so a mount recovers without a remount.
//!
//! As in the SQLite backend, this file keeps the connection, the
//! transaction helpers and the vfolder rows; the [`Store`] methods of jobs,
//! attachments, mounts, volumes and the audit call into a submodule each.

mod attachments;
mod audit;
mod jobs;
mod mounts;
mod volumes;

use std::time::Duration;

use fallible_iterator::FallibleIterator;
use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Row, Transaction};
use postgres_native_tls::MakeTlsConnector;

use super::pg_schema::{self, CHANNEL, NOW_MS};
use super::pgconf::PgConf;
use super::{
    Attachment, AuditEntry, Changes, Claim, HistoryEntry, Job, ListFilter, Millis, MountRecord,
    RelocationStart, Result, Store, StoreError, TransitionArgs, VFolder,
};
use crate::name;
use crate::status::{Action, Op, Status};
use crate::volumes::VolumeError;

/// Idle connections kept for reuse.
const POOL_IDLE: usize = 4;

/// How often a transaction that lost a serialization race is tried again.
const RETRIES: usize = 30;

/// A [`Store`] in a PostgreSQL database.
pub struct PgStore {
    conf: PgConf,
    tls: MakeTlsConnector,
    idle: Mutex<Vec<Client>>,
}

fn pg(what: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |e| StoreError::Pg(what, e)
}

fn checked_name(n: &str) -> Result<()> {
    name::validate(n).map_err(|e| StoreError::InvalidName(n.to_string(), e))
}

fn code(e: &StoreError) -> Option<&SqlState> {
    match e {
        StoreError::Pg(_, e) => e.code(),
        _ => None,
    }
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

const COLUMNS: &str =
    "id, name, status, created_at, status_changed_at, error, volume, prev_volume, clone_src";

fn row_to_vfolder(r: &Row) -> Result<VFolder> {
    let status: String = r.get(2);
    Ok(VFolder {
        id: r.get(0),
        name: r.get(1),
        status: status
            .parse::<Status>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: r.get(3),
        status_changed_at: r.get(4),
        error: r.get(5),
        volume: r.get(6),
        prev_volume: r.get(7),
        clone_src: r.get(8),
    })
}

fn row_to_job(r: &Row) -> Job {
    Job {
        vfolder_id: r.get(0),
        kind: r.get(1),
        owner: r.get(2),
        lease_until: r.get(3),
        started_at: r.get(4),
        claims: r.get(5),
        done: r.get::<_, i64>(6) as u64,
        arg: r.get(7),
        bytes: r.get::<_, i64>(8) as u64,
        total: match (r.get::<_, Option<i64>>(9), r.get::<_, Option<i64>>(10)) {
            (Some(e), Some(b)) => Some((e as u64, b as u64)),
            _ => None,
        },
        cancel: r.get(11),
    }
}

fn row_to_mount(r: &Row) -> MountRecord {
    let draining: String = r.get(7);
    MountRecord {
        id: r.get(0),
        node: r.get(1),
        pid: r.get::<_, i64>(2) as u32,
        mountpoint: r.get(3),
        started_at: r.get(4),
        lease_until: r.get(5),
        applied_rev: r.get::<_, i64>(6) as u64,
        draining: draining
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

/// A pooled connection, given back on drop unless it broke.
struct Conn<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
        {
            let mut idle = self.store.idle.lock();
            if idle.len() < POOL_IDLE {
                idle.push(c);
            }
        }
    }
}

impl PgStore {
    fn connect_conf(conf: &PgConf) -> Result<(MakeTlsConnector, Client)> {
        let tls = conf.tls().map_err(StoreError::BadConfig)?;
        let c = conf
            .config
            .connect(tls.clone())
            .map_err(|e| StoreError::Connect(conf.shown.clone(), e))?;
        Ok((tls, c))
    }

    /// Opens the store in the database named by `conninfo` (a URL or a
    /// libpq `key=value` string) and migrates it forward. A database
    /// without a vfolderfs store is [`StoreError::Missing`]: only
    /// [`PgStore::create`] makes one.
    pub fn open(conninfo: &str) -> Result<PgStore> {
        Self::open_with(conninfo, false).map(|(s, _)| s)
    }

    /// Makes the store in the database (its tables and a new store id) if
    /// it has none, and opens it; returns whether it was made.
    pub fn create(conninfo: &str) -> Result<(PgStore, bool)> {
        Self::open_with(conninfo, true)
    }

    fn open_with(conninfo: &str, create: bool) -> Result<(PgStore, bool)> {
        let conf = PgConf::parse(conninfo).map_err(StoreError::BadConfig)?;
        let (tls, mut c) = Self::connect_conf(&conf)?;
        let found = match pg_schema::migrate(&mut c, create) {
            Err(StoreError::Missing(_)) => return Err(StoreError::Missing(conf.shown.clone())),
            r => r?,
        };
        if found > 0 && found < pg_schema::latest_version() {
            log::info!(
                "{}: schema migrated from version {found} to {}",
                conf.shown,
                pg_schema::latest_version()
            );
        }
        let s = PgStore {
            conf,
            tls,
            idle: Mutex::new(vec![c]),
        };
        Ok((s, found == 0))
    }

    /// The connection string as shown in messages (no password).
    pub fn shown(&self) -> &str {
        &self.conf.shown
    }

    fn conn(&self) -> Result<Conn<'_>> {
        let pooled = {
            let mut idle = self.idle.lock();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match pooled {
            Some(c) => c,
            None => self
                .conf
                .config
                .connect(self.tls.clone())
                .map_err(|e| StoreError::Connect(self.conf.shown.clone(), e))?,
        };
        Ok(Conn {
            store: self,
            client: Some(client),
        })
    }

    /// Runs `f` in one transaction and commits it, again from the start
    /// when it lost a serialization race or a deadlock, or when a pooled
    /// connection turned out broken before anything was sent on it.
    fn tx<T>(
        &self,
        what: &'static str,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut c = self.conn()?;
            let started = match c.transaction() {
                Ok(mut tx) => Ok(f(&mut tx).and_then(|v| tx.commit().map(|_| v).map_err(pg(what)))),
                Err(e) => Err(e),
            };
            let r = match started {
                Ok(r) => r,
                Err(e) if attempt < 3 && (e.is_closed() || e.code().is_none()) => {
                    // A connection from before a restart: drop it, connect anew.
                    drop(c.client.take());
                    continue;
                }
                Err(e) => return Err(StoreError::Pg("starting a transaction", e)),
            };
            match r {
                Err(e)
                    if attempt < RETRIES
                        && matches!(
                            code(&e),
                            Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                                | Some(&SqlState::T_R_DEADLOCK_DETECTED)
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(1 + (attempt as u64 % 7) * 3));
                    continue;
                }
                r => return r,
            }
        }
    }

    /// A read at one point in time (REPEATABLE READ, read only).
    fn read<T>(&self, f: impl FnMut(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut f = f;
        self.tx("reading", |tx| {
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .map_err(pg("starting a read"))?;
            f(tx)
        })
    }

    /// The database's clock.
    fn now_in(tx: &mut Transaction<'_>) -> Result<Millis> {
        Ok(tx
            .query_one(&format!("SELECT {NOW_MS}"), &[])
            .map_err(pg("reading the database clock"))?
            .get(0))
    }

    fn get_in(tx: &mut Transaction<'_>, id: &str) -> Result<VFolder> {
        let r = tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM vfolders WHERE id = $1"),
                &[&id],
            )
            .map_err(pg("reading a vfolder"))?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        row_to_vfolder(&r)
    }

    /// The vfolder, its row locked until the end of the transaction.
    fn lock_in(tx: &mut Transaction<'_>, id: &str) -> Result<VFolder> {
        let r = tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM vfolders WHERE id = $1 FOR NO KEY UPDATE"),
                &[&id],
            )
            .map_err(pg("reading a vfolder"))?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        row_to_vfolder(&r)
    }

    fn check_unattached(tx: &mut Transaction<'_>, v: &VFolder, what: &'static str) -> Result<()> {
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM attachments WHERE vfolder_id = $1",
                &[&v.id],
            )
            .map_err(pg("counting attachments"))?
            .get(0);
        if count > 0 {
            return Err(StoreError::Attached {
                name: v.name.clone(),
                count: count as usize,
                what,
            });
        }
        Ok(())
    }

    /// Pins `id` against tiering with `cause`, or unpins it with `None`;
    /// whether anything changed.
    fn pin_in(tx: &mut Transaction<'_>, id: &str, cause: Option<&str>) -> Result<bool> {
        let n = match cause {
            Some(c) => tx.execute(
                &format!(
                    "INSERT INTO tier_pins (vfolder_id, pinned_at, cause) \
                     VALUES ($1, {NOW_MS}, $2) \
                     ON CONFLICT (vfolder_id) DO UPDATE SET pinned_at = {NOW_MS}, cause = $2"
                ),
                &[&id, &c],
            ),
            None => tx.execute("DELETE FROM tier_pins WHERE vfolder_id = $1", &[&id]),
        }
        .map_err(pg("recording a pin"))?;
        Ok(n > 0)
    }

    /// [`VolumeError::NotFound`] unless `volume` is the default or recorded.
    fn volume_known_in(tx: &mut Transaction<'_>, volume: &str) -> Result<()> {
        if volume == crate::catalog::DEFAULT_VOLUME {
            return Ok(());
        }
        let known: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM volumes WHERE name = $1)",
                &[&volume],
            )
            .map_err(pg("looking up a volume"))?
            .get(0);
        if known {
            Ok(())
        } else {
            Err(VolumeError::NotFound(volume.to_string()).into())
        }
    }

    /// The compare-and-set every status change goes through, with its
    /// history row and any extra columns (text or NULL) set in the same
    /// statement.
    fn transition_in(
        tx: &mut Transaction<'_>,
        id: &str,
        op: Op,
        args: &TransitionArgs<'_>,
        extra: &[(&'static str, Option<String>)],
    ) -> Result<VFolder> {
        if let Some(n) = args.new_name {
            checked_name(n)?;
        }
        let current = Self::lock_in(tx, id)?;
        if op.blocked_by_attachments() {
            Self::check_unattached(tx, &current, op.verb())?;
        }
        let from: Vec<String> = op
            .from_statuses()
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        let to = op.to_status().as_str().to_string();
        let now = Self::now_in(tx)?;
        let new_name = args.new_name.unwrap_or(&current.name).to_string();
        let error = args.error.map(str::to_string);
        let extra_sets: String = extra
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!(", {c} = ${}", i + 7))
            .collect();
        // A change decided on an earlier read (the trash retention's)
        // compares on that read's status time too.
        let since = match args.if_changed_at {
            Some(_) => format!(" AND status_changed_at = ${}", extra.len() + 7),
            None => String::new(),
        };
        let sql = format!(
            "UPDATE vfolders SET status = $1, status_changed_at = $2, name = $3, error = $4{extra_sets} \
             WHERE id = $5 AND status = ANY($6){since}"
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&to, &now, &new_name, &error, &id, &from];
        for (_, v) in extra {
            params.push(v);
        }
        if let Some(at) = &args.if_changed_at {
            params.push(at);
        }
        let changed = tx.execute(&sql, &params).map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken(new_name.clone())
            } else {
                StoreError::Pg("changing a status", e)
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
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &current.status.as_str(), &to, &now, &args.cause],
        )
        .map_err(pg("recording history"))?;
        Self::get_in(tx, id)
    }

    fn insert_in(
        tx: &mut Transaction<'_>,
        id: &str,
        name: &str,
        volume: &str,
        status: Status,
        clone_src: Option<&str>,
        cause: &str,
    ) -> Result<VFolder> {
        checked_name(name)?;
        Self::volume_known_in(tx, volume)?;
        let now = Self::now_in(tx)?;
        // A failed statement aborts the transaction: check the name first.
        let taken = tx
            .query_opt(
                "SELECT 1 FROM vfolders WHERE name = $1 AND status = ANY($2)",
                &[&name, &live_statuses()],
            )
            .map_err(pg("checking a name"))?
            .is_some();
        if taken {
            return Err(StoreError::NameTaken(name.to_string()));
        }
        tx.execute(
            "INSERT INTO vfolders (id, name, status, created_at, status_changed_at, volume, clone_src) \
             VALUES ($1, $2, $3, $4, $4, $5, $6)",
            &[&id, &name, &status.as_str(), &now, &volume, &clone_src],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken(name.to_string())
            } else {
                StoreError::Pg("creating a vfolder", e)
            }
        })?;
        tx.execute(
            "INSERT INTO status_history (vfolder_id, from_status, to_status, at, cause) \
             VALUES ($1, NULL, $2, $3, $4)",
            &[&id, &status.as_str(), &now, &cause],
        )
        .map_err(pg("recording history"))?;
        Self::get_in(tx, id)
    }

    fn job_in(tx: &mut Transaction<'_>, id: &str) -> Result<Option<Job>> {
        Ok(tx
            .query_opt(
                "SELECT j.vfolder_id, j.kind, j.owner, j.lease_until, j.started_at, j.claims, \
                 j.done, j.arg, coalesce(p.bytes, 0), p.total_entries, p.total_bytes, p.cancel_by \
                 FROM jobs j LEFT JOIN job_progress p ON p.vfolder_id = j.vfolder_id \
                 WHERE j.vfolder_id = $1",
                &[&id],
            )
            .map_err(pg("reading a job"))?
            .map(|r| row_to_job(&r)))
    }

    fn check_claim(tx: &mut Transaction<'_>, claim: &Claim) -> Result<()> {
        let held: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE vfolder_id = $1 AND owner = $2 \
                 AND kind = $3 AND claims = $4)",
                &[&claim.vfolder_id, &claim.owner, &claim.kind, &claim.token],
            )
            .map_err(pg("checking a job claim"))?
            .get(0);
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

    /// Runs `f` in a transaction only while `claim` still holds, checked
    /// in it with the vfolder's row locked (fencing).
    fn fenced<T>(
        &self,
        claim: &Claim,
        what: &'static str,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.tx(what, |tx| {
            Self::lock_in(tx, &claim.vfolder_id)?;
            Self::check_claim(tx, claim)?;
            f(tx)
        })
    }

    fn finish_clone_in(
        tx: &mut Transaction<'_>,
        dst: &str,
        error: Option<&str>,
        cause: &str,
    ) -> Result<VFolder> {
        let d = Self::lock_in(tx, dst)?;
        if let Some(src) = &d.clone_src {
            let src_args = TransitionArgs {
                cause,
                ..Default::default()
            };
            match Self::transition_in(tx, src, Op::CloneEnd, &src_args, &[]) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let op = Op::clone_end(error.is_some());
        let args = TransitionArgs {
            cause,
            error,
            ..Default::default()
        };
        Self::transition_in(tx, dst, op, &args, &[("clone_src", None)])
    }

    /// A connection that waits for announced changes ([`ChangeListener`]).
    pub fn listener(&self) -> ChangeListener {
        ChangeListener {
            conf: self.conf.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

/// The statuses that hold a name, as the SQL array the name check takes.
fn live_statuses() -> Vec<String> {
    Status::ALL
        .into_iter()
        .filter(|s| s.holds_name())
        .map(|s| s.as_str().to_string())
        .collect()
}

/// Waits for `NOTIFY`s of status changes on a connection of its own
/// (`LISTEN`), reconnecting after a failure; the watcher polls anyway, so
/// a missed notification only costs time.
pub struct ChangeListener {
    conf: PgConf,
    tls: MakeTlsConnector,
    client: Option<Client>,
}

impl ChangeListener {
    /// Waits up to `timeout` for a change to be announced; true if one was.
    /// An error (no connection) is returned after the wait, so a caller
    /// that loops does not spin.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            match self.conf.config.connect(self.tls.clone()) {
                Ok(mut c) => {
                    c.batch_execute(&format!("LISTEN {CHANNEL}"))
                        .map_err(pg("listening for changes"))?;
                    self.client = Some(c);
                    // Whatever happened before LISTEN counts as a change.
                    return Ok(true);
                }
                Err(e) => {
                    std::thread::sleep(timeout);
                    return Err(StoreError::Connect(self.conf.shown.clone(), e));
                }
            }
        }
        let c = self.client.as_mut().expect("connected above");
        let got = {
            let mut n = c.notifications();
            let first = n.timeout_iter(timeout).next();
            // Take what else is queued, without waiting.
            if matches!(first, Ok(Some(_))) {
                while let Ok(Some(_)) = n.iter().next() {}
            }
            first
        };
        match got {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => {
                self.client = None;
                Err(StoreError::Pg("waiting for changes", e))
            }
        }
    }
}

impl Store for PgStore {
    fn create(&self, id: &str, name: &str, volume: &str, cause: &str) -> Result<VFolder> {
        self.tx("committing a creation", |tx| {
            Self::insert_in(tx, id, name, volume, Status::Ready, None, cause)
        })
    }

    fn get(&self, id: &str) -> Result<VFolder> {
        self.read(|tx| Self::get_in(tx, id))
    }

    fn get_live(&self, name: &str) -> Result<VFolder> {
        self.read(|tx| {
            let rows = tx
                .query(
                    &format!("SELECT {COLUMNS} FROM vfolders WHERE name = $1 ORDER BY created_at"),
                    &[&name],
                )
                .map_err(pg("looking up a vfolder"))?;
            for r in rows {
                let v = row_to_vfolder(&r)?;
                if v.status.holds_name() {
                    return Ok(v);
                }
            }
            Err(StoreError::NotFound(name.to_string()))
        })
    }

    fn list(&self, filter: ListFilter) -> Result<Vec<VFolder>> {
        let statuses: Vec<String> = filter
            .statuses()
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        let sql = if filter == ListFilter::Work {
            format!(
                "SELECT {COLUMNS} FROM vfolders WHERE status = ANY($1) \
                 UNION SELECT {COLUMNS} FROM vfolders WHERE prev_volume IS NOT NULL \
                 ORDER BY name, created_at, id"
            )
        } else {
            format!(
                "SELECT {COLUMNS} FROM vfolders WHERE status = ANY($1) \
                 ORDER BY name, created_at, id"
            )
        };
        self.read(|tx| {
            tx.query(&sql, &[&statuses])
                .map_err(pg("listing vfolders"))?
                .iter()
                .map(row_to_vfolder)
                .collect()
        })
    }

    fn transition(&self, id: &str, op: Op, args: TransitionArgs<'_>) -> Result<VFolder> {
        self.tx("committing a status change", |tx| {
            Self::transition_in(tx, id, op, &args, &[])
        })
    }

    fn rename(&self, id: &str, new_name: &str) -> Result<VFolder> {
        checked_name(new_name)?;
        self.tx("committing a rename", |tx| {
            let current = Self::lock_in(tx, id)?;
            if !Action::Rename.allows(current.status) {
                return Err(StoreError::Refused {
                    name: current.name,
                    id: current.id,
                    status: current.status,
                    op: Action::Rename,
                });
            }
            Self::check_unattached(tx, &current, "rename")?;
            let taken = tx
                .query_opt(
                    "SELECT 1 FROM vfolders WHERE name = $1 AND id <> $2 AND status = ANY($3)",
                    &[&new_name, &id, &live_statuses()],
                )
                .map_err(pg("checking a name"))?
                .is_some();
            if taken {
                return Err(StoreError::NameTaken(new_name.to_string()));
            }
            tx.execute(
                "UPDATE vfolders SET name = $1 WHERE id = $2",
                &[&new_name, &id],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::NameTaken(new_name.to_string())
                } else {
                    StoreError::Pg("renaming a vfolder", e)
                }
            })?;
            Self::get_in(tx, id)
        })
    }

    fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        self.read(|tx| {
            Self::get_in(tx, id)?;
            let rows = tx
                .query(
                    "SELECT from_status, to_status, at, cause FROM status_history \
                     WHERE vfolder_id = $1 ORDER BY seq",
                    &[&id],
                )
                .map_err(pg("reading history"))?;
            let parse = |s: &str| {
                s.parse::<Status>()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            };
            rows.iter()
                .map(|r| {
                    let from: Option<String> = r.get(0);
                    Ok(HistoryEntry {
                        from: from.as_deref().map(parse).transpose()?,
                        to: parse(r.get::<_, &str>(1))?,
                        at: r.get(2),
                        cause: r.get(3),
                    })
                })
                .collect()
        })
    }

    fn store_id(&self) -> Result<Option<String>> {
        self.read(|tx| {
            Ok(tx
                .query_opt("SELECT value FROM store_info WHERE key = 'id'", &[])
                .map_err(pg("reading the store id"))?
                .map(|r| r.get(0)))
        })
    }

    fn change_token(&self) -> Result<u64> {
        let mut c = self.conn()?;
        let r = c
            .query_one(
                "SELECT sum(value)::bigint FROM store_meta WHERE key IN ('rev', 'vfolder_deletions')",
                &[],
            )
            .map_err(pg("polling for changes"))?;
        // Both counters only grow: their sum moves whenever either does.
        Ok(r.get::<_, i64>(0) as u64)
    }

    fn changes_since(&self, rev: u64) -> Result<Changes> {
        self.read(|tx| {
            let rows = tx
                .query(
                    &format!("SELECT {COLUMNS} FROM vfolders WHERE rev > $1 ORDER BY rev"),
                    &[&(rev as i64)],
                )
                .map_err(pg("reading changes"))?
                .iter()
                .map(row_to_vfolder)
                .collect::<Result<Vec<_>>>()?;
            let r = tx
                .query_one(
                    "SELECT (SELECT value FROM store_meta WHERE key = 'rev'), \
                            (SELECT value FROM store_meta WHERE key = 'vfolder_deletions')",
                    &[],
                )
                .map_err(pg("reading changes"))?;
            Ok(Changes {
                rows,
                rev: r.get::<_, i64>(0) as u64,
                deletions: r.get::<_, i64>(1) as u64,
            })
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
        self.tx("recording a size", |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO vfolder_sizes (vfolder_id, bytes, files, measured_at) \
                     SELECT $1, $2, $3, {NOW_MS} WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = $1) \
                     ON CONFLICT (vfolder_id) DO UPDATE SET bytes = $2, files = $3, measured_at = {NOW_MS}"
                ),
                &[&id, &(bytes as i64), &(files as i64)],
            )
            .map_err(pg("recording a size"))?;
            Ok(())
        })
    }

    fn sizes(&self) -> Result<std::collections::HashMap<String, super::Size>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT vfolder_id, bytes, files, measured_at FROM vfolder_sizes",
                    &[],
                )
                .map_err(pg("reading sizes"))?
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        super::Size {
                            bytes: r.get::<_, i64>(1) as u64,
                            files: r.get::<_, i64>(2) as u64,
                            at: r.get(3),
                        },
                    )
                })
                .collect())
        })
    }

    fn trash_retention(&self) -> Result<Option<Duration>> {
        let v: Option<String> = self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT value FROM store_info WHERE key = 'trash_retention_secs'",
                    &[],
                )
                .map_err(pg("reading the trash retention"))?
                .map(|r| r.get(0)))
        })?;
        super::retention_from_setting(v.as_deref())
    }

    fn set_trash_retention(&self, keep: Option<Duration>) -> Result<()> {
        let secs = super::retention_setting(keep);
        self.tx("setting the trash retention", |tx| {
            tx.execute(
                "INSERT INTO store_info (key, value) VALUES ('trash_retention_secs', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&secs],
            )
            .map_err(pg("setting the trash retention"))?;
            Ok(())
        })
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

    fn volume_tiers(&self) -> Result<Vec<super::VolumeTier>> {
        type Row = (String, Option<String>, Option<i32>, Option<i32>);
        let rows: Vec<Row> = self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT volume, tier, high_watermark, low_watermark FROM volume_tiers \
                     WHERE volume = $1 OR volume IN (SELECT name FROM volumes) ORDER BY volume",
                    &[&crate::catalog::DEFAULT_VOLUME],
                )
                .map_err(pg("reading volume tiers"))?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect())
        })?;
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
        self.tx("recording a volume tier", |tx| {
            Self::volume_known_in(tx, &t.volume)?;
            tx.execute(
                "INSERT INTO volume_tiers (volume, tier, high_watermark, low_watermark) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (volume) DO UPDATE SET tier = $2, \
                 high_watermark = $3, low_watermark = $4",
                &[
                    &t.volume,
                    &t.tier.map(|t| t.as_str()),
                    &t.high_watermark.map(i32::from),
                    &t.low_watermark.map(i32::from),
                ],
            )
            .map_err(pg("recording a volume tier"))?;
            Ok(())
        })
    }

    fn record_usage(&self, batch: &[super::UsageDelta]) -> Result<()> {
        // One statement per table for the whole batch (arrays unnested), in
        // one order (by vfolder) so that two mounts' batches cannot deadlock.
        let mut b: Vec<&super::UsageDelta> = batch.iter().collect();
        b.sort_by(|x, y| (&x.vfolder_id, x.day).cmp(&(&y.vfolder_id, y.day)));
        b.dedup_by(|x, y| x.vfolder_id == y.vfolder_id && x.day == y.day);
        let ids: Vec<&str> = b.iter().map(|d| d.vfolder_id.as_str()).collect();
        let days: Vec<i64> = b.iter().map(|d| d.day).collect();
        let opens: Vec<i64> = b.iter().map(|d| d.opens as i64).collect();
        let read: Vec<i64> = b.iter().map(|d| d.bytes_read as i64).collect();
        let written: Vec<i64> = b.iter().map(|d| d.bytes_written as i64).collect();
        let at: Vec<i64> = b.iter().map(|d| d.at).collect();
        self.tx("committing usage", |tx| {
            tx.execute(
                "INSERT INTO vfolder_usage AS u (vfolder_id, day, opens, bytes_read, bytes_written) \
                 SELECT n.id, n.day, n.o, n.r, n.w \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) \
                      AS n(id, day, o, r, w) \
                 WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = n.id) ORDER BY n.id, n.day \
                 ON CONFLICT (vfolder_id, day) DO UPDATE SET opens = u.opens + excluded.opens, \
                 bytes_read = u.bytes_read + excluded.bytes_read, \
                 bytes_written = u.bytes_written + excluded.bytes_written",
                &[&ids, &days, &opens, &read, &written],
            )
            .map_err(pg("recording usage"))?;
            tx.execute(
                "INSERT INTO vfolder_access AS a (vfolder_id, last_access) \
                 SELECT n.id, max(n.at) FROM unnest($1::text[], $2::bigint[]) AS n(id, at) \
                 WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = n.id) GROUP BY n.id ORDER BY n.id \
                 ON CONFLICT (vfolder_id) DO UPDATE \
                 SET last_access = GREATEST(a.last_access, excluded.last_access)",
                &[&ids, &at],
            )
            .map_err(pg("recording usage"))?;
            Ok(())
        })
    }

    fn usage_since(&self, day: i64, vfolder: Option<&str>) -> Result<Vec<super::UsageDay>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT vfolder_id, day, opens, bytes_read, bytes_written FROM vfolder_usage \
                     WHERE day >= $1 AND ($2::text IS NULL OR vfolder_id = $2) \
                     ORDER BY vfolder_id, day",
                    &[&day, &vfolder],
                )
                .map_err(pg("reading usage"))?
                .iter()
                .map(|r| super::UsageDay {
                    vfolder_id: r.get(0),
                    day: r.get(1),
                    opens: r.get::<_, i64>(2) as u64,
                    bytes_read: r.get::<_, i64>(3) as u64,
                    bytes_written: r.get::<_, i64>(4) as u64,
                })
                .collect())
        })
    }

    fn last_access(
        &self,
        vfolder: Option<&str>,
    ) -> Result<std::collections::HashMap<String, Millis>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT vfolder_id, last_access FROM vfolder_access \
                     WHERE $1::text IS NULL OR vfolder_id = $1",
                    &[&vfolder],
                )
                .map_err(pg("reading last accesses"))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn pins(&self) -> Result<Vec<super::Pin>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT vfolder_id, pinned_at, cause FROM tier_pins ORDER BY vfolder_id",
                    &[],
                )
                .map_err(pg("reading pins"))?
                .iter()
                .map(|r| super::Pin {
                    vfolder_id: r.get(0),
                    at: r.get(1),
                    cause: r.get(2),
                })
                .collect())
        })
    }

    fn set_pin(&self, id: &str, cause: Option<&str>) -> Result<bool> {
        self.tx("recording a pin", |tx| {
            // The row lock orders a pin against a relocation's start.
            Self::lock_in(tx, id)?;
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
        self.tx("starting a relocation", |tx| {
            let v = Self::lock_in(tx, id)?;
            if let Some(volume) = v.prev_volume {
                return Err(StoreError::OldCopyPending {
                    name: v.name,
                    volume,
                });
            }
            if start == RelocationStart::Tier {
                let pinned: Option<String> = tx
                    .query_opt("SELECT cause FROM tier_pins WHERE vfolder_id = $1", &[&id])
                    .map_err(pg("reading a pin"))?
                    .map(|r| r.get(0));
                if let Some(cause) = pinned {
                    return Err(StoreError::Pinned {
                        name: v.name,
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
        self.read(|tx| {
            Ok(tx
                .query_opt("SELECT value FROM store_info WHERE key = $1", &[&key])
                .map_err(pg("reading a setting"))?
                .map(|r| r.get(0)))
        })
    }

    fn swap_setting(&self, key: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool> {
        self.tx("changing a setting", |tx| {
            // Serialises swaps of one key, also of one not set yet.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('vfolderfs setting ' || $1))",
                &[&key],
            )
            .map_err(pg("locking a setting"))?;
            let cur: Option<String> = tx
                .query_opt("SELECT value FROM store_info WHERE key = $1", &[&key])
                .map_err(pg("reading a setting"))?
                .map(|r| r.get(0));
            if cur.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(v) => tx.execute(
                    "INSERT INTO store_info (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&key, &v],
                ),
                None => tx.execute("DELETE FROM store_info WHERE key = $1", &[&key]),
            }
            .map_err(pg("changing a setting"))?;
            Ok(true)
        })
    }

    fn audit(&self) -> Result<Vec<AuditEntry>> {
        audit::audit(self)
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
        self.read(|tx| {
            tx.query_opt("SELECT rev FROM vfolders WHERE id = $1", &[&id])
                .map_err(pg("reading a change position"))?
                .map(|r| r.get::<_, i64>(0) as u64)
                .ok_or_else(|| StoreError::NotFound(id.to_string()))
        })
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

    fn change_listener(&self) -> Option<Box<dyn FnMut(Duration) -> bool + Send>> {
        let mut l = self.listener();
        Some(Box::new(move |timeout| match l.wait(timeout) {
            Ok(b) => b,
            Err(e) => {
                log::debug!("change notifications: {e}");
                false
            }
        }))
    }
}
