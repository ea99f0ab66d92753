//! Content digests of build-context files, remembered by their stat identity, so that a
//! rebuild reads only the files that changed.
//!
//! A file's digest is reused when its device, inode, size, mtime and ctime all equal what
//! they were when it was last read: an edit changes mtime and ctime (ctime cannot be set
//! back from user space), a replace changes the inode. The one hole is git's "racy" case: a
//! file written again within the filesystem's timestamp granularity of being read keeps its
//! mtime. So a digest read from a file modified less than [`RACY_WINDOW`] before it was read
//! is used for this build but never remembered; the next build reads the file again.
//!
//! Records live in the store's metadata database (table `file_hashes`), keyed by the
//! context's canonical path and the file's path in it, so several contexts share one store.

use crate::SolveError;
use rdock_snapshotter::Store;
use rusqlite::params;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Files modified this close to being read are re-read on the next build (see the module
/// docs). One second covers every local Linux filesystem's timestamp granularity.
pub const RACY_WINDOW_NS: i128 = 1_000_000_000;

/// What a file's digest is remembered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl StatKey {
    fn of(md: &std::fs::Metadata) -> StatKey {
        StatKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
        }
    }
}

/// How much work hashing the context took: the counters a test or `--progress rawjson`
/// reads to see that a no-op rebuild read no file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HashStats {
    /// Files whose content was read and hashed.
    pub files_read: usize,
    /// Bytes read to do so.
    pub bytes_read: u64,
    /// Files whose digest came from the stat cache.
    pub files_reused: usize,
}

/// Digests of one context directory's files for one build.
pub struct FileHashCache {
    store: Store,
    context: String,
    known: Mutex<HashMap<String, (StatKey, [u8; 32])>>,
    fresh: Mutex<Vec<(String, StatKey, [u8; 32])>>,
    started_ns: i128,
    read: AtomicUsize,
    bytes: AtomicU64,
    reused: AtomicUsize,
}

/// Garbage collection: forgets the digests of context directories that no longer exist.
/// Those of live contexts stay even under `prune --all`: they are an index of the user's
/// files, not build cache, and without them the next build reads every file again.
pub(crate) fn prune_records(store: &Store) -> Result<(), SolveError> {
    let conn = store.db().conn();
    let contexts: Vec<String> = {
        let mut stmt = conn.prepare("SELECT DISTINCT context FROM file_hashes")?;
        stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    for c in contexts.into_iter().filter(|c| !Path::new(c).is_dir()) {
        conn.execute("DELETE FROM file_hashes WHERE context = ?1", params![c])?;
    }
    Ok(())
}

impl FileHashCache {
    /// Loads what the store remembers about `dir`.
    pub fn load(store: &Store, dir: &Path) -> Result<FileHashCache, SolveError> {
        let context = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).to_string_lossy().into_owned();
        let conn = store.db().conn();
        let mut known = HashMap::new();
        {
            let mut stmt =
                conn.prepare_cached("SELECT path, dev, ino, size, mtime_ns, ctime_ns, hash FROM file_hashes WHERE context = ?1")?;
            let rows = stmt.query_map(params![context], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                ))
            })?;
            for row in rows {
                let (path, dev, ino, size, mtime, ctime, hash) = row?;
                let (Ok(mtime_ns), Ok(ctime_ns), Ok(hash)) = (mtime.parse(), ctime.parse(), <[u8; 32]>::try_from(hash.as_slice())) else {
                    continue;
                };
                known.insert(path, (StatKey { dev: dev as u64, ino: ino as u64, size: size as u64, mtime_ns, ctime_ns }, hash));
            }
        }
        let started_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        Ok(FileHashCache {
            store: store.clone(),
            context,
            known: Mutex::new(known),
            fresh: Mutex::new(Vec::new()),
            started_ns,
            read: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            reused: AtomicUsize::new(0),
        })
    }

    /// The blake3 digest of the regular file at `path` (`rel` in the context), from the
    /// cache when its stat is unchanged, else read.
    pub fn digest(&self, rel: &str, path: &Path, md: &std::fs::Metadata) -> Result<[u8; 32], SolveError> {
        let key = StatKey::of(md);
        if let Some((k, h)) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(rel)
            && *k == key
        {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(*h);
        }
        let hash = read_digest(path, md.len())?;
        self.read.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(md.len(), Ordering::Relaxed);
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(rel.to_string(), (key, hash));
        if key.mtime_ns.max(key.ctime_ns) + RACY_WINDOW_NS <= self.started_ns {
            self.fresh.lock().unwrap_or_else(|p| p.into_inner()).push((rel.to_string(), key, hash));
        }
        Ok(hash)
    }

    /// The counters so far.
    pub fn stats(&self) -> HashStats {
        HashStats {
            files_read: self.read.load(Ordering::Relaxed),
            bytes_read: self.bytes.load(Ordering::Relaxed),
            files_reused: self.reused.load(Ordering::Relaxed),
        }
    }

    /// Remembers the digests read in this build, in one transaction.
    pub fn persist(&self) -> Result<(), SolveError> {
        let fresh = std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|p| p.into_inner()));
        if fresh.is_empty() {
            return Ok(());
        }
        let mut conn = self.store.db().conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO file_hashes (context, path, dev, ino, size, mtime_ns, ctime_ns, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (rel, k, h) in &fresh {
                stmt.execute(params![
                    self.context,
                    rel,
                    k.dev as i64,
                    k.ino as i64,
                    k.size as i64,
                    k.mtime_ns.to_string(),
                    k.ctime_ns.to_string(),
                    h.as_slice()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn read_digest(path: &Path, len: u64) -> Result<[u8; 32], SolveError> {
    let err = |e: std::io::Error| SolveError::Context(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = blake3::Hasher::new();
    if len > 1 << 20 {
        h.update_reader(&mut f).map_err(err)?;
    } else {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).map_err(err)?;
        h.update(&buf);
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        (d, s)
    }

    fn age(p: &Path) {
        // Old enough to be remembered (outside the racy window).
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn unchanged_files_are_not_read_again_and_edits_are() {
        let (d, s) = store();
        let ctx = d.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        let f = ctx.join("a");
        std::fs::write(&f, "one").unwrap();
        age(&f);
        // The ctime of a just-written file is now; wait out the racy window once.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let c = FileHashCache::load(&s, &ctx).unwrap();
        let h1 = c.digest("a", &f, &std::fs::metadata(&f).unwrap()).unwrap();
        assert_eq!(c.stats().files_read, 1);
        c.persist().unwrap();

        let c = FileHashCache::load(&s, &ctx).unwrap();
        assert_eq!(c.digest("a", &f, &std::fs::metadata(&f).unwrap()).unwrap(), h1);
        assert_eq!(c.stats(), HashStats { files_read: 0, bytes_read: 0, files_reused: 1 });

        // Same size, mtime set back to the old value: ctime still gives the edit away.
        let old = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::fs::write(&f, "two").unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        let c = FileHashCache::load(&s, &ctx).unwrap();
        let h2 = c.digest("a", &f, &std::fs::metadata(&f).unwrap()).unwrap();
        assert_ne!(h1, h2);
        assert_eq!(c.stats().files_read, 1);
    }

    #[test]
    fn a_file_modified_just_before_it_is_read_is_not_remembered() {
        let (d, s) = store();
        let ctx = d.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        let f = ctx.join("a");
        std::fs::write(&f, "racy").unwrap();
        let c = FileHashCache::load(&s, &ctx).unwrap();
        c.digest("a", &f, &std::fs::metadata(&f).unwrap()).unwrap();
        // Within one build the digest is reused…
        c.digest("a", &f, &std::fs::metadata(&f).unwrap()).unwrap();
        assert_eq!((c.stats().files_read, c.stats().files_reused), (1, 1));
        c.persist().unwrap();
        // …but the next build reads it again.
        let c = FileHashCache::load(&s, &ctx).unwrap();
        c.digest("a", &f, &std::fs::metadata(&f).unwrap()).unwrap();
        assert_eq!(c.stats().files_read, 1);
    }
}
