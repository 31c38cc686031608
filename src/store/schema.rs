//! The SQLite schema and its forward migrations, versioned by
//! `PRAGMA user_version`.

use rusqlite::Connection;

use super::{Result, StoreError};
use crate::status::Status;

/// One migration per schema version; index `i` takes version `i` to `i + 1`.
fn migrations() -> Vec<String> {
    // The partial unique index admits exactly the statuses that hold a name;
    // the list comes from the status model, never typed here.
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
            "CREATE TABLE vfolders (
             id                TEXT PRIMARY KEY NOT NULL,
             name              TEXT NOT NULL,
             status            TEXT NOT NULL CHECK (status IN ({all})),
             created_at        INTEGER NOT NULL,
             status_changed_at INTEGER NOT NULL,
             error             TEXT
         );
         CREATE UNIQUE INDEX vfolders_live_name ON vfolders(name) WHERE status IN ({live});
         CREATE INDEX vfolders_status ON vfolders(status);
         CREATE TABLE status_history (
             seq         INTEGER PRIMARY KEY AUTOINCREMENT,
             vfolder_id  TEXT NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
             from_status TEXT,
             to_status   TEXT NOT NULL,
             at          INTEGER NOT NULL,
             cause       TEXT NOT NULL
         );
         CREATE INDEX status_history_vfolder ON status_history(vfolder_id, seq);",
            all = all.join(", "),
            live = live.join(", "),
        ),
        // Version 2: background jobs claimed with an owner and a lease, and the
        // audit of vfolders forgotten by gc.
        "CREATE TABLE jobs (
         vfolder_id  TEXT PRIMARY KEY NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         kind        TEXT NOT NULL,
         owner       TEXT NOT NULL,
         lease_until INTEGER NOT NULL,
         started_at  INTEGER NOT NULL,
         claims      INTEGER NOT NULL DEFAULT 1,
         done        INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE audit (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         vfolder_id  TEXT NOT NULL,
         name        TEXT NOT NULL,
         created_at  INTEGER NOT NULL,
         purged_at   INTEGER NOT NULL,
         forgotten_at INTEGER NOT NULL,
         history     TEXT NOT NULL
     );"
        .to_string(),
        // Version 3: session attachments (bind mounts into containers).
        "CREATE TABLE attachments (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         vfolder_id  TEXT NOT NULL REFERENCES vfolders(id),
         session     TEXT NOT NULL,
         target      TEXT NOT NULL,
         read_only   INTEGER NOT NULL,
         mnt_ns      INTEGER NOT NULL,
         source      TEXT NOT NULL,
         created_at  INTEGER NOT NULL,
         UNIQUE (mnt_ns, target)
     );
     CREATE INDEX attachments_vfolder ON attachments(vfolder_id);
     CREATE INDEX attachments_session ON attachments(session);"
            .to_string(),
        // Version 4: data volumes, and where a vfolder lives, came from or is
        // being cloned from.
        "CREATE TABLE volumes (
         name        TEXT PRIMARY KEY NOT NULL,
         path        TEXT NOT NULL UNIQUE,
         created_at  INTEGER NOT NULL
     );
     ALTER TABLE vfolders ADD COLUMN volume TEXT NOT NULL DEFAULT 'default';
     ALTER TABLE vfolders ADD COLUMN prev_volume TEXT;
     ALTER TABLE vfolders ADD COLUMN clone_src TEXT;
     ALTER TABLE jobs ADD COLUMN arg TEXT;"
            .to_string(),
        // Version 5: how often each mount opened files in each vfolder.
        "CREATE TABLE open_counts (
         vfolder_id  TEXT NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         owner       TEXT NOT NULL,
         opens       INTEGER NOT NULL,
         updated_at  INTEGER NOT NULL,
         PRIMARY KEY (vfolder_id, owner)
     );"
        .to_string(),
        // Version 6: finding rows with an old copy to clean up without a
        // scan (the job scanner looks every second).
        "CREATE INDEX vfolders_prev_volume ON vfolders(id) WHERE prev_volume IS NOT NULL;"
            .to_string(),
        // Version 7: a change feed, so a mount keeps its copy of thousands of
        // vfolders in step by reading only what changed. Every insert or
        // update of a row stamps it with the next value of a counter that is
        // never reused; deletions (forgetting purged rows) are counted.
        "CREATE TABLE store_meta (
         key         TEXT PRIMARY KEY NOT NULL,
         value       INTEGER NOT NULL
     );
     ALTER TABLE vfolders ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
     UPDATE vfolders SET rev = rowid;
     INSERT INTO store_meta (key, value)
         VALUES ('rev', (SELECT ifnull(max(rev), 0) FROM vfolders)), ('vfolder_deletions', 0);
     CREATE INDEX vfolders_rev ON vfolders(rev);
     CREATE TRIGGER vfolders_rev_insert AFTER INSERT ON vfolders BEGIN
         UPDATE store_meta SET value = value + 1 WHERE key = 'rev';
         UPDATE vfolders SET rev = (SELECT value FROM store_meta WHERE key = 'rev')
             WHERE rowid = NEW.rowid;
     END;
     CREATE TRIGGER vfolders_rev_update AFTER UPDATE ON vfolders WHEN NEW.rev = OLD.rev BEGIN
         UPDATE store_meta SET value = value + 1 WHERE key = 'rev';
         UPDATE vfolders SET rev = (SELECT value FROM store_meta WHERE key = 'rev')
             WHERE rowid = NEW.rowid;
     END;
     CREATE TRIGGER vfolders_deleted AFTER DELETE ON vfolders BEGIN
         UPDATE store_meta SET value = value + 1 WHERE key = 'vfolder_deletions';
     END;"
            .to_string(),
        // Version 8: the store's id, so that a mount can tell its own
        // database from another store's put in its place. A store made
        // before gets its id here, on its first open.
        format!(
            "CREATE TABLE store_info (
         key         TEXT PRIMARY KEY NOT NULL,
         value       TEXT NOT NULL
     );
     INSERT INTO store_info (key, value) VALUES ('id', '{}');",
            uuid::Uuid::new_v4().hyphenated()
        ),
        // Version 9: live mounts and what each has applied, for the
        // enforcement protocol: a status change is in force once every mount
        // whose lease holds has applied it and drained the writes before it.
        "CREATE TABLE IF NOT EXISTS mounts (
         id          TEXT PRIMARY KEY NOT NULL,
         node        TEXT NOT NULL,
         pid         INTEGER NOT NULL,
         mountpoint  TEXT NOT NULL,
         started_at  INTEGER NOT NULL,
         lease_until INTEGER NOT NULL,
         applied_rev INTEGER NOT NULL DEFAULT 0,
         draining    TEXT NOT NULL DEFAULT ''
     );"
        .to_string(),
        // Version 10: an attachment is recorded as pending (by its
        // attacher's identity) before its bind is made, and confirmed after;
        // a prune keeps pending records whose attacher may be at work. A
        // table of its own (idempotent, like every migration), its rows
        // going with their attachment.
        "CREATE TABLE IF NOT EXISTS attachment_pending (
         seq      INTEGER PRIMARY KEY NOT NULL,
         attacher TEXT NOT NULL
     );
     CREATE TRIGGER IF NOT EXISTS attachment_pending_gone AFTER DELETE ON attachments
     BEGIN DELETE FROM attachment_pending WHERE seq = OLD.seq; END;"
            .to_string(),
        // Version 11: job progress in bytes and against counted totals, and
        // a job's cancellation request, in a table beside `jobs` that goes
        // with its job row; vfolder sizes as last measured (a table of
        // their own: recording one is no change for mounts). Idempotent,
        // like every migration.
        "CREATE TABLE IF NOT EXISTS job_progress (
         vfolder_id    TEXT PRIMARY KEY NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         bytes         INTEGER NOT NULL DEFAULT 0,
         total_entries INTEGER,
         total_bytes   INTEGER,
         cancel_by     TEXT
     );
     CREATE TRIGGER IF NOT EXISTS job_progress_gone AFTER DELETE ON jobs
     BEGIN DELETE FROM job_progress WHERE vfolder_id = OLD.vfolder_id; END;
     CREATE TABLE IF NOT EXISTS vfolder_sizes (
         vfolder_id  TEXT PRIMARY KEY NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         bytes       INTEGER NOT NULL,
         files       INTEGER NOT NULL,
         measured_at INTEGER NOT NULL
     );"
        .to_string(),
        // Version 12: tiering. Volumes' tiers and watermarks (`default`
        // included, so not a column of `volumes`); usage per vfolder and
        // UTC day, added to by every mount in batches; the last access per
        // vfolder; pins against automatic moves. Tables of their own, so
        // that recording usage is no change for the mounts' feed.
        "CREATE TABLE IF NOT EXISTS volume_tiers (
         volume         TEXT PRIMARY KEY NOT NULL,
         tier           TEXT CHECK (tier IN ('fast', 'capacity')),
         high_watermark INTEGER CHECK (high_watermark BETWEEN 1 AND 100),
         low_watermark  INTEGER CHECK (low_watermark BETWEEN 0 AND 99)
     );
     CREATE TABLE IF NOT EXISTS vfolder_usage (
         vfolder_id    TEXT NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         day           INTEGER NOT NULL,
         opens         INTEGER NOT NULL DEFAULT 0,
         bytes_read    INTEGER NOT NULL DEFAULT 0,
         bytes_written INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (vfolder_id, day)
     );
     CREATE INDEX IF NOT EXISTS vfolder_usage_day ON vfolder_usage(day);
     CREATE TABLE IF NOT EXISTS vfolder_access (
         vfolder_id  TEXT PRIMARY KEY NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         last_access INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS tier_pins (
         vfolder_id TEXT PRIMARY KEY NOT NULL REFERENCES vfolders(id) ON DELETE CASCADE,
         pinned_at  INTEGER NOT NULL,
         cause      TEXT NOT NULL
     );"
        .to_string(),
    ]
}

/// The first schema version with a store id.
pub const STORE_ID_VERSION: i64 = 8;

/// The schema version this binary writes.
pub fn latest_version() -> i64 {
    migrations().len() as i64
}

/// Brings the database up to [`latest_version`], refusing a newer one;
/// returns the version it found (0: a new database).
pub fn migrate(conn: &mut Connection) -> Result<i64> {
    let db = |what| move |e| StoreError::Db(what, e);
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("reading the schema version"))?;
    let all = migrations();
    let latest = all.len() as i64;
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    if current == latest {
        return Ok(current);
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .map_err(db("starting the schema migration"))?;
    // Another process may have migrated while we waited for the lock.
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("reading the schema version"))?;
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (v, sql) in all.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(db("migrating the schema"))?;
        tx.pragma_update(None, "user_version", v as i64 + 1)
            .map_err(db("writing the schema version"))?;
    }
    tx.commit().map_err(db("committing the schema migration"))?;
    Ok(current)
}
