//! Paths inside a root: the one rule for every place an image path meets the host.
//!
//! An image names paths as its container sees them (`/etc/hosts`, `/esc/x`); on the host
//! they live under a root directory (a snapshot, a mounted overlay, a cache directory) whose
//! symlinks the image wrote. Joining the strings follows an image's `esc -> /home` to the
//! host's /home. [`Root`] resolves an image path inside its root instead, following symlinks
//! as the container would see them (an absolute link, or `..` at the top, stays at the root)
//! and never out of it: with `openat2(RESOLVE_IN_ROOT)` where the kernel has it (Linux 5.6+),
//! and elsewhere by a walk of `O_PATH` descriptors one component at a time, reading each
//! symlink itself, as runc's and youki's path libraries do.
//!
//! Architecture invariant: depends on no other rdock crate, and hands out descriptors,
//! not paths, so what was resolved is what gets used (no check-then-use race). Callers that
//! need a path for an API that takes one (a mount source, `std::fs::copy`) take it from
//! [`Root::host_path`] of a resolved descriptor.
//!
//! ```no_run
//! use rdock_inroot::{Last, Root};
//! let root = Root::open("/var/lib/rdock/tmp/rootfs".as_ref()).unwrap();
//! // `/etc` may be a symlink to `/home` in the image: this is still inside the root.
//! let etc = root.mkdir_all("/etc".as_ref(), 0o755).unwrap();
//! let hosts = root.resolve("/etc/hosts".as_ref(), Last::Follow);
//! # let _ = (etc, hosts);
//! ```

pub mod raw;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up with ELOOP, as the kernel's limit.
const MAX_LINKS: u32 = 40;

/// How paths are resolved: by the kernel, or by walking descriptors in user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2` with `RESOLVE_IN_ROOT` (Linux 5.6+).
    Kernel,
    /// One `O_PATH|O_NOFOLLOW` open per component, symlinks read and followed here.
    Walk,
}

impl Resolver {
    /// The kernel's resolver if it has `openat2`, else the walk.
    pub fn detect() -> Resolver {
        static KERNEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let has = *KERNEL.get_or_init(|| {
            // SAFETY: a NUL-terminated path; the returned fd (if any) is closed at once.
            let fd = unsafe { raw::openat2(libc::AT_FDCWD, c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC, 0, 0) };
            if fd >= 0 {
                // SAFETY: fd was just returned to us.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            fd >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
        });
        if has { Resolver::Kernel } else { Resolver::Walk }
    }
}

/// Whether the last component of a path is followed if it is a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// Follow it (inside the root), as `open` and `stat` do.
    Follow,
    /// Take the symlink itself, as `lstat`, `unlink` and `rename` do.
    NoFollow,
}

/// Where a path led: to an existing entry, or to a missing last component whose parent
/// directory exists (the place a create would put it).
#[derive(Debug)]
pub enum Walked {
    /// The entry, opened `O_PATH`.
    Found(OwnedFd),
    /// The last component is missing: `name` in `parent`.
    Missing {
        /// The directory that would hold it, opened `O_PATH`.
        parent: OwnedFd,
        /// Its name there.
        name: OsString,
    },
}

/// A directory that image paths are resolved inside of.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    resolver: Resolver,
}

impl Root {
    /// Opens the root directory `path` (a host path the caller trusts), resolving with the
    /// best resolver the kernel offers.
    pub fn open(path: &Path) -> io::Result<Root> {
        Root::with_resolver(path, Resolver::detect())
    }

    /// Opens the root directory `path` with the given resolver (tests compare the two).
    pub fn with_resolver(path: &Path, resolver: Resolver) -> io::Result<Root> {
        let fd = open_at(libc::AT_FDCWD, path.as_os_str(), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Root { fd, path: path.to_path_buf(), resolver })
    }

    /// The root's host path, as given to [`Root::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves `path` (as the container names it; absolute or not, it starts at the
    /// root) to an `O_PATH` descriptor of the entry. ENOENT if it does not exist.
    pub fn resolve(&self, path: &Path, last: Last) -> io::Result<OwnedFd> {
        match self.walk(path, last)? {
            Walked::Found(fd) => Ok(fd),
            Walked::Missing { .. } => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    /// The entry `path` leads to, opened `O_PATH`, or None if nothing is there (a missing
    /// component, or a file where a directory would have to be). One syscall where the
    /// kernel resolves: the cheap question for looking a path up through many layers.
    pub fn lookup(&self, path: &Path, last: Last) -> io::Result<Option<OwnedFd>> {
        let found = match self.resolver {
            Resolver::Kernel => {
                let nofollow = if last == Last::NoFollow { libc::O_NOFOLLOW } else { 0 };
                openat2_in(self.fd.as_fd(), relative(path).as_os_str(), libc::O_PATH | nofollow).map(Some)
            }
            Resolver::Walk => self.walk_user(path, last).map(|w| match w {
                Walked::Found(fd) => Some(fd),
                Walked::Missing { .. } => None,
            }),
        };
        match found {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            other => other,
        }
    }

    /// Resolves `path` to its entry, or to the directory and name a create would use.
    /// Every component but the last must exist.
    pub fn walk(&self, path: &Path, last: Last) -> io::Result<Walked> {
        match self.resolver {
            Resolver::Kernel => self.walk_kernel(path, last),
            Resolver::Walk => self.walk_user(path, last),
        }
    }

    /// The directory `path` and every missing parent, created with `mode` (before the
    /// umask); returns the directory, opened `O_PATH`. A symlink on the way is followed
    /// inside the root, as `mkdir -p` in the container would.
    pub fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<OwnedFd> {
        self.mkdir_all_with(path, mode, &mut |_| Ok(()))
    }

    /// As [`Root::mkdir_all`], calling `created` with each directory it made (to set its
    /// owner, say), parents first. A dangling symlink on the way has its target's
    /// directories made, inside the root, as the container's `mkdir -p` would.
    pub fn mkdir_all_with(&self, path: &Path, mode: u32, created: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>) -> io::Result<OwnedFd> {
        let mut parts: Vec<OsString> = components(path.as_os_str());
        let mut links = 0;
        'restart: loop {
            let mut prefix = PathBuf::new();
            for (i, part) in parts.iter().enumerate() {
                prefix.push(part);
                if part == "." || part == ".." {
                    continue;
                }
                match self.walk(&prefix, Last::NoFollow)? {
                    Walked::Found(fd) => {
                        let st = fstat(fd.as_fd())?;
                        match st.st_mode & libc::S_IFMT {
                            libc::S_IFDIR => {}
                            libc::S_IFLNK => {
                                links += 1;
                                if links > MAX_LINKS {
                                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                                }
                                // The link's target takes its place (an absolute one from
                                // the root), then the rest of the path.
                                let target = readlink_fd(fd.as_fd())?;
                                let mut next = if target.as_bytes().first() == Some(&b'/') { Vec::new() } else { parts[..i].to_vec() };
                                next.extend(components(&target));
                                next.extend(parts[i + 1..].iter().cloned());
                                parts = next;
                                continue 'restart;
                            }
                            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                        }
                    }
                    Walked::Missing { parent, name } => match mkdir_at(parent.as_fd(), &name, mode) {
                        Ok(()) => {
                            let fd = open_at(parent.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY, 0)?;
                            created(fd.as_fd())?;
                        }
                        // Made meanwhile by someone else: look again.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue 'restart,
                        Err(e) => return Err(e),
                    },
                }
            }
            let dir = self.resolve(&prefix, Last::Follow)?;
            if !is_dir(dir.as_fd())? {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            return Ok(dir);
        }
    }

    /// The directory that holds `path` (resolved, following symlinks) and the last
    /// component's name, for creating, replacing or removing the entry itself without
    /// following it. With `create`, missing parents are made (mode 0755).
    pub fn parent(&self, path: &Path, create: bool) -> io::Result<(OwnedFd, OsString)> {
        let Some(Component::Normal(name)) = path.components().next_back() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no entry", path.display())));
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let dir = if create { self.mkdir_all(parent, 0o755)? } else { self.resolve(parent, Last::Follow)? };
        if !is_dir(dir.as_fd())? {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok((dir, name.to_os_string()))
    }

    /// Opens `path` inside the root with `flags` (`O_CREAT` creates it where the path
    /// leads, through a dangling symlink too, inside the root). `O_NOFOLLOW` is honoured.
    pub fn open_file(&self, path: &Path, flags: i32, mode: u32) -> io::Result<std::fs::File> {
        let last = if flags & libc::O_NOFOLLOW != 0 { Last::NoFollow } else { Last::Follow };
        let fd = match self.walk(path, last)? {
            Walked::Found(fd) => {
                if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EEXIST));
                }
                reopen(fd.as_fd(), flags & !(libc::O_CREAT | libc::O_EXCL))?
            }
            Walked::Missing { parent, name } if flags & libc::O_CREAT != 0 => {
                open_at(parent.as_raw_fd(), &name, flags | libc::O_NOFOLLOW | libc::O_EXCL, mode)?
            }
            Walked::Missing { .. } => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        Ok(std::fs::File::from(fd))
    }

    /// A regular file's contents, read through the root. None if it does not exist.
    pub fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self.open_file(path, libc::O_RDONLY, 0) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                io::Read::read_to_end(&mut f, &mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The host path of `path` resolved inside the root: for APIs that take a path. It
    /// is checked to lie under the root; the caller must not let the container run
    /// between this and its use.
    pub fn host_path(&self, path: &Path, last: Last) -> io::Result<PathBuf> {
        let fd = self.resolve(path, last)?;
        self.fd_path(fd.as_fd())
    }

    /// The host path of a descriptor this root handed out, checked to lie under the root.
    pub fn fd_path(&self, fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
        let p = fd_path(fd)?;
        let root = fd_path(self.fd.as_fd())?;
        match p.strip_prefix(&root) {
            Ok(rel) => Ok(self.path.join(rel)),
            Err(_) => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{} is outside {}", p.display(), root.display()))),
        }
    }

    fn walk_kernel(&self, path: &Path, last: Last) -> io::Result<Walked> {
        let rel = relative(path);
        let nofollow = if last == Last::NoFollow { libc::O_NOFOLLOW } else { 0 };
        match openat2_in(self.fd.as_fd(), rel.as_os_str(), libc::O_PATH | nofollow) {
            Ok(fd) => return Ok(Walked::Found(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let Some(Component::Normal(name)) = rel.components().next_back() else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        let parent = openat2_in(self.fd.as_fd(), relative(rel.parent().unwrap_or(Path::new(""))).as_os_str(), libc::O_PATH)?;
        // The last component may be a dangling symlink to follow: the walk finds where
        // it leads. Otherwise it is simply missing here.
        match open_at(parent.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(_) if last == Last::Follow => self.walk_user(path, last),
            Ok(fd) => Ok(Walked::Found(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Walked::Missing { parent, name: name.to_os_string() }),
            Err(e) => Err(e),
        }
    }

    fn walk_user(&self, path: &Path, last: Last) -> io::Result<Walked> {
        // Directories entered below the root; empty means at the root. `..` pops, so it
        // never climbs above the root whatever the filesystem's `..` says.
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut pending: Vec<OsString> = components(path.as_os_str());
        pending.reverse();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == "." {
                continue;
            }
            if name == ".." {
                stack.pop();
                continue;
            }
            let dir = stack.last().map_or(self.fd.as_raw_fd(), AsRawFd::as_raw_fd);
            let is_last = pending.iter().all(|p| p == ".");
            let fd = match open_at(dir, &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && is_last => {
                    return Ok(Walked::Missing { parent: dup_raw(dir)?, name });
                }
                Err(e) => return Err(e),
            };
            let st = fstat(fd.as_fd())?;
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFLNK && (!is_last || last == Last::Follow) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = readlink_fd(fd.as_fd())?;
                if target.as_bytes().first() == Some(&b'/') {
                    stack.clear();
                }
                let mut parts = components(&target);
                parts.reverse();
                pending.extend(parts);
                continue;
            }
            if is_last {
                return Ok(Walked::Found(fd));
            }
            if kind != libc::S_IFDIR {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            stack.push(fd);
        }
        let here = stack.last().map_or(self.fd.as_raw_fd(), AsRawFd::as_raw_fd);
        Ok(Walked::Found(dup_raw(here)?))
    }
}

/// The host path where `path` leads inside `root`, for code that works on paths and may
/// create what is missing (COPY destinations, WORKDIR): existing symlinks are followed
/// inside the root (the last one only with [`Last::Follow`]), a missing component is taken
/// as named, and `..` never climbs above the root. Only for trees no container is running
/// in (a check on a path is only good until someone changes the tree).
pub fn host_path_for(root: &Path, path: &Path, last: Last) -> io::Result<PathBuf> {
    let mut parts: Vec<OsString> = Vec::new();
    let mut pending = components(path.as_os_str());
    pending.reverse();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == "." {
            continue;
        }
        if part == ".." {
            parts.pop();
            continue;
        }
        let candidate: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&part);
        let is_last = pending.iter().all(|p| p == ".");
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() && (!is_last || last == Last::Follow) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    parts.clear();
                }
                let mut t = components(target.as_os_str());
                t.reverse();
                pending.extend(t);
            }
            _ => parts.push(part),
        }
    }
    Ok(root.join(parts.iter().collect::<PathBuf>()))
}

/// The path made relative (the root's own `/` dropped): openat2 scopes it either way, but
/// an absolute path with RESOLVE_IN_ROOT is taken from the root already.
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path.components().filter(|c| !matches!(c, Component::RootDir)).collect();
    if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel }
}

/// The `/`-separated parts of a path, empty ones dropped.
fn components(p: &OsStr) -> Vec<OsString> {
    p.as_bytes().split(|b| *b == b'/').filter(|s| !s.is_empty()).map(|s| OsString::from_vec(s.to_vec())).collect()
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(rc: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a non-negative return of an open-like call is a new fd we own.
    check(rc).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn openat2_in(dir: BorrowedFd<'_>, path: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    loop {
        // SAFETY: c is NUL-terminated and outlives the call.
        let rc = unsafe {
            raw::openat2(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, 0, libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS)
        };
        // EAGAIN: a rename raced the lookup; the kernel asks for a retry.
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            continue;
        }
        return owned(rc);
    }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`.
pub fn open_at(dir: libc::c_int, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: c is NUL-terminated and outlives the call.
    owned(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: c is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Opens an `O_PATH` descriptor for I/O with `flags`, through its /proc magic link.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    open_at(libc::AT_FDCWD, OsStr::new(&p), flags, 0)
}

/// The `stat` of a descriptor (of the entry itself, a symlink included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is valid; "" with AT_EMPTY_PATH stats the fd itself.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstatat(fd.as_raw_fd(), c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW))?;
        Ok(st)
    }
}

/// Removes `name` in `dir`, whatever it is: a directory with everything in it (walked by
/// descriptor, never following a symlink). Missing is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: c is NUL-terminated and outlives the calls.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => return Ok(()),
        Some(libc::EISDIR) | Some(libc::EPERM) => {}
        _ => return Err(e),
    }
    let sub = open_at(dir.as_raw_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", sub.as_raw_fd()))? {
        remove_all_at(sub.as_fd(), &entry?.file_name())?;
    }
    // SAFETY: as above.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
}

fn is_dir(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The target of a symlink opened `O_PATH|O_NOFOLLOW`.
fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is valid for its length; "" reads the link the fd is.
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// The path the kernel gives a descriptor (/proc/self/fd/N).
fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn dup_raw(fd: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC of a valid fd returns a new one we own.
    owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })
}

#[cfg(test)]
mod tests;
