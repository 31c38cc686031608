//! Background work: the job pool, the jobs it runs (purge, clone,
//! relocate), and the identity with which a process claims jobs in the store
//! so that others can tell whether it lives.

/// Evaluates a fenced store step (`Result<T>`) for the job holding
/// `claim`; if the claim was lost, logs it and returns
/// `Ok(Outcome::ClaimLost)` from the enclosing function, touching nothing
/// further.
macro_rules! fenced {
    ($claim:expr, $step:expr, $e:expr) => {
        match $e {
            Err($crate::store::StoreError::ClaimLost { .. }) => {
                return Ok($crate::workers::claim_lost($claim, $step));
            }
            other => other?,
        }
    };
}

pub mod clone;
pub mod pool;
pub mod purge;
pub mod relocate;

use std::time::Duration;

/// How long a claim holds without renewal, unless [`LEASE_ENV`] says otherwise.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a running job renews its claim and records progress (more
/// often if the lease is shorter than three times this).
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// Environment variable overriding [`LEASE`] in milliseconds (at least 100):
/// for tests and operators who need a stopped owner taken over sooner. Read
/// once per process.
pub const LEASE_ENV: &str = "VFOLDERFS_JOB_LEASE_MS";

/// The lease this process's claims get: [`LEASE_ENV`] if set and valid,
/// else [`LEASE`].
pub fn lease() -> Duration {
    static LEASE_NOW: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LEASE_NOW.get_or_init(|| {
        std::env::var(LEASE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms >= 100)
            .map_or(LEASE, Duration::from_millis)
    })
}

/// How often this process renews a running job's claim: [`RENEW_EVERY`],
/// or a third of a shorter [`lease`].
pub fn renew_every() -> Duration {
    RENEW_EVERY.min(lease() / 3)
}

/// Environment variable naming a point at which a job stops its own
/// process (`SIGSTOP`), as if it had been stopped there from outside: a
/// testing aid for the window between a job's last renewal and its final
/// step (see [`stop_point`]). Not for production.
pub const STOP_AT_ENV: &str = "VFOLDERFS_TEST_STOP_AT";

/// Stops this process with `SIGSTOP` if [`STOP_AT_ENV`] names `point`
/// (once per process); it goes on when it gets `SIGCONT`. The points are
/// `purge-end`, `clone-end`, `relocate-switch` and `cleanup-remove`.
pub fn stop_point(point: &str) {
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var(STOP_AT_ENV).is_ok_and(|p| p == point)
        && !STOPPED.swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        log::warn!("{STOP_AT_ENV}: stopping at {point}");
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// How many threads one copy job (clone, relocation) uses, one directory
/// at a time each; the pool bounds how many jobs run at once.
pub const COPY_THREADS: usize = 2;

/// How long a copy job waits for every live mount to confirm that the
/// vfolder it reads no longer takes writes (the status change applied and
/// the writes from before it drained; see [`crate::enforce`]). A mount
/// whose write is stuck (a frozen volume, a hung NFS server) holds the job
/// up this long at most; then the job gives up and says why.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`SETTLE_TIMEOUT`], or `$VFOLDERFS_SETTLE_TIMEOUT` (a duration such as
/// `5s`) where an operator or a test sets it.
pub fn settle_timeout() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("VFOLDERFS_SETTLE_TIMEOUT")
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(SETTLE_TIMEOUT)
    })
}

/// What waiting for the mounts' confirmation came to.
#[derive(Debug)]
pub enum Settled {
    /// Every live mount confirmed.
    Confirmed,
    /// The job was asked to stop meanwhile.
    Cancelled,
    /// Some mount did not confirm in time (the error names it).
    Unconfirmed(crate::store::StoreError),
}

/// Waits until every live mount has confirmed the latest change of vfolder
/// `id` (its status change, and the drain of writes begun before it), at
/// most [`settle_timeout`].
pub fn settle(
    store: &dyn crate::store::Store,
    id: &str,
    name: &str,
    cancel: &std::sync::atomic::AtomicBool,
) -> crate::store::Result<Settled> {
    match crate::enforce::confirm_latest(store, id, name, settle_timeout(), Some(cancel)) {
        Ok(()) => Ok(Settled::Confirmed),
        Err(_) if cancel.load(std::sync::atomic::Ordering::Acquire) => Ok(Settled::Cancelled),
        Err(e @ crate::store::StoreError::Unconfirmed { .. }) => Ok(Settled::Unconfirmed(e)),
        Err(e) => Err(e),
    }
}

/// Keeps a job's claim alive while it works: renews the lease and records
/// progress every [`RENEW_EVERY`], pauses per step when throttled, and
/// says when to stop (shutdown, or the claim was lost to another owner).
pub struct Heartbeat<'a> {
    store: &'a dyn crate::store::Store,
    id: &'a str,
    owner: &'a str,
    cancel: &'a std::sync::atomic::AtomicBool,
    pause: Option<Duration>,
    last: std::time::Instant,
    lost: bool,
}

impl<'a> Heartbeat<'a> {
    /// A heartbeat for `owner`'s job on vfolder `id`.
    pub fn new(
        store: &'a dyn crate::store::Store,
        id: &'a str,
        owner: &'a str,
        cancel: &'a std::sync::atomic::AtomicBool,
        pause: Option<Duration>,
    ) -> Self {
        Heartbeat {
            store,
            id,
            owner,
            cancel,
            pause,
            last: std::time::Instant::now(),
            lost: false,
        }
    }

    /// Called after each step with the work done so far; true means stop.
    pub fn beat(&mut self, done: u64) -> bool {
        if let Some(p) = self.pause {
            std::thread::sleep(p);
        }
        if self.last.elapsed() >= renew_every() {
            self.last = std::time::Instant::now();
            match self.store.renew_job(self.id, self.owner, lease(), done) {
                Ok(true) => {}
                Ok(false) => self.lost = true,
                Err(e) => log::warn!("renewing the job on {}: {e}", self.id),
            }
        }
        self.lost || self.cancel.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Claims `owner`'s job of `kind` on vfolder `id` (see
/// [`crate::store::Store::claim_job`]) and reads the vfolder; None if
/// another live process holds the job.
pub fn claim(
    store: &dyn crate::store::Store,
    id: &str,
    kind: &str,
    owner: &str,
) -> crate::store::Result<Option<(crate::store::Job, crate::store::VFolder)>> {
    let Some(job) = store.claim_job(id, kind, owner, lease(), &owner_dead)? else {
        return Ok(None);
    };
    Ok(Some((job, store.get(id)?)))
}

/// How a job attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the count of entries it handled.
    Complete(u64),
    /// Failed with this message (recorded in the store).
    Failed(String),
    /// An interrupted job was rolled back, for this reason.
    RolledBack(String),
    /// Stopped by shutdown; the next start resumes or rolls back.
    Cancelled,
    /// Another live process holds the job.
    HeldElsewhere,
    /// The vfolder's status asks for no such job (nothing to do).
    NotApplicable,
    /// This process lost its claim (it was stopped past its lease and
    /// another process took the job over): it stopped without its final
    /// step and left everything to the new owner.
    ClaimLost,
}

/// Logs that the job holding `claim` lost it before `step`, and says so.
pub fn claim_lost(claim: &crate::store::Claim, step: &str) -> Outcome {
    log::warn!(
        "{} job on {}: this process ({}) lost its claim {} to another process; \
         stopping without {step}",
        claim.kind,
        claim.vfolder_id,
        claim.owner,
        claim.token
    );
    Outcome::ClaimLost
}

/// Whether `claim` is still held (a read, not a fence: for telling a
/// stop on a lost claim from a shutdown).
pub fn holds(store: &dyn crate::store::Store, claim: &crate::store::Claim) -> bool {
    store
        .job(&claim.vfolder_id)
        .ok()
        .flatten()
        .is_some_and(|j| j.owner == claim.owner && j.kind == claim.kind && j.claims == claim.token)
}

/// The node part of an owner: the node's name (`VFOLDERFS_NODE`, else the
/// host name), so that on a cluster an owner on another node is judged by
/// its lease alone.
fn hostname() -> String {
    crate::enforce::node_name()
}

fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the parenthesised command name.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19).map(str::to_string)
}

/// This process's owner identity: `host:pid:start-time`.
pub fn this_owner() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        hostname(),
        start_time(pid).unwrap_or_else(|| "0".into())
    )
}

/// Whether the owner of a claim is known to be gone: it ran on this host
/// and its process no longer exists (or is another process with its pid).
/// Owners on other hosts are judged by their lease alone.
pub fn owner_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_time(pid).as_deref() != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_gone_one_is_not() {
        let me = this_owner();
        assert!(!owner_dead(&me));
        let host = hostname();
        assert!(owner_dead(&format!("{host}:4194304:1")));
        assert!(owner_dead(&format!("{host}:{}:1", std::process::id())));
        assert!(!owner_dead("some-other-host:1:1"));
    }
}
