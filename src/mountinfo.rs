//! Reading `/proc/.../mountinfo`: what is mounted where, in a mount namespace.

use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount, as far as vfolderfs needs it.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// The mount id (field 1; `statx`'s `stx_mnt_id`).
    pub id: u64,
    /// The directory of its filesystem that is mounted (`/` for a whole
    /// filesystem, the bound directory for a bind mount).
    pub root: PathBuf,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Filesystem type (`fuse`, `ext4`, ...).
    pub fstype: String,
    /// Mount source (for a vfolderfs mount: its store directory).
    pub source: String,
}

impl MountEntry {
    /// Whether this is a FUSE mount.
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses a mountinfo file (`/proc/self/mountinfo`, `/proc/PID/mountinfo`).
pub fn read(path: &Path) -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut pre = pre.split(' ');
            let id = pre.next()?.parse().ok()?;
            let mut pre = pre.skip(2);
            let path = |f: &str| PathBuf::from(std::ffi::OsString::from_vec(unescape(f)));
            let root = path(pre.next()?);
            let point = path(pre.next()?);
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = String::from_utf8_lossy(&unescape(post.next()?)).into_owned();
            Some(MountEntry {
                id,
                root,
                point,
                fstype,
                source,
            })
        })
        .collect())
}

/// The mounts of this process's namespace.
pub fn own() -> io::Result<Vec<MountEntry>> {
    read(Path::new("/proc/self/mountinfo"))
}

/// The topmost mount at `point` in this namespace, if any.
pub fn at(point: &Path) -> Option<MountEntry> {
    own().ok()?.into_iter().rev().find(|m| m.point == point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), b"/a b\tc\\d");
        assert_eq!(unescape("/plain"), b"/plain");
    }

    #[test]
    fn fields_are_read() {
        let dir = std::env::temp_dir().join(format!("mountinfo-test-{}", std::process::id()));
        let line = "36 35 0:31 /data /s/a\\040b rw,nosuid,nodev shared:1 - fuse /st\\040ore rw\n";
        std::fs::write(&dir, line).unwrap();
        let m = read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].id, 36);
        assert_eq!(m[0].root, Path::new("/data"));
        assert_eq!(m[0].point, Path::new("/s/a b"));
        assert_eq!(m[0].fstype, "fuse");
        assert_eq!(m[0].source, "/st ore");
    }
}
