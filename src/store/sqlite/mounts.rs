//! Mounts of the store (their leases and applied change positions) and the open-file counts each
//! reports.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn register_mount(s: &SqliteStore, m: &MountRecord, lease: Duration) -> Result<()> {
    let now = now_millis();
    let until = now + lease.as_millis() as Millis;
    s.write_tx("committing a mount", |tx| {
        // Mounts whose lease lapsed an hour ago are long gone (killed).
        tx.execute("DELETE FROM mounts WHERE lease_until < ?1", [now - 3_600_000])
            .map_err(db("forgetting lapsed mounts"))?;
        tx.execute(
            "INSERT INTO mounts (id, node, pid, mountpoint, started_at, lease_until, applied_rev, draining) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT(id) DO UPDATE SET lease_until = ?6, applied_rev = ?7, draining = ?8",
            params![
                m.id,
                m.node,
                m.pid,
                m.mountpoint,
                m.started_at,
                until,
                m.applied_rev as i64,
                m.draining.join(",")
            ],
        )
        .map_err(db("registering a mount"))?;
        Ok(())
    })
}

pub(super) fn renew_mount(
    s: &SqliteStore,
    id: &str,
    applied_rev: u64,
    draining: &[String],
    lease: Duration,
) -> Result<bool> {
    let now = now_millis();
    let until = now + lease.as_millis() as Millis;
    let conn = s.conn.lock();
    // One statement: the lease is extended only while it still holds.
    let n = conn
        .execute(
            "UPDATE mounts SET lease_until = ?2, applied_rev = ?3, draining = ?4 \
             WHERE id = ?1 AND lease_until >= ?5",
            params![id, until, applied_rev as i64, draining.join(","), now],
        )
        .map_err(db("renewing a mount's lease"))?;
    Ok(n == 1)
}

pub(super) fn remove_mount(s: &SqliteStore, id: &str) -> Result<()> {
    let conn = s.conn.lock();
    conn.execute("DELETE FROM mounts WHERE id = ?1", [id])
        .map_err(db("forgetting a mount"))?;
    Ok(())
}

pub(super) fn mounts(s: &SqliteStore) -> Result<(Millis, Vec<MountRecord>)> {
    let conn = s.conn.lock();
    let now = now_millis();
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, node, pid, mountpoint, started_at, lease_until, applied_rev, draining \
             FROM mounts ORDER BY started_at, id",
        )
        .map_err(db("listing mounts"))?;
    let rows = stmt
        .query_map([], |r| {
            let draining: String = r.get(7)?;
            Ok(MountRecord {
                id: r.get(0)?,
                node: r.get(1)?,
                pid: r.get(2)?,
                mountpoint: r.get(3)?,
                started_at: r.get(4)?,
                lease_until: r.get(5)?,
                applied_rev: r.get::<_, i64>(6)? as u64,
                draining: draining
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .map_err(db("listing mounts"))?;
    let v = rows
        .collect::<rusqlite::Result<_>>()
        .map_err(db("listing mounts"))?;
    Ok((now, v))
}

pub(super) fn record_opens(s: &SqliteStore, owner: &str, counts: &[(String, u64)]) -> Result<()> {
    let now = now_millis();
    s.write_tx("committing open counts", |tx| {
        for (id, n) in counts {
            // A vfolder forgotten meanwhile has nothing to count.
            let _ = tx.execute(
                "INSERT INTO open_counts (vfolder_id, owner, opens, updated_at) \
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM vfolders WHERE id = ?1) \
                 ON CONFLICT(vfolder_id, owner) DO UPDATE SET opens = ?3, updated_at = ?4",
                params![id, owner, *n as i64, now],
            );
        }
        Ok(())
    })
}

pub(super) fn opens(s: &SqliteStore) -> Result<std::collections::HashMap<String, u64>> {
    let conn = s.conn.lock();
    let mut stmt = conn
        .prepare_cached("SELECT vfolder_id, sum(opens) FROM open_counts GROUP BY vfolder_id")
        .map_err(db("reading open counts"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(db("reading open counts"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(db("reading open counts"))
}
