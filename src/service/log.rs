//! Where a background daemon's log goes: the file of `-o log=PATH` (opened
//! before the daemon leaves the terminal, so an unusable path fails the
//! mount, and reopened on SIGHUP for log rotation), else the journal when
//! systemd gave us its stream as stderr, else nowhere.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The log file of a background daemon.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
}

impl LogFile {
    /// Opens `path` for appending (creating it `0600`), to check it is
    /// usable before the daemon detaches.
    pub fn check(path: &Path) -> io::Result<LogFile> {
        open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (Re)opens the file and puts it on stderr, where the logger writes:
    /// after a rotation (SIGHUP) the log goes on in a fresh file.
    pub fn redirect_stderr(&self) -> io::Result<()> {
        let f = open(&self.path)?;
        // SAFETY: dup2 onto this process's stderr.
        if unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

/// Whether stderr is the journal stream systemd set up for this service
/// (`$JOURNAL_STREAM` names its device and inode): then a background
/// daemon keeps logging there.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd 2 may be closed, which fstat reports.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}
