//! Session mounts: binding vfolders from a vfolderfs mount into session
//! containers, with a store record for every bind and a bind for every record.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

mod bind;
pub mod held;

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use crate::catalog::Catalog;
use crate::mountinfo::{self, MountEntry};
use crate::store::{Attachment, StoreError};

/// Errors of attaching and detaching.
#[derive(Debug)]
pub enum SessionError {
    /// From the store.
    Store(StoreError),
    /// No (or more than one) vfolderfs mount of this store is visible.
    Mount(String),
    /// A mount(2) or umount(2) call failed.
    Bind {
        /// The target.
        target: String,
        /// The error.
        err: io::Error,
    },
    /// A session target could not be resolved or created.
    Target {
        /// The path where resolving stopped.
        path: String,
        /// The error.
        err: io::Error,
    },
    /// A session target is a symlink or has one on its path.
    Symlink {
        /// The target given.
        target: String,
        /// The component that is a symlink (the target itself, or one of its ancestors).
        component: String,
    },
    /// A session id breaks the rule of [`check_session_id`].
    InvalidSession {
        /// The id given.
        id: String,
        /// Which part of the rule it breaks.
        why: String,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Store(e) => e.fmt(f),
            SessionError::Mount(m) => f.write_str(m),
            SessionError::Bind { target, err } => write!(f, "{target}: {err}"),
            SessionError::Target { path, err } => write!(f, "target {path}: {err}"),
            SessionError::Symlink { target, component } if target == component => write!(
                f,
                "target {target} is a symbolic link; session targets are resolved without following symlinks"
            ),
            SessionError::Symlink { target, component } => write!(
                f,
                "target {target}: {component} is a symbolic link; session targets are resolved without following symlinks"
            ),
            SessionError::InvalidSession { id, why } => {
                write!(f, "invalid session id {id:?}: {why}")
            }
        }
    }
}

impl std::error::Error for SessionError {}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Store(e)
    }
}

/// The longest session id, in bytes.
pub const MAX_SESSION_ID: usize = 255;

/// Checks a session id: non-empty, at most [`MAX_SESSION_ID`] bytes, no
/// control characters (Unicode category Cc: C0, DEL, C1). Anything else a
/// container runtime uses as an id (hex, UUIDs, names) passes.
pub fn check_session_id(id: &str) -> Result<(), SessionError> {
    let why = if id.is_empty() {
        "a session id must not be empty".to_string()
    } else if id.len() > MAX_SESSION_ID {
        format!(
            "a session id is at most {MAX_SESSION_ID} bytes; this one has {}",
            id.len()
        )
    } else if let Some(c) = id.chars().find(|c| c.is_control()) {
        format!(
            "a session id must not contain a control character (U+{:04X})",
            c as u32
        )
    } else {
        return Ok(());
    };
    Err(SessionError::InvalidSession {
        id: id.to_string(),
        why,
    })
}

/// `path` made absolute (against the working directory) and normalized
/// lexically: `.` and repeated or trailing slashes dropped, `..` removing
/// the component before it. This is how attachment targets are recorded and
/// matched; since targets are resolved without following symlinks, it
/// names the same directory as the path resolved by the kernel.
pub fn normalize_target(path: &Path) -> Result<PathBuf, SessionError> {
    if path.as_os_str().is_empty() {
        return Err(SessionError::Target {
            path: "\"\"".into(),
            err: io::Error::new(io::ErrorKind::InvalidInput, "an empty path"),
        });
    }
    let mut out = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().map_err(|err| SessionError::Target {
            path: path.display().to_string(),
            err,
        })?
    };
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Opens the directory at the normalized absolute `path` (`O_PATH`)
/// component by component from `/`, refusing a symlink anywhere on the way
/// (`openat2` with `RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`). With
/// `create`, a missing component is made with `mkdirat` in its parent's fd
/// and then opened the same way, so a component swapped for a symlink in
/// between is refused too.
fn open_dir_path(path: &Path, create: bool) -> Result<OwnedFd, SessionError> {
    let at = |p: &Path, err| SessionError::Target {
        path: p.display().to_string(),
        err,
    };
    let mut fd = bind::open_root().map_err(|e| at(Path::new("/"), e))?;
    let mut sofar = PathBuf::from("/");
    for c in path.components() {
        let Component::Normal(n) = c else { continue };
        sofar.push(n);
        let name = CString::new(n.as_bytes())
            .map_err(|_| at(&sofar, io::ErrorKind::InvalidInput.into()))?;
        let mut r = bind::open_dir_nofollow(&fd, &name);
        if create && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) {
            bind::mkdir_at(&fd, &name).map_err(|e| at(&sofar, e))?;
            r = bind::open_dir_nofollow(&fd, &name);
        }
        fd = match r {
            Ok(next) => next,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(SessionError::Symlink {
                    target: path.display().to_string(),
                    component: sofar.display().to_string(),
                });
            }
            Err(e) => return Err(at(&sofar, e)),
        };
    }
    Ok(fd)
}

/// The inode of this process's mount namespace.
pub fn current_mnt_ns() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/mnt")?.ino())
}

/// The vfolderfs mount of this store to bind from: `flag` if given,
/// otherwise the only one visible in this mount namespace.
pub fn find_mount(cat: &Catalog, flag: Option<&Path>) -> Result<PathBuf, SessionError> {
    let store = cat.layout().root().display().to_string();
    let mounts =
        mountinfo::own().map_err(|e| SessionError::Mount(format!("reading mountinfo: {e}")))?;
    let ours: Vec<&MountEntry> = mounts
        .iter()
        // A whole vfolderfs mount, not a session bind from one.
        .filter(|m| m.is_fuse() && m.source == store && m.root == Path::new("/"))
        .collect();
    match flag {
        Some(p) => {
            let canon = std::fs::canonicalize(p)
                .map_err(|e| SessionError::Mount(format!("{}: {e}", p.display())))?;
            if ours.iter().any(|m| m.point == canon) {
                Ok(canon)
            } else {
                Err(SessionError::Mount(format!(
                    "{} is not a vfolderfs mount of {store}",
                    p.display()
                )))
            }
        }
        None => match ours.as_slice() {
            [one] => Ok(one.point.clone()),
            [] => Err(SessionError::Mount(format!(
                "no vfolderfs mount of {store} is running here; start one with `vfolderfs mount`"
            ))),
            _ => Err(SessionError::Mount(format!(
                "{} vfolderfs mounts of {store}; choose one with --mount",
                ours.len()
            ))),
        },
    }
}

/// Unmounts the session bind at `target` (a recorded, normalized path);
/// `Ok(false)` if none is there. The path is opened without following
/// symlinks ([`open_dir_path`]), so a component swapped for a symlink since
/// the attach is refused rather than followed to another mount; and only a
/// bind from a vfolderfs mount of `store` is unmounted, by its fd.
fn unbind(store: &str, target: &Path) -> Result<bool, SessionError> {
    let fd = match open_dir_path(target, false) {
        Ok(fd) => fd,
        Err(SessionError::Target { err, .. }) if err.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let at = |err| SessionError::Bind {
        target: target.display().to_string(),
        err,
    };
    let id = bind::mount_id(&fd).map_err(at)?;
    let mounts =
        mountinfo::own().map_err(|e| SessionError::Mount(format!("reading mountinfo: {e}")))?;
    let ours = mounts.iter().any(|m| {
        m.id == id
            && m.point == target
            && m.is_fuse()
            && m.source == store
            && m.root != Path::new("/")
    });
    if !ours {
        return Ok(false);
    }
    bind::unmount_fd(&fd).map_err(at)?;
    Ok(true)
}

/// Binds vfolder `v` from the vfolderfs mount whose root `mdir` is onto
/// the directory `tdir`: a detached copy of its mount, made `nosuid,nodev`
/// (and `ro`) and checked to show `v`'s backing directory before it is
/// attached (see [`bind`]).
fn bind_vfolder(
    cat: &Catalog,
    v: &crate::store::VFolder,
    mdir: &OwnedFd,
    tdir: &OwnedFd,
    read_only: bool,
) -> io::Result<()> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let name = CString::new(v.name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // The name could have changed hands before the record was made: the
    // bind must show this vfolder's backing directory.
    let want = std::fs::metadata(cat.backing_path(v))
        .map_err(step("the backing directory"))?
        .ino();
    let mut attempts = 0;
    loop {
        let tree = bind::clone_tree(mdir, &name).map_err(step("open_tree"))?;
        bind::restrict(&tree, read_only).map_err(step("mount_setattr"))?;
        // The mount names the vfolder it shows there; a daemon from before
        // that is judged by the inode number (which only matches for the
        // store's own volume: others get inode numbers of the mount's own).
        let shows = match bind::vfolder_id(&tree)? {
            Some(id) => id == v.id,
            None => bind::stat(&tree)?.st_ino == want,
        };
        if !bind::is_fuse(&tree)? || !shows {
            return Err(io::Error::other(format!(
                "the mount's {:?} no longer shows vfolder {:?}",
                v.name, v.name
            )));
        }
        match bind::attach_tree(&tree, tdir) {
            // The daemon invalidated the vfolder's entry (any change to its
            // row: its creation a moment ago, a rename elsewhere) after the
            // copy was made: the copy's root dentry is unhashed and can no
            // longer be mounted. A new copy looks the name up afresh.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && attempts < BIND_ATTEMPTS => {
                attempts += 1;
            }
            r => return r.map_err(step("move_mount")),
        }
    }
}

/// How often a bind is tried again when its copy went stale before it was
/// attached (a kernel entry invalidation in between).
const BIND_ATTEMPTS: u32 = 8;

/// How long a pending attachment record (its bind not made yet) is kept by
/// a prune when its attacher cannot be judged (another PID namespace or
/// host) or is alive: an attach takes milliseconds, so only a stopped
/// attacher outlives this, and it undoes its bind when it finds its record
/// gone.
pub const PENDING_GRACE_MS: i64 = 60_000;

/// Attaches vfolder `name` to `session` at `target`: checks the session id
/// ([`check_session_id`]), opens (and creates) the target without following
/// symlinks, records it under its [`normalize_target`] form (checking
/// the status in the same transaction) as pending with this process's
/// identity, then binds, then confirms the record. A prune between the
/// record and the bind keeps the pending record (see [`prune`]); a failed
/// bind removes it again; a record found gone after the bind (pruned after
/// [`PENDING_GRACE_MS`]) has its bind undone: a bind never stays without
/// a record, so a bound vfolder cannot be deleted or relocated.
pub fn attach(
    cat: &Catalog,
    name: &str,
    session: &str,
    target: &Path,
    read_only: bool,
    mount_flag: Option<&Path>,
) -> Result<Attachment, SessionError> {
    check_session_id(session)?;
    let mp = find_mount(cat, mount_flag)?;
    // Resolve any status: the store refuses what is not mountable, naming it.
    let v = cat.resolve(name)?;
    let target = normalize_target(target)?;
    let tdir = open_dir_path(&target, true)?;
    let mdir = open_dir_path(&mp, false)?;
    let source = mp.join(&v.name);
    let ns = current_mnt_ns().map_err(|err| SessionError::Target {
        path: "/proc/self/ns/mnt".into(),
        err,
    })?;
    let me = crate::workers::this_owner();
    let mut a = cat.store().attach(
        &v.id,
        session,
        &target.display().to_string(),
        read_only,
        ns,
        &source.display().to_string(),
        Some(&me),
    )?;
    crate::workers::stop_point("attach-bind");
    let bound = bind_vfolder(cat, &v, &mdir, &tdir, read_only);
    if let Err(e) = bound {
        cat.store().detach(a.seq)?;
        return Err(SessionError::Bind {
            target: target.display().to_string(),
            err: e,
        });
    }
    if !cat.store().confirm_attachment(a.seq)? {
        let store = cat.layout().root().display().to_string();
        let _ = unbind(&store, &target);
        return Err(SessionError::Bind {
            target: target.display().to_string(),
            err: io::Error::other(
                "the attachment record was pruned while the bind was being made \
                 (this process was stopped too long); the bind was undone: attach again",
            ),
        });
    }
    a.pending = None;
    Ok(a)
}

/// What detaching one attachment did.
#[derive(Debug)]
pub struct Detached {
    /// The record removed.
    pub attachment: Attachment,
    /// Whether a bind was unmounted (false: it was gone already).
    pub unmounted: bool,
}

/// Detaches the attachments selected by `pick`: unmounts each bind (when
/// it lives in this mount namespace) and removes its record.
pub fn detach(
    cat: &Catalog,
    pick: &dyn Fn(&Attachment) -> bool,
) -> Result<Vec<Detached>, SessionError> {
    let ns = current_mnt_ns().map_err(|err| SessionError::Bind {
        target: "/proc/self/ns/mnt".into(),
        err,
    })?;
    let store = cat.layout().root().display().to_string();
    let mut out = Vec::new();
    for a in cat
        .store()
        .attachments(None)?
        .into_iter()
        .filter(|a| pick(a))
    {
        // Only a bind of this node's namespace is unmounted from here.
        let unmounted = if a.mnt_ns == ns && a.node == crate::enforce::node_name() {
            unbind(&store, Path::new(&a.target))?
        } else {
            false
        };
        cat.store().detach(a.seq)?;
        out.push(Detached {
            attachment: a,
            unmounted,
        });
    }
    Ok(out)
}

/// Whether some process lives in mount namespace `ns`; returns one such pid.
fn process_in_ns(ns: u64) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == ns) {
            return Some(pid);
        }
    }
    None
}

/// Whether a pending attachment record may still get its bind: its
/// attacher is not known dead and the record is younger than
/// [`PENDING_GRACE_MS`].
pub fn may_still_bind(a: &Attachment, now: crate::store::Millis) -> bool {
    a.pending.as_deref().is_some_and(|who| {
        !crate::workers::owner_dead(who) && now - a.created_at < PENDING_GRACE_MS
    })
}

/// Finds attachments of this node whose bind is gone (its namespace died,
/// or its target is no longer mounted there) and removes their records;
/// returns them.
/// A pending record whose attacher may still be making its bind is kept
/// (see [`attach`]). With `own_ns_only`, only this mount namespace is
/// looked at.
pub fn prune(cat: &Catalog, own_ns_only: bool) -> Result<Vec<Attachment>, SessionError> {
    let me = current_mnt_ns().ok();
    let now = crate::store::sqlite::now_millis();
    let node = crate::enforce::node_name();
    let mut gone = Vec::new();
    for a in cat.store().attachments(None)? {
        // Another node's namespaces cannot be looked at from here.
        if a.node != node || (own_ns_only && Some(a.mnt_ns) != me) {
            continue;
        }
        if may_still_bind(&a, now) {
            continue;
        }
        let info = if Some(a.mnt_ns) == me {
            Some(PathBuf::from("/proc/self/mountinfo"))
        } else {
            process_in_ns(a.mnt_ns).map(|pid| PathBuf::from(format!("/proc/{pid}/mountinfo")))
        };
        let mounted = match info {
            None => false,
            Some(p) => match mountinfo::read(&p) {
                Ok(list) => list.iter().any(|m| m.point == Path::new(&a.target)),
                // Cannot tell (the process just left): keep it for now.
                Err(_) => true,
            },
        };
        if !mounted && cat.store().detach(a.seq)? {
            gone.push(a);
        }
    }
    Ok(gone)
}
