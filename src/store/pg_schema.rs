//! The PostgreSQL schema and its forward migrations, versioned in the
//! `vfolderfs_schema` table. The same tables as the SQLite schema
//! ([`super::schema`]) at its latest version, in PostgreSQL's types; every
//! time is the database's clock in milliseconds since the epoch.

use postgres::Client;

use super::{Result, StoreError};
use crate::status::Status;

/// The database's clock, in the store's time unit.
pub const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The channel a status change is announced on (`LISTEN`).
pub const CHANNEL: &str = "vfolderfs_changes";

/// One migration per schema version; index `i` takes version `i` to `i + 1`.
fn migrations() -> Vec<String> {
    let live: Vec<String> = Status::ALL
        .into_iter()
        .filter(|s| s.holds_name())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let all: Vec<String> = Status::ALL
        .into_iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    vec![
        format!(
            "CREATE TABLE store_info (
             key         TEXT PRIMARY KEY,
             value       TEXT NOT NULL
         );
         INSERT INTO store_info (key, value) VALUES ('id', '{store_id}');
         -- The change feed's counters. Every insert or update of a vfolder
         -- takes the next 'rev' under this row's lock, held to its commit,
         -- so revisions become visible in order: a reader that has seen rev
         -- R has seen every change numbered below R.
         CREATE TABLE store_meta (
             key         TEXT PRIMARY KEY,
             value       BIGINT NOT NULL
         );
         INSERT INTO store_meta (key, value) VALUES ('rev', 0), ('vfolder_deletions', 0);
         CREATE TABLE vfolders (
             id                TEXT PRIMARY KEY,
             name              TEXT NOT NULL,
             status            TEXT NOT NULL CHECK (status IN ({all})),
             created_at        BIGINT NOT NULL,
             status_changed_at BIGINT NOT NULL,
             error             TEXT,
             volume            TEXT NOT NULL DEFAULT 'default',
             prev_volume       TEXT,
             clone_src         TEXT,
             rev               BIGINT NOT NULL DEFAULT 0
         );
         CREATE UNIQUE INDEX vfolders_live_name ON vfolders(name) WHERE status IN ({live});
         CREATE INDEX vfolders_status ON vfolders(status);
         CREATE INDEX vfolders_prev_volume ON vfolders(id) WHERE prev_volume IS NOT NULL;
         CREATE INDEX vfolders_rev ON vfolders(rev);
         CREATE FUNCTION vfolders_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE store_meta SET value = value + 1 WHERE key = 'rev' RETURNING value INTO NEW.rev;
             PERFORM pg_notify('{channel}', NEW.rev::text);
             RETURN NEW;
         END $$;
         CREATE TRIGGER vfolders_stamp BEFORE INSERT OR UPDATE ON vfolders
             FOR EACH ROW EXECUTE FUNCTION vfolders_stamp();
         CREATE FUNCTION vfolders_count_deletion() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE store_meta SET value = value + 1 WHERE key = 'vfolder_deletions';
             PERFORM pg_notify('{channel}', 'deleted');
             RETURN OLD;
         END $$;
         CREATE TRIGGER vfolders_deleted AFTER DELETE ON vfolders
             FOR EACH ROW EXECUTE FUNCTION vfolders_count_deletion();
         CREATE TABLE status_history (
             seq         BIGSERIAL PRIMARY KEY,
             vfolder_id  TEXT NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
             from_status TEXT,
             to_status   TEXT NOT NULL,
             at          BIGINT NOT NULL,
             cause       TEXT NOT NULL
         );
         CREATE INDEX status_history_vfolder ON status_history(vfolder_id, seq);
         CREATE TABLE jobs (
             vfolder_id  TEXT PRIMARY KEY REFERENCES vfolders(id) ON DELETE CASCADE,
             kind        TEXT NOT NULL,
             owner       TEXT NOT NULL,
             lease_until BIGINT NOT NULL,
             started_at  BIGINT NOT NULL,
             claims      BIGINT NOT NULL DEFAULT 1,
             done        BIGINT NOT NULL DEFAULT 0,
             arg         TEXT
         );
         CREATE TABLE audit (
             seq          BIGSERIAL PRIMARY KEY,
             vfolder_id   TEXT NOT NULL,
             name         TEXT NOT NULL,
             created_at   BIGINT NOT NULL,
             purged_at    BIGINT NOT NULL,
             forgotten_at BIGINT NOT NULL,
             history      TEXT NOT NULL
         );
         CREATE TABLE attachments (
             seq         BIGSERIAL PRIMARY KEY,
             vfolder_id  TEXT NOT NULL REFERENCES vfolders(id),
             session     TEXT NOT NULL,
             target      TEXT NOT NULL,
             read_only   BOOLEAN NOT NULL,
             mnt_ns      BIGINT NOT NULL,
             source      TEXT NOT NULL,
             created_at  BIGINT NOT NULL,
             node        TEXT NOT NULL,
             UNIQUE (node, mnt_ns, target)
         );
         CREATE INDEX attachments_vfolder ON attachments(vfolder_id);
         CREATE INDEX attachments_session ON attachments(session);
         CREATE TABLE volumes (
             name        TEXT PRIMARY KEY,
             path        TEXT NOT NULL UNIQUE,
             created_at  BIGINT NOT NULL
         );
         CREATE TABLE open_counts (
             vfolder_id  TEXT NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
             owner       TEXT NOT NULL,
             opens       BIGINT NOT NULL,
             updated_at  BIGINT NOT NULL,
             PRIMARY KEY (vfolder_id, owner)
         );
         CREATE TABLE mounts (
             id          TEXT PRIMARY KEY,
             node        TEXT NOT NULL,
             pid         BIGINT NOT NULL,
             mountpoint  TEXT NOT NULL,
             started_at  BIGINT NOT NULL,
             lease_until BIGINT NOT NULL,
             applied_rev BIGINT NOT NULL DEFAULT 0,
             draining    TEXT NOT NULL DEFAULT ''
         );",
            all = all.join(", "),
            live = live.join(", "),
            channel = CHANNEL,
            store_id = uuid::Uuid::new_v4().hyphenated(),
        ),
        // Version 2: an attachment pending until its bind is made; job
        // progress in bytes, against counted totals, and a cancellation
        // request (rows going with their job); vfolder sizes as last measured.
        "CREATE TABLE attachment_pending (
         seq      BIGINT PRIMARY KEY REFERENCES attachments(seq) ON DELETE CASCADE,
         attacher TEXT NOT NULL
     );
     CREATE TABLE job_progress (
         vfolder_id    TEXT PRIMARY KEY REFERENCES jobs(vfolder_id) ON DELETE CASCADE,
         bytes         BIGINT NOT NULL DEFAULT 0,
         total_entries BIGINT,
         total_bytes   BIGINT,
         cancel_by     TEXT
     );
     CREATE TABLE vfolder_sizes (
         vfolder_id  TEXT PRIMARY KEY REFERENCES vfolders(id) ON DELETE CASCADE,
         bytes       BIGINT NOT NULL,
         files       BIGINT NOT NULL,
         measured_at BIGINT NOT NULL
     );"
        .to_string(),
        // Version 12: tiering (as SQLite's version 12).
        "CREATE TABLE volume_tiers (
         volume         TEXT PRIMARY KEY,
         tier           TEXT CHECK (tier IN ('fast', 'capacity')),
         high_watermark INTEGER CHECK (high_watermark BETWEEN 1 AND 100),
         low_watermark  INTEGER CHECK (low_watermark BETWEEN 0 AND 99)
     );
     CREATE TABLE vfolder_usage (
         vfolder_id    TEXT NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         day           BIGINT NOT NULL,
         opens         BIGINT NOT NULL DEFAULT 0,
         bytes_read    BIGINT NOT NULL DEFAULT 0,
         bytes_written BIGINT NOT NULL DEFAULT 0,
         PRIMARY KEY (vfolder_id, day)
     );
     CREATE INDEX vfolder_usage_day ON vfolder_usage(day);
     CREATE TABLE vfolder_access (
         vfolder_id  TEXT PRIMARY KEY REFERENCES vfolders(id) ON DELETE CASCADE,
         last_access BIGINT NOT NULL
     );
     CREATE TABLE tier_pins (
         vfolder_id TEXT PRIMARY KEY REFERENCES vfolders(id) ON DELETE CASCADE,
         pinned_at  BIGINT NOT NULL,
         cause      TEXT NOT NULL
     );"
        .to_string(),
    ]
}

/// The schema version this binary writes.
pub fn latest_version() -> i64 {
    migrations().len() as i64
}

/// Any fixed key: migrations of one database take turns on it.
const MIGRATION_LOCK: i64 = 0x7666_6f6c_6465_7266;

fn pg(what: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |e| StoreError::Pg(what, e)
}

/// The schema version of the database (`None`: no vfolderfs store in it).
pub fn version(c: &mut Client) -> Result<Option<i64>> {
    let exists: bool = c
        .query_one("SELECT to_regclass('vfolderfs_schema') IS NOT NULL", &[])
        .map_err(pg("reading the schema version"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let v: Option<i32> = c
        .query_opt("SELECT max(version) FROM vfolderfs_schema", &[])
        .map_err(pg("reading the schema version"))?
        .and_then(|r| r.get(0));
    Ok(Some(v.unwrap_or(0) as i64))
}

/// Brings the database up to [`latest_version`] (making the store when
/// `create` and there is none), refusing a newer one, in one transaction
/// under an advisory lock; returns the version it found (0: new).
pub fn migrate(c: &mut Client, create: bool) -> Result<i64> {
    let all = migrations();
    let latest = all.len() as i64;
    let mut tx = c
        .transaction()
        .map_err(pg("starting the schema migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg("locking the schema"))?;
    let current = match version_in(&mut tx)? {
        Some(v) => v,
        None if create => {
            tx.batch_execute("CREATE TABLE vfolderfs_schema (version INTEGER PRIMARY KEY)")
                .map_err(pg("making the schema table"))?;
            0
        }
        None => return Err(StoreError::Missing(String::new())),
    };
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (v, sql) in all.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).map_err(pg("migrating the schema"))?;
        tx.execute(
            "INSERT INTO vfolderfs_schema (version) VALUES ($1)",
            &[&(v as i32 + 1)],
        )
        .map_err(pg("writing the schema version"))?;
    }
    tx.commit().map_err(pg("committing the schema migration"))?;
    Ok(current)
}

fn version_in(tx: &mut postgres::Transaction<'_>) -> Result<Option<i64>> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('vfolderfs_schema') IS NOT NULL", &[])
        .map_err(pg("reading the schema version"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let v: Option<i32> = tx
        .query_one("SELECT max(version) FROM vfolderfs_schema", &[])
        .map_err(pg("reading the schema version"))?
        .get(0);
    Ok(Some(v.unwrap_or(0) as i64))
}
