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
    /// Ends in `~` and 8 or more hex digits: the form of a trash name that
    /// tells same-named trashed vfolders apart (`NAME~1a2b3c4d`), reserved
    /// so that no vfolder's own name can be mistaken for another's.
    TrashSuffix,
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
            NameError::TrashSuffix => write!(
                f,
                "a name ending in '~' and 8 or more hex digits is reserved for trash names \
                 (NAME~1a2b3c4d)"
            ),
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

/// Splits a trash name of the form `NAME~HEX` (HEX: 8 or more hex digits,
/// the start of the vfolder's id) into `NAME` and `HEX`; None for any other
/// string.
pub fn split_trash_suffix(s: &str) -> Option<(&str, &str)> {
    let (name, hex) = s.rsplit_once('~')?;
    (hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some((name, hex))
}

/// Whether `id` (a hyphenated UUID) starts with the hex digits `prefix`,
/// hyphens and case ignored.
pub fn id_has_prefix(id: &str, prefix: &str) -> bool {
    let mut digits = id.bytes().filter(|b| *b != b'-');
    prefix
        .bytes()
        .filter(|b| *b != b'-')
        .all(|p| digits.next().is_some_and(|d| d.eq_ignore_ascii_case(&p)))
}

/// Whether `s` could be an id or the start of one: 8 or more hex digits
/// (hyphens allowed, as in a UUID).
pub fn looks_like_id_prefix(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && s.bytes().filter(u8::is_ascii_hexdigit).count() >= 8
}

/// Checks a name for a new vfolder (create, rename, restore as, clone, and
/// `mkdir`/`mv` on the mount): the rules of [`validate_existing`], no
/// white space at either end, no leading `-`, and not ending in `~` and 8
/// or more hex digits (the trash-name form, [`split_trash_suffix`]).
pub fn validate(name: &str) -> Result<(), NameError> {
    validate_existing(name)?;
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(NameError::EdgeSpace);
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingDash);
    }
    if split_trash_suffix(name).is_some() {
        return Err(NameError::TrashSuffix);
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
    if split_trash_suffix(name).is_some() {
        return Err(NameError::TrashSuffix);
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
            "foo~1",
            "foo~13b29a5",
            "foo~13b29a5g",
            "~",
        ] {
            assert_eq!(validate(n), Ok(()), "{n:?}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "a".repeat(256);
        let cases: [(&[u8], NameError); 16] = [
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
            (b"foo~13b29a5a", NameError::TrashSuffix),
            (b"foo~13B29A5A0f", NameError::TrashSuffix),
        ];
        for (bytes, want) in cases {
            assert_eq!(validate_bytes(bytes), Err(want), "{bytes:?}");
        }
        assert_eq!(
            split_trash_suffix("a~b~0123abcd"),
            Some(("a~b", "0123abcd"))
        );
        assert!(id_has_prefix("13b29a5a-0c1d-4e2f", "13B29A5A0c"));
        assert!(!id_has_prefix("13b29a5a-0c1d", "13b29a5a0c1d4"));
        // A multi-byte name counts bytes, not characters.
        assert_eq!(validate(&"é".repeat(128)), Err(NameError::TooLong(256)));
        // Names made before these rules stay reachable.
        assert_eq!(validate_existing_bytes(b" -x "), Ok(" -x "));
    }
}
