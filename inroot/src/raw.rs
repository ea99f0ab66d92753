//! The same rule for code that may not allocate: a sandbox's child between `clone` and
//! `exec` is a copy of a multi-threaded process, where only raw syscalls are sound. Paths
//! come prepared by the parent as C strings; these calls only pass them to the kernel.
//!
//! The child has no user-space walk to fall back on: on a kernel without `openat2` these
//! return ENOSYS, and the sandbox reports it.

use libc::{c_char, c_int};

/// `openat2(dir, path, {flags, mode, resolve})`, returning the fd or -1 with errno set.
///
/// # Safety
/// `path` must point to a NUL-terminated string that outlives the call.
pub unsafe fn openat2(dir: c_int, path: *const c_char, flags: c_int, mode: u32, resolve: u64) -> c_int {
    // The kernel's `struct open_how`: three u64s (libc's is non-exhaustive).
    let how: [u64; 3] = [flags as u64, mode as u64, resolve];
    // SAFETY: `how` lives on this stack frame for the call; the caller vouches for `path`.
    unsafe { libc::syscall(libc::SYS_openat2, dir, path, how.as_ptr(), std::mem::size_of_val(&how)) as c_int }
}

/// Opens `path` inside the root `root` (`RESOLVE_IN_ROOT`; symlinks are followed inside it,
/// magic links refused), retrying the kernel's EAGAIN.
///
/// # Safety
/// As [`openat2`].
pub unsafe fn open_in_root(root: c_int, path: *const c_char, flags: c_int, mode: u32) -> c_int {
    loop {
        // SAFETY: forwarded from the caller.
        let fd = unsafe { openat2(root, path, flags | libc::O_CLOEXEC, mode, libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS) };
        // SAFETY: reading this thread's errno.
        if fd >= 0 || unsafe { *libc::__errno_location() } != libc::EAGAIN {
            return fd;
        }
    }
}

/// Room for a path being resolved (the kernel's PATH_MAX).
const PATH: usize = 4096;

/// `mkdir -p` of `path` inside the root `root`, as the container's `mkdir -p` would do it:
/// symlinks on the way are followed inside the root, and a dangling one has its target's
/// directories made. Returns the directory opened `O_PATH`, or -1 with errno set (ELOOP
/// after 40 links, ENAMETOOLONG past PATH_MAX, ENOTDIR at a file).
///
/// # Safety
/// `path` must point to a NUL-terminated string.
pub unsafe fn mkdir_all(root: c_int, path: *const c_char, mode: u32) -> c_int {
    let mut buf = [0u8; PATH + 1];
    let mut link = [0u8; PATH];
    // SAFETY: the caller vouches for `path`; everything else is on this stack.
    unsafe {
        let mut len = libc::strlen(path);
        if len >= PATH {
            *libc::__errno_location() = libc::ENAMETOOLONG;
            return -1;
        }
        std::ptr::copy_nonoverlapping(path.cast::<u8>(), buf.as_mut_ptr(), len);
        let mut links = 0;
        'restart: loop {
            let mut end = 0;
            loop {
                while end < len && buf[end] == b'/' {
                    end += 1;
                }
                if end == len {
                    buf[len] = 0;
                    let p = if len == 0 { c".".as_ptr() } else { buf.as_ptr().cast() };
                    return open_in_root(root, p, libc::O_PATH | libc::O_DIRECTORY, 0);
                }
                let start = end;
                while end < len && buf[end] != b'/' {
                    end += 1;
                }
                let saved = buf[end];
                buf[end] = 0;
                match step(root, &mut buf, start, &mut link, mode) {
                    Step::Dir => buf[end] = saved,
                    Step::Failed => return -1,
                    Step::Link(n) => {
                        links += 1;
                        buf[end] = saved;
                        if links > 40 || !splice_link(&mut buf, &mut len, start, end, &link[..n]) {
                            *libc::__errno_location() = if links > 40 { libc::ELOOP } else { libc::ENAMETOOLONG };
                            return -1;
                        }
                        continue 'restart;
                    }
                }
            }
        }
    }
}

/// What one component of [`mkdir_all`]'s path turned out to be.
enum Step {
    /// A directory (found, or made now).
    Dir,
    /// A symlink, its target read into the buffer given, this long.
    Link(usize),
    /// An error, in errno.
    Failed,
}

/// Looks at the path in `buf` (NUL-terminated after its last component, which starts at
/// `start`): a directory is fine, a missing one is made in its parent, a symlink is read
/// into `link`.
///
/// # Safety
/// `buf` is NUL-terminated.
unsafe fn step(root: c_int, buf: &mut [u8; PATH + 1], start: usize, link: &mut [u8; PATH], mode: u32) -> Step {
    // SAFETY: NUL-terminated strings in `buf` and fds we own.
    unsafe {
        let fd = open_in_root(root, buf.as_ptr().cast(), libc::O_PATH | libc::O_NOFOLLOW, 0);
        if fd >= 0 {
            let mut st: libc::stat = std::mem::zeroed();
            let ok = libc::fstatat(fd, c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) == 0;
            let kind = st.st_mode & libc::S_IFMT;
            let step = if !ok {
                Step::Failed
            } else if kind == libc::S_IFDIR {
                Step::Dir
            } else if kind == libc::S_IFLNK {
                let n = libc::readlinkat(fd, c"".as_ptr(), link.as_mut_ptr().cast(), PATH);
                if n < 0 { Step::Failed } else { Step::Link(n as usize) }
            } else {
                *libc::__errno_location() = libc::ENOTDIR;
                Step::Failed
            };
            libc::close(fd);
            return step;
        }
        if *libc::__errno_location() != libc::ENOENT {
            return Step::Failed;
        }
        // Missing: make it in its parent (buf[..start-1], or the root).
        let parent = if buf[..start].iter().all(|b| *b == b'/') {
            open_in_root(root, c".".as_ptr(), libc::O_PATH | libc::O_DIRECTORY, 0)
        } else {
            buf[start - 1] = 0;
            let p = open_in_root(root, buf.as_ptr().cast(), libc::O_PATH | libc::O_DIRECTORY, 0);
            buf[start - 1] = b'/';
            p
        };
        if parent < 0 {
            return Step::Failed;
        }
        let rc = libc::mkdirat(parent, buf.as_ptr().add(start).cast(), mode);
        let ok = rc == 0 || *libc::__errno_location() == libc::EEXIST;
        libc::close(parent);
        if ok { Step::Dir } else { Step::Failed }
    }
}

/// Replaces the component `buf[start..end]` (a symlink) with its target `link`: an
/// absolute target replaces everything before it too. False if the result is too long.
fn splice_link(buf: &mut [u8; PATH + 1], len: &mut usize, start: usize, end: usize, link: &[u8]) -> bool {
    let keep = if link.first() == Some(&b'/') { 0 } else { start };
    let rest = *len - end;
    let total = keep + link.len() + rest;
    if total >= PATH {
        return false;
    }
    buf.copy_within(end..*len, keep + link.len());
    buf[keep..keep + link.len()].copy_from_slice(link);
    *len = total;
    true
}

/// `/proc/self/fd/N` for `fd` written into `buf` (NUL-terminated), to name a resolved
/// descriptor to `mount(2)`, which takes paths. No allocation.
pub fn proc_fd_path(fd: c_int, buf: &mut [u8; 32]) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}
