//! Upper dir → tar layer: overlay whiteouts become OCI whiteouts, entries come in a
//! deterministic order (depth first, bytewise by name) with normalised headers (numeric
//! owners only, no user/group names, no atime/ctime). The same tree always gives the same
//! bytes. That is what lets a layer be recorded by its digest alone and its tar made
//! again from the snapshot whenever it is read (`content.rs`). Layers are uncompressed
//! (their blob digest is their diff ID): compressing is for what leaves the machine
//! (`compress.rs`).

use crate::SnapshotError;
use crate::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_opaque, is_overlay_whiteout};
use rdock_imagespec::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A layer written to the content store, uncompressed: its blob digest is its diff ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// sha256 of the tar, which is both the diff ID and the blob's digest.
    pub diff_id: Digest,
    /// Size of the tar.
    pub size: u64,
}

/// The digest and size of the layer the diff held in `upper` makes, without writing it:
/// what a committed step records (its tar is made again when read).
pub fn hash_layer(upper: &Path) -> Result<LayerBlob, SnapshotError> {
    let sink = write_tree_tar(upper, HashSink { hasher: Sha256::new(), size: 0 })?;
    Ok(LayerBlob { diff_id: Digest::from_sha256(sink.hasher.finalize().into()), size: sink.size })
}

/// Counts and hashes what is written, keeping nothing.
struct HashSink {
    hasher: Sha256,
    size: u64,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A layer's tar made from its snapshot directory on a thread of its own while it is
/// read, through a pipe. The end of the stream is an error unless the tar was made whole
/// and hashes to the digest recorded for it: a snapshot changed since would otherwise pass
/// for its layer.
pub(crate) struct TreeReader {
    pipe: std::io::PipeReader,
    hasher: Sha256,
    expected: Digest,
    maker: Option<std::thread::JoinHandle<Result<(), SnapshotError>>>,
}

impl TreeReader {
    /// Starts making the tar of `dir`, which must hash to `expected`.
    pub(crate) fn spawn(dir: PathBuf, expected: Digest) -> Result<TreeReader, SnapshotError> {
        let (pipe, w) = std::io::pipe().map_err(|e| SnapshotError::io(&dir, e))?;
        // 1 MiB writes: a pipe takes 64 KiB at a time, and each write is a system call.
        let maker = std::thread::spawn(move || write_tree_tar(&dir, std::io::BufWriter::with_capacity(1 << 20, w)).map(drop));
        Ok(TreeReader { pipe, hasher: Sha256::new(), expected, maker: Some(maker) })
    }
}

impl Read for TreeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        let Some(maker) = self.maker.take() else { return Ok(0) };
        match maker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(std::io::Error::other(e)),
            Err(_) => return Err(std::io::Error::other("the thread making a layer's tar panicked")),
        }
        let actual = Digest::from_sha256(std::mem::replace(&mut self.hasher, Sha256::new()).finalize().into());
        if actual != self.expected {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("layer {} made from its snapshot hashes to {actual}: the snapshot changed", self.expected),
            ));
        }
        Ok(0)
    }
}

/// Writes the tree under `root` (not `root` itself) as an uncompressed tar stream, with
/// the same ordering and header rules as layers. Used for `--output type=tar`.
pub fn write_tree_tar<W: Write>(root: &Path, w: W) -> Result<W, SnapshotError> {
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    append_tree(&mut tar, root)?;
    tar.into_inner().map_err(|e| SnapshotError::io(root, e))
}

fn header_for(md: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    h
}

/// Files up to this size are read whole by the walking thread, ahead of the tar; larger
/// ones are read by it in chunks, a few ahead of the hash.
const READ_AHEAD_MAX: u64 = 256 << 10;

/// The chunk size for larger files, and how many chunks are read ahead.
const CHUNK: usize = 1 << 20;
const CHUNKS_AHEAD: usize = 4;

/// One entry of a tree, in tar order, with its file's bytes read or being read.
struct Walked {
    path: PathBuf,
    md: std::fs::Metadata,
    opaque: bool,
    data: Data,
}

/// A regular file's bytes as the walking thread hands them over.
enum Data {
    /// Not read: not a regular file, or a file with several links (read where first met).
    Unread,
    /// A small file, read whole.
    Whole(Vec<u8>),
    /// A larger file, arriving in chunks.
    Chunks(Chunks),
}

/// A larger file's bytes in the chunks the walking thread reads, checked to add up to the
/// size the tar header says.
struct Chunks {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    left: u64,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) if c.len() as u64 > self.left => return Err(changed()),
                Ok(Ok(c)) => {
                    self.left -= c.len() as u64;
                    (self.chunk, self.pos) = (c, 0);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if self.left > 0 => return Err(changed()),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn changed() -> std::io::Error {
    std::io::Error::other("the file changed while its layer was made")
}

/// Appends every entry under `root` (not `root` itself). A thread walks the tree and reads
/// the files ahead (small ones whole, larger ones in chunks) while this one makes the tar:
/// a tree of many small files is mostly system calls (stat, open, read, close), a large
/// file mostly reading, and neither waits any more on the hashing and writing of what
/// came before.
fn append_tree<W: Write>(tar: &mut tar::Builder<W>, root: &Path) -> Result<(), SnapshotError> {
    std::thread::scope(|s| {
        // At most 128 entries ahead (32 MiB of small files at the very most), and
        // CHUNKS_AHEAD chunks of a larger file.
        let (tx, rx) = std::sync::mpsc::sync_channel(128);
        s.spawn(move || walk_ahead(root, tx));
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        // Leaving early drops `rx`, which stops the walk.
        for w in rx {
            append_entry(tar, root, w?, &mut links)?;
        }
        Ok(())
    })
}

/// Sends every entry under `root` in tar order (depth first, bytewise by name), until the
/// first error or until the receiver is gone.
fn walk_ahead(root: &Path, tx: std::sync::mpsc::SyncSender<Result<Walked, SnapshotError>>) {
    let walker = walkdir::WalkDir::new(root).min_depth(1).follow_links(false).sort_by(|a, b| a.file_name().cmp(b.file_name()));
    for entry in walker {
        let mut large = None;
        let walked = entry.map_err(|e| SnapshotError::io(root, e.into())).and_then(|entry| {
            let md = entry.metadata().map_err(|e| SnapshotError::io(entry.path(), e.into()))?;
            let path = entry.into_path();
            let opaque = md.is_dir() && is_opaque(&path);
            // A hard link's bytes are read only where it is first met (by the writer).
            let data = match (md.is_file() && md.nlink() == 1, md.len() <= READ_AHEAD_MAX) {
                (false, _) => Data::Unread,
                (true, true) => Data::Whole(std::fs::read(&path).map_err(|e| SnapshotError::io(&path, e))?),
                (true, false) => {
                    let file = std::fs::File::open(&path).map_err(|e| SnapshotError::io(&path, e))?;
                    let (ctx, rx) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
                    large = Some((file, ctx));
                    Data::Chunks(Chunks { rx, chunk: Vec::new(), pos: 0, left: md.len() })
                }
            };
            Ok(Walked { path, md, opaque, data })
        });
        let failed = walked.is_err();
        if tx.send(walked).is_err() || failed {
            return;
        }
        if let Some((file, ctx)) = large.take()
            && !send_chunks(file, &ctx)
        {
            return;
        }
    }
}

/// Reads `file` in chunks into `ctx`; false if the receiver is gone (the tar was given up).
fn send_chunks(mut file: std::fs::File, ctx: &std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>) -> bool {
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        match (&mut file).take(CHUNK as u64).read_to_end(&mut chunk) {
            Err(e) => return ctx.send(Err(e)).is_ok(),
            Ok(0) => return true,
            Ok(_) => {
                if ctx.send(Ok(chunk)).is_err() {
                    return false;
                }
            }
        }
    }
}

/// Appends one walked entry; `links` maps the (device, inode) of files with several links
/// to the first path they were written under.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    w: Walked,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), SnapshotError> {
    let Walked { path, md, opaque, data } = w;
    let rel = path.strip_prefix(root).unwrap_or(&path);
    let io = |e: std::io::Error| SnapshotError::io(&path, e);
    let ft = md.file_type();
    if is_overlay_whiteout(&md) {
        let name = format!("{WHITEOUT_PREFIX}{}", rel.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let wh = rel.with_file_name(name);
        let mut h = header_for(&md, tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, &wh, std::io::empty()).map_err(io)?;
    } else if ft.is_dir() {
        let mut h = header_for(&md, tar::EntryType::Directory);
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        tar.append_data(&mut h, Path::new(&name), std::io::empty()).map_err(io)?;
        if opaque {
            let mut h = header_for(&md, tar::EntryType::Regular);
            h.set_mode(0o644);
            tar.append_data(&mut h, rel.join(OPAQUE_MARKER), std::io::empty()).map_err(io)?;
        }
    } else if ft.is_file() {
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = links.get(&key) {
                let mut h = header_for(&md, tar::EntryType::Link);
                tar.append_link(&mut h, rel, first).map_err(io)?;
                return Ok(());
            }
            links.insert(key, rel.to_path_buf());
        }
        let mut h = header_for(&md, tar::EntryType::Regular);
        h.set_size(md.len());
        // The header says the size the walk saw: bytes of another length would break the
        // tar, so they are an error.
        match data {
            Data::Whole(bytes) if bytes.len() as u64 != md.len() => return Err(io(changed())),
            Data::Whole(bytes) => tar.append_data(&mut h, rel, &bytes[..]).map_err(io)?,
            Data::Chunks(chunks) => tar.append_data(&mut h, rel, chunks).map_err(io)?,
            Data::Unread => {
                // Read in 1 MiB chunks (io::copy uses a BufReader's own buffer): 8 KiB
                // reads made a 512 MB layer 65,536 system calls, each dear under gVisor.
                // Sized to the file, so small files take no large allocation.
                let cap = (md.len() as usize).clamp(8 << 10, 1 << 20);
                let f = std::io::BufReader::with_capacity(cap, std::fs::File::open(&path).map_err(io)?);
                tar.append_data(&mut h, rel, f).map_err(io)?;
            }
        }
    } else {
        append_special(tar, &path, rel, &md)?;
    }
    Ok(())
}

/// Appends a symlink, device node or fifo. Sockets are not carried in layers, as in Docker.
fn append_special<W: Write>(tar: &mut tar::Builder<W>, path: &Path, rel: &Path, md: &std::fs::Metadata) -> Result<(), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::io(path, e);
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(io)?;
        let mut h = header_for(md, tar::EntryType::Symlink);
        tar.append_link(&mut h, rel, &target).map_err(io)?;
    } else if ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_char_device() { tar::EntryType::Char } else { tar::EntryType::Block };
        let mut h = header_for(md, kind);
        let rdev = md.rdev();
        h.set_device_major(nix::sys::stat::major(rdev) as u32).map_err(io)?;
        h.set_device_minor(nix::sys::stat::minor(rdev) as u32).map_err(io)?;
        tar.append_data(&mut h, rel, std::io::empty()).map_err(io)?;
    } else if ft.is_fifo() {
        let mut h = header_for(md, tar::EntryType::Fifo);
        tar.append_data(&mut h, rel, std::io::empty()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A built layer is recorded by digest and its tar made again from the snapshot when
    /// read, so the bytes `append_tree` makes for a tree are frozen: stores hold digests
    /// that only these bytes match. A change here must come with a schema version that
    /// writes every recorded layer out first.
    #[test]
    fn the_tar_of_a_tree_is_frozen() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: owners can only be set as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(root.join("etc/sub/big"), vec![7u8; 300_000]).unwrap();
        std::fs::hard_link(root.join("etc/hosts"), root.join("hosts-link")).unwrap();
        std::os::unix::fs::symlink("etc/hosts", root.join("link")).unwrap();
        std::fs::set_permissions(root.join("etc/sub/big"), std::fs::Permissions::from_mode(0o4750)).unwrap();
        for p in ["etc/hosts", "etc/sub/big", "link", "etc/sub", "etc", "hosts-link"] {
            let p = root.join(p);
            std::os::unix::fs::lchown(&p, Some(1000), Some(100)).unwrap();
            let t = nix::sys::time::TimeSpec::new(1_700_000_000, 0);
            nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &p, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
        }
        let l = hash_layer(root).unwrap();
        assert_eq!((l.diff_id.as_str(), l.size), (FROZEN.0, FROZEN.1));
        let mut made = Vec::new();
        TreeReader::spawn(root.to_path_buf(), l.diff_id.clone()).unwrap().read_to_end(&mut made).unwrap();
        assert_eq!((made.len() as u64, Digest::of(&made)), (l.size, l.diff_id));
    }

    /// A file that grew or shrank after the walk saw its size would break the tar whose
    /// header says that size: it is an error instead.
    #[test]
    fn chunks_that_do_not_add_up_to_the_size_seen_are_an_error() {
        for (sent, seen) in [(10usize, 20u64), (30, 20), (20, 20)] {
            let (tx, rx) = std::sync::mpsc::sync_channel(4);
            tx.send(Ok(vec![1u8; sent])).unwrap();
            drop(tx);
            let read = Chunks { rx, chunk: Vec::new(), pos: 0, left: seen }.read_to_end(&mut Vec::new());
            assert_eq!(read.is_ok(), sent as u64 == seen, "{sent} bytes sent, {seen} seen: {read:?}");
        }
    }

    const FROZEN: (&str, u64) = ("sha256:0ca32886f9b7894377268f29ab6e8f9097f691afcce46e8da57c14d6b7960044", 304640);
}
