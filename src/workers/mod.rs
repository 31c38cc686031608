//! Background work: the job pool, the jobs it runs (purge, clone,
//! relocate), and the identity with which a process claims jobs in the store
//! so that others can tell whether it lives.

pub mod clone;
pub mod pool;
pub mod purge;
pub mod relocate;

use std::time::Duration;

/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a running job renews its claim and records progress.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

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
        if self.last.elapsed() >= RENEW_EVERY {
            self.last = std::time::Instant::now();
            match self.store.renew_job(self.id, self.owner, LEASE, done) {
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
    let Some(job) = store.claim_job(id, kind, owner, LEASE, &owner_dead)? else {
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
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
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
