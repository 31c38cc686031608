//! The command line: arguments, dispatch and exit statuses. Output forms
//! are in [`output`], background jobs run from the CLI in [`jobs`].

mod jobs;
mod nodes;
mod output;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::catalog::{Catalog, NewDir};
use crate::daemon::{self, MountArgs};
use crate::layout::Layout;
use crate::sessions;
use crate::store::{ListFilter, Millis, StoreError, VFolder};
use crate::workers::{clone, purge, relocate};
use jobs::run_job;
use output::{attachment_json, history_json, human_bytes, print_table};
pub use output::{fmt_time, vfolder_json};
use std::sync::atomic::AtomicBool;

/// vfolderfs: users' storage folders with a lifecycle, served as one FUSE mount.
#[derive(Parser, Debug)]
#[command(name = "vfolderfs", version, about)]
pub struct Cli {
    /// Store directory (default: $VFOLDERFS_STORE, else /var/lib/vfolderfs
    /// for root and $XDG_DATA_HOME/vfolderfs otherwise).
    /// A `postgres://` URL (or `postgresql://`) keeps the store in that
    /// PostgreSQL database, shared by every node's mount; other settings
    /// follow libpq (PGPASSFILE or ~/.pgpass, PGSSLMODE, PGSERVICE, ...).
    #[arg(long, global = true, value_name = "DIR|URL")]
    pub store: Option<PathBuf>,
    /// With a PostgreSQL store: the directory holding its data (the same
    /// shared directory on every node; default: $VFOLDERFS_DATA, else the
    /// default store directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// How long a command that changes a vfolder waits for every live mount
    /// to confirm the change (then it names those that did not and exits
    /// with status 4; the change stays made).
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub confirm_timeout: std::time::Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make the store (the only command that does); on an existing store,
    /// say so and succeed.
    Init,
    /// List the mounts recorded in the store (every node's), with their
    /// lease and the change each has applied.
    Nodes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a ready vfolder.
    Create {
        /// Its name.
        name: String,
        /// The data volume to put it on (default: the store's own).
        #[arg(long)]
        volume: Option<String>,
        /// Return without waiting for the mounts to confirm.
        #[arg(long)]
        no_wait: bool,
    },
    /// Clone a vfolder into a new one (a background job).
    Clone {
        /// The vfolder to copy.
        src: String,
        /// The new vfolder's name.
        dst: String,
        /// The volume for the copy (default: the source's).
        #[arg(long)]
        volume: Option<String>,
        /// Return at once; a running mount does the copy.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move a vfolder to another data volume (a background job).
    Relocate {
        /// The vfolder.
        name: String,
        /// The target volume.
        #[arg(long)]
        to: String,
        /// Return at once; a running mount does the move.
        #[arg(long)]
        no_wait: bool,
    },
    /// Manage data volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// List vfolders (live ones unless --all).
    List {
        /// Include trashed, purged and failed vfolders.
        #[arg(long)]
        all: bool,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one vfolder (by name, trash name or id).
    Show {
        /// Name, trash name (NAME~1a2b3c4d) or id.
        name: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show a vfolder's status history.
    History {
        /// Name, trash name or id.
        name: String,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Rename a live vfolder.
    Rename {
        /// Current name.
        old: String,
        /// New name.
        new: String,
        /// Return without waiting for the mounts to confirm.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move a vfolder to the trash (restorable).
    Delete {
        /// Its name.
        name: String,
        /// Return without waiting for the mounts to confirm.
        #[arg(long)]
        no_wait: bool,
    },
    /// Restore a vfolder from the trash.
    Restore {
        /// Its trash name (NAME or NAME~1a2b3c4d) or id.
        name: String,
        /// Restore under another name.
        #[arg(long = "as", value_name = "NEW")]
        as_name: Option<String>,
        /// Return without waiting for the mounts to confirm.
        #[arg(long)]
        no_wait: bool,
    },
    /// Destroy a trashed (or failed) vfolder's data.
    Purge {
        /// Its trash name or id.
        name: String,
        /// Only queue it for a running mount's purge pool.
        #[arg(long)]
        no_wait: bool,
    },
    /// Forget purged (delete-complete) vfolders; they stay in the audit table.
    Gc {
        /// Only those purged longer ago than this (e.g. 7d, 12h, 0).
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        /// Print what was forgotten as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bind-mount a vfolder from the running mount into a session.
    Attach {
        /// The vfolder's name.
        name: String,
        /// The session (container) id: non-empty, printable, at most 255 bytes.
        #[arg(long, value_parser = session_id)]
        session: String,
        /// Where to bind it (created if missing).
        #[arg(long)]
        target: PathBuf,
        /// A read-only bind.
        #[arg(long)]
        read_only: bool,
        /// The vfolderfs mount to bind from (when several are running).
        #[arg(long, value_name = "MOUNTPOINT")]
        mount: Option<PathBuf>,
    },
    /// Unmount session binds and remove their records.
    Detach {
        /// Every attachment of this session ...
        #[arg(long, required_unless_present = "target", value_parser = session_id)]
        session: Option<String>,
        /// ... only this vfolder's.
        name: Option<String>,
        /// The attachment at this target.
        #[arg(long, conflicts_with_all = ["session", "name"])]
        target: Option<PathBuf>,
    },
    /// List session attachments.
    Sessions {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
        /// First clear attachments whose bind is gone.
        #[arg(long)]
        prune: bool,
    },
    /// Check the store against its data volumes (exit 1 if anything is wrong).
    Fsck {
        /// Fix what can be fixed safely (unknown data goes to lost+found).
        #[arg(long)]
        repair: bool,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Mount the store (the main job).
    Mount(MountCmd),
}

/// `vfolderfs volume ...`.
#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Add a data volume (a directory, typically on its own disk).
    Add {
        /// Its name.
        name: String,
        /// Its directory (created if missing).
        path: PathBuf,
    },
    /// List volumes with their free space.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// Parses a session id argument: refused ids take clap's usage-error path
/// (exit status 2, the rule in the message).
fn session_id(s: &str) -> Result<String, String> {
    match sessions::check_session_id(s) {
        Ok(()) => Ok(s.to_string()),
        Err(sessions::SessionError::InvalidSession { why, .. }) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}

/// Arguments of `vfolderfs mount`.
#[derive(Args, Debug, Clone)]
pub struct MountCmd {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground instead of returning once the mount is ready.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Request-handling threads (default: one per CPU, 2 to 16).
    #[arg(long, default_value_t = crate::daemon::default_threads())]
    pub threads: usize,
    /// Let other users use the mount (permissions are checked by the kernel).
    #[arg(long)]
    pub allow_other: bool,
    /// How many vfolders the purge pool removes at once.
    #[arg(long, default_value_t = 2)]
    pub purge_workers: usize,
    /// Purge trash entries older than this (e.g. 30d, 12h; 0 keeps them forever).
    #[arg(long, default_value = "30d")]
    pub trash_retention: String,
    /// Extra mount options, comma-separated (ro, noatime, allow_other, suid, dev, threads=N, ...).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
}

/// Exit status when there is no store at the path (it was never made with
/// `init`, or its database is gone): distinct from failures (1) and usage
/// errors (2).
pub const EXIT_NO_STORE: i32 = 3;

/// Exit status when a change was made but not every live mount confirmed it
/// within the time allowed (the change stays made).
pub const EXIT_UNCONFIRMED: i32 = 4;

/// An error worth one line on stderr.
#[derive(Debug)]
pub enum CliError {
    /// From the store layer.
    Store(StoreError),
    /// Anything else, with its message.
    Failed(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Store(e) => e.fmt(f),
            CliError::Failed(m) => f.write_str(m),
        }
    }
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Store(StoreError::Missing(_)) => EXIT_NO_STORE,
            CliError::Store(StoreError::Unconfirmed { .. }) => EXIT_UNCONFIRMED,
            _ => 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Store(e)
    }
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cli = if invoked_as.starts_with("mount.") {
        match daemon::helper_args(&args) {
            Ok(c) => c,
            Err(m) => {
                eprintln!("mount.vfolderfs: {m}");
                return 1;
            }
        }
    } else {
        Cli::parse_from(args)
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vfolderfs: {e}");
            e.exit_code()
        }
    }
}

/// Waits until every live mount has confirmed the change just made to `v`
/// (see [`crate::enforce`]), unless `no_wait`.
fn confirm(
    cat: &Catalog,
    v: &VFolder,
    no_wait: bool,
    timeout: std::time::Duration,
) -> Result<(), CliError> {
    if no_wait {
        return Ok(());
    }
    crate::enforce::confirm_latest(cat.store().as_ref(), &v.id, &v.name, timeout, None)?;
    Ok(())
}

pub(crate) fn cause(what: &str) -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    format!("cli {what} (uid {uid})")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    let layout = Layout::resolve(cli.store.as_deref(), cli.data.as_deref());
    if let Command::Mount(m) = cli.command {
        let args = MountArgs::from_cli(layout, &m).map_err(CliError::Failed)?;
        return daemon::mount(args).map(|()| 0).map_err(|e| match e {
            daemon::MountError::Store(e) => CliError::Store(e),
            e => CliError::Failed(e.to_string()),
        });
    }
    if let Command::Init = cli.command {
        let root = layout.root().display().to_string();
        let (cat, made) = Catalog::init(layout)?;
        let id = cat.store().store_id()?.unwrap_or_default();
        if made {
            println!("initialized store {root} (id {id})");
        } else {
            println!("store {root} already exists (id {id})");
        }
        return Ok(0);
    }
    // fsck reports loose modes rather than tightening them on open.
    let cat = if matches!(cli.command, Command::Fsck { .. }) {
        Catalog::open_as_is(layout)?
    } else {
        Catalog::open(layout)?
    };
    match cli.command {
        Command::Create {
            name,
            volume,
            no_wait,
        } => {
            let v = cat.create_on(
                &name,
                NewDir::default(),
                volume.as_deref(),
                &cause("create"),
            )?;
            println!(
                "created vfolder {:?} ({}) on volume {}",
                v.name, v.id, v.volume
            );
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
        }
        Command::Clone {
            src,
            dst,
            volume,
            no_wait,
        } => {
            let (_, d) = clone::start(&cat, &src, &dst, volume.as_deref(), &cause("clone"))?;
            if no_wait {
                println!("cloning {src:?} into {dst:?} ({}) in the background", d.id);
                return Ok(0);
            }
            let id = d.id.clone();
            let r = run_job(&cat, &d, "cloning", &|cat, owner, p| {
                clone::run(
                    cat,
                    &id,
                    owner,
                    &AtomicBool::new(false),
                    purge::throttle_from_env(),
                    p,
                )
            });
            if r.is_err() && cat.store().get(&id).is_ok_and(|v| v.status.is_purging()) {
                // No daemon may be running: remove the partial copy now.
                let owner = crate::workers::this_owner();
                let never = AtomicBool::new(false);
                let _ = purge::purge_one(&cat, &id, &owner, &never, None, &mut |_| {});
            }
            return r;
        }
        Command::Relocate { name, to, no_wait } => {
            let v = relocate::start(&cat, &name, &to, &cause("relocate"))?;
            if no_wait {
                println!("relocating {name:?} to volume {to} in the background");
                return Ok(0);
            }
            let id = v.id.clone();
            return run_job(&cat, &v, "relocating", &|cat, owner, p| {
                relocate::run(
                    cat,
                    &id,
                    owner,
                    &AtomicBool::new(false),
                    purge::throttle_from_env(),
                    p,
                )
            });
        }
        Command::Volume(VolumeCmd::Add { name, path }) => {
            cat.add_volume(&name, &path)?;
            println!("added volume {name} at {}", path.display());
        }
        Command::Volume(VolumeCmd::List { json }) => {
            let mut rows = Vec::new();
            for (name, path) in cat.volume_list()? {
                let (free, total) = match cat
                    .volume(&name)
                    .ok()
                    .and_then(|v| crate::backing::sys::fstatvfs(v.fd()).ok())
                {
                    Some(s) => (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize),
                    None => (0, 0),
                };
                rows.push(json!({
                    "name": name,
                    "path": path.display().to_string(),
                    "free_bytes": free,
                    "total_bytes": total,
                }));
            }
            if json {
                println!("{}", Value::Array(rows));
            } else {
                println!("{:12}  {:>12}  {:>12}  PATH", "NAME", "FREE", "TOTAL");
                for r in rows {
                    println!(
                        "{:12}  {:>12}  {:>12}  {}",
                        r["name"].as_str().unwrap_or(""),
                        human_bytes(r["free_bytes"].as_u64().unwrap_or(0)),
                        human_bytes(r["total_bytes"].as_u64().unwrap_or(0)),
                        r["path"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::List { all, json } => {
            let filter = if all {
                ListFilter::All
            } else {
                ListFilter::Live
            };
            let list = cat.store().list(filter)?;
            let trash = if all { cat.trash()? } else { Vec::new() };
            let trash_name = |v: &VFolder| {
                trash
                    .iter()
                    .find(|(_, t)| t.id == v.id)
                    .map(|(n, _)| n.clone())
            };
            if json {
                let opens = cat.store().opens()?;
                let arr: Vec<Value> = list
                    .iter()
                    .map(|v| {
                        let mut o = vfolder_json(&cat, v, trash_name(v));
                        o["opens"] = json!(opens.get(&v.id).copied().unwrap_or(0));
                        o
                    })
                    .collect();
                println!("{}", Value::Array(arr));
            } else {
                print_table(&list, &trash_name);
            }
        }
        Command::Show { name, json } => {
            let v = cat.resolve(&name)?;
            let tn = cat
                .trash()?
                .into_iter()
                .find(|(_, t)| t.id == v.id)
                .map(|(n, _)| n);
            let mut obj = vfolder_json(&cat, &v, tn);
            let atts = cat.store().attachments(Some(&v.id))?;
            obj["attachments"] =
                Value::Array(atts.iter().map(|a| attachment_json(&cat, a)).collect());
            let atts = cat.store().attachments(Some(&v.id))?;
            obj["attachments"] =
                Value::Array(atts.iter().map(|a| attachment_json(&cat, a)).collect());
            if let Some(j) = cat.store().job(&v.id)? {
                obj["job"] = json!({
                    "kind": j.kind,
                    "owner": j.owner,
                    "started_at": fmt_time(j.started_at),
                    "done": j.done,
                    "resumed": j.claims > 1,
                });
            }
            if json {
                println!("{obj}");
            } else {
                for (k, val) in obj.as_object().expect("an object") {
                    let s = match val {
                        Value::String(s) => s.clone(),
                        Value::Null => "-".to_string(),
                        other => other.to_string(),
                    };
                    println!("{k:18} {s}");
                }
            }
        }
        Command::Nodes { json } => {
            nodes::nodes(&cat, json)?;
        }
        Command::History { name, json } => {
            let v = cat.resolve(&name)?;
            let h = cat.store().history(&v.id)?;
            if json {
                let arr: Vec<Value> = h.iter().map(history_json).collect();
                println!("{}", Value::Array(arr));
            } else {
                for e in &h {
                    println!(
                        "{}  {:15} -> {:15} {}",
                        fmt_time(e.at),
                        e.from.map_or("-", |s| s.as_str()),
                        e.to.as_str(),
                        e.cause
                    );
                }
            }
        }
        Command::Rename { old, new, no_wait } => {
            let v = cat.store().get_live(&old)?;
            let v = cat.store().rename(&v.id, &new)?;
            println!("renamed vfolder {old:?} to {:?}", v.name);
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
        }
        Command::Delete { name, no_wait } => {
            let v = cat.store().get_live(&name)?;
            let v = cat.delete(&v, &cause("delete"))?;
            println!("moved vfolder {:?} to the trash ({})", v.name, v.id);
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
        }
        Command::Restore {
            name,
            as_name,
            no_wait,
        } => {
            let v = match cat.resolve_trashed(&name) {
                Ok(v) => v,
                // Not in the trash: name the status it has, if it exists at all.
                Err(StoreError::NotFound(_)) => {
                    let v = cat.resolve(&name)?;
                    return Err(StoreError::Refused {
                        name: v.name,
                        id: v.id,
                        status: v.status,
                        op: crate::status::Op::Restore,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            let v = cat.restore(&v, as_name.as_deref(), &cause("restore"))?;
            println!("restored vfolder {:?} ({})", v.name, v.id);
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
        }
        Command::Purge { name, no_wait } => return jobs::purge(&cat, &name, no_wait),
        Command::Gc { older_than, json } => {
            let age = if older_than.trim() == "0" {
                std::time::Duration::ZERO
            } else {
                humantime::parse_duration(&older_than)
                    .map_err(|e| CliError::Failed(format!("bad duration {older_than:?}: {e}")))?
            };
            let before = crate::store::sqlite::now_millis() - age.as_millis() as Millis;
            let gone = cat.store().forget_purged(before)?;
            if json {
                let arr: Vec<Value> = gone
                    .iter()
                    .map(
                        |e| json!({"id": e.id, "name": e.name, "purged_at": fmt_time(e.purged_at)}),
                    )
                    .collect();
                println!("{}", Value::Array(arr));
            } else {
                println!(
                    "forgot {} purged vfolder(s); they remain in the audit table",
                    gone.len()
                );
            }
        }
        Command::Attach {
            name,
            session,
            target,
            read_only,
            mount,
        } => {
            let a = sessions::attach(&cat, &name, &session, &target, read_only, mount.as_deref())
                .map_err(|e| CliError::Failed(e.to_string()))?;
            println!(
                "attached vfolder {name:?} to session {session:?} at {}{}",
                a.target,
                if read_only { " (read-only)" } else { "" }
            );
        }
        Command::Detach {
            session,
            name,
            target,
        } => {
            // Targets are recorded normalized lexically (see
            // sessions::normalize_target); a path naming one through a
            // symlink matches too.
            let target = target
                .map(|t| {
                    let canon = std::fs::canonicalize(&t).ok();
                    sessions::normalize_target(&t).map(|n| (n, canon))
                })
                .transpose()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let id = match &name {
                Some(n) => Some(cat.resolve(n)?.id),
                None => None,
            };
            let done = sessions::detach(&cat, &|a| match (&target, &session) {
                (Some((t, canon)), _) => {
                    Path::new(&a.target) == t || canon.as_deref() == Some(Path::new(&a.target))
                }
                (None, Some(s)) => {
                    &a.session == s && id.as_ref().is_none_or(|i| &a.vfolder_id == i)
                }
                (None, None) => false,
            })
            .map_err(|e| CliError::Failed(e.to_string()))?;
            if done.is_empty() {
                println!("nothing attached there: already detached");
            }
            for d in done {
                println!(
                    "detached {} (session {:?}){}",
                    d.attachment.target,
                    d.attachment.session,
                    if d.unmounted {
                        ""
                    } else {
                        "; its bind was already gone"
                    }
                );
            }
        }
        Command::Sessions { json, prune } => {
            if prune {
                let gone =
                    sessions::prune(&cat, false).map_err(|e| CliError::Failed(e.to_string()))?;
                for a in &gone {
                    eprintln!(
                        "pruned stale attachment {} (session {:?})",
                        a.target, a.session
                    );
                }
            }
            let list = cat.store().attachments(None)?;
            if json {
                let arr: Vec<Value> = list.iter().map(|a| attachment_json(&cat, a)).collect();
                println!("{}", Value::Array(arr));
            } else {
                println!("{:20}  {:20}  {:4}  TARGET", "SESSION", "VFOLDER", "MODE");
                for a in &list {
                    let j = attachment_json(&cat, a);
                    println!(
                        "{:20}  {:20}  {:4}  {}",
                        a.session,
                        j["vfolder"].as_str().unwrap_or("?"),
                        if a.read_only { "ro" } else { "rw" },
                        a.target
                    );
                }
            }
        }
        Command::Fsck { repair, json } => {
            let findings = crate::fsck::check(&cat)?;
            let repaired = if repair {
                crate::fsck::repair(&cat, &findings)
            } else {
                Vec::new()
            };
            let remaining = if repair {
                crate::fsck::check(&cat)?.len()
            } else {
                findings.len()
            };
            if json {
                let obj = json!({
                    "findings": findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    "repairs": repaired.iter().map(|(f, r)| match r {
                        Ok(done) => json!({"finding": f, "done": done}),
                        Err(left) => json!({"finding": f, "left": left}),
                    }).collect::<Vec<_>>(),
                    "remaining": remaining,
                });
                println!("{obj}");
            } else if findings.is_empty() {
                println!("store is consistent");
            } else if repair {
                for (f, r) in &repaired {
                    match r {
                        Ok(done) => println!("repaired: {f}: {done}"),
                        Err(left) => println!("NOT repaired: {f}: {left}"),
                    }
                }
            } else {
                for f in &findings {
                    println!("problem: {f}");
                }
            }
            return Ok(if remaining == 0 { 0 } else { 1 });
        }
        Command::Mount(_) | Command::Init => unreachable!("handled above"),
    }
    Ok(0)
}
