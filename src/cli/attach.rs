//! The session commands: `attach`, `detach`, `sessions`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::CliError;
use super::output::attachment_json;
use crate::catalog::Catalog;
use crate::sessions;
use crate::store::Attachment;

/// What `attach` was asked for.
pub(super) struct AttachArgs<'a> {
    /// The vfolder's name.
    pub name: &'a str,
    /// The session id.
    pub session: &'a str,
    /// Where to bind it.
    pub target: &'a Path,
    /// A read-only bind.
    pub read_only: bool,
    /// The vfolderfs mount to bind from.
    pub mount: Option<&'a Path>,
}

/// `attach NAME --session ID --target PATH`.
pub(super) fn attach(cat: &Catalog, a: AttachArgs<'_>, json: bool) -> Result<i32, CliError> {
    let att = sessions::attach(cat, a.name, a.session, a.target, a.read_only, a.mount)?;
    if json {
        println!("{}", attachment_json(cat, &att));
    } else {
        println!(
            "attached vfolder {:?} to session {:?} at {}{}",
            a.name,
            a.session,
            att.target,
            if a.read_only { " (read-only)" } else { "" }
        );
    }
    Ok(0)
}

/// Which attachments `detach` removes: the one at a target (recorded
/// normalized lexically, see [`sessions::normalize_target`], so a path
/// naming it through a symlink matches too), or a session's (only one
/// vfolder's, with a name).
enum Selection {
    Target(PathBuf, Option<PathBuf>),
    Session(String, Option<String>),
}

impl Selection {
    fn new(
        cat: &Catalog,
        session: Option<String>,
        name: Option<&str>,
        target: Option<&Path>,
    ) -> Result<Option<Selection>, CliError> {
        if let Some(t) = target {
            let canon = std::fs::canonicalize(t).ok();
            return Ok(Some(Selection::Target(
                sessions::normalize_target(t)?,
                canon,
            )));
        }
        let id = match name {
            Some(n) => Some(cat.resolve(n)?.id),
            None => None,
        };
        Ok(session.map(|s| Selection::Session(s, id)))
    }

    fn matches(&self, a: &Attachment) -> bool {
        match self {
            Selection::Target(t, canon) => {
                Path::new(&a.target) == t || canon.as_deref() == Some(Path::new(&a.target))
            }
            Selection::Session(s, id) => {
                &a.session == s && id.as_ref().is_none_or(|i| &a.vfolder_id == i)
            }
        }
    }
}

/// `detach (--session ID [NAME] | --target PATH)`.
pub(super) fn detach(
    cat: &Catalog,
    session: Option<String>,
    name: Option<&str>,
    target: Option<&Path>,
    json: bool,
) -> Result<i32, CliError> {
    let sel = Selection::new(cat, session, name, target)?;
    let done = sessions::detach(cat, &|a| sel.as_ref().is_some_and(|s| s.matches(a)))?;
    if json {
        let arr: Vec<Value> = done
            .iter()
            .map(|d| {
                let mut o = attachment_json(cat, &d.attachment);
                o["unmounted"] = json!(d.unmounted);
                o
            })
            .collect();
        println!("{}", Value::Array(arr));
        return Ok(0);
    }
    if done.is_empty() {
        println!("nothing attached there: already detached");
    }
    for d in done {
        println!(
            "detached {} (session {:?}){}",
            d.attachment.target,
            d.attachment.session,
            if d.unmounted {
                ""
            } else {
                "; its bind was already gone"
            }
        );
    }
    Ok(0)
}

/// `sessions [--prune]`.
pub(super) fn sessions(cat: &Catalog, json: bool, prune: bool) -> Result<i32, CliError> {
    if prune {
        let gone = sessions::prune(cat, false)?;
        for a in &gone {
            eprintln!(
                "pruned stale attachment {} (session {:?})",
                a.target, a.session
            );
        }
    }
    let list = cat.store().attachments(None)?;
    if json {
        let arr: Vec<Value> = list.iter().map(|a| attachment_json(cat, a)).collect();
        println!("{}", Value::Array(arr));
        return Ok(0);
    }
    println!("{:20}  {:20}  {:4}  TARGET", "SESSION", "VFOLDER", "MODE");
    for a in &list {
        let j = attachment_json(cat, a);
        println!(
            "{:20}  {:20}  {:4}  {}",
            a.session,
            j["vfolder"].as_str().unwrap_or("?"),
            if a.read_only { "ro" } else { "rw" },
            a.target
        );
    }
    Ok(0)
}
