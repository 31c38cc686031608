//! Checking a store against its data volumes, and repairing what can be
//! repaired safely: never deleting data it cannot account for (unknown
//! directories go to the volume's `lost+found`).
//!
//! Safe against a live store (mounts and jobs running, CLI commands
//! arriving):
//! - a directory is an orphan only if no row of any status, on any volume,
//!   has its name as id (a vfolder's own directory, an old copy awaiting
//!   removal, a relocation's or clone's new copy are all named by the id);
//! - `create` and a clone's start make the directory a moment before the
//!   row: a directory whose last change (`max(mtime, ctime)`) is younger
//!   than the grace period ([`Options::grace`], 10 minutes by default) is
//!   not judged at all, and just before a move the repair reads the rows
//!   and the directory's age again; a creator that was stalled past the
//!   grace period finds its (still empty) directory gone after inserting
//!   its row and makes it again ([`crate::catalog::Catalog::create_on`]);
//! - nothing is scanned for orphans on a volume that overlaps another
//!   volume or the store, or is on FUSE ([`Finding::VolumeUnsafe`]), and
//!   no directory that is (or leads to) a volume root is ever moved;
//! - rows on an unreachable volume are not judged
//!   ([`Finding::VolumeUnavailable`]): a disk that is not mounted does not
//!   make its trashed vfolders "purged";
//! - jobs are finished or rolled back only under the job's claim (a live
//!   holder's claim is never taken over), and an old copy is removed only
//!   after every mount confirmed the relocation (see
//!   [`crate::workers::relocate::cleanup`]).
//!
//! [`repair_all`] repairs in passes until nothing new turns up (finishing
//! an interrupted clone may leave its partial copy to purge: the next pass
//! purges it), so one run leaves nothing it could have repaired.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::backing::sys;
use crate::catalog::Catalog;
use crate::layout::Layout;
use crate::sessions;
use crate::store::{Job, ListFilter, Result, VFolder};
use crate::volumes;
use crate::workers::pool::{self, Task};
use crate::workers::{Outcome, owner_dead, purge, relocate, this_owner};

/// Name of the directory in each volume where unaccounted data is moved.
pub const LOST_FOUND: &str = "lost+found";

/// How fsck judges a live store.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A directory no row accounts for is judged only once it has not
    /// changed for this long (a `create` may be between its `mkdir` and its
    /// row).
    pub grace: Duration,
}

/// The default [`Options::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

impl Default for Options {
    fn default() -> Self {
        Options {
            grace: DEFAULT_GRACE,
        }
    }
}

/// One problem found.
#[derive(Debug, Clone)]
pub enum Finding {
    /// A vfolder's backing directory is missing.
    MissingData(VFolder),
    /// A backing directory no row accounts for.
    Orphan {
        /// The volume it is on.
        volume: String,
        /// Its name (normally a vfolder id).
        id: String,
    },
    /// A purged vfolder whose data is still there.
    PurgedButPresent(VFolder),
    /// A transient status with no live job behind it.
    Stuck(VFolder, &'static str),
    /// A relocated vfolder whose old copy was not removed.
    LeftoverCopy(VFolder),
    /// A store path other users could reach (a mode looser than
    /// [`crate::privacy`] allows).
    LooseMode(crate::privacy::Loose),
    /// An attachment whose bind is gone.
    StaleAttachment {
        /// Its target.
        target: String,
        /// Its session.
        session: String,
    },
    /// A volume whose directory cannot be read: the vfolders on it are not
    /// judged until it is back.
    VolumeUnavailable {
        /// The volume.
        volume: String,
        /// Its directory.
        path: PathBuf,
        /// Why, in words.
        why: String,
    },
    /// A volume that should never have been accepted (it overlaps another
    /// volume or the store, or is on FUSE): it is not scanned for orphans.
    VolumeUnsafe {
        /// The volume.
        volume: String,
        /// Its directory.
        path: PathBuf,
        /// Why, in words.
        why: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::MissingData(v) => write!(
                f,
                "vfolder {:?} ({}, {}): its backing directory is missing",
                v.name, v.id, v.status
            ),
            Finding::Orphan { volume, id } => {
                write!(f, "volume {volume}: directory {id} belongs to no vfolder")
            }
            Finding::PurgedButPresent(v) => write!(
                f,
                "vfolder {:?} ({}) is delete-complete but its data is still there",
                v.name, v.id
            ),
            Finding::Stuck(v, why) => write!(
                f,
                "vfolder {:?} ({}) is {} with {why}",
                v.name, v.id, v.status
            ),
            Finding::LeftoverCopy(v) => write!(
                f,
                "vfolder {:?} ({}) was relocated but its old copy on {} remains",
                v.name,
                v.id,
                v.prev_volume.as_deref().unwrap_or("?")
            ),
            Finding::LooseMode(l) => l.fmt(f),
            Finding::StaleAttachment { target, session } => {
                write!(
                    f,
                    "attachment of session {session:?} at {target}: its bind is gone"
                )
            }
            Finding::VolumeUnavailable { volume, path, why } => write!(
                f,
                "volume {volume} ({}) is unavailable ({why}); the vfolders on it were not checked",
                path.display()
            ),
            Finding::VolumeUnsafe { volume, path, why } => write!(
                f,
                "volume {volume} ({}) should not be a volume: {why}; it was not scanned for \
                 orphans",
                path.display()
            ),
        }
    }
}

fn job_is_alive(job: Option<&Job>) -> bool {
    job.is_some_and(|j| {
        !j.owner.is_empty()
            && j.lease_until > crate::store::sqlite::now_millis()
            && !owner_dead(&j.owner)
    })
}

/// What a check found, and what it did not judge.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The problems.
    pub findings: Vec<Finding>,
    /// Directories no row accounts for that changed within the grace
    /// period: not judged (a creation may be under way).
    pub recent: usize,
}

/// Volumes fsck must not scan for orphans, with why; and those whose
/// vfolders it does not judge (unreadable, or on FUSE: not even touched,
/// since a stuck FUSE daemon would hang fsck).
fn volume_findings(cat: &Catalog) -> Result<(Vec<Finding>, HashSet<String>, HashSet<String>)> {
    let mut out = Vec::new();
    let (mut unsafe_vols, mut unjudged) = (HashSet::new(), HashSet::new());
    for (name, path) in cat.volume_list()? {
        if let Some(why) = volumes::mount_table_refusal(&path) {
            unsafe_vols.insert(name.clone());
            unjudged.insert(name.clone());
            out.push(Finding::VolumeUnsafe {
                volume: name,
                path,
                why: format!("{why} (its vfolders were not checked)"),
            });
            continue;
        }
        let probe = volumes::probe(&path);
        if let Some(why) = probe.unavailable.clone().or_else(|| {
            cat.volume(&name)
                .err()
                .map(|e| format!("cannot open it: {e}"))
        }) {
            unjudged.insert(name.clone());
            out.push(Finding::VolumeUnavailable {
                volume: name,
                path,
                why,
            });
        }
    }
    for (volume, path, why) in cat.volume_refusals()? {
        if unsafe_vols.insert(volume.clone()) {
            out.push(Finding::VolumeUnsafe { volume, path, why });
        }
    }
    Ok((out, unsafe_vols, unjudged))
}

/// The `(st_dev, st_ino)` of every volume root, the store directory, and
/// every directory above them: never moved, whatever a scan finds.
fn protected_dirs(cat: &Catalog) -> Result<HashSet<(u64, u64)>> {
    let mut out = HashSet::new();
    let mut roots: Vec<PathBuf> = cat.volume_list()?.into_iter().map(|(_, p)| p).collect();
    roots.push(cat.layout().root().to_path_buf());
    for r in roots {
        for a in r.ancestors() {
            if let Ok(m) = std::fs::metadata(a) {
                out.insert((m.dev(), m.ino()));
            }
        }
    }
    Ok(out)
}

/// How long ago an entry (its `lstat`) last changed: the newer of its mtime and ctime.
fn age(meta: &std::fs::Metadata) -> Duration {
    let secs = meta.mtime().max(meta.ctime());
    let nanos = if meta.mtime() >= meta.ctime() {
        meta.mtime_nsec()
    } else {
        meta.ctime_nsec()
    };
    let changed = std::time::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.max(0) as u32);
    std::time::SystemTime::now()
        .duration_since(changed)
        .unwrap_or(Duration::ZERO)
}

/// Compares the store with its volumes, and checks that both are private
/// to vfolderfs's user.
pub fn check(cat: &Catalog, opts: &Options) -> Result<Checked> {
    let rows = cat.store().list(ListFilter::All)?;
    let (mut out, unsafe_vols, unavailable) = volume_findings(cat)?;
    row_findings(cat, &rows, &unavailable, &mut out)?;
    let skip: HashSet<String> = unsafe_vols.union(&unavailable).cloned().collect();
    let recent = orphan_findings(cat, &rows, &skip, opts.grace, &mut out)?;
    out.extend(cat.loose_modes()?.into_iter().map(Finding::LooseMode));
    attachment_findings(cat, &mut out)?;
    Ok(Checked {
        findings: out,
        recent,
    })
}

/// What each row says against what its volume holds: stuck jobs, leftover
/// copies, missing data, data of a purged row (rows on an unavailable volume
/// are not judged).
fn row_findings(
    cat: &Catalog,
    rows: &[VFolder],
    unavailable: &HashSet<String>,
    out: &mut Vec<Finding>,
) -> Result<()> {
    let on_unavailable = |v: &VFolder| {
        unavailable.contains(&v.volume)
            || v.prev_volume
                .as_ref()
                .is_some_and(|p| unavailable.contains(p))
    };
    for v in rows {
        if on_unavailable(v) {
            continue;
        }
        let job = cat.store().job(&v.id)?;
        let present = cat.backing_exists(&v.id, &v.volume);
        let busy = job_is_alive(job.as_ref());
        // A purge stopped by `vfolderfs cancel` waits for an explicit
        // resume on purpose: not stuck.
        let paused = job
            .as_ref()
            .is_some_and(|j| j.cancel.is_some() && j.kind == crate::workers::purge::KIND);
        if Task::for_row(v).is_some() && !busy && !paused {
            let why = if job.is_none() {
                "no job"
            } else {
                "no live owner for its job"
            };
            if v.prev_volume.is_some() && !v.status.is_relocating() {
                out.push(Finding::LeftoverCopy(v.clone()));
            } else {
                out.push(Finding::Stuck(v.clone(), why));
            }
            continue;
        }
        if !present
            && !busy
            && !v.status.is_purging()
            && (v.status.is_readable() || v.status.is_purgeable())
        {
            out.push(Finding::MissingData(v.clone()));
        }
        if present && !v.status.is_readable() && !v.status.is_purgeable() {
            out.push(Finding::PurgedButPresent(v.clone()));
        }
    }
    Ok(())
}

/// Directories on the volumes that no row claims, older than `grace`
/// (volumes in `skip` are not looked at); returns how many younger ones
/// were left for a later check.
fn orphan_findings(
    cat: &Catalog,
    rows: &[VFolder],
    skip: &HashSet<String>,
    grace: Duration,
    out: &mut Vec<Finding>,
) -> Result<usize> {
    let ids: HashSet<&str> = rows.iter().map(|v| v.id.as_str()).collect();
    let protected = protected_dirs(cat)?;
    let mut recent = 0;
    for (volume, path) in cat.volume_list()? {
        if skip.contains(&volume) {
            continue;
        }
        let Ok(shards) = std::fs::read_dir(&path) else {
            continue;
        };
        for shard in shards.flatten() {
            let sname = shard.file_name().to_string_lossy().into_owned();
            let Ok(smeta) = std::fs::symlink_metadata(shard.path()) else {
                continue;
            };
            if sname == LOST_FOUND
                || !smeta.is_dir()
                || protected.contains(&(smeta.dev(), smeta.ino()))
            {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                // Any row of that id claims it, whatever its status and volume.
                if ids.contains(id.as_str()) {
                    continue;
                }
                let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                if protected.contains(&(meta.dev(), meta.ino())) {
                    continue;
                }
                if age(&meta) < grace {
                    recent += 1;
                    continue;
                }
                out.push(Finding::Orphan {
                    volume: volume.clone(),
                    id: format!("{sname}/{id}"),
                });
            }
        }
    }
    Ok(recent)
}

/// Attachments recorded in this node's mount namespace whose bind is gone.
fn attachment_findings(cat: &Catalog, out: &mut Vec<Finding>) -> Result<()> {
    let me = sessions::current_mnt_ns().ok();
    let now = crate::store::sqlite::now_millis();
    let node = crate::enforce::node_name();
    for a in cat.store().attachments(None)? {
        // A namespace inode means something on its own node only.
        if a.node == node
            && Some(a.mnt_ns) == me
            && !sessions::may_still_bind(&a, now)
            && crate::mountinfo::at(std::path::Path::new(&a.target)).is_none()
        {
            out.push(Finding::StaleAttachment {
                target: a.target,
                session: a.session,
            });
        }
    }
    Ok(())
}

/// Moves `rel` (a `shard/id` path) of `volume` into the volume's `lost+found`.
fn to_lost_found(cat: &Catalog, volume: &str, rel: &str) -> std::io::Result<PathBuf> {
    let vol = cat.volume(volume).map_err(std::io::Error::other)?;
    let lf = CString::new(LOST_FOUND).expect("no NUL");
    match sys::mkdirat(vol.fd(), &lf, 0o700) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
        _ => {}
    }
    let lf_fd = sys::openat(
        vol.fd(),
        &lf,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let (shard, name) = rel.split_once('/').unwrap_or(("", rel));
    let shard_fd = sys::openat(
        vol.fd(),
        &CString::new(shard).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let src = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let stamp = crate::store::sqlite::now_millis();
    let dst_name = format!("{name}.{stamp}");
    let dst = CString::new(dst_name.as_str()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    sys::renameat2(
        shard_fd.as_fd(),
        &src,
        lf_fd.as_fd(),
        &dst,
        libc::RENAME_NOREPLACE,
    )?;
    Ok(vol.path.join(LOST_FOUND).join(dst_name))
}

/// What a job's task is, in words.
fn task_words(task: &Task) -> &'static str {
    match task {
        Task::Purge(_) => "removing its data",
        Task::Clone(_) => "the clone",
        Task::Relocate(_) => "the relocation",
        Task::Cleanup(_) => "removing the old copy",
    }
}

/// How a job attempt ended, in words: done (Ok) or left (Err).
fn outcome_words(what: &str, o: Outcome) -> std::result::Result<String, String> {
    match o {
        Outcome::Complete(n) => Ok(format!("finished {what} ({n} entries)")),
        Outcome::RolledBack(why) => Ok(format!("rolled back: {why}")),
        Outcome::NotApplicable => Ok("nothing left to do".into()),
        Outcome::Failed(m) => Err(format!("{what} failed: {m}")),
        Outcome::Cancelled => Err(format!(
            "{what} stopped before the end (a mount did not confirm in time); it is \
             resumed by the next fsck --repair or mount"
        )),
        Outcome::CancelledBy(by) => Err(format!(
            "{what} was cancelled by {by}; `vfolderfs purge` or `vfolderfs jobs --resume` \
             resumes it"
        )),
        Outcome::HeldElsewhere => Err(format!("left alone: another live process is doing {what}")),
        Outcome::ClaimLost => Err(format!("left to another process, which took {what} over")),
    }
}

/// Moves orphan `rel` of `volume` to `lost+found` after judging it again:
/// a row may have claimed it, or it may have changed, since the check.
fn move_orphan(
    cat: &Catalog,
    volume: &str,
    rel: &str,
    opts: &Options,
) -> std::result::Result<String, String> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    match cat.store().get(name) {
        Ok(v) => {
            return Ok(format!(
                "no longer an orphan: vfolder {:?} ({}) claims it now; left as it is",
                v.name, v.status
            ));
        }
        Err(crate::store::StoreError::NotFound(_)) => {}
        Err(e) => return Err(format!("left as it is: {e}")),
    }
    let path = cat
        .volume(volume)
        .map_err(|e| e.to_string())?
        .path
        .join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if age(&m) < opts.grace => {
            return Ok("changed since the check; left as it is".into());
        }
        Ok(_) => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    to_lost_found(cat, volume, rel)
        .map(|p| format!("moved to {}", p.display()))
        .map_err(|e| e.to_string())
}

/// Repairs what can be repaired safely; returns, per finding, what was done
/// (Ok) or why it was left (Err), in words.
pub fn repair(
    cat: &Catalog,
    findings: &[Finding],
    opts: &Options,
) -> Vec<(String, std::result::Result<String, String>)> {
    let owner = this_owner();
    let never = AtomicBool::new(false);
    let mut out = Vec::new();
    for f in findings {
        let r: std::result::Result<String, String> = match f {
            Finding::Stuck(v, _) => match Task::for_row(v) {
                Some(task) => match pool::run_task(cat, &task, &owner, &never, None) {
                    Ok(o) => outcome_words(task_words(&task), o),
                    Err(e) => Err(e.to_string()),
                },
                None => Ok("nothing left to do".into()),
            },
            Finding::LeftoverCopy(v) => match relocate::cleanup(cat, &v.id, &owner, &never) {
                Ok(o) => outcome_words("removing the old copy", o),
                Err(e) => Err(e.to_string()),
            },
            Finding::MissingData(v) if v.status.is_purgeable() => {
                match purge::request(cat, &v.id, "fsck: data already gone")
                    .and_then(|()| purge::purge_one(cat, &v.id, &owner, &never, None, &mut |_| {}))
                {
                    Ok(Outcome::Complete(_)) => Ok("recorded as purged".into()),
                    Ok(o) => outcome_words("recording it as purged", o),
                    Err(e) => Err(e.to_string()),
                }
            }
            Finding::MissingData(_) => Err(
                "left as it is: a live vfolder without data needs a person (restore the \
                 directory from backup, or delete and purge the vfolder)"
                    .into(),
            ),
            Finding::Orphan { volume, id } => move_orphan(cat, volume, id, opts),
            Finding::PurgedButPresent(v) => to_lost_found(
                cat,
                &v.volume,
                &Layout::relative_path(&v.id).display().to_string(),
            )
            .map(|p| format!("moved to {}", p.display()))
            .map_err(|e| e.to_string()),
            Finding::LooseMode(l) => crate::privacy::tighten(l)
                .map(|()| format!("set to {:04o}", l.want))
                .map_err(|e| e.to_string()),
            Finding::StaleAttachment { .. } => sessions::prune(cat, true)
                .map(|gone| format!("pruned {} stale attachment(s)", gone.len()))
                .map_err(|e| e.to_string()),
            Finding::VolumeUnavailable { .. } => Err(
                "left as it is: mount the volume's disk or restore its directory, then run \
                 fsck again"
                    .into(),
            ),
            Finding::VolumeUnsafe { volume, .. } => Err(format!(
                "left as it is: relocate the vfolders off volume {volume} and `vfolderfs \
                 volume remove {volume}`"
            )),
        };
        out.push((f.to_string(), r));
    }
    out
}

/// What [`repair_all`] did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// What the first check found.
    pub found: Vec<Finding>,
    /// Per finding (over every pass), what was done or why it was left.
    pub repairs: Vec<(String, std::result::Result<String, String>)>,
    /// What the last check still finds.
    pub remaining: Vec<Finding>,
    /// Directories left unjudged by the last check (see [`Checked::recent`]).
    pub recent: usize,
}

/// Most passes [`repair_all`] makes.
const MAX_PASSES: usize = 5;

/// Checks and repairs in passes: each pass repairs the findings not
/// attempted before (a repair can uncover the next step, such as the
/// partial copy of a rolled-back clone to purge), until a check finds
/// nothing new.
pub fn repair_all(cat: &Catalog, opts: &Options) -> Result<Repaired> {
    let first = check(cat, opts)?;
    let mut done = Repaired {
        found: first.findings.clone(),
        recent: first.recent,
        ..Default::default()
    };
    let mut attempted: HashSet<String> = HashSet::new();
    let mut current = first.findings;
    for _ in 0..MAX_PASSES {
        let new: Vec<Finding> = current
            .iter()
            .filter(|f| !attempted.contains(&f.to_string()))
            .cloned()
            .collect();
        if new.is_empty() {
            break;
        }
        attempted.extend(new.iter().map(|f| f.to_string()));
        done.repairs.extend(repair(cat, &new, opts));
        let again = check(cat, opts)?;
        done.recent = again.recent;
        current = again.findings;
    }
    done.remaining = current;
    Ok(done)
}
