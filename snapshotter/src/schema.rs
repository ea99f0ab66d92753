//! The store's SQLite schema, in one place, versioned with `PRAGMA user_version`.
//!
//! Every table of every crate is here, whoever reads and writes it (the snapshotter, the
//! image store, the build cache and its explanations, the context file-hash cache, the
//! container records): a crate that needs a new table or column adds a migration at the
//! end of [`MIGRATIONS`], never edits one that has shipped. Opening a store brings it to
//! the newest version inside one `IMMEDIATE` transaction, so two processes opening an old
//! store at once upgrade it once; a store written by a newer rdock (a version this one
//! does not know) is refused rather than misread.
//!
//! Version 1 is the schema as it stood when versioning began. Stores made before that
//! (`user_version` 0) hold some or all of its tables, created by each crate on first use,
//! and perhaps lack the snapshot columns added later: version 1 is written so that it
//! completes any of them without touching their rows. Version 2 adds the compressed
//! forms of blobs (`compress.rs`), when layers began to be stored uncompressed: layer rows
//! of earlier versions name gzip blobs and stay valid as they are. Version 3 records the
//! images built without a name.

use crate::SnapshotError;
use rusqlite::Connection;

/// One step of the schema: SQL, and columns to add where a pre-versioning store lacks them.
struct Migration {
    sql: &'static str,
    /// `(table, column, type)`.
    columns: &'static [(&'static str, &'static str, &'static str)],
}

/// The schema, oldest first; the store's version is how many of these it has.
const MIGRATIONS: &[Migration] = &[
    Migration {
        sql: "
        -- snapshotter: snapshots and the layer blob each committed one was diffed into
        CREATE TABLE IF NOT EXISTS snapshots (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            parent INTEGER REFERENCES snapshots(id),
            kind TEXT NOT NULL,
            created INTEGER NOT NULL,
            last_used INTEGER,
            size INTEGER
        );
        CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
        CREATE TABLE IF NOT EXISTS layers (
            snapshot INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
            diff_id TEXT NOT NULL,
            blob TEXT NOT NULL,
            size INTEGER NOT NULL,
            media_type TEXT NOT NULL
        );
        -- oci: image names, and the registry repositories blobs came from
        CREATE TABLE IF NOT EXISTS images (name TEXT PRIMARY KEY, manifest TEXT NOT NULL, created INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS blob_origins (digest TEXT NOT NULL, registry TEXT NOT NULL, repository TEXT NOT NULL,
            PRIMARY KEY (digest, registry, repository));
        -- solver: cache keys to snapshots, what keys were made of, each target's last build,
        -- and the context file-hash cache
        CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, snapshot TEXT NOT NULL, created INTEGER NOT NULL,
            last_used INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS key_info (key TEXT PRIMARY KEY, info BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS last_build (target TEXT PRIMARY KEY, steps BLOB NOT NULL, time INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS file_hashes (context TEXT NOT NULL, path TEXT NOT NULL, dev INTEGER NOT NULL,
            ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns TEXT NOT NULL, ctime_ns TEXT NOT NULL, hash BLOB NOT NULL,
            PRIMARY KEY (context, path)) WITHOUT ROWID;
        -- runtime: containers
        CREATE TABLE IF NOT EXISTS containers (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image TEXT NOT NULL,
            manifest TEXT NOT NULL, image_id TEXT NOT NULL, snapshot TEXT NOT NULL, parent TEXT, command TEXT NOT NULL,
            created INTEGER NOT NULL, state TEXT NOT NULL, exit_code INTEGER, finished INTEGER, pid INTEGER, pid_start INTEGER,
            auto_remove INTEGER NOT NULL, settings TEXT NOT NULL);
    ",
        // Added to snapshots before versioning: when it was last used (garbage collection is
        // least-recently-used first) and its disk use (measured once).
        columns: &[("snapshots", "last_used", "INTEGER"), ("snapshots", "size", "INTEGER")],
    },
    Migration {
        sql: "
        -- compressor: the compressed forms made of blobs (layers are stored uncompressed
        -- from version 2 on), kept after the blob is gone: the bytes can be made again,
        -- and a push can ask a registry for the digest first
        CREATE TABLE compressed (source TEXT NOT NULL, compression TEXT NOT NULL, level INTEGER NOT NULL,
            target TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (source, compression, level)) WITHOUT ROWID;
    ",
        columns: &[],
    },
    Migration {
        sql: "
        -- oci: images built without a name (`rdock build -q`, `--iidfile`, `--load`), listed
        -- as <none> and kept, as docker keeps them, until removed by ID or named
        CREATE TABLE untagged (manifest TEXT PRIMARY KEY, created INTEGER NOT NULL) WITHOUT ROWID;
    ",
        columns: &[],
    },
];

/// The newest schema version this rdock knows.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database to [`VERSION`]; refuses one from a newer rdock.
pub fn migrate(conn: &mut Connection) -> Result<(), SnapshotError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(SnapshotError::NewerStore { found, known: VERSION });
    }
    for m in &MIGRATIONS[found as usize..] {
        tx.execute_batch(m.sql)?;
        for (table, col, ty) in m.columns {
            let has: bool =
                tx.query_row("SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2", rusqlite::params![table, col], |r| {
                    r.get(0)
                })?;
            if !has {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {ty}"))?;
            }
        }
    }
    if found < VERSION {
        tracing::info!(from = found, to = VERSION, "store schema upgraded");
        tx.pragma_update(None, "user_version", VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut s = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
        s.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// A store as rdock wrote it before versioning (snapshots without the later columns,
    /// an image, a cache entry) comes through with its rows, and at the newest version.
    #[test]
    fn a_store_from_before_versioning_upgrades_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("metadata.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                parent INTEGER REFERENCES snapshots(id), kind TEXT NOT NULL, created INTEGER NOT NULL);
             INSERT INTO snapshots (key, kind, created) VALUES ('base', 'committed', 1);
             CREATE TABLE images (name TEXT PRIMARY KEY, manifest TEXT NOT NULL, created INTEGER NOT NULL);
             INSERT INTO images VALUES ('busybox:latest', 'sha256:00', 2);
             CREATE TABLE cache (key TEXT PRIMARY KEY, snapshot TEXT NOT NULL, created INTEGER NOT NULL, last_used INTEGER NOT NULL);
             INSERT INTO cache VALUES ('k', 'base', 3, 3);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let v: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, VERSION);
        for t in ["blob_origins", "containers", "file_hashes", "key_info", "last_build", "layers"] {
            assert!(tables(&conn).contains(&t.to_string()), "{t} missing: {:?}", tables(&conn));
        }
        let (key, last_used): (String, Option<i64>) =
            conn.query_row("SELECT key, last_used FROM snapshots", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((key.as_str(), last_used), ("base", None));
        let image: String = conn.query_row("SELECT manifest FROM images", [], |r| r.get(0)).unwrap();
        assert_eq!(image, "sha256:00");
        // Again: nothing to do, nothing changes.
        migrate(&mut conn).unwrap();
        assert_eq!(conn.query_row::<i64, _, _>("SELECT count(*) FROM cache", [], |r| r.get(0)).unwrap(), 1);
    }

    #[test]
    fn a_store_from_a_newer_rdock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("metadata.db")).unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1).unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains(&format!("schema version {}", VERSION + 1)), "{err}");
    }
}
