//! Background jobs run from the CLI: in this process with a progress line,
//! or followed while another process holds them.

use super::{CliError, cause};
use crate::backing::copy::CopyStats;
use crate::catalog::Catalog;
use crate::say;
use crate::store::{StoreError, VFolder};
use crate::workers::{Outcome, purge};

pub(super) type JobFn<'a> =
    dyn Fn(&Catalog, &str, &mut dyn FnMut(&CopyStats)) -> crate::store::Result<Outcome> + 'a;

/// Runs a copy job in this process with a progress line on a terminal, or
/// follows another process that holds it, until the vfolder settles.
pub(super) fn run_job(
    cat: &Catalog,
    v: &VFolder,
    verb: &str,
    job: &JobFn<'_>,
) -> Result<i32, CliError> {
    let owner = crate::workers::this_owner();
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(2) } == 1;
    let started = std::time::Instant::now();
    let mut shown = std::time::Instant::now();
    let mut show = |s: &CopyStats| {
        if tty && shown.elapsed() >= std::time::Duration::from_millis(200) {
            shown = std::time::Instant::now();
            let mb = s.bytes as f64 / 1048576.0;
            let rate = mb / started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r{verb} {:?}: {} entries, {mb:.1} MiB ({rate:.1} MiB/s)   ",
                v.name, s.entries
            );
        }
    };
    loop {
        let outcome = job(cat, &owner, &mut show)?;
        if tty {
            eprintln!();
        }
        match outcome {
            Outcome::Complete(n) => {
                say!("done: {:?} ({n} entries)", v.name);
                return Ok(0);
            }
            Outcome::Failed(msg) | Outcome::RolledBack(msg) => {
                return Err(CliError::Failed(format!(
                    "{verb} {:?} failed: {msg}",
                    v.name
                )));
            }
            Outcome::ClaimLost => return Err(lost(verb, v)),
            Outcome::HeldElsewhere | Outcome::Cancelled | Outcome::NotApplicable => {
                let now = cat.store().get(&v.id)?;
                if now.status.is_cloning() || now.status.is_relocating() {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    continue;
                }
                if now.status.is_visible() {
                    say!("done: {:?} is {}", now.name, now.status);
                    return Ok(0);
                }
                return Err(CliError::Failed(format!(
                    "{verb} {:?} did not complete: its status is {}{}",
                    v.name,
                    now.status,
                    now.error.map(|e| format!(" ({e})")).unwrap_or_default()
                )));
            }
        }
    }
}

/// This process was stopped past its job's lease and another process took
/// the job over: it made no final step, and does not follow the job further.
fn lost(verb: &str, v: &VFolder) -> CliError {
    CliError::Failed(format!(
        "{verb} {:?}: this process lost its claim on the job to another process \
         (it was stopped longer than the lease); it stopped without a final step, \
         and the other process carries on",
        v.name
    ))
}

pub(super) fn purge(cat: &Catalog, name: &str, no_wait: bool) -> Result<i32, CliError> {
    let v = match cat.resolve_trashed(name) {
        Ok(v) => v,
        Err(StoreError::NotFound(_)) => cat.resolve(name)?,
        Err(e) => return Err(e.into()),
    };
    purge::request(cat, &v.id, &cause("purge"))?;
    if no_wait {
        say!("queued the purge of vfolder {:?} ({})", v.name, v.id);
        return Ok(0);
    }
    let owner = crate::workers::this_owner();
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(2) } == 1;
    let never = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let mut shown = std::time::Instant::now();
    loop {
        let mut show = |done: u64| {
            if tty && shown.elapsed() >= std::time::Duration::from_millis(200) {
                shown = std::time::Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\rpurging {:?}: {done} entries removed ({rate:.0}/s)   ",
                    v.name
                );
            }
        };
        let pause = purge::throttle_from_env();
        match purge::purge_one(cat, &v.id, &owner, &never, pause, &mut show)? {
            Outcome::Complete(n) => {
                if tty {
                    eprintln!();
                }
                say!(
                    "purged vfolder {:?} ({}): {n} entries removed",
                    v.name,
                    v.id
                );
                return Ok(0);
            }
            Outcome::Failed(msg) => {
                return Err(CliError::Failed(format!(
                    "purge of vfolder {:?} failed: {msg} (status delete-error; fix the cause and run purge again)",
                    v.name
                )));
            }
            Outcome::ClaimLost => {
                if tty {
                    eprintln!();
                }
                return Err(lost("purging", &v));
            }
            Outcome::NotApplicable
            | Outcome::RolledBack(_)
            | Outcome::HeldElsewhere
            | Outcome::Cancelled => {
                // Another process is on it: follow its progress until it ends.
                let now = cat.store().get(&v.id)?;
                if now.status.is_purging() {
                    if let Some(j) = cat.store().job(&v.id)? {
                        show(j.done);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    continue;
                }
                if tty {
                    eprintln!();
                }
                if let Some(err) = now.error {
                    return Err(CliError::Failed(format!(
                        "purge of vfolder {:?} failed: {err}",
                        v.name
                    )));
                }
                say!(
                    "purged vfolder {:?} ({}) (status {})",
                    v.name,
                    v.id,
                    now.status
                );
                return Ok(0);
            }
        }
    }
}
