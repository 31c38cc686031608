//! `vfolderfs fsck`: checking the store against its volumes, and repairing
//! what is safe to repair (see [`crate::fsck`]), in plain words.

use serde_json::json;

use super::CliError;
use crate::catalog::Catalog;
use crate::fsck::{self, Options};

/// `fsck [--repair] [--grace AGE]`.
pub(super) fn cmd(cat: &Catalog, repair: bool, json: bool, grace: &str) -> Result<i32, CliError> {
    let opts = Options {
        grace: humantime::parse_duration(grace).map_err(|err| CliError::Duration {
            arg: format!("--grace {grace}"),
            err,
        })?,
    };
    run(cat, repair, json, &opts)
}

/// Runs fsck; exit 0 when nothing is (or remains) wrong, 1 otherwise.
pub fn run(cat: &Catalog, repair: bool, json: bool, opts: &Options) -> Result<i32, CliError> {
    let (findings, repairs, remaining, recent) = if repair {
        let r = fsck::repair_all(cat, opts)?;
        let remaining: Vec<String> = r.remaining.iter().map(|f| f.to_string()).collect();
        (r.found, r.repairs, remaining, r.recent)
    } else {
        let c = fsck::check(cat, opts)?;
        let remaining = c.findings.iter().map(|f| f.to_string()).collect();
        (c.findings, Vec::new(), remaining, c.recent)
    };
    if json {
        let obj = json!({
            "findings": findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "repairs": repairs.iter().map(|(f, r)| match r {
                Ok(done) => json!({"finding": f, "done": done}),
                Err(left) => json!({"finding": f, "left": left}),
            }).collect::<Vec<_>>(),
            "remaining": remaining.len(),
            "remaining_findings": remaining,
            "recent_unjudged": recent,
        });
        println!("{obj}");
    } else {
        if findings.is_empty() {
            println!("store is consistent");
        } else if repair {
            for (f, r) in &repairs {
                match r {
                    Ok(done) => println!("repaired: {f}: {done}"),
                    Err(left) => println!("NOT repaired: {f}: {left}"),
                }
            }
            for f in &remaining {
                if !repairs.iter().any(|(r, _)| r == f) {
                    println!("problem: {f}");
                }
            }
        } else {
            for f in &findings {
                println!("problem: {f}");
            }
        }
        if recent > 0 {
            println!(
                "note: {recent} directory(ies) that no vfolder claims changed within the last {}: \
                 not judged (a creation may be under way); see --grace",
                humantime::format_duration(opts.grace)
            );
        }
    }
    Ok(if remaining.is_empty() {
        0
    } else {
        super::EXIT_PROBLEMS
    })
}
