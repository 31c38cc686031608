//! `vfolderfs volume ...`: adding, listing, showing and removing data
//! volumes. Which directories may be volumes is [`crate::volumes`]'s job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use super::CliError;
use super::output::human_bytes;
use crate::catalog::Catalog;
use crate::store::{ListFilter, StoreError, VFolder};
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
        /// Print the volume as a JSON object (as `volume show --json`).
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
        VolumeCmd::Add { name, path, json } => {
            cat.add_volume(&name, &path)?;
            let at = cat.volume(&name)?.path.clone();
            if json {
                let rows = cat.store().list(ListFilter::All)?;
                println!("{}", volume_json(&name, &at, &rows));
            } else {
                println!("added volume {name} at {}", at.display());
            }
        }
        VolumeCmd::List { json } => {
            let rows = cat.store().list(ListFilter::All)?;
            let list: Vec<Value> = cat
                .volume_list()?
                .into_iter()
                .map(|(n, p)| volume_json(&n, &p, &rows))
                .collect();
            if json {
                println!("{}", Value::Array(list));
            } else {
                println!(
                    "{:12}  {:>12}  {:>12}  {:>8}  PATH",
                    "NAME", "FREE", "TOTAL", "VFOLDERS"
                );
                for r in list {
                    println!(
                        "{:12}  {:>12}  {:>12}  {:>8}  {}",
                        r["name"].as_str().unwrap_or(""),
                        space(&r, "free_bytes"),
                        space(&r, "total_bytes"),
                        r["vfolders"],
                        r["path"].as_str().unwrap_or("")
                    );
                }
            }
        }
        VolumeCmd::Show { name, json } => {
            let path = cat
                .volume_list()?
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| p)
                .ok_or_else(|| StoreError::from(VolumeError::NotFound(name.clone())))?;
            let rows = cat.store().list(ListFilter::All)?;
            let j = volume_json(&name, &path, &rows);
            if json {
                println!("{j}");
            } else {
                print_show(&j);
            }
        }
        VolumeCmd::Remove { name, json } => {
            cat.remove_volume(&name)?;
            if json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                println!("removed volume {name} (its directory was left as it is)");
            }
        }
    }
    Ok(0)
}

fn print_show(j: &Value) {
    let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
    println!("name:        {}", s("name"));
    println!("path:        {}", s("path"));
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
