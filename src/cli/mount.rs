//! `vfolderfs mount`: its arguments, the `-o` options, and the mount(8)
//! helper form (`mount.vfolderfs STORE MOUNTPOINT -o OPTS`), turned into the
//! daemon's plain [`MountArgs`].

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fuser::MountOption;

use super::{Cli, CliError, Command};
use crate::daemon::{self, MountArgs, default_threads};
use crate::fs::FsConfig;
use crate::fs::caching::{CacheConfig, Ttl};
use crate::layout::Layout;
use crate::workers::pool::PoolConfig;

/// Arguments of `vfolderfs mount`.
#[derive(Args, Debug, Clone)]
pub struct MountCmd {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground instead of returning once the mount is ready.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Request-handling threads (default: one per CPU, 2 to 16).
    #[arg(long, default_value_t = default_threads())]
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

/// The refusal of a per-mount trash retention: one mount's setting used to
/// purge the whole store's trash.
fn retention_is_store_wide(v: &str) -> String {
    format!(
        "the trash retention is a store-wide setting, not a mount option: \
         `vfolderfs retention {v}` sets it for every mount of the store"
    )
}

/// Builds the daemon's arguments from the command line, parsing `-o`
/// options (a refusal is the message of a usage error).
pub fn mount_args(layout: Layout, m: &MountCmd) -> Result<MountArgs, String> {
    let mut a = MountArgs {
        layout,
        mountpoint: m.mountpoint.clone(),
        foreground: m.foreground,
        threads: m.threads.max(1),
        allow_other: m.allow_other,
        suid: false,
        dev: false,
        read_only: false,
        extra: Vec::new(),
        fs: FsConfig::default(),
        log_file: None,
        metrics_file: None,
        metrics_listen: None,
        lease: crate::enforce::DEFAULT_LEASE,
        purge: PoolConfig {
            workers: m.purge_workers.max(1),
            ..PoolConfig::default()
        },
    };
    if m.io_uring {
        a.fs.io_uring = Some(Default::default());
    }
    if let Some(v) = &m.trash_retention {
        return Err(retention_is_store_wide(v));
    }
    for opt in m.options.iter().flat_map(|o| o.split(',')) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if k.starts_with("x-") || k == "comment" {
            // fstab annotations for systemd and others.
            continue;
        }
        apply_option(&mut a, k, v)?;
    }
    Ok(a)
}

/// Applies one `-o` option `k` (with its value `v`, if it has one).
fn apply_option(a: &mut MountArgs, k: &str, v: Option<&str>) -> Result<(), String> {
    let num = |v: Option<&str>| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("option {k} needs a number"))
    };
    match k {
        ""
        | "relatime"
        | "atime"
        | "strictatime"
        | "async"
        | "defaults"
        | "default_permissions"
        | "auto"
        | "noauto"
        | "_netdev"
        | "nofail"
        | "user"
        | "nouser" => {}
        "ro" => a.read_only = true,
        "rw" => a.read_only = false,
        "allow_other" => a.allow_other = true,
        "suid" => a.suid = true,
        "nosuid" => a.suid = false,
        "dev" => a.dev = true,
        "nodev" => a.dev = false,
        "noatime" => a.extra.push(MountOption::NoAtime),
        "noexec" => a.extra.push(MountOption::NoExec),
        "exec" => a.extra.push(MountOption::Exec),
        "threads" => a.threads = num(v)?.clamp(1, 64) as usize,
        "ttl" => {
            a.fs.cache = CacheConfig::all(Ttl::Fixed(Duration::from_millis(num(v)?.min(3_600_000))))
        }
        "attr_timeout" | "entry_timeout" | "negative_timeout" => {
            let t = Ttl::parse(v.unwrap_or_default()).map_err(|e| format!("option {k}: {e}"))?;
            match k {
                "attr_timeout" => a.fs.cache.attr = t,
                "entry_timeout" => a.fs.cache.entry = t,
                _ => a.fs.cache.negative = t,
            }
        }
        "nopassthrough" => a.fs.passthrough = false,
        "io_uring" => a.fs.io_uring = Some(Default::default()),
        "dir_fds" => a.fs.dir_fds = Some(num(v)?.clamp(16, 1 << 24) as usize),
        "foreground" => a.foreground = true,
        "log" => a.log_file = v.map(PathBuf::from),
        "metrics_file" => a.metrics_file = v.map(PathBuf::from),
        "metrics_listen" => {
            a.metrics_listen = Some(crate::metrics::export::parse_listen(v.unwrap_or_default())?)
        }
        "purge_workers" => a.purge.workers = num(v)?.clamp(1, 64) as usize,
        "trash_retention" => return Err(retention_is_store_wide(v.unwrap_or_default())),
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
    Ok(())
}

/// `mount MOUNTPOINT [-o OPTS]`: mounts the store (see [`crate::daemon`]).
pub(super) fn run(layout: Layout, m: &MountCmd) -> Result<i32, CliError> {
    let args = mount_args(layout, m).map_err(CliError::MountOption)?;
    daemon::mount(args)?;
    Ok(0)
}

/// Whether `vfolderfs` was called as a mount helper, `vfolderfs STORE
/// MOUNTPOINT [-o OPTS]`: so mount.fuse3 runs it for `mount -t
/// fuse.vfolderfs STORE MOUNTPOINT` and `vfolderfs#STORE` fstab lines. The
/// first argument is then a path (it has a `/`), never a subcommand name.
pub fn is_helper_call(args: &[OsString]) -> bool {
    args.get(1)
        .is_some_and(|a| !a.as_bytes().starts_with(b"-") && a.as_bytes().contains(&b'/'))
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
            trash_retention: None,
            io_uring: false,
            options: opts,
        }),
    })
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
