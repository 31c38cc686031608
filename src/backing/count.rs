//! Counting a vfolder's tree before a job works on it: entries and bytes,
//! by file descriptor (never following a symlink, never crossing into
//! another filesystem: a mount point counts as one entry, as the copy
//! makes it one empty directory). The totals a progress bar measures
//! against, and the size `list` and `show` print.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::copy::CopyStats;
use super::sys;

/// The count stops (None) below this depth rather than hold more open
/// directories: totals are a help, not worth running out of descriptors.
pub const MAX_DEPTH: usize = 512;

/// Counts the entries below directory `root` (opened `O_RDONLY |
/// O_DIRECTORY`) and the apparent size of its regular files (a file with
/// several names once). None if `stop` was set meanwhile, or the tree is
/// deeper than [`MAX_DEPTH`]; an entry that vanishes meanwhile is skipped.
/// One `getdents` and one `fstatat` per entry: cheap beside copying or
/// removing the same entries.
pub fn count_tree(root: BorrowedFd<'_>, stop: &AtomicBool) -> io::Result<Option<CopyStats>> {
    let root_dev = sys::fstat(root)?.st_dev;
    let mut stats = CopyStats::default();
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    // Each level: its fd and the subdirectories still to visit.
    let mut stack: Vec<(OwnedFd, Vec<CString>)> = Vec::new();
    let first = sys::reopen(root, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let subdirs = scan(first.as_fd(), root_dev, &mut stats, &mut linked)?;
    stack.push((first, subdirs));
    while let Some((fd, subdirs)) = stack.last_mut() {
        if stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(name) = subdirs.pop() else {
            stack.pop();
            continue;
        };
        let child = match sys::openat(fd.as_fd(), &name, flags, 0) {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
            Err(e) => return Err(e),
        };
        if stack.len() >= MAX_DEPTH {
            return Ok(None);
        }
        let below = scan(child.as_fd(), root_dev, &mut stats, &mut linked)?;
        stack.push((child, below));
    }
    Ok(Some(stats))
}

/// Counts one directory's entries; returns its subdirectories on the same
/// filesystem (to descend into).
fn scan(
    dir: BorrowedFd<'_>,
    root_dev: u64,
    stats: &mut CopyStats,
    linked: &mut HashSet<(u64, u64)>,
) -> io::Result<Vec<CString>> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut subdirs = Vec::new();
    loop {
        let n = sys::getdents(dir, &mut buf)?;
        if n == 0 {
            return Ok(subdirs);
        }
        let names: Vec<Vec<u8>> = sys::parse_dirents(&buf[..n])
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| e.name.to_vec())
            .collect();
        for name in names {
            let Ok(c) = CString::new(name) else { continue };
            let st = match sys::fstatat(dir, &c, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            stats.entries += 1;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR if st.st_dev == root_dev => subdirs.push(c),
                libc::S_IFREG if st.st_nlink <= 1 || linked.insert((st.st_dev, st.st_ino)) => {
                    stats.bytes += st.st_size as u64;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_and_bytes_once_per_inode() {
        let dir = std::env::temp_dir().join(format!("vfolderfs-count-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), vec![1u8; 1000]).unwrap();
        std::fs::hard_link(dir.join("a/b/f"), dir.join("a/g")).unwrap();
        std::fs::write(dir.join("h"), b"xyz").unwrap();
        std::os::unix::fs::symlink("h", dir.join("l")).unwrap();
        let fd: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        let s = count_tree(fd.as_fd(), &AtomicBool::new(false))
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // a, a/b, a/b/f, a/g, h, l
        assert_eq!(s.entries, 6);
        assert_eq!(s.bytes, 1003);
    }
}
