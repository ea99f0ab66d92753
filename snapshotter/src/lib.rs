//! Filesystem state: overlay snapshots with containerd's verbs, diffs committed as tar
//! layers with OCI whiteouts, layers applied back into snapshots, and the
//! content-addressed blob store.
//!
//! Architecture invariant: depends on no other rdock crate but the pure `imagespec`.
//! Committed snapshots are immutable; every write into the store goes to `tmp/` first and
//! is renamed into place once complete and verified, so a killed process leaves nothing
//! half-written where a reader would find it.
//!
//! Layout under the store root:
//! ```text
//! metadata.db        snapshot, layer, image and cache records (SQLite, WAL)
//! blobs/sha256/HEX   content store
//! snapshots/ID/fs    snapshot contents (an overlay upper dir)
//! snapshots/ID/work  overlay work dir while active
//! tmp/               in-flight writes
//! locks/             flock files: the store lease, and one per cache key being built
//! reserve            2 MiB held back while there is room, released when the disk is full
//! ```
//!
//! ```no_run
//! use rdock_snapshotter::{Snapshotter, Store};
//! let store = Store::open("/var/lib/rdock".as_ref()).unwrap();
//! let mounts = store.snapshots().prepare("active-1", None).unwrap();
//! # let _ = mounts;
//! ```

mod apply;
mod check;
pub mod compress;
mod content;
mod db;
mod diff;
mod error;
mod layers;
pub mod lock;
mod mount;
mod name;
mod overlay;
mod reserve;
pub mod schema;
pub mod testsuite;
mod whiteout;

pub use apply::apply_layer;
pub use compress::{Compressor, Form};
pub use content::{Compression, ContentStore, write_layer};
pub use db::Db;
pub use diff::{LayerBlob, hash_layer, write_tree_tar};
pub use error::SnapshotError;
pub use layers::{ChainLayer, LayerInfo, LayerStore, Unpacked};
pub use mount::{MountSpec, Mounted, OverlayData};
pub use name::SnapshotName;
pub use overlay::{Info, Kind, OverlaySnapshotter, SnapshotRecord, Usage, active_key, disk_usage};
pub use reserve::RESERVE_FILE;
pub use whiteout::{is_opaque, is_opaque_fd};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// containerd's snapshotter verbs. Keys name active snapshots and views; names are the
/// keys committed snapshots are given. Unlike containerd's, a snapshot appears through
/// exactly one mount (an overlay, or a bind of a single directory): no caller has to pick
/// one out of a list.
pub trait Snapshotter: Send + Sync {
    /// A writable snapshot on top of `parent`; returns the mount that makes it appear.
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<MountSpec, SnapshotError>;
    /// A read-only view of `parent`.
    fn view(&self, key: &str, parent: Option<&str>) -> Result<MountSpec, SnapshotError>;
    /// The mount of an existing active snapshot or view.
    fn mounts(&self, key: &str) -> Result<MountSpec, SnapshotError>;
    /// Makes the active snapshot `key` an immutable committed snapshot called `name`.
    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError>;
    /// Removes a snapshot that no other snapshot has as parent.
    fn remove(&self, key: &str) -> Result<(), SnapshotError>;
    /// What is known about a snapshot.
    fn stat(&self, key: &str) -> Result<Info, SnapshotError>;
    /// Disk used by the snapshot's own layer.
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;
    /// Every snapshot.
    fn walk(&self) -> Result<Vec<Info>, SnapshotError>;
}

/// The store: metadata database, content store and snapshotter over one root directory.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    db: Arc<Db>,
    content: ContentStore,
    snapshots: Arc<OverlaySnapshotter>,
    layers: Arc<LayerStore>,
    compressor: Arc<Compressor>,
}

impl Store {
    /// Opens (creating on first use) the store at `root`, and clears what a killed
    /// process left: its temporary files and its active snapshots.
    pub fn open(root: &Path) -> Result<Store, SnapshotError> {
        for d in ["blobs/sha256", "snapshots", "tmp", "locks"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| SnapshotError::io(root.join(d), e))?;
        }
        reserve::keep(root);
        let db = Arc::new(Db::open(&root.join("metadata.db"))?);
        let content = ContentStore::with_layers(root, db.clone());
        let snapshots = Arc::new(OverlaySnapshotter::new(root, db.clone())?);
        snapshots.clean_abandoned()?;
        let layers = Arc::new(LayerStore::new(root, db.clone(), content.clone(), snapshots.clone()));
        let compressor = Arc::new(Compressor::new(db.clone(), content.clone()));
        Ok(Store { root: root.to_path_buf(), db, content, snapshots, layers, compressor })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database, shared by every crate that keeps records.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The blob store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// The snapshotter.
    pub fn snapshots(&self) -> &Arc<OverlaySnapshotter> {
        &self.snapshots
    }

    /// Layer blobs of snapshots, and snapshots of layer blobs (diff and apply).
    pub fn layers(&self) -> &Arc<LayerStore> {
        &self.layers
    }

    /// Compressed forms of blobs, for what leaves the machine.
    pub fn compressor(&self) -> &Arc<Compressor> {
        &self.compressor
    }

    /// The store lease a build holds while it runs (shared with other builds): garbage
    /// collection waits for every lease to go, so it never removes what a build uses.
    pub fn lease(&self) -> Result<lock::FileLock, SnapshotError> {
        let l = lock::flock(&self.root.join("locks/store"), lock::Mode::Shared, lock::Wait::Block)?;
        l.ok_or_else(|| SnapshotError::io(self.root.join("locks/store"), std::io::Error::from(std::io::ErrorKind::WouldBlock)))
    }

    /// The store to itself, for garbage collection: no build runs while it is held.
    /// `Ok(None)` if builds hold leases and `wait` is `NoWait`.
    pub fn exclusive(&self, wait: lock::Wait) -> Result<Option<lock::FileLock>, SnapshotError> {
        lock::flock(&self.root.join("locks/store"), lock::Mode::Exclusive, wait)
    }

    /// One process at a time works on `name` (a cache key); see [`lock::name_lock`].
    pub fn name_lock(&self, name: &str, wait: lock::Wait) -> Result<Option<lock::FileLock>, SnapshotError> {
        lock::name_lock(&self.root.join("locks"), &format!("key-{name}"), wait)
    }
}
