//! Attachments: a vfolder bind-mounted into a session, recorded before the bind and confirmed after
//! it.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

// The arguments of Store::attach, which allows as many.
#[allow(clippy::too_many_arguments)]
pub(super) fn attach(
    s: &PgStore,
    id: &str,
    session: &str,
    target: &str,
    read_only: bool,
    mnt_ns: u64,
    source: &str,
    pending: Option<&str>,
) -> Result<Attachment> {
    s.tx("committing an attachment", |tx| {
        let v = PgStore::lock_in(tx, id)?;
        super::super::check_attachable(&v, read_only)?;
        let now = PgStore::now_in(tx)?;
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

pub(super) fn confirm_attachment(s: &PgStore, seq: i64) -> Result<bool> {
    s.tx("confirming an attachment", |tx| {
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

pub(super) fn detach(s: &PgStore, seq: i64) -> Result<bool> {
    s.tx("removing an attachment", |tx| {
        Ok(tx
            .execute("DELETE FROM attachments WHERE seq = $1", &[&seq])
            .map_err(pg("removing an attachment"))?
            == 1)
    })
}

pub(super) fn attachments(s: &PgStore, vfolder: Option<&str>) -> Result<Vec<Attachment>> {
    s.read(|tx| {
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
