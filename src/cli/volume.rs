//! `vfolderfs volume ...`: adding, listing, showing and removing data
//! volumes. Which directories may be volumes is [`crate::volumes`]'s job.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use super::CliError;
use super::output::human_bytes;
use crate::catalog::Catalog;
use crate::store::{ListFilter, StoreError, VFolder, VolumeTier};
use crate::volumes::{self, VolumeError};

/// `vfolderfs volume ...`.
#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Add a data volume (a directory, typically on its own disk; created if
    /// missing). Refused on a FUSE filesystem, inside a vfolderfs mount, or
    /// overlapping another volume or the store directory.
    Add {
        /// Its name.
        name: String,
        /// Its directory (created if missing).
        path: PathBuf,
        /// Its tier for tiering (`fast` or `capacity`); without it the volume
        /// is untiered and the tiering policy never moves vfolders to or
        /// from it (as before tiering existed).
        #[arg(long, value_parser = parse_tier)]
        tier: Option<crate::tier::Tier>,
        /// Print the volume as a JSON object (as `volume show --json`).
        #[arg(long)]
        json: bool,
    },
    /// Set a volume's tier and watermarks (`default` too). Options left out
    /// keep their value; `none` clears one.
    Set {
        /// The volume's name.
        name: String,
        /// `fast`, `capacity` or `none` (untiered).
        #[arg(long)]
        tier: Option<String>,
        /// Percent of its filesystem used above which the policy moves the
        /// coldest vfolders off a fast volume (and moves none onto a volume);
        /// `none`: the policy's (90 by default).
        #[arg(long, value_name = "PCT")]
        high_watermark: Option<String>,
        /// Percent used down to which they are then moved; `none`: the
        /// policy's (75 by default).
        #[arg(long, value_name = "PCT")]
        low_watermark: Option<String>,
        /// Print the volume as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List volumes with their free space ("unavailable" when the directory
    /// cannot be read).
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one volume: directory, filesystem, space, vfolders, reachability.
    Show {
        /// The volume's name.
        name: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Forget a volume (its directory is left as it is). Refused while any
    /// vfolder, of any status, trashed ones included, is on it, keeps an old
    /// copy there, or is being relocated to it; `default` cannot be removed.
    Remove {
        /// The volume's name.
        name: String,
        /// Print `{"removed": NAME}`.
        #[arg(long)]
        json: bool,
    },
}

fn parse_tier(s: &str) -> Result<crate::tier::Tier, String> {
    s.parse()
}

/// A watermark option: a percentage, or `none`.
fn parse_pct(what: &str, s: &str) -> Result<Option<u8>, CliError> {
    if s == "none" {
        return Ok(None);
    }
    match s.trim_end_matches('%').parse::<u8>() {
        Ok(n) if n <= 100 => Ok(Some(n)),
        _ => Err(CliError::usage(format!(
            "--{what} {s:?} is not a percentage from 0 to 100 (or none)"
        ))),
    }
}

/// Every volume's tier settings by name.
fn tiers(cat: &Catalog) -> Result<HashMap<String, VolumeTier>, CliError> {
    Ok(cat
        .store()
        .volume_tiers()?
        .into_iter()
        .map(|t| (t.volume.clone(), t))
        .collect())
}

/// One volume's state, in the stable JSON form of `volume show` and
/// `volume list --json`, with its tier settings.
fn volume_json_tiered(
    name: &str,
    path: &Path,
    rows: &[VFolder],
    tiers: &HashMap<String, VolumeTier>,
) -> Value {
    let mut j = volume_json(name, path, rows);
    let t = tiers.get(name);
    j["tier"] = json!(t.and_then(|t| t.tier).map(|t| t.as_str()));
    j["high_watermark"] = json!(t.and_then(|t| t.high_watermark));
    j["low_watermark"] = json!(t.and_then(|t| t.low_watermark));
    j
}

/// One volume's state, in the stable JSON form of `volume show` and
/// `volume list --json`.
fn volume_json(name: &str, path: &Path, rows: &[VFolder]) -> Value {
    let probe = volumes::probe(path);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for v in rows.iter().filter(|v| v.volume == name) {
        *by_status.entry(v.status.to_string()).or_default() += 1;
    }
    let count: u64 = by_status.values().sum();
    let old_copies = rows
        .iter()
        .filter(|v| v.prev_volume.as_deref() == Some(name) && v.volume != name)
        .count();
    json!({
        "name": name,
        "path": path.display().to_string(),
        "filesystem": probe.fstype,
        "mount_point": probe.mount_point.map(|p| p.display().to_string()),
        "available": probe.unavailable.is_none(),
        "unavailable_reason": probe.unavailable,
        "free_bytes": probe.space.map(|s| s.0),
        "total_bytes": probe.space.map(|s| s.1),
        "vfolders": count,
        "by_status": by_status,
        "old_copies": old_copies,
    })
}

fn space(j: &Value, key: &str) -> String {
    match j[key].as_u64() {
        Some(n) => human_bytes(n),
        None => "unavailable".into(),
    }
}

/// Runs a `volume` subcommand.
pub fn run(cat: &Catalog, cmd: VolumeCmd) -> Result<i32, CliError> {
    match cmd {
        VolumeCmd::Add {
            name,
            path,
            tier,
            json,
        } => add(cat, name, path, tier, json),
        VolumeCmd::List { json } => list(cat, json),
        VolumeCmd::Show { name, json } => show(cat, name, json),
        VolumeCmd::Set {
            name,
            tier,
            high_watermark,
            low_watermark,
            json,
        } => set(cat, name, tier, high_watermark, low_watermark, json),
        VolumeCmd::Remove { name, json } => remove(cat, name, json),
    }
}

/// The directory of the volume named `name`.
fn volume_path(cat: &Catalog, name: &str) -> Result<PathBuf, CliError> {
    Ok(cat
        .volume_list()?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .ok_or_else(|| StoreError::from(VolumeError::NotFound(name.to_string())))?)
}

/// `volume add NAME PATH [--tier T]`.
fn add(
    cat: &Catalog,
    name: String,
    path: PathBuf,
    tier: Option<crate::tier::Tier>,
    json: bool,
) -> Result<i32, CliError> {
    cat.add_volume(&name, &path)?;
    // Always written: a volume of this name removed earlier may
    // have left its settings behind.
    cat.store().set_volume_tier(&VolumeTier {
        volume: name.clone(),
        tier,
        high_watermark: None,
        low_watermark: None,
    })?;
    let at = cat.volume(&name)?.path.clone();
    if json {
        let rows = cat.store().list(ListFilter::All)?;
        println!("{}", volume_json_tiered(&name, &at, &rows, &tiers(cat)?));
    } else {
        println!("added volume {name} at {}", at.display());
    }
    Ok(0)
}

/// `volume list`: every volume with its tier, space and vfolder count.
fn list(cat: &Catalog, json: bool) -> Result<i32, CliError> {
    let rows = cat.store().list(ListFilter::All)?;
    let tiers = tiers(cat)?;
    let list: Vec<Value> = cat
        .volume_list()?
        .into_iter()
        .map(|(n, p)| volume_json_tiered(&n, &p, &rows, &tiers))
        .collect();
    if json {
        println!("{}", Value::Array(list));
    } else {
        println!(
            "{:12}  {:8}  {:>12}  {:>12}  {:>8}  PATH",
            "NAME", "TIER", "FREE", "TOTAL", "VFOLDERS"
        );
        for r in list {
            println!(
                "{:12}  {:8}  {:>12}  {:>12}  {:>8}  {}",
                r["name"].as_str().unwrap_or(""),
                r["tier"].as_str().unwrap_or("-"),
                space(&r, "free_bytes"),
                space(&r, "total_bytes"),
                r["vfolders"],
                r["path"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

/// `volume show NAME`.
fn show(cat: &Catalog, name: String, json: bool) -> Result<i32, CliError> {
    let path = volume_path(cat, &name)?;
    let rows = cat.store().list(ListFilter::All)?;
    let j = volume_json_tiered(&name, &path, &rows, &tiers(cat)?);
    if json {
        println!("{j}");
    } else {
        print_show(&j);
    }
    Ok(0)
}

/// `volume set NAME [--tier T|none] [--high-watermark P|none] [--low-watermark P|none]`.
fn set(
    cat: &Catalog,
    name: String,
    tier: Option<String>,
    high_watermark: Option<String>,
    low_watermark: Option<String>,
    json: bool,
) -> Result<i32, CliError> {
    // Known, or refused before anything changes.
    volume_path(cat, &name)?;
    let mut t = tiers(cat)?.remove(&name).unwrap_or(VolumeTier {
        volume: name.clone(),
        tier: None,
        high_watermark: None,
        low_watermark: None,
    });
    if let Some(s) = tier {
        t.tier = match s.as_str() {
            "none" => None,
            s => Some(s.parse().map_err(CliError::usage)?),
        };
    }
    if let Some(s) = high_watermark {
        t.high_watermark = parse_pct("high-watermark", &s)?;
    }
    if let Some(s) = low_watermark {
        t.low_watermark = parse_pct("low-watermark", &s)?;
    }
    if t.high_watermark == Some(0) {
        return Err(CliError::usage("--high-watermark must be at least 1"));
    }
    if let (Some(h), Some(l)) = (t.high_watermark, t.low_watermark)
        && l >= h
    {
        return Err(CliError::usage(format!(
            "volume {name}: low watermark {l}% must be below high watermark {h}%"
        )));
    }
    cat.store().set_volume_tier(&t)?;
    show(cat, name, json)
}

/// `volume remove NAME`: its directory is left as it is.
fn remove(cat: &Catalog, name: String, json: bool) -> Result<i32, CliError> {
    cat.remove_volume(&name)?;
    if json {
        println!("{}", serde_json::json!({ "removed": name }));
    } else {
        println!("removed volume {name} (its directory was left as it is)");
    }
    Ok(0)
}

fn print_show(j: &Value) {
    let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
    println!("name:        {}", s("name"));
    println!("path:        {}", s("path"));
    let pct = |k: &str| {
        j[k].as_u64()
            .map_or("policy".to_string(), |n| format!("{n}%"))
    };
    match j["tier"].as_str() {
        Some(t) => println!(
            "tier:        {t} (high watermark {}, low {})",
            pct("high_watermark"),
            pct("low_watermark")
        ),
        None => println!("tier:        none (tiering leaves it alone)"),
    }
    match j["filesystem"].as_str() {
        Some(fs) => println!("filesystem:  {fs} (mounted at {})", s("mount_point")),
        None => println!("filesystem:  unknown"),
    }
    if j["available"].as_bool() == Some(true) {
        println!("state:       reachable");
        println!(
            "space:       {} free of {}",
            space(j, "free_bytes"),
            space(j, "total_bytes")
        );
    } else {
        println!("state:       unavailable ({})", s("unavailable_reason"));
        println!("space:       unavailable");
    }
    let by: Vec<String> = j["by_status"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect())
        .unwrap_or_default();
    if by.is_empty() {
        println!("vfolders:    0");
    } else {
        println!("vfolders:    {} ({})", j["vfolders"], by.join(", "));
    }
    if j["old_copies"].as_u64().unwrap_or(0) > 0 {
        println!(
            "old copies:  {} (relocated away, awaiting removal)",
            j["old_copies"]
        );
    }
}
