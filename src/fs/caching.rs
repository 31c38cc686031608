//! How long the kernel may cache names and attributes, and when that must
//! change.
//!
//! The backing tree is private to the daemon's user (see the security model):
//! every change to a vfolder's files passes through a mount of the store or a
//! job whose end is a status change. So a mount that is the only live mount of
//! its store sees every change to the tree itself, and the kernel may cache
//! names and attributes for long ([`PRIVATE_TTL`]): the kernel updates its
//! cache for what goes through this mount, and the watcher invalidates a
//! vfolder's whole subtree when its row changes (a clone or relocation ending,
//! a restore, a rename). Another mount of the same store (a second mount
//! point, or another node sharing the store and the volumes) changes files
//! behind this mount's back, so while one is live the kernel caches for
//! [`SHARED_TTL`] only, NFS's `actimeo` bound.
//!
//! The switch is safe because a mount does not serve before every other live
//! mount has taken it into account: a mount, once registered, waits until each
//! other live mount has renewed its lease three times (or let it lapse), and the
//! watcher reads the mount list before every renewal ([`crate::enforce`]).
//! When a mount sees another one appear it first makes new replies short-lived,
//! then drops every name the kernel holds ([`inc_epoch`]) and every inode's
//! cached attributes. Explicit `attr_timeout=`, `entry_timeout=` and
//! `negative_timeout=` options override the automatic choice.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuser::{INodeNo, Notifier};

use super::vfolders::Registry;

/// How long names and attributes are cached while this mount is the only
/// live mount of its store.
pub const PRIVATE_TTL: Duration = Duration::from_secs(3600);
/// How long names and attributes are cached while another mount of the
/// store is live.
pub const SHARED_TTL: Duration = Duration::from_secs(1);

/// One cache timeout: chosen by the mount's situation, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// [`PRIVATE_TTL`] alone, [`SHARED_TTL`] beside other mounts.
    #[default]
    Auto,
    /// Always this long.
    Fixed(Duration),
}

impl Ttl {
    /// Parses an option value: `auto`, seconds as in libfuse (`1.5`), or a
    /// duration with a unit (`500ms`, `10m`). At most an hour.
    pub fn parse(v: &str) -> Result<Ttl, String> {
        if v == "auto" {
            return Ok(Ttl::Auto);
        }
        let d = match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
            Ok(_) => return Err(format!("{v:?} is not a timeout")),
            Err(_) => humantime::parse_duration(v).map_err(|e| format!("{v:?}: {e}"))?,
        };
        if d > PRIVATE_TTL {
            return Err(format!("{v:?} is longer than an hour"));
        }
        Ok(Ttl::Fixed(d))
    }

    fn get(self, shared: bool) -> Duration {
        match self {
            Ttl::Fixed(d) => d,
            Ttl::Auto if shared => SHARED_TTL,
            Ttl::Auto => PRIVATE_TTL,
        }
    }
}

/// The cache timeouts of a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheConfig {
    /// Positive names (`entry_timeout`).
    pub entry: Ttl,
    /// Attributes (`attr_timeout`).
    pub attr: Ttl,
    /// Names that do not exist (`negative_timeout`).
    pub negative: Ttl,
}

/// Whether replies must be brief: read on every reply. Another live mount
/// shares this mount's store (written by the watcher), or this mount's lease
/// lapsed (written by [`guard_lapse`]): then it cannot know whether one does.
#[derive(Debug, Default)]
pub struct Sharing {
    others: AtomicBool,
    lapsed: AtomicBool,
    /// The kernel cannot drop every cached name at once ([`probe_epoch`]).
    no_epoch: AtomicBool,
}

impl Sharing {
    /// Whether the kernel may cache only briefly now: another mount of the
    /// store is live, or this mount's lease lapsed.
    pub fn shared(&self) -> bool {
        self.others.load(Ordering::Acquire) || self.lapsed.load(Ordering::Acquire)
    }

    /// Records whether another mount is live; returns whether that changed.
    pub fn set(&self, shared: bool) -> bool {
        self.others.swap(shared, Ordering::AcqRel) != shared
    }

    /// Whether names (and missing names) may be cached only briefly: replies
    /// are brief, or the kernel could not drop cached names when they must go.
    pub fn names_brief(&self) -> bool {
        self.shared() || self.no_epoch.load(Ordering::Acquire)
    }

    /// Records that the kernel cannot drop every cached name at once.
    pub fn set_no_epoch(&self) {
        self.no_epoch.store(true, Ordering::Release);
    }

    /// Records whether this mount's lease lapsed; returns whether that
    /// changed.
    pub fn set_lapsed(&self, lapsed: bool) -> bool {
        self.lapsed.swap(lapsed, Ordering::AcqRel) != lapsed
    }
}

impl CacheConfig {
    /// The same timeout for names, attributes and negative names (the old
    /// `ttl=` option).
    pub fn all(t: Ttl) -> CacheConfig {
        CacheConfig {
            entry: t,
            attr: t,
            negative: t,
        }
    }

    /// How long a name may be cached now.
    pub fn entry(&self, s: &Sharing) -> Duration {
        self.entry.get(s.names_brief())
    }

    /// How long attributes may be cached now.
    pub fn attr(&self, s: &Sharing) -> Duration {
        self.attr.get(s.shared())
    }

    /// How long a missing name may be cached now.
    pub fn negative(&self, s: &Sharing) -> Duration {
        self.negative.get(s.names_brief())
    }

    /// Whether any timeout follows the mount's situation.
    pub fn is_auto(&self) -> bool {
        [self.entry, self.attr, self.negative].contains(&Ttl::Auto)
    }
}

/// `FUSE_NOTIFY_INC_EPOCH` (protocol 7.44, Linux 6.16): every name the
/// kernel cached for the connection before it is looked up again.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;

/// Test hook: while set, [`inc_epoch`] fails as on a kernel without
/// `FUSE_NOTIFY_INC_EPOCH` (before Linux 6.16).
pub const NO_INC_EPOCH_ENV: &str = "VFOLDERFS_TEST_NO_INC_EPOCH";

/// Tells the kernel to drop every cached name of this connection
/// (`FUSE_NOTIFY_INC_EPOCH`), through a descriptor of the connection's
/// `/dev/fuse`. Fails (`EINVAL`) on kernels without it.
pub fn inc_epoch(dev: BorrowedFd<'_>) -> std::io::Result<()> {
    if std::env::var_os(NO_INC_EPOCH_ENV).is_some() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // struct fuse_out_header { u32 len; i32 error; u64 unique; }: a
    // notification has unique 0 and the notify code in `error`.
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
    // SAFETY: writes 16 bytes from a live buffer to a descriptor we hold.
    let n = unsafe { libc::write(dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the kernel look every name up again ([`inc_epoch`]) and drop every
/// inode's cached attributes (a tree changed behind the mount, another mount
/// appeared, or this mount's lease lapsed).
pub fn drop_kernel_cache(
    reg: &Registry,
    notifier: &Notifier,
    dev: BorrowedFd<'_>,
) -> std::io::Result<()> {
    reg.kernel_cache_dropping();
    if let Err(e) = inc_epoch(dev) {
        // Without it (kernels before 6.16) names cached before lapse by
        // their timeout only: say so once.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| log::warn!("the kernel cannot drop all cached names at once ({e})"));
    }
    for ino in reg.known_nodes() {
        // Attributes only (offset -1): the page cache stays.
        match notifier.inval_inode(INodeNo(ino), -1, 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Makes the kernel look every name up again (not attributes: a name looked
/// up again brings them fresh). One notification however many inodes the
/// kernel holds; on kernels without it, names are cached briefly anyway
/// ([`probe_epoch`]).
pub fn drop_names(dev: BorrowedFd<'_>) -> std::io::Result<()> {
    match inc_epoch(dev) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        r => r,
    }
}

/// Asks the kernel, before the mount serves, whether it can drop every
/// cached name at once ([`inc_epoch`]; nothing is cached yet, so this drops
/// nothing). Without it (kernels before 6.16) a name cached for long could
/// not be taken back when another mount appears or a lease lapses (only
/// attributes can), so names and missing names are cached briefly
/// ([`SHARED_TTL`]) even while the mount is alone; attributes stay long.
pub fn probe_epoch(reg: &Registry, dev: BorrowedFd<'_>) {
    if let Err(e) = inc_epoch(dev) {
        reg.sharing().set_no_epoch();
        log::info!(
            "the kernel cannot drop all cached names at once ({e}): names are cached for {:?}",
            SHARED_TTL
        );
    }
}

/// How often [`guard_lapse`] looks at the mount's lease.
pub const LAPSE_POLL: Duration = Duration::from_millis(50);

/// Until `stop`, from a thread of its own (the watcher may be the one that
/// cannot run): when the mount's lease lapses, replies become brief and
/// what the kernel cached is dropped. Other mounts stop waiting for a mount
/// whose lease lapsed, so one may appear and change the tree unseen; what
/// this mount cached for long while alone must not outlive the lapse. Once
/// the lease is confirmed again the watcher's view of other mounts decides.
pub fn guard_lapse(reg: &Registry, notifier: &Notifier, dev: BorrowedFd<'_>, stop: &AtomicBool) {
    let mut was = false;
    while !stop.load(Ordering::Acquire) {
        let lapsed = reg.lease_lapsed();
        if lapsed != was && reg.sharing().set_lapsed(lapsed) && lapsed {
            // Brief replies first, then the drop: a reply cached in between
            // is dropped too (race-free, see `inc_epoch`).
            log::warn!(
                "this mount's lease lapsed: dropping the kernel's cached names and attributes"
            );
            if let Err(e) = drop_kernel_cache(reg, notifier, dev) {
                log::warn!("dropping the kernel's cache: {e}");
            }
        }
        was = lapsed;
        std::thread::sleep(LAPSE_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuse_seconds_units_and_auto() {
        assert_eq!(Ttl::parse("auto"), Ok(Ttl::Auto));
        assert_eq!(
            Ttl::parse("1.5"),
            Ok(Ttl::Fixed(Duration::from_millis(1500)))
        );
        assert_eq!(Ttl::parse("0"), Ok(Ttl::Fixed(Duration::ZERO)));
        assert_eq!(
            Ttl::parse("250ms"),
            Ok(Ttl::Fixed(Duration::from_millis(250)))
        );
        assert!(Ttl::parse("-1").is_err());
        assert!(Ttl::parse("2h").is_err());
        assert!(Ttl::parse("soon").is_err());
    }

    #[test]
    fn auto_follows_the_mount_situation_and_fixed_does_not() {
        let c = CacheConfig {
            entry: Ttl::Auto,
            attr: Ttl::Fixed(Duration::from_secs(7)),
            negative: Ttl::Auto,
        };
        let s = Sharing::default();
        assert_eq!(c.entry(&s), PRIVATE_TTL);
        assert!(s.set(true));
        assert!(!s.set(true));
        assert_eq!(c.entry(&s), SHARED_TTL);
        assert_eq!(c.negative(&s), SHARED_TTL);
        assert_eq!(c.attr(&s), Duration::from_secs(7));
    }
}
