//! The two spellings of deletion: overlayfs's (a 0/0 character device, an opaque xattr on a
//! directory) in snapshot upper dirs, and OCI's (`.wh.NAME`, `.wh..wh..opq`) in layers.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// overlayfs's opaque directory xattr.
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque\0";

/// True if the metadata is an overlay whiteout (character device 0:0).
pub fn is_overlay_whiteout(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    md.file_type().is_char_device() && md.rdev() == 0
}

/// True if `dir` carries overlayfs's opaque xattr.
pub fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: c and buf are valid for the duration of the call; the name is NUL-terminated.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), OPAQUE_XATTR.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// True if the directory open as `dir` (not `O_PATH`) carries overlayfs's opaque xattr.
pub fn is_opaque_fd(dir: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4];
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of its stated length.
    let n = unsafe { libc::fgetxattr(dir.as_raw_fd(), OPAQUE_XATTR.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// Marks the directory open as `dir` (not `O_PATH`) opaque for overlayfs.
pub fn set_opaque_fd(dir: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd, a NUL-terminated name and a one-byte value.
    let r = unsafe { libc::fsetxattr(dir.as_raw_fd(), OPAQUE_XATTR.as_ptr().cast(), b"y".as_ptr().cast(), 1, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
