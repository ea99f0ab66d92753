//! The capabilities a sandboxed step or container keeps: Docker's defaults. The seccomp
//! profile is compiled against the same list (Docker's profile allows some syscalls only
//! to holders of a capability).

/// Docker's default capabilities (moby's `oci/caps/defaults.go`).
pub(crate) const DEFAULT_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];
