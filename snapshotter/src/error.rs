//! The snapshotter's errors, each with the path, key or digest a user needs.

use std::path::PathBuf;

/// Something went wrong with a snapshot, a layer or a blob.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The store was written by a newer rdock, whose schema this one does not know.
    #[error(
        "the store's metadata database has schema version {found}, newer than this rdock knows ({known}): use the rdock that made it, or a newer one"
    )]
    NewerStore {
        /// The store's version.
        found: u32,
        /// The newest this rdock knows.
        known: u32,
    },
    /// No snapshot with that key.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// The key is taken.
    #[error("snapshot {0:?} already exists")]
    Exists(String),
    /// The operation needs another kind of snapshot.
    #[error("snapshot {key:?} is {actual}, but {expected} is needed")]
    WrongKind {
        /// The key.
        key: String,
        /// What it is.
        actual: &'static str,
        /// What was needed.
        expected: &'static str,
    },
    /// Other snapshots are built on it.
    #[error("snapshot {0:?} is the parent of other snapshots")]
    InUse(String),
    /// A blob is not what its digest says.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being written.
        what: String,
        /// Expected digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// A blob is missing.
    #[error("blob {0} is not in the content store")]
    BlobNotFound(String),
    /// A layer entry would land outside the snapshot.
    #[error("layer entry {entry:?} escapes the root of the snapshot")]
    PathEscape {
        /// The entry's path.
        entry: String,
    },
    /// A tar layer's stream could not be read (truncated, corrupt compression).
    #[error("broken layer {what}: {source}")]
    LayerRead {
        /// The layer.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tar layer could not be read.
    #[error("broken layer {what}: {reason}")]
    BrokenLayer {
        /// The layer.
        what: String,
        /// Why.
        reason: String,
    },
    /// mount(2) or umount(2) failed.
    #[error("mount {what} at {target}: {errno}")]
    Mount {
        /// The mount.
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        errno: nix::Error,
    },
    /// Too many layers for one overlay mount.
    #[error("{key:?} has {layers} layers, more than one overlay mount can stack; squash some layers")]
    TooManyLayers {
        /// The snapshot.
        key: String,
        /// How many.
        layers: usize,
    },
}

impl SnapshotError {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io { path: path.into(), source }
    }
}
