//! Forgetting purged vfolders after their retention, and the audit rows that keep what they were.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn forget_purged(s: &SqliteStore, before: Millis) -> Result<Vec<AuditEntry>> {
    let now = now_millis();
    s.write_tx("committing gc", |tx| {
        let victims: Vec<VFolder> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM vfolders WHERE status = ?1 AND status_changed_at < ?2"
                ))
                .map_err(db("finding purged vfolders"))?;
            let rows = stmt
                .query_map(
                    params![Status::DeleteComplete.as_str(), before],
                    row_to_vfolder,
                )
                .map_err(db("finding purged vfolders"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(db("finding purged vfolders"))?
        };
        let mut out = Vec::new();
        for v in victims {
            let history: Vec<serde_json::Value> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT from_status, to_status, at, cause FROM status_history \
                         WHERE vfolder_id = ?1 ORDER BY seq",
                    )
                    .map_err(db("reading history"))?;
                let rows = stmt
                    .query_map([&v.id], |r| {
                        Ok(serde_json::json!({
                            "from": r.get::<_, Option<String>>(0)?,
                            "to": r.get::<_, String>(1)?,
                            "at": r.get::<_, Millis>(2)?,
                            "cause": r.get::<_, String>(3)?,
                        }))
                    })
                    .map_err(db("reading history"))?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(db("reading history"))?
            };
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![e.id, e.name, e.created_at, e.purged_at, e.forgotten_at, e.history],
            )
            .map_err(db("writing the audit"))?;
            tx.execute("DELETE FROM vfolders WHERE id = ?1", [&v.id])
                .map_err(db("forgetting a vfolder"))?;
            out.push(e);
        }
        Ok(out)
    })
}

pub(super) fn audit(s: &SqliteStore) -> Result<Vec<AuditEntry>> {
    let conn = s.conn.lock();
    let mut stmt = conn
        .prepare(
            "SELECT vfolder_id, name, created_at, purged_at, forgotten_at, history \
             FROM audit ORDER BY seq",
        )
        .map_err(db("reading the audit"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
                purged_at: r.get(3)?,
                forgotten_at: r.get(4)?,
                history: r.get(5)?,
            })
        })
        .map_err(db("reading the audit"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(db("reading the audit"))
}
