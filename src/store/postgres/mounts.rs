//! Mounts of the store (their leases and applied change positions) and the open-file counts each
//! reports.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn register_mount(s: &PgStore, m: &MountRecord, lease: Duration) -> Result<()> {
    let lease_ms = lease.as_millis() as i64;
    s.tx("committing a mount", |tx| {
        let now = PgStore::now_in(tx)?;
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

pub(super) fn renew_mount(
    s: &PgStore,
    id: &str,
    applied_rev: u64,
    draining: &[String],
    lease: Duration,
) -> Result<bool> {
    let lease_ms = lease.as_millis() as i64;
    let draining = draining.join(",");
    s.tx("renewing a mount's lease", |tx| {
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

pub(super) fn remove_mount(s: &PgStore, id: &str) -> Result<()> {
    s.tx("forgetting a mount", |tx| {
        tx.execute("DELETE FROM mounts WHERE id = $1", &[&id])
            .map_err(pg("forgetting a mount"))?;
        Ok(())
    })
}

pub(super) fn mounts(s: &PgStore) -> Result<(Millis, Vec<MountRecord>)> {
    s.read(|tx| {
        let now = PgStore::now_in(tx)?;
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

pub(super) fn record_opens(s: &PgStore, owner: &str, counts: &[(String, u64)]) -> Result<()> {
    s.tx("committing open counts", |tx| {
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

pub(super) fn opens(s: &PgStore) -> Result<std::collections::HashMap<String, u64>> {
    s.read(|tx| {
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
