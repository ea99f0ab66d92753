//! Bringing up `lo` in a new network namespace: by the sandbox's child after `clone`
//! (so only async-signal-safe calls: one socket, two ioctls) and by the default network
//! before it starts slirp4netns.

use std::os::fd::{FromRawFd, OwnedFd};

/// Sets IFF_UP on `lo` with the SIOCSIFFLAGS ioctl.
pub(crate) fn loopback_up() -> bool {
    // SAFETY: a zeroed ifreq with a NUL-terminated name; ioctls on our own socket.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return false;
        }
        let _guard = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) != 0 {
            return false;
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &mut req) == 0
    }
}
