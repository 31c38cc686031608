//! Volumes: named directories that hold backing directories, besides the default one.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn add_volume(s: &SqliteStore, name: &str, path: &str) -> Result<()> {
    checked_name(name)?;
    if name == crate::catalog::DEFAULT_VOLUME {
        return Err(VolumeError::Exists(name.to_string()).into());
    }
    s.write_tx("committing a new volume", |tx| {
        let holder: Option<(String, String)> = tx
            .query_row(
                "SELECT name, path FROM volumes WHERE name = ?1 OR path = ?2",
                params![name, path],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("adding a volume"))?;
        match holder {
            Some((n, _)) if n == name => return Err(VolumeError::Exists(n).into()),
            Some((by, p)) => return Err(VolumeError::PathTaken { path: p, by }.into()),
            None => {}
        }
        tx.execute(
            "INSERT INTO volumes (name, path, created_at) VALUES (?1, ?2, ?3)",
            params![name, path, now_millis()],
        )
        .map_err(db("adding a volume"))?;
        Ok(())
    })
}

pub(super) fn remove_volume(s: &SqliteStore, name: &str) -> Result<()> {
    if name == crate::catalog::DEFAULT_VOLUME {
        return Err(VolumeError::Default.into());
    }
    s.write_tx("committing a volume removal", |tx| {
        SqliteStore::volume_known_in(tx, name)?;
        let users: Vec<String> = {
            let mut stmt = tx
                .prepare(
                    "SELECT name || ' (' || status || ')' FROM vfolders \
                     WHERE volume = ?1 OR prev_volume = ?1 \
                     OR id IN (SELECT vfolder_id FROM jobs WHERE arg = ?1) \
                     ORDER BY name",
                )
                .map_err(db("checking a volume's vfolders"))?;
            stmt.query_map(params![name], |r| r.get(0))
                .map_err(db("checking a volume's vfolders"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(db("checking a volume's vfolders"))?
        };
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                count: users.len(),
                examples: users.into_iter().take(5).collect(),
            }
            .into());
        }
        tx.execute("DELETE FROM volumes WHERE name = ?1", params![name])
            .map_err(db("removing a volume"))?;
        Ok(())
    })
}

pub(super) fn volumes(s: &SqliteStore) -> Result<Vec<(String, String)>> {
    let conn = s.conn.lock();
    let mut stmt = conn
        .prepare_cached("SELECT name, path FROM volumes ORDER BY name")
        .map_err(db("listing volumes"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db("listing volumes"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(db("listing volumes"))
}
