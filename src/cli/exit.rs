//! Exit statuses and the error report: what kind of failure an error is,
//! the status it exits with, the next step its message suggests, and the
//! JSON error object printed on stderr under `--json`.

use serde_json::{Value, json};

use super::CliError;
use crate::status::{Action, Op};
use crate::store::StoreError;

/// Any failure not covered by a more specific status.
pub const EXIT_FAILED: i32 = 1;
/// A usage error: bad arguments (clap's), a refused name or session id.
pub const EXIT_USAGE: i32 = 2;
/// There is no store at the path (it was never made with `init`, or its
/// database is gone).
pub const EXIT_NO_STORE: i32 = 3;
/// A change was made but not every live mount confirmed it within the time
/// allowed (the change stays made).
pub const EXIT_UNCONFIRMED: i32 = 4;
/// No vfolder (or attachment, volume) by that name or id.
pub const EXIT_NOT_FOUND: i32 = 5;
/// The name is taken by a live vfolder (or the target by an attachment).
pub const EXIT_EXISTS: i32 = 6;
/// The vfolder's status does not allow the operation.
pub const EXIT_REFUSED: i32 = 7;
/// The vfolder is attached to a session, or held by a job of another
/// process, or the database stayed locked past the busy timeout.
pub const EXIT_BUSY: i32 = 8;
/// The store cannot be read or written: a corrupt, foreign, newer or
/// unreadable database, or an I/O error on the store or a data volume.
pub const EXIT_UNAVAILABLE: i32 = 9;
/// `fsck` found problems (left after `--repair`).
pub const EXIT_PROBLEMS: i32 = 10;
/// A volume operation was refused or named no volume: a directory that
/// cannot be a volume, a volume in use, no such volume, a relocation to the
/// volume a vfolder is on.
pub const EXIT_VOLUME: i32 = 11;
/// The job was cancelled (`vfolderfs cancel`, Ctrl-C or `SIGTERM` on a
/// foreground job) and ended the cancelled way: a clone or a relocation
/// rolled back, a purge stopped (resumable). What `wait` returns for such
/// a job, and the foreground command that was interrupted.
pub const EXIT_CANCELLED: i32 = 12;

/// What kind of failure an error is; each has its own exit status and a
/// stable name in the JSON error object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`EXIT_FAILED`].
    Failed,
    /// [`EXIT_USAGE`].
    Usage,
    /// [`EXIT_NO_STORE`].
    NoStore,
    /// [`EXIT_UNCONFIRMED`].
    Unconfirmed,
    /// [`EXIT_NOT_FOUND`].
    NotFound,
    /// [`EXIT_EXISTS`].
    Exists,
    /// [`EXIT_REFUSED`].
    Refused,
    /// [`EXIT_BUSY`].
    Busy,
    /// [`EXIT_UNAVAILABLE`].
    Unavailable,
    /// [`EXIT_PROBLEMS`].
    Problems,
    /// [`EXIT_VOLUME`].
    Volume,
    /// [`EXIT_CANCELLED`].
    Cancelled,
}

impl Kind {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Kind::Failed => EXIT_FAILED,
            Kind::Usage => EXIT_USAGE,
            Kind::NoStore => EXIT_NO_STORE,
            Kind::Unconfirmed => EXIT_UNCONFIRMED,
            Kind::NotFound => EXIT_NOT_FOUND,
            Kind::Exists => EXIT_EXISTS,
            Kind::Refused => EXIT_REFUSED,
            Kind::Busy => EXIT_BUSY,
            Kind::Unavailable => EXIT_UNAVAILABLE,
            Kind::Problems => EXIT_PROBLEMS,
            Kind::Volume => EXIT_VOLUME,
            Kind::Cancelled => EXIT_CANCELLED,
        }
    }

    /// The name in the JSON error object (`"kind"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Usage => "usage",
            Kind::NoStore => "no_store",
            Kind::Unconfirmed => "unconfirmed",
            Kind::NotFound => "not_found",
            Kind::Exists => "exists",
            Kind::Refused => "refused",
            Kind::Busy => "busy",
            Kind::Unavailable => "unavailable",
            Kind::Problems => "problems",
            Kind::Volume => "volume",
            Kind::Cancelled => "cancelled",
        }
    }
}

/// The kind of a store error.
pub fn store_kind(e: &StoreError) -> Kind {
    match e {
        StoreError::NotFound(_) => Kind::NotFound,
        StoreError::NameTaken(_) | StoreError::TargetTaken(_) => Kind::Exists,
        StoreError::Refused { .. } | StoreError::Pinned { .. } => Kind::Refused,
        StoreError::InvalidName(..) | StoreError::Ambiguous { .. } => Kind::Usage,
        StoreError::Attached { .. }
        | StoreError::ClaimLost { .. }
        | StoreError::OldCopyPending { .. } => Kind::Busy,
        e if e.is_busy() => Kind::Busy,
        StoreError::Missing(_) => Kind::NoStore,
        StoreError::Unconfirmed { .. } => Kind::Unconfirmed,
        StoreError::TooNew { .. }
        | StoreError::Corrupt(_)
        | StoreError::Db(..)
        | StoreError::Io(..)
        | StoreError::Os(..)
        | StoreError::Foreign { .. }
        | StoreError::Pg(..)
        | StoreError::Connect(..) => Kind::Unavailable,
        StoreError::BadConfig(_) => Kind::Usage,
        StoreError::NotEmpty(_) | StoreError::LoosePath { .. } => Kind::Failed,
        StoreError::Volume(_) => Kind::Volume,
    }
}

/// The vfolder a store error is about, when it names one.
pub fn store_vfolder(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::NotFound(n)
        | StoreError::NameTaken(n)
        | StoreError::InvalidName(n, _)
        | StoreError::Refused { name: n, .. }
        | StoreError::Attached { name: n, .. }
        | StoreError::Unconfirmed { name: n, .. }
        | StoreError::Pinned { name: n, .. }
        | StoreError::OldCopyPending { name: n, .. } => Some(n),
        _ => None,
    }
}

/// What to do next, for errors where that is not obvious from the message.
pub fn store_hint(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Refused {
            name,
            status,
            op: Action::Transition(op),
            ..
        } => match (op, status) {
            (Op::Purge, s) if s.is_deletable() => Some(format!(
                "a vfolder is purged from the trash: move it there first with \
                 `vfolderfs delete {}`",
                quote(name)
            )),
            (Op::Restore, s) if s.is_visible() => {
                Some("it is not in the trash (`vfolderfs list --all`)".into())
            }
            (Op::Delete, s) if s.is_restorable() => Some(format!(
                "it is in the trash already; `vfolderfs purge {}` destroys it",
                quote(name)
            )),
            (_, s) if s.is_cloning() || s.is_relocating() || s.is_purging() => Some(format!(
                "a job holds it; `vfolderfs show {}` shows its progress",
                quote(name)
            )),
            _ => None,
        },
        StoreError::Attached { name, .. } => Some(format!(
            "`vfolderfs sessions` lists its attachments; `vfolderfs detach --session ID {}` \
             detaches one, and `vfolderfs sessions --prune` clears those whose session is gone",
            quote(name)
        )),
        StoreError::Missing(_) | StoreError::Unconfirmed { .. } => None,
        _ => None,
    }
}

/// A name as a shell word the user can paste.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "-_.~+@%:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The JSON error object printed on stderr under `--json`.
pub fn error_json(e: &CliError) -> Value {
    json!({"error": {
        "kind": e.kind().as_str(),
        "message": e.to_string(),
        "vfolder": e.vfolder(),
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            Kind::Failed,
            Kind::Usage,
            Kind::NoStore,
            Kind::Unconfirmed,
            Kind::NotFound,
            Kind::Exists,
            Kind::Refused,
            Kind::Busy,
            Kind::Unavailable,
            Kind::Problems,
            Kind::Volume,
            Kind::Cancelled,
        ];
        let codes: std::collections::BTreeSet<i32> = all.iter().map(|k| k.code()).collect();
        let names: std::collections::BTreeSet<&str> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(codes.len(), all.len());
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn store_errors_map_to_their_kinds_and_hints() {
        use crate::status::Status;
        let attached = StoreError::Attached {
            name: "ds".into(),
            count: 1,
            what: "delete",
        };
        assert_eq!(store_kind(&attached), Kind::Busy);
        assert_eq!(store_vfolder(&attached), Some("ds"));
        // An action without a path exits like a path's I/O error.
        let spawn = StoreError::Os("starting a worker", std::io::ErrorKind::WouldBlock.into());
        let path = StoreError::Io("/s".into(), std::io::ErrorKind::WouldBlock.into());
        assert_eq!(store_kind(&spawn), store_kind(&path));
        assert!(spawn.to_string().starts_with("starting a worker: "));
        assert!(
            store_hint(&attached)
                .unwrap()
                .contains("vfolderfs sessions --prune")
        );
        let purge_live = StoreError::Refused {
            name: "my data".into(),
            id: "1".into(),
            status: Status::Ready,
            op: Op::Purge.into(),
        };
        assert_eq!(store_kind(&purge_live), Kind::Refused);
        assert!(
            store_hint(&purge_live)
                .unwrap()
                .contains("`vfolderfs delete 'my data'`")
        );
        assert_eq!(
            store_kind(&StoreError::NotFound("x".into())),
            Kind::NotFound
        );
        assert_eq!(store_kind(&StoreError::NameTaken("x".into())), Kind::Exists);
        assert_eq!(store_kind(&StoreError::Missing("/s".into())), Kind::NoStore);
        assert_eq!(
            store_kind(&StoreError::Corrupt("?".into())),
            Kind::Unavailable
        );
    }

    #[test]
    fn quoting_for_the_shell() {
        assert_eq!(quote("data-1"), "data-1");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
