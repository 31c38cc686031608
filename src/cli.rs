//! The command line: argument parsing, output formats and exit statuses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::catalog::{Catalog, NewDir};
use crate::daemon::{self, MountArgs};
use crate::layout::Layout;
use crate::store::{HistoryEntry, ListFilter, Millis, StoreError, VFolder};

/// vfolderfs: users' storage folders with a lifecycle, served as one FUSE mount.
#[derive(Parser, Debug)]
#[command(name = "vfolderfs", version, about)]
pub struct Cli {
    /// Store directory (default: $VFOLDERFS_STORE, else /var/lib/vfolderfs
    /// for root and $XDG_DATA_HOME/vfolderfs otherwise).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a ready vfolder.
    Create {
        /// Its name.
        name: String,
    },
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
    },
    /// Move a vfolder to the trash (restorable).
    Delete {
        /// Its name.
        name: String,
    },
    /// Restore a vfolder from the trash.
    Restore {
        /// Its trash name (NAME or NAME~1a2b3c4d) or id.
        name: String,
        /// Restore under another name.
        #[arg(long = "as", value_name = "NEW")]
        as_name: Option<String>,
    },
    /// Mount the store (the main job).
    Mount(MountCmd),
}

/// Arguments of `vfolderfs mount`.
#[derive(Args, Debug, Clone)]
pub struct MountCmd {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground instead of returning once the mount is ready.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Request-handling threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Let other users use the mount (permissions are checked by the kernel).
    #[arg(long)]
    pub allow_other: bool,
    /// Extra mount options, comma-separated (ro, noatime, allow_other, suid, dev, threads=N, ...).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
}

/// An error worth one line on stderr.
#[derive(Debug)]
pub enum CliError {
    /// From the store layer.
    Store(StoreError),
    /// From running a mount.
    Mount(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Store(e) => e.fmt(f),
            CliError::Mount(m) => f.write_str(m),
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
            1
        }
    }
}

fn cause(what: &str) -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    format!("cli {what} (uid {uid})")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    let layout = Layout::resolve(cli.store.as_deref());
    if let Command::Mount(m) = cli.command {
        let args = MountArgs::from_cli(layout, &m).map_err(CliError::Mount)?;
        return daemon::mount(args)
            .map(|()| 0)
            .map_err(|e| CliError::Mount(e.to_string()));
    }
    let cat = Catalog::open(layout)?;
    match cli.command {
        Command::Create { name } => {
            let v = cat.create(&name, NewDir::default(), &cause("create"))?;
            println!("created vfolder {:?} ({})", v.name, v.id);
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
                let arr: Vec<Value> = list
                    .iter()
                    .map(|v| vfolder_json(&cat, v, trash_name(v)))
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
            let obj = vfolder_json(&cat, &v, tn);
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
        Command::Rename { old, new } => {
            let v = cat.store().get_live(&old)?;
            let v = cat.store().rename(&v.id, &new)?;
            println!("renamed vfolder {old:?} to {:?}", v.name);
        }
        Command::Delete { name } => {
            let v = cat.store().get_live(&name)?;
            let v = cat.delete(&v, &cause("delete"))?;
            println!("moved vfolder {:?} to the trash ({})", v.name, v.id);
        }
        Command::Restore { name, as_name } => {
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
        }
        Command::Mount(_) => unreachable!("handled above"),
    }
    Ok(0)
}

/// RFC 3339 UTC with milliseconds.
pub fn fmt_time(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The stable JSON form of a vfolder (documented in the README).
pub fn vfolder_json(cat: &Catalog, v: &VFolder, trash_name: Option<String>) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "status": v.status.as_str(),
        "path": cat.layout().vfolder_path(&v.id).display().to_string(),
        "created_at": fmt_time(v.created_at),
        "status_changed_at": fmt_time(v.status_changed_at),
        "error": v.error,
        "trash_name": trash_name,
    })
}

fn history_json(e: &HistoryEntry) -> Value {
    json!({
        "from": e.from.map(|s| s.as_str()),
        "to": e.to.as_str(),
        "at": fmt_time(e.at),
        "cause": e.cause,
    })
}

fn print_table(list: &[VFolder], trash_name: &dyn Fn(&VFolder) -> Option<String>) {
    let names: Vec<String> = list
        .iter()
        .map(|v| trash_name(v).unwrap_or_else(|| v.name.clone()))
        .collect();
    let w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:w$}  {:15}  {:36}  CREATED", "NAME", "STATUS", "ID");
    for (v, n) in list.iter().zip(&names) {
        println!(
            "{n:w$}  {:15}  {:36}  {}",
            v.status.as_str(),
            v.id,
            fmt_time(v.created_at)
        );
    }
}

/// Exit code helper for binaries embedding the CLI.
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}
