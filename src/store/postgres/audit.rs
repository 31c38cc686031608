//! Forgetting purged vfolders after their retention, and the audit rows that keep what they were.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn forget_purged(s: &PgStore, before: Millis) -> Result<Vec<AuditEntry>> {
    s.tx("committing gc", |tx| {
        let now = PgStore::now_in(tx)?;
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

pub(super) fn audit(s: &PgStore) -> Result<Vec<AuditEntry>> {
    s.read(|tx| {
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
