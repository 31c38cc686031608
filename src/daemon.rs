//! Running a mount: options, stale-mount recovery, going to the background
//! once the mount is ready, the watcher that keeps the mount in step with
//! the store, and clean shutdown on signals or `umount`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use fuser::{Config, INodeNo, MountOption, Notifier, Session, SessionACL};
use log::{error, info, warn};

use crate::backing::sys;
use crate::catalog::Catalog;
use crate::cli::{Cli, Command, MountCmd};
use crate::enforce::MountLease;
use crate::fs::vfolders::{Inval, Registry, clock};
use crate::fs::{FsConfig, VfolderFs};
use crate::layout::Layout;
use crate::mountinfo;
use crate::store::{SqliteStore, Store};
use crate::workers::pool::{JobPool, PoolConfig};

/// How often the watcher polls the store for changes made elsewhere.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How often the watcher checks that the store is still the same file and
/// readable through a fresh connection (else writes are refused).
pub const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// How often the watcher rereads every status even without a change signal
/// (a safety net; changes are signalled by the store's change token).
pub const FULL_REFRESH: Duration = Duration::from_secs(60);
/// How often the daemon clears attachments whose bind in its own mount
/// namespace is gone.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often the daemon records its open counts in the store.
pub const OPENS_EVERY: Duration = Duration::from_secs(5);
/// How long the watcher waits for a locked store before failing closed.
pub const WATCH_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Everything a mount needs, after option parsing.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// The store.
    pub layout: Layout,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Request threads.
    pub threads: usize,
    /// `allow_other`.
    pub allow_other: bool,
    /// Honour setuid bits.
    pub suid: bool,
    /// Honour device nodes.
    pub dev: bool,
    /// Extra kernel mount flags (noatime, noexec, ...).
    pub extra: Vec<MountOption>,
    /// FUSE layer tunables.
    pub fs: FsConfig,
    /// Where a background daemon writes its log.
    pub log_file: Option<PathBuf>,
    /// The purge pool's settings.
    pub purge: PoolConfig,
    /// How long the mount serves writes without confirming its view of the
    /// store (see [`crate::enforce`]).
    pub lease: Duration,
}

/// Parses a retention like `30d`, `12h`, `90m`; `0` means keep forever.
pub fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    if s.trim() == "0" {
        return Ok(None);
    }
    humantime::parse_duration(s)
        .map(Some)
        .map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Request loops by default: one per CPU (at least 2, at most 16). More
/// loops than CPUs only add context switches; calls that may block for long
/// run on a pool of their own (`fs::offload`).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

impl MountArgs {
    /// Builds the arguments from the command line, parsing `-o` options.
    pub fn from_cli(layout: Layout, m: &MountCmd) -> Result<MountArgs, String> {
        let mut a = MountArgs {
            layout,
            mountpoint: m.mountpoint.clone(),
            foreground: m.foreground,
            threads: m.threads.max(1),
            allow_other: m.allow_other,
            suid: false,
            dev: false,
            extra: Vec::new(),
            fs: FsConfig::default(),
            log_file: None,
            lease: crate::enforce::DEFAULT_LEASE,
            purge: PoolConfig {
                workers: m.purge_workers.max(1),
                retention: parse_retention(&m.trash_retention)?,
                ..PoolConfig::default()
            },
        };
        for opt in m.options.iter().flat_map(|o| o.split(',')) {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let num = |v: Option<&str>| -> Result<u64, String> {
                v.and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("option {k} needs a number"))
            };
            match k {
                ""
                | "rw"
                | "defaults"
                | "default_permissions"
                | "auto"
                | "noauto"
                | "_netdev"
                | "nofail"
                | "user"
                | "nouser" => {}
                "allow_other" => a.allow_other = true,
                "suid" => a.suid = true,
                "nosuid" => a.suid = false,
                "dev" => a.dev = true,
                "nodev" => a.dev = false,
                "noatime" => a.extra.push(MountOption::NoAtime),
                "noexec" => a.extra.push(MountOption::NoExec),
                "exec" => a.extra.push(MountOption::Exec),
                "threads" => a.threads = num(v)?.clamp(1, 64) as usize,
                "ttl" => a.fs.ttl = Duration::from_millis(num(v)?.min(3_600_000)),
                "nopassthrough" => a.fs.passthrough = false,
                "dir_fds" => a.fs.dir_fds = Some(num(v)?.clamp(16, 1 << 24) as usize),
                "foreground" => a.foreground = true,
                "log" => a.log_file = v.map(PathBuf::from),
                "purge_workers" => a.purge.workers = num(v)?.clamp(1, 64) as usize,
                "trash_retention" => a.purge.retention = parse_retention(v.unwrap_or_default())?,
                "lease" => {
                    let d = humantime::parse_duration(v.unwrap_or_default())
                        .map_err(|e| format!("option lease: {e}"))?;
                    if d < Duration::from_millis(200) || d > Duration::from_secs(3600) {
                        return Err("option lease must be between 200ms and 1h".into());
                    }
                    a.lease = d;
                }
                other => return Err(format!("unknown mount option {other:?}")),
            }
        }
        Ok(a)
    }
}

/// Parses the arguments of `mount.vfolderfs STORE MOUNTPOINT [-o OPTS]`, as
/// mount(8) calls a helper.
pub fn helper_args(args: &[OsString]) -> Result<Cli, String> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_bytes() {
            b"-o" => opts.push(
                it.next()
                    .ok_or("-o needs options")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            b"-s" | b"-n" | b"-v" => {}
            b"-f" => opts.push("foreground".into()),
            b"-t" => {
                it.next();
            }
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [store, mountpoint] = <[PathBuf; 2]>::try_from(pos)
        .map_err(|_| "usage: mount.vfolderfs STORE MOUNTPOINT [-o OPTIONS]".to_string())?;
    // `data=DIR`: the data directory of a PostgreSQL store (`--data`).
    let mut data = None;
    let opts: Vec<String> = opts
        .iter()
        .map(|o| {
            o.split(',')
                .filter(|kv| match kv.strip_prefix("data=") {
                    Some(d) => {
                        data = Some(PathBuf::from(d));
                        false
                    }
                    None => true,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|o| !o.is_empty())
        .collect();
    Ok(Cli {
        store: Some(store),
        data,
        confirm_timeout: crate::enforce::DEFAULT_CONFIRM_TIMEOUT,
        command: Command::Mount(MountCmd {
            mountpoint,
            foreground: false,
            threads: default_threads(),
            allow_other: false,
            purge_workers: 2,
            trash_retention: "30d".into(),
            options: opts,
        }),
    })
}

/// Errors of running a mount.
#[derive(Debug)]
pub enum MountError {
    /// The mount point is unusable.
    MountPoint(PathBuf, String),
    /// The store could not be opened.
    Store(crate::store::StoreError),
    /// A system call failed, with what was being done.
    Io(&'static str, std::io::Error),
    /// The background daemon reported a failure.
    Daemon(String),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::MountPoint(p, m) => write!(f, "{}: {m}", p.display()),
            MountError::Store(e) => write!(f, "{e}"),
            MountError::Io(what, e) => write!(f, "{what}: {e}"),
            MountError::Daemon(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MountError {}

/// Checks the mount point, clearing a stale mount left by a killed daemon.
fn prepare_mountpoint(mp: &Path) -> Result<PathBuf, MountError> {
    let bad = |m: String| MountError::MountPoint(mp.to_path_buf(), m);
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!("{}: clearing a stale mount", mp.display());
            let c = sys::cstr(mp).map_err(|e| bad(e.to_string()))?;
            // SAFETY: a valid path string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(bad(format!(
                    "stale mount could not be cleared: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        Err(e) => return Err(bad(e.to_string())),
        Ok(m) if !m.is_dir() => return Err(bad("not a directory".into())),
        Ok(_) => {}
    }
    let canon = std::fs::canonicalize(mp).map_err(|e| bad(e.to_string()))?;
    if let Some(m) = mountinfo::at(&canon)
        && m.is_fuse()
    {
        return Err(bad(format!(
            "already mounted ({}, {}); unmount it first",
            m.fstype, m.source
        )));
    }
    Ok(canon)
}

/// Mounts the store. Without `foreground`, returns once the mount is ready
/// and leaves a daemon serving it.
pub fn mount(mut args: MountArgs) -> Result<(), MountError> {
    // Fail early, in the caller's terminal, if the store cannot be opened
    // (a missing one is refused: only `init` makes a store).
    drop(Catalog::open(args.layout.clone()).map_err(MountError::Store)?);
    args.mountpoint = prepare_mountpoint(&args.mountpoint)?;
    if args.foreground {
        return serve(&args, |_| {});
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MountError::Io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: the pipe fds are new and owned here.
    let (mut rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet in this process, so fork is sound.
    match unsafe { libc::fork() } {
        -1 => Err(MountError::Io("fork", std::io::Error::last_os_error())),
        0 => {
            drop(rd);
            // SAFETY: setsid has no preconditions in a fresh child.
            unsafe { libc::setsid() };
            let log = args.log_file.clone();
            let pipe = std::cell::Cell::new(Some(wr));
            let tell = |msg: &str| {
                if let Some(mut w) = pipe.take() {
                    let _ = w.write_all(msg.as_bytes());
                }
            };
            let res = serve(&args, |res| match res {
                Ok(()) => {
                    tell("OK");
                    detach_stdio(log.as_deref());
                }
                Err(e) => tell(&e.to_string()),
            });
            if let Err(e) = &res {
                tell(&e.to_string());
                error!("{e}");
            }
            std::process::exit(if res.is_ok() { 0 } else { 1 });
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = rd.read_to_string(&mut msg);
            if msg.starts_with("OK") {
                Ok(())
            } else if msg.is_empty() {
                Err(MountError::Daemon(
                    "the mount daemon died before the mount was ready".into(),
                ))
            } else {
                Err(MountError::Daemon(msg))
            }
        }
    }
}

fn detach_stdio(log: Option<&Path>) {
    let null = File::options().read(true).write(true).open("/dev/null");
    let out = log
        .and_then(|p| File::options().create(true).append(true).open(p).ok())
        .or_else(|| null.as_ref().ok().and_then(|f| f.try_clone().ok()));
    if let (Ok(null), Some(out)) = (null, out) {
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(out.as_raw_fd(), 2);
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Unmounts `mp`: a plain unmount, or a lazy one if it is busy.
pub fn unmount(mp: &Path) -> std::io::Result<()> {
    let c = sys::cstr(mp)?;
    // SAFETY: a valid path string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        return Err(std::io::Error::last_os_error());
    }
    Err(e)
}

/// Mounts and serves in this process until unmounted or signalled;
/// `ready` is called once, when the mount is usable or has failed.
pub fn serve(
    args: &MountArgs,
    ready: impl FnOnce(Result<(), &MountError>),
) -> Result<(), MountError> {
    let mut ready = Some(ready);
    let mut report = |r: Result<(), &MountError>| {
        if let Some(f) = ready.take() {
            f(r)
        }
    };
    match serve_inner(args, &mut report) {
        Ok(()) => Ok(()),
        Err(e) => {
            report(Err(&e));
            Err(e)
        }
    }
}

fn serve_inner(
    args: &MountArgs,
    report: &mut dyn FnMut(Result<(), &MountError>),
) -> Result<(), MountError> {
    // SAFETY: umask has no preconditions. Modes arrive already masked by the kernel.
    unsafe { libc::umask(0) };
    if let Err(e) = sys::raise_nofile_limit() {
        warn!("could not raise the open-file limit: {e}");
    }
    // Records the daemon's own identity before any thread acts for a caller.
    let me = crate::backing::creds::daemon_identity();
    log::debug!(
        "daemon acts as uid {} with capabilities {:#x}",
        me.uid,
        me.caps
    );
    let sigset = block_signals();
    let cat = Arc::new(Catalog::open(args.layout.clone()).map_err(MountError::Store)?);
    // The watcher serves from this store only, never from a database put in its place.
    let store_id = cat
        .store()
        .store_id()
        .map_err(MountError::Store)?
        .ok_or_else(|| {
            MountError::Store(crate::store::StoreError::Corrupt(
                "the database has no store id".into(),
            ))
        })?;
    let reg = Arc::new(Registry::new());
    // Recorded before the first read: a change made after that read began
    // waits for this mount's confirmation, one made before is in the read.
    let mut lease = MountLease::new(&args.mountpoint.display().to_string(), args.lease);
    lease
        .register(cat.store().as_ref(), &reg, clock())
        .map_err(MountError::Store)?;
    let began = clock();
    reg.refresh(cat.store().as_ref())
        .map_err(MountError::Store)?;
    lease
        .confirm(cat.store().as_ref(), &reg, began)
        .map_err(MountError::Store)?;
    let pool =
        Arc::new(JobPool::start(&args.layout, args.purge.clone()).map_err(MountError::Store)?);
    let fs = VfolderFs::new(cat.clone(), reg.clone(), args.fs.clone())
        .map_err(|e| MountError::Io("opening the data directory", e))?
        .with_purge_pool(pool.clone());

    let mut opts = vec![
        MountOption::FSName(args.layout.root().display().to_string()),
        MountOption::Subtype("vfolderfs".into()),
        MountOption::DefaultPermissions,
        if args.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
        if args.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
    ];
    opts.extend(args.extra.iter().cloned());
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads);
    config.clone_fd = true;

    let mut session =
        Session::new(fs, &args.mountpoint, &config).map_err(|e| MountError::Io("mounting", e))?;
    let notifier = session.notifier();
    let mut unmounter = session.unmount_callable();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (reg, stop, db) = (reg.clone(), stop.clone(), args.layout.db_path());
        let shared = args
            .layout
            .database()
            .is_some()
            .then(|| cat.store().clone());
        thread::Builder::new()
            .name("vfolderfs-watch".into())
            .spawn(move || match shared {
                Some(s) => crate::watch_shared::watch(s, &store_id, &reg, &notifier, &stop, lease),
                None => watch(&db, &store_id, &reg, &notifier, &stop, lease),
            })
            .map_err(|e| MountError::Io("starting the watcher", e))?
    };
    {
        let mp = args.mountpoint.clone();
        thread::Builder::new()
            .name("vfolderfs-signals".into())
            .spawn(move || {
                let mut sig = 0;
                // SAFETY: sigset holds the signals blocked in every thread.
                unsafe { libc::sigwait(&sigset, &mut sig) };
                info!("signal {sig}: unmounting {}", mp.display());
                // A plain unmount through the session; if busy, a lazy one.
                if unmounter.unmount().is_err()
                    && let Err(e) = unmount(&mp)
                {
                    error!("unmounting {}: {e}", mp.display());
                }
            })
            .map_err(|e| MountError::Io("starting the signal thread", e))?;
    }
    let janitor = {
        let (cat, stop, reg) = (cat.clone(), stop.clone(), reg.clone());
        thread::Builder::new()
            .name("vfolderfs-janitor".into())
            .spawn(move || janitor(&cat, &reg, &stop))
            .map_err(|e| MountError::Io("starting the janitor", e))?
    };
    info!(
        "mounted {} on {}",
        args.layout.root().display(),
        args.mountpoint.display()
    );
    report(Ok(()));
    let res = session.run();
    let t = std::time::Instant::now();
    pool.shutdown();
    log::debug!("pool stopped in {:?}", t.elapsed());
    stop.store(true, Ordering::Release);
    let _ = watcher.join();
    log::debug!("watcher stopped in {:?}", t.elapsed());
    let _ = janitor.join();
    log::debug!("janitor stopped in {:?}", t.elapsed());
    info!("unmounted {}", args.mountpoint.display());
    res.map_err(|e| MountError::Io("serving", e))
}

/// Periodic chores: pruning stale attachments of this namespace, and
/// recording open counts (also once more on the way out).
fn janitor(cat: &Catalog, reg: &Registry, stop: &AtomicBool) {
    let owner = crate::workers::this_owner();
    let mut last_prune = std::time::Instant::now();
    let mut last_opens = std::time::Instant::now();
    let mut recorded: Vec<(String, u64)> = Vec::new();
    let record = |recorded: &mut Vec<(String, u64)>| {
        let now = reg.open_counts();
        if now != *recorded {
            match cat.store().record_opens(&owner, &now) {
                Ok(()) => *recorded = now,
                Err(e) => warn!("recording open counts: {e}"),
            }
        }
    };
    while !stop.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(100));
        if last_opens.elapsed() >= OPENS_EVERY {
            last_opens = std::time::Instant::now();
            record(&mut recorded);
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = std::time::Instant::now();
            match crate::sessions::prune(cat, true) {
                Ok(gone) => {
                    for a in gone {
                        info!("pruned stale attachment {} ({:?})", a.target, a.session);
                    }
                }
                Err(e) => warn!("pruning attachments: {e}"),
            }
        }
    }
    record(&mut recorded);
}

/// Fails unless the database `s` (at `db`) is the store with id `want`.
fn check_store_id(s: &SqliteStore, db: &Path, want: &str) -> crate::store::Result<()> {
    match s.store_id()? {
        Some(id) if id == want => Ok(()),
        found => Err(crate::store::StoreError::Foreign {
            path: db.display().to_string(),
            expected: want.to_string(),
            found,
        }),
    }
}

/// Sends the kernel the invalidations the registry owes it.
pub(crate) fn send_invalidations(reg: &Registry, notifier: &Notifier) {
    for inv in reg.take_pending() {
        let r = match &inv {
            Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name.as_ref()),
            Inval::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
        };
        if let Err(e) = r
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            warn!("invalidating {inv:?}: {e}");
        }
    }
}

/// The (device, inode) of a file, to notice it being replaced.
fn file_id(p: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)?;
    Ok((m.dev(), m.ino()))
}

/// Keeps the registry in step with the store and sends the kernel the
/// invalidations owed, until `stop`. It rereads the vfolders when the store's
/// change token moves (and every [`FULL_REFRESH`]); every [`HEALTH_CHECK`] it
/// makes sure the database is still the file it opened and still readable
/// through a fresh connection with the store id `store_id`, so a store that
/// was replaced (by another store's database too), corrupted or locked is
/// noticed and writes are refused; nothing from a database with another id
/// reaches the registry. Idle, it costs a few syscalls per poll however
/// many vfolders there are.
fn watch(
    db: &Path,
    store_id: &str,
    reg: &Registry,
    notifier: &Notifier,
    stop: &AtomicBool,
    mut lease: MountLease,
) {
    let mut store: Option<(SqliteStore, (u64, u64))> = None;
    let mut last = None;
    let mut last_full = std::time::Instant::now();
    let mut last_check = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        // What this pass confirms is the store as read from here on.
        let began = clock();
        let step = (|| {
            if store.is_some() && last_check.elapsed() >= HEALTH_CHECK {
                last_check = std::time::Instant::now();
                let same = store
                    .as_ref()
                    .is_some_and(|(_, id)| file_id(db).ok() == Some(*id));
                if !same {
                    // Replaced or gone: reopen below (or fail closed).
                    store = None;
                } else {
                    let fresh = SqliteStore::open_existing(db, WATCH_BUSY_TIMEOUT)?;
                    fresh.check_readable()?;
                    check_store_id(&fresh, db, store_id)?;
                }
            }
            let mut full = last_full.elapsed() >= FULL_REFRESH;
            if store.is_none() {
                let id = file_id(db)
                    .map_err(|e| crate::store::StoreError::Io(db.display().to_string(), e))?;
                let s = SqliteStore::open_existing(db, WATCH_BUSY_TIMEOUT)?;
                check_store_id(&s, db, store_id)?;
                store = Some((s, id));
                last_check = std::time::Instant::now();
                full = true;
            }
            let (s, _) = store.as_ref().expect("opened above");
            let tok = s.change_token()?;
            if full || last != Some(tok) {
                if full {
                    reg.refresh(s)?;
                } else {
                    reg.sync(s)?;
                }
                last = Some(tok);
                if full {
                    last_full = std::time::Instant::now();
                }
            }
            // Confirms what is applied and drained (when that changed, and
            // to keep the lease); a lapsed lease means this mount may have
            // missed changes others no longer wait for: reread everything
            // before registering again.
            match lease.confirm(s, reg, began) {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        "this mount's lease lapsed: rereading the store before serving writes again"
                    );
                    let again = clock();
                    reg.refresh(s)?;
                    lease.register(s, reg, again)?;
                }
                // Locked by a long transaction: the view read above is
                // current, but cannot be confirmed; the lease runs on, and
                // past it writes are refused.
                Err(e) if e.is_busy() => log::debug!("confirming this mount's view: {e}"),
                Err(e) => return Err(e),
            }
            Ok::<(), crate::store::StoreError>(())
        })();
        match step {
            Ok(()) => {
                if reg.set_healthy(true) {
                    warn!("store readable again: writes allowed by status");
                }
            }
            Err(e) => {
                store = None;
                if reg.set_healthy(false) {
                    error!("store unavailable, refusing writes until it recovers: {e}");
                }
            }
        }
        send_invalidations(reg, notifier);
        thread::sleep(POLL_INTERVAL);
    }
    // A clean unmount: no command waits for this mount any more.
    let gone = match &store {
        Some((s, _)) => lease.remove(s),
        None => SqliteStore::open_existing(db, WATCH_BUSY_TIMEOUT).and_then(|s| {
            check_store_id(&s, db, store_id)?;
            lease.remove(&s)
        }),
    };
    if let Err(e) = gone {
        warn!("forgetting this mount in the store: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::Path;

    use crate::cli::Command;

    #[test]
    fn the_fstab_helper_takes_data_for_a_postgres_store() {
        let args: Vec<OsString> = [
            "mount.vfolderfs",
            "postgres://u@h/db?sslmode=verify-full",
            "/mnt/v",
            "-o",
            "rw,data=/shared/v,allow_other",
        ]
        .map(OsString::from)
        .to_vec();
        let cli = super::helper_args(&args).unwrap();
        assert_eq!(cli.data.as_deref(), Some(Path::new("/shared/v")));
        let layout = crate::layout::Layout::resolve(cli.store.as_deref(), cli.data.as_deref());
        assert_eq!(
            layout.database(),
            Some("postgres://u@h/db?sslmode=verify-full")
        );
        assert_eq!(layout.data_dir(), Path::new("/shared/v/data"));
        match cli.command {
            Command::Mount(m) => assert_eq!(m.options, ["rw,allow_other"]),
            other => panic!("{other:?}"),
        }
    }
}
