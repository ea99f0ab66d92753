//! The content-addressed blob store: `blobs/sha256/HEX`, written through `tmp/` and
//! renamed into place only once the digest is verified.
//!
//! The layers rdock makes are not written here when their step commits: their tar is a
//! pure function of the committed snapshot's directory (see `diff.rs`), so only its
//! digest is recorded, and the bytes are made from the snapshot when something reads the
//! blob ([`ContentStore::reader`] streams them, [`ContentStore::ensure`] writes them out
//! for whoever needs a file). Writing every layer twice, once as files and once as a tar,
//! made the disk the limit of every build that writes real data.

use crate::SnapshotError;
use crate::db::Db;
use rdock_imagespec::Digest;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The blob store under a store root.
#[derive(Clone)]
pub struct ContentStore {
    root: PathBuf,
    /// The store's records, where the layers made from snapshots are found; None for a
    /// bare blob store.
    layers: Option<Arc<Db>>,
}

/// A blob being written: bytes go to a temp file and through sha256.
pub struct BlobWriter {
    file: std::io::BufWriter<File>,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    blobs: PathBuf,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore").field("root", &self.root).field("layers", &self.layers.is_some()).finish()
    }
}

impl ContentStore {
    /// The store rooted at `root` (blobs in `root/blobs/sha256`, temp files in `root/tmp`).
    pub fn new(root: &Path) -> ContentStore {
        ContentStore { root: root.to_path_buf(), layers: None }
    }

    /// The blob store of a whole store, whose layers made from snapshots (the `layers`
    /// table in `db`, snapshot directories under `root/snapshots`) are blobs too.
    pub fn with_layers(root: &Path, db: Arc<Db>) -> ContentStore {
        ContentStore { root: root.to_path_buf(), layers: Some(db) }
    }

    /// Where a blob's file lives (it may not exist: see [`ContentStore::ensure`]).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// True if the blob can be read: its file is here, or it is a layer made from a
    /// snapshot that is.
    pub fn contains(&self, d: &Digest) -> bool {
        self.has_file(d) || self.layer_dir(d).is_some()
    }

    /// True if the blob's file is here (garbage collection and `fsck` count files).
    pub fn has_file(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// The committed snapshot directory whose tar is the layer blob `d`, if `d` is one
    /// rdock made (its blob digest is its diff ID).
    fn layer_dir(&self, d: &Digest) -> Option<PathBuf> {
        let db = self.layers.as_ref()?;
        let id: i64 = db
            .conn()
            .query_row(
                "SELECT l.snapshot FROM layers l JOIN snapshots s ON s.id = l.snapshot
                 WHERE l.blob = ?1 AND l.diff_id = ?1 AND s.kind = 'committed' LIMIT 1",
                params![d.as_str()],
                |r| r.get(0),
            )
            .optional()
            .ok()??;
        let dir = self.root.join("snapshots").join(id.to_string()).join("fs");
        dir.is_dir().then_some(dir)
    }

    /// A blob's size in bytes: its file's, or the size recorded for a layer made from a
    /// snapshot.
    pub fn size(&self, d: &Digest) -> Result<u64, SnapshotError> {
        match std::fs::metadata(self.path(d)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let db = self.layers.as_ref().ok_or_else(|| SnapshotError::BlobNotFound(d.to_string()))?;
                let size: Option<i64> = db
                    .conn()
                    .query_row("SELECT size FROM layers WHERE blob = ?1 AND diff_id = ?1 LIMIT 1", params![d.as_str()], |r| r.get(0))
                    .optional()?;
                size.map(|s| s as u64).ok_or_else(|| SnapshotError::BlobNotFound(d.to_string()))
            }
            Err(e) => Err(SnapshotError::io(self.path(d), e)),
        }
    }

    /// Makes sure the blob's file is here, writing out a layer made from a snapshot (and
    /// checking it still hashes to its digest). For whoever needs a path; readers use
    /// [`ContentStore::reader`], which writes nothing.
    pub fn ensure(&self, d: &Digest) -> Result<(), SnapshotError> {
        if self.has_file(d) {
            return Ok(());
        }
        let Some(dir) = self.layer_dir(d) else { return Err(SnapshotError::BlobNotFound(d.to_string())) };
        let w = crate::diff::write_tree_tar(&dir, self.writer()?)?;
        w.commit(Some(d))?;
        Ok(())
    }

    /// Opens a blob's file for reading, writing it out first if it is a layer made from a
    /// snapshot (see [`ContentStore::ensure`]).
    pub fn open(&self, d: &Digest) -> Result<File, SnapshotError> {
        self.ensure(d)?;
        File::open(self.path(d)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SnapshotError::BlobNotFound(d.to_string()),
            _ => SnapshotError::io(self.path(d), e),
        })
    }

    /// A blob's bytes: its file, or for a layer made from a snapshot, its tar made as it is
    /// read (the stream ends in an error if the bytes do not hash to `d`).
    pub fn reader(&self, d: &Digest) -> Result<Box<dyn Read + Send>, SnapshotError> {
        if !self.has_file(d)
            && let Some(dir) = self.layer_dir(d)
        {
            return Ok(Box::new(crate::diff::TreeReader::spawn(dir, d.clone())?));
        }
        Ok(Box::new(self.open(d)?))
    }

    /// Reads a whole (small) blob, verifying its digest.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = Vec::new();
        self.open(d)?.read_to_end(&mut buf).map_err(|e| SnapshotError::io(self.path(d), e))?;
        let actual = Digest::of(&buf);
        if &actual != d {
            return Err(SnapshotError::DigestMismatch {
                what: format!("blob {}", self.path(d).display()),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(buf)
    }

    /// The sha256 of a stored blob's content, streamed (blobs may be large): `fsck` compares
    /// it with the blob's name.
    pub fn hash(&self, d: &Digest) -> Result<Digest, SnapshotError> {
        let mut f = self.open(d)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| SnapshotError::io(self.path(d), e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Digest::from_sha256(h.finalize().into()))
    }

    /// How a stored blob is compressed, told by its first bytes (a layer made from a
    /// snapshot is a tar without being read).
    pub fn compression(&self, d: &Digest) -> Result<Compression, SnapshotError> {
        if !self.has_file(d) && self.layer_dir(d).is_some() {
            return Ok(Compression::None);
        }
        let mut head = Vec::with_capacity(4);
        self.open(d)?.take(4).read_to_end(&mut head).map_err(|e| SnapshotError::io(self.path(d), e))?;
        Ok(Compression::sniff(&head))
    }

    /// Opens a layer blob as its uncompressed tar stream. gzip and zstd are recognised by
    /// their magic bytes, as containerd does, whatever the media type says (some
    /// producers label a zstd layer `+gzip`, or an uncompressed one either way).
    pub fn open_uncompressed(&self, d: &Digest) -> Result<Box<dyn Read + Send>, SnapshotError> {
        uncompressed(self.reader(d)?).map_err(|e| SnapshotError::io(self.path(d), e))
    }

    /// Stores bytes, returning their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, SnapshotError> {
        let d = Digest::of(bytes);
        if self.contains(&d) {
            return Ok(d);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(|e| SnapshotError::io(&w.tmp, e))?;
        w.commit(Some(&d))?;
        Ok(d)
    }

    /// Starts writing a blob of unknown digest.
    pub fn writer(&self) -> Result<BlobWriter, SnapshotError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("blob-{}-{n}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| SnapshotError::io(&tmp, e))?;
        Ok(BlobWriter {
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            tmp,
            hasher: Sha256::new(),
            size: 0,
            blobs: self.root.join("blobs/sha256"),
        })
    }

    /// Copies a stream into the store, verifying it against `expected` if given.
    pub fn put_reader(&self, r: &mut dyn Read, expected: Option<&Digest>) -> Result<(Digest, u64), SnapshotError> {
        let mut w = self.writer()?;
        std::io::copy(r, &mut w).map_err(|e| SnapshotError::io(&w.tmp, e))?;
        w.commit(expected)
    }
}

/// Writes the diff held in `upper` (an overlay upper dir) into `content` as an uncompressed
/// tar layer, hashed once as it is written: for directories that are not committed
/// snapshots (`rdock commit`'s container upper, a cache export's cache mounts), whose tar
/// cannot be made again later.
pub fn write_layer(upper: &Path, content: &ContentStore) -> Result<crate::LayerBlob, SnapshotError> {
    let blob = crate::diff::write_tree_tar(upper, content.writer()?)?;
    let (diff_id, size) = blob.commit(None)?;
    Ok(crate::LayerBlob { diff_id, size })
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Finishes: verifies against `expected` and renames into place. On mismatch the temp
    /// file is removed and nothing enters the store.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), SnapshotError> {
        self.file.flush().map_err(|e| SnapshotError::io(&self.tmp, e))?;
        let d = Digest::from_sha256(self.hasher.finalize_reset().into());
        if let Some(e) = expected
            && e != &d
        {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(SnapshotError::DigestMismatch { what: "blob".into(), expected: e.to_string(), actual: d.to_string() });
        }
        let dest = self.blobs.join(d.hex());
        std::fs::rename(&self.tmp, &dest).map_err(|e| SnapshotError::io(&dest, e))?;
        Ok((d, self.size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After commit the temp path no longer exists; otherwise this discards a partial blob.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: zstd layers were read as broken tars. The magic bytes decide, whatever
    /// the media type claims.
    #[test]
    fn zstd_gzip_and_plain_layers_read_as_their_tar() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let store = ContentStore::new(dir.path());
        let tar = b"pretend this is a tar stream".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blobs = [
            (zstd::stream::encode_all(&tar[..], 3).unwrap(), Compression::Zstd),
            (gz.finish().unwrap(), Compression::Gzip),
            (tar.clone(), Compression::None),
        ];
        for (blob, kind) in blobs {
            assert_eq!(Compression::sniff(&blob), kind);
            let d = store.put(&blob).unwrap();
            let mut out = Vec::new();
            store.open_uncompressed(&d).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, tar, "{kind:?}");
        }
        assert_eq!(Compression::Zstd.media_type(), "application/vnd.oci.image.layer.v1.tar+zstd");
    }

    #[test]
    fn mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let cs = ContentStore::new(dir.path());
        let wrong = Digest::of(b"something else");
        let err = cs.put_reader(&mut &b"hello"[..], Some(&wrong)).unwrap_err();
        assert!(matches!(err, SnapshotError::DigestMismatch { .. }));
        assert_eq!(std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let d = cs.put(b"hello").unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
    }

    #[test]
    fn corrupted_blob_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let cs = ContentStore::new(dir.path());
        let d = cs.put(b"hello").unwrap();
        std::fs::write(cs.path(&d), b"hellO").unwrap();
        assert!(matches!(cs.read(&d), Err(SnapshotError::DigestMismatch { .. })));
    }
}

/// A layer stream as its uncompressed tar: gzip and zstd are told by their magic bytes.
pub fn uncompressed<R: Read + Send + 'static>(r: R) -> std::io::Result<Box<dyn Read + Send>> {
    use std::io::BufRead;
    let mut r = std::io::BufReader::with_capacity(256 * 1024, r);
    let head = r.fill_buf()?;
    match Compression::sniff(head) {
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r))),
        Compression::Zstd => Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?)),
        Compression::None => Ok(Box::new(r)),
    }
}

/// How a layer blob is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// An uncompressed tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Reads the magic bytes at the start of a blob.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI media type of a layer compressed so.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => rdock_imagespec::MEDIA_TYPE_OCI_LAYER,
            Compression::Gzip => rdock_imagespec::MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression::Zstd => rdock_imagespec::MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }
}
