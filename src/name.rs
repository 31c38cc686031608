//! Validation of vfolder names, shared by the CLI and the mount.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// The name of the mount's virtual trash directory, reserved at the root.
pub const TRASH_DIR: &str = ".trash";

/// Longest name in bytes (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The empty string.
    Empty,
    /// Longer than [`NAME_MAX`] bytes (carries the length).
    TooLong(usize),
    /// Not valid UTF-8.
    NotUtf8,
    /// Contains `/`.
    Slash,
    /// Contains NUL or another control character (carries its code).
    Control(u32),
    /// `.` or `..`.
    Dot,
    /// The reserved `.trash`.
    Reserved,
    /// Begins or ends with white space (hard to see, easy to mistype in a
    /// shell); only refused for new names.
    EdgeSpace,
    /// Begins with `-` (read as an option by every command line); only
    /// refused for new names.
    LeadingDash,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "name is empty"),
            NameError::TooLong(n) => {
                write!(f, "name is {n} bytes long; the limit is {NAME_MAX}")
            }
            NameError::NotUtf8 => write!(f, "name is not valid UTF-8"),
            NameError::Slash => write!(f, "name contains '/'"),
            NameError::Control(c) => write!(f, "name contains control character U+{c:04X}"),
            NameError::Dot => write!(f, "'.' and '..' are not names"),
            NameError::Reserved => write!(f, "'{TRASH_DIR}' is reserved"),
            NameError::EdgeSpace => write!(f, "name begins or ends with white space"),
            NameError::LeadingDash => write!(f, "name begins with '-'"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a vfolder name given as raw bytes (as it arrives through the mount).
pub fn validate_bytes(name: &[u8]) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    let s = std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    validate(s)?;
    Ok(s)
}

/// Checks a vfolder name given as an OS string.
pub fn validate_os(name: &OsStr) -> Result<&str, NameError> {
    validate_bytes(name.as_bytes())
}

/// Checks a name for a new vfolder (create, rename, restore as, clone, and
/// `mkdir`/`mv` on the mount): the rules of [`validate_existing`], and no
/// white space at either end and no leading `-`.
pub fn validate(name: &str) -> Result<(), NameError> {
    validate_existing(name)?;
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(NameError::EdgeSpace);
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingDash);
    }
    Ok(())
}

/// Checks a name that may belong to an existing vfolder, made before the
/// rules for new names refused white space at its ends and a leading `-`,
/// given as raw bytes (as it arrives through the mount): such vfolders stay
/// reachable and can be renamed away.
pub fn validate_existing_bytes(name: &[u8]) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    let s = std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    validate_existing(s)?;
    Ok(s)
}

/// The rules every vfolder name meets: 1–255 bytes of UTF-8, no `/`, no
/// control characters, not `.`, `..` or `.trash`.
pub fn validate_existing(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(NameError::Control(c as u32));
    }
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dot);
    }
    if name == TRASH_DIR {
        return Err(NameError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "a",
            "data set 1",
            "模型",
            "x.y-z_1",
            &"a".repeat(255),
            "..a",
            ".".repeat(3).as_str(),
            "a-",
            "a b",
        ] {
            assert_eq!(validate(n), Ok(()), "{n:?}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "a".repeat(256);
        let cases: [(&[u8], NameError); 14] = [
            (b"", NameError::Empty),
            (long.as_bytes(), NameError::TooLong(256)),
            (b"\xff\xfe", NameError::NotUtf8),
            (b"a/b", NameError::Slash),
            (b"a\0b", NameError::Control(0)),
            (b"a\nb", NameError::Control(10)),
            (b"\x7f", NameError::Control(0x7f)),
            (b".", NameError::Dot),
            (b"..", NameError::Dot),
            (b".trash", NameError::Reserved),
            (b" a", NameError::EdgeSpace),
            (b"a ", NameError::EdgeSpace),
            ("a\u{a0}".as_bytes(), NameError::EdgeSpace),
            (b"-x", NameError::LeadingDash),
        ];
        for (bytes, want) in cases {
            assert_eq!(validate_bytes(bytes), Err(want), "{bytes:?}");
        }
        // A multi-byte name counts bytes, not characters.
        assert_eq!(validate(&"é".repeat(128)), Err(NameError::TooLong(256)));
        // Names made before these rules stay reachable.
        assert_eq!(validate_existing_bytes(b" -x "), Ok(" -x "));
    }
}
