//! Cache records: cache key → committed snapshot, in the shared metadata database.

use crate::SolveError;
use rdock_snapshotter::Store;
use rusqlite::{OptionalExtension, params};

/// The persistent cache index.
#[derive(Clone)]
pub struct CacheStore {
    store: Store,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl CacheStore {
    /// The cache of `store`, creating its table on first use.
    pub fn new(store: Store) -> Result<CacheStore, SolveError> {
        store.db().conn().execute_batch(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, snapshot TEXT NOT NULL, created INTEGER NOT NULL, last_used INTEGER NOT NULL);",
        )?;
        Ok(CacheStore { store })
    }

    /// The snapshot recorded for `key`, if it still exists.
    pub fn get(&self, key: &str) -> Result<Option<String>, SolveError> {
        let snap: Option<String> =
            self.store.db().conn().query_row("SELECT snapshot FROM cache WHERE key = ?1", params![key], |r| r.get(0)).optional()?;
        match snap {
            Some(s) if self.store.snapshots().exists(&s)? => {
                let _ = self.store.db().conn().execute("UPDATE cache SET last_used = ?1 WHERE key = ?2", params![now(), key]);
                Ok(Some(s))
            }
            _ => Ok(None),
        }
    }

    /// Records `snapshot` as the result for `key`.
    pub fn put(&self, key: &str, snapshot: &str) -> Result<(), SolveError> {
        let t = now();
        self.store.db().conn().execute(
            "INSERT OR REPLACE INTO cache (key, snapshot, created, last_used) VALUES (?1, ?2, ?3, ?3)",
            params![key, snapshot, t],
        )?;
        Ok(())
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
