//! Layers ↔ snapshots, containerd's diff and apply beside its snapshotter: the layer blob
//! of a committed snapshot (its upper dir as a tar with OCI whiteouts, made once and
//! recorded in the `layers` table), and snapshots made by applying layer blobs. The
//! snapshotter keeps the snapshots; this keeps what they are as layers.

use crate::content::ContentStore;
use crate::db::Db;
use crate::diff::hash_layer;
use crate::overlay::{Kind, OverlaySnapshotter, active_key};
use crate::{SnapshotError, Snapshotter};
use rdock_imagespec::{Digest, MEDIA_TYPE_OCI_LAYER};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The layer blob of a committed snapshot: an uncompressed tar for the layers rdock makes
/// (since store version 2; earlier stores' gzip ones stay valid), the blob as it came for
/// pulled and imported ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Uncompressed digest.
    pub diff_id: Digest,
    /// Blob digest.
    pub blob: Digest,
    /// Blob size.
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
}

/// One layer of a chain to import: the snapshot name it becomes, its blob, and the blob's
/// media type.
#[derive(Debug, Clone, Copy)]
pub struct ChainLayer<'a> {
    /// The committed snapshot's name (`layer-CHAINID`).
    pub name: &'a str,
    /// The layer blob in the content store.
    pub blob: &'a Digest,
    /// Its media type.
    pub media_type: &'a str,
}

/// Layer blobs of snapshots, and snapshots of layer blobs.
pub struct LayerStore {
    root: PathBuf,
    db: Arc<Db>,
    content: ContentStore,
    snapshots: Arc<OverlaySnapshotter>,
}

impl LayerStore {
    /// The layers of `snapshots`' snapshots, with blobs in `content`; `Store::open` makes one.
    pub fn new(root: &Path, db: Arc<Db>, content: ContentStore, snapshots: Arc<OverlaySnapshotter>) -> LayerStore {
        LayerStore { root: root.to_path_buf(), db, content, snapshots }
    }

    /// The layer blob of a committed snapshot, hashing and recording it the first time.
    /// Its bytes are made from the snapshot when read (see `content.rs`).
    pub fn layer(&self, name: &str) -> Result<LayerInfo, SnapshotError> {
        let info = self.snapshots.info(name)?;
        if info.kind != Kind::Committed {
            return Err(SnapshotError::WrongKind { key: name.to_string(), actual: info.kind.as_str(), expected: "committed" });
        }
        if let Some(l) = self.recorded_layer(info.id)?
            && self.content.contains(&l.blob)
        {
            return Ok(l);
        }
        let blob = hash_layer(&self.snapshots.fs_dir(name)?)?;
        let l =
            LayerInfo { blob: blob.diff_id.clone(), diff_id: blob.diff_id, size: blob.size, media_type: MEDIA_TYPE_OCI_LAYER.to_string() };
        self.record_layer(info.id, &l)?;
        Ok(l)
    }

    fn recorded_layer(&self, id: i64) -> Result<Option<LayerInfo>, SnapshotError> {
        let conn = self.db.conn();
        let row = conn
            .query_row("SELECT diff_id, blob, size, media_type FROM layers WHERE snapshot = ?1", params![id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })
            .optional()?;
        Ok(row.and_then(|(d, b, s, m)| {
            Some(LayerInfo { diff_id: Digest::parse(&d).ok()?, blob: Digest::parse(&b).ok()?, size: s as u64, media_type: m })
        }))
    }

    fn record_layer(&self, id: i64, l: &LayerInfo) -> Result<(), SnapshotError> {
        self.db.conn().execute(
            "INSERT OR REPLACE INTO layers (snapshot, diff_id, blob, size, media_type) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, l.diff_id.as_str(), l.blob.as_str(), l.size as i64, l.media_type],
        )?;
        Ok(())
    }

    /// The layers of a committed snapshot's chain, bottom first.
    pub fn chain_layers(&self, name: &str) -> Result<Vec<LayerInfo>, SnapshotError> {
        let mut chain = self.snapshots.chain(name)?;
        chain.reverse();
        chain.iter().map(|i| self.layer(&i.key)).collect()
    }

    /// Unpacks a layer blob from the content store into a new committed snapshot `name`
    /// on top of `parent`, recording the blob as its layer. Nothing is left behind on error.
    pub fn import_layer(&self, name: &str, parent: Option<&str>, blob: &Digest, media_type: &str) -> Result<LayerInfo, SnapshotError> {
        if self.snapshots.exists(name)? {
            return self.layer(name);
        }
        let snaps = self.snapshots.as_ref();
        let key = active_key("import");
        snaps.prepare(&key, parent)?;
        let result = (|| {
            let fs = snaps.fs_dir(&key)?;
            let mut r = self.content.open_uncompressed(blob)?;
            let diff_id = crate::apply_layer(&mut r, &fs, blob.as_str())?;
            let size = self.content.size(blob)?;
            Ok(LayerInfo { diff_id, blob: blob.clone(), size, media_type: media_type.to_string() })
        })();
        match result {
            Ok(l) => {
                match snaps.commit(name, &key) {
                    Ok(()) => {}
                    Err(SnapshotError::Exists(_)) => {
                        // Another process imported the same layer first: use theirs.
                        let _ = snaps.remove(&key);
                        return self.layer(name);
                    }
                    Err(e) => {
                        let _ = snaps.remove(&key);
                        return Err(e);
                    }
                }
                let id = snaps.info(name)?.id;
                self.record_layer(id, &l)?;
                Ok(l)
            }
            Err(e) => {
                let _ = snaps.remove(&key);
                Err(e)
            }
        }
    }

    /// Unpacks a chain of layers (bottom first, on top of `parent`) into committed
    /// snapshots, skipping those that exist. A layer's diff does not depend on what lies
    /// below it (whiteouts are recorded, not applied), so every missing layer is unpacked
    /// at once into a directory of its own under `tmp/`; the snapshots are then created
    /// bottom-up by renaming those directories into place. Nothing is left behind on error.
    pub fn import_chain(&self, layers: &[ChainLayer<'_>], parent: Option<&str>) -> Result<Vec<LayerInfo>, SnapshotError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut todo = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            if !self.snapshots.exists(l.name)? {
                let tmp = self.root.join("tmp").join(format!("unpack-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
                todo.push((i, tmp));
            }
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(todo.len().max(1));
        let next = AtomicU64::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<Digest, SnapshotError>>>> = todo.iter().map(|_| Default::default()).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some((i, tmp)) = todo.get(k) else { break };
                        let r = self.unpack_into(layers[*i].blob, tmp);
                        *results[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    }
                });
            }
        });
        let mut unpacked: HashMap<usize, (PathBuf, Result<Digest, SnapshotError>)> = HashMap::new();
        for ((i, tmp), r) in todo.into_iter().zip(results) {
            let r = r
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(SnapshotError::NotFound(tmp.display().to_string())));
            unpacked.insert(i, (tmp, r));
        }
        let cleanup = |unpacked: &HashMap<usize, (PathBuf, Result<Digest, SnapshotError>)>| {
            for (tmp, _) in unpacked.values() {
                let _ = std::fs::remove_dir_all(tmp);
            }
        };
        let mut out = Vec::with_capacity(layers.len());
        let mut below: Option<String> = parent.map(str::to_string);
        for (i, l) in layers.iter().enumerate() {
            let Some((tmp, r)) = unpacked.remove(&i) else {
                out.push(self.layer(l.name)?);
                below = Some(l.name.to_string());
                continue;
            };
            let diff_id = match r {
                Ok(d) => d,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    cleanup(&unpacked);
                    return Err(e);
                }
            };
            let size = match self.content.size(l.blob) {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    cleanup(&unpacked);
                    return Err(e);
                }
            };
            let info = LayerInfo { diff_id, blob: l.blob.clone(), size, media_type: l.media_type.to_string() };
            if let Err(e) = self.place(l.name, below.as_deref(), &tmp, &info) {
                let _ = std::fs::remove_dir_all(&tmp);
                cleanup(&unpacked);
                return Err(e);
            }
            out.push(info);
            below = Some(l.name.to_string());
        }
        Ok(out)
    }

    /// Unpacks a layer stream (gzip, zstd or a tar) into a new directory under `tmp/`, for
    /// [`LayerStore::place_unpacked`]: a pull unpacks each layer while it downloads. The
    /// directory goes with the [`Unpacked`] unless it is placed.
    pub fn unpack_stream<R: Read + Send + 'static>(&self, r: R, what: &str) -> Result<Unpacked, SnapshotError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join("tmp").join(format!("stream-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io(&dir, e))?;
        let mut dir = Unpacked { dir, diff_id: None };
        let mut r = crate::content::uncompressed(r).map_err(|source| SnapshotError::LayerRead { what: what.to_string(), source })?;
        let diff_id = crate::apply_layer(&mut r, &dir.dir, what)?;
        // The rest of the stream (gzip's trailer, tar's padding) is read, so the writer
        // never blocks on a reader that has gone.
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|source| SnapshotError::LayerRead { what: what.to_string(), source })?;
        dir.diff_id = Some(diff_id);
        Ok(dir)
    }

    /// Makes `unpacked` the committed snapshot `name` on `parent`, with `blob` (of
    /// `media_type`, in the content store) as its layer.
    pub fn place_unpacked(
        &self,
        name: &str,
        parent: Option<&str>,
        unpacked: Unpacked,
        blob: &Digest,
        media_type: &str,
    ) -> Result<LayerInfo, SnapshotError> {
        let diff_id = unpacked.diff_id.clone().ok_or_else(|| SnapshotError::NotFound(unpacked.dir.display().to_string()))?;
        let size = self.content.size(blob)?;
        let info = LayerInfo { diff_id, blob: blob.clone(), size, media_type: media_type.to_string() };
        self.place(name, parent, &unpacked.dir, &info)?;
        Ok(info)
    }

    /// Applies a layer blob into a new directory `dest`, returning its diff ID.
    fn unpack_into(&self, blob: &Digest, dest: &Path) -> Result<Digest, SnapshotError> {
        std::fs::create_dir_all(dest).map_err(|e| SnapshotError::io(dest, e))?;
        let mut r = self.content.open_uncompressed(blob)?;
        crate::apply_layer(&mut r, dest, blob.as_str())
    }

    /// Makes the unpacked directory `tmp` the committed snapshot `name` on `parent`, with
    /// `l` as its layer.
    fn place(&self, name: &str, parent: Option<&str>, tmp: &Path, l: &LayerInfo) -> Result<(), SnapshotError> {
        match self.snapshots.commit_dir(name, parent, tmp)? {
            Some(id) => self.record_layer(id, l),
            // Another process made it first: theirs stands.
            None => Ok(()),
        }
    }
}

/// A layer unpacked into a directory of its own, not yet a snapshot: the directory is
/// removed when this is dropped, unless [`LayerStore::place_unpacked`] renamed it into
/// place.
#[derive(Debug)]
pub struct Unpacked {
    dir: PathBuf,
    diff_id: Option<Digest>,
}

impl Unpacked {
    /// The diff ID the layer unpacked to.
    pub fn diff_id(&self) -> Option<&Digest> {
        self.diff_id.as_ref()
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
