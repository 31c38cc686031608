//! Background jobs: claims and their leases, progress, cancellation, and the fenced steps (made
//! only while a claim holds) that end a clone, a purge or a relocation.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn claim_job(
    s: &SqliteStore,
    id: &str,
    kind: &str,
    owner: &str,
    lease: Duration,
    holder_dead: &dyn Fn(&str) -> bool,
) -> Result<Option<Job>> {
    let now = now_millis();
    let until = now + lease.as_millis() as Millis;
    s.write_tx("committing a claim", |tx| {
        SqliteStore::get_in(tx, id)?;
        match SqliteStore::job_in(tx, id)? {
            None => {
                tx.execute(
                    "INSERT INTO jobs (vfolder_id, kind, owner, lease_until, started_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, kind, owner, until, now],
                )
                .map_err(db("claiming a job"))?;
            }
            Some(j) if j.owner == owner => {
                tx.execute(
                    "UPDATE jobs SET lease_until = ?2 WHERE vfolder_id = ?1",
                    params![id, until],
                )
                .map_err(db("claiming a job"))?;
            }
            Some(j) if j.owner.is_empty() || j.lease_until < now || holder_dead(&j.owner) => {
                tx.execute(
                    "UPDATE jobs SET owner = ?2, lease_until = ?3, kind = ?4, \
                     claims = claims + 1 WHERE vfolder_id = ?1",
                    params![id, owner, until, kind],
                )
                .map_err(db("claiming a job"))?;
            }
            Some(_) => return Ok(None),
        }
        let j = SqliteStore::job_in(tx, id)?;
        Ok(j)
    })
}

pub(super) fn queue_job(s: &SqliteStore, id: &str, kind: &str, arg: Option<&str>) -> Result<()> {
    queue_job_in(&s.conn.lock(), id, kind, arg)
}

/// Queues a job of `kind` for `id` on `conn` (inside a caller's transaction,
/// or alone).
pub(super) fn queue_job_in(
    conn: &Connection,
    id: &str,
    kind: &str,
    arg: Option<&str>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO jobs (vfolder_id, kind, owner, lease_until, started_at, claims, arg) \
         VALUES (?1, ?2, '', 0, ?3, 0, ?4) \
         ON CONFLICT(vfolder_id) DO UPDATE SET kind = ?2, arg = ?4",
        params![id, kind, now_millis(), arg],
    )
    .map_err(db("queueing a job"))?;
    Ok(())
}

pub(super) fn renew_job(
    s: &SqliteStore,
    id: &str,
    owner: &str,
    lease: Duration,
    done: u64,
    bytes: u64,
) -> Result<bool> {
    let until = now_millis() + lease.as_millis() as Millis;
    s.write_tx("renewing a job", |tx| {
        let n = tx
            .execute(
                "UPDATE jobs SET lease_until = ?3, done = ?4 \
                 WHERE vfolder_id = ?1 AND owner = ?2",
                params![id, owner, until, done as i64],
            )
            .map_err(db("renewing a job"))?;
        if n == 1 {
            tx.execute(
                "INSERT INTO job_progress (vfolder_id, bytes) VALUES (?1, ?2) \
                 ON CONFLICT(vfolder_id) DO UPDATE SET bytes = ?2",
                params![id, bytes as i64],
            )
            .map_err(db("renewing a job"))?;
        }
        Ok(n == 1)
    })
}

pub(super) fn set_job_totals(
    s: &SqliteStore,
    id: &str,
    owner: &str,
    entries: u64,
    bytes: u64,
) -> Result<bool> {
    let conn = s.conn.lock();
    let n = conn
        .execute(
            "INSERT INTO job_progress (vfolder_id, total_entries, total_bytes) \
             SELECT ?1, ?3, ?4 WHERE EXISTS \
                 (SELECT 1 FROM jobs WHERE vfolder_id = ?1 AND owner = ?2) \
             ON CONFLICT(vfolder_id) DO UPDATE SET total_entries = ?3, total_bytes = ?4",
            params![id, owner, entries as i64, bytes as i64],
        )
        .map_err(db("recording a job's totals"))?;
    Ok(n == 1)
}

pub(super) fn set_job_cancel(s: &SqliteStore, id: &str, by: Option<&str>) -> Result<bool> {
    s.write_tx("recording a job's cancellation", |tx| {
        if SqliteStore::job_in(tx, id)?.is_none() {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO job_progress (vfolder_id, cancel_by) VALUES (?1, ?2) \
             ON CONFLICT(vfolder_id) DO UPDATE SET cancel_by = ?2",
            params![id, by],
        )
        .map_err(db("recording a job's cancellation"))?;
        Ok(true)
    })
}

pub(super) fn release_job(s: &SqliteStore, id: &str, owner: &str, finished: bool) -> Result<()> {
    let conn = s.conn.lock();
    let sql = if finished {
        "DELETE FROM jobs WHERE vfolder_id = ?1 AND owner = ?2"
    } else {
        "UPDATE jobs SET lease_until = 0 WHERE vfolder_id = ?1 AND owner = ?2"
    };
    conn.execute(sql, params![id, owner])
        .map_err(db("releasing a job"))?;
    Ok(())
}

pub(super) fn job(s: &SqliteStore, id: &str) -> Result<Option<Job>> {
    SqliteStore::job_in(&s.conn.lock(), id)
}

pub(super) fn begin_clone(
    s: &SqliteStore,
    src: &str,
    dst_id: &str,
    dst_name: &str,
    volume: &str,
    cause: &str,
) -> Result<(VFolder, VFolder)> {
    s.write_tx("committing a clone start", |tx| {
        let args = TransitionArgs {
            cause,
            ..Default::default()
        };
        let s = SqliteStore::transition_in(tx, src, Op::CloneStart, &args, &[])?;
        let d = SqliteStore::insert_in(
            tx,
            dst_id,
            dst_name,
            volume,
            Status::Cloning,
            Some(src),
            cause,
        )?;
        // The copy's job with them: never a clone started without one.
        queue_job_in(tx, dst_id, crate::workers::clone::KIND, None)?;
        Ok((s, d))
    })
}

pub(super) fn confirm_claim(s: &SqliteStore, claim: &Claim, lease: Duration) -> Result<()> {
    let until = now_millis() + lease.as_millis() as Millis;
    s.fenced(claim, "committing a claim check", |tx| {
        tx.execute(
            "UPDATE jobs SET lease_until = ?2 WHERE vfolder_id = ?1",
            params![claim.vfolder_id, until],
        )
        .map_err(db("renewing a job"))?;
        Ok(())
    })
}

pub(super) fn finish_purge(
    s: &SqliteStore,
    claim: &Claim,
    error: Option<&str>,
    cause: &str,
) -> Result<VFolder> {
    let op = Op::purge_end(error.is_some());
    let args = TransitionArgs {
        cause,
        error,
        ..Default::default()
    };
    s.fenced(claim, "committing a purge end", |tx| {
        SqliteStore::transition_in(tx, &claim.vfolder_id, op, &args, &[])
    })
}

pub(super) fn finish_clone(
    s: &SqliteStore,
    claim: &Claim,
    error: Option<&str>,
    cause: &str,
) -> Result<VFolder> {
    s.fenced(claim, "committing a clone end", |tx| {
        SqliteStore::finish_clone_in(tx, &claim.vfolder_id, error, cause)
    })
}

pub(super) fn switch_volume(
    s: &SqliteStore,
    claim: &Claim,
    volume: Option<&str>,
    cause: &str,
) -> Result<VFolder> {
    let id = claim.vfolder_id.as_str();
    s.fenced(claim, "committing a relocation", |tx| {
        let cur = SqliteStore::get_in(tx, id)?;
        let args = TransitionArgs {
            cause,
            ..Default::default()
        };
        if let Some(new) = volume.filter(|n| *n != cur.volume) {
            SqliteStore::volume_known_in(tx, new)?;
        }
        let extra = match volume {
            Some(new) if new != cur.volume => {
                // Attaching is refused while performing; this holds the
                // line in the switch's own transaction too (a record
                // from an older vfolderfs): a bind would be left showing
                // the old copy, which is removed next.
                SqliteStore::check_unattached(tx, &cur, "switch the volume of")?;
                vec![
                    ("volume", Value::Text(new.into())),
                    ("prev_volume", Value::Text(cur.volume.clone())),
                ]
            }
            _ => vec![],
        };
        SqliteStore::transition_in(tx, id, Op::RelocateEnd, &args, &extra)
    })
}

pub(super) fn clear_prev_volume(s: &SqliteStore, claim: &Claim) -> Result<()> {
    let conn = s.conn.lock();
    // One statement: the claim check and the change are atomic.
    let n = conn
        .execute(
            "UPDATE vfolders SET prev_volume = NULL WHERE id = ?1 AND EXISTS \
             (SELECT 1 FROM jobs WHERE vfolder_id = ?1 AND owner = ?2 AND kind = ?3 \
              AND claims = ?4)",
            params![claim.vfolder_id, claim.owner, claim.kind, claim.token],
        )
        .map_err(db("clearing a relocation"))?;
    if n == 0 {
        // Not held, or no such vfolder: say which.
        SqliteStore::check_claim(&conn, claim)?;
        SqliteStore::get_in(&conn, &claim.vfolder_id)?;
    }
    Ok(())
}
