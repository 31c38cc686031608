//! `vfolderfs tier ...`: the tiering policy's plan, its run, pins, and the
//! automatic passes of the mounts (see [`crate::tier`]).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{CliError, fmt_time};
use crate::catalog::Catalog;
use crate::tier::policy::{Policy, PolicyFile};
use crate::tier::{self, plan, run};
use crate::workers::Outcome;

/// `vfolderfs tier ...`.
#[derive(Subcommand, Debug)]
pub enum TierCmd {
    /// Print what a tiering pass would move, where and why, and what it
    /// would but may not (pinned, attached, status, no room).
    Plan {
        #[command(flatten)]
        knobs: Knobs,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make tiering passes: start the planned moves as relocation jobs (at
    /// most --max-concurrent under way) and run them here until the plan is
    /// done; with --no-wait start one pass's moves for the mounts' pools.
    Run {
        #[command(flatten)]
        knobs: Knobs,
        /// Only start the moves; a mount's pool runs them.
        #[arg(long)]
        no_wait: bool,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Pin a vfolder against automatic moves (`relocate` pins too).
    Pin {
        /// The vfolder (live name or id).
        name: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Let automatic moves move a vfolder again.
    Unpin {
        /// The vfolder (live name, trash name or id).
        name: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List pinned vfolders.
    Pins {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show or set the mounts' automatic passes: every DURATION, one mount
    /// of the store makes a pass with the stored policy (--every off:
    /// none). Setting stores the policy given (--policy, flags) with it.
    Auto {
        /// How often (`1h`, `10m`), or `off`.
        #[arg(long)]
        every: Option<String>,
        #[command(flatten)]
        knobs: Knobs,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl TierCmd {
    /// Whether `--json` was asked for.
    pub fn json(&self) -> bool {
        match self {
            TierCmd::Plan { json, .. }
            | TierCmd::Run { json, .. }
            | TierCmd::Pin { json, .. }
            | TierCmd::Unpin { json, .. }
            | TierCmd::Pins { json }
            | TierCmd::Auto { json, .. } => *json,
        }
    }
}

/// The policy: a file, or the one stored for automatic passes, or the
/// defaults; then these flags over it.
#[derive(Args, Debug, Default)]
pub struct Knobs {
    /// A TOML policy file (see README, Tiering); default: the stored
    /// policy (`tier auto`), else the defaults.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Demote vfolders not opened for this long (`30d`; `off`).
    #[arg(long, value_name = "DURATION")]
    demote_after: Option<String>,
    /// Promote vfolders opened more than this many times on one day (0: never).
    #[arg(long, value_name = "K")]
    promote_opens: Option<u64>,
    /// Default high watermark of fast volumes (percent).
    #[arg(long, value_name = "PCT")]
    high_watermark: Option<u8>,
    /// Default low watermark of fast volumes (percent).
    #[arg(long, value_name = "PCT")]
    low_watermark: Option<u8>,
    /// Relocations under way at once, at most.
    #[arg(long, value_name = "N")]
    max_concurrent: Option<usize>,
}

impl Knobs {
    fn any_flag(&self) -> bool {
        self.policy.is_some()
            || self.demote_after.is_some()
            || self.promote_opens.is_some()
            || self.high_watermark.is_some()
            || self.low_watermark.is_some()
            || self.max_concurrent.is_some()
    }

    /// The policy these say, checked as a whole.
    fn policy(&self, cat: &Catalog) -> Result<Policy, CliError> {
        let base = match &self.policy {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| CliError::usage(format!("policy file {}: {e}", f.display())))?;
                Policy::parse(&text)
                    .map_err(|e| CliError::usage(format!("policy file {}: {e}", f.display())))?
            }
            None => run::stored_policy(cat)?
                .map_err(|e| CliError::usage(format!("the stored tier policy: {e}")))?,
        };
        base.with(&PolicyFile {
            demote_after: self.demote_after.clone(),
            promote_opens_per_day: self.promote_opens,
            high_watermark: self.high_watermark,
            low_watermark: self.low_watermark,
            max_concurrent: self.max_concurrent,
        })
        .map_err(CliError::usage)
    }
}

fn print_plan(p: &plan::Plan) {
    if p.moves.is_empty() {
        println!("nothing to move");
    } else {
        println!("{:24}  {:12}  {:12}  CAUSE", "VFOLDER", "FROM", "TO");
        for m in &p.moves {
            println!(
                "{:24}  {:12}  {:12}  {}",
                m.name,
                m.from,
                m.to,
                m.reason.cause()
            );
        }
    }
    for h in &p.held {
        println!("held: {}: {} ({})", h.name, h.why, h.reason.cause());
    }
    for v in &p.volumes {
        let pct = |x: Option<u8>| x.map_or("unavailable".to_string(), |x| format!("{x}%"));
        println!(
            "volume {} ({}): {} used, {} after the plan (high {}%, low {}%)",
            v.name,
            v.tier,
            pct(v.used_pct),
            pct(v.used_pct_after),
            v.high,
            v.low
        );
    }
    if p.in_flight > 0 {
        println!("{} relocation(s) under way", p.in_flight);
    }
}

/// Runs a `tier` subcommand.
pub fn run(cat: &Catalog, cmd: TierCmd) -> Result<i32, CliError> {
    match cmd {
        TierCmd::Plan { knobs, json } => plan_cmd(cat, knobs, json),
        TierCmd::Run {
            knobs,
            no_wait,
            json,
        } => run_passes(cat, &knobs.policy(cat)?, no_wait, json),
        TierCmd::Pin { name, json } => pin(cat, name, json),
        TierCmd::Unpin { name, json } => unpin(cat, name, json),
        TierCmd::Pins { json } => pins(cat, json),
        TierCmd::Auto { every, knobs, json } => auto(cat, every, knobs, json),
    }
}

/// `tier plan`: what a run would move now, and why.
fn plan_cmd(cat: &Catalog, knobs: Knobs, json: bool) -> Result<i32, CliError> {
    let policy = knobs.policy(cat)?;
    let p = plan::make(cat, &policy, tier::now())?;
    if json {
        println!("{}", plan::to_json(&p));
    } else {
        print_plan(&p);
    }
    Ok(0)
}

/// `tier pin NAME`: tiering never moves it until unpinned.
fn pin(cat: &Catalog, name: String, json: bool) -> Result<i32, CliError> {
    let v = cat.resolve_live(&name)?;
    let cause = format!("tier pin ({})", who());
    cat.store().set_pin(&v.id, Some(&cause))?;
    if json {
        println!(
            "{}",
            json!({"vfolder": v.name, "vfolder_id": v.id, "pinned": true})
        );
    } else {
        println!("pinned {:?}: tiering will not move it", v.name);
    }
    Ok(0)
}

/// `tier unpin NAME`.
fn unpin(cat: &Catalog, name: String, json: bool) -> Result<i32, CliError> {
    let v = cat.resolve(&name)?;
    let was = cat.store().set_pin(&v.id, None)?;
    if json {
        println!(
            "{}",
            json!({"vfolder": v.name, "vfolder_id": v.id, "pinned": false, "was_pinned": was})
        );
    } else if was {
        println!("unpinned {:?}: tiering may move it again", v.name);
    } else {
        println!("{:?} was not pinned", v.name);
    }
    Ok(0)
}

/// `tier pins`: the pinned vfolders, when and why.
fn pins(cat: &Catalog, json: bool) -> Result<i32, CliError> {
    let pins = cat.store().pins()?;
    let rows: Vec<Value> = pins
        .iter()
        .map(|p| {
            let name = cat.store().get(&p.vfolder_id).map(|v| v.name).ok();
            json!({"vfolder": name, "vfolder_id": p.vfolder_id,
                   "pinned_at": fmt_time(p.at), "cause": p.cause})
        })
        .collect();
    if json {
        println!("{}", Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{:24}  {}  {}",
                r["vfolder"].as_str().unwrap_or("?"),
                r["pinned_at"].as_str().unwrap_or(""),
                r["cause"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

/// `tier auto [--every D|off] [policy]`: stores the policy and interval of
/// the mounts' automatic passes (checked before anything is stored), and
/// shows them.
fn auto(cat: &Catalog, every: Option<String>, knobs: Knobs, json: bool) -> Result<i32, CliError> {
    let store = cat.store();
    if let Some(e) = &every {
        let secs = parse_every(e)?;
        // Checked before anything is stored.
        let policy = knobs.policy(cat)?;
        let cur = store.setting(tier::SETTING_POLICY)?;
        store.swap_setting(
            tier::SETTING_POLICY,
            cur.as_deref(),
            Some(&policy.to_toml()),
        )?;
        let cur = store.setting(tier::SETTING_EVERY)?;
        store.swap_setting(
            tier::SETTING_EVERY,
            cur.as_deref(),
            secs.map(|s| s.to_string()).as_deref(),
        )?;
    } else if knobs.any_flag() {
        return Err(CliError::usage(
            "policy options with `tier auto` are stored with --every DURATION",
        ));
    }
    let secs = store
        .setting(tier::SETTING_EVERY)?
        .and_then(|v| v.parse::<u64>().ok());
    let policy = run::stored_policy(cat)?.map_err(CliError::usage)?;
    let shown =
        secs.map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string());
    if json {
        println!(
            "{}",
            json!({"every": shown, "seconds": secs, "policy": policy.to_toml()})
        );
    } else {
        match &shown {
            Some(s) => println!("automatic tiering passes every {s}, policy:"),
            None => println!("automatic tiering passes: off; policy:"),
        }
        print!("{}", policy.to_toml());
    }
    Ok(0)
}

/// `--every`'s value: seconds between passes, or `None` for `off`.
fn parse_every(e: &str) -> Result<Option<u64>, CliError> {
    match e.trim() {
        "off" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d.as_secs() >= 1 => Ok(Some(d.as_secs())),
            Ok(_) => Err(CliError::usage(format!(
                "--every {e:?} is shorter than a second"
            ))),
            Err(err) => Err(CliError::usage(format!(
                "bad --every {e:?}: {err} (a duration like 1h, or off)"
            ))),
        },
    }
}

fn who() -> String {
    // SAFETY: getuid has no preconditions.
    format!("uid {}", unsafe { libc::getuid() })
}

/// `tier run`: one plan, its moves started in batches of at most
/// `max_concurrent` relocations under way, each batch run here to its end
/// (with `no_wait`: the first batch only started, for the mounts' pools).
fn run_passes(cat: &Catalog, policy: &Policy, no_wait: bool, json: bool) -> Result<i32, CliError> {
    let mut moved: Vec<Value> = Vec::new();
    let mut refused: Vec<Value> = Vec::new();
    let mut failed = false;
    let p = plan::make(cat, policy, tier::now())?;
    let mut todo = p.moves.clone();
    let mut in_flight = p.in_flight;
    let mut left = 0;
    while !todo.is_empty() {
        let s = run::start(cat, &todo, in_flight, policy)?;
        todo = s.rest;
        for (m, why) in &s.refused {
            if !json {
                println!("not moved: {why}");
            }
            refused
                .push(json!({"vfolder": m.name, "vfolder_id": m.id, "to": m.to, "refusal": why}));
        }
        if s.started.is_empty() {
            left = todo.len();
            if left > 0 && !json {
                println!(
                    "{left} move(s) left for a later pass: {in_flight} relocation(s) under way \
                     (at most {} at once)",
                    policy.max_concurrent
                );
            }
            break;
        }
        for (m, _) in &s.started {
            if !json {
                println!(
                    "{} {} from {} to {} ({})",
                    if no_wait { "queued" } else { "moving" },
                    m.name,
                    m.from,
                    m.to,
                    m.reason.cause()
                );
            }
        }
        if no_wait {
            for (m, _) in &s.started {
                moved.push(
                    json!({"vfolder": m.name, "vfolder_id": m.id, "from": m.from,
                                  "to": m.to, "cause": m.reason.cause(), "outcome": "queued"}),
                );
            }
            left = todo.len();
            break;
        }
        let ids: Vec<String> = s.started.iter().map(|(_, v)| v.id.clone()).collect();
        for ((m, _), (_, r)) in s.started.iter().zip(run::run_here(cat, &ids)) {
            let outcome = match r {
                Ok(Outcome::Complete(_)) => "moved".to_string(),
                Ok(o) => {
                    failed = true;
                    format!("{o:?}")
                }
                Err(e) => {
                    failed = true;
                    e.to_string()
                }
            };
            if !json {
                println!("{}: {outcome}", m.name);
            }
            moved.push(
                json!({"vfolder": m.name, "vfolder_id": m.id, "from": m.from,
                              "to": m.to, "cause": m.reason.cause(), "outcome": outcome}),
            );
        }
        in_flight = run::in_flight(cat)?;
    }
    if json {
        println!(
            "{}",
            json!({"moves": moved, "refused": refused, "left": left})
        );
    } else if moved.is_empty() && refused.is_empty() {
        println!("nothing to move");
    }
    Ok(if failed { 1 } else { 0 })
}
