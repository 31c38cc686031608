//! `vfolderfs nodes`: the mounts recorded in the store (one per node and
//! mount point), with their leases and how far each has applied the change
//! feed.

use serde_json::{Value, json};

use super::{CliError, fmt_time};
use crate::catalog::Catalog;
use crate::store::MountRecord;

/// Whether a mount's lease holds at the store's time `now`.
fn live(m: &MountRecord, now: i64) -> bool {
    m.lease_until >= now
}

fn secs(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Lists the recorded mounts; exit status 0.
pub(super) fn nodes(cat: &Catalog, as_json: bool) -> Result<i32, CliError> {
    let store = cat.store();
    let (now, mounts) = store.mounts()?;
    // The newest change of the feed (nothing is newer than u64::MAX).
    let head = store.changes_since(u64::MAX)?.rev;
    if as_json {
        let arr: Vec<Value> = mounts
            .iter()
            .map(|m| {
                json!({
                    "node": m.node,
                    "instance": m.id,
                    "pid": m.pid,
                    "mountpoint": m.mountpoint,
                    "started_at": m.started_at,
                    "lease_until": m.lease_until,
                    "lease_left_ms": m.lease_until - now,
                    "live": live(m, now),
                    "applied_rev": m.applied_rev,
                    "behind": head.saturating_sub(m.applied_rev),
                    "draining": m.draining,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "store_time": now, "head_rev": head, "nodes": arr })
        );
        return Ok(0);
    }
    if mounts.is_empty() {
        println!("no mounts recorded");
        return Ok(0);
    }
    println!(
        "{:<20} {:<36} {:>8} {:<19} {:<16} {:>8} {:>7}  MOUNTPOINT",
        "NODE", "INSTANCE", "PID", "STARTED", "LEASE", "APPLIED", "BEHIND"
    );
    for m in &mounts {
        let left = m.lease_until - now;
        let lease = if left >= 0 {
            format!("live, {} left", secs(left))
        } else {
            format!("lapsed {} ago", secs(-left))
        };
        println!(
            "{:<20} {:<36} {:>8} {:<19} {:<16} {:>8} {:>7}  {}",
            m.node,
            m.id,
            m.pid,
            fmt_time(m.started_at),
            lease,
            m.applied_rev,
            head.saturating_sub(m.applied_rev),
            m.mountpoint
        );
    }
    Ok(0)
}
