//! Store verification (`rdock fsck`): what a reader could trip over if a write were ever
//! visible half-done. Blobs must hash to their names, snapshot records must have their
//! directories, layer records their blobs; nothing a dead process owned may remain.

use crate::{SnapshotError, Store};
use rdock_imagespec::Digest;
use rusqlite::params;

impl Store {
    /// Every inconsistency found, as one sentence each; empty means consistent. Reads every
    /// blob, so it costs a pass over the content store.
    pub fn check(&self) -> Result<Vec<String>, SnapshotError> {
        let mut problems = Vec::new();
        let blobs = self.root().join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).map_err(|e| SnapshotError::io(&blobs, e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                problems.push(format!("blobs/sha256/{name}: not a digest"));
                continue;
            };
            match self.content().hash(&d) {
                Ok(actual) if actual == d => {}
                Ok(actual) => problems.push(format!("blob {d}: content hashes to {actual}")),
                Err(err) => problems.push(format!("blob {d}: {err}")),
            }
        }
        let rows: Vec<(i64, String, String)> = {
            let conn = self.db().conn();
            let mut stmt = conn.prepare("SELECT id, key, kind FROM snapshots")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?
        };
        let ids: std::collections::HashSet<i64> = rows.iter().map(|r| r.0).collect();
        for (id, key, kind) in &rows {
            if !self.root().join("snapshots").join(id.to_string()).join("fs").is_dir() {
                problems.push(format!("snapshot {key} (id {id}): its directory is missing"));
            }
            if kind != "committed" && !crate::overlay::owner_alive(key) {
                problems.push(format!("{kind} snapshot {key}: its process is gone"));
            }
        }
        let layers: Vec<(i64, String)> = {
            let conn = self.db().conn();
            let mut stmt = conn.prepare("SELECT snapshot, blob FROM layers")?;
            stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        for (snap, blob) in layers {
            match Digest::parse(&blob) {
                Ok(d) if self.content().contains(&d) => {}
                _ => problems.push(format!("snapshot id {snap}: its layer blob {blob} is not in the store")),
            }
        }
        let snaps = self.root().join("snapshots");
        for e in std::fs::read_dir(&snaps).map_err(|e| SnapshotError::io(&snaps, e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(id) = name.parse::<i64>()
                && !ids.contains(&id)
            {
                problems.push(format!("snapshots/{name}: a directory without a record"));
            }
        }
        let tmp = self.root().join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(|e| SnapshotError::io(&tmp, e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !crate::overlay::owner_alive(&name) {
                problems.push(format!("tmp/{name}: left by a process that is gone"));
            }
        }
        Ok(problems)
    }
}
