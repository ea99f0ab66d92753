//! The sandbox's child, from `clone` to `exec`: raw syscalls only, on a plan the parent
//! prepared (this is a copy of a multi-threaded process, where allocating could deadlock).
//!
//! Every path the image controls (mount targets, /etc stubs, the working directory) is
//! resolved inside the root with `openat2(RESOLVE_IN_ROOT)` and mounted on through its
//! descriptor (`/proc/self/fd/N`), so an image whose `/etc` or `/dev` is a symlink to a host
//! directory gets its mounts inside its own root. Unless the step is `--security=insecure`:
//! every writable mount is `nodev`, so a device node made with `mknod` cannot be opened, and
//! the only usable devices are bind mounts of the host's null, zero, full, random, urandom
//! and tty (plus the container's own devpts); /proc's sensitive files are masked and its
//! kernel knobs read-only, as runc does; the capability sets are Docker's default, for an
//! init as pid 1 too; and Docker's default seccomp profile is installed last.

use crate::caps::DEFAULT_CAPS;
use crate::loopback::loopback_up;
use rdock_inroot::raw::{mkdir_all, open_in_root, proc_fd_path};
use rdock_llb::Security;
use std::ffi::{CStr, CString};

/// Stages of the child's setup, reported back through the error pipe.
#[repr(u8)]
#[derive(Clone, Copy, Debug)]
pub(super) enum Stage {
    PrivateMounts = 1,
    RootMount,
    Proc,
    Dev,
    Sys,
    EtcFiles,
    Mounts,
    Pivot,
    Hostname,
    Loopback,
    Workdir,
    Caps,
    User,
    Tty,
    Exec,
    Cgroup,
    Masks,
    Seccomp,
    Network,
    Rlimits,
}

impl Stage {
    pub(super) fn describe(code: u8) -> &'static str {
        match code {
            1 => "making mounts private",
            2 => "mounting the root filesystem",
            3 => "mounting /proc",
            4 => "setting up /dev",
            5 => "mounting /sys",
            6 => "mounting /etc/hosts and /etc/resolv.conf",
            7 => "mounting the step's extra mounts",
            8 => "pivoting into the root filesystem",
            9 => "setting the hostname",
            10 => "bringing up the loopback interface",
            11 => "entering the working directory",
            12 => "dropping capabilities",
            13 => "switching user",
            14 => "allocating a terminal",
            15 => "executing the command",
            16 => "joining the step's cgroup",
            17 => "masking /proc and /sys paths",
            18 => "installing the seccomp filter",
            19 => "joining the network namespace",
            20 => "setting resource limits (--ulimit)",
            _ => "setting up the sandbox",
        }
    }
}

/// runc's and Docker's masked paths: kernel state a container has no business reading.
/// Files get /dev/null bound over them, directories an empty read-only tmpfs.
const MASKED: &[&CStr] = &[
    c"/proc/acpi",
    c"/proc/asound",
    c"/proc/interrupts",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
    c"/sys/firmware",
    c"/sys/devices/virtual/powercap",
];

/// runc's and Docker's read-only paths: the kernel's knobs.
const READONLY: &[&CStr] = &[c"/proc/bus", c"/proc/fs", c"/proc/irq", c"/proc/sys", c"/proc/sysrq-trigger"];

/// A place in the root to mount on: a path as the container names it (relative to the
/// root) and, for a file, the directory that holds it.
pub(super) struct Target {
    pub path: CString,
    /// The target is a file (created empty if missing) in this directory, not a directory.
    pub file_in: Option<CString>,
}

impl Target {
    /// The target for `path`; None for the root itself.
    pub(super) fn new(path: &str, file: bool) -> Option<Target> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        if parts.is_empty() {
            return None;
        }
        let file_in = if file { Some(CString::new(parts[..parts.len() - 1].join("/")).ok()?) } else { None };
        Some(Target { path: CString::new(parts.join("/")).ok()?, file_in })
    }
}

/// How the child's standard streams are wired.
#[derive(Debug, Clone, Copy)]
pub(super) enum ChildStdio {
    /// A build step: stdin is /dev/null, stdout and stderr both go to this pipe.
    Capture(i32),
    /// `rdock run` without `-t`: the streams rdock has (stdin only if asked, else /dev/null).
    Inherit { stdin: bool },
    /// `rdock run -t`: a new pty from the container's own devpts; the master is sent back
    /// over this socket, the slave becomes the controlling terminal and the streams.
    Pty { sock: i32, winsize: libc::winsize },
}

/// An extra mount: where, and the source (None: tmpfs).
pub(super) struct ExtraPlan {
    pub target: Target,
    /// A host path to bind; None mounts a tmpfs with `tmpfs_opts`.
    pub source: Option<CString>,
    pub tmpfs_opts: CString,
    pub readonly: bool,
}

/// Everything the child uses, as C strings, prepared before clone.
pub(super) struct Plan {
    /// Where the root is mounted (a scratch directory of rdock's).
    pub root: CString,
    /// The overlay's directories' common parent, and its options relative to it.
    pub overlay_opts: Option<(CString, CString)>,
    pub bind_root: Option<(CString, bool)>,
    pub proc: Target,
    pub dev: Target,
    pub sys: Target,
    /// Device nodes: name in /dev, the host's node to bind (sandboxed), its number (insecure).
    pub dev_nodes: Vec<(CString, CString, u64)>,
    /// Symlinks in /dev: target, name.
    pub dev_links: Vec<(CString, CString)>,
    /// Files bound over /etc's: host source, target.
    pub etc_files: Vec<(CString, Target)>,
    pub extra: Vec<ExtraPlan>,
    /// The files that join the step's cgroups (`tasks` on v1), written before anything else.
    pub cgroup_join: Vec<CString>,

    pub hostname: CString,
    /// /dev/shm's tmpfs options (its size).
    pub shm_opts: CString,
    /// `--ulimit`s: `RLIMIT_*` number, soft, hard (`RLIM_INFINITY` for -1).
    pub rlimits: Vec<(u32, libc::rlim_t, libc::rlim_t)>,
    pub cwd: Target,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub net_loopback: bool,
    /// A network namespace to join (the default network's), or -1.
    pub netns: i32,
    pub security: Security,
    /// The seccomp program (None when insecure).
    pub seccomp: Option<libc::sock_fprog>,
    pub exec_paths: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub stdio: ChildStdio,
    /// Run a small init as pid 1 that forwards signals and reaps zombies, with the
    /// command as its child (`docker run --init`).
    pub init: bool,
    pub err_fd: i32,
}

impl Plan {
    fn sandboxed(&self) -> bool {
        self.security == Security::Sandbox
    }

    /// `nodev` for the mounts a step can write device nodes into, unless insecure.
    fn nodev(&self) -> libc::c_ulong {
        if self.sandboxed() { libc::MS_NODEV } else { 0 }
    }
}

/// One part of the mount setup, given the plan and the root's fd.
type MountStep = unsafe fn(&Plan, i32) -> bool;

/// The child: raw syscalls only.
pub(super) fn child(p: &Plan, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> isize {
    // SAFETY: every pointer comes from a CString or array owned by the parent's frame,
    // which this process has a copy of; no allocation happens below.
    unsafe {
        // Die with the thread that waits for us, so a killed build leaves no step running.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if p.netns >= 0 && libc::setns(p.netns, libc::CLONE_NEWNET) != 0 {
            return fail(p.err_fd, Stage::Network);
        }
        if !join_cgroups(p) {
            return fail(p.err_fd, Stage::Cgroup);
        }
        let root = match mount_root(p) {
            Ok(fd) => fd,
            Err(stage) => return fail(p.err_fd, stage),
        };
        let steps: [(MountStep, Stage); 5] = [
            (mount_proc, Stage::Proc),
            (mount_dev, Stage::Dev),
            (mount_sys, Stage::Sys),
            (mount_etc, Stage::EtcFiles),
            (mount_extra, Stage::Mounts),
        ];
        for (step, stage) in steps {
            // The kernel's filesystems and /dev's nodes get exact modes; files the step
            // will see created by it get the usual umask.
            libc::umask(if matches!(stage, Stage::EtcFiles | Stage::Mounts) { 0o022 } else { 0 });
            if !step(p, root) {
                return fail(p.err_fd, stage);
            }
        }
        libc::close(root);
        if let Some((_, true)) = &p.bind_root {
            libc::mount(
                std::ptr::null(),
                p.root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | p.nodev(),
                std::ptr::null(),
            );
        }
        // pivot_root(".", ".") then detach the old root: no put_old directory needed.
        if libc::chdir(p.root.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return fail(p.err_fd, Stage::Pivot);
        }
        if p.sandboxed() && !mask_paths() {
            return fail(p.err_fd, Stage::Masks);
        }
        if libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()) != 0 {
            return fail(p.err_fd, Stage::Hostname);
        }
        if p.net_loopback && !loopback_up() {
            return fail(p.err_fd, Stage::Loopback);
        }
        // The root is `/` now: the working directory cannot resolve out of it.
        if !enter_workdir(p) {
            return fail(p.err_fd, Stage::Workdir);
        }
        // Before the capabilities go: raising a hard limit needs CAP_SYS_RESOURCE.
        for (resource, soft, hard) in &p.rlimits {
            let limit = libc::rlimit { rlim_cur: *soft, rlim_max: *hard };
            if libc::setrlimit(*resource as _, &limit) != 0 {
                return fail(p.err_fd, Stage::Rlimits);
            }
        }
        if let Err(stage) = drop_privileges(p) {
            return fail(p.err_fd, stage);
        }
        start(p, argv, envp)
    }
}

/// Joins the step's cgroups (writing 0 moves the writer, this single thread), then takes a
/// cgroup namespace rooted there, so the step sees its own cgroup as `/`.
///
/// # Safety
/// Raw syscalls on the plan's strings.
unsafe fn join_cgroups(p: &Plan) -> bool {
    // SAFETY: NUL-terminated paths; fds closed here.
    unsafe {
        for join in &p.cgroup_join {
            let fd = libc::open(join.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return false;
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if !ok {
                return false;
            }
        }
        libc::unshare(libc::CLONE_NEWCGROUP) == 0
    }
}

/// Makes mounts private, mounts the root, and opens it for resolving paths inside it.
///
/// # Safety
/// Raw syscalls on the plan's strings.
unsafe fn mount_root(p: &Plan) -> Result<i32, Stage> {
    let null: *const libc::c_char = std::ptr::null();
    // SAFETY: NUL-terminated strings from the plan.
    unsafe {
        if libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(Stage::PrivateMounts);
        }
        let rc = match (&p.overlay_opts, &p.bind_root) {
            (Some((base, opts)), _) => {
                if libc::chdir(base.as_ptr()) != 0 {
                    return Err(Stage::RootMount);
                }
                libc::mount(c"overlay".as_ptr(), p.root.as_ptr(), c"overlay".as_ptr(), p.nodev(), opts.as_ptr().cast())
            }
            (None, Some((src, _))) => {
                let rc = libc::mount(src.as_ptr(), p.root.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null());
                if rc == 0 && p.sandboxed() {
                    libc::mount(null, p.root.as_ptr(), null, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV, std::ptr::null())
                } else {
                    rc
                }
            }
            (None, None) => -1,
        };
        if rc != 0 {
            return Err(Stage::RootMount);
        }
        let fd = libc::open(p.root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if fd < 0 { Err(Stage::RootMount) } else { Ok(fd) }
    }
}

/// Makes `t`'s directories inside the root (and the file, for a file target) and opens
/// it `O_PATH`; -1 with errno on failure.
///
/// # Safety
/// `root` is the root's fd; raw syscalls on the plan's strings.
unsafe fn open_target(root: i32, t: &Target) -> i32 {
    // SAFETY: NUL-terminated strings from the plan; fds we own.
    unsafe {
        let Some(dir) = &t.file_in else {
            return mkdir_all(root, t.path.as_ptr(), 0o755);
        };
        let d = mkdir_all(root, dir.as_ptr(), 0o755);
        if d < 0 {
            return -1;
        }
        libc::close(d);
        let fd = open_in_root(root, t.path.as_ptr(), libc::O_PATH, 0);
        if fd >= 0 || *libc::__errno_location() != libc::ENOENT {
            return fd;
        }
        // Created where the path leads (through a dangling symlink too), inside the root.
        let f = open_in_root(root, t.path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        if f < 0 {
            return -1;
        }
        libc::close(f);
        open_in_root(root, t.path.as_ptr(), libc::O_PATH, 0)
    }
}

/// mount(2) onto the target `t`, resolved inside the root; the target's fd is closed.
///
/// # Safety
/// As [`open_target`]; `src`, `fstype` and `data` NUL-terminated or null.
unsafe fn mount_on(
    root: i32,
    t: &Target,
    src: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> bool {
    // SAFETY: forwarded from the caller; the fd is ours.
    unsafe {
        let fd = open_target(root, t);
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 32];
        let rc = libc::mount(src, proc_fd_path(fd, &mut buf), fstype, flags, data.cast());
        libc::close(fd);
        rc == 0
    }
}

/// Remounts the mount now at `t` (re-resolved: the new mount's root, not the directory
/// under it) with `flags` added to a bind remount.
///
/// # Safety
/// As [`open_target`].
unsafe fn remount(root: i32, t: &Target, flags: libc::c_ulong) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe {
        let null = std::ptr::null();
        mount_on(root, t, null, null, libc::MS_BIND | libc::MS_REMOUNT | flags, null)
    }
}

/// /proc: a new procfs for the new pid namespace.
///
/// # Safety
/// `root` is the root's fd.
unsafe fn mount_proc(p: &Plan, root: i32) -> bool {
    // SAFETY: constant strings.
    unsafe {
        mount_on(root, &p.proc, c"proc".as_ptr(), c"proc".as_ptr(), libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV, std::ptr::null())
    }
}

/// /dev: a tmpfs (nodev when sandboxed) with the default devices (bind mounts of the
/// host's, when sandboxed, so that they are the only devices that open), a devpts of its
/// own, /dev/shm and the usual symlinks. Work inside it is relative to its own fd: it is
/// a fresh tmpfs, nothing of the image's is in it.
///
/// # Safety
/// `root` is the root's fd.
unsafe fn mount_dev(p: &Plan, root: i32) -> bool {
    let null: *const libc::c_char = std::ptr::null();
    // SAFETY: NUL-terminated strings from the plan and constants; fds we own.
    unsafe {
        let flags = libc::MS_NOSUID | libc::MS_STRICTATIME | p.nodev();
        if !mount_on(root, &p.dev, c"tmpfs".as_ptr(), c"tmpfs".as_ptr(), flags, c"mode=755,size=65536k".as_ptr()) {
            return false;
        }
        let dev = open_in_root(root, p.dev.path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY, 0);
        if dev < 0 || libc::fchdir(dev) != 0 {
            return false;
        }
        libc::close(dev);
        for (name, host, number) in &p.dev_nodes {
            if p.sandboxed() {
                let fd = libc::open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC, 0o666);
                if fd < 0 {
                    return false;
                }
                libc::close(fd);
                if libc::mount(host.as_ptr(), name.as_ptr(), null, libc::MS_BIND, std::ptr::null()) != 0 {
                    return false;
                }
            } else if libc::mknod(name.as_ptr(), libc::S_IFCHR | 0o666, *number) != 0 {
                return false;
            }
        }
        libc::mkdir(c"pts".as_ptr(), 0o755);
        libc::mount(
            c"devpts".as_ptr(),
            c"pts".as_ptr(),
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
        );
        libc::mkdir(c"shm".as_ptr(), 0o1777);
        libc::mount(
            c"shm".as_ptr(),
            c"shm".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV,
            p.shm_opts.as_ptr().cast(),
        );
        for (target, link) in &p.dev_links {
            libc::symlink(target.as_ptr(), link.as_ptr());
        }
        libc::chdir(c"/".as_ptr()) == 0
    }
}

/// /sys: read-only sysfs, or the host's bound read-only where sysfs is refused (in the
/// host network namespace).
///
/// # Safety
/// `root` is the root's fd.
unsafe fn mount_sys(p: &Plan, root: i32) -> bool {
    let null: *const libc::c_char = std::ptr::null();
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    // SAFETY: constant strings.
    unsafe {
        mount_on(root, &p.sys, c"sysfs".as_ptr(), c"sysfs".as_ptr(), ro, null)
            || (mount_on(root, &p.sys, c"/sys".as_ptr(), null, libc::MS_BIND | libc::MS_REC, null) && remount(root, &p.sys, ro))
    }
}

/// /etc/hosts, /etc/resolv.conf (and /etc/hostname): rdock's files bound over the image's,
/// created as empty files first where the image lacks them.
///
/// # Safety
/// `root` is the root's fd.
unsafe fn mount_etc(p: &Plan, root: i32) -> bool {
    let null: *const libc::c_char = std::ptr::null();
    // SAFETY: NUL-terminated strings from the plan.
    unsafe { p.etc_files.iter().all(|(src, t)| mount_on(root, t, src.as_ptr(), null, libc::MS_BIND, null)) }
}

/// The step's mounts (binds, caches, tmpfs, secrets): nodev when sandboxed, read-only when
/// asked.
///
/// # Safety
/// `root` is the root's fd.
unsafe fn mount_extra(p: &Plan, root: i32) -> bool {
    let null: *const libc::c_char = std::ptr::null();
    // SAFETY: NUL-terminated strings from the plan.
    unsafe {
        for m in &p.extra {
            let ok = match &m.source {
                Some(src) => mount_on(root, &m.target, src.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null),
                None => {
                    mount_on(root, &m.target, c"tmpfs".as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, m.tmpfs_opts.as_ptr())
                }
            };
            if !ok {
                return false;
            }
            let ro = if m.readonly { libc::MS_RDONLY } else { 0 };
            if m.source.is_some() && (ro | p.nodev()) != 0 && !remount(root, &m.target, ro | p.nodev()) {
                return false;
            }
            if m.source.is_none() && ro != 0 && !remount(root, &m.target, ro | libc::MS_NOSUID | libc::MS_NODEV) {
                return false;
            }
        }
        true
    }
}

/// Masks [`MASKED`] and makes [`READONLY`] read-only; after pivot_root, so the paths are
/// the sandbox's own procfs and sysfs. A path the kernel lacks is skipped.
///
/// # Safety
/// Raw syscalls on constant paths.
unsafe fn mask_paths() -> bool {
    let null: *const libc::c_char = std::ptr::null();
    // SAFETY: constant NUL-terminated paths and a zeroed stat buffer.
    unsafe {
        for path in MASKED {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(path.as_ptr(), &mut st) != 0 {
                continue;
            }
            let rc = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(c"tmpfs".as_ptr(), path.as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY, c"size=0".as_ptr().cast())
            } else {
                libc::mount(c"/dev/null".as_ptr(), path.as_ptr(), null, libc::MS_BIND, std::ptr::null())
            };
            if rc != 0 {
                return false;
            }
        }
        for path in READONLY {
            if libc::mount(path.as_ptr(), path.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                if *libc::__errno_location() == libc::ENOENT {
                    continue;
                }
                return false;
            }
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(null, path.as_ptr(), null, flags, std::ptr::null()) != 0 {
                return false;
            }
        }
        true
    }
}

/// Makes the working directory (inside the root, which is `/` now) and enters it.
///
/// # Safety
/// Raw syscalls on the plan's strings.
unsafe fn enter_workdir(p: &Plan) -> bool {
    // SAFETY: NUL-terminated strings from the plan.
    unsafe {
        let root = libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if root < 0 {
            return false;
        }
        let fd = open_target(root, &p.cwd);
        libc::close(root);
        if fd < 0 {
            return false;
        }
        let ok = libc::fchdir(fd) == 0;
        libc::close(fd);
        ok
    }
}

/// Capabilities (bounding, effective, permitted and inheritable sets: Docker's default
/// unless insecure), no_new_privs, the user, and the seccomp filter last.
///
/// # Safety
/// Raw syscalls on the plan's data.
unsafe fn drop_privileges(p: &Plan) -> Result<(), Stage> {
    // SAFETY: prctl/capset/seccomp with stack data and the plan's programs.
    unsafe {
        if p.sandboxed() {
            for cap in 0..64u32 {
                if !DEFAULT_CAPS.contains(&cap) {
                    // EINVAL past the kernel's last capability ends the loop's effect.
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
            // The bounding set only limits what exec grants; a process that never execs
            // (an init as pid 1) keeps what it has, so the other sets are cut here too.
            let mask: u32 = DEFAULT_CAPS.iter().filter(|c| **c < 32).fold(0, |m, c| m | (1 << c));
            let header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
            let data = [mask, mask, 0u32, 0, 0, 0]; // effective, permitted, inheritable ×2 words
            if libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0 {
                return Err(Stage::Caps);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(Stage::Caps);
            }
        }
        // Raw syscalls, not glibc's setgroups/setgid/setuid: those broadcast the change to
        // every thread glibc believes the process has, and this copy of a multi-threaded
        // parent has only one, so glibc would wait for the others forever.
        if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) != 0
            || libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) != 0
        {
            return Err(Stage::User);
        }
        if let Some(prog) = &p.seccomp
            && libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, prog as *const libc::sock_fprog) != 0
        {
            return Err(Stage::Seccomp);
        }
        Ok(())
    }
}

/// Signals, session, terminal, the optional init, streams, and exec.
///
/// # Safety
/// Raw syscalls; `argv` and `envp` are NULL-terminated arrays of C strings.
unsafe fn start(p: &Plan, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> isize {
    // SAFETY: signal calls with stack data; fds we own; the plan's strings.
    unsafe {
        // Every signal back to its default (Rust ignores SIGPIPE, a shell's background job
        // SIGINT and SIGQUIT, and ignoring survives exec), as runc resets them.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // A session of its own: a terminal's ^C reaches the container only through rdock,
        // which forwards it once.
        libc::setsid();
        let mut tty = -1;
        if let ChildStdio::Pty { sock, winsize } = p.stdio {
            tty = open_pty(sock, &winsize);
            if tty < 0 {
                return fail(p.err_fd, Stage::Tty);
            }
        }
        if p.init {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            // A raw fork: glibc's runs atfork handlers, which may take locks some other
            // thread of the parent held when it was copied.
            let cmd = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) as libc::pid_t;
            if cmd < 0 {
                return fail(p.err_fd, Stage::Exec);
            }
            if cmd > 0 {
                libc::close(p.err_fd);
                if tty >= 0 {
                    libc::close(tty);
                }
                let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if devnull >= 0 {
                    libc::dup2(devnull, 0);
                }
                return init_loop(cmd, &all);
            }
            // The command: a session of its own again, so that it owns the terminal.
            libc::setsid();
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        wire_streams(p.stdio, tty);
        // Nothing of rdock's but the streams reaches the command (fds it inherited without
        // close-on-exec included), as runc closes them; the error pipe closes on exec.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_uint);
        let mut last = libc::ENOENT;
        for path in &p.exec_paths {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = *libc::__errno_location();
            if e != libc::ENOENT && e != libc::ENOTDIR {
                last = e;
                break;
            }
        }
        *libc::__errno_location() = last;
        fail(p.err_fd, Stage::Exec)
    }
}

/// Points fds 0, 1 and 2 where `stdio` says.
///
/// # Safety
/// Raw syscalls on fds we own.
unsafe fn wire_streams(stdio: ChildStdio, tty: i32) {
    // SAFETY: constant paths and fds we own.
    unsafe {
        match stdio {
            ChildStdio::Capture(out) => {
                let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                if devnull >= 0 {
                    libc::dup2(devnull, 0);
                }
                libc::dup2(out, 1);
                libc::dup2(out, 2);
            }
            ChildStdio::Inherit { stdin } => {
                if !stdin {
                    let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    if devnull >= 0 {
                        libc::dup2(devnull, 0);
                    }
                }
            }
            ChildStdio::Pty { .. } => {
                libc::ioctl(tty, libc::TIOCSCTTY, 0);
                for fd in 0..3 {
                    libc::dup2(tty, fd);
                }
                if tty > 2 {
                    libc::close(tty);
                }
            }
        }
    }
}

/// Reports the stage and errno to the parent and exits.
pub(super) fn fail(fd: i32, stage: Stage) -> isize {
    // SAFETY: raw syscalls on valid fds and a stack buffer.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 5];
        msg[0] = stage as u8;
        msg[1..5].copy_from_slice(&errno.to_ne_bytes());
        libc::write(fd, msg.as_ptr().cast(), 5);
        libc::_exit(127);
    }
}

/// Opens a pty from the container's devpts (so `tty` names a device the container can
/// see), sizes it, sends the master to rdock over `sock` and returns the slave.
///
/// # Safety
/// Raw syscalls only; called in the cloned child after pivot_root.
unsafe fn open_pty(sock: i32, winsize: &libc::winsize) -> i32 {
    // SAFETY: NUL-terminated paths, fds we own, and stack buffers sized for the messages.
    unsafe {
        let master = libc::open(c"/dev/pts/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return -1;
        }
        let unlock: libc::c_int = 0;
        if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) != 0 {
            return -1;
        }
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            return -1;
        }
        if winsize.ws_row > 0 && winsize.ws_col > 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, winsize);
        }
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        // CMSG_SPACE(sizeof(int)) is 24 on 64-bit Linux; 64 bytes is room enough.
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), master);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return -1;
        }
        libc::close(master);
        libc::close(sock);
        slave
    }
}

/// pid 1 under `--init`: forwards every signal to the command, reaps every child (orphans
/// are reparented here), and exits as the command did.
///
/// # Safety
/// Raw syscalls only; called in the cloned child.
unsafe fn init_loop(cmd: libc::pid_t, all: &libc::sigset_t) -> isize {
    // SAFETY: signal calls on our own process with stack-allocated sets and infos.
    unsafe {
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(all, &mut info);
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(cmd, sig);
                continue;
            }
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == cmd {
                    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
                    libc::_exit(code);
                }
            }
        }
    }
}
