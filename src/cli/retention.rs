//! `vfolderfs retention`: the store-wide trash retention, shown or set.

use std::time::Duration;

use serde_json::json;

use super::CliError;
use crate::catalog::Catalog;

/// Parses a retention: a duration (`30d`, `12h`, `90m`, `1s`), or `forever`
/// (also `0`) to keep trash until it is purged by hand.
pub fn parse(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "forever" | "0" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(Some(d)),
            Ok(_) => Err(format!("retention {s:?} is shorter than a second")),
            Err(e) => Err(format!(
                "bad retention {s:?}: {e} (a duration like 30d, or forever)"
            )),
        },
    }
}

fn show(keep: Option<Duration>) -> String {
    keep.map_or_else(
        || "forever".to_string(),
        |d| humantime::format_duration(d).to_string(),
    )
}

/// Shows the retention, or sets it to `value` first.
pub(super) fn run(cat: &Catalog, value: Option<String>, json: bool) -> Result<i32, CliError> {
    let store = cat.store();
    if let Some(v) = &value {
        let keep = parse(v).map_err(CliError::usage)?;
        store.set_trash_retention(keep)?;
    }
    let keep = store.trash_retention()?;
    if json {
        println!(
            "{}",
            json!({
                "trash_retention": show(keep),
                "seconds": keep.map(|d| d.as_secs()),
            })
        );
    } else if value.is_some() {
        println!(
            "trash retention set to {} for every mount of the store",
            show(keep)
        );
    } else {
        println!("trash retention: {}", show(keep));
    }
    Ok(0)
}
