//! The FUSE layer's error type and its one mapping to errno.

use std::io;

use fuser::Errno;

use crate::name::NameError;
use crate::status::Status;
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug)]
pub enum FsError {
    /// A backing-store system call failed.
    Io(io::Error),
    /// The store refused or failed.
    Store(StoreError),
    /// The vfolder's status does not allow changes.
    ReadOnly(Status),
    /// The vfolder's status does not allow reading (its data is gone).
    Gone,
    /// No such entry.
    NotFound,
    /// Not allowed at this place (files at the root, writes in `.trash`).
    NotPermitted,
    /// Crosses vfolders.
    CrossVfolder,
    /// A name that the root refuses.
    BadName(NameError),
    /// Unknown file handle or inode.
    Stale,
    /// An inode or handle of a copy the vfolder has since moved away from
    /// (a relocation across filesystems): `ESTALE`, as NFS does, so the
    /// kernel looks the path up afresh and reaches the new copy.
    Moved,
    /// The vfolder is not empty (rmdir at the root).
    NotEmpty,
    /// Not supported here.
    Invalid,
    /// A write open of a file that readers hold in kernel passthrough mode.
    PassthroughBusy,
    /// A mount point inside a backing directory (never crossed).
    MountInside,
    /// No such name, in a place where the kernel may cache the miss.
    CacheableMiss,
    /// No such extended attribute (answered by the daemon: the virtual
    /// directories, the vfolder id outside a vfolder's root).
    NoAttribute,
    /// Extended attributes of this kind are not supported here (the SELinux
    /// label on a host without SELinux).
    AttributeUnsupported,
    /// The caller's buffer is too small for a value the daemon answers.
    TooSmall,
}

impl FsError {
    /// The errno a caller sees; counted in the metrics as an error of the
    /// request this thread serves (and, for [`FsError::ReadOnly`], as a
    /// change refused by that status).
    pub fn errno(&self) -> Errno {
        let e = self.code();
        if let FsError::ReadOnly(s) = self {
            crate::metrics::counters::refused(*s);
        }
        // What the daemon answers about attributes by itself (no such
        // attribute here, none of this kind, a buffer too small for the
        // value it knows) is an answer, not a failed request.
        if !matches!(
            self,
            FsError::NoAttribute | FsError::AttributeUnsupported | FsError::TooSmall
        ) {
            crate::metrics::counters::error(e.code());
        }
        e
    }

    fn code(&self) -> Errno {
        match self {
            FsError::Io(e) => Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)),
            FsError::Store(e) => match e {
                StoreError::NotFound(_) | StoreError::Ambiguous { .. } => Errno::ENOENT,
                StoreError::NameTaken(_) => Errno::EEXIST,
                StoreError::Refused { .. } | StoreError::Attached { .. } => Errno::EBUSY,
                StoreError::ClaimLost { .. } => Errno::EBUSY,
                StoreError::TargetTaken(_) => Errno::EEXIST,
                StoreError::InvalidName(_, n) => FsError::BadName(n.clone()).code(),
                // Failing closed: the store could not decide.
                StoreError::Db(..) if e.is_busy() => Errno::EAGAIN,
                StoreError::TooNew { .. }
                | StoreError::Corrupt(_)
                | StoreError::Db(..)
                | StoreError::Pg(..)
                | StoreError::Connect(..)
                | StoreError::BadConfig(_)
                | StoreError::Io(..)
                | StoreError::Os(..)
                | StoreError::Missing(_)
                | StoreError::NotEmpty(_)
                | StoreError::Foreign { .. }
                | StoreError::Unconfirmed { .. }
                | StoreError::Volume(_)
                | StoreError::LoosePath { .. }
                | StoreError::Pinned { .. }
                | StoreError::OldCopyPending { .. } => Errno::EIO,
            },
            FsError::ReadOnly(_) => Errno::EROFS,
            FsError::Gone | FsError::NotFound | FsError::CacheableMiss => Errno::ENOENT,
            FsError::NotPermitted => Errno::EPERM,
            FsError::CrossVfolder => Errno::EXDEV,
            FsError::BadName(NameError::TooLong(_)) => Errno::ENAMETOOLONG,
            FsError::BadName(_) => Errno::EINVAL,
            FsError::Stale => Errno::EBADF,
            FsError::Moved => Errno::ESTALE,
            FsError::NotEmpty => Errno::ENOTEMPTY,
            FsError::Invalid => Errno::EINVAL,
            FsError::PassthroughBusy => Errno::ETXTBSY,
            FsError::MountInside => Errno::EACCES,
            FsError::NoAttribute => Errno::ENODATA,
            FsError::AttributeUnsupported => Errno::EOPNOTSUPP,
            FsError::TooSmall => Errno::ERANGE,
        }
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Store(e)
    }
}

/// Result type of the FUSE layer.
pub type FsResult<T> = Result<T, FsError>;
