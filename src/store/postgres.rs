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
    Result, Store, StoreError, TransitionArgs, VFolder,
};
use crate::name;
use crate::status::{Op, Status};
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
                op,
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
            if !current.status.is_renamable() {
                return Err(StoreError::RenameRefused {
                    name: current.name,
                    status: current.status,
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
        let lease_ms = lease.as_millis() as i64;
        self.tx("committing a claim", |tx| {
            Self::lock_in(tx, id)?;
            let now = Self::now_in(tx)?;
            let until = now + lease_ms;
            match Self::job_in(tx, id)? {
                None => {
                    tx.execute(
                        "INSERT INTO jobs (vfolder_id, kind, owner, lease_until, started_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&id, &kind, &owner, &until, &now],
                    )
                    .map_err(pg("claiming a job"))?;
                }
                Some(j) if j.owner == owner => {
                    tx.execute(
                        "UPDATE jobs SET lease_until = $2 WHERE vfolder_id = $1",
                        &[&id, &until],
                    )
                    .map_err(pg("claiming a job"))?;
                }
                Some(j) if j.owner.is_empty() || j.lease_until < now || holder_dead(&j.owner) => {
                    tx.execute(
                        "UPDATE jobs SET owner = $2, lease_until = $3, kind = $4, \
                         claims = claims + 1 WHERE vfolder_id = $1",
                        &[&id, &owner, &until, &kind],
                    )
                    .map_err(pg("claiming a job"))?;
                }
                Some(_) => return Ok(None),
            }
            Self::job_in(tx, id)
        })
    }

    fn queue_job(&self, id: &str, kind: &str, arg: Option<&str>) -> Result<()> {
        self.tx("queueing a job", |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO jobs (vfolder_id, kind, owner, lease_until, started_at, claims, arg) \
                     VALUES ($1, $2, '', 0, {NOW_MS}, 0, $3) \
                     ON CONFLICT (vfolder_id) DO UPDATE SET kind = $2, arg = $3"
                ),
                &[&id, &kind, &arg],
            )
            .map_err(pg("queueing a job"))?;
            Ok(())
        })
    }

    fn renew_job(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        done: u64,
        bytes: u64,
    ) -> Result<bool> {
        let lease_ms = lease.as_millis() as i64;
        self.tx("renewing a job", |tx| {
            let n = tx
                .execute(
                    &format!(
                        "UPDATE jobs SET lease_until = {NOW_MS} + $3, done = $4 \
                         WHERE vfolder_id = $1 AND owner = $2"
                    ),
                    &[&id, &owner, &lease_ms, &(done as i64)],
                )
                .map_err(pg("renewing a job"))?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO job_progress (vfolder_id, bytes) VALUES ($1, $2) \
                     ON CONFLICT (vfolder_id) DO UPDATE SET bytes = $2",
                    &[&id, &(bytes as i64)],
                )
                .map_err(pg("renewing a job"))?;
            }
            Ok(n == 1)
        })
    }

    fn set_job_totals(&self, id: &str, owner: &str, entries: u64, bytes: u64) -> Result<bool> {
        self.tx("recording a job's totals", |tx| {
            let n = tx
                .execute(
                    "INSERT INTO job_progress (vfolder_id, total_entries, total_bytes) \
                     SELECT $1, $3, $4 WHERE EXISTS \
                         (SELECT 1 FROM jobs WHERE vfolder_id = $1 AND owner = $2) \
                     ON CONFLICT (vfolder_id) DO UPDATE SET total_entries = $3, total_bytes = $4",
                    &[&id, &owner, &(entries as i64), &(bytes as i64)],
                )
                .map_err(pg("recording a job's totals"))?;
            Ok(n == 1)
        })
    }

    fn set_job_cancel(&self, id: &str, by: Option<&str>) -> Result<bool> {
        self.tx("recording a job's cancellation", |tx| {
            if Self::job_in(tx, id)?.is_none() {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO job_progress (vfolder_id, cancel_by) VALUES ($1, $2) \
                 ON CONFLICT (vfolder_id) DO UPDATE SET cancel_by = $2",
                &[&id, &by],
            )
            .map_err(pg("recording a job's cancellation"))?;
            Ok(true)
        })
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
        let sql = if finished {
            "DELETE FROM jobs WHERE vfolder_id = $1 AND owner = $2"
        } else {
            "UPDATE jobs SET lease_until = 0 WHERE vfolder_id = $1 AND owner = $2"
        };
        self.tx("releasing a job", |tx| {
            tx.execute(sql, &[&id, &owner])
                .map_err(pg("releasing a job"))?;
            Ok(())
        })
    }

    fn job(&self, id: &str) -> Result<Option<Job>> {
        self.read(|tx| Self::job_in(tx, id))
    }

    fn forget_purged(&self, before: Millis) -> Result<Vec<AuditEntry>> {
        self.tx("committing gc", |tx| {
            let now = Self::now_in(tx)?;
            let victims = tx
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM vfolders WHERE status = $1 AND status_changed_at < $2 \
                         ORDER BY id FOR UPDATE"
                    ),
                    &[&Status::DeleteComplete.as_str(), &before],
                )
                .map_err(pg("finding purged vfolders"))?
                .iter()
                .map(row_to_vfolder)
                .collect::<Result<Vec<_>>>()?;
            let mut out = Vec::new();
            for v in victims {
                let history: Vec<serde_json::Value> = tx
                    .query(
                        "SELECT from_status, to_status, at, cause FROM status_history \
                         WHERE vfolder_id = $1 ORDER BY seq",
                        &[&v.id],
                    )
                    .map_err(pg("reading history"))?
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "from": r.get::<_, Option<String>>(0),
                            "to": r.get::<_, String>(1),
                            "at": r.get::<_, Millis>(2),
                            "cause": r.get::<_, String>(3),
                        })
                    })
                    .collect();
                let e = AuditEntry {
                    id: v.id.clone(),
                    name: v.name.clone(),
                    created_at: v.created_at,
                    purged_at: v.status_changed_at,
                    forgotten_at: now,
                    history: serde_json::Value::Array(history).to_string(),
                };
                tx.execute(
                    "INSERT INTO audit (vfolder_id, name, created_at, purged_at, forgotten_at, history) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&e.id, &e.name, &e.created_at, &e.purged_at, &e.forgotten_at, &e.history],
                )
                .map_err(pg("writing the audit"))?;
                tx.execute("DELETE FROM vfolders WHERE id = $1", &[&v.id])
                    .map_err(pg("forgetting a vfolder"))?;
                out.push(e);
            }
            Ok(out)
        })
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
            // The row lock orders a pin against a tier move's start.
            Self::lock_in(tx, id)?;
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
        })
    }

    fn start_tier_move(&self, id: &str, to: &str, cause: &str) -> Result<VFolder> {
        self.tx("starting a tier move", |tx| {
            let v = Self::lock_in(tx, id)?;
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
            tx.execute(
                &format!(
                    "INSERT INTO jobs (vfolder_id, kind, owner, lease_until, started_at, claims, arg) \
                     VALUES ($1, $2, '', 0, {NOW_MS}, 0, $3) \
                     ON CONFLICT (vfolder_id) DO UPDATE SET kind = $2, arg = $3"
                ),
                &[&id, &crate::workers::relocate::KIND, &to],
            )
            .map_err(pg("queueing a job"))?;
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
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT vfolder_id, name, created_at, purged_at, forgotten_at, history \
                     FROM audit ORDER BY seq",
                    &[],
                )
                .map_err(pg("reading the audit"))?
                .iter()
                .map(|r| AuditEntry {
                    id: r.get(0),
                    name: r.get(1),
                    created_at: r.get(2),
                    purged_at: r.get(3),
                    forgotten_at: r.get(4),
                    history: r.get(5),
                })
                .collect())
        })
    }

    fn begin_clone(
        &self,
        src: &str,
        dst_id: &str,
        dst_name: &str,
        volume: &str,
        cause: &str,
    ) -> Result<(VFolder, VFolder)> {
        self.tx("committing a clone start", |tx| {
            let args = TransitionArgs {
                cause,
                ..Default::default()
            };
            let s = Self::transition_in(tx, src, Op::CloneStart, &args, &[])?;
            let d = Self::insert_in(
                tx,
                dst_id,
                dst_name,
                volume,
                Status::Cloning,
                Some(src),
                cause,
            )?;
            Ok((s, d))
        })
    }

    fn confirm_claim(&self, claim: &Claim, lease: Duration) -> Result<()> {
        let lease_ms = lease.as_millis() as i64;
        self.fenced(claim, "committing a claim check", |tx| {
            tx.execute(
                &format!("UPDATE jobs SET lease_until = {NOW_MS} + $2 WHERE vfolder_id = $1"),
                &[&claim.vfolder_id, &lease_ms],
            )
            .map_err(pg("renewing a job"))?;
            Ok(())
        })
    }

    fn finish_purge(&self, claim: &Claim, error: Option<&str>, cause: &str) -> Result<VFolder> {
        let op = Op::purge_end(error.is_some());
        let args = TransitionArgs {
            cause,
            error,
            ..Default::default()
        };
        self.fenced(claim, "committing a purge end", |tx| {
            Self::transition_in(tx, &claim.vfolder_id, op, &args, &[])
        })
    }

    fn finish_clone(&self, claim: &Claim, error: Option<&str>, cause: &str) -> Result<VFolder> {
        self.fenced(claim, "committing a clone end", |tx| {
            Self::finish_clone_in(tx, &claim.vfolder_id, error, cause)
        })
    }

    fn switch_volume(&self, claim: &Claim, volume: Option<&str>, cause: &str) -> Result<VFolder> {
        let id = claim.vfolder_id.as_str();
        self.fenced(claim, "committing a relocation", |tx| {
            let cur = Self::get_in(tx, id)?;
            let args = TransitionArgs {
                cause,
                ..Default::default()
            };
            let extra = match volume {
                Some(new) if new != cur.volume => {
                    Self::volume_known_in(tx, new)?;
                    // A bind would be left showing the old copy, which is
                    // removed next (attaching is refused while performing;
                    // this holds the line for older records too).
                    Self::check_unattached(tx, &cur, "switch the volume of")?;
                    vec![
                        ("volume", Some(new.to_string())),
                        ("prev_volume", Some(cur.volume.clone())),
                    ]
                }
                _ => vec![],
            };
            Self::transition_in(tx, id, Op::RelocateEnd, &args, &extra)
        })
    }

    fn clear_prev_volume(&self, claim: &Claim) -> Result<()> {
        self.fenced(claim, "clearing a relocation", |tx| {
            tx.execute(
                "UPDATE vfolders SET prev_volume = NULL WHERE id = $1",
                &[&claim.vfolder_id],
            )
            .map_err(pg("clearing a relocation"))?;
            Ok(())
        })
    }

    fn add_volume(&self, name: &str, path: &str) -> Result<()> {
        checked_name(name)?;
        if name == crate::catalog::DEFAULT_VOLUME {
            return Err(VolumeError::Exists(name.to_string()).into());
        }
        self.tx("adding a volume", |tx| {
            // Volumes change rarely: one at a time, so the check holds.
            tx.execute("LOCK TABLE volumes IN SHARE ROW EXCLUSIVE MODE", &[])
                .map_err(pg("adding a volume"))?;
            let holder = tx
                .query_opt(
                    "SELECT name, path FROM volumes WHERE name = $1 OR path = $2",
                    &[&name, &path],
                )
                .map_err(pg("adding a volume"))?
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
            match holder {
                Some((n, _)) if n == name => return Err(VolumeError::Exists(n).into()),
                Some((by, p)) => return Err(VolumeError::PathTaken { path: p, by }.into()),
                None => {}
            }
            tx.execute(
                &format!("INSERT INTO volumes (name, path, created_at) VALUES ($1, $2, {NOW_MS})"),
                &[&name, &path],
            )
            .map_err(pg("adding a volume"))?;
            Ok(())
        })
    }

    fn remove_volume(&self, name: &str) -> Result<()> {
        if name == crate::catalog::DEFAULT_VOLUME {
            return Err(VolumeError::Default.into());
        }
        self.tx("removing a volume", |tx| {
            tx.execute("LOCK TABLE volumes IN SHARE ROW EXCLUSIVE MODE", &[])
                .map_err(pg("removing a volume"))?;
            Self::volume_known_in(tx, name)?;
            // Rows that would start using it wait for this lock (their
            // volume check reads `volumes`); rows already using it count.
            let users: Vec<String> = tx
                .query(
                    "SELECT name || ' (' || status || ')' FROM vfolders \
                     WHERE volume = $1 OR prev_volume = $1 \
                     OR id IN (SELECT vfolder_id FROM jobs WHERE arg = $1) \
                     ORDER BY name",
                    &[&name],
                )
                .map_err(pg("checking a volume's vfolders"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !users.is_empty() {
                return Err(VolumeError::InUse {
                    name: name.to_string(),
                    count: users.len(),
                    examples: users.into_iter().take(5).collect(),
                }
                .into());
            }
            tx.execute("DELETE FROM volumes WHERE name = $1", &[&name])
                .map_err(pg("removing a volume"))?;
            Ok(())
        })
    }

    fn volumes(&self) -> Result<Vec<(String, String)>> {
        self.read(|tx| {
            Ok(tx
                .query("SELECT name, path FROM volumes ORDER BY name", &[])
                .map_err(pg("listing volumes"))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn record_opens(&self, owner: &str, counts: &[(String, u64)]) -> Result<()> {
        self.tx("committing open counts", |tx| {
            for (id, n) in counts {
                // A vfolder forgotten meanwhile has nothing to count.
                tx.execute(
                    &format!(
                        "INSERT INTO open_counts (vfolder_id, owner, opens, updated_at) \
                         SELECT $1, $2, $3, {NOW_MS} WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = $1) \
                         ON CONFLICT (vfolder_id, owner) DO UPDATE SET opens = $3, updated_at = {NOW_MS}"
                    ),
                    &[id, &owner, &(*n as i64)],
                )
                .map_err(pg("recording open counts"))?;
            }
            Ok(())
        })
    }

    fn opens(&self) -> Result<std::collections::HashMap<String, u64>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT vfolder_id, sum(opens)::bigint FROM open_counts GROUP BY vfolder_id",
                    &[],
                )
                .map_err(pg("reading open counts"))?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
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
        self.tx("committing an attachment", |tx| {
            let v = Self::lock_in(tx, id)?;
            let allowed = if read_only {
                v.status.is_mountable_read_only()
            } else {
                v.status.is_mountable()
            };
            // A clone's target is cloning too, but its data is still being
            // copied, and an aborted clone purges it.
            let target_of_clone = v.status.is_cloning() && v.clone_src.is_some();
            if !allowed || target_of_clone {
                return Err(StoreError::NotMountable {
                    name: v.name,
                    status: v.status,
                    read_only,
                    why: target_of_clone.then_some(
                        "it is the target of a clone still copying; attach once it is ready",
                    ),
                });
            }
            let now = Self::now_in(tx)?;
            let ns = mnt_ns as i64;
            let node = crate::enforce::node_name();
            let taken = tx
                .query_opt(
                    "SELECT 1 FROM attachments WHERE node = $1 AND mnt_ns = $2 AND target = $3",
                    &[&node, &ns, &target],
                )
                .map_err(pg("recording an attachment"))?
                .is_some();
            if taken {
                return Err(StoreError::TargetTaken(target.to_string()));
            }
            let seq: i64 = tx
                .query_one(
                    "INSERT INTO attachments (vfolder_id, session, target, read_only, mnt_ns, source, created_at, node) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
                    &[&id, &session, &target, &read_only, &ns, &source, &now, &node],
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::TargetTaken(target.to_string())
                    } else {
                        StoreError::Pg("recording an attachment", e)
                    }
                })?
                .get(0);
            if let Some(who) = pending {
                tx.execute(
                    "INSERT INTO attachment_pending (seq, attacher) VALUES ($1, $2) \
                     ON CONFLICT (seq) DO UPDATE SET attacher = $2",
                    &[&seq, &who],
                )
                .map_err(pg("recording an attachment"))?;
            }
            Ok(Attachment {
                seq,
                pending: pending.map(str::to_string),
                vfolder_id: id.to_string(),
                session: session.to_string(),
                target: target.to_string(),
                read_only,
                mnt_ns,
                node: node.clone(),
                source: source.to_string(),
                created_at: now,
            })
        })
    }

    fn confirm_attachment(&self, seq: i64) -> Result<bool> {
        self.tx("confirming an attachment", |tx| {
            tx.execute("DELETE FROM attachment_pending WHERE seq = $1", &[&seq])
                .map_err(pg("confirming an attachment"))?;
            // Confirmed only if the record is still there (a prune may
            // have removed it between the record and the bind).
            Ok(tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM attachments WHERE seq = $1)",
                    &[&seq],
                )
                .map_err(pg("confirming an attachment"))?
                .get(0))
        })
    }

    fn detach(&self, seq: i64) -> Result<bool> {
        self.tx("removing an attachment", |tx| {
            Ok(tx
                .execute("DELETE FROM attachments WHERE seq = $1", &[&seq])
                .map_err(pg("removing an attachment"))?
                == 1)
        })
    }

    fn attachments(&self, vfolder: Option<&str>) -> Result<Vec<Attachment>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT a.seq, vfolder_id, session, target, read_only, mnt_ns, source, created_at, \
                     node, p.attacher FROM attachments a \
                     LEFT JOIN attachment_pending p ON p.seq = a.seq \
                     WHERE $1::text IS NULL OR vfolder_id = $1 ORDER BY a.seq",
                    &[&vfolder],
                )
                .map_err(pg("listing attachments"))?
                .iter()
                .map(|r| Attachment {
                    seq: r.get(0),
                    vfolder_id: r.get(1),
                    session: r.get(2),
                    target: r.get(3),
                    read_only: r.get(4),
                    mnt_ns: r.get::<_, i64>(5) as u64,
                    node: r.get(8),
                    source: r.get(6),
                    created_at: r.get(7),
                    pending: r.get(9),
                })
                .collect())
        })
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
        let lease_ms = lease.as_millis() as i64;
        self.tx("committing a mount", |tx| {
            let now = Self::now_in(tx)?;
            tx.execute(
                "DELETE FROM mounts WHERE lease_until < $1",
                &[&(now - 3_600_000)],
            )
            .map_err(pg("forgetting lapsed mounts"))?;
            tx.execute(
                "INSERT INTO mounts (id, node, pid, mountpoint, started_at, lease_until, applied_rev, draining) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET lease_until = $6, applied_rev = $7, draining = $8",
                &[
                    &m.id,
                    &m.node,
                    &(m.pid as i64),
                    &m.mountpoint,
                    &m.started_at,
                    &(now + lease_ms),
                    &(m.applied_rev as i64),
                    &m.draining.join(","),
                ],
            )
            .map_err(pg("registering a mount"))?;
            Ok(())
        })
    }

    fn renew_mount(
        &self,
        id: &str,
        applied_rev: u64,
        draining: &[String],
        lease: Duration,
    ) -> Result<bool> {
        let lease_ms = lease.as_millis() as i64;
        let draining = draining.join(",");
        self.tx("renewing a mount's lease", |tx| {
            // One statement on the database's clock: extended only while it holds.
            let n = tx
                .execute(
                    &format!(
                        "UPDATE mounts SET lease_until = {NOW_MS} + $2, applied_rev = $3, draining = $4 \
                         WHERE id = $1 AND lease_until >= {NOW_MS}"
                    ),
                    &[&id, &lease_ms, &(applied_rev as i64), &draining],
                )
                .map_err(pg("renewing a mount's lease"))?;
            Ok(n == 1)
        })
    }

    fn remove_mount(&self, id: &str) -> Result<()> {
        self.tx("forgetting a mount", |tx| {
            tx.execute("DELETE FROM mounts WHERE id = $1", &[&id])
                .map_err(pg("forgetting a mount"))?;
            Ok(())
        })
    }

    fn mounts(&self) -> Result<(Millis, Vec<MountRecord>)> {
        self.read(|tx| {
            let now = Self::now_in(tx)?;
            let v = tx
                .query(
                    "SELECT id, node, pid, mountpoint, started_at, lease_until, applied_rev, draining \
                     FROM mounts ORDER BY started_at, id",
                    &[],
                )
                .map_err(pg("listing mounts"))?
                .iter()
                .map(row_to_mount)
                .collect();
            Ok((now, v))
        })
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
