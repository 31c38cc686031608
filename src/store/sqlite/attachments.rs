//! Attachments: a vfolder bind-mounted into a session, recorded before the bind and confirmed after
//! it.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

// The arguments of Store::attach, which allows as many.
#[allow(clippy::too_many_arguments)]
pub(super) fn attach(
    s: &SqliteStore,
    id: &str,
    session: &str,
    target: &str,
    read_only: bool,
    mnt_ns: u64,
    source: &str,
    pending: Option<&str>,
) -> Result<Attachment> {
    let now = now_millis();
    s.write_tx("committing an attachment", |tx| {
        let v = SqliteStore::get_in(tx, id)?;
        super::super::check_attachable(&v, read_only)?;
        tx.execute(
            "INSERT INTO attachments (vfolder_id, session, target, read_only, mnt_ns, source, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, session, target, read_only, mnt_ns as i64, source, now],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::TargetTaken(target.to_string())
            } else {
                StoreError::Db("recording an attachment", e)
            }
        })?;
        let seq = tx.last_insert_rowid();
        if let Some(who) = pending {
            tx.execute(
                "INSERT OR REPLACE INTO attachment_pending (seq, attacher) VALUES (?1, ?2)",
                params![seq, who],
            )
            .map_err(db("recording an attachment"))?;
        }
        Ok(Attachment {
            seq,
            vfolder_id: id.to_string(),
            session: session.to_string(),
            target: target.to_string(),
            read_only,
            mnt_ns,
            // One node's store: every attachment is this node's.
            node: crate::enforce::node_name(),
            source: source.to_string(),
            created_at: now,
            pending: pending.map(str::to_string),
        })
    })
}

pub(super) fn confirm_attachment(s: &SqliteStore, seq: i64) -> Result<bool> {
    let conn = s.conn.lock();
    // One statement: the record must still exist.
    let n = conn
        .execute(
            "DELETE FROM attachment_pending WHERE seq = ?1 AND EXISTS \
             (SELECT 1 FROM attachments WHERE seq = ?1)",
            [seq],
        )
        .map_err(db("confirming an attachment"))?;
    if n == 1 {
        return Ok(true);
    }
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM attachments WHERE seq = ?1)",
            [seq],
            |r| r.get(0),
        )
        .map_err(db("confirming an attachment"))?;
    Ok(exists)
}

pub(super) fn detach(s: &SqliteStore, seq: i64) -> Result<bool> {
    let conn = s.conn.lock();
    let n = conn
        .execute("DELETE FROM attachments WHERE seq = ?1", [seq])
        .map_err(db("removing an attachment"))?;
    Ok(n == 1)
}

pub(super) fn attachments(s: &SqliteStore, vfolder: Option<&str>) -> Result<Vec<Attachment>> {
    let conn = s.conn.lock();
    let mut stmt = conn
        .prepare_cached(
            "SELECT a.seq, vfolder_id, session, target, read_only, mnt_ns, source, created_at, \
             p.attacher FROM attachments a LEFT JOIN attachment_pending p ON p.seq = a.seq \
             WHERE ?1 IS NULL OR vfolder_id = ?1 ORDER BY a.seq",
        )
        .map_err(db("listing attachments"))?;
    // SQLite is one node's store: every attachment is this node's.
    let node = crate::enforce::node_name();
    let rows = stmt
        .query_map([vfolder], |r| {
            Ok(Attachment {
                seq: r.get(0)?,
                vfolder_id: r.get(1)?,
                session: r.get(2)?,
                target: r.get(3)?,
                read_only: r.get(4)?,
                mnt_ns: r.get::<_, i64>(5)? as u64,
                node: node.clone(),
                source: r.get(6)?,
                created_at: r.get(7)?,
                pending: r.get(8)?,
            })
        })
        .map_err(db("listing attachments"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(db("listing attachments"))
}
