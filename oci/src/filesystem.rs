//! Filesystem outputs: `type=local` (the final tree copied into a directory) and
//! `type=tar` (the same tree as a tarball). Both read a read-only view of the result.

use crate::OciError;
use crate::atomic::write_atomically;
use rdock_snapshotter::{Mounted, Snapshotter, Store};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn with_view<T>(store: &Store, top: Option<&str>, f: impl FnOnce(&Path) -> Result<T, OciError>) -> Result<T, OciError> {
    let snaps = store.snapshots();
    let key = rdock_snapshotter::active_key("export");
    let mounts = snaps.view(&key, top)?;
    let result = (|| {
        let m = Mounted::new(&mounts, store.root().join("tmp").join(&key))?;
        f(m.path())
    })();
    let _ = snaps.remove(&key);
    result
}

/// Copies the filesystem of `top` into `dest` (created if missing), keeping modes,
/// owners, times and links.
pub fn export_local(store: &Store, top: Option<&str>, dest: &Path) -> Result<(), OciError> {
    std::fs::create_dir_all(dest).map_err(|e| OciError::Io(dest.to_path_buf(), e))?;
    with_view(store, top, |root| copy_tree(root, dest))
}

/// Writes the filesystem of `top` as a tarball at `dest` (renamed into place when complete).
pub fn export_tar(store: &Store, top: Option<&str>, dest: &Path) -> Result<(), OciError> {
    with_view(store, top, |root| {
        if dest.as_os_str() == "-" {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            rdock_snapshotter::write_tree_tar(root, &mut out)?;
            return std::io::Write::flush(&mut out).map_err(|e| OciError::Io(dest.to_path_buf(), e));
        }
        write_atomically(dest, |w| {
            rdock_snapshotter::write_tree_tar(root, w)?;
            Ok(())
        })
    })
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), OciError> {
    let mut dirs = Vec::new();
    for e in walkdir::WalkDir::new(from).min_depth(1).follow_links(false).sort_by_file_name() {
        let e = e.map_err(|e| OciError::Io(from.to_path_buf(), e.into()))?;
        let rel = e.path().strip_prefix(from).unwrap_or(e.path());
        let target = to.join(rel);
        let io = |err: std::io::Error| OciError::Io(target.clone(), err);
        let md = std::fs::symlink_metadata(e.path()).map_err(io)?;
        let ft = md.file_type();
        if ft.is_dir() {
            if !target.is_dir() {
                std::fs::create_dir(&target).map_err(io)?;
            }
            dirs.push((target.clone(), md.clone()));
        } else {
            if std::fs::symlink_metadata(&target).is_ok() {
                std::fs::remove_file(&target).map_err(io)?;
            }
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(e.path()).map_err(io)?, &target).map_err(io)?;
            } else if ft.is_file() {
                std::fs::copy(e.path(), &target).map_err(io)?;
            } else {
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::from_bits_truncate(md.mode() & libc::S_IFMT),
                    nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777),
                    md.rdev(),
                )
                .map_err(|err| io(err.into()))?;
            }
        }
        let _ = std::os::unix::fs::lchown(&target, Some(md.uid()), Some(md.gid()));
        if !ft.is_symlink() && !ft.is_dir() {
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(md.mode() & 0o7777));
        }
        set_times(&target, &md);
    }
    // Directory modes and times last: writing into them changed their times.
    for (d, md) in dirs.iter().rev() {
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(md.mode() & 0o7777));
        set_times(d, md);
    }
    Ok(())
}

fn set_times(p: &Path, md: &std::fs::Metadata) {
    let t = nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec());
    let _ = nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, p, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink);
}
