//! Reading a directory with `getdents64`: the raw call and the parser of
//! the `linux_dirent64` records it fills a buffer with. (Re-exported by
//! [`super::sys`], where the callers find the other system calls.)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// One entry of a `getdents64` buffer.
pub struct DirEntry<'a> {
    /// The entry's inode number.
    pub ino: u64,
    /// The cookie to seek to for the entry after this one.
    pub next_off: i64,
    /// `DT_*` type.
    pub dtype: u8,
    /// The name (no NUL).
    pub name: &'a [u8],
    /// The record's length in the buffer: the next entry starts this many
    /// bytes after this one.
    pub reclen: usize,
}

/// Reads directory entries into `buf`; returns the bytes filled (0 at the end).
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Parses the entries `getdents` put in `buf[..len]`.
pub fn parse_dirents(buf: &[u8]) -> impl Iterator<Item = DirEntry<'_>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
        if pos + 19 > buf.len() {
            return None;
        }
        let rec = &buf[pos..];
        let ino = u64::from_ne_bytes(rec[0..8].try_into().ok()?);
        let off = i64::from_ne_bytes(rec[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(rec[16..18].try_into().ok()?) as usize;
        if reclen < 19 || pos + reclen > buf.len() {
            return None;
        }
        let dtype = rec[18];
        let raw = &rec[19..reclen];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        pos += reclen;
        Some(DirEntry {
            ino,
            next_off: off,
            dtype,
            name,
            reclen,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn records_parse_with_their_lengths_and_end_at_a_short_tail() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["a", "bb", "ccc"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let f = std::fs::File::open(dir.path()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = getdents(f.as_fd(), &mut buf).unwrap();
        let mut pos = 0;
        let mut names = Vec::new();
        for e in parse_dirents(&buf[..n]) {
            // Each record starts where the previous one's length says.
            let again = parse_dirents(&buf[pos..n]).next().unwrap();
            assert_eq!(again.name, e.name);
            pos += e.reclen;
            names.push(String::from_utf8(e.name.to_vec()).unwrap());
        }
        assert_eq!(pos, n);
        names.sort();
        assert_eq!(names, [".", "..", "a", "bb", "ccc"]);
        // A truncated record is not read.
        assert!(parse_dirents(&buf[..18]).next().is_none());
    }
}
