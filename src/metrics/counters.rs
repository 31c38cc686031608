//! The counters the request path and the watcher update. Each update is one
//! or two relaxed atomic additions on a static array entry.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::status::Status;

/// The FUSE operations counted, in the order of [`OPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum FuseOp {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

/// The operations' names (the `op` label), indexed by `FuseOp as usize`.
pub const OPS: [&str; 33] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
    "lseek",
    "copy_file_range",
];

/// Errnos counted one by one (larger ones are counted as errno 0).
pub const MAX_ERRNO: usize = 134;

/// Upper bounds (seconds) of the propagation delay histogram's buckets.
pub const DELAY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub(super) static REQUESTS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];
pub(super) static ERRORS: [[AtomicU64; MAX_ERRNO]; OPS.len()] =
    [const { [const { AtomicU64::new(0) }; MAX_ERRNO] }; OPS.len()];
pub(super) static REFUSED: [AtomicU64; Status::ALL.len()] =
    [const { AtomicU64::new(0) }; Status::ALL.len()];
pub(super) static STATUS_CHANGES: AtomicU64 = AtomicU64::new(0);
pub(super) static URING_REQUESTS: AtomicU64 = AtomicU64::new(0);
pub(super) static URING_QUEUES: AtomicU64 = AtomicU64::new(0);
pub(super) static DELAY_COUNTS: [AtomicU64; DELAY_BUCKETS.len()] =
    [const { AtomicU64::new(0) }; DELAY_BUCKETS.len()];
pub(super) static DELAY_SUM_MICROS: AtomicU64 = AtomicU64::new(0);
pub(super) static STORE_LAST_OK_MILLIS: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// The operation this request thread serves now (for its errors).
    static CURRENT: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// A request of `op` arrived on this thread.
#[inline]
pub fn request(op: FuseOp) {
    REQUESTS[op as usize].fetch_add(1, Ordering::Relaxed);
    CURRENT.with(|c| c.set(op as u8));
}

/// The operation this thread serves (for a job handed to another thread).
#[inline]
pub fn current() -> u8 {
    CURRENT.with(|c| c.get())
}

/// Makes this thread serve `op` (as returned by [`current`]).
#[inline]
pub fn set_current(op: u8) {
    CURRENT.with(|c| c.set(op));
}

/// The request this thread serves fails with `errno`.
#[inline]
pub fn error(errno: i32) {
    let op = current() as usize;
    if op < OPS.len() {
        let e = usize::try_from(errno)
            .ok()
            .filter(|e| *e < MAX_ERRNO)
            .unwrap_or(0);
        ERRORS[op][e].fetch_add(1, Ordering::Relaxed);
    }
}

/// A change was refused because of the vfolder's `status`.
#[inline]
pub fn refused(status: Status) {
    REFUSED[status as usize].fetch_add(1, Ordering::Relaxed);
}

/// A status change was applied by this mount, `delay_ms` after the store
/// recorded it.
pub fn status_change(delay_ms: i64) {
    STATUS_CHANGES.fetch_add(1, Ordering::Relaxed);
    let secs = delay_ms.max(0) as f64 / 1000.0;
    DELAY_SUM_MICROS.fetch_add(delay_ms.max(0) as u64 * 1000, Ordering::Relaxed);
    if let Some(i) = DELAY_BUCKETS.iter().position(|b| secs <= *b) {
        DELAY_COUNTS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The store was read successfully at `now_ms` (milliseconds since the epoch).
pub fn store_ok(now_ms: i64) {
    STORE_LAST_OK_MILLIS.store(now_ms, Ordering::Relaxed);
}

/// A request arrived on an io_uring queue (`transport::uring`).
#[inline]
pub fn uring_request() {
    URING_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// How many io_uring queues serve requests (0: the mount is on /dev/fuse).
pub fn uring_queues(n: u64) {
    URING_QUEUES.store(n, Ordering::Relaxed);
}
