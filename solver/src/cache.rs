//! Cache records: cache key → committed snapshot, in the shared metadata database.

use crate::SolveError;
use crate::key::CacheKey;
pub(crate) use rdock_imagespec::time::unix_now as now;
use rdock_snapshotter::{SnapshotName, Snapshotter, Store};
use rusqlite::{OptionalExtension, params};

/// The persistent cache index.
#[derive(Clone)]
pub struct CacheStore {
    store: Store,
}

impl CacheStore {
    /// The cache of `store` (its table is in the store's schema).
    pub fn new(store: Store) -> Result<CacheStore, SolveError> {
        Ok(CacheStore { store })
    }

    /// The snapshot recorded for `key`, if it still exists.
    pub fn get(&self, key: &CacheKey) -> Result<Option<SnapshotName>, SolveError> {
        let key = key.as_str();
        let snap: Option<String> =
            self.store.db().conn().query_row("SELECT snapshot FROM cache WHERE key = ?1", params![key], |r| r.get(0)).optional()?;
        match snap {
            Some(s) if self.store.snapshots().exists(&s)? => {
                let _ = self.store.db().conn().execute("UPDATE cache SET last_used = ?1 WHERE key = ?2", params![now(), key]);
                Ok(Some(SnapshotName::new(s)))
            }
            _ => {
                // A step's result is committed as `op-KEY` before its record is written: a
                // build killed between the two left a complete result without a record.
                let name = format!("op-{key}");
                match self.store.snapshots().stat(&name) {
                    Ok(info) if info.kind == rdock_snapshotter::Kind::Committed => {
                        self.record(key, &name)?;
                        Ok(Some(SnapshotName::new(name)))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// True if `key` has a record whose snapshot exists, without marking it used.
    pub fn contains(&self, key: &CacheKey) -> Result<bool, SolveError> {
        let key = key.as_str();
        let snap: Option<String> =
            self.store.db().conn().query_row("SELECT snapshot FROM cache WHERE key = ?1", params![key], |r| r.get(0)).optional()?;
        match snap {
            Some(s) => Ok(self.store.snapshots().exists(&s)?),
            None => Ok(false),
        }
    }

    /// Records `snapshot` as the result for `key`.
    pub fn put(&self, key: &CacheKey, snapshot: &SnapshotName) -> Result<(), SolveError> {
        self.record(key.as_str(), snapshot)
    }

    fn record(&self, key: &str, snapshot: &str) -> Result<(), SolveError> {
        let t = now();
        self.store.db().conn().execute(
            "INSERT OR REPLACE INTO cache (key, snapshot, created, last_used) VALUES (?1, ?2, ?3, ?3)",
            params![key, snapshot, t],
        )?;
        Ok(())
    }

    /// Records whose snapshot is missing or not committed, one sentence each (`fsck`).
    pub fn check(&self) -> Result<Vec<String>, SolveError> {
        let rows: Vec<(String, String)> = {
            let conn = self.store.db().conn();
            let mut stmt = conn.prepare("SELECT key, snapshot FROM cache")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        let mut problems = Vec::new();
        for (key, snap) in rows {
            match self.store.snapshots().stat(&snap) {
                Ok(i) if i.kind == rdock_snapshotter::Kind::Committed => {}
                Ok(i) => problems.push(format!("cache record {key}: snapshot {snap} is {:?}, not committed", i.kind)),
                Err(_) => problems.push(format!("cache record {key}: snapshot {snap} does not exist")),
            }
        }
        Ok(problems)
    }

    /// Number of records.
    pub fn len(&self) -> Result<usize, SolveError> {
        let n: i64 = self.store.db().conn().query_row("SELECT COUNT(*) FROM cache", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// True if there are no records.
    pub fn is_empty(&self) -> Result<bool, SolveError> {
        Ok(self.len()? == 0)
    }
}
