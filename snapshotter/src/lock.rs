//! Locks between rdock processes sharing one store, on `flock(2)`: the kernel drops them
//! when their holder dies, so a killed build never leaves a lock behind.
//!
//! Two kinds:
//! - the **store lease** (`locks/store`): every build holds it shared while it runs; the
//!   garbage collector takes it exclusive, so it never removes what a live build uses;
//! - **name locks** (`locks/NAME`): one process at a time works on a name (a cache key),
//!   so two builds running the same step run it once and the second reuses the first's
//!   result. Their files are removed on release.

use crate::SnapshotError;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An flock on an open file; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    /// Removed on release (name locks), or kept (the store lease).
    remove: Option<PathBuf>,
}

/// Whether to wait for a lock another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Block until it is free.
    Block,
    /// Give up at once.
    NoWait,
}

/// Shared (many holders) or exclusive (one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

fn open(path: &Path) -> Result<File, SnapshotError> {
    File::options().create(true).truncate(false).write(true).open(path).map_err(|e| SnapshotError::io(path, e))
}

/// Takes an flock on `path` (created if absent). `Ok(None)`: held elsewhere and `NoWait`.
pub fn flock(path: &Path, mode: Mode, wait: Wait) -> Result<Option<FileLock>, SnapshotError> {
    let file = open(path)?;
    if lock_fd(&file, mode, wait).map_err(|e| SnapshotError::io(path, e))? { Ok(Some(FileLock { file, remove: None })) } else { Ok(None) }
}

fn lock_fd(file: &File, mode: Mode, wait: Wait) -> std::io::Result<bool> {
    let mut op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    };
    if wait == Wait::NoWait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// An exclusive lock on `name` under `dir`, whose file is removed on release. A file is
/// unlinked only by the holder of its lock, and a lock taken on a file that was unlinked
/// meanwhile is dropped and retried, so two processes never both hold one name.
pub fn name_lock(dir: &Path, name: &str, wait: Wait) -> Result<Option<FileLock>, SnapshotError> {
    let path = dir.join(name);
    loop {
        let file = open(&path)?;
        if !lock_fd(&file, Mode::Exclusive, wait).map_err(|e| SnapshotError::io(&path, e))? {
            return Ok(None);
        }
        let held = file.metadata().map_err(|e| SnapshotError::io(&path, e))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                return Ok(Some(FileLock { file, remove: Some(path) }));
            }
            // Its holder released and removed it between our open and our lock.
            _ => continue,
        }
    }
}

impl FileLock {
    /// The lock's file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Some(p) = &self.remove {
            // Unlinked while still locked: whoever opened it meanwhile sees the inode change.
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_locks_exclude_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = name_lock(dir.path(), "k", Wait::NoWait).unwrap().expect("free");
        // flock is per open file description: a second open in this process conflicts too.
        assert!(name_lock(dir.path(), "k", Wait::NoWait).unwrap().is_none());
        drop(a);
        assert!(!dir.path().join("k").exists(), "released name locks leave no file");
        let b = name_lock(dir.path(), "k", Wait::NoWait).unwrap();
        assert!(b.is_some());
    }

    #[test]
    fn shared_locks_coexist_and_exclude_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let s1 = flock(&p, Mode::Shared, Wait::NoWait).unwrap().expect("free");
        let s2 = flock(&p, Mode::Shared, Wait::NoWait).unwrap();
        assert!(s2.is_some());
        assert!(flock(&p, Mode::Exclusive, Wait::NoWait).unwrap().is_none());
        drop(s1);
        drop(s2);
        assert!(flock(&p, Mode::Exclusive, Wait::NoWait).unwrap().is_some());
    }

    #[test]
    fn a_waiter_gets_the_name_after_its_holder_releases() {
        let dir = tempfile::tempdir().unwrap();
        let held = name_lock(dir.path(), "k", Wait::Block).unwrap().expect("lock");
        let d = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || name_lock(&d, "k", Wait::Block).unwrap().is_some());
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap());
    }
}
