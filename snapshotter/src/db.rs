//! The metadata database: one SQLite file in WAL mode, shared by the snapshotter, the
//! image store and the cache. WAL makes writes crash-safe and lets several rdock
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent INTEGER REFERENCES snapshots(id),
    kind TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
CREATE TABLE IF NOT EXISTS layers (
    snapshot INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
    diff_id TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL
);
";

impl Db {
    /// Opens or creates the database and its schema.
    pub fn open(path: &Path) -> Result<Db, SnapshotError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // WAL + NORMAL: durable across process crashes; an OS crash may lose the last
        // transactions but never corrupts the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
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

/// Columns added after the first release, for stores made before them: when a snapshot
/// was last used (garbage collection is least-recently-used first) and its disk use
/// (measured once: committed snapshots never change).
fn migrate(conn: &Connection) -> Result<(), SnapshotError> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('snapshots')")?;
    let cols: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for (col, ty) in [("last_used", "INTEGER"), ("size", "INTEGER")] {
        if !cols.iter().any(|c| c == col) {
            match conn.execute_batch(&format!("ALTER TABLE snapshots ADD COLUMN {col} {ty}")) {
                // Another process added it between our read and our write.
                Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("duplicate column") => {}
                r => r?,
            }
        }
    }
    Ok(())
}
