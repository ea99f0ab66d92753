//! The metadata database: one SQLite file in WAL mode, shared by the snapshotter, the
//! image store and the cache (its tables are all in `schema.rs`). WAL makes writes crash-safe and lets several rdock
//! processes use one store at once; `busy_timeout` makes them wait for each other
//! rather than fail.

use crate::SnapshotError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// A handle on the metadata database.
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens or creates the database and its schema.
    pub fn open(path: &Path) -> Result<Db, SnapshotError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // WAL + NORMAL: durable across process crashes; an OS crash may lose the last
        // transactions but never corrupts the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        crate::schema::migrate(&mut conn)?;
        Ok(Db { conn: Mutex::new(conn) })
    }

    /// The connection, for one short transaction at a time. A transaction that reads and
    /// then writes must begin `IMMEDIATE`: a deferred one that another process wrote past
    /// fails to upgrade with SQLITE_BUSY_SNAPSHOT at once, whatever the busy timeout.
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls back
        // the open transaction when the statement is dropped.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}
