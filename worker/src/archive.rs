//! Archives as ADD and tar contexts take them: told by their first bytes (tar, gzip,
//! bzip2, xz, zstd), unpacked into a directory with every entry kept inside it.

use crate::WorkerError;
use std::io::Read;
use std::path::{Component, Path};

/// The archives ADD unpacks, told by their first bytes as Docker's `DetectCompression`
/// does (a name ending in .tar.xz that holds text is copied as a file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

pub fn archive_kind(p: &Path) -> Option<ArchiveKind> {
    let mut head = [0u8; 262];
    let mut f = std::fs::File::open(p).ok()?;
    let n = f.read(&mut head).ok()?;
    let head = &head[..n];
    let kind = match head {
        [0x1f, 0x8b, ..] => ArchiveKind::Gzip,
        [b'B', b'Z', b'h', ..] => ArchiveKind::Bzip2,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => ArchiveKind::Xz,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ArchiveKind::Zstd,
        _ if n >= 262 && &head[257..262] == b"ustar" => return Some(ArchiveKind::Tar),
        _ => return None,
    };
    // A compressed file is an archive only if what it holds is a tar, as Docker checks.
    let mut inner = [0u8; 262];
    let mut r = decompressor(std::fs::File::open(p).ok()?, kind).ok()?;
    let mut got = 0;
    while got < inner.len() {
        match r.read(&mut inner[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    (got == inner.len() && &inner[257..262] == b"ustar").then_some(kind)
}

fn decompressor(f: std::fs::File, kind: ArchiveKind) -> std::io::Result<Box<dyn Read>> {
    let f = std::io::BufReader::new(f);
    Ok(match kind {
        ArchiveKind::Tar => Box::new(f),
        ArchiveKind::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
        ArchiveKind::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(f)),
        ArchiveKind::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(f)),
        ArchiveKind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(f)?),
    })
}

/// Unpacks the archive at `p` into `dest`. With `owner` (`ADD --chown`), every entry is
/// given that owner, as BuildKit does, instead of the archive's.
pub fn unpack_archive(p: &Path, kind: ArchiveKind, dest: &Path, owner: Option<(u32, u32)>) -> Result<(), WorkerError> {
    let f = std::fs::File::open(p).map_err(|e| WorkerError::Io(p.to_path_buf(), e))?;
    let reader = decompressor(f, kind).map_err(|e| WorkerError::Io(p.to_path_buf(), e))?;
    let mut a = tar::Archive::new(reader);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    for entry in a.entries().map_err(|e| WorkerError::Io(p.to_path_buf(), e))? {
        let mut entry = entry.map_err(|e| WorkerError::Io(p.to_path_buf(), e))?;
        let path = entry.path().map_err(|e| WorkerError::Io(p.to_path_buf(), e))?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(WorkerError::Path { path: path.display().to_string(), reason: "archive entry escapes the destination".into() });
        }
        if !entry.unpack_in(dest).map_err(|e| WorkerError::Io(dest.join(&path), e))? {
            return Err(WorkerError::Path { path: path.display().to_string(), reason: "archive entry escapes the destination".into() });
        }
        // unpack_in checked that the entry's parent lies inside `dest`; lchown does not
        // follow the entry itself.
        if let Some((uid, gid)) = owner {
            let at = dest.join(&path);
            std::os::unix::fs::lchown(&at, Some(uid), Some(gid)).map_err(|e| WorkerError::Io(at.clone(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_told_by_their_bytes_and_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, "etc/x", &b"abc"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for (name, bytes, kind) in [
            ("a.tar", tar.clone(), ArchiveKind::Tar),
            ("a.tar.xz", xz, ArchiveKind::Xz),
            ("a.tar.bz2", bz, ArchiveKind::Bzip2),
            ("a.tar.zst", zst, ArchiveKind::Zstd),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(archive_kind(&p), Some(kind), "{name}");
            let out = dir.path().join(format!("out-{name}"));
            std::fs::create_dir_all(&out).unwrap();
            unpack_archive(&p, kind, &out, None).unwrap();
            assert_eq!(std::fs::read(out.join("etc/x")).unwrap(), b"abc");
        }
        // xz of something that is not a tar is a file to copy.
        let p = dir.path().join("notes.xz");
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut e, &[b'n'; 600]).unwrap();
        std::fs::write(&p, e.finish().unwrap()).unwrap();
        assert_eq!(archive_kind(&p), None);
    }
}
