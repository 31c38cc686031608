//! The command line: arguments, dispatch and exit statuses. Output forms
//! are in [`output`], background jobs run from the CLI in [`jobs`].

mod exit;
mod follow;
mod fsck;
mod interrupt;
mod jobs;
mod nodes;
mod output;
mod progress;
mod reference;
mod retention;
mod volume;

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
pub use exit::{
    EXIT_BUSY, EXIT_CANCELLED, EXIT_EXISTS, EXIT_FAILED, EXIT_NO_STORE, EXIT_NOT_FOUND,
    EXIT_PROBLEMS, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_UNCONFIRMED, EXIT_USAGE, EXIT_VOLUME, Kind,
};
use jobs::run_job;
use output::{attachment_json, history_json, print_detail, print_table, vfolder_detail_json};
pub use output::{fmt_time, json_mode, vfolder_json};
use std::sync::atomic::AtomicBool;
pub use volume::VolumeCmd;

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
    Init {
        /// Print the store as a JSON object.
        #[arg(long)]
        json: bool,
    },
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
        /// Print the new vfolder as a JSON object.
        #[arg(long)]
        json: bool,
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
        /// Print the new vfolder as a JSON object (with its job when it
        /// runs in the background).
        #[arg(long)]
        json: bool,
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
        /// Print the vfolder as a JSON object.
        #[arg(long)]
        json: bool,
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
        /// Measure its size now (a walk of its tree: entries and bytes) and
        /// record it for `list`.
        #[arg(long)]
        size: bool,
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
        /// Print the vfolder as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Move a vfolder to the trash (restorable).
    Delete {
        /// Its name.
        name: String,
        /// Return without waiting for the mounts to confirm.
        #[arg(long)]
        no_wait: bool,
        /// Print the vfolder as a JSON object.
        #[arg(long)]
        json: bool,
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
        /// Print the vfolder as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Destroy a trashed (or failed) vfolder's data.
    Purge {
        /// Its trash name or id.
        name: String,
        /// Only queue it for a running mount's purge pool.
        #[arg(long)]
        no_wait: bool,
        /// Print the vfolder as a JSON object.
        #[arg(long)]
        json: bool,
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
        /// Print the attachment as a JSON object.
        #[arg(long)]
        json: bool,
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
        /// Print what was detached as a JSON array.
        #[arg(long)]
        json: bool,
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
    /// Check the store against its data volumes (exit status 10 if anything
    /// is wrong).
    Fsck {
        /// Fix what can be fixed safely (unknown data goes to lost+found).
        #[arg(long)]
        repair: bool,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
        /// Leave unclaimed directories that changed within this long
        /// unjudged (a create may be between its mkdir and its row).
        #[arg(long, default_value = "10m")]
        grace: String,
    },
    /// Show or set the store-wide trash retention: how long a trashed
    /// vfolder stays restorable before the mounts purge it (default 30d).
    Retention {
        /// A duration (30d, 12h, 90m) or `forever`; without it, show the
        /// current setting.
        value: Option<String>,
        /// Print `{"trash_retention", "seconds"}`.
        #[arg(long)]
        json: bool,
    },
    /// List background jobs (purges, clones, relocations) and whether their
    /// owner lives; --resume runs those no live process holds.
    Jobs {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
        /// Finish (or roll back) every job whose owner is gone, here and now.
        #[arg(long)]
        resume: bool,
    },
    /// Follow one job (running in any process) until it ends, showing its
    /// progress; exit status by its outcome (0 completed, 12 cancelled, 1
    /// failed or owner gone).
    Wait {
        /// The vfolder the job works on (name, trash name or id; a clone's
        /// source or target).
        job: String,
        /// Print the outcome as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Stop a job cleanly wherever it runs: a clone or relocation rolls
    /// back, a purge stops and stays resumable (`vfolderfs purge NAME`).
    Cancel {
        /// The vfolder the job works on (name, trash name or id; a clone's
        /// source or target).
        job: String,
        /// Return once the request is recorded; `vfolderfs wait` follows.
        #[arg(long)]
        no_wait: bool,
        /// Print the outcome as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Mount the store (the main job).
    Mount(MountCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) for vfolderfs and its subcommands.
    Man {
        /// Write vfolderfs.1 and one vfolderfs-COMMAND.1 per command into
        /// this directory instead of printing vfolderfs.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// Whether `--json` was given: results, and errors on stderr, are JSON.
    pub fn json(&self) -> bool {
        match self {
            Command::Init { json }
            | Command::Create { json, .. }
            | Command::Clone { json, .. }
            | Command::Relocate { json, .. }
            | Command::List { json, .. }
            | Command::Show { json, .. }
            | Command::History { json, .. }
            | Command::Rename { json, .. }
            | Command::Delete { json, .. }
            | Command::Restore { json, .. }
            | Command::Purge { json, .. }
            | Command::Gc { json, .. }
            | Command::Attach { json, .. }
            | Command::Detach { json, .. }
            | Command::Sessions { json, .. }
            | Command::Fsck { json, .. }
            | Command::Jobs { json, .. }
            | Command::Wait { json, .. }
            | Command::Cancel { json, .. }
            | Command::Retention { json, .. }
            | Command::Nodes { json } => *json,
            Command::Volume(
                VolumeCmd::Add { json, .. }
                | VolumeCmd::List { json }
                | VolumeCmd::Show { json, .. }
                | VolumeCmd::Remove { json, .. },
            ) => *json,
            Command::Mount(_) | Command::Completions { .. } | Command::Man { .. } => false,
        }
    }
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
    /// Refused: the trash retention is a store-wide setting
    /// (`vfolderfs retention DURATION`), which every mount follows.
    #[arg(long, hide = true)]
    pub trash_retention: Option<String>,
    /// Serve requests over io_uring, one ring per CPU, when the kernel
    /// allows it (`-o io_uring`); otherwise /dev/fuse, said in the log.
    #[arg(long)]
    pub io_uring: bool,
    /// Extra mount options, comma-separated (ro, noatime, allow_other, suid, dev, threads=N,
    /// log=FILE, metrics_file=PATH, metrics_listen=ADDR, ...; see the README).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
}

/// An error worth one line on stderr (or a JSON object under `--json`).
#[derive(Debug)]
pub enum CliError {
    /// From the store layer.
    Store(StoreError),
    /// Anything else, with its message.
    Failed(String),
    /// An error of a known kind, with its message and the vfolder it is about.
    Of {
        /// What kind of failure (decides the exit status).
        kind: Kind,
        /// The message.
        message: String,
        /// The vfolder it is about, if any.
        vfolder: Option<String>,
    },
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Store(e) => match exit::store_hint(e) {
                Some(h) => write!(f, "{e}; {h}"),
                None => e.fmt(f),
            },
            CliError::Failed(m) | CliError::Of { message: m, .. } => f.write_str(m),
        }
    }
}

impl CliError {
    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            CliError::Store(e) => exit::store_kind(e),
            CliError::Failed(_) => Kind::Failed,
            CliError::Of { kind, .. } => *kind,
        }
    }

    /// The vfolder the error is about, if it names one.
    pub fn vfolder(&self) -> Option<&str> {
        match self {
            CliError::Store(e) => exit::store_vfolder(e),
            CliError::Failed(_) => None,
            CliError::Of { vfolder, .. } => vfolder.as_deref(),
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        self.kind().code()
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Store(e)
    }
}

impl From<sessions::SessionError> for CliError {
    fn from(e: sessions::SessionError) -> Self {
        match e {
            sessions::SessionError::Store(e) => CliError::Store(e),
            sessions::SessionError::InvalidSession { .. } => CliError::Of {
                kind: Kind::Usage,
                message: e.to_string(),
                vfolder: None,
            },
            e => CliError::Failed(e.to_string()),
        }
    }
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cli = if invoked_as.starts_with("mount.") || daemon::is_helper_call(&args) {
        // As mount(8)'s helper: `mount.vfolderfs STORE MOUNTPOINT -o OPTS`,
        // or `vfolderfs STORE MOUNTPOINT -o OPTS` as mount.fuse3 runs it for
        // `-t fuse.vfolderfs` and `vfolderfs#STORE` lines.
        match daemon::helper_args(&args) {
            Ok(c) => c,
            Err(m) => {
                eprintln!("mount.vfolderfs: {m}");
                return EXIT_USAGE;
            }
        }
    } else {
        match Cli::try_parse_from(&args) {
            Ok(c) => c,
            Err(e) if args.iter().any(|a| a == "--json") && e.use_stderr() => {
                let err = CliError::Of {
                    kind: Kind::Usage,
                    message: e
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_string(),
                    vfolder: None,
                };
                eprintln!("{}", exit::error_json(&err));
                return EXIT_USAGE;
            }
            Err(e) => e.exit(),
        }
    };
    // A mount logs its start, stop and store health by default; other
    // commands only warnings. RUST_LOG overrides both.
    let level = if matches!(cli.command, Command::Mount(_)) {
        "info,fuser=warn"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if !matches!(cli.command, Command::Mount(_)) {
        // A closed pipe (`vfolderfs list | head -1`) ends the command
        // quietly, as it does `ls`; the daemon keeps ignoring SIGPIPE.
        // SAFETY: setting a signal's disposition to its default.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let json = cli.command.json();
    let layout = Layout::resolve(cli.store.as_deref(), cli.data.as_deref());
    output::set_json_mode(json);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                eprintln!("{}", exit::error_json(&e));
            } else {
                eprintln!("vfolderfs: {e}");
                if let Some(hint) = jobs::refusal_hint(&layout, &e) {
                    eprintln!("vfolderfs: {hint}");
                }
            }
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
    match cli.command {
        Command::Mount(m) => {
            let args = MountArgs::from_cli(layout, &m).map_err(|m| CliError::Of {
                kind: Kind::Usage,
                message: m,
                vfolder: None,
            })?;
            return daemon::mount(args).map(|()| 0).map_err(|e| match e {
                daemon::MountError::Store(e) => CliError::Store(e),
                e => CliError::Failed(e.to_string()),
            });
        }
        Command::Completions { shell } => return reference::completions(shell),
        Command::Man { dir } => return reference::man(dir.as_deref()),
        Command::Init { json } => {
            let root = layout.root().display().to_string();
            let (cat, made) = Catalog::init(layout)?;
            let id = cat.store().store_id()?.unwrap_or_default();
            if json {
                println!("{}", json!({"store": root, "id": id, "created": made}));
            } else if made {
                println!("initialized store {root} (id {id})");
            } else {
                println!("store {root} already exists (id {id})");
            }
            return Ok(0);
        }
        _ => {}
    }
    let db = layout.db_path();
    // fsck reports loose modes rather than tightening them on open.
    let cat = if matches!(cli.command, Command::Fsck { .. }) {
        Catalog::open_as_is(layout)
    } else {
        Catalog::open(layout)
    }
    .map_err(|e| unavailable_at(e, &db))?;
    match cli.command {
        Command::Create {
            name,
            volume,
            no_wait,
            json,
        } => {
            let v = cat.create_on(
                &name,
                NewDir::default(),
                volume.as_deref(),
                &cause("create"),
            )?;
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
            if json {
                println!("{}", vfolder_detail_json(&cat, &v)?);
            } else {
                println!(
                    "created vfolder {:?} ({}) on volume {}",
                    v.name, v.id, v.volume
                );
            }
        }
        Command::Clone {
            src,
            dst,
            volume,
            no_wait,
            json,
        } => {
            let (s, d) = clone::start(&cat, &src, &dst, volume.as_deref(), &cause("clone"))?;
            if no_wait {
                if json {
                    println!("{}", vfolder_detail_json(&cat, &d)?);
                } else {
                    println!("cloning {src:?} into {dst:?} ({}) in the background", d.id);
                }
                return Ok(0);
            }
            let id = d.id.clone();
            let what = format!("cloning {:?} into {:?}", s.name, d.name);
            let r = run_job(&cat, &d, &s, what, &|cat, owner, stop, p| {
                clone::run(cat, &id, owner, stop, purge::throttle_from_env(), p)
            });
            if r.is_err() && cat.store().get(&id).is_ok_and(|v| v.status.is_purging()) {
                // No daemon may be running: remove the partial copy now.
                let owner = crate::workers::this_owner();
                let never = AtomicBool::new(false);
                let _ = purge::purge_one(&cat, &id, &owner, &never, None, &mut |_| {});
            }
            return r.and_then(|code| print_result(&cat, &id, json).map(|()| code));
        }
        Command::Relocate {
            name,
            to,
            no_wait,
            json,
        } => {
            let v = relocate::start(&cat, &name, &to, &cause("relocate"))?;
            if no_wait {
                if json {
                    println!("{}", vfolder_detail_json(&cat, &v)?);
                } else {
                    println!("relocating {name:?} to volume {to} in the background");
                }
                return Ok(0);
            }
            let id = v.id.clone();
            let what = format!("relocating {:?} to {to}", v.name);
            let r = run_job(&cat, &v, &v, what, &|cat, owner, stop, p| {
                relocate::run(cat, &id, owner, stop, purge::throttle_from_env(), p)
            });
            return r.and_then(|code| print_result(&cat, &id, json).map(|()| code));
        }
        Command::Volume(cmd) => return volume::run(&cat, cmd),
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
            let sizes = cat.store().sizes()?;
            let retention = cat.store().trash_retention()?;
            if json {
                let opens = cat.store().opens()?;
                let mut arr = Vec::new();
                for v in &list {
                    let mut o = vfolder_json(&cat, v, trash_name(v));
                    o["opens"] = json!(opens.get(&v.id).copied().unwrap_or(0));
                    o["size"] = output::size_json(sizes.get(&v.id));
                    if v.status.is_restorable() {
                        o["deleted_at"] = json!(fmt_time(v.status_changed_at));
                        o["purge_after"] = json!(output::purge_after(v, retention).map(fmt_time));
                    }
                    if let Some(j) = jobs::job_json(&cat, v)? {
                        o["job"] = j;
                    }
                    arr.push(o);
                }
                println!("{}", Value::Array(arr));
            } else {
                print_table(
                    &list,
                    &trash_name,
                    &|v| jobs::status_text(&cat, v),
                    &sizes,
                    retention,
                );
            }
        }
        Command::Show { name, size, json } => {
            let v = cat.resolve(&name)?;
            if size && jobs::count(&cat, &v, &AtomicBool::new(false)).is_none() {
                return Err(CliError::Failed(format!(
                    "cannot measure {:?}: its data cannot be read (status {})",
                    v.name, v.status
                )));
            }
            let mut obj = vfolder_detail_json(&cat, &v)?;
            if let Some(j) = jobs::job_json(&cat, &v)? {
                obj["job"] = j;
            }
            if json {
                println!("{obj}");
            } else {
                print_detail(&obj);
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
        Command::Rename {
            old,
            new,
            no_wait,
            json,
        } => {
            let v = cat.resolve_live(&old)?;
            let v = cat.store().rename(&v.id, &new)?;
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
            if json {
                println!("{}", vfolder_detail_json(&cat, &v)?);
            } else {
                println!("renamed vfolder {old:?} to {:?}", v.name);
            }
        }
        Command::Delete {
            name,
            no_wait,
            json,
        } => {
            let v = cat.resolve_live(&name)?;
            let v = cat.delete(&v, &cause("delete"))?;
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
            if json {
                println!("{}", vfolder_detail_json(&cat, &v)?);
            } else {
                println!("moved vfolder {:?} to the trash ({})", v.name, v.id);
            }
        }
        Command::Restore {
            name,
            as_name,
            no_wait,
            json,
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
            let v = match cat.restore(&v, as_name.as_deref(), &cause("restore")) {
                Err(StoreError::NameTaken(n)) => {
                    return Err(CliError::Of {
                        kind: Kind::Exists,
                        message: format!(
                            "cannot restore vfolder {:?}: a live vfolder named {n:?} already \
                             exists; restore it under another name with `--as NEW`",
                            v.name
                        ),
                        vfolder: Some(v.name),
                    });
                }
                r => r?,
            };
            confirm(&cat, &v, no_wait, cli.confirm_timeout)?;
            if json {
                println!("{}", vfolder_detail_json(&cat, &v)?);
            } else {
                println!("restored vfolder {:?} ({})", v.name, v.id);
            }
        }
        Command::Purge {
            name,
            no_wait,
            json,
        } => {
            let id = match cat.resolve_trashed(&name) {
                Ok(v) => v.id,
                Err(StoreError::NotFound(_)) => cat.resolve(&name)?.id,
                Err(e) => return Err(e.into()),
            };
            let code = jobs::purge(&cat, &id, no_wait)?;
            print_result(&cat, &id, json)?;
            return Ok(code);
        }
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
            json,
        } => {
            let a = sessions::attach(&cat, &name, &session, &target, read_only, mount.as_deref())?;
            if json {
                println!("{}", attachment_json(&cat, &a));
            } else {
                println!(
                    "attached vfolder {name:?} to session {session:?} at {}{}",
                    a.target,
                    if read_only { " (read-only)" } else { "" }
                );
            }
        }
        Command::Detach {
            session,
            name,
            target,
            json,
        } => {
            // Targets are recorded normalized lexically (see
            // sessions::normalize_target); a path naming one through a
            // symlink matches too.
            let target = target
                .map(|t| {
                    let canon = std::fs::canonicalize(&t).ok();
                    sessions::normalize_target(&t).map(|n| (n, canon))
                })
                .transpose()?;
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
            })?;
            if json {
                let arr: Vec<Value> = done
                    .iter()
                    .map(|d| {
                        let mut o = attachment_json(&cat, &d.attachment);
                        o["unmounted"] = json!(d.unmounted);
                        o
                    })
                    .collect();
                println!("{}", Value::Array(arr));
                return Ok(0);
            }
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
                let gone = sessions::prune(&cat, false)?;
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
        Command::Fsck {
            repair,
            json,
            grace,
        } => {
            let opts = crate::fsck::Options {
                grace: humantime::parse_duration(&grace)
                    .map_err(|e| CliError::Failed(format!("--grace {grace}: {e}")))?,
            };
            return fsck::run(&cat, repair, json, &opts);
        }
        Command::Mount(_)
        | Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("handled above")
        }
        Command::Jobs { json, resume } => return jobs::jobs_cmd(&cat, json, resume),
        Command::Wait { job, json } => return follow::wait_cmd(&cat, &job, json),
        Command::Cancel { job, no_wait, json } => {
            return follow::cancel_cmd(&cat, &job, no_wait, json);
        }
        Command::Retention { value, json } => return retention::run(&cat, value, json),
    }
    Ok(0)
}

/// Prints the vfolder a job ended with as JSON, under `--json` (the human
/// forms print their own last line).
fn print_result(cat: &Catalog, id: &str, json: bool) -> Result<(), CliError> {
    if json {
        let v = cat.store().get(id)?;
        println!("{}", vfolder_detail_json(cat, &v)?);
    }
    Ok(())
}

/// A store that cannot be opened: the message names its database file.
fn unavailable_at(e: StoreError, db: &Path) -> CliError {
    let db = db.display().to_string();
    let kind = exit::store_kind(&e);
    if kind != Kind::Unavailable || e.to_string().contains(&db) {
        return e.into();
    }
    CliError::Of {
        kind,
        message: format!("{db}: {e}"),
        vfolder: None,
    }
}
