//! `RUN --mount=type=cache`: persistent directories under the store's `cache/`, keyed by
//! id, outliving builds and never part of an image. Sharing: `shared` mounts one
//! directory for everyone; `locked` waits for an exclusive lock; `private` takes the first
//! instance nobody holds, making a new one if all are busy.

use crate::WorkerError;
use rdock_llb::CacheSharing;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A cache directory in use; its lock (if any) is released when dropped.
pub(crate) struct Held {
    pub(crate) dir: PathBuf,
    _lock: Option<File>,
}

fn lock(path: &Path, blocking: bool) -> Result<Option<File>, WorkerError> {
    let f = File::options().create(true).truncate(false).write(true).open(path).map_err(|e| WorkerError::Io(path.to_path_buf(), e))?;
    let op = if blocking { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 { Ok(Some(f)) } else { Ok(None) }
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

/// Finds (creating on first use) the cache directory for `id`.
pub(crate) fn acquire(
    root: &Path,
    id: &str,
    sharing: CacheSharing,
    mode: u32,
    uid: u32,
    gid: u32,
    seed: Option<&Path>,
) -> Result<Held, WorkerError> {
    // Ids are user text: name directories by their hash.
    let name = blake3::hash(id.as_bytes()).to_hex().to_string();
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
