//! The command line: arguments, dispatch and exit statuses. Output forms
//! are in [`output`], background jobs run from the CLI in [`jobs`].

mod attach;
mod error;
mod exit;
mod follow;
mod fsck;
mod interrupt;
mod jobs;
mod mount;
mod nodes;
mod output;
mod progress;
mod reference;
mod retention;
mod start;
mod vfolder;
mod volume;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::catalog::Catalog;
use crate::layout::Layout;
use crate::sessions;
use crate::store::StoreError;
pub use error::CliError;
pub use exit::{
    EXIT_BUSY, EXIT_CANCELLED, EXIT_EXISTS, EXIT_FAILED, EXIT_NO_STORE, EXIT_NOT_FOUND,
    EXIT_PROBLEMS, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_UNCONFIRMED, EXIT_USAGE, EXIT_VOLUME, Kind,
};
pub use mount::MountCmd;
pub use output::{fmt_time, json_mode, vfolder_json};
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

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cli = if invoked_as.starts_with("mount.") || mount::is_helper_call(&args) {
        // As mount(8)'s helper: `mount.vfolderfs STORE MOUNTPOINT -o OPTS`,
        // or `vfolderfs STORE MOUNTPOINT -o OPTS` as mount.fuse3 runs it for
        // `-t fuse.vfolderfs` and `vfolderfs#STORE` lines.
        match mount::helper_args(&args) {
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

/// The cause recorded for a change made from the command line.
pub(crate) fn cause(what: &str) -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    format!("cli {what} (uid {uid})")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    let layout = Layout::resolve(cli.store.as_deref(), cli.data.as_deref());
    match cli.command {
        Command::Mount(m) => return mount::run(layout, &m),
        Command::Completions { shell } => return reference::completions(shell),
        Command::Man { dir } => return reference::man(dir.as_deref()),
        Command::Init { json } => return init(layout, json),
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
    run_on(&cat, cli.command, cli.confirm_timeout)
}

/// `init`: makes the store, or says it exists.
fn init(layout: Layout, json: bool) -> Result<i32, CliError> {
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
    Ok(0)
}

/// Runs a command on an open store; `timeout` is how long a change waits
/// for the mounts to confirm it (unless `--no-wait`).
fn run_on(cat: &Catalog, command: Command, timeout: Duration) -> Result<i32, CliError> {
    let wait = |no_wait: bool| (!no_wait).then_some(timeout);
    match command {
        Command::Create {
            name,
            volume,
            no_wait,
            json,
        } => vfolder::create(cat, &name, volume.as_deref(), wait(no_wait), json),
        Command::Clone {
            src,
            dst,
            volume,
            no_wait,
            json,
        } => start::clone(cat, &src, &dst, volume.as_deref(), no_wait, json),
        Command::Relocate {
            name,
            to,
            no_wait,
            json,
        } => start::relocate(cat, &name, &to, no_wait, json),
        Command::Volume(cmd) => volume::run(cat, cmd),
        Command::List { all, json } => vfolder::list(cat, all, json),
        Command::Show { name, size, json } => vfolder::show(cat, &name, size, json),
        Command::Nodes { json } => nodes::nodes(cat, json),
        Command::History { name, json } => vfolder::history(cat, &name, json),
        Command::Rename {
            old,
            new,
            no_wait,
            json,
        } => vfolder::rename(cat, &old, &new, wait(no_wait), json),
        Command::Delete {
            name,
            no_wait,
            json,
        } => vfolder::delete(cat, &name, wait(no_wait), json),
        Command::Restore {
            name,
            as_name,
            no_wait,
            json,
        } => vfolder::restore(cat, &name, as_name.as_deref(), wait(no_wait), json),
        Command::Purge {
            name,
            no_wait,
            json,
        } => start::purge(cat, &name, no_wait, json),
        Command::Gc { older_than, json } => vfolder::gc(cat, &older_than, json),
        other => run_other(cat, other),
    }
}

/// Runs the commands about sessions, jobs and the store as a whole.
fn run_other(cat: &Catalog, command: Command) -> Result<i32, CliError> {
    match command {
        Command::Attach {
            name,
            session,
            target,
            read_only,
            mount,
            json,
        } => {
            let a = attach::AttachArgs {
                name: &name,
                session: &session,
                target: &target,
                read_only,
                mount: mount.as_deref(),
            };
            attach::attach(cat, a, json)
        }
        Command::Detach {
            session,
            name,
            target,
            json,
        } => attach::detach(cat, session, name.as_deref(), target.as_deref(), json),
        Command::Sessions { json, prune } => attach::sessions(cat, json, prune),
        Command::Fsck {
            repair,
            json,
            grace,
        } => fsck::cmd(cat, repair, json, &grace),
        Command::Jobs { json, resume } => jobs::jobs_cmd(cat, json, resume),
        Command::Wait { job, json } => follow::wait_cmd(cat, &job, json),
        Command::Cancel { job, no_wait, json } => follow::cancel_cmd(cat, &job, no_wait, json),
        Command::Retention { value, json } => retention::run(cat, value, json),
        _ => unreachable!("handled by run or run_on"),
    }
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
