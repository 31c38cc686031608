//! Background jobs: claims and their leases, progress, cancellation, and the fenced steps (made
//! only while a claim holds) that end a clone, a purge or a relocation.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn claim_job(
    s: &PgStore,
    id: &str,
    kind: &str,
    owner: &str,
    lease: Duration,
    holder_dead: &dyn Fn(&str) -> bool,
) -> Result<Option<Job>> {
    let lease_ms = lease.as_millis() as i64;
    s.tx("committing a claim", |tx| {
        PgStore::lock_in(tx, id)?;
        let now = PgStore::now_in(tx)?;
        let until = now + lease_ms;
        match PgStore::job_in(tx, id)? {
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
        PgStore::job_in(tx, id)
    })
}

pub(super) fn queue_job(s: &PgStore, id: &str, kind: &str, arg: Option<&str>) -> Result<()> {
    s.tx("queueing a job", |tx| queue_job_in(tx, id, kind, arg))
}

/// Queues a job of `kind` for `id` inside the caller's transaction.
pub(super) fn queue_job_in(
    tx: &mut Transaction<'_>,
    id: &str,
    kind: &str,
    arg: Option<&str>,
) -> Result<()> {
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
}

pub(super) fn renew_job(
    s: &PgStore,
    id: &str,
    owner: &str,
    lease: Duration,
    done: u64,
    bytes: u64,
) -> Result<bool> {
    let lease_ms = lease.as_millis() as i64;
    s.tx("renewing a job", |tx| {
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

pub(super) fn set_job_totals(
    s: &PgStore,
    id: &str,
    owner: &str,
    entries: u64,
    bytes: u64,
) -> Result<bool> {
    s.tx("recording a job's totals", |tx| {
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

pub(super) fn set_job_cancel(s: &PgStore, id: &str, by: Option<&str>) -> Result<bool> {
    s.tx("recording a job's cancellation", |tx| {
        if PgStore::job_in(tx, id)?.is_none() {
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

pub(super) fn release_job(s: &PgStore, id: &str, owner: &str, finished: bool) -> Result<()> {
    let sql = if finished {
        "DELETE FROM jobs WHERE vfolder_id = $1 AND owner = $2"
    } else {
        "UPDATE jobs SET lease_until = 0 WHERE vfolder_id = $1 AND owner = $2"
    };
    s.tx("releasing a job", |tx| {
        tx.execute(sql, &[&id, &owner])
            .map_err(pg("releasing a job"))?;
        Ok(())
    })
}

pub(super) fn job(s: &PgStore, id: &str) -> Result<Option<Job>> {
    s.read(|tx| PgStore::job_in(tx, id))
}

pub(super) fn begin_clone(
    s: &PgStore,
    src: &str,
    dst_id: &str,
    dst_name: &str,
    volume: &str,
    cause: &str,
) -> Result<(VFolder, VFolder)> {
    s.tx("committing a clone start", |tx| {
        let args = TransitionArgs {
            cause,
            ..Default::default()
        };
        let s = PgStore::transition_in(tx, src, Op::CloneStart, &args, &[])?;
        let d = PgStore::insert_in(
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

pub(super) fn confirm_claim(s: &PgStore, claim: &Claim, lease: Duration) -> Result<()> {
    let lease_ms = lease.as_millis() as i64;
    s.fenced(claim, "committing a claim check", |tx| {
        tx.execute(
            &format!("UPDATE jobs SET lease_until = {NOW_MS} + $2 WHERE vfolder_id = $1"),
            &[&claim.vfolder_id, &lease_ms],
        )
        .map_err(pg("renewing a job"))?;
        Ok(())
    })
}

pub(super) fn finish_purge(
    s: &PgStore,
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
        PgStore::transition_in(tx, &claim.vfolder_id, op, &args, &[])
    })
}

pub(super) fn finish_clone(
    s: &PgStore,
    claim: &Claim,
    error: Option<&str>,
    cause: &str,
) -> Result<VFolder> {
    s.fenced(claim, "committing a clone end", |tx| {
        PgStore::finish_clone_in(tx, &claim.vfolder_id, error, cause)
    })
}

pub(super) fn switch_volume(
    s: &PgStore,
    claim: &Claim,
    volume: Option<&str>,
    cause: &str,
) -> Result<VFolder> {
    let id = claim.vfolder_id.as_str();
    s.fenced(claim, "committing a relocation", |tx| {
        let cur = PgStore::get_in(tx, id)?;
        let args = TransitionArgs {
            cause,
            ..Default::default()
        };
        let extra = match volume {
            Some(new) if new != cur.volume => {
                PgStore::volume_known_in(tx, new)?;
                // A bind would be left showing the old copy, which is
                // removed next (attaching is refused while performing;
                // this holds the line for older records too).
                PgStore::check_unattached(tx, &cur, "switch the volume of")?;
                vec![
                    ("volume", Some(new.to_string())),
                    ("prev_volume", Some(cur.volume.clone())),
                ]
            }
            _ => vec![],
        };
        PgStore::transition_in(tx, id, Op::RelocateEnd, &args, &extra)
    })
}

pub(super) fn clear_prev_volume(s: &PgStore, claim: &Claim) -> Result<()> {
    s.fenced(claim, "clearing a relocation", |tx| {
        tx.execute(
            "UPDATE vfolders SET prev_volume = NULL WHERE id = $1",
            &[&claim.vfolder_id],
        )
        .map_err(pg("clearing a relocation"))?;
        Ok(())
    })
}
