//! The vfolder store: the narrow interface everything above the database uses,
//! its record types and its error type. [`sqlite`] is the embedded backend,
//! [`postgres`] the one a cluster's nodes share.

pub mod pg_schema;
pub mod pgconf;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use std::fmt;

use crate::name::NameError;
use crate::status::{Action, Op, Status};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The trash retention of a store that never set one: 30 days.
pub const DEFAULT_TRASH_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

/// The trash retention from its stored form (`store_info`'s
/// `trash_retention_secs`: whole seconds, 0 for forever; absent: the
/// default). Both backends store it so.
pub fn retention_from_setting(v: Option<&str>) -> Result<Option<std::time::Duration>> {
    match v {
        None => Ok(Some(DEFAULT_TRASH_RETENTION)),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(secs) => Ok(Some(std::time::Duration::from_secs(secs))),
            Err(_) => Err(StoreError::Corrupt(format!(
                "the trash retention is {v:?}, not a number of seconds"
            ))),
        },
    }
}

/// The stored form of a trash retention (see [`retention_from_setting`]).
pub fn retention_setting(keep: Option<std::time::Duration>) -> String {
    keep.map_or(0, |d| d.as_secs().max(1)).to_string()
}

/// Milliseconds since the Unix epoch, as stored.
pub type Millis = i64;

/// One vfolder row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VFolder {
    /// Random UUID, lower-case hyphenated; also the backing directory's name.
    pub id: String,
    /// The user-facing name (unique among live vfolders only).
    pub name: String,
    /// Lifecycle status.
    pub status: Status,
    /// Creation time.
    pub created_at: Millis,
    /// Time of the last status change.
    pub status_changed_at: Millis,
    /// The last error recorded (a failed purge), if any.
    pub error: Option<String>,
    /// The data volume holding its backing directory.
    pub volume: String,
    /// The volume it was relocated from, while the old copy awaits removal.
    pub prev_volume: Option<String>,
    /// The vfolder it is being cloned from (while cloning).
    pub clone_src: Option<String>,
}

/// A live mount as recorded in the store (the enforcement protocol; see
/// [`crate::enforce`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRecord {
    /// Unique id of this mount instance.
    pub id: String,
    /// Host name of its node.
    pub node: String,
    /// Its daemon's process id.
    pub pid: u32,
    /// Where it is mounted.
    pub mountpoint: String,
    /// When it started.
    pub started_at: Millis,
    /// Until when it may serve writes without confirming its view again
    /// (the store's clock).
    pub lease_until: Millis,
    /// Every change of the change feed up to here is in force on it.
    pub applied_rev: u64,
    /// Vfolders whose writes from before their last status change have not
    /// finished there yet.
    pub draining: Vec<String>,
}

/// What changed in the store since a point of its change feed.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Rows inserted or changed since, any status, oldest change first.
    pub rows: Vec<VFolder>,
    /// The newest change included; pass it to the next call.
    pub rev: u64,
    /// How many rows were ever deleted (purged rows forgotten). When it
    /// moves, a copy kept from the feed must be rebuilt from every row.
    pub deletions: u64,
}

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The status before (`None` for the creation).
    pub from: Option<Status>,
    /// The status after.
    pub to: Status,
    /// When it happened.
    pub at: Millis,
    /// Who or what caused it ("cli delete", "mount rmdir", ...).
    pub cause: String,
}

/// A background job's claim on a vfolder (one job per vfolder at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The vfolder.
    pub vfolder_id: String,
    /// What the job does ("purge", "clone", ...).
    pub kind: String,
    /// Who holds it ([`crate::workers::Identity`]: "host:pid:start:boot-id:pid-ns").
    pub owner: String,
    /// Until when the claim holds unless renewed (0: released).
    pub lease_until: Millis,
    /// When the job was first claimed.
    pub started_at: Millis,
    /// How many times it was claimed (more than 1: it was resumed).
    pub claims: i64,
    /// Entries processed so far.
    pub done: u64,
    /// The job's argument (a relocation's target volume).
    pub arg: Option<String>,
    /// Bytes of file data processed so far (a copy's; 0 for a purge).
    pub bytes: u64,
    /// The work in total, when its owner counted it first (entries,
    /// bytes): what progress is measured against.
    pub total: Option<(u64, u64)>,
    /// Who asked the job to stop (`vfolderfs cancel`, a signal to the
    /// process running it in the foreground), if anyone did: its owner
    /// checks between entries and ends it the documented way (a clone or a
    /// relocation rolls back, a purge stops and waits to be resumed).
    pub cancel: Option<String>,
}

/// A vfolder's size, as last measured: at the end of a clone or a
/// relocation's copy, by a foreground job's count, or by `show --size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Bytes of file data (each multiply-linked file once).
    pub bytes: u64,
    /// Entries below its root (files, directories, links, nodes).
    pub files: u64,
    /// When it was measured.
    pub at: Millis,
}

impl Job {
    /// The claim this row grants its owner: what the fenced final steps
    /// check (see [`Claim`]).
    pub fn claim(&self) -> Claim {
        Claim {
            vfolder_id: self.vfolder_id.clone(),
            kind: self.kind.clone(),
            owner: self.owner.clone(),
            token: self.claims,
        }
    }
}

/// A job claim as it was granted, carrying its fencing token: the job
/// row's claim counter, which every takeover by another owner increments.
/// A final step of a job (a relocation's switch, removing a copy, ending a
/// purge or a clone) is made only while the row still has this owner, kind
/// and token, checked in the same transaction as the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The vfolder.
    pub vfolder_id: String,
    /// The job kind it was granted for.
    pub kind: String,
    /// Who holds it ([`crate::workers::Identity`]: "host:pid:start:boot-id:pid-ns").
    pub owner: String,
    /// The job's claim count when it was granted.
    pub token: i64,
}

/// A volume's place in tiering (see [`crate::tier`]): its tier and the
/// share of its filesystem it should keep used. A volume never set is
/// untiered: the policy leaves the vfolders on it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeTier {
    /// The volume (`default` or an added one).
    pub volume: String,
    /// Its tier (`None`: untiered).
    pub tier: Option<crate::tier::Tier>,
    /// Percent of its filesystem used above which the policy moves vfolders off it.
    pub high_watermark: Option<u8>,
    /// Percent of its filesystem used down to which the policy then moves them.
    pub low_watermark: Option<u8>,
}

/// Usage of one vfolder that a mount adds to the store in one batch: what
/// it counted since its last flush, on UTC day `day`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The vfolder.
    pub vfolder_id: String,
    /// Days since the Unix epoch (UTC) the counts belong to.
    pub day: i64,
    /// Files opened (and created).
    pub opens: u64,
    /// Bytes read through the daemon (reads through kernel passthrough are
    /// not seen by it).
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// When the mount counted it last: the vfolder's last access, to
    /// within the flush interval.
    pub at: Millis,
}

/// A vfolder's usage on one UTC day, summed over every mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDay {
    /// The vfolder.
    pub vfolder_id: String,
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    /// Files opened.
    pub opens: u64,
    /// Bytes read through the daemon.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// A vfolder pinned against automatic tier moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The vfolder.
    pub vfolder_id: String,
    /// When it was pinned.
    pub at: Millis,
    /// Why ("relocate to fast1 (uid 0)", "tier pin (uid 0)").
    pub cause: String,
}

/// A vfolder bind-mounted into a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Row id.
    pub seq: i64,
    /// The vfolder.
    pub vfolder_id: String,
    /// The session (container) id.
    pub session: String,
    /// Where it is mounted (in the session's mount namespace).
    pub target: String,
    /// Read-only bind.
    pub read_only: bool,
    /// Inode of the mount namespace the bind lives in.
    pub mnt_ns: u64,
    /// The node that namespace is on (namespace inodes mean something on
    /// their own node only).
    pub node: String,
    /// The vfolder's path in the vfolderfs mount it was bound from.
    pub source: String,
    /// When it was attached.
    pub created_at: Millis,
    /// While the bind is being made: the attaching process
    /// ([`crate::workers::Identity`]); `None` once the bind is in place.
    /// A prune keeps a pending record whose attacher may still be at work.
    pub pending: Option<String>,
}

/// A vfolder forgotten by gc, as kept in the audit table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The vfolder's id.
    pub id: String,
    /// Its last name.
    pub name: String,
    /// When it was created.
    pub created_at: Millis,
    /// When its purge completed.
    pub purged_at: Millis,
    /// When gc forgot it.
    pub forgotten_at: Millis,
    /// Its status history, as JSON.
    pub history: String,
}

/// Which vfolders [`Store::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFilter {
    /// Visible (live) vfolders only.
    Live,
    /// Vfolders in the trash only.
    Trash,
    /// Every row whose data still exists (all but purged ones): what a
    /// mount serves and background work looks at.
    Current,
    /// Rows a background worker may have to act on: a status that calls for
    /// a job (purge, clone, relocation) or for the trash retention, and —
    /// whatever the status — an old copy left to clean up after a
    /// relocation. Indexed, so scanning for work costs nothing per idle
    /// vfolder.
    Work,
    /// Every row.
    All,
}

impl ListFilter {
    /// Whether a vfolder of this status belongs in the list (for
    /// [`ListFilter::Work`], rows with an old copy to clean up belong too).
    pub fn admits(self, status: Status) -> bool {
        match self {
            ListFilter::Live => status.is_visible(),
            ListFilter::Trash => status.is_in_trash(),
            ListFilter::Current => status.is_readable() || status.is_purgeable(),
            ListFilter::Work => {
                status.is_purging()
                    || status.is_cloning()
                    || status.is_relocating()
                    || status.is_restorable()
            }
            ListFilter::All => true,
        }
    }

    /// The statuses it admits.
    pub fn statuses(self) -> Vec<Status> {
        Status::ALL
            .into_iter()
            .filter(|s| self.admits(*s))
            .collect()
    }
}

/// Who starts a relocation ([`Store::start_relocation`]), and what that
/// means for the vfolder's pin against tiering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelocationStart<'a> {
    /// A tiering pass: refused while the vfolder is pinned.
    Tier,
    /// An operator's `relocate`: pins the vfolder, with this cause.
    Pinning(&'a str),
}

/// What a transition carries besides the operation.
#[derive(Debug, Clone, Default)]
pub struct TransitionArgs<'a> {
    /// Recorded in the history row.
    pub cause: &'a str,
    /// A new name to take at the same time (restore under another name).
    pub new_name: Option<&'a str>,
    /// An error to record (a failed purge); cleared otherwise.
    pub error: Option<&'a str>,
    /// Make the change only if the row's `status_changed_at` is still this
    /// (its status has not changed since it was read): what a decision
    /// taken on an earlier read, such as the trash retention's, compares on
    /// besides the status. Otherwise [`StoreError::Refused`] with the
    /// current status.
    pub if_changed_at: Option<Millis>,
}

/// Errors of the store layer.
#[derive(Debug)]
pub enum StoreError {
    /// No vfolder matches the name or id.
    NotFound(String),
    /// An id prefix (or a trash name's) matches several vfolders.
    Ambiguous {
        /// What was given.
        sel: String,
        /// How many match.
        count: usize,
    },
    /// A live vfolder already has this name.
    NameTaken(String),
    /// The vfolder's status does not allow `op` (a transition of the table,
    /// a rename, an attach): see [`crate::status::Action`].
    Refused {
        /// The vfolder's name.
        name: String,
        /// The vfolder's id.
        id: String,
        /// Its status at the time of the attempt.
        status: Status,
        /// The operation attempted.
        op: Action,
    },
    /// The name is not acceptable.
    InvalidName(String, NameError),
    /// The vfolder is attached to sessions; the operation must wait for detach.
    Attached {
        /// The vfolder's name.
        name: String,
        /// How many attachments it has.
        count: usize,
        /// What was attempted ("delete", "rename", ...).
        what: &'static str,
    },
    /// Something is already attached at this target in this namespace.
    TargetTaken(String),
    /// The store was written by a newer vfolderfs.
    TooNew {
        /// Schema version found in the database.
        found: i64,
        /// Newest version this binary knows.
        supported: i64,
    },
    /// The database holds something this binary cannot read.
    Corrupt(String),
    /// A database error, with what was being done.
    Db(&'static str, rusqlite::Error),
    /// A PostgreSQL error, with what was being done.
    Pg(&'static str, ::postgres::Error),
    /// The PostgreSQL database (shown without password) cannot be reached.
    Connect(String, ::postgres::Error),
    /// The PostgreSQL connection settings are not usable.
    BadConfig(String),
    /// A filesystem error on the store directory, with the path.
    Io(String, std::io::Error),
    /// A system call failed while doing something that has no path (the
    /// action, e.g. "starting a worker"): the daemon's own resources.
    Os(&'static str, std::io::Error),
    /// There is no store at this path (no database): only `vfolderfs init`
    /// makes one.
    Missing(String),
    /// `init` was asked for a directory that holds other things but no
    /// database (perhaps a store whose database was moved away).
    NotEmpty(String),
    /// The database found is not the store's: another store id, or none.
    Foreign {
        /// The database file.
        path: String,
        /// The id the store had.
        expected: String,
        /// The id found (`None`: the database has none).
        found: Option<String>,
    },
    /// Not every live mount confirmed a change within the time allowed.
    Unconfirmed {
        /// The vfolder changed.
        name: String,
        /// The mounts that have not confirmed ("node pid mountpoint").
        mounts: Vec<String>,
        /// How long was waited.
        waited: std::time::Duration,
    },
    /// A job's claim is no longer held by its owner: another process took
    /// the job over (the owner was stopped past its lease) or it ended. The
    /// step asked for was not made.
    ClaimLost {
        /// The vfolder.
        id: String,
        /// The owner that lost it.
        owner: String,
        /// The token of the lost claim.
        token: i64,
    },
    /// A volume operation was refused or named no volume (see
    /// [`crate::volumes::VolumeError`]).
    Volume(crate::volumes::VolumeError),
    /// A directory other users can reach, which vfolderfs will not tighten
    /// itself because something is in it.
    LoosePath {
        /// The directory.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A relocation was asked for while the vfolder's previous copy (from
    /// its last relocation) still waits to be removed.
    OldCopyPending {
        /// The vfolder's name.
        name: String,
        /// The volume holding the previous copy.
        volume: String,
    },
    /// The vfolder is pinned against automatic tier moves.
    Pinned {
        /// The vfolder's name.
        name: String,
        /// Why it was pinned.
        cause: String,
    },
}

/// Whether `v` may be attached (read-only or not) into a session: the
/// refusal both backends give, checked inside their attach transaction. A
/// clone's target is cloning too, but its data is still being copied (see
/// [`Action::Attach`]).
pub(crate) fn check_attachable(v: &VFolder, read_only: bool) -> Result<()> {
    let op = Action::Attach {
        read_only,
        clone_target: v.status.is_cloning() && v.clone_src.is_some(),
    };
    if op.allows(v.status) {
        return Ok(());
    }
    Err(StoreError::Refused {
        name: v.name.clone(),
        id: v.id.clone(),
        status: v.status,
        op,
    })
}

impl StoreError {
    /// Whether the database was busy or locked past the busy timeout.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Db(_, rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// [`StoreError::Unconfirmed`]'s message.
fn unconfirmed(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    mounts: &[String],
    waited: std::time::Duration,
) -> fmt::Result {
    write!(
        f,
        "the change to vfolder {name:?} is made, but {} mount(s) did not confirm it within \
         {}: {} (writes in flight on a stuck volume, or an overloaded node); it takes \
         effect there as soon as they do, or when their lease lapses",
        mounts.len(),
        humantime::format_duration(waited),
        mounts.join("; ")
    )
}

/// [`StoreError::Missing`]'s message: how to make the store that is not there.
fn missing(f: &mut fmt::Formatter<'_>, db: &str) -> fmt::Result {
    if pgconf::is_postgres(db) {
        write!(
            f,
            "no vfolderfs store in {db}; create one with \
             `vfolderfs --store URL --data DIR init`"
        )
    } else {
        write!(
            f,
            "no store at {db} (no vfolders.db there); create one with \
             `vfolderfs --store {db} init`"
        )
    }
}

/// [`StoreError::Foreign`]'s message.
fn foreign(
    f: &mut fmt::Formatter<'_>,
    path: &str,
    expected: &str,
    found: Option<&str>,
) -> fmt::Result {
    match found {
        Some(found) => write!(
            f,
            "{path} belongs to another store (id {found}, expected {expected})"
        ),
        None => write!(f, "{path} has no store id (expected {expected})"),
    }
}

/// Appends the chain of `e`'s sources, each after ": ".
fn write_sources(f: &mut fmt::Formatter<'_>, e: &dyn std::error::Error) -> fmt::Result {
    let mut src = e.source();
    while let Some(s) = src {
        write!(f, ": {s}")?;
        src = s.source();
    }
    Ok(())
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(n) => write!(f, "no vfolder named {n:?}"),
            StoreError::Ambiguous { sel, count } => write!(
                f,
                "{sel:?} is ambiguous: it matches {count} vfolders; give more digits of the id"
            ),
            StoreError::NameTaken(n) => write!(f, "a live vfolder named {n:?} already exists"),
            StoreError::Refused {
                name,
                id,
                status,
                op,
            } => match op {
                Action::Transition(op) => write!(
                    f,
                    "cannot {op} vfolder {name:?} ({id}): its status is {status}"
                ),
                Action::Rename => {
                    write!(f, "cannot rename vfolder {name:?}: its status is {status}")
                }
                Action::Attach { read_only, .. } => write!(
                    f,
                    "cannot attach vfolder {name:?}{}: its status is {status}{}",
                    if *read_only { " read-only" } else { "" },
                    op.why(*status)
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                ),
            },
            StoreError::InvalidName(n, e) => write!(f, "invalid vfolder name {n:?}: {e}"),
            StoreError::Attached { name, count, what } => write!(
                f,
                "cannot {what} vfolder {name:?}: it is attached to {count} session mount(s); detach first"
            ),
            StoreError::TargetTaken(t) => write!(f, "{t}: something is already attached there"),
            StoreError::TooNew { found, supported } => write!(
                f,
                "the store's schema version is {found}, newer than this vfolderfs supports ({supported}); \
                 upgrade vfolderfs (the store was left untouched)"
            ),
            StoreError::Corrupt(m) => write!(f, "store is corrupt: {m}"),
            StoreError::Db(what, e) => write!(f, "database error while {what}: {e}"),
            StoreError::Pg(what, e) => match e.as_db_error() {
                Some(d) => write!(f, "database error while {what}: {}", d.message()),
                None => write!(f, "database error while {what}: {e}"),
            },
            StoreError::Connect(db, e) => {
                write!(f, "cannot connect to {db}: {e}")?;
                write_sources(f, e)
            }
            StoreError::BadConfig(m) => write!(f, "PostgreSQL connection settings: {m}"),
            StoreError::Io(path, e) => write!(f, "{path}: {e}"),
            StoreError::Os(action, e) => write!(f, "{action}: {e}"),
            StoreError::Missing(db) => missing(f, db),
            StoreError::NotEmpty(path) => write!(
                f,
                "{path} is not empty but holds no vfolders.db: if it is a store whose database \
                 was moved away, put the database back; otherwise choose a new or empty directory"
            ),
            StoreError::Foreign {
                path,
                expected,
                found,
            } => foreign(f, path, expected, found.as_deref()),
            StoreError::Unconfirmed {
                name,
                mounts,
                waited,
            } => unconfirmed(f, name, mounts, *waited),
            StoreError::ClaimLost { id, owner, token } => write!(
                f,
                "the job on vfolder {id} is no longer held by {owner} (claim {token}): \
                 another process took it over"
            ),
            StoreError::Volume(e) => e.fmt(f),
            StoreError::OldCopyPending { name, volume } => write!(
                f,
                "vfolder {name:?} still has its previous copy on volume {volume} waiting to be \
                 removed (the last step of its relocation, once every live mount has confirmed \
                 the switch); relocate it again when that is done (`vfolderfs jobs` shows it)"
            ),
            StoreError::Pinned { name, cause } => write!(
                f,
                "vfolder {name:?} is pinned against automatic tier moves ({cause}); \
                 `vfolderfs tier unpin {name}` to let the policy move it"
            ),
            StoreError::LoosePath { path, mode } => write!(
                f,
                "{path} is {mode:04o} and not empty: a data volume must be private to \
                 vfolderfs's user (0700) and other users may rely on this directory; \
                 `chmod 700` it yourself if nothing else needs it, or choose an empty directory"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<crate::volumes::VolumeError> for StoreError {
    fn from(e: crate::volumes::VolumeError) -> Self {
        StoreError::Volume(e)
    }
}

/// Result type of the store layer.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The narrow interface to the vfolder database. Every status change goes
/// through [`Store::transition`], a compare-and-set with its history row in
/// one transaction. Implementations must be safe to share between threads
/// and between processes opening the same store.
pub trait Store: Send + Sync {
    /// Records a new ready vfolder on `volume` whose backing directory the
    /// caller has made. A `volume` that is neither `default` nor recorded
    /// (removed meanwhile) is [`VolumeError::NotFound`](crate::volumes::VolumeError::NotFound),
    /// checked in the same transaction; likewise in [`Store::begin_clone`]
    /// and for [`Store::switch_volume`]'s target.
    fn create(&self, id: &str, name: &str, volume: &str, cause: &str) -> Result<VFolder>;
    /// The vfolder with this id.
    fn get(&self, id: &str) -> Result<VFolder>;
    /// The live vfolder with this name.
    fn get_live(&self, name: &str) -> Result<VFolder>;
    /// Vfolders admitted by `filter`, ordered by name then creation.
    fn list(&self, filter: ListFilter) -> Result<Vec<VFolder>>;
    /// Applies `op` if the vfolder's current status allows it (compare-and-set).
    fn transition(&self, id: &str, op: Op, args: TransitionArgs<'_>) -> Result<VFolder>;
    /// Renames a ready vfolder; records no status change.
    fn rename(&self, id: &str, new_name: &str) -> Result<VFolder>;
    /// The status history of a vfolder, oldest first.
    fn history(&self, id: &str) -> Result<Vec<HistoryEntry>>;
    /// The store's id, recorded when it was made (`None` if the database
    /// has none): tells one store's database from another's.
    fn store_id(&self) -> Result<Option<String>>;
    /// The store-wide trash retention: how long a trashed vfolder stays
    /// restorable before every mount's pool purges it (`None`: forever). A
    /// store that never set it has [`DEFAULT_TRASH_RETENTION`].
    fn trash_retention(&self) -> Result<Option<std::time::Duration>>;
    /// Sets the store-wide trash retention (`None`: keep trash forever).
    fn set_trash_retention(&self, keep: Option<std::time::Duration>) -> Result<()>;
    /// A number that changes whenever any process commits a change to the store.
    fn change_token(&self) -> Result<u64>;
    /// The vfolders inserted or changed after `rev` (a [`Changes::rev`] from
    /// an earlier call; 0 for every row), read at one point in time: how a
    /// mount keeps its copy in step without rereading everything.
    fn changes_since(&self, rev: u64) -> Result<Changes>;
    /// Claims the job on vfolder `id` for `owner` until `lease` from now:
    /// granted if nobody holds it, `owner` already does, or the holder's
    /// lease expired or `holder_dead` says it is gone. `None` if held.
    fn claim_job(
        &self,
        id: &str,
        kind: &str,
        owner: &str,
        lease: std::time::Duration,
        holder_dead: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Job>>;
    /// Records a job nobody runs yet (its first claim counts as its first run).
    fn queue_job(&self, id: &str, kind: &str, arg: Option<&str>) -> Result<()>;
    /// Extends `owner`'s claim and records progress (entries and bytes
    /// done); false if it was lost.
    fn renew_job(
        &self,
        id: &str,
        owner: &str,
        lease: std::time::Duration,
        done: u64,
        bytes: u64,
    ) -> Result<bool>;
    /// Records the totals (entries, bytes) `owner`'s job counted before it
    /// began; false if the claim was lost.
    fn set_job_totals(&self, id: &str, owner: &str, entries: u64, bytes: u64) -> Result<bool>;
    /// Asks the job on vfolder `id` to stop, recording who asks (`by`), or
    /// with None withdraws that request (an explicit resume). False if no
    /// job is recorded on it. Not fenced: the owner acts on it through its
    /// own fenced final steps.
    fn set_job_cancel(&self, id: &str, by: Option<&str>) -> Result<bool>;
    /// Records vfolder `id`'s measured size (kept apart from its row, so
    /// that no mount rereads it; forgotten with it).
    fn record_size(&self, id: &str, bytes: u64, files: u64) -> Result<()>;
    /// Every recorded size, by vfolder id.
    fn sizes(&self) -> Result<std::collections::HashMap<String, Size>>;
    /// Ends `owner`'s claim: `finished` removes the job, otherwise the claim
    /// is released for anyone to resume.
    fn release_job(&self, id: &str, owner: &str, finished: bool) -> Result<()>;
    /// The job on a vfolder, if any.
    fn job(&self, id: &str) -> Result<Option<Job>>;
    /// Forgets `delete-complete` vfolders whose purge finished before
    /// `before`, keeping them in the audit table; returns them.
    fn forget_purged(&self, before: Millis) -> Result<Vec<AuditEntry>>;
    /// The audit table, oldest first.
    fn audit(&self) -> Result<Vec<AuditEntry>>;
    /// In one transaction: `src` ready → cloning, a new vfolder `dst`
    /// created as cloning from it (its directory made by the caller), and
    /// the copy's job queued for `dst`.
    fn begin_clone(
        &self,
        src: &str,
        dst_id: &str,
        dst_name: &str,
        volume: &str,
        cause: &str,
    ) -> Result<(VFolder, VFolder)>;
    /// Proves `claim` is still held, in a transaction that also extends its
    /// lease by `lease`: what a job does immediately before a step that
    /// destroys data. [`StoreError::ClaimLost`] if it is not.
    fn confirm_claim(&self, claim: &Claim, lease: std::time::Duration) -> Result<()>;
    /// Ends a purge under `claim` (fenced): delete-ongoing → delete-complete,
    /// or → delete-error recording `error`.
    fn finish_purge(&self, claim: &Claim, error: Option<&str>, cause: &str) -> Result<VFolder>;
    /// Ends the clone into `claim`'s vfolder in one transaction (fenced): the
    /// source back to ready, and the target ready (no `error`) or on to
    /// purging its partial data.
    fn finish_clone(&self, claim: &Claim, error: Option<&str>, cause: &str) -> Result<VFolder>;
    /// Ends the relocation of `claim`'s vfolder (fenced): performing →
    /// ready, now on `volume` (None: stays), remembering the old volume
    /// until its copy is removed.
    fn switch_volume(&self, claim: &Claim, volume: Option<&str>, cause: &str) -> Result<VFolder>;
    /// The old copy of `claim`'s relocated vfolder is gone (fenced).
    fn clear_prev_volume(&self, claim: &Claim) -> Result<()>;
    /// Adds a named data volume at `path` (validated by the caller, see
    /// [`crate::volumes`]). A name or path already recorded is
    /// [`VolumeError::Exists`](crate::volumes::VolumeError::Exists) or
    /// [`VolumeError::PathTaken`](crate::volumes::VolumeError::PathTaken).
    fn add_volume(&self, name: &str, path: &str) -> Result<()>;
    /// Forgets volume `name`, in one transaction with the check that no
    /// vfolder row of any status has it as `volume` or `prev_volume` and no
    /// job has it as its argument (a relocation's target): otherwise
    /// [`VolumeError::InUse`](crate::volumes::VolumeError::InUse); an
    /// unknown name is [`VolumeError::NotFound`](crate::volumes::VolumeError::NotFound).
    /// Its directory is left as it is.
    fn remove_volume(&self, name: &str) -> Result<()>;
    /// The added volumes (name, path); `default` is the store's own `data/`.
    fn volumes(&self) -> Result<Vec<(String, String)>>;
    /// Records how many file opens mount `owner` has served per vfolder.
    fn record_opens(&self, owner: &str, counts: &[(String, u64)]) -> Result<()>;
    /// File opens per vfolder id, summed over every mount that reported.
    fn opens(&self) -> Result<std::collections::HashMap<String, u64>>;
    /// Records an attachment if the vfolder's status allows it (checked in
    /// the same transaction, so it cannot race a deletion): not while it
    /// is performing (read-only attaches included), and never for a clone's
    /// target. With `pending` (the attaching process's identity) the record
    /// is pending until [`Store::confirm_attachment`]: made before the bind,
    /// so that the vfolder is never bound without a record.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &self,
        id: &str,
        session: &str,
        target: &str,
        read_only: bool,
        mnt_ns: u64,
        source: &str,
        pending: Option<&str>,
    ) -> Result<Attachment>;
    /// Marks a pending attachment's bind as made; false if the record is
    /// gone (pruned meanwhile: the caller undoes its bind).
    fn confirm_attachment(&self, seq: i64) -> Result<bool>;
    /// Removes an attachment record; false if it was gone already.
    fn detach(&self, seq: i64) -> Result<bool>;
    /// Attachments, of one vfolder or all.
    fn attachments(&self, vfolder: Option<&str>) -> Result<Vec<Attachment>>;
    /// The change-feed position of a vfolder's row (where its last insert
    /// or update stands).
    fn rev_of(&self, id: &str) -> Result<u64>;
    /// Records a mount (or records it again) with a lease of `lease` from
    /// now; mounts whose lease lapsed long ago are forgotten meanwhile.
    fn register_mount(&self, m: &MountRecord, lease: std::time::Duration) -> Result<()>;
    /// Records what mount `id` has applied and extends its lease, only if
    /// the lease still holds (so a lapsed mount cannot come back without
    /// registering again after rereading the store); false if it lapsed or
    /// the mount is not recorded.
    fn renew_mount(
        &self,
        id: &str,
        applied_rev: u64,
        draining: &[String],
        lease: std::time::Duration,
    ) -> Result<bool>;
    /// Forgets a mount (a clean unmount).
    fn remove_mount(&self, id: &str) -> Result<()>;
    /// The recorded mounts and the store's clock, read together.
    fn mounts(&self) -> Result<(Millis, Vec<MountRecord>)>;
    /// Every volume's tier settings (volumes that still exist only).
    fn volume_tiers(&self) -> Result<Vec<VolumeTier>>;
    /// Records a volume's tier settings, replacing earlier ones;
    /// [`VolumeError::NotFound`](crate::volumes::VolumeError::NotFound)
    /// unless the volume is `default` or recorded (checked in the same
    /// transaction).
    fn set_volume_tier(&self, t: &VolumeTier) -> Result<()>;
    /// Adds a mount's counted usage in one transaction (additive, so every
    /// mount of a cluster adds its own), and moves each vfolder's last
    /// access forward to the delta's time. Vfolders forgotten meanwhile
    /// are skipped.
    fn record_usage(&self, batch: &[UsageDelta]) -> Result<()>;
    /// Usage per vfolder and day from `day` on, of one vfolder or all,
    /// ordered by vfolder then day.
    fn usage_since(&self, day: i64, vfolder: Option<&str>) -> Result<Vec<UsageDay>>;
    /// The last recorded access per vfolder id, of one vfolder or all.
    fn last_access(
        &self,
        vfolder: Option<&str>,
    ) -> Result<std::collections::HashMap<String, Millis>>;
    /// Every pin against automatic tier moves.
    fn pins(&self) -> Result<Vec<Pin>>;
    /// Pins vfolder `id` (with its cause), or unpins it with `None`;
    /// whether anything changed.
    fn set_pin(&self, id: &str, cause: Option<&str>) -> Result<bool>;
    /// Starts a relocation to volume `to` in one transaction: as
    /// [`Store::transition`] with `Op::RelocateStart` (attachments and status
    /// checked), its relocation job queued with it, and the pin as `start`
    /// says (a tier move is refused with [`StoreError::Pinned`] while the
    /// vfolder is pinned; an operator's move pins it). Refused with
    /// [`StoreError::OldCopyPending`] while the previous copy of an earlier
    /// relocation still waits to be removed (the new job would replace that
    /// removal's and the copy would be forgotten). Nothing of it is made
    /// unless all of it is: no `performing` row without its job.
    fn start_relocation(
        &self,
        id: &str,
        to: &str,
        cause: &str,
        start: RelocationStart<'_>,
    ) -> Result<VFolder>;
    /// A store-wide setting (`store_info`), if set.
    fn setting(&self, key: &str) -> Result<Option<String>>;
    /// Sets (or with `None` removes) a store-wide setting only if it is
    /// still `expected` (compare-and-set); whether it was changed.
    fn swap_setting(&self, key: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool>;
    /// For a store that announces changes (PostgreSQL's `NOTIFY`): a
    /// function that waits up to the given time for one and says whether
    /// one came. `None`: the store must be polled.
    fn change_listener(&self) -> Option<Box<dyn FnMut(std::time::Duration) -> bool + Send>> {
        None
    }
}
