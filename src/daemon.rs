//! Running a mount: the plain [`MountArgs`] it runs with (parsed from the
//! command line in `cli/mount.rs`; nothing here knows the CLI), stale-mount
//! recovery, going to the background once the mount is ready, the watcher that keeps the mount in step with
//! the store, and clean shutdown on signals or `umount`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use fuser::{Config, INodeNo, MountOption, Notifier, Session, SessionACL};
use log::{error, info, warn};

use crate::backing::sys;
use crate::catalog::Catalog;
use crate::enforce::MountLease;
use crate::fs::vfolders::{Inval, Registry, clock};
use crate::fs::{FsConfig, VfolderFs};
use std::os::fd::AsFd;

use crate::fs::caching;
use crate::layout::Layout;
use crate::mountinfo;
use crate::service::kmount::KernelMount;
use crate::service::log::LogFile;
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
/// Test hook: while the file this names exists, the watcher does nothing, as
/// if its process were stopped or its store read hung (the mount's lease
/// then lapses and it must refuse writes); while `NAME.reread` exists, a
/// watcher whose lease lapsed stops after rereading the store, before it
/// confirms that read. Tests must not stop a FUSE daemon
/// itself: every process that looks at it would hang with it.
pub const WATCHER_HOLD_ENV: &str = "VFOLDERFS_TEST_WATCHER_HOLD";
/// How often the daemon clears attachments whose bind in its own mount
/// namespace is gone.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often the daemon records its open counts in the store.
pub const OPENS_EVERY: Duration = Duration::from_secs(5);
/// How often a mount checks whether an automatic tiering pass is due (two
/// small reads of store settings; see [`crate::tier::run::auto_tick`]).
pub const TIER_EVERY: Duration = Duration::from_secs(2);
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
    /// A read-only view of the whole mount (`-o ro`): the kernel refuses
    /// every change with `EROFS`.
    pub read_only: bool,
    /// Extra kernel mount flags (noatime, noexec, ...).
    pub extra: Vec<MountOption>,
    /// FUSE layer tunables.
    pub fs: FsConfig,
    /// Where a background daemon writes its log.
    pub log_file: Option<PathBuf>,
    /// A file the metrics are written to every few seconds (atomically).
    pub metrics_file: Option<PathBuf>,
    /// Where an HTTP listener serves the metrics (loopback or unix socket).
    pub metrics_listen: Option<crate::metrics::export::Listen>,
    /// The purge pool's settings.
    pub purge: PoolConfig,
    /// How long the mount serves writes without confirming its view of the
    /// store (see [`crate::enforce`]).
    pub lease: Duration,
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
    /// The log file cannot be opened (the message names it).
    Log(std::io::Error),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::MountPoint(p, m) => write!(f, "{}: {m}", p.display()),
            MountError::Store(e) => write!(f, "{e}"),
            MountError::Io(what, e) => write!(f, "{what}: {e}"),
            MountError::Daemon(m) => f.write_str(m),
            MountError::Log(e) => write!(f, "{e}"),
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
    let cat = Catalog::open(args.layout.clone()).map_err(MountError::Store)?;
    args.mountpoint = prepare_mountpoint(&args.mountpoint)?;
    // Never over or inside the store's own data (see crate::volumes).
    let occupied = cat.occupied().map_err(MountError::Store)?;
    if let Some(why) = crate::volumes::overlap_refusal(&args.mountpoint, &occupied) {
        return Err(MountError::MountPoint(
            args.mountpoint.clone(),
            format!("cannot mount here: {why}"),
        ));
    }
    drop(cat);
    // An unusable log file fails here, in the caller's terminal.
    let log = match &args.log_file {
        Some(p) => Some(LogFile::check(p).map_err(MountError::Log)?),
        None => None,
    };
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
            // From here on the daemon's log lines, start-up ones too, go to
            // its log file; failures still reach the caller through the pipe.
            if let Some(l) = &log
                && let Err(e) = l.redirect_stderr()
            {
                let mut wr = wr;
                let _ = wr.write_all(e.to_string().as_bytes());
                std::process::exit(1);
            }
            let pipe = std::cell::Cell::new(Some(wr));
            let tell = |msg: &str| {
                if let Some(mut w) = pipe.take() {
                    let _ = w.write_all(msg.as_bytes());
                }
            };
            let res = serve(&args, |res| match res {
                Ok(()) => {
                    tell("OK");
                    detach_stdio(log.is_some() || crate::service::log::stderr_is_journal());
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

/// Leaves the caller's terminal: stdin and stdout to `/dev/null`, and
/// stderr too unless it is kept (the log file, or systemd's journal).
fn detach_stdio(keep_stderr: bool) {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            if !keep_stderr {
                libc::dup2(null.as_raw_fd(), 2);
            }
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

/// Whether a FUSE filesystem is mounted at `mp` in this namespace.
fn is_mounted_here(mp: &Path) -> bool {
    mountinfo::at(mp).is_some_and(|m| m.is_fuse())
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
    prepare_process();
    let sigset = block_signals();
    let (cat, store_id, reg, lease) = register(args)?;
    let pool =
        Arc::new(JobPool::start(&args.layout, args.purge.clone()).map_err(MountError::Store)?);
    let uring = args.fs.io_uring.clone();
    let fs = VfolderFs::new(cat.clone(), reg.clone(), args.fs.clone())
        .map_err(|e| MountError::Io("opening the data directory", e))?
        .with_purge_pool(pool.clone());

    let (kmount, config) = mount_config(args);
    let mut session = start_session(args, fs, &kmount, config)?;
    let notifier = session.notifier();
    // For the notification fuser does not send (FUSE_NOTIFY_INC_EPOCH).
    let dev = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| MountError::Io("duplicating the /dev/fuse descriptor", e))?;
    let unmounter = session.unmount_callable();
    let stop = Arc::new(AtomicBool::new(false));
    caching::probe_epoch(&reg, dev.as_fd());
    let lapse_guard = spawn_lapse_guard(&reg, &notifier, &dev, &stop)?;
    let watcher = spawn_watcher(args, &cat, &reg, store_id, (notifier, dev), &stop, lease)?;
    spawn_signal_thread(args, sigset, unmounter)?;
    let exporters = crate::metrics::export::start(
        args.metrics_file.clone(),
        args.metrics_listen.clone(),
        reg.clone(),
        pool.clone(),
        cat.clone(),
        stop.clone(),
    )
    .map_err(|e| {
        let _ = unmount(&args.mountpoint);
        MountError::Io("starting the metrics", e)
    })?;
    let janitor = spawn_janitor(args, &cat, &reg, &stop)?;
    info!(
        "mounted {} on {}{}",
        args.layout.root().display(),
        args.mountpoint.display(),
        if args.read_only { " (read-only)" } else { "" }
    );
    report(Ok(()));
    if std::env::var_os(crate::service::notify::ENV).is_some() {
        spawn_notifier(args)?;
    }
    let res = run_session(session, uring)?;
    // Unmounted: the pool stops first (a job's claim is released, its row
    // left for resumption), then the threads that watch and report.
    let t = std::time::Instant::now();
    pool.shutdown();
    log::debug!("pool stopped in {:?}", t.elapsed());
    stop.store(true, Ordering::Release);
    let _ = watcher.join();
    let _ = lapse_guard.join();
    log::debug!("watcher stopped in {:?}", t.elapsed());
    let _ = janitor.join();
    log::debug!("janitor stopped in {:?}", t.elapsed());
    for e in exporters {
        let _ = e.join();
    }
    info!("unmounted {}", args.mountpoint.display());
    res.map_err(|e| MountError::Io("serving", e))
}

/// The process-wide settings a daemon needs before it serves: no umask
/// (modes arrive masked by the kernel), the open-file limit raised, and
/// its own identity recorded before any thread acts for a caller.
fn prepare_process() {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    if let Err(e) = sys::raise_nofile_limit() {
        warn!("could not raise the open-file limit: {e}");
    }
    let me = crate::backing::creds::daemon_identity();
    log::debug!(
        "daemon acts as uid {} with capabilities {:#x}",
        me.uid,
        me.caps
    );
}

/// Serves until the file system is unmounted. INIT is done: with io_uring
/// granted, the rings serve beside the /dev/fuse loops (see
/// `transport::uring`).
fn run_session(
    session: Session<VfolderFs>,
    uring: Option<Arc<crate::transport::uring::Negotiation>>,
) -> Result<std::io::Result<()>, MountError> {
    Ok(match uring.filter(|u| u.granted()) {
        Some(u) => {
            let dev = session
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| MountError::Io("duplicating the /dev/fuse descriptor", e))?;
            session.run_with(move |d| crate::transport::uring::serve(d, dev, &u))
        }
        None => session.run(),
    })
}

/// The janitor thread (see [`janitor`]).
fn spawn_janitor(
    args: &MountArgs,
    cat: &Arc<Catalog>,
    reg: &Arc<Registry>,
    stop: &Arc<AtomicBool>,
) -> Result<thread::JoinHandle<()>, MountError> {
    let (cat, stop, reg) = (cat.clone(), stop.clone(), reg.clone());
    let mp = args.mountpoint.clone();
    thread::Builder::new()
        .name("vfolderfs-janitor".into())
        .spawn(move || janitor(&cat, &reg, &stop, &mp))
        .map_err(|e| MountError::Io("starting the janitor", e))
}

/// Mounts and starts the FUSE session: the kernel mount typed
/// `fuse.vfolderfs` when this process may call mount(2), else through
/// fuser and fusermount.
fn start_session(
    args: &MountArgs,
    fs: VfolderFs,
    kmount: &KernelMount,
    config: Config,
) -> Result<Session<VfolderFs>, MountError> {
    // Mounted here as `fuse.vfolderfs`; without the privilege for mount(2),
    // through fuser and fusermount (then shown as plain `fuse`).
    let session = match kmount.mount(&args.mountpoint) {
        Ok(dev) => {
            let acl = config.acl;
            Session::from_fd(fs, dev, acl, config).map_err(|e| {
                let _ = unmount(&args.mountpoint);
                MountError::Io("starting the session", e)
            })?
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Session::new(fs, &args.mountpoint, &config)
                .map_err(|e| MountError::Io("mounting", e))?
        }
        Err(e) => return Err(MountError::Io("mounting", e)),
    };
    Ok(session)
}

/// Starts the thread that drops the kernel's caches when this mount's
/// lease lapses (see [`caching::guard_lapse`]).
fn spawn_lapse_guard(
    reg: &Arc<Registry>,
    notifier: &Notifier,
    dev: &std::os::fd::OwnedFd,
    stop: &Arc<AtomicBool>,
) -> Result<thread::JoinHandle<()>, MountError> {
    let (reg, stop, notifier) = (reg.clone(), stop.clone(), notifier.clone());
    let dev = dev
        .try_clone()
        .map_err(|e| MountError::Io("duplicating the /dev/fuse descriptor", e))?;
    thread::Builder::new()
        .name("vfolderfs-lapse".into())
        .spawn(move || caching::guard_lapse(&reg, &notifier, dev.as_fd(), &stop))
        .map_err(|e| MountError::Io("starting the lease guard", e))
}

/// Starts the watcher: [`watch`] for a SQLite store, or
/// [`crate::watch_shared::watch`] for a PostgreSQL one.
fn spawn_watcher(
    args: &MountArgs,
    cat: &Arc<Catalog>,
    reg: &Arc<Registry>,
    store_id: String,
    (notifier, dev): (Notifier, std::os::fd::OwnedFd),
    stop: &Arc<AtomicBool>,
    lease: MountLease,
) -> Result<thread::JoinHandle<()>, MountError> {
    let (reg, stop, db) = (reg.clone(), stop.clone(), args.layout.db_path());
    let shared = args
        .layout
        .database()
        .is_some()
        .then(|| cat.store().clone());
    thread::Builder::new()
        .name("vfolderfs-watch".into())
        .spawn(move || match shared {
            Some(s) => {
                crate::watch_shared::watch(s, &store_id, &reg, (&notifier, &dev), &stop, lease)
            }
            None => watch(&db, &store_id, &reg, (&notifier, &dev), &stop, lease),
        })
        .map_err(|e| MountError::Io("starting the watcher", e))
}

/// Opens the store, registers this mount in it and reads every vfolder
/// (recorded before the first read: a change made after that read began
/// waits for this mount's confirmation, one made before is in the read);
/// then waits until another live mount of the store knows of this one.
fn register(
    args: &MountArgs,
) -> Result<(Arc<Catalog>, String, Arc<Registry>, MountLease), MountError> {
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
    let mut lease = MountLease::new(&args.mountpoint.display().to_string(), args.lease);
    lease
        .register(cat.store().as_ref(), &reg)
        .map_err(MountError::Store)?;
    let began = clock();
    reg.refresh(cat.store().as_ref())
        .map_err(MountError::Store)?;
    lease
        .confirm(cat.store().as_ref(), &reg, began)
        .map_err(MountError::Store)?;
    // Another live mount of the store must know of this one before it
    // serves: it caches names for long only while it is alone.
    let unseen = lease
        .wait_seen(cat.store().as_ref(), &reg, args.lease * 2)
        .map_err(MountError::Store)?;
    if !unseen.is_empty() {
        warn!(
            "serving although these mounts did not renew their lease since this one registered \
             (their lease lapses, or they see it at their next renewal): {}",
            unseen.join("; ")
        );
    }
    Ok((cat, store_id, reg, lease))
}

/// The kernel mount (as `fuse.vfolderfs`) and fuser's configuration for
/// `args`.
fn mount_config(args: &MountArgs) -> (KernelMount, Config) {
    let kmount = KernelMount {
        source: args.layout.root().display().to_string(),
        allow_other: args.allow_other,
        suid: args.suid,
        dev: args.dev,
        read_only: args.read_only,
        noatime: args.extra.contains(&MountOption::NoAtime),
        noexec: args.extra.contains(&MountOption::NoExec),
    };
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
    if args.read_only {
        opts.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads);
    config.clone_fd = true;
    (kmount, config)
}

/// Starts the thread that waits for the blocked signals: SIGHUP reopens
/// the log file; SIGTERM, SIGINT or SIGQUIT unmounts (lazily if busy).
fn spawn_signal_thread(
    args: &MountArgs,
    sigset: libc::sigset_t,
    mut unmounter: fuser::SessionUnmounter,
) -> Result<(), MountError> {
    let mp = args.mountpoint.clone();
    let log = if args.foreground {
        None
    } else {
        args.log_file.clone()
    };
    thread::Builder::new()
        .name("vfolderfs-signals".into())
        .spawn(move || {
            let mut sig = 0;
            loop {
                // SAFETY: sigset holds the signals blocked in every thread.
                unsafe { libc::sigwait(&sigset, &mut sig) };
                if sig != libc::SIGHUP {
                    break;
                }
                // SIGHUP: reopen the log file (after a rotation).
                match &log {
                    Some(p) => match LogFile::check(p).and_then(|l| l.redirect_stderr()) {
                        Ok(()) => info!("SIGHUP: reopened the log file {}", p.display()),
                        Err(e) => error!("SIGHUP: {e}"),
                    },
                    None => info!("SIGHUP: no log file to reopen"),
                }
            }
            info!("signal {sig}: unmounting {}", mp.display());
            crate::service::notify::stopping();
            // A plain unmount; if busy, a lazy one.
            if (unmounter.unmount().is_err() || is_mounted_here(&mp))
                && let Err(e) = unmount(&mp)
            {
                error!("unmounting {}: {e}", mp.display());
            }
        })
        .map_err(|e| MountError::Io("starting the signal thread", e))?;
    Ok(())
}

/// Tells systemd the mount is ready once it answers a request.
fn spawn_notifier(args: &MountArgs) -> Result<(), MountError> {
    let (mp, root) = (
        args.mountpoint.clone(),
        args.layout.root().display().to_string(),
    );
    thread::Builder::new()
        .name("vfolderfs-notify".into())
        .spawn(move || match std::fs::metadata(&mp) {
            Ok(_) => crate::service::notify::ready(&format!("serving {root} on {}", mp.display())),
            Err(e) => error!("the mount does not answer: {e}"),
        })
        .map_err(|e| MountError::Io("starting the notifier", e))?;
    Ok(())
}

/// Periodic chores: pruning stale attachments of this namespace,
/// recording open counts (also once more on the way out), and saying which
/// sessions hold the mount once it was unmounted while session binds keep
/// it alive.
fn janitor(cat: &Catalog, reg: &Registry, stop: &AtomicBool, mountpoint: &Path) {
    let owner = crate::workers::this_owner();
    let mut last_held = std::time::Instant::now();
    let mut said_held = String::new();
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
    // Usage for tiering: what the request path counted, sent in one batch
    // per interval (never a store write per open), once more on the way out.
    let mut usage = crate::tier::usage::Flusher::new();
    let flush_usage = |usage: &mut crate::tier::usage::Flusher| {
        if let Err(e) = usage.flush(
            cat.store().as_ref(),
            &reg.usage_counts(),
            crate::tier::now(),
        ) {
            warn!("recording usage: {e}");
        }
    };
    let mut tiering = crate::tier::run::Auto::default();
    let mut last_tier = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(100));
        if last_tier.elapsed() >= TIER_EVERY {
            last_tier = std::time::Instant::now();
            if let Err(e) = crate::tier::run::auto_tick(cat, &mut tiering) {
                warn!("tiering pass: {e}");
            }
        }
        if last_held.elapsed() >= Duration::from_secs(1) {
            last_held = std::time::Instant::now();
            if !crate::sessions::held::mounted_at(cat, mountpoint) {
                let held = crate::sessions::held::holders(cat, mountpoint);
                let who = crate::sessions::held::describe(cat, &held);
                if !held.is_empty() && who != said_held {
                    warn!(
                        "{} was unmounted, but {} session bind(s) still hold this mount, so it \
                         serves them until they are detached (`vfolderfs detach`): {who}",
                        mountpoint.display(),
                        held.len()
                    );
                }
                said_held = who;
            }
        }
        if last_opens.elapsed() >= OPENS_EVERY {
            last_opens = std::time::Instant::now();
            record(&mut recorded);
            flush_usage(&mut usage);
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
    flush_usage(&mut usage);
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
pub(crate) fn send_invalidations(
    reg: &Registry,
    notifier: &Notifier,
    dev: std::os::fd::BorrowedFd<'_>,
) {
    for inv in reg.take_pending() {
        let r = match &inv {
            Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name.as_ref()),
            Inval::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
            Inval::All => caching::drop_kernel_cache(reg, notifier, dev),
            Inval::Names => caching::drop_names(dev),
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
    (notifier, dev): (&Notifier, &std::os::fd::OwnedFd),
    stop: &AtomicBool,
    mut lease: MountLease,
) {
    let mut w = Watcher {
        db,
        store_id,
        store: None,
        last: None,
        last_full: std::time::Instant::now(),
        last_check: std::time::Instant::now(),
        hold: std::env::var_os(WATCHER_HOLD_ENV).map(std::path::PathBuf::from),
    };
    while !stop.load(Ordering::Acquire) {
        // Test hook: a watcher that cannot run (its process stopped, its
        // store read hung), without stopping a FUSE daemon, which would hang
        // every process that looks at it.
        if let Some(h) = &w.hold
            && h.exists()
        {
            thread::sleep(POLL_INTERVAL);
            continue;
        }
        match w.pass(reg, &mut lease, stop) {
            Ok(()) => {
                crate::metrics::counters::store_ok(crate::store::sqlite::now_millis());
                if reg.set_healthy(true) {
                    warn!("store readable again: writes allowed by status");
                }
            }
            Err(e) => {
                w.store = None;
                if reg.set_healthy(false) {
                    error!("store unavailable, refusing writes until it recovers: {e}");
                }
            }
        }
        send_invalidations(reg, notifier, dev.as_fd());
        thread::sleep(POLL_INTERVAL);
    }
    // A clean unmount: no command waits for this mount any more.
    let gone = match &w.store {
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

/// The SQLite watcher's state between passes (see [`watch`]).
struct Watcher<'a> {
    db: &'a Path,
    store_id: &'a str,
    /// The connection it reads through, and the (device, inode) of the
    /// database file it opened; None after a failure (reopened next pass).
    store: Option<(SqliteStore, (u64, u64))>,
    /// The change token last applied.
    last: Option<u64>,
    last_full: std::time::Instant,
    last_check: std::time::Instant,
    /// [`WATCHER_HOLD_ENV`], if set.
    hold: Option<PathBuf>,
}

impl Watcher<'_> {
    /// One pass: the health check when due, (re)opening the store, applying
    /// what changed, and confirming the view (which keeps the lease).
    fn pass(
        &mut self,
        reg: &Registry,
        lease: &mut MountLease,
        stop: &AtomicBool,
    ) -> crate::store::Result<()> {
        // What this pass confirms is the store as read from here on.
        let began = clock();
        let (db, store_id) = (self.db, self.store_id);
        if self.store.is_some() && self.last_check.elapsed() >= HEALTH_CHECK {
            self.last_check = std::time::Instant::now();
            let same = self
                .store
                .as_ref()
                .is_some_and(|(_, id)| file_id(db).ok() == Some(*id));
            if !same {
                // Replaced or gone: reopen below (or fail closed).
                self.store = None;
            } else {
                let fresh = SqliteStore::open_existing(db, WATCH_BUSY_TIMEOUT)?;
                fresh.check_readable()?;
                check_store_id(&fresh, db, store_id)?;
            }
        }
        let mut full = self.last_full.elapsed() >= FULL_REFRESH;
        if self.store.is_none() {
            let id = file_id(db)
                .map_err(|e| crate::store::StoreError::Io(db.display().to_string(), e))?;
            let s = SqliteStore::open_existing(db, WATCH_BUSY_TIMEOUT)?;
            check_store_id(&s, db, store_id)?;
            self.store = Some((s, id));
            self.last_check = std::time::Instant::now();
            full = true;
        }
        let (s, _) = self.store.as_ref().expect("opened above");
        let tok = s.change_token()?;
        if full || self.last != Some(tok) {
            if full {
                reg.refresh(s)?;
                self.last_full = std::time::Instant::now();
            } else {
                reg.sync(s)?;
            }
            self.last = Some(tok);
        }
        // Confirms what is applied and drained (when that changed, and
        // to keep the lease); a lapsed lease means this mount may have
        // missed changes others no longer wait for: reread everything
        // before registering again.
        match lease.confirm(s, reg, began) {
            Ok(true) => Ok(()),
            Ok(false) => reread_after_lapse(s, reg, lease, self.hold.as_deref(), stop),
            // Locked by a long transaction: the view read above is
            // current, but cannot be confirmed; the lease runs on, and
            // past it writes are refused.
            Err(e) if e.is_busy() => {
                log::debug!("confirming this mount's view: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// This mount's lease lapsed: registers again, rereads everything, then
/// confirms that read. `hold` is the [`WATCHER_HOLD_ENV`] test hook.
fn reread_after_lapse(
    s: &SqliteStore,
    reg: &Registry,
    lease: &mut MountLease,
    hold: Option<&Path>,
    stop: &AtomicBool,
) -> crate::store::Result<()> {
    warn!("this mount's lease lapsed: rereading the store before serving writes again");
    // Live again first, then the read, then its confirmation: a change a
    // command committed while this mount was counted gone is in the read
    // (see `MountLease::register`).
    lease.register(s, reg)?;
    let again = clock();
    reg.refresh(s)?;
    if let Some(h) = hold {
        // Test hook: held between the reread and its confirmation while
        // `HOLD.reread` exists.
        let mut p = h.as_os_str().to_owned();
        p.push(".reread");
        while Path::new(&p).exists() && !stop.load(Ordering::Acquire) {
            thread::sleep(POLL_INTERVAL);
        }
    }
    // Lapsed again already (a starved host): the next pass starts over;
    // writes stay refused meanwhile.
    lease.confirm(s, reg, again)?;
    Ok(())
}
