//! The vfolder status model: the one place that knows the statuses, the
//! transition table and the access sets derived from a status.
//!
//! Nothing outside this module compares statuses by hand: callers ask
//! [`Status::is_writable`] and friends, or name an [`Op`] and let
//! [`Op::from_statuses`] / [`Op::to_status`] decide.

use std::fmt;
use std::str::FromStr;

/// Lifecycle status of a vfolder, stored as its exact string in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    /// Live and writable.
    Ready = 0,
    /// A long operation (relocation) runs on it: readable, not writable.
    Performing = 1,
    /// A clone from or into it runs: readable, not writable.
    Cloning = 2,
    /// In the trash, restorable.
    DeletePending = 3,
    /// Its data is being removed.
    DeleteOngoing = 4,
    /// Its data is gone; the row is kept for the record.
    DeleteComplete = 5,
    /// Removal failed; kept with its error, retryable.
    DeleteError = 6,
}

impl Status {
    /// Every status, in a fixed order (used by tests and documentation).
    pub const ALL: [Status; 7] = [
        Status::Ready,
        Status::Performing,
        Status::Cloning,
        Status::DeletePending,
        Status::DeleteOngoing,
        Status::DeleteComplete,
        Status::DeleteError,
    ];

    /// The exact string stored in the database and printed by the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Performing => "performing",
            Status::Cloning => "cloning",
            Status::DeletePending => "delete-pending",
            Status::DeleteOngoing => "delete-ongoing",
            Status::DeleteComplete => "delete-complete",
            Status::DeleteError => "delete-error",
        }
    }

    /// Decodes the compact form used by in-memory caches (`self as u8`).
    pub const fn from_u8(v: u8) -> Option<Status> {
        if (v as usize) < Status::ALL.len() {
            Some(Status::ALL[v as usize])
        } else {
            None
        }
    }

    /// Listed at the mount root (a live vfolder).
    pub const fn is_visible(self) -> bool {
        matches!(self, Status::Ready | Status::Performing | Status::Cloning)
    }

    /// Listed in the mount's `.trash` directory.
    pub const fn is_in_trash(self) -> bool {
        matches!(self, Status::DeletePending | Status::DeleteOngoing)
    }

    /// Its data may be read through the mount.
    pub const fn is_readable(self) -> bool {
        matches!(
            self,
            Status::Ready
                | Status::Performing
                | Status::Cloning
                | Status::DeletePending
                | Status::DeleteOngoing
        )
    }

    /// Its data and metadata may be changed through the mount.
    pub const fn is_writable(self) -> bool {
        matches!(self, Status::Ready)
    }

    /// It may be bind-mounted into a session.
    pub const fn is_mountable(self) -> bool {
        matches!(self, Status::Ready)
    }

    /// It may be bind-mounted into a session read-only: ready, or cloning
    /// (a clone's source is readable and stays put; its target is refused
    /// by the store, which tells the two apart). Not performing: a
    /// relocation's switch moves the data from under a bind, so attaching
    /// waits for the relocation to end, and a relocation cannot start while
    /// the vfolder is attached.
    pub const fn is_mountable_read_only(self) -> bool {
        matches!(self, Status::Ready | Status::Cloning)
    }

    /// It may be moved to the trash.
    pub const fn is_deletable(self) -> bool {
        Op::Delete.allows_from(self)
    }

    /// It may be restored from the trash.
    pub const fn is_restorable(self) -> bool {
        Op::Restore.allows_from(self)
    }

    /// Its data may be purged.
    pub const fn is_purgeable(self) -> bool {
        Op::Purge.allows_from(self)
    }

    /// Its data is being removed (a purge job should be running).
    pub const fn is_purging(self) -> bool {
        matches!(self, Status::DeleteOngoing)
    }

    /// Its data has been removed.
    pub const fn is_purged(self) -> bool {
        matches!(self, Status::DeleteComplete)
    }

    /// A clone runs into or out of it.
    pub const fn is_cloning(self) -> bool {
        matches!(self, Status::Cloning)
    }

    /// A relocation runs on it.
    pub const fn is_relocating(self) -> bool {
        matches!(self, Status::Performing)
    }

    /// It may be renamed (only live vfolders have a name that must be unique).
    pub const fn is_renamable(self) -> bool {
        matches!(self, Status::Ready)
    }

    /// Counts against the unique-name rule (the partial unique index of the store).
    pub const fn holds_name(self) -> bool {
        self.is_visible()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the status names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus(pub String);

impl fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown vfolder status {:?}", self.0)
    }
}

impl std::error::Error for UnknownStatus {}

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// An operation that changes a vfolder's status; the transition table maps
/// each to the statuses it may start from and the status it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Move a live vfolder to the trash.
    Delete,
    /// Take a trashed vfolder back to ready.
    Restore,
    /// Start removing a trashed (or failed) vfolder's data.
    Purge,
    /// Removal finished.
    PurgeDone,
    /// Removal failed.
    PurgeFailed,
    /// A clone from this vfolder starts (also blocks its deletion, renaming
    /// and purging, since those need `ready`).
    CloneStart,
    /// A clone ended (done, or rolled back for its source): back to ready.
    CloneEnd,
    /// A clone failed: its target's partial data goes to the purge.
    CloneAbort,
    /// A relocation starts.
    RelocateStart,
    /// A relocation ended: back to ready.
    RelocateEnd,
}

impl Op {
    /// Every operation (used by tests and documentation).
    pub const ALL: [Op; 10] = [
        Op::Delete,
        Op::Restore,
        Op::Purge,
        Op::PurgeDone,
        Op::PurgeFailed,
        Op::CloneStart,
        Op::CloneEnd,
        Op::CloneAbort,
        Op::RelocateStart,
        Op::RelocateEnd,
    ];

    /// This operation's row of [`TRANSITIONS`].
    pub const fn row(self) -> &'static Transition {
        &TRANSITIONS[self as usize]
    }

    /// The transition table: the statuses this operation may start from.
    pub const fn from_statuses(self) -> &'static [Status] {
        self.row().from
    }

    /// The transition table: the status this operation leads to.
    pub const fn to_status(self) -> Status {
        self.row().to
    }

    /// Whether the table allows this operation from `status`.
    pub const fn allows_from(self, status: Status) -> bool {
        let from = self.from_statuses();
        let mut i = 0;
        while i < from.len() {
            if from[i] as u8 == status as u8 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether a vfolder attached to a session must refuse this operation
    /// (deleting, purging or relocating data a container is using).
    pub const fn blocked_by_attachments(self) -> bool {
        self.row().blocked_by_attachments
    }

    /// Whether the vfolder's name must be free among live vfolders afterwards
    /// (an operation that brings a vfolder back to life).
    pub const fn claims_name(self) -> bool {
        self.to_status().holds_name() && !self.from_statuses()[0].holds_name()
    }

    /// A short verb for messages ("cannot delete vfolder ...").
    pub const fn verb(self) -> &'static str {
        self.row().verb
    }

    /// The operation that ends a purge: done, or failed.
    pub const fn purge_end(failed: bool) -> Op {
        if failed {
            Op::PurgeFailed
        } else {
            Op::PurgeDone
        }
    }

    /// The operation that ends a clone for its target: done (ready), or
    /// aborted (its partial data goes to the purge).
    pub const fn clone_end(failed: bool) -> Op {
        if failed { Op::CloneAbort } else { Op::CloneEnd }
    }
}

/// One row of the transition table: an operation, the statuses it may start
/// from, the status it leads to, its verb in messages, and whether an
/// attached session blocks it.
#[derive(Debug)]
pub struct Transition {
    /// The operation (its row is `TRANSITIONS[op as usize]`).
    pub op: Op,
    /// The statuses it may start from.
    pub from: &'static [Status],
    /// The status it leads to.
    pub to: Status,
    /// A short verb for messages ("cannot delete vfolder ...").
    pub verb: &'static str,
    /// Whether a vfolder attached to a session refuses it (deleting,
    /// purging or relocating data a container is using).
    pub blocked_by_attachments: bool,
}

const fn t(
    op: Op,
    from: &'static [Status],
    to: Status,
    verb: &'static str,
    blocked_by_attachments: bool,
) -> Transition {
    Transition {
        op,
        from,
        to,
        verb,
        blocked_by_attachments,
    }
}

/// The transition table, one row per operation in [`Op`] order: every
/// status change of every vfolder is one of these.
#[rustfmt::skip]
pub static TRANSITIONS: [Transition; 10] = {
    use Status::*;
    //  operation          from                          to              verb                          attached blocks
    [
        t(Op::Delete,        &[Ready],                     DeletePending,  "delete",                     true),
        t(Op::Restore,       &[DeletePending],             Ready,          "restore",                    false),
        t(Op::Purge,         &[DeletePending, DeleteError], DeleteOngoing, "purge",                      true),
        t(Op::PurgeDone,     &[DeleteOngoing],             DeleteComplete, "complete the purge of",      false),
        t(Op::PurgeFailed,   &[DeleteOngoing],             DeleteError,    "record a purge failure of",  false),
        t(Op::CloneStart,    &[Ready],                     Cloning,        "clone",                      false),
        t(Op::CloneEnd,      &[Cloning],                   Ready,          "finish the clone of",        false),
        t(Op::CloneAbort,    &[Cloning],                   DeleteOngoing,  "abort the clone into",       false),
        t(Op::RelocateStart, &[Ready],                     Performing,     "relocate",                   true),
        t(Op::RelocateEnd,   &[Performing],                Ready,          "finish the relocation of",   false),
    ]
};

/// An operation a vfolder's status may refuse: a transition of the table,
/// or one that keeps the status (renaming, attaching into a session). Every
/// refusal by status is one `StoreError::Refused` naming its action, so
/// that what a status allows is decided here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A status transition: a row of [`TRANSITIONS`].
    Transition(Op),
    /// Renaming: only a vfolder whose name counts as live and settled.
    Rename,
    /// Attaching into a session, read-only or not. A clone's target is
    /// cloning like its source, but its data is still being copied (and an
    /// aborted clone purges it): it is refused in either mode.
    Attach {
        /// A read-only bind was asked for.
        read_only: bool,
        /// The vfolder is the target of a clone (not its source).
        clone_target: bool,
    },
}

impl Action {
    /// Whether a vfolder in `status` may undergo this action.
    pub const fn allows(self, status: Status) -> bool {
        match self {
            Action::Transition(op) => op.allows_from(status),
            Action::Rename => status.is_renamable(),
            Action::Attach {
                clone_target: true, ..
            } => false,
            Action::Attach {
                read_only: true, ..
            } => status.is_mountable_read_only(),
            Action::Attach {
                read_only: false, ..
            } => status.is_mountable(),
        }
    }

    /// A short verb for messages ("cannot rename vfolder ...").
    pub const fn verb(self) -> &'static str {
        match self {
            Action::Transition(op) => op.verb(),
            Action::Rename => "rename",
            Action::Attach { .. } => "attach",
        }
    }

    /// Why a vfolder in `status` is refused, when its status alone does not
    /// say (a clone's target; a relocation that is moving the data).
    pub const fn why(self, status: Status) -> Option<&'static str> {
        match self {
            Action::Attach {
                clone_target: true, ..
            } => Some("it is the target of a clone still copying; attach once it is ready"),
            Action::Attach { .. } if status.is_relocating() => {
                Some("a relocation runs: its data moves at the end; attach once it is ready")
            }
            _ => None,
        }
    }
}

impl From<Op> for Action {
    fn from(op: Op) -> Action {
        Action::Transition(op)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for st in Status::ALL {
            assert_eq!(st.as_str().parse::<Status>().unwrap(), st);
            assert_eq!(Status::from_u8(st as u8), Some(st));
        }
        assert!("Ready".parse::<Status>().is_err());
        assert_eq!(Status::from_u8(7), None);
    }

    #[test]
    fn access_sets() {
        use Status::*;
        let set = |f: fn(Status) -> bool| -> Vec<Status> {
            Status::ALL.into_iter().filter(|s| f(*s)).collect()
        };
        assert_eq!(set(Status::is_visible), [Ready, Performing, Cloning]);
        assert_eq!(set(Status::is_in_trash), [DeletePending, DeleteOngoing]);
        assert_eq!(
            set(Status::is_readable),
            [Ready, Performing, Cloning, DeletePending, DeleteOngoing]
        );
        assert_eq!(set(Status::is_writable), [Ready]);
        assert_eq!(set(Status::is_mountable), [Ready]);
        assert_eq!(set(Status::is_deletable), [Ready]);
        assert_eq!(set(Status::is_restorable), [DeletePending]);
        assert_eq!(set(Status::is_purgeable), [DeletePending, DeleteError]);
    }

    #[test]
    fn attachments_block_destructive_operations_only() {
        let blocked: Vec<Op> = Op::ALL
            .into_iter()
            .filter(|o| o.blocked_by_attachments())
            .collect();
        assert_eq!(blocked, [Op::Delete, Op::Purge, Op::RelocateStart]);
        let ro: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|s| s.is_mountable_read_only())
            .collect();
        assert_eq!(ro, [Status::Ready, Status::Cloning]);
    }

    #[test]
    fn the_table_has_one_row_per_operation_in_order() {
        assert_eq!(TRANSITIONS.len(), Op::ALL.len());
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i);
            assert_eq!(TRANSITIONS[i].op, op);
            assert!(!TRANSITIONS[i].from.is_empty());
        }
    }

    #[test]
    fn rename_and_attach_are_refused_by_the_same_rules_as_before() {
        let allowed = |a: Action| -> Vec<Status> {
            Status::ALL.into_iter().filter(|s| a.allows(*s)).collect()
        };
        assert_eq!(allowed(Action::Rename), [Status::Ready]);
        let attach = |read_only, clone_target| Action::Attach {
            read_only,
            clone_target,
        };
        assert_eq!(allowed(attach(false, false)), [Status::Ready]);
        assert_eq!(
            allowed(attach(true, false)),
            [Status::Ready, Status::Cloning]
        );
        assert!(allowed(attach(true, true)).is_empty());
        assert!(allowed(attach(false, true)).is_empty());
        for op in Op::ALL {
            assert_eq!(allowed(op.into()), op.from_statuses());
        }
        assert!(attach(true, true).why(Status::Cloning).is_some());
        assert!(attach(false, false).why(Status::Performing).is_some());
        assert_eq!(Action::Rename.why(Status::Performing), None);
    }

    #[test]
    fn only_restore_claims_a_name() {
        let claiming: Vec<Op> = Op::ALL.into_iter().filter(|o| o.claims_name()).collect();
        assert_eq!(claiming, [Op::Restore]);
    }
}
