//! Background work: the job pool, the jobs it runs (purge, clone,
//! relocate), and the identity with which a process claims jobs in the store
//! so that others can tell whether it lives.

/// Evaluates a fenced store step (`Result<T>`) for the job holding
/// `claim` (a [`ClaimGuard`]); if the claim was lost, logs it and returns
/// `Ok(Outcome::ClaimLost)` from the enclosing function, touching nothing
/// further (the guard then owes no release).
macro_rules! fenced {
    ($claim:expr, $step:expr, $e:expr) => {
        match $e {
            Err($crate::store::StoreError::ClaimLost { .. }) => {
                return Ok($claim.lost($step));
            }
            other => other?,
        }
    };
}

mod claim;
pub mod clone;
pub mod pool;
pub mod purge;
pub mod relocate;

use std::time::Duration;

pub use claim::{ClaimGuard, end_job};

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
/// `purge-end`, `clone-end`, `relocate-switch`, `cleanup-remove` and
/// `attach-bind` (an attach between its pending record and its bind).
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
    watch: bool,
    cancelled_by: Option<String>,
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
            watch: false,
            cancelled_by: None,
        }
    }

    /// Also stops when the job row records a cancellation request (see
    /// [`crate::store::Store::set_job_cancel`]), read at each renewal. Not
    /// for the steps that end a cancelled job (removing a partial copy).
    pub fn watching_cancel(mut self) -> Self {
        self.watch = true;
        self
    }

    /// Called after each step with the work done so far (entries, bytes);
    /// true means stop.
    pub fn beat(&mut self, done: u64, bytes: u64) -> bool {
        if let Some(p) = self.pause {
            std::thread::sleep(p);
        }
        if self.last.elapsed() >= renew_every() {
            self.last = std::time::Instant::now();
            match self
                .store
                .renew_job(self.id, self.owner, lease(), done, bytes)
            {
                Ok(true) => {}
                Ok(false) => self.lost = true,
                Err(e) => log::warn!("renewing the job on {}: {e}", self.id),
            }
            if self.watch && !self.lost {
                self.cancelled_by = cancel_request(self.store, self.id);
            }
        }
        self.lost
            || self.cancelled_by.is_some()
            || self.cancel.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Who asked the job on vfolder `id` to stop, if anyone did (see
/// [`crate::store::Store::set_job_cancel`]).
pub fn cancel_request(store: &dyn crate::store::Store, id: &str) -> Option<String> {
    match store.job(id) {
        Ok(j) => j.and_then(|j| j.cancel),
        Err(e) => {
            log::warn!("reading the job on {id}: {e}");
            None
        }
    }
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
    /// Stopped because someone asked (`vfolderfs cancel`, a signal to the
    /// foreground CLI; the text names who): a clone or a relocation was
    /// rolled back through its fenced final step, a purge stopped and stays
    /// `delete-ongoing` until resumed explicitly.
    CancelledBy(String),
    /// Another live process holds the job.
    HeldElsewhere,
    /// The vfolder's status asks for no such job (nothing to do).
    NotApplicable,
    /// This process lost its claim (it was stopped past its lease and
    /// another process took the job over): it stopped without its final
    /// step and left everything to the new owner.
    ClaimLost,
}

/// The node part of an owner: the node's name (`VFOLDERFS_NODE`, else the
/// host name), so that on a cluster an owner on another node is judged by
/// its lease alone.
fn hostname() -> String {
    crate::enforce::node_name()
}

/// This boot of this machine (`/proc/sys/kernel/random/boot_id`): tells two
/// machines (or two boots) that share a host name apart.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The inode of a process's PID namespace (`/proc/PID/ns/pid`, or
/// `/proc/self/ns/pid`): the namespace its pid is counted in.
fn pid_ns(of: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{of}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// Field 22 of `/proc/PID/stat` (the start time in clock ticks since boot),
/// counted after the parenthesised command name.
fn start_time(of: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{of}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19).map(str::to_string)
}

/// The pid `/proc` shows for this process, if `/proc` is mounted for this
/// process's PID namespace (it may belong to another one, e.g. after
/// `unshare --pid --fork` without `--mount-proc`): then pids read from it
/// mean what our own pid means.
fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
}

/// A process's identity as recorded in job claims and pending attachments:
/// unique across hosts, boots and PID namespaces. Its text form is
/// `host:pid:start:boot-id:pid-ns` (older stores have `host:pid:start`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Host name.
    pub host: String,
    /// Pid, in the namespace `pid_ns`.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: String,
    /// `/proc/sys/kernel/random/boot_id` of its machine.
    pub boot: String,
    /// Inode of its PID namespace.
    pub pid_ns: u64,
}

impl Identity {
    /// This process.
    pub fn current() -> Identity {
        Identity {
            host: hostname(),
            pid: std::process::id(),
            // Through /proc/self: right even where /proc belongs to another
            // PID namespace (where /proc/<our pid> is someone else).
            start: start_time("self").unwrap_or_else(|| "0".into()),
            boot: boot_id(),
            pid_ns: pid_ns("self").unwrap_or(0),
        }
    }

    /// Reads the text form; None for the old three-field form or anything
    /// else (such owners are judged by their lease alone).
    pub fn parse(s: &str) -> Option<Identity> {
        let f: Vec<&str> = s.split(':').collect();
        let [host, pid, start, boot, ns] = f.as_slice() else {
            return None;
        };
        Some(Identity {
            host: host.to_string(),
            pid: pid.parse().ok()?,
            start: start.to_string(),
            boot: boot.to_string(),
            pid_ns: ns.parse().ok()?,
        })
    }

    /// Whether this process is known to be gone: it ran on this machine,
    /// in this boot and in this process's PID namespace (as `/proc` shows
    /// it), and no process with its pid and start time exists. A process
    /// in any other namespace, boot or machine is never judged dead here:
    /// its lease decides.
    pub fn is_dead(&self) -> bool {
        if self.host != hostname()
            || self.boot.is_empty()
            || self.boot != boot_id()
            || Some(self.pid_ns) != pid_ns("self")
            || !proc_is_ours()
        {
            return false;
        }
        start_time(&self.pid.to_string()).as_deref() != Some(self.start.as_str())
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}",
            self.host, self.pid, self.start, self.boot, self.pid_ns
        )
    }
}

/// This process's owner identity (see [`Identity`]).
pub fn this_owner() -> String {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| Identity::current().to_string()).clone()
}

/// Whether the owner of a claim is known to be gone (see
/// [`Identity::is_dead`]). Owners in another PID namespace, boot or host,
/// and owners recorded in the old `host:pid:start` form, are judged by
/// their lease alone.
pub fn owner_dead(owner: &str) -> bool {
    Identity::parse(owner).is_some_and(|i| i.is_dead())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_gone_one_is_not() {
        let me = this_owner();
        assert!(!owner_dead(&me));
        let id = Identity::parse(&me).expect("five fields");
        assert_eq!(id, Identity::current());
        let gone = |f: &dyn Fn(&mut Identity)| {
            let mut i = id.clone();
            f(&mut i);
            owner_dead(&i.to_string())
        };
        assert!(gone(&|i| i.pid = 4194304));
        assert!(gone(&|i| i.start = "1".into()));
        // Elsewhere: another host, boot or PID namespace is never judged dead.
        assert!(!gone(&|i| {
            i.pid = 4194304;
            i.host = "some-other-host".into()
        }));
        assert!(!gone(&|i| {
            i.pid = 4194304;
            i.boot = "another-boot".into()
        }));
        assert!(!gone(&|i| {
            i.pid = 4194304;
            i.pid_ns += 1
        }));
        // The old three-field form: the lease decides.
        assert!(!owner_dead(&format!("{}:4194304:1", id.host)));
    }
}
