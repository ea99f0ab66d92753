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
        let fd = unsafe {
            openat2(root, path, flags | libc::O_CLOEXEC, mode, libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS)
        };
        // SAFETY: reading this thread's errno.
        if fd >= 0 || unsafe { *libc::__errno_location() } != libc::EAGAIN {
            return fd;
        }
    }
}

/// One step of `mkdir -p` inside a root: creates `name` in the directory `parent` (both
/// resolved inside `root`) unless `path` (`parent/name`) exists. Returns false with errno
/// set on failure.
///
/// # Safety
/// As [`openat2`], for all three strings.
pub unsafe fn mkdir_in_root(root: c_int, path: *const c_char, parent: *const c_char, name: *const c_char, mode: u32) -> bool {
    // SAFETY: forwarded from the caller; fds are ours and closed here.
    unsafe {
        let fd = open_in_root(root, path, libc::O_PATH, 0);
        if fd >= 0 {
            libc::close(fd);
            return true;
        }
        if *libc::__errno_location() != libc::ENOENT {
            return false;
        }
        let dir = open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY, 0);
        if dir < 0 {
            return false;
        }
        let rc = libc::mkdirat(dir, name, mode);
        let ok = rc == 0 || *libc::__errno_location() == libc::EEXIST;
        libc::close(dir);
        ok
    }
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
