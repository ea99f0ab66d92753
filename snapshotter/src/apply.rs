//! Tar layer → directory: OCI whiteouts become overlay whiteouts, ownership, modes, times,
//! xattrs, device nodes and FIFOs are kept.
//!
//! A layer is hostile input: it may hold `esc -> /home` and then `esc/.wh.x`. Every entry
//! goes through [`rdock_inroot::Root`]: its parent directory is resolved inside the
//! destination (the layer's own symlinks followed as the container would, never out), and
//! the entry is made with `*at` calls relative to that descriptor. Whiteouts, opaque
//! markers, hard links and xattrs take the same road as files; a `..` in an entry's name is
//! refused outright.

use crate::SnapshotError;
use crate::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use rdock_imagespec::Digest;
use rdock_inroot::{Last, Root, Walked};
use sha2::{Digest as _, Sha256};
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

/// Why one entry could not be applied: the layer's fault, or the disk's.
enum EntryError {
    /// The layer is malformed (a hard link to nothing, an unreadable header).
    Broken(String),
    /// A filesystem call failed (ENOSPC, EIO, a symlink loop in the layer's own tree).
    Io(std::io::Error),
    /// A hard link names a target outside the root.
    Escape,
}

impl From<std::io::Error> for EntryError {
    fn from(e: std::io::Error) -> EntryError {
        EntryError::Io(e)
    }
}

/// The last parent directory resolved, reused by the next entry in the same directory
/// (tar streams list a directory's files together). Dropped whenever an entry at or
/// above it is applied, since that entry may have replaced it.
#[derive(Default)]
struct ParentCache {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl ParentCache {
    fn invalidate_under(&mut self, rel: &Path) {
        if self.fd.is_some() && self.path.starts_with(rel) {
            self.fd = None;
        }
    }

    fn get(&mut self, root: &Root, parent: &Path) -> std::io::Result<BorrowedFd<'_>> {
        if self.fd.is_none() || self.path != parent {
            self.fd = Some(root.mkdir_all(parent, 0o755)?);
            self.path = parent.to_path_buf();
        }
        match &self.fd {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
        }
    }
}

/// Applies the uncompressed tar stream `layer` into `dest`, returning the stream's sha256
/// (the layer's diff ID). `what` names the layer in errors.
pub fn apply_layer(layer: &mut dyn Read, dest: &Path, what: &str) -> Result<Digest, SnapshotError> {
    let broken = |reason: String| SnapshotError::BrokenLayer { what: what.to_string(), reason };
    let unreadable = |source: std::io::Error| SnapshotError::LayerRead { what: what.to_string(), source };
    let root = Root::open(dest).map_err(|e| SnapshotError::io(dest, e))?;
    let mut reader = HashingReader { inner: layer, hasher: Sha256::new() };
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut reader);
        let entries = archive.entries().map_err(unreadable)?;
        let mut cache = ParentCache::default();
        for entry in entries {
            let mut entry = entry.map_err(unreadable)?;
            let raw = entry.path().map_err(unreadable)?.into_owned();
            let rel = safe_relative(&raw)?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            cache.invalidate_under(&rel);
            match apply_entry(&root, &mut entry, &rel, &mut cache) {
                Ok(Some(mtime)) => dir_times.push((rel, mtime)),
                Ok(None) => {}
                Err(EntryError::Broken(reason)) => return Err(broken(format!("{}: {reason}", raw.display()))),
                Err(EntryError::Escape) => return Err(SnapshotError::PathEscape { entry: raw.display().to_string() }),
                Err(EntryError::Io(e)) => return Err(SnapshotError::io(dest.join(&rel), e)),
            }
        }
    }
    // Drain the end-of-archive padding so the digest covers the whole stream.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(unreadable)?;
    // Files created inside a directory changed its mtime after its own entry was applied.
    for (dir, mtime) in dir_times.iter().rev() {
        if let Ok((parent, name)) = root.parent(dir, false) {
            let _ = set_times_at(parent.as_fd(), &name, *mtime);
        }
    }
    Ok(Digest::from_sha256(reader.hasher.finalize().into()))
}

/// Applies one entry; returns the mtime of a directory, to set once its contents are in.
fn apply_entry<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    rel: &Path,
    cache: &mut ParentCache,
) -> Result<Option<i64>, EntryError> {
    let name = rel.file_name().unwrap_or_default().to_os_string();
    let parent_path = rel.parent().unwrap_or(Path::new(""));
    if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
        let dir = root.mkdir_all(parent_path, 0o755)?;
        let dir = rdock_inroot::reopen(dir.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        crate::whiteout::set_opaque_fd(dir.as_fd())?;
        return Ok(None);
    }
    let parent = cache.get(root, parent_path)?;
    if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        let hidden = OsStr::from_bytes(hidden);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(EntryError::Broken("a whiteout that names no entry".into()));
        }
        rdock_inroot::remove_all_at(parent, hidden)?;
        mknod_at(parent, hidden, libc::S_IFCHR, 0)?;
        return Ok(None);
    }
    let header = entry.header().clone();
    let kind = header.entry_type();
    let meta = Meta::of(entry)?;
    if kind.is_dir() {
        make_dir(parent, &name)?;
        meta.apply(parent, &name, Target::Other)?;
        return Ok(Some(meta.mtime));
    }
    if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
        return Ok(None);
    }
    rdock_inroot::remove_all_at(parent, &name)?;
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let f =
                rdock_inroot::open_at(parent.as_raw_fd(), &name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW, 0o600)?;
            // Written up to 1 MiB at a time: `io::copy` reads into a `BufWriter`'s buffer,
            // where on its own it wrote 8 KiB per system call (60,000 for a 490 MB pull).
            let cap = usize::try_from(header.size().unwrap_or(0)).unwrap_or(usize::MAX).clamp(1, 1 << 20);
            let mut w = std::io::BufWriter::with_capacity(cap, std::fs::File::from(f));
            std::io::copy(entry, &mut w).and_then(|_| std::io::Write::flush(&mut w)).map_err(|e| match e.raw_os_error() {
                Some(_) => EntryError::Io(e),
                None => EntryError::Broken(e.to_string()),
            })?;
            meta.apply(parent, &name, Target::Open(w.get_ref().as_fd()))?;
        }
        tar::EntryType::Symlink => {
            let target = link_name(entry)?;
            let t = CString::new(target.as_os_str().as_bytes()).map_err(|_| EntryError::Broken("NUL in a link target".into()))?;
            let n = cstring(&name)?;
            // SAFETY: NUL-terminated strings that outlive the call.
            check(unsafe { libc::symlinkat(t.as_ptr(), parent.as_raw_fd(), n.as_ptr()) })?;
            meta.apply(parent, &name, Target::Symlink)?;
        }
        tar::EntryType::Link => {
            let target = link_name(entry)?;
            let target = safe_relative(&target).map_err(|_| EntryError::Escape)?;
            // The link's target is an entry of this layer, resolved inside the root like
            // any other path (its last component not followed: a link to a symlink links
            // the symlink).
            let src = match root.walk(&target, Last::NoFollow)? {
                Walked::Found(fd) => fd,
                Walked::Missing { .. } => return Err(EntryError::Broken(format!("hard link to {} before it", target.display()))),
            };
            let n = cstring(&name)?;
            // SAFETY: valid fds and a NUL-terminated name; AT_EMPTY_PATH links the fd itself.
            check(unsafe { libc::linkat(src.as_raw_fd(), c"".as_ptr(), parent.as_raw_fd(), n.as_ptr(), libc::AT_EMPTY_PATH) })?;
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let (fmt, dev) = match kind {
                tar::EntryType::Char => (libc::S_IFCHR, device(&header)?),
                tar::EntryType::Block => (libc::S_IFBLK, device(&header)?),
                _ => (libc::S_IFIFO, 0),
            };
            mknod_at(parent, &name, fmt, dev)?;
            meta.apply(parent, &name, Target::Other)?;
        }
        other => return Err(EntryError::Broken(format!("unsupported tar entry type {other:?}"))),
    }
    Ok(None)
}

/// The entry [`Meta::apply`] sets: a file it holds open, a symlink, or anything else.
#[derive(Clone, Copy)]
enum Target<'a> {
    Open(BorrowedFd<'a>),
    Symlink,
    Other,
}

/// Owner, mode, mtime and xattrs of an entry, PAX records applied over the header.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, EntryError> {
        let h = entry.header();
        let bad = |e: std::io::Error| EntryError::Broken(e.to_string());
        let mut m = Meta {
            // Some writers leave the owner fields blank; tar reads that as root.
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
            mode: h.mode().map_err(bad)? & 0o7777,
            mtime: h.mtime().unwrap_or(0) as i64,
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let (Ok(key), value) = (ext.key(), ext.value_bytes()) else { continue };
                let num = || std::str::from_utf8(value).ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok());
                match key {
                    "uid" => m.uid = num().unwrap_or(m.uid as i64) as u32,
                    "gid" => m.gid = num().unwrap_or(m.gid as i64) as u32,
                    "mtime" => m.mtime = num().unwrap_or(m.mtime),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                            // overlayfs's own xattrs would steer the mount (opaque dirs,
                            // redirects to other layers' paths): never taken from a layer.
                            && !name.starts_with("trusted.overlay.")
                            && let Ok(c) = CString::new(name)
                        {
                            m.xattrs.push((c, value.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// Sets owner, then mode (chown clears setuid bits), xattrs and mtime on `name` in
    /// `dir` (never following it), or on `file` when it is open.
    fn apply(&self, dir: BorrowedFd<'_>, name: &OsStr, target: Target<'_>) -> std::io::Result<()> {
        let n = cstring(name)?;
        // SAFETY: valid fds, NUL-terminated names, values that outlive each call.
        unsafe {
            check(libc::fchownat(dir.as_raw_fd(), n.as_ptr(), self.uid, self.gid, libc::AT_SYMLINK_NOFOLLOW))?;
            // A symlink has no mode of its own to set.
            if !matches!(target, Target::Symlink) {
                check(libc::fchmodat(dir.as_raw_fd(), n.as_ptr(), self.mode, 0))?;
            }
            for (key, value) in &self.xattrs {
                let rc = match target {
                    Target::Open(f) => libc::fsetxattr(f.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0),
                    Target::Symlink | Target::Other => {
                        let p = CString::new(
                            format!("/proc/self/fd/{}/", dir.as_raw_fd())
                                .into_bytes()
                                .into_iter()
                                .chain(name.as_bytes().iter().copied())
                                .collect::<Vec<u8>>(),
                        )
                        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
                        libc::lsetxattr(p.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0)
                    }
                };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    // A filesystem without that namespace (user.* on a symlink, say): as
                    // tar and Docker do, the file stands without it.
                    if !matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) {
                        return Err(e);
                    }
                }
            }
        }
        set_times_at(dir, name, self.mtime)
    }
}

fn make_dir(parent: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    match rdock_inroot::open_at(parent.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(fd) if rdock_inroot::fstat(fd.as_fd())?.st_mode & libc::S_IFMT == libc::S_IFDIR => return Ok(()),
        Ok(_) => rdock_inroot::remove_all_at(parent, name)?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    rdock_inroot::mkdir_at(parent, name, 0o700)
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf, EntryError> {
    match entry.link_name() {
        Ok(Some(l)) => Ok(l.into_owned()),
        Ok(None) => Err(EntryError::Broken("a link without a target".into())),
        Err(e) => Err(EntryError::Broken(e.to_string())),
    }
}

fn device(h: &tar::Header) -> Result<libc::dev_t, EntryError> {
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    Ok(libc::makedev(major, minor))
}

fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, fmt: libc::mode_t, dev: libc::dev_t) -> std::io::Result<()> {
    let n = cstring(name)?;
    // SAFETY: a valid fd and a NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), fmt | 0o600, dev) }).map(drop)
}

fn set_times_at(dir: BorrowedFd<'_>, name: &OsStr, mtime: i64) -> std::io::Result<()> {
    let n = cstring(name)?;
    let t = libc::timespec { tv_sec: mtime, tv_nsec: 0 };
    let times = [t, t];
    // SAFETY: a valid fd, a NUL-terminated name and two timespecs.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

fn cstring(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests;
