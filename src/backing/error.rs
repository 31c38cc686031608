//! The one error shape of the backing layer's tree walks (copying a tree,
//! emptying one): where, relative to the tree's root, and what failed.

use std::fmt;
use std::io;

/// Why a walk over a tree (a copy, a removal) stopped.
#[derive(Debug)]
pub enum TreeError {
    /// A system call failed on `path` (relative to the tree's root).
    Failed {
        /// Where, relative to the tree's root (`.` for the root itself).
        path: String,
        /// The error.
        err: io::Error,
    },
    /// A mount point (or another filesystem) inside the tree was left alone.
    MountPoint(String),
    /// Cancelled (shutdown); what is left stays for a later run.
    Cancelled,
}

impl TreeError {
    /// [`TreeError::Failed`] at the path made of `parts` (see
    /// [`shorten_path`]).
    pub fn at(parts: Vec<String>, err: io::Error) -> TreeError {
        TreeError::Failed {
            path: shorten_path(parts),
            err,
        }
    }

    /// [`TreeError::Failed`] on the tree's root.
    pub fn at_root(err: io::Error) -> TreeError {
        TreeError::Failed {
            path: ".".into(),
            err,
        }
    }
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Failed { path, err } => write!(f, "{path}: {err}"),
            TreeError::MountPoint(p) => {
                write!(
                    f,
                    "{p}: a mount point inside the vfolder; unmount it and retry"
                )
            }
            TreeError::Cancelled => write!(f, "cancelled"),
        }
    }
}

impl std::error::Error for TreeError {}

/// A path for a message from its names, root first: whole when short,
/// else its first name, `…` and its last names, with the depth (a tree can
/// be thousands of levels deep). `.` for no names.
pub fn shorten_path(parts: Vec<String>) -> String {
    if parts.is_empty() {
        return ".".into();
    }
    let full = parts.join("/");
    if full.len() <= 512 {
        return full;
    }
    let mut tail = String::new();
    for p in parts.iter().rev() {
        if !tail.is_empty() && tail.len() + p.len() > 300 {
            break;
        }
        tail = if tail.is_empty() {
            p.clone()
        } else {
            format!("{p}/{tail}")
        };
    }
    format!("{}/…/{tail} ({} levels deep)", parts[0], parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_path_is_shortened_in_the_middle_and_keeps_its_ends() {
        assert_eq!(shorten_path(vec![]), ".");
        assert_eq!(shorten_path(vec!["a".into(), "b".into()]), "a/b");
        let parts: Vec<String> = (0..1000).map(|i| format!("d{i}")).collect();
        let s = shorten_path(parts);
        assert!(
            s.starts_with("d0/…/") && s.ends_with("d999 (1000 levels deep)"),
            "{s}"
        );
        assert!(s.len() < 400);
        let e = TreeError::at(vec!["x".into(), "y".into()], io::ErrorKind::NotFound.into());
        assert!(e.to_string().starts_with("x/y: "));
    }
}
