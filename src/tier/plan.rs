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
    let mut p = Planner::new(inp, size_of);
    // 1. Idle vfolders leave fast volumes.
    if let Some(after) = policy.demote_after {
        p.demote_idle(after.as_millis() as Millis);
    }
    // 2. Fast volumes above their high watermark shed their coldest.
    p.shed_above_watermarks();
    // 3. Hot vfolders on capacity volumes are promoted.
    if policy.promote_opens_per_day > 0 {
        p.promote_hot(policy.promote_opens_per_day);
    }
    p.finish()
}

/// A plan being made: the bytes each volume holds as the moves so far would
/// leave it, and the vfolders already given a move.
struct Planner<'a, 'f> {
    inp: &'a Inputs,
    /// The vfolders in name order (the plan is deterministic).
    vfs: Vec<&'a VFolder>,
    /// Bytes used per tiered volume as the plan goes.
    used: BTreeMap<String, u64>,
    /// Vfolders moving already or given a move by this plan.
    taken: HashSet<String>,
    /// Sizes asked for so far (`size_of` is asked once per vfolder).
    sizes: HashMap<String, Option<u64>>,
    size_of: &'f mut dyn FnMut(&VFolder) -> Option<u64>,
    plan: Plan,
}

impl<'a, 'f> Planner<'a, 'f> {
    fn new(inp: &'a Inputs, size_of: &'f mut dyn FnMut(&VFolder) -> Option<u64>) -> Self {
        let mut vfs: Vec<&VFolder> = inp.vfolders.iter().collect();
        vfs.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        let used = inp
            .volumes
            .iter()
            .filter_map(|(n, s)| s.space.map(|(u, _)| (n.clone(), u)))
            .collect();
        let plan = Plan {
            now: inp.now,
            in_flight: vfs.iter().filter(|v| v.status.is_relocating()).count(),
            ..Plan::default()
        };
        let mut p = Planner {
            inp,
            vfs,
            used,
            taken: HashSet::new(),
            sizes: HashMap::new(),
            size_of,
            plan,
        };
        // Relocations under way count where they are going.
        for v in p.vfs.clone() {
            if let Some(to) = inp.moving.get(&v.id) {
                p.taken.insert(v.id.clone());
                let b = inp.sizes.get(&v.id).copied().unwrap_or(0);
                p.shift(&v.volume, to, b);
            }
        }
        p
    }

    fn tier_of(&self, vol: &str) -> Option<Tier> {
        self.inp.volumes.get(vol).map(|v| v.tier)
    }

    /// When `v` was last used (never before its creation).
    fn last(&self, v: &VFolder) -> Millis {
        let seen = self.inp.last_access.get(&v.id).copied();
        seen.unwrap_or(v.created_at).max(v.created_at)
    }

    fn idle_days(&self, v: &VFolder) -> u64 {
        ((self.inp.now - self.last(v)).max(0) / DAY_MS) as u64
    }

    /// `v`'s size, measured at most once; a held vfolder is not measured
    /// (it does not move).
    fn size(&mut self, v: &VFolder) -> Option<u64> {
        if self.held_why(v).is_some() {
            return None;
        }
        if let Some(b) = self.sizes.get(&v.id) {
            return *b;
        }
        let b = self
            .inp
            .sizes
            .get(&v.id)
            .copied()
            .or_else(|| (self.size_of)(v));
        self.sizes.insert(v.id.clone(), b);
        b
    }

    /// Why `v` may not move, if it may not.
    fn held_why(&self, v: &VFolder) -> Option<String> {
        if let Some(c) = self.inp.pins.get(&v.id) {
            return Some(format!("pinned ({c})"));
        }
        if let Some(n) = self.inp.attached.get(&v.id).filter(|n| **n > 0) {
            return Some(format!("attached to {n} session(s)"));
        }
        if !Op::RelocateStart.allows_from(v.status) {
            return Some(format!("status {} cannot be relocated", v.status));
        }
        None
    }

    /// The volume of `tier` least full after taking `bytes`, within its
    /// high watermark.
    fn target(&self, tier: Tier, bytes: u64) -> Option<String> {
        self.inp
            .volumes
            .values()
            .filter(|s| s.tier == tier)
            .filter_map(|s| {
                let (_, total) = s.space?;
                let after = self.used.get(&s.name).copied()? + bytes;
                let p = pct(after, total);
                (p <= s.high).then(|| (p, s.name.clone()))
            })
            .min()
            .map(|(_, n)| n)
    }

    /// Counts `bytes` as moved from volume `from` to volume `to`.
    fn shift(&mut self, from: &str, to: &str, bytes: u64) {
        if let Some(u) = self.used.get_mut(from) {
            *u = u.saturating_sub(bytes);
        }
        if let Some(u) = self.used.get_mut(to) {
            *u += bytes;
        }
    }

    /// Gives `v` a move to a volume of `tier`, or records why it is held.
    fn place(&mut self, v: &VFolder, reason: Reason, tier: Tier) {
        let bytes = self.size(v);
        let held = |why| Held {
            id: v.id.clone(),
            name: v.name.clone(),
            reason: reason.clone(),
            why,
        };
        if let Some(why) = self.held_why(v) {
            self.plan.held.push(held(why));
            return;
        }
        let Some(to) = self.target(tier, bytes.unwrap_or(0)) else {
            let why = format!("no {tier} volume has room below its high watermark");
            self.plan.held.push(held(why));
            return;
        };
        self.shift(&v.volume, &to, bytes.unwrap_or(0));
        self.taken.insert(v.id.clone());
        self.plan.moves.push(Move {
            id: v.id.clone(),
            name: v.name.clone(),
            from: v.volume.clone(),
            to,
            reason,
            bytes,
        });
    }

    /// Vfolders on fast volumes not used for `after_ms` go to capacity.
    fn demote_idle(&mut self, after_ms: Millis) {
        for v in self.vfs.clone() {
            if self.tier_of(&v.volume) == Some(Tier::Fast)
                && !self.taken.contains(&v.id)
                && self.inp.now - self.last(v) >= after_ms
            {
                self.place(v, Reason::Idle(self.idle_days(v)), Tier::Capacity);
            }
        }
    }

    /// Each fast volume above its high watermark sheds its coldest vfolders
    /// until it is down to its low watermark.
    fn shed_above_watermarks(&mut self) {
        let fast = self.inp.volumes.values().filter(|s| s.tier == Tier::Fast);
        for s in fast {
            let Some((now_used, total)) = s.space else {
                continue;
            };
            if pct(self.used[&s.name], total) <= s.high {
                continue;
            }
            let mut coldest: Vec<&VFolder> = (self.vfs.iter().copied())
                .filter(|v| v.volume == s.name && !self.taken.contains(&v.id))
                .collect();
            coldest.sort_by_key(|v| (self.last(v), &v.name, &v.id));
            for v in coldest {
                if pct(self.used[&s.name], total) <= s.low {
                    break;
                }
                let reason = Reason::Watermark {
                    volume: s.name.clone(),
                    used_pct: pct(now_used, total),
                    high: s.high,
                    idle_days: self.idle_days(v),
                };
                self.place(v, reason, Tier::Capacity);
            }
        }
    }

    /// Vfolders on capacity volumes opened more than `min_opens` times today
    /// go to a fast volume, the hottest first.
    fn promote_hot(&mut self, min_opens: u64) {
        let mut hot: Vec<(&VFolder, u64)> = (self.vfs.iter().copied())
            .filter(|v| {
                self.tier_of(&v.volume) == Some(Tier::Capacity) && !self.taken.contains(&v.id)
            })
            .filter_map(|v| {
                let n = self.inp.day_opens.get(&v.id).copied().unwrap_or(0);
                (n > min_opens).then_some((v, n))
            })
            .collect();
        hot.sort_by(|(a, x), (b, y)| (y, &a.name, &a.id).cmp(&(x, &b.name, &b.id)));
        for (v, n) in hot {
            self.place(v, Reason::Hot(n), Tier::Fast);
        }
    }

    /// The plan, with each tiered volume's use now and after it.
    fn finish(mut self) -> Plan {
        let used = &self.used;
        self.plan.volumes = (self.inp.volumes.values())
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
        self.plan
    }
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
