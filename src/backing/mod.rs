//! Backing-store operations: everything that touches a vfolder's backing
//! directory goes through file descriptors from here (`openat`-family calls,
//! `O_NOFOLLOW`, `openat2` with `RESOLVE_BENEATH`), never through path strings
//! that a symlink could redirect.

pub mod copy;
pub mod count;
pub mod creds;
pub mod dirents;
pub mod error;
pub mod handle;
pub mod remove;
pub mod sys;
