//! Data volumes as directories: which directories may hold backing
//! directories (checked when a volume is added, and again by fsck), what a
//! volume looks like from outside (`volume show`), and the errors of volume
//! operations.
//!
//! A volume is refused when its directory
//! - is on a FUSE filesystem (`statfs` says `FUSE_SUPER_MAGIC`, or the mount
//!   holding it in `/proc/self/mountinfo` is of type `fuse*`): vfolderfs
//!   serving its own backing data through a FUSE mount can deadlock the
//!   kernel, and another FUSE daemon's semantics are not a disk's;
//! - is inside a vfolderfs mount, or has one inside it;
//! - is equal to, inside, or contains another volume or the store
//!   directory (so also the default volume, the store's `data/`): fsck
//!   would take the other volume's directories for its own.
//!
//! Overlap is judged three ways, so that neither a symlink nor a bind mount
//! gets past: by canonical paths; by `(st_dev, st_ino)` identity of the
//! directory and every ancestor; and by the path within the filesystem
//! (the mount's root in mountinfo joined with the path below its mount
//! point, on the same `st_dev`), which sees through bind mounts of
//! subdirectories.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::mountinfo::{self, MountEntry};

/// `f_type` of every FUSE filesystem (`linux/magic.h`).
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Errors of volume operations, worded for volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeError {
    /// No volume has this name.
    NotFound(String),
    /// A volume with this name exists.
    Exists(String),
    /// Another volume already has this directory.
    PathTaken {
        /// The directory.
        path: String,
        /// The volume that has it.
        by: String,
    },
    /// The directory cannot be a volume (see the module docs).
    Unsafe {
        /// The volume's name.
        name: String,
        /// Its directory.
        path: String,
        /// Why, in words.
        why: String,
    },
    /// A relocation to the volume the vfolder is on.
    AlreadyOn {
        /// The vfolder's name.
        vfolder: String,
        /// The volume.
        volume: String,
    },
    /// The volume still holds vfolders (any status, trashed ones included),
    /// old copies of relocated ones, or is a relocation's target.
    InUse {
        /// The volume.
        name: String,
        /// How many vfolders use it.
        count: usize,
        /// Some of their names.
        examples: Vec<String>,
    },
    /// The default volume (the store's own `data/`) cannot be removed.
    Default,
    /// The directory is not this volume of this store: its identity marker
    /// is missing (the shared filesystem is not mounted there, an empty local
    /// directory shows instead) or names another store or volume.
    Unmarked {
        /// The volume's name.
        name: String,
        /// Its directory.
        path: String,
        /// Why, in words.
        why: String,
    },
}

/// The identity marker in a volume's root: which store and volume the
/// directory is. Written when a volume is first used (`volume add`, or a
/// store's first start for its default volume).
pub const MARKER: &str = ".vfolderfs-volume";

/// The marker's content for volume `name` of store `store_id`.
pub fn marker_text(store_id: &str, name: &str) -> String {
    format!("vfolderfs volume\nstore {store_id}\nname {name}\n")
}

/// A marker `m` that is not the wanted one, in words: "marked as another
/// store's or volume's (store …, name …)".
pub fn foreign_marker(m: &str) -> String {
    format!(
        "marked as another store's or volume's ({})",
        m.lines().skip(1).collect::<Vec<_>>().join(", ")
    )
}

/// The marker in directory `dir`, if there is one (a symlink is refused).
pub fn read_marker(dir: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let name = std::ffi::CString::new(MARKER).expect("no NUL");
    match crate::backing::sys::openat(dir, &name, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
        Ok(fd) => {
            let mut s = String::new();
            std::fs::File::from(fd).take(4096).read_to_string(&mut s)?;
            Ok(Some(s))
        }
    }
}

/// Writes the marker into directory `dir` (whole or not at all: a
/// temporary file renamed into place, synced).
pub fn write_marker(dir: std::os::fd::BorrowedFd<'_>, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = std::ffi::CString::new(format!("{MARKER}.tmp")).expect("no NUL");
    let name = std::ffi::CString::new(MARKER).expect("no NUL");
    let fd = crate::backing::sys::openat(
        dir,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
        0o600,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    crate::backing::sys::renameat2(dir, &tmp, dir, &name, 0)?;
    // The rename itself, durable (through a readable descriptor: `dir` may
    // be an O_PATH one, which fsync refuses).
    let d = crate::backing::sys::openat(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    use std::os::fd::AsFd;
    crate::backing::sys::fsync(d.as_fd(), false)?;
    Ok(())
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeError::NotFound(n) => write!(f, "no volume named {n:?}"),
            VolumeError::Exists(n) => write!(f, "a volume named {n:?} already exists"),
            VolumeError::PathTaken { path, by } => {
                write!(f, "{path} is already the directory of volume {by:?}")
            }
            VolumeError::Unsafe { name, path, why } => {
                write!(f, "cannot use {path} as volume {name:?}: {why}")
            }
            VolumeError::AlreadyOn { vfolder, volume } => write!(
                f,
                "vfolder {vfolder:?} is on volume {volume:?} already; nothing to relocate"
            ),
            VolumeError::InUse {
                name,
                count,
                examples,
            } => write!(
                f,
                "cannot remove volume {name:?}: {count} vfolder(s) use it (live, trashed, an old \
                 copy awaiting removal or a relocation under way): {}{}; relocate or purge them first (`vfolderfs gc` forgets purged ones)",
                examples.join(", "),
                if *count > examples.len() { ", ..." } else { "" }
            ),
            VolumeError::Default => write!(
                f,
                "cannot remove volume \"default\": it is the store's own data directory"
            ),
            VolumeError::Unmarked { name, path, why } => write!(
                f,
                "volume {name:?} is unavailable: {path} {why}; nothing is created, purged or \
                 judged there until it is"
            ),
        }
    }
}

impl std::error::Error for VolumeError {}

/// `/a/./b/../c` → `/a/c`, relative paths taken from the working directory;
/// no filesystem access.
pub fn lexical_absolute(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    };
    let mut out = base;
    for c in p.components() {
        match c {
            Component::RootDir => out = PathBuf::from("/"),
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// Where `p` will be once made: its nearest existing ancestor
/// canonicalized, joined with the components still missing (which cannot
/// be symlinks, not existing).
pub fn prospective(p: &Path) -> std::io::Result<PathBuf> {
    let abs = lexical_absolute(p);
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        match std::fs::canonicalize(cur) {
            Ok(c) => {
                let mut out = c;
                for m in missing.iter().rev() {
                    out.push(m);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (cur.parent(), cur.file_name()) else {
                    return Err(e);
                };
                missing.push(name.to_os_string());
                cur = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The mount holding `p` (the topmost one at the longest mount point
/// that is a prefix of it).
pub fn mount_of<'a>(mounts: &'a [MountEntry], p: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        if p.starts_with(&m.point)
            && best.is_none_or(|b| m.point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

/// Whether `m` is a vfolderfs mount: FUSE, and its source (vfolderfs
/// names the store directory there) holds a store database.
fn is_vfolderfs(m: &MountEntry) -> bool {
    m.is_fuse()
        && (m.fstype == "fuse.vfolderfs"
            || (m.source.starts_with('/') && Path::new(&m.source).join("vfolders.db").is_file()))
}

/// What a mount table says against `p` as a volume directory, if anything.
fn mount_refusal(mounts: &[MountEntry], p: &Path) -> Option<String> {
    if let Some(m) = mounts
        .iter()
        .find(|m| is_vfolderfs(m) && p.starts_with(&m.point))
    {
        return Some(format!(
            "it is inside the vfolderfs mount at {} (of store {})",
            m.point.display(),
            m.source
        ));
    }
    if let Some(m) = mount_of(mounts, p).filter(|m| m.is_fuse()) {
        return Some(format!(
            "it is on a FUSE filesystem ({} mounted at {})",
            m.fstype,
            m.point.display()
        ));
    }
    if let Some(m) = mounts
        .iter()
        .find(|m| is_vfolderfs(m) && m.point.starts_with(p))
    {
        return Some(format!(
            "the vfolderfs mount at {} is inside it",
            m.point.display()
        ));
    }
    None
}

/// What this namespace's mount table alone says against `p` (made
/// absolute lexically) as a volume directory: asked first, since it costs
/// no access to the directory, which on a stuck FUSE mount could hang.
pub fn mount_table_refusal(p: &Path) -> Option<String> {
    let mounts = mountinfo::own().unwrap_or_default();
    mount_refusal(&mounts, &lexical_absolute(p))
}

/// `statfs(p).f_type`.
pub fn fs_magic(p: &Path) -> std::io::Result<i64> {
    let c = crate::backing::sys::cstr(p)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: NUL-terminated path and a buffer of the right size.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call.
    let f_type = unsafe { st.assume_init() }.f_type;
    // `__fsword_t` is not i64 on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok(f_type as i64)
}

/// Something a volume must not overlap: another volume or the store directory.
#[derive(Debug, Clone)]
pub struct Occupied {
    /// How to name it in a message ("volume \"fast\"", "the store directory").
    pub label: String,
    /// Its directory as recorded.
    pub path: PathBuf,
}

/// The `(st_dev, st_ino)` of `p` and of every ancestor, `p` first.
fn identities(p: &Path) -> Vec<(u64, u64)> {
    p.ancestors()
        .filter_map(|a| std::fs::metadata(a).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// `(st_dev, path within that filesystem)` of a directory, from the mount
/// holding its nearest existing ancestor (itself if it exists).
fn fs_location(mounts: &[MountEntry], p: &Path) -> Option<(u64, PathBuf)> {
    let (existing, dev) = p
        .ancestors()
        .find_map(|a| std::fs::metadata(a).ok().map(|m| (a, m.dev())))?;
    let m = mount_of(mounts, existing)?;
    let below = p.strip_prefix(&m.point).ok()?;
    Some((dev, m.root.join(below)))
}

/// How `a` relates to `b` (both canonical): `Some("is")`, `Some("is inside")`
/// or `Some("contains")`; `None` if apart.
fn relation(a: &Path, b: &Path) -> Option<&'static str> {
    if a == b {
        Some("is")
    } else if a.starts_with(b) {
        Some("is inside")
    } else if b.starts_with(a) {
        Some("contains")
    } else {
        None
    }
}

/// How directory `cand` overlaps `other`, if it does; `cand` need not exist
/// yet (then only what exists of it is compared by identity).
fn overlap(mounts: &[MountEntry], cand: &Path, other: &Path) -> Option<&'static str> {
    let other_c = std::fs::canonicalize(other).unwrap_or_else(|_| other.to_path_buf());
    if let Some(r) = relation(cand, &other_c) {
        return Some(r);
    }
    let (cand_ids, other_ids) = (identities(cand), identities(&other_c));
    let cand_exists = std::fs::metadata(cand).is_ok();
    let other_exists = std::fs::metadata(&other_c).is_ok();
    if cand_exists && other_exists && cand_ids.first() == other_ids.first() {
        return Some("is");
    }
    if other_exists && cand_ids.contains(&other_ids[0]) {
        return Some("is inside");
    }
    if cand_exists && other_ids.contains(&cand_ids[0]) {
        return Some("contains");
    }
    if let (Some((da, pa)), Some((db, pb))) =
        (fs_location(mounts, cand), fs_location(mounts, &other_c))
        && da == db
    {
        return relation(&pa, &pb);
    }
    None
}

/// Why directory `path` cannot be volume `name`, given what it must not
/// overlap; `None` if it can. `path` should be canonical (or
/// [`prospective`] when it does not exist yet).
pub fn refusal(path: &Path, others: &[Occupied]) -> Option<String> {
    let mounts = mountinfo::own().unwrap_or_default();
    // The mount table first: it costs no access to the directory, which on
    // a stuck FUSE mount could hang.
    if let Some(why) = mount_refusal(&mounts, path) {
        return Some(why);
    }
    let existing = path.ancestors().find(|a| std::fs::metadata(a).is_ok());
    if let Some(e) = existing
        && fs_magic(e).is_ok_and(|m| m == FUSE_SUPER_MAGIC)
    {
        return Some(format!("it is on a FUSE filesystem ({})", e.display()));
    }
    for o in others {
        if let Some(r) = overlap(&mounts, path, &o.path) {
            return Some(format!(
                "it {r} {} ({}); volumes must not overlap each other or the store",
                o.label,
                o.path.display()
            ));
        }
    }
    None
}

/// How directory `path` overlaps one of `others`, in words, if it does
/// (overlap only: no mount-table or filesystem-type checks). What a mount
/// point is checked with: a vfolderfs mount over or inside its own data
/// would serve its backing directories through itself.
pub fn overlap_refusal(path: &Path, others: &[Occupied]) -> Option<String> {
    let mounts = mountinfo::own().unwrap_or_default();
    others.iter().find_map(|o| {
        overlap(&mounts, path, &o.path)
            .map(|r| format!("it {r} {} ({})", o.label, o.path.display()))
    })
}

/// A volume as seen from outside, for `volume show` and `volume list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Filesystem type of the mount holding it (from mountinfo).
    pub fstype: Option<String>,
    /// Where that filesystem is mounted.
    pub mount_point: Option<PathBuf>,
    /// Bytes available to vfolderfs's user, and in all; `None` when the
    /// volume is unavailable.
    pub space: Option<(u64, u64)>,
    /// Why it is unavailable (missing, unreadable), if it is.
    pub unavailable: Option<String>,
}

/// Looks at volume directory `path`: its filesystem, its space, and
/// whether it can be read (a missing or unreadable directory is
/// "unavailable").
pub fn probe(path: &Path) -> Probe {
    let mounts = mountinfo::own().unwrap_or_default();
    let m = mount_of(&mounts, path);
    let mut p = Probe {
        fstype: m.map(|m| m.fstype.clone()),
        mount_point: m.map(|m| m.point.clone()),
        space: None,
        unavailable: None,
    };
    let opened = std::fs::File::open(path).and_then(|f| {
        if !f.metadata()?.is_dir() {
            return Err(std::io::ErrorKind::NotADirectory.into());
        }
        std::fs::read_dir(path)?;
        crate::backing::sys::fstatvfs(std::os::fd::AsFd::as_fd(&f))
    });
    match opened {
        Ok(s) => {
            p.space = Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize));
        }
        Err(e) => p.unavailable = Some(e.to_string()),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths() {
        assert_eq!(
            lexical_absolute(Path::new("/a/./b/../c")),
            Path::new("/a/c")
        );
        assert_eq!(lexical_absolute(Path::new("/../x")), Path::new("/x"));
    }

    #[test]
    fn relations() {
        assert_eq!(relation(Path::new("/a"), Path::new("/a")), Some("is"));
        assert_eq!(
            relation(Path::new("/a/b"), Path::new("/a")),
            Some("is inside")
        );
        assert_eq!(
            relation(Path::new("/a"), Path::new("/a/b")),
            Some("contains")
        );
        assert_eq!(relation(Path::new("/ab"), Path::new("/a")), None);
    }

    #[test]
    fn overlaps_seen_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::os::unix::fs::symlink(&vol, d.path().join("link")).unwrap();
        let others = [Occupied {
            label: "volume \"v\"".into(),
            path: vol.clone(),
        }];
        let cand = prospective(&d.path().join("link/sub")).unwrap();
        assert!(refusal(&cand, &others).unwrap().contains("is inside"));
        let cand = prospective(d.path()).unwrap();
        assert!(refusal(&cand, &others).unwrap().contains("contains"));
        let apart = prospective(&d.path().join("other")).unwrap();
        assert_eq!(refusal(&apart, &others), None);
    }
}
