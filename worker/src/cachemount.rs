//! `RUN --mount=type=cache`: persistent directories under the store's `cache/`, keyed by
//! id, outliving builds and never part of an image. Sharing: `shared` mounts one
//! directory for everyone; `locked` waits for an exclusive lock; `private` takes the first
//! instance nobody holds, making a new one if all are busy.

use crate::WorkerError;
use rdock_llb::CacheSharing;
use rdock_snapshotter::lock::{FileLock, Mode, Wait};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A cache directory in use; its lock (if any) is released when dropped.
pub(crate) struct Held {
    pub(crate) dir: PathBuf,
    _lock: Option<FileLock>,
}

fn lock(path: &Path, blocking: bool) -> Result<Option<FileLock>, WorkerError> {
    let wait = if blocking { Wait::Block } else { Wait::NoWait };
    Ok(rdock_snapshotter::lock::flock(path, Mode::Exclusive, wait)?)
}

fn ensure_dir(dir: &Path, mode: u32, uid: u32, gid: u32, seed: Option<&Path>) -> Result<(), WorkerError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| WorkerError::Io(dir.to_path_buf(), e))?;
    if let Some(seed) = seed {
        // A new cache starts as a copy of its `from` (owners, modes and links kept).
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", seed.display()))
            .arg(dir)
            .status()
            .map_err(|e| WorkerError::Io(dir.to_path_buf(), e))?;
        if !ok.success() {
            return Err(WorkerError::Path {
                path: dir.display().to_string(),
                reason: format!("seeding the cache from {} failed", seed.display()),
            });
        }
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| WorkerError::Io(dir.to_path_buf(), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| WorkerError::Io(dir.to_path_buf(), e))
}

/// The key a cache mount's directory is found by: its id, and its owner and mode unless
/// they are the defaults (uid 0, gid 0, 0755), so a second Dockerfile mounting the same id
/// for another user gets a cache of its own, as in BuildKit, while caches made before
/// this rule keep their directories.
pub fn key(id: &str, mode: u32, uid: u32, gid: u32) -> String {
    if (mode, uid, gid) == (0o755, 0, 0) { id.to_string() } else { format!("{id}\0{uid}:{gid}:{mode:o}") }
}

fn dir_name(id: &str) -> String {
    // Ids are user text: name directories by their hash.
    blake3::hash(id.as_bytes()).to_hex().to_string()
}

/// The directory of cache `id` (its first instance: the one `shared` and `locked` mounts
/// use), whether or not it exists yet.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(dir_name(id))
}

/// Creates cache `id` from an uncompressed tar stream (an imported cache export), unless
/// it exists already. The tree is unpacked beside it and renamed into place, so a reader
/// sees all of it or nothing. Returns false if the cache was there.
pub fn import(root: &Path, id: &str, tar: &mut dyn std::io::Read) -> Result<bool, WorkerError> {
    let dest = dir(root, id);
    if dest.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(root).map_err(|e| WorkerError::Io(root.to_path_buf(), e))?;
    let tmp = root.join(format!(".import-{}-{}", dir_name(id), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| WorkerError::Io(tmp.clone(), e))?;
    if let Err(e) = rdock_snapshotter::apply_layer(tar, &tmp, &format!("cache mount {id}")) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok(true),
        Err(_) => {
            // Another build created it meanwhile: theirs stands.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(false)
        }
    }
}

/// True if the cache `id` has never been created, so a seed would be used.
pub(crate) fn is_new(root: &Path, id: &str) -> bool {
    !root.join(dir_name(id)).is_dir()
}

/// Finds (creating on first use) the cache directory for `id`, marking it used now:
/// garbage collection removes the least recently used caches first.
pub(crate) fn acquire(
    root: &Path,
    id: &str,
    sharing: CacheSharing,
    mode: u32,
    uid: u32,
    gid: u32,
    seed: Option<&Path>,
) -> Result<Held, WorkerError> {
    let held = find(root, id, sharing, mode, uid, gid, seed)?;
    let _ = std::fs::File::open(&held.dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
    Ok(held)
}

fn find(root: &Path, id: &str, sharing: CacheSharing, mode: u32, uid: u32, gid: u32, seed: Option<&Path>) -> Result<Held, WorkerError> {
    let name = dir_name(id);
    std::fs::create_dir_all(root).map_err(|e| WorkerError::Io(root.to_path_buf(), e))?;
    match sharing {
        CacheSharing::Shared => {
            let dir = root.join(&name);
            ensure_dir(&dir, mode, uid, gid, seed)?;
            Ok(Held { dir, _lock: None })
        }
        CacheSharing::Locked => {
            let dir = root.join(&name);
            let l = lock(&root.join(format!("{name}.lock")), true)?;
            ensure_dir(&dir, mode, uid, gid, seed)?;
            Ok(Held { dir, _lock: l })
        }
        CacheSharing::Private => {
            let mut n = 0u32;
            loop {
                let inst = if n == 0 { name.clone() } else { format!("{name}.{n}") };
                if let Some(l) = lock(&root.join(format!("{inst}.lock")), false)? {
                    let dir = root.join(&inst);
                    ensure_dir(&dir, mode, uid, gid, seed)?;
                    return Ok(Held { dir, _lock: Some(l) });
                }
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let a = acquire(root, "id", CacheSharing::Shared, 0o755, 0, 0, None).unwrap();
        let b = acquire(root, "id", CacheSharing::Shared, 0o755, 0, 0, None).unwrap();
        assert_eq!(a.dir, b.dir, "shared: one directory for everyone");
        let p1 = acquire(root, "p", CacheSharing::Private, 0o755, 0, 0, None).unwrap();
        let p2 = acquire(root, "p", CacheSharing::Private, 0o755, 0, 0, None).unwrap();
        assert_ne!(p1.dir, p2.dir, "private: a busy cache gives the next user its own");
        let first = p1.dir.clone();
        drop(p1);
        let p3 = acquire(root, "p", CacheSharing::Private, 0o755, 0, 0, None).unwrap();
        assert_eq!(p3.dir, first, "a released private cache is reused");
        // locked: a second holder waits until the first lets go.
        let l1 = acquire(root, "l", CacheSharing::Locked, 0o755, 0, 0, None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root2 = root.to_path_buf();
        let t = std::thread::spawn(move || {
            let l2 = acquire(&root2, "l", CacheSharing::Locked, 0o755, 0, 0, None).unwrap();
            tx.send(l2.dir.clone()).unwrap();
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "the second locked user did not wait");
        let held = l1.dir.clone();
        drop(l1);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), held);
        t.join().unwrap();
        // Seeding spawns `cp`, whose fork briefly holds copies of open lock files, so it
        // runs after the lock checks rather than beside them.
        a_new_cache_is_seeded();
    }

    #[test]
    fn owner_and_mode_are_part_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = acquire(dir.path(), &key("pip", 0o755, 0, 0), CacheSharing::Shared, 0o755, 0, 0, None).unwrap();
        let b = acquire(dir.path(), &key("pip", 0o755, 1000, 1000), CacheSharing::Shared, 0o755, 1000, 1000, None).unwrap();
        assert_ne!(a.dir, b.dir);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&b.dir).unwrap()), 1000);
        assert_eq!(key("pip", 0o755, 0, 0), "pip");
    }

    fn a_new_cache_is_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(seed.join("sub")).unwrap();
        std::fs::write(seed.join("sub/f"), "x").unwrap();
        let h = acquire(&dir.path().join("cache"), "s", CacheSharing::Shared, 0o700, 0, 0, Some(&seed)).unwrap();
        assert_eq!(std::fs::read_to_string(h.dir.join("sub/f")).unwrap(), "x");
        assert_eq!(std::fs::metadata(&h.dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
