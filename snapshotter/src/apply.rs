//! Tar layer → directory: OCI whiteouts become overlay whiteouts, ownership, modes and
//! times are kept, and any entry that would land outside the directory is refused.

use crate::SnapshotError;
use crate::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, make_overlay_whiteout, set_opaque};
use rdock_imagespec::Digest;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Normalises an entry path to a relative path inside the root, or refuses it.
fn safe_relative(p: &Path) -> Result<PathBuf, SnapshotError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(SnapshotError::PathEscape { entry: p.display().to_string() });
            }
        }
    }
    Ok(out)
}

/// Applies the uncompressed tar stream `layer` into `dest`, returning the stream's sha256
/// (the layer's diff ID). `what` names the layer in errors.
pub fn apply_layer(layer: &mut dyn Read, dest: &Path, what: &str) -> Result<Digest, SnapshotError> {
    let broken = |reason: String| SnapshotError::BrokenLayer { what: what.to_string(), reason };
    let mut reader = HashingReader { inner: layer, hasher: Sha256::new() };
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        archive.set_unpack_xattrs(true);
        let entries = archive.entries().map_err(|e| broken(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| broken(e.to_string()))?;
            let raw = entry.path().map_err(|e| broken(e.to_string()))?.into_owned();
            let rel = safe_relative(&raw)?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            if name == OPAQUE_MARKER {
                let dir = dest.join(&parent);
                std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io(&dir, e))?;
                set_opaque(&dir).map_err(|e| SnapshotError::io(&dir, e))?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let target = dest.join(&parent).join(hidden);
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p).map_err(|e| SnapshotError::io(p, e))?;
                }
                let _ = std::fs::remove_file(&target);
                make_overlay_whiteout(&target).map_err(|e| SnapshotError::io(&target, e))?;
                continue;
            }
            if entry.header().entry_type() == tar::EntryType::Link
                && let Ok(Some(link)) = entry.link_name()
            {
                safe_relative(&link)?;
            }
            let is_dir = entry.header().entry_type().is_dir();
            let mtime = entry.header().mtime().unwrap_or(0) as i64;
            let unpacked = entry.unpack_in(dest).map_err(|e| {
                // tar's error says which file; its source says why.
                let why = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                broken(format!("{}: {e}{why}", raw.display()))
            })?;
            if !unpacked {
                return Err(SnapshotError::PathEscape { entry: raw.display().to_string() });
            }
            if is_dir {
                dir_times.push((dest.join(&rel), mtime));
            }
        }
    }
    // Drain the end-of-archive padding so the digest covers the whole stream.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| broken(e.to_string()))?;
    // Files created inside a directory changed its mtime after its own entry was applied.
    for (dir, mtime) in dir_times.iter().rev() {
        let t = nix::sys::time::TimeSpec::new(*mtime, 0);
        let _ = nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, dir.as_path(), &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink);
    }
    Ok(Digest::from_sha256(reader.hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(path: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: the tar crate refuses `..` in set_path.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn refuses_entries_that_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = apply_layer(&mut &tar_with("../escape")[..], &root, "test").unwrap_err();
        assert!(matches!(err, SnapshotError::PathEscape { .. }), "{err}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for p in ["d/.wh.gone", "e/.wh..wh..opq"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            b.append_data(&mut h, p, std::io::empty()).unwrap();
        }
        let data = b.into_inner().unwrap();
        let d = apply_layer(&mut &data[..], dir.path(), "test").unwrap();
        assert_eq!(d, Digest::of(&data));
        let md = std::fs::symlink_metadata(dir.path().join("d/gone")).unwrap();
        assert!(crate::whiteout::is_overlay_whiteout(&md));
        assert!(crate::whiteout::is_opaque(&dir.path().join("e")));
    }
}
