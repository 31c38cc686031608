//! Who a thread acts as when it calls into a backing filesystem.
//!
//! A request thread makes every backing call for a caller with the caller's
//! own credentials: fsuid, fsgid, supplementary groups and, for a caller in
//! the daemon's user namespace, no capability the caller does not have
//! itself (intersected with [`HONOURED_CAPS`]); callers in other user
//! namespaces (containers) get none. The backing filesystem then checks each
//! call exactly as it would the caller's own, whatever the kernel's cached
//! attributes on this mount say (they can be stale: a second mount of the
//! same store, another node). Writes and truncations by callers without
//! `CAP_FSETID` clear setuid/setgid there as on native filesystems.
//!
//! The daemon keeps its capabilities *permitted* (not effective) and raises
//! one only for the step that needs it, with [`with_caps`]; each call site
//! says why. The steps are few: reaching an inode by file handle
//! (`CAP_DAC_READ_SEARCH`, only ever with `O_PATH`, so no data is opened by
//! it), walking the store's private directories to a vfolder root (the same),
//! and registering a kernel passthrough backing file (`CAP_SYS_ADMIN`, which
//! the kernel demands of `FUSE_DEV_IOC_BACKING_OPEN`).
//!
//! Identity changes are per thread (raw `setfsuid`/`setfsgid`/`setgroups`/
//! `capset` syscalls: glibc's wrappers would change every thread) and lazy:
//! a thread that serves the same caller twice makes no syscall. A caller's
//! groups and capabilities come from `/proc/TID/status` of the requesting
//! thread, cached for [`CACHE_FOR`] per (thread, uid, gid); they are used only
//! if that thread's fsuid/fsgid still match the request's, else the caller
//! gets no supplementary groups and no capabilities (fail closed).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Capability numbers used here.
pub mod cap {
    /// Change file owners.
    pub const CHOWN: u32 = 0;
    /// Bypass file read, write and execute checks.
    pub const DAC_OVERRIDE: u32 = 1;
    /// Bypass read and search checks; `open_by_handle_at`.
    pub const DAC_READ_SEARCH: u32 = 2;
    /// Bypass owner checks.
    pub const FOWNER: u32 = 3;
    /// Keep setuid/setgid on writes and chmod.
    pub const FSETID: u32 = 4;
    /// Change the fs gid and groups.
    pub const SETGID: u32 = 6;
    /// Change the fs uid.
    pub const SETUID: u32 = 7;
    /// Immutable and append-only flags.
    pub const LINUX_IMMUTABLE: u32 = 9;
    /// `trusted.*` xattrs, passthrough backing files.
    pub const SYS_ADMIN: u32 = 21;
    /// Reserved blocks, quotas.
    pub const SYS_RESOURCE: u32 = 24;
    /// Device nodes.
    pub const MKNOD: u32 = 27;
    /// File capabilities.
    pub const SETFCAP: u32 = 31;
    /// Mandatory access control overrides.
    pub const MAC_OVERRIDE: u32 = 32;

    /// The bit of capability `n`.
    pub const fn bit(n: u32) -> u64 {
        1 << n
    }
}

/// The capabilities a caller's request may use if the caller itself has
/// them: those that change what a filesystem call may do.
pub const HONOURED_CAPS: u64 = cap::bit(cap::CHOWN)
    | cap::bit(cap::DAC_OVERRIDE)
    | cap::bit(cap::DAC_READ_SEARCH)
    | cap::bit(cap::FOWNER)
    | cap::bit(cap::FSETID)
    | cap::bit(cap::LINUX_IMMUTABLE)
    | cap::bit(cap::SYS_ADMIN)
    | cap::bit(cap::SYS_RESOURCE)
    | cap::bit(cap::MKNOD)
    | cap::bit(cap::SETFCAP)
    | cap::bit(cap::MAC_OVERRIDE);

/// How long a caller's groups and capabilities are reused for requests from
/// the same thread with the same uid/gid.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Credentials a thread makes backing calls with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Filesystem uid.
    pub uid: u32,
    /// Filesystem gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Arc<[u32]>,
    /// Effective capabilities (bit n = capability n).
    pub caps: u64,
}

/// The daemon's own identity, as it started.
struct Daemon {
    id: Identity,
    permitted: u64,
    /// Whether this process may take other identities at all (root with
    /// `CAP_SETUID`/`CAP_SETGID` permitted); without, it acts as itself.
    can_switch: bool,
    /// The daemon's user namespace (`/proc/self/ns/user`).
    userns: Option<std::path::PathBuf>,
}

static DAEMON: OnceLock<Daemon> = OnceLock::new();

fn daemon() -> &'static Daemon {
    DAEMON.get_or_init(|| {
        // SAFETY: these calls have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let groups = own_groups();
        let (effective, permitted) = capget().unwrap_or((0, 0));
        let need = cap::bit(cap::SETUID) | cap::bit(cap::SETGID);
        Daemon {
            id: Identity {
                uid,
                gid,
                groups: groups.into(),
                caps: effective,
            },
            permitted,
            can_switch: uid == 0 && permitted & need == need,
            userns: std::fs::read_link("/proc/self/ns/user").ok(),
        }
    })
}

fn own_groups() -> Vec<u32> {
    // SAFETY: a zero-sized query, then a buffer of the size it gave.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut v = vec![0 as libc::gid_t; n.max(0) as usize];
    let m = unsafe { libc::getgroups(n, v.as_mut_ptr()) };
    v.truncate(m.max(0) as usize);
    v
}

/// The identity the daemon started with.
pub fn daemon_identity() -> Identity {
    daemon().id.clone()
}

thread_local! {
    /// What this thread currently acts as; `None` until it first switches
    /// (it then still has the daemon's identity).
    static CURRENT: RefCell<Option<Identity>> = const { RefCell::new(None) };
    /// The last caller looked up on this thread, and when.
    static LAST: RefCell<Option<(CacheKey, Instant, Identity)>> = const { RefCell::new(None) };
    /// The caller this thread acts for now, and when its identity was read:
    /// while fresh, serving the same caller again costs one clock read.
    static ACTING_FOR: std::cell::Cell<Option<(CacheKey, Instant)>> =
        const { std::cell::Cell::new(None) };
}

type CacheKey = (u32, u32, u32);

/// Callers seen recently, by (thread id, uid, gid).
static CALLERS: OnceLock<Mutex<HashMap<CacheKey, (Instant, Identity)>>> = OnceLock::new();

/// The identity of a request's caller: `uid`/`gid` as the kernel sent them
/// (the caller's fsuid/fsgid) and its thread id `tid` (0 when the kernel
/// could not name it).
pub fn caller(uid: u32, gid: u32, tid: u32) -> Identity {
    lookup((tid, uid, gid), Instant::now()).0
}

/// Makes this thread act for the caller `uid`/`gid` of thread `tid` (see
/// [`caller`]); no syscall and no lookup when it already does.
pub fn enter_caller(uid: u32, gid: u32, tid: u32) -> io::Result<()> {
    let key = (tid, uid, gid);
    let now = Instant::now();
    if let Some((k, at)) = ACTING_FOR.get()
        && k == key
        && now.duration_since(at) < CACHE_FOR
    {
        return Ok(());
    }
    let (id, at) = lookup(key, now);
    enter(&id)?;
    ACTING_FOR.set(Some((key, at)));
    Ok(())
}

/// The identity for `key` and when it was read from `/proc`.
fn lookup(key: CacheKey, now: Instant) -> (Identity, Instant) {
    let (tid, uid, gid) = key;
    let hit = LAST.with_borrow(|l| match l {
        Some((k, at, id)) if *k == key && now.duration_since(*at) < CACHE_FOR => {
            Some((id.clone(), *at))
        }
        _ => None,
    });
    if let Some(hit) = hit {
        return hit;
    }
    let cache = CALLERS.get_or_init(|| Mutex::new(HashMap::new()));
    let cached = cache
        .lock()
        .get(&key)
        .and_then(|(at, id)| (now.duration_since(*at) < CACHE_FOR).then(|| (id.clone(), *at)));
    let (id, at) = cached.unwrap_or_else(|| {
        let id = read_caller(uid, gid, tid);
        let mut c = cache.lock();
        if c.len() >= 4096 {
            c.retain(|_, (at, _)| now.duration_since(*at) < CACHE_FOR);
        }
        c.insert(key, (now, id.clone()));
        (id, now)
    });
    LAST.with_borrow_mut(|l| *l = Some((key, at, id.clone())));
    (id, at)
}

/// Reads a caller's groups and capabilities from `/proc`.
fn read_caller(uid: u32, gid: u32, tid: u32) -> Identity {
    let bare = Identity {
        uid,
        gid,
        groups: Arc::from(Vec::new()),
        caps: 0,
    };
    if tid == 0 {
        return bare;
    }
    // The daemon reads another process's credentials and user namespace
    // (ptrace-read access) as itself, whoever this thread acted for last.
    if enter_daemon().is_err() {
        return bare;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return bare;
    };
    let Some(p) = parse_status(&status) else {
        return bare;
    };
    // The thread must still be the one that asked: same fs ids.
    if p.fsuid != uid || p.fsgid != gid {
        return bare;
    }
    let d = daemon();
    let same_ns =
        d.userns.is_some() && std::fs::read_link(format!("/proc/{tid}/ns/user")).ok() == d.userns;
    Identity {
        uid,
        gid,
        groups: p.groups.into(),
        // Only what this thread can actually hold: the identity compared
        // against what is in force must be exactly what a switch makes
        // effective (see with_caps).
        caps: if same_ns {
            p.cap_eff & HONOURED_CAPS & d.permitted
        } else {
            0
        },
    }
}

/// What `/proc/TID/status` tells of a thread's credentials.
#[derive(Debug, PartialEq, Eq)]
struct StatusCreds {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
    cap_eff: u64,
}

fn parse_status(s: &str) -> Option<StatusCreds> {
    let mut fsuid = None;
    let mut fsgid = None;
    let mut groups = None;
    let mut cap_eff = None;
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            // Real, effective, saved, filesystem.
            "Uid" => fsuid = v.split_whitespace().nth(3)?.parse().ok(),
            "Gid" => fsgid = v.split_whitespace().nth(3)?.parse().ok(),
            "Groups" => {
                groups = v
                    .split_whitespace()
                    .map(|g| g.parse().ok())
                    .collect::<Option<Vec<u32>>>()
            }
            "CapEff" => cap_eff = u64::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    Some(StatusCreds {
        fsuid: fsuid?,
        fsgid: fsgid?,
        groups: groups?,
        cap_eff: cap_eff?,
    })
}

/// Makes this thread act as `id` for the backing calls that follow.
pub fn enter(id: &Identity) -> io::Result<()> {
    // Whatever this thread acted for, it is `id` now (enter_caller sets it
    // again after).
    ACTING_FOR.set(None);
    let d = daemon();
    if !d.can_switch {
        // Not root: the daemon acts as itself, limited by its own rights.
        return Ok(());
    }
    let same = CURRENT.with_borrow(|c| match c {
        Some(cur) => cur == id,
        None => *id == d.id,
    });
    if same {
        return Ok(());
    }
    let r = switch(d, id);
    if r.is_err() {
        // Half switched: fall back to the daemon's identity, and fail.
        let _ = switch(d, &d.id);
        CURRENT.with_borrow_mut(|c| *c = Some(d.id.clone()));
        return r;
    }
    CURRENT.with_borrow_mut(|c| *c = Some(id.clone()));
    Ok(())
}

/// Makes this thread act as the daemon itself (its own store and
/// management steps).
pub fn enter_daemon() -> io::Result<()> {
    enter(&daemon().id)
}

/// What this thread currently acts as.
pub fn current() -> Identity {
    CURRENT.with_borrow(|c| c.clone().unwrap_or_else(|| daemon().id.clone()))
}

/// The capabilities this thread has in effect (no copy of the identity).
fn current_caps() -> u64 {
    CURRENT.with_borrow(|c| c.as_ref().map_or(daemon().id.caps, |i| i.caps))
}

fn switch(d: &Daemon, id: &Identity) -> io::Result<()> {
    // CAP_SETUID/CAP_SETGID for the changes below.
    capset(d.permitted, d.permitted)?;
    // SAFETY: raw per-thread syscalls with a valid buffer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            id.groups.len(),
            id.groups.as_ptr() as *const libc::gid_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    set_fs_ids(id.uid, id.gid)?;
    capset(id.caps & d.permitted, d.permitted)
}

fn set_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setfsuid/setfsgid only change this thread's fs ids; they
    // return the previous value, so a second call with -1 reads it back.
    let (g, u) = unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        (
            libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
        )
    };
    if (u, g) != (uid, gid) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Runs `f` with capabilities `caps` raised on this thread (from the
/// daemon's permitted set) and lowers them again after. Callers state why
/// the step needs them; nothing the caller asked for runs inside.
pub fn with_caps<T>(caps: u64, f: impl FnOnce() -> T) -> io::Result<T> {
    let d = daemon();
    if !d.can_switch {
        return Ok(f());
    }
    let cur = current_caps();
    let want = (cur | caps) & d.permitted;
    if want == cur {
        return Ok(f());
    }
    capset(want, d.permitted)?;
    // Lowered again whatever happens in `f` (a panic included); if lowering
    // fails, the thread falls back to the daemon's identity and forgets
    // what it acted as, so the next request switches afresh rather than
    // run with the raised capability.
    struct Lower(u64, u64);
    impl Drop for Lower {
        fn drop(&mut self) {
            if capset(self.0, self.1).is_err() {
                let d = daemon();
                let _ = switch(d, &d.id);
                CURRENT.with_borrow_mut(|c| *c = None);
                ACTING_FOR.set(None);
            }
        }
    }
    let _lower = Lower(cur, d.permitted);
    Ok(f())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> io::Result<(u64, u64)> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data slots as capget(2) requires.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| (lo as u64) | ((hi as u64) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Sets this thread's effective capabilities (inheritable cleared).
fn capset(effective: u64, permitted: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: as capget; only this thread's sets change.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_fs_ids_groups_and_caps() {
        let s = "Name:\tcat\nUid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t101\n\
                 Groups:\t4 24 27 \nCapEff:\t0000000000000006\n";
        assert_eq!(
            parse_status(s),
            Some(StatusCreds {
                fsuid: 1001,
                fsgid: 101,
                groups: vec![4, 24, 27],
                cap_eff: 6
            })
        );
        let none = "Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\nGroups:\t\nCapEff:\t0\n";
        assert_eq!(parse_status(none).unwrap().groups, Vec::<u32>::new());
        assert_eq!(parse_status("Uid:\t1\n"), None);
    }

    #[test]
    fn a_thread_of_this_process_is_read_back_as_itself() {
        // SAFETY: no preconditions.
        let (tid, uid, gid) = unsafe { (libc::gettid() as u32, libc::geteuid(), libc::getegid()) };
        let id = read_caller(uid, gid, tid);
        assert_eq!(id.uid, uid);
        assert_eq!(&*id.groups, &own_groups()[..]);
        // Another uid than the thread's: no groups, no capabilities.
        let other = read_caller(uid + 1, gid, tid);
        assert!(other.groups.is_empty() && other.caps == 0);
    }
}
