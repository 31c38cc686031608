//! Planning a tiering pass: which vfolders move where, and why; and which
//! would but may not (pinned, attached, a status that cannot be relocated,
//! no room). [`gather`] reads the store once (a fixed number of queries,
//! whatever the number of vfolders) and the volumes' space; [`decide`] is
//! a pure function of that, so a plan is deterministic: the same store and
//! the same "now" give the same plan, in the same order.
//!
//! Order of decisions: idle vfolders leave fast volumes first; then a fast
//! volume still above its high watermark (after those moves) sheds its
//! coldest vfolders (least recently accessed first, then by name) until it
//! is projected at its low watermark; then hot vfolders on capacity
//! volumes are promoted (most opened first) while the fast volume they go
//! to stays at or below its high watermark. A target is the volume of the
//! wanted tier left least full by the move, never above its own high
//! watermark. Vfolders on untiered volumes are never moved. Attached
//! vfolders never move (see README, Tiering).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::policy::Policy;
use super::{DAY_MS, Tier, day_of};
use crate::catalog::Catalog;
use crate::status::Op;
use crate::store::{ListFilter, Millis, Result, VFolder};

/// One tiered volume as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeState {
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Bytes used and in all on its filesystem (`None`: unavailable; no
    /// vfolder moves to or is evicted from it).
    pub space: Option<(u64, u64)>,
    /// Effective high watermark (percent).
    pub high: u8,
    /// Effective low watermark (percent), below `high`.
    pub low: u8,
}

/// Everything a plan is made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// "Now".
    pub now: Millis,
    /// Live vfolders.
    pub vfolders: Vec<VFolder>,
    /// Tiered volumes by name.
    pub volumes: BTreeMap<String, VolumeState>,
    /// Measured sizes (bytes) by vfolder id.
    pub sizes: HashMap<String, u64>,
    /// Last access by vfolder id.
    pub last_access: HashMap<String, Millis>,
    /// The most opens on one day, today or yesterday, by vfolder id.
    pub day_opens: HashMap<String, u64>,
    /// Pinned vfolders: id → cause.
    pub pins: HashMap<String, String>,
    /// Attachment counts by vfolder id.
    pub attached: HashMap<String, usize>,
    /// Relocations under way: vfolder id → target volume. Their data is
    /// counted on the target already, and they are not considered again.
    pub moving: HashMap<String, String>,
}

/// Why a vfolder moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not accessed for this many whole days.
    Idle(u64),
    /// The fast volume is above its high watermark; this is among the coldest.
    Watermark {
        /// The volume.
        volume: String,
        /// Its use now (percent).
        used_pct: u8,
        /// Its high watermark.
        high: u8,
        /// Whole days since this vfolder's last access.
        idle_days: u64,
    },
    /// Opened this many times on one day.
    Hot(u64),
}

impl Reason {
    /// The cause recorded in history ("tier: idle 31 days").
    pub fn cause(&self) -> String {
        match self {
            Reason::Idle(d) => format!("tier: idle {d} days"),
            Reason::Watermark {
                volume,
                used_pct,
                high,
                idle_days,
            } => format!(
                "tier: {volume} at {used_pct}% above its high watermark {high}%, coldest first (idle {idle_days} days)"
            ),
            Reason::Hot(n) => format!("tier: opened {n} times in a day"),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Reason::Idle(_) => "idle",
            Reason::Watermark { .. } => "watermark",
            Reason::Hot(_) => "hot",
        }
    }
}

/// A planned move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The vfolder's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The volume it is on.
    pub from: String,
    /// The volume it goes to.
    pub to: String,
    /// Why.
    pub reason: Reason,
    /// Its measured size, if known.
    pub bytes: Option<u64>,
}

/// A vfolder the policy would move but may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The vfolder's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Why it would move.
    pub reason: Reason,
    /// Why it does not ("pinned (...)", "attached to 1 session(s)",
    /// "status performing cannot be relocated", "no room on a capacity volume").
    pub why: String,
}

/// A plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// "Now" it was made for.
    pub now: Millis,
    /// The moves, in the order they are started.
    pub moves: Vec<Move>,
    /// Vfolders held back, in the order they were considered.
    pub held: Vec<Held>,
    /// Relocations running or queued when it was made.
    pub in_flight: usize,
    /// Tiered volumes, by name.
    pub volumes: Vec<VolumeUse>,
}

/// A tiered volume's use now and once a plan is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUse {
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Percent used now (`None`: unavailable).
    pub used_pct: Option<u8>,
    /// Percent used once the plan is done.
    pub used_pct_after: Option<u8>,
    /// Its effective high watermark.
    pub high: u8,
    /// Its effective low watermark.
    pub low: u8,
}

fn pct(used: u64, total: u64) -> u8 {
    if total == 0 {
        return 100;
    }
    ((used as u128 * 100).div_ceil(total as u128)).min(100) as u8
}

/// Decides the plan from `inp` under `policy`. `size_of` gives a
/// vfolder's size when `inp.sizes` does not know it (the gatherer measures
/// it); it is asked only for vfolders that would move.
pub fn decide(
    policy: &Policy,
    inp: &Inputs,
    size_of: &mut dyn FnMut(&VFolder) -> Option<u64>,
) -> Plan {
    let mut vfs: Vec<&VFolder> = inp.vfolders.iter().collect();
    vfs.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let tier_of = |vol: &str| inp.volumes.get(vol).map(|v| v.tier);
    let last = |v: &VFolder| {
        inp.last_access
            .get(&v.id)
            .copied()
            .unwrap_or(v.created_at)
            .max(v.created_at)
    };
    let idle_days = |v: &VFolder| ((inp.now - last(v)).max(0) / DAY_MS) as u64;
    // Bytes used per volume as the plan goes.
    let mut used: BTreeMap<String, u64> = inp
        .volumes
        .iter()
        .filter_map(|(n, s)| s.space.map(|(u, _)| (n.clone(), u)))
        .collect();
    let mut plan = Plan {
        now: inp.now,
        in_flight: inp
            .vfolders
            .iter()
            .filter(|v| v.status.is_relocating())
            .count(),
        ..Plan::default()
    };
    let mut taken: HashSet<String> = HashSet::new();
    for v in &vfs {
        if let Some(to) = inp.moving.get(&v.id) {
            taken.insert(v.id.clone());
            let b = inp.sizes.get(&v.id).copied().unwrap_or(0);
            if let Some(u) = used.get_mut(&v.volume) {
                *u = u.saturating_sub(b);
            }
            if let Some(u) = used.get_mut(to) {
                *u += b;
            }
        }
    }
    let mut sizes: HashMap<String, Option<u64>> = HashMap::new();
    let mut size = |v: &VFolder| -> Option<u64> {
        *sizes
            .entry(v.id.clone())
            .or_insert_with(|| inp.sizes.get(&v.id).copied().or_else(|| size_of(v)))
    };
    // Why `v` may not move, if it may not.
    let held_why = |v: &VFolder| -> Option<String> {
        if let Some(c) = inp.pins.get(&v.id) {
            return Some(format!("pinned ({c})"));
        }
        if let Some(n) = inp.attached.get(&v.id).filter(|n| **n > 0) {
            return Some(format!("attached to {n} session(s)"));
        }
        if !Op::RelocateStart.allows_from(v.status) {
            return Some(format!("status {} cannot be relocated", v.status));
        }
        None
    };
    // The volume of `tier` least full after taking `bytes`, within its
    // high watermark.
    let target = |used: &BTreeMap<String, u64>, tier: Tier, bytes: u64| -> Option<String> {
        inp.volumes
            .values()
            .filter(|s| s.tier == tier)
            .filter_map(|s| {
                let (_, total) = s.space?;
                let after = used.get(&s.name).copied()? + bytes;
                let p = pct(after, total);
                (p <= s.high).then(|| (p, s.name.clone()))
            })
            .min()
            .map(|(_, n)| n)
    };
    let place = |plan: &mut Plan,
                 used: &mut BTreeMap<String, u64>,
                 taken: &mut HashSet<String>,
                 v: &VFolder,
                 reason: Reason,
                 tier: Tier,
                 bytes: Option<u64>|
     -> bool {
        if let Some(why) = held_why(v) {
            plan.held.push(Held {
                id: v.id.clone(),
                name: v.name.clone(),
                reason,
                why,
            });
            return false;
        }
        let Some(to) = target(used, tier, bytes.unwrap_or(0)) else {
            plan.held.push(Held {
                id: v.id.clone(),
                name: v.name.clone(),
                reason,
                why: format!("no {tier} volume has room below its high watermark"),
            });
            return false;
        };
        let b = bytes.unwrap_or(0);
        if let Some(u) = used.get_mut(&v.volume) {
            *u = u.saturating_sub(b);
        }
        if let Some(u) = used.get_mut(&to) {
            *u += b;
        }
        taken.insert(v.id.clone());
        plan.moves.push(Move {
            id: v.id.clone(),
            name: v.name.clone(),
            from: v.volume.clone(),
            to,
            reason,
            bytes,
        });
        true
    };
    // 1. Idle vfolders leave fast volumes.
    if let Some(after) = policy.demote_after {
        let after_ms = after.as_millis() as Millis;
        for v in &vfs {
            if tier_of(&v.volume) == Some(Tier::Fast)
                && !taken.contains(&v.id)
                && inp.now - last(v) >= after_ms
            {
                // A held vfolder is not measured: it does not move.
                let b = if held_why(v).is_some() { None } else { size(v) };
                place(
                    &mut plan,
                    &mut used,
                    &mut taken,
                    v,
                    Reason::Idle(idle_days(v)),
                    Tier::Capacity,
                    b,
                );
            }
        }
    }
    // 2. Fast volumes above their high watermark shed their coldest.
    for s in inp.volumes.values().filter(|s| s.tier == Tier::Fast) {
        let Some((now_used, total)) = s.space else {
            continue;
        };
        if pct(used[&s.name], total) <= s.high {
            continue;
        }
        let mut coldest: Vec<&&VFolder> = vfs
            .iter()
            .filter(|v| v.volume == s.name && !taken.contains(&v.id))
            .collect();
        coldest.sort_by(|a, b| (last(a), &a.name, &a.id).cmp(&(last(b), &b.name, &b.id)));
        for v in coldest {
            if pct(used[&s.name], total) <= s.low {
                break;
            }
            // A held vfolder is not measured: it does not move.
            let b = if held_why(v).is_some() { None } else { size(v) };
            let reason = Reason::Watermark {
                volume: s.name.clone(),
                used_pct: pct(now_used, total),
                high: s.high,
                idle_days: idle_days(v),
            };
            place(
                &mut plan,
                &mut used,
                &mut taken,
                v,
                reason,
                Tier::Capacity,
                b,
            );
        }
    }
    // 3. Hot vfolders on capacity volumes are promoted.
    if policy.promote_opens_per_day > 0 {
        let mut hot: Vec<(&&VFolder, u64)> = vfs
            .iter()
            .filter(|v| tier_of(&v.volume) == Some(Tier::Capacity) && !taken.contains(&v.id))
            .filter_map(|v| {
                let n = inp.day_opens.get(&v.id).copied().unwrap_or(0);
                (n > policy.promote_opens_per_day).then_some((v, n))
            })
            .collect();
        hot.sort_by(|(a, x), (b, y)| (y, &a.name, &a.id).cmp(&(x, &b.name, &b.id)));
        for (v, n) in hot {
            // A held vfolder is not measured: it does not move.
            let b = if held_why(v).is_some() { None } else { size(v) };
            place(
                &mut plan,
                &mut used,
                &mut taken,
                v,
                Reason::Hot(n),
                Tier::Fast,
                b,
            );
        }
    }
    plan.volumes = inp
        .volumes
        .values()
        .map(|s| {
            let (now_p, after_p) = match s.space {
                Some((u, t)) => (Some(pct(u, t)), Some(pct(used[&s.name], t))),
                None => (None, None),
            };
            VolumeUse {
                name: s.name.clone(),
                tier: s.tier,
                used_pct: now_p,
                used_pct_after: after_p,
                high: s.high,
                low: s.low,
            }
        })
        .collect();
    plan
}

/// Reads what a plan needs from the store and the volumes (see the module
/// documentation for what it costs), and decides it. Sizes not measured
/// yet are measured (a walk of that vfolder only) for vfolders that would
/// move, and recorded.
pub fn make(cat: &Catalog, policy: &Policy, now: Millis) -> Result<Plan> {
    let inp = gather(cat, policy, now)?;
    let mut measure = |v: &VFolder| measure(cat, v);
    Ok(decide(policy, &inp, &mut measure))
}

/// The store and volume reads behind a plan.
pub fn gather(cat: &Catalog, policy: &Policy, now: Millis) -> Result<Inputs> {
    let store = cat.store();
    let mut volumes = BTreeMap::new();
    let paths: HashMap<String, std::path::PathBuf> = cat.volume_list()?.into_iter().collect();
    for t in store.volume_tiers()? {
        let Some(tier) = t.tier else { continue };
        let space = paths.get(&t.volume).and_then(|p| {
            crate::volumes::probe(p)
                .space
                .map(|(avail, total)| (total.saturating_sub(avail), total))
        });
        let high = t.high_watermark.unwrap_or(policy.high_watermark);
        let low = t
            .low_watermark
            .unwrap_or(policy.low_watermark)
            .min(high.saturating_sub(1));
        volumes.insert(
            t.volume.clone(),
            VolumeState {
                name: t.volume,
                tier,
                space,
                high,
                low,
            },
        );
    }
    let today = day_of(now);
    let mut day_opens: HashMap<String, u64> = HashMap::new();
    for u in store.usage_since(today - 1, None)? {
        if u.day <= today {
            let e = day_opens.entry(u.vfolder_id).or_default();
            *e = (*e).max(u.opens);
        }
    }
    let mut attached: HashMap<String, usize> = HashMap::new();
    for a in store.attachments(None)? {
        *attached.entry(a.vfolder_id).or_default() += 1;
    }
    let vfolders = store.list(ListFilter::Live)?;
    let mut moving = HashMap::new();
    for v in vfolders.iter().filter(|v| v.status.is_relocating()) {
        if let Some(to) = store.job(&v.id)?.and_then(|j| j.arg) {
            moving.insert(v.id.clone(), to);
        }
    }
    Ok(Inputs {
        now,
        vfolders,
        moving,
        volumes,
        sizes: store
            .sizes()?
            .into_iter()
            .map(|(id, s)| (id, s.bytes))
            .collect(),
        last_access: store.last_access(None)?,
        day_opens,
        pins: store
            .pins()?
            .into_iter()
            .map(|p| (p.vfolder_id, p.cause))
            .collect(),
        attached,
    })
}

/// Measures a vfolder's size by walking its backing tree, and records it.
fn measure(cat: &Catalog, v: &VFolder) -> Option<u64> {
    let fd = cat
        .open_backing(&v.id, &v.volume, libc::O_RDONLY | libc::O_DIRECTORY)
        .ok()?;
    let never = std::sync::atomic::AtomicBool::new(false);
    let stats = crate::backing::count::count_tree(std::os::fd::AsFd::as_fd(&fd), &never)
        .ok()
        .flatten()?;
    let _ = cat.store().record_size(&v.id, stats.bytes, stats.entries);
    Some(stats.bytes)
}

/// The plan in its JSON form (`tier plan --json`).
pub fn to_json(plan: &Plan) -> Value {
    json!({
        "now": crate::cli::fmt_time(plan.now),
        "in_flight": plan.in_flight,
        "moves": plan.moves.iter().map(|m| json!({
            "vfolder": m.name,
            "vfolder_id": m.id,
            "from": m.from,
            "to": m.to,
            "reason": m.reason.kind(),
            "cause": m.reason.cause(),
            "bytes": m.bytes,
        })).collect::<Vec<_>>(),
        "held": plan.held.iter().map(|h| json!({
            "vfolder": h.name,
            "vfolder_id": h.id,
            "reason": h.reason.kind(),
            "cause": h.reason.cause(),
            "why": h.why,
        })).collect::<Vec<_>>(),
        "volumes": plan.volumes.iter().map(|v| json!({
            "name": v.name,
            "tier": v.tier.as_str(),
            "used_pct": v.used_pct,
            "used_pct_after": v.used_pct_after,
            "high_watermark": v.high,
            "low_watermark": v.low,
        })).collect::<Vec<_>>(),
    })
}
