//! Volumes: named directories that hold backing directories, besides the default one.
//!
//! Each function is the body of the [`Store`] method of the same name.

use super::*;

pub(super) fn add_volume(s: &PgStore, name: &str, path: &str) -> Result<()> {
    checked_name(name)?;
    if name == crate::catalog::DEFAULT_VOLUME {
        return Err(VolumeError::Exists(name.to_string()).into());
    }
    s.tx("adding a volume", |tx| {
        // Volumes change rarely: one at a time, so the check holds.
        tx.execute("LOCK TABLE volumes IN SHARE ROW EXCLUSIVE MODE", &[])
            .map_err(pg("adding a volume"))?;
        let holder = tx
            .query_opt(
                "SELECT name, path FROM volumes WHERE name = $1 OR path = $2",
                &[&name, &path],
            )
            .map_err(pg("adding a volume"))?
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
        match holder {
            Some((n, _)) if n == name => return Err(VolumeError::Exists(n).into()),
            Some((by, p)) => return Err(VolumeError::PathTaken { path: p, by }.into()),
            None => {}
        }
        tx.execute(
            &format!("INSERT INTO volumes (name, path, created_at) VALUES ($1, $2, {NOW_MS})"),
            &[&name, &path],
        )
        .map_err(pg("adding a volume"))?;
        Ok(())
    })
}

pub(super) fn remove_volume(s: &PgStore, name: &str) -> Result<()> {
    if name == crate::catalog::DEFAULT_VOLUME {
        return Err(VolumeError::Default.into());
    }
    s.tx("removing a volume", |tx| {
        tx.execute("LOCK TABLE volumes IN SHARE ROW EXCLUSIVE MODE", &[])
            .map_err(pg("removing a volume"))?;
        PgStore::volume_known_in(tx, name)?;
        // Rows that would start using it wait for this lock (their
        // volume check reads `volumes`); rows already using it count.
        let users: Vec<String> = tx
            .query(
                "SELECT name || ' (' || status || ')' FROM vfolders \
                 WHERE volume = $1 OR prev_volume = $1 \
                 OR id IN (SELECT vfolder_id FROM jobs WHERE arg = $1) \
                 ORDER BY name",
                &[&name],
            )
            .map_err(pg("checking a volume's vfolders"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                count: users.len(),
                examples: users.into_iter().take(5).collect(),
            }
            .into());
        }
        tx.execute("DELETE FROM volumes WHERE name = $1", &[&name])
            .map_err(pg("removing a volume"))?;
        Ok(())
    })
}

pub(super) fn volumes(s: &PgStore) -> Result<Vec<(String, String)>> {
    s.read(|tx| {
        Ok(tx
            .query("SELECT name, path FROM volumes ORDER BY name", &[])
            .map_err(pg("listing volumes"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    })
}
