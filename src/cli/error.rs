//! The CLI's error: one variant per kind of failure, each wrapping the
//! lower layer's error it comes from (store, sessions, mount, I/O) or
//! saying what the CLI itself found. Its message is what the user reads;
//! its [`Kind`] decides the exit status (see [`super::exit`]).

use std::fmt;

use super::exit::{self, Kind};
use crate::daemon::MountError;
use crate::sessions::SessionError;
use crate::status::Status;
use crate::store::StoreError;

/// An error worth one line on stderr (or a JSON object under `--json`).
#[derive(Debug)]
pub enum CliError {
    /// From the store layer.
    Store(StoreError),
    /// From attaching or detaching (other than the store's errors): a
    /// refused session id is a usage error, the rest failures.
    Session(SessionError),
    /// From running a mount (other than opening its store).
    Mount(MountError),
    /// A refused `mount` argument or `-o` option (a usage error).
    MountOption(String),
    /// A duration argument that does not parse; `arg` names it as the
    /// message shows it (`--grace 3x`, `bad duration "3x"`).
    Duration {
        /// The argument, as the message names it.
        arg: String,
        /// Why it does not parse.
        err: humantime::DurationError,
    },
    /// A file the command writes (a manual page) could not be written.
    Io {
        /// What was being written (a directory, or the page).
        what: String,
        /// The system error.
        err: std::io::Error,
    },
    /// `show --size` on a vfolder whose data cannot be read in its status.
    Unmeasurable {
        /// The vfolder's name.
        name: String,
        /// Its status.
        status: Status,
    },
    /// A job run or followed here ended without completing (failed, rolled
    /// back, lost to another process) or has nothing left to do; the
    /// message says which.
    Job(String),
    /// An error of a known kind, with its message and the vfolder it is about.
    Of {
        /// What kind of failure (decides the exit status).
        kind: Kind,
        /// The message.
        message: String,
        /// The vfolder it is about, if any.
        vfolder: Option<String>,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Store(e) => match exit::store_hint(e) {
                Some(h) => write!(f, "{e}; {h}"),
                None => e.fmt(f),
            },
            CliError::Session(e) => e.fmt(f),
            CliError::Mount(e) => e.fmt(f),
            CliError::Duration { arg, err } => write!(f, "{arg}: {err}"),
            CliError::Io { what, err } => write!(f, "{what}: {err}"),
            CliError::Unmeasurable { name, status } => write!(
                f,
                "cannot measure {name:?}: its data cannot be read (status {status})"
            ),
            CliError::MountOption(m) | CliError::Job(m) | CliError::Of { message: m, .. } => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for CliError {}

impl CliError {
    /// A usage error (exit status of a usage error) saying `message`.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::Of {
            kind: Kind::Usage,
            message: message.into(),
            vfolder: None,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            CliError::Store(e) => exit::store_kind(e),
            CliError::Session(SessionError::InvalidSession { .. }) | CliError::MountOption(_) => {
                Kind::Usage
            }
            CliError::Session(_)
            | CliError::Mount(_)
            | CliError::Duration { .. }
            | CliError::Io { .. }
            | CliError::Unmeasurable { .. }
            | CliError::Job(_) => Kind::Failed,
            CliError::Of { kind, .. } => *kind,
        }
    }

    /// The vfolder the error is about, if it names one.
    pub fn vfolder(&self) -> Option<&str> {
        match self {
            CliError::Store(e) => exit::store_vfolder(e),
            CliError::Of { vfolder, .. } => vfolder.as_deref(),
            CliError::Session(_)
            | CliError::Mount(_)
            | CliError::MountOption(_)
            | CliError::Duration { .. }
            | CliError::Io { .. }
            | CliError::Unmeasurable { .. }
            | CliError::Job(_) => None,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        self.kind().code()
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Store(e)
    }
}

impl From<SessionError> for CliError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Store(e) => CliError::Store(e),
            e => CliError::Session(e),
        }
    }
}

impl From<MountError> for CliError {
    fn from(e: MountError) -> Self {
        match e {
            MountError::Store(e) => CliError::Store(e),
            e => CliError::Mount(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_keep_their_messages_and_exit_statuses() {
        let bad_id = SessionError::InvalidSession {
            id: "".into(),
            why: "a session id must not be empty".into(),
        };
        let e = CliError::from(bad_id);
        assert_eq!(e.exit_code(), exit::EXIT_USAGE);
        assert_eq!(
            e.to_string(),
            "invalid session id \"\": a session id must not be empty"
        );
        let e = CliError::from(SessionError::Store(StoreError::NotFound("x".into())));
        assert!(matches!(e, CliError::Store(_)));
        assert_eq!(e.exit_code(), exit::EXIT_NOT_FOUND);

        let err = humantime::parse_duration("3x").unwrap_err();
        let e = CliError::Duration {
            arg: "--grace 3x".into(),
            err: err.clone(),
        };
        assert_eq!(e.exit_code(), exit::EXIT_FAILED);
        assert_eq!(e.to_string(), format!("--grace 3x: {err}"));

        let e = CliError::Unmeasurable {
            name: "ds".into(),
            status: Status::DeleteOngoing,
        };
        assert_eq!(
            e.to_string(),
            "cannot measure \"ds\": its data cannot be read (status delete-ongoing)"
        );
        assert_eq!(e.exit_code(), exit::EXIT_FAILED);
        assert_eq!(
            CliError::MountOption("x".into()).exit_code(),
            exit::EXIT_USAGE
        );
        let e = CliError::from(MountError::Store(StoreError::NotFound("x".into())));
        assert!(matches!(e, CliError::Store(_)));
    }
}
