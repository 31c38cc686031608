//! Starting a plan's moves as ordinary relocation jobs: each move is one
//! store transaction ([`crate::store::Store::start_relocation`]: the pin,
//! the attachments and the status checked, ready → performing with the
//! move's cause in history, the relocation job queued), at most
//! `max_concurrent` relocations under way at once (those already running
//! count); the rest wait for the next pass. The jobs are run by any
//! mount's pool, or here ([`run_here`]); each is resumable as every
//! relocation is. A pass made again after an interruption plans afresh:
//! moves already under way are not planned twice.

use std::time::Duration;

use super::plan::{self, Move};
use super::policy::Policy;
use crate::catalog::Catalog;
use crate::store::{RelocationStart, Result, StoreError, VFolder};
use crate::workers::{Outcome, relocate};

/// What starting a plan did.
#[derive(Debug, Default)]
pub struct Started {
    /// Moves started (the vfolder now performing).
    pub started: Vec<(Move, VFolder)>,
    /// Moves refused when they were started (the status, a pin or an
    /// attachment changed since the plan), with the refusal.
    pub refused: Vec<(Move, String)>,
    /// Moves left for later (the concurrency bound), in order.
    pub rest: Vec<Move>,
}

/// Relocations under way in the store now.
pub fn in_flight(cat: &Catalog) -> Result<usize> {
    Ok(cat
        .store()
        .list(crate::store::ListFilter::Work)?
        .iter()
        .filter(|v| v.status.is_relocating())
        .count())
}

/// Starts `moves` in order, up to the policy's concurrency with
/// `in_flight` relocations under way already; the rest is returned for
/// later. A plan's moves are started from the plan, not planned again
/// between batches, so that a fast volume evicted from above its high
/// watermark goes down to its low watermark.
pub fn start(cat: &Catalog, moves: &[Move], in_flight: usize, policy: &Policy) -> Result<Started> {
    let mut out = Started::default();
    let mut room = policy.max_concurrent.saturating_sub(in_flight);
    for m in moves {
        if room == 0 {
            out.rest.push(m.clone());
            continue;
        }
        if let Err(e) = cat.usable_volume(&m.to) {
            out.refused.push((m.clone(), e.to_string()));
            continue;
        }
        match cat
            .store()
            .start_relocation(&m.id, &m.to, &m.reason.cause(), RelocationStart::Tier)
        {
            Ok(v) => {
                room -= 1;
                out.started.push((m.clone(), v));
            }
            Err(
                e @ (StoreError::Refused { .. }
                | StoreError::Attached { .. }
                | StoreError::Pinned { .. }
                | StoreError::OldCopyPending { .. }
                | StoreError::NotFound(_)
                | StoreError::Volume(_)),
            ) => out.refused.push((m.clone(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Runs the relocations of `ids` here, each on a thread of its own, to
/// their end; one a mount's pool took first is waited for. Returns each
/// outcome.
pub fn run_here(cat: &Catalog, ids: &[String]) -> Vec<(String, Result<Outcome>)> {
    let owner = crate::workers::this_owner();
    std::thread::scope(|s| {
        let hs: Vec<_> = ids
            .iter()
            .map(|id| {
                let owner = owner.clone();
                s.spawn(move || {
                    let never = std::sync::atomic::AtomicBool::new(false);
                    loop {
                        match relocate::run(cat, id, &owner, &never, None, &mut |_| {}) {
                            Ok(Outcome::HeldElsewhere) => {
                                std::thread::sleep(Duration::from_millis(200));
                                match cat.store().get(id) {
                                    Ok(v) if v.status.is_relocating() => continue,
                                    Ok(_) => return (id.clone(), Ok(Outcome::Complete(0))),
                                    Err(e) => return (id.clone(), Err(e)),
                                }
                            }
                            r => return (id.clone(), r),
                        }
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("relocation thread panicked"))
            .collect()
    })
}

/// The policy automatic passes use: the one stored, over the defaults.
pub fn stored_policy(cat: &Catalog) -> Result<std::result::Result<Policy, String>> {
    Ok(match cat.store().setting(super::SETTING_POLICY)? {
        Some(text) => Policy::parse(&text),
        None => Ok(Policy::default()),
    })
}

/// A mount's state for automatic passes.
#[derive(Debug, Default)]
pub struct Auto {
    /// Moves its last pass left for later (started in batches before the
    /// next plan).
    pending: Vec<Move>,
}

/// An automatic pass, if one is enabled and due: the mount that wins the
/// compare-and-set on the last pass's time plans and starts the moves (its
/// own or any pool runs them). Returns the moves started.
pub fn auto_tick(cat: &Catalog, st: &mut Auto) -> Result<Vec<Move>> {
    let store = cat.store();
    let Some(every) = store
        .setting(super::SETTING_EVERY)?
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|s| *s > 0)
    else {
        return Ok(Vec::new());
    };
    let wall = crate::store::sqlite::now_millis();
    let last = store.setting(super::SETTING_LAST_PASS)?;
    let last_ms = last
        .as_deref()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let since = wall - last_ms;
    let policy = match stored_policy(cat)? {
        Ok(p) => p,
        Err(e) => {
            log::warn!("tiering: the stored policy is refused ({e}); no pass made");
            return Ok(Vec::new());
        }
    };
    let s = if since >= every.saturating_mul(1000) {
        if !store.swap_setting(
            super::SETTING_LAST_PASS,
            last.as_deref(),
            Some(&wall.to_string()),
        )? {
            st.pending.clear();
            return Ok(Vec::new());
        }
        let plan = plan::make(cat, &policy, super::now())?;
        start(cat, &plan.moves, plan.in_flight, &policy)?
    } else if !st.pending.is_empty() {
        // This mount's pass left moves for later: the next batch, when
        // relocations have finished.
        let pending = std::mem::take(&mut st.pending);
        start(cat, &pending, in_flight(cat)?, &policy)?
    } else {
        return Ok(Vec::new());
    };
    st.pending = s.rest;
    for (m, why) in &s.refused {
        log::info!("tiering: {} not moved: {why}", m.name);
    }
    for (m, _) in &s.started {
        log::info!(
            "tiering: moving {} from {} to {} ({})",
            m.name,
            m.from,
            m.to,
            m.reason.cause()
        );
    }
    Ok(s.started.into_iter().map(|(m, _)| m).collect())
}
