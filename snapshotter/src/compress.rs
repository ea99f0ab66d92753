//! Compressed forms of stored blobs, made only when bytes leave the machine.
//!
//! The layers rdock makes are stored as uncompressed tars, so a layer's blob digest is its
//! diff ID: the cheapest form to make (tar and hash, nothing else) and to read. A push, an
//! OCI or docker export or a cache export asks here for a compressed form. It is made on
//! every core and remembered in the `compressed` table, so a second export reuses the blob
//! and a push can ask a registry for the compressed digest before making anything.
//!
//! Remembering is only sound because the bytes do not depend on the machine: gzip is
//! written in fixed blocks ([`GZIP_BLOCK`]), each compressed with the previous block as
//! its dictionary, as pigz does, and concatenated into one gzip member, so the output is
//! the same for any number of threads; libzstd's multithreaded output is the same for any
//! number of workers.

use crate::content::{BlobWriter, ContentStore};
use crate::db::Db;
use crate::{Compression, SnapshotError};
use gzp::ZWriter;
use gzp::deflate::Gzip;
use gzp::par::compress::ParCompressBuilder;
use rdock_imagespec::Digest;
use rusqlite::{OptionalExtension, params};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// gzip's input block. Pinned: it decides the compressed bytes, which are digests.
pub const GZIP_BLOCK: usize = 128 * 1024;

/// gzip's default level. Pinned for the same reason; 1 is several times faster than 6 for a
/// few per cent in size, and what BuildKit's fast presets use.
pub const GZIP_LEVEL: u32 = 1;

/// zstd's default level, libzstd's and BuildKit's.
pub const ZSTD_LEVEL: i32 = 3;

/// A compressed form asked for: the compression and its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    /// The compression.
    pub compression: Compression,
    /// gzip 0–9, zstd 1–22; ignored for no compression.
    pub level: i32,
}

impl Form {
    /// `compression` at `level`, or at its default level; levels out of range are clamped.
    pub fn new(compression: Compression, level: Option<i32>) -> Form {
        let level = match compression {
            Compression::None => 0,
            Compression::Gzip => level.unwrap_or(GZIP_LEVEL as i32).clamp(0, 9),
            Compression::Zstd => level.unwrap_or(ZSTD_LEVEL).clamp(1, 22),
        };
        Form { compression, level }
    }

    fn name(self) -> &'static str {
        match self.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Makes and remembers compressed forms of blobs in the content store.
pub struct Compressor {
    db: Arc<Db>,
    content: ContentStore,
}

impl Compressor {
    /// Compressed forms of `content`'s blobs, remembered in `db`; `Store::open` makes one.
    pub fn new(db: Arc<Db>, content: ContentStore) -> Compressor {
        Compressor { db, content }
    }

    /// The digest and size of `source` in `form`, if it was made before (the blob itself may
    /// since have been removed: it can be made again, to the same bytes).
    pub fn known(&self, source: &Digest, form: Form) -> Result<Option<(Digest, u64)>, SnapshotError> {
        let row = self
            .db
            .conn()
            .query_row(
                "SELECT target, size FROM compressed WHERE source = ?1 AND compression = ?2 AND level = ?3",
                params![source.as_str(), form.name(), form.level],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(d, size)| Some((Digest::parse(&d).ok()?, size as u64))))
    }

    /// `source` (compressed or not) in `form`, in the content store: the remembered blob when
    /// it is still there, else made now on every core and remembered.
    pub fn compressed(&self, source: &Digest, form: Form) -> Result<(Digest, u64), SnapshotError> {
        if let Some((d, size)) = self.known(source, form)?
            && self.content.contains(&d)
        {
            return Ok((d, size));
        }
        let started = std::time::Instant::now();
        let mut src = self.content.open_uncompressed(source)?;
        let w = self.content.writer()?;
        let io = |e: std::io::Error| SnapshotError::io(self.content.path(source), e);
        let w = compress(&mut src, w, form).map_err(io)?;
        let (digest, size) = w.commit(None)?;
        self.db.conn().execute(
            "INSERT OR REPLACE INTO compressed (source, compression, level, target, size) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![source.as_str(), form.name(), form.level, digest.as_str(), size as i64],
        )?;
        tracing::debug!(%source, target = %digest, form = form.name(), elapsed_ms = started.elapsed().as_millis() as u64, "compressed");
        Ok((digest, size))
    }
}

/// Writes `src` compressed as `form` into `w`, on every core.
fn compress(src: &mut dyn Read, mut w: BlobWriter, form: Form) -> std::io::Result<BlobWriter> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    match form.compression {
        Compression::None => {
            std::io::copy(src, &mut w)?;
            Ok(w)
        }
        Compression::Gzip => gzip(src, w, form.level as u32, threads),
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(w, form.level)?;
            z.multithread(threads as u32)?;
            std::io::copy(src, &mut z)?;
            z.finish()
        }
    }
}

/// pigz-style gzip of `src` into `w` with `threads` compressing threads; the bytes do not
/// depend on `threads`.
pub fn gzip<W: Write + Send + 'static>(src: &mut dyn Read, w: W, level: u32, threads: usize) -> std::io::Result<W> {
    // gzp hands the writer to its own thread and gives it back at the end.
    let shared = Arc::new(Mutex::new(Some(w)));
    let mut gz = ParCompressBuilder::<Gzip>::new()
        .num_threads(threads.max(1))
        .and_then(|b| b.buffer_size(GZIP_BLOCK))
        .map_err(std::io::Error::other)?
        .compression_level(gzp::Compression::new(level))
        .from_writer(Handoff(shared.clone()));
    std::io::copy(src, &mut gz)?;
    gz.finish().map_err(std::io::Error::other)?;
    let w = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
    w.ok_or_else(|| std::io::Error::other("the gzip writer was not given back"))
}

/// A writer shared with gzp's writing thread, taken back once it has finished.
struct Handoff<W>(Arc<Mutex<Option<W>>>);

impl<W: Write> Write for Handoff<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("writer taken")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<u8> {
        // Compressible and not: text, then bytes from a simple generator.
        let mut v: Vec<u8> = (0..200_000).flat_map(|i: u32| format!("line {i}\n").into_bytes()).collect();
        let mut x: u32 = 1;
        v.extend((0..700_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        v
    }

    #[test]
    fn gzip_bytes_do_not_depend_on_the_thread_count_and_decompress_back() {
        let input = data();
        let one = gzip(&mut input.as_slice(), Vec::new(), 1, 1).unwrap();
        let three = gzip(&mut input.as_slice(), Vec::new(), 1, 3).unwrap();
        assert_eq!(one, three);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(one.as_slice()).read_to_end(&mut back).unwrap();
        // GzDecoder stops after the first member: everything is in one.
        assert_eq!(back, input);
    }

    #[test]
    fn compressed_forms_are_remembered_and_made_again_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let source = store.content().put(&data()).unwrap();
        let c = store.compressor();
        let gz = Form::new(Compression::Gzip, None);
        assert_eq!(c.known(&source, gz).unwrap(), None);
        let (d, size) = c.compressed(&source, gz).unwrap();
        assert!(size > 0 && store.content().contains(&d));
        assert_eq!(c.known(&source, gz).unwrap(), Some((d.clone(), size)));
        std::fs::remove_file(store.content().path(&d)).unwrap();
        assert_eq!(c.compressed(&source, gz).unwrap(), (d.clone(), size), "the same bytes again");
        let z = c.compressed(&source, Form::new(Compression::Zstd, None)).unwrap();
        assert_ne!(z.0, d);
        let mut back = Vec::new();
        store.content().open_uncompressed(&z.0).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data());
    }
}
