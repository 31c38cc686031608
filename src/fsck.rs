//! Checking a store against its data volumes, and repairing what can be
//! repaired safely: never deleting data it cannot account for (unknown
//! directories go to the volume's `lost+found`).

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::backing::sys;
use crate::catalog::Catalog;
use crate::layout::Layout;
use crate::sessions;
use crate::store::{Job, ListFilter, Result, VFolder};
use crate::workers::pool::{self, Task};
use crate::workers::{Outcome, owner_dead, purge, relocate, this_owner};

/// Name of the directory in each volume where unaccounted data is moved.
pub const LOST_FOUND: &str = "lost+found";

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

/// Compares the store with its volumes, and checks that both are private
/// to vfolderfs's user.
pub fn check(cat: &Catalog) -> Result<Vec<Finding>> {
    let rows = cat.store().list(ListFilter::All)?;
    let by_id: HashMap<&str, &VFolder> = rows.iter().map(|v| (v.id.as_str(), v)).collect();
    let mut out = Vec::new();
    for v in &rows {
        let job = cat.store().job(&v.id)?;
        let present = cat.backing_exists(&v.id, &v.volume);
        let busy = job_is_alive(job.as_ref());
        if Task::for_row(v).is_some() && !busy {
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
    for (volume, path) in cat.volume_list()? {
        let Ok(shards) = std::fs::read_dir(&path) else {
            continue;
        };
        for shard in shards.flatten() {
            let sname = shard.file_name().to_string_lossy().into_owned();
            if sname == LOST_FOUND || !shard.path().is_dir() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let accounted = by_id.get(id.as_str()).is_some_and(|v| {
                    v.volume == volume
                        || v.prev_volume.as_deref() == Some(volume.as_str())
                        || v.status.is_relocating()
                });
                if !accounted || sname != id.get(..2).unwrap_or("") {
                    out.push(Finding::Orphan {
                        volume: volume.clone(),
                        id: format!("{sname}/{id}"),
                    });
                }
            }
        }
    }
    out.extend(cat.loose_modes()?.into_iter().map(Finding::LooseMode));
    let me = sessions::current_mnt_ns().ok();
    let node = crate::enforce::node_name();
    for a in cat.store().attachments(None)? {
        // A namespace inode means something on its own node only.
        if a.node == node
            && Some(a.mnt_ns) == me
            && crate::mountinfo::at(std::path::Path::new(&a.target)).is_none()
        {
            out.push(Finding::StaleAttachment {
                target: a.target,
                session: a.session,
            });
        }
    }
    Ok(out)
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

/// Repairs what can be repaired safely; returns, per finding, what was done
/// or why it was left.
pub fn repair(
    cat: &Catalog,
    findings: &[Finding],
) -> Vec<(String, std::result::Result<String, String>)> {
    let owner = this_owner();
    let never = AtomicBool::new(false);
    let mut out = Vec::new();
    for f in findings {
        let r: std::result::Result<String, String> = match f {
            Finding::Stuck(v, _) => match Task::for_row(v) {
                Some(task) => match pool::run_task(cat, &task, &owner, &never, None) {
                    Ok(Outcome::Complete(_)) => Ok(format!("finished {task:?}")),
                    Ok(Outcome::RolledBack(why)) => Ok(format!("rolled back: {why}")),
                    Ok(o) => Err(format!("{task:?} ended {o:?}")),
                    Err(e) => Err(e.to_string()),
                },
                None => Ok("nothing left to do".into()),
            },
            Finding::LeftoverCopy(v) => match relocate::cleanup(cat, &v.id, &owner, &never) {
                Ok(Outcome::Complete(n)) => Ok(format!("removed the old copy ({n} entries)")),
                Ok(o) => Err(format!("cleanup ended {o:?}")),
                Err(e) => Err(e.to_string()),
            },
            Finding::MissingData(v) if v.status.is_purgeable() => {
                purge::request(cat, &v.id, "fsck: data already gone")
                    .and_then(|()| purge::purge_one(cat, &v.id, &owner, &never, None, &mut |_| {}))
                    .map(|o| format!("recorded as purged ({o:?})"))
                    .map_err(|e| e.to_string())
            }
            Finding::MissingData(_) => Err(
                "left as it is: a live vfolder without data needs a person (restore the \
                 directory from backup, or delete and purge the vfolder)"
                    .into(),
            ),
            Finding::Orphan { volume, id } => to_lost_found(cat, volume, id)
                .map(|p| format!("moved to {}", p.display()))
                .map_err(|e| e.to_string()),
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
        };
        out.push((f.to_string(), r));
    }
    out
}
