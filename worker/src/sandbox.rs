//! The Linux namespace sandbox: a RUN step's process is cloned into new mount, pid, uts,
//! ipc and (unless the host network is asked for) net namespaces, mounts its overlay root
//! there, gets /proc, a minimal /dev, a read-only /sys, and bind-mounted /etc/hosts and
//! /etc/resolv.conf, pivots into the root, drops to Docker's default capability set with
//! no_new_privs, switches user and execs the command.
//!
//! Everything the child needs is prepared before `clone` as C strings: the child runs in a
//! copy of a multi-threaded process, where only async-signal-safe calls are sound, so it
//! makes raw syscalls only and never allocates.

use crate::{ExecError, ExecResult, ExecSpec, Executor, MountSource};
use rdock_llb::{Network, Security};
use rdock_snapshotter::MountSpec;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Docker's default capabilities (moby's `oci/caps/defaults.go`).
const DEFAULT_CAPS: &[u32] = &[
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

/// The hostname BuildKit gives build containers.
pub const SANDBOX_HOSTNAME: &str = "buildkitsandbox";

/// Stages of the child's setup, reported back through the error pipe.
#[repr(u8)]
#[derive(Clone, Copy, Debug)]
enum Stage {
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
    Exec,
}

impl Stage {
    fn describe(code: u8) -> &'static str {
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
            14 => "executing the command",
            _ => "setting up the sandbox",
        }
    }
}

/// Everything the child uses, as C strings, prepared before clone.
struct Plan {
    root: CString,
    overlay_opts: Option<CString>,
    bind_root: Option<(CString, bool)>,
    proc_dir: CString,
    dev_dir: CString,
    dev_nodes: Vec<(CString, u64)>,
    dev_pts: CString,
    dev_shm: CString,
    dev_links: Vec<(CString, CString)>,
    sys_dir: CString,
    etc_dir: CString,
    etc_files: Vec<(CString, CString)>,
    extra: Vec<ExtraPlan>,
    hostname: CString,
    cwd_parts: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    net_loopback: bool,
    drop_caps: bool,
    exec_paths: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    out_fd: i32,
    err_fd: i32,
}

/// An extra mount: directories to create (inside the root), the target, and the source
/// (None: tmpfs).
struct ExtraPlan {
    dirs: Vec<CString>,
    target: CString,
    /// A host path to bind; None mounts a tmpfs with `tmpfs_opts`.
    source: Option<CString>,
    /// The target is a file (created empty if missing), not a directory.
    file: bool,
    tmpfs_opts: CString,
    readonly: bool,
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, ExecError> {
    CString::new(s.as_ref().to_vec()).map_err(|_| ExecError::Setup("argument or path contains a NUL byte".into()))
}

fn cpath(p: &Path) -> Result<CString, ExecError> {
    cstr(p.as_os_str().as_bytes())
}

/// Runs steps in namespaces on the host kernel. Needs root.
#[derive(Debug, Clone)]
pub struct NamespaceExecutor {
    /// Directory for per-run scratch (mount points, hosts files).
    pub scratch: PathBuf,
}

impl NamespaceExecutor {
    /// An executor using `scratch` for per-run files.
    pub fn new(scratch: PathBuf) -> NamespaceExecutor {
        NamespaceExecutor { scratch }
    }
}

/// A per-run scratch directory named so that the store can tell an abandoned one.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn host_resolv_conf() -> Vec<u8> {
    std::fs::read("/etc/resolv.conf").unwrap_or_else(|_| b"nameserver 127.0.0.1\n".to_vec())
}

impl Executor for NamespaceExecutor {
    fn run(&self, spec: &ExecSpec, root: &MountSpec, output: &mut dyn FnMut(&[u8])) -> Result<ExecResult, ExecError> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = RunDir(self.scratch.join(format!("run-{}-{n}", std::process::id())));
        let rootfs = dir.0.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| ExecError::Io(rootfs.clone(), e))?;
        let hosts = dir.0.join("hosts");
        std::fs::write(&hosts, format!("127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"))
            .map_err(|e| ExecError::Io(hosts.clone(), e))?;
        let resolv = dir.0.join("resolv.conf");
        std::fs::write(&resolv, host_resolv_conf()).map_err(|e| ExecError::Io(resolv.clone(), e))?;

        let (overlay_opts, bind_root) = match root {
            MountSpec::Overlay { .. } => {
                (Some(cstr(root.overlay_options("run").map_err(|e| ExecError::Setup(e.to_string()))?.unwrap_or_default())?), None)
            }
            MountSpec::Bind { source, readonly } => (None, Some((cpath(source)?, *readonly))),
        };

        let rp = |s: &str| cpath(&rootfs.join(s));
        let mut cwd_parts = Vec::new();
        let mut acc = String::new();
        for part in spec.cwd.split('/').filter(|p| !p.is_empty()) {
            acc.push('/');
            acc.push_str(part);
            cwd_parts.push(cstr(&acc)?);
        }
        // PATH lookup happens here, against the container's PATH, as runc does.
        let prog = spec.args.first().ok_or_else(|| ExecError::Setup("empty command".into()))?;
        let exec_paths = if prog.contains('/') {
            vec![cstr(prog)?]
        } else {
            let path = spec
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            path.split(':').filter(|d| !d.is_empty()).map(|d| cstr(format!("{d}/{prog}"))).collect::<Result<Vec<_>, _>>()?
        };
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Setup(format!("pipe: {e}")))?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Setup(format!("pipe: {e}")))?;
        let plan = Plan {
            root: cpath(&rootfs)?,
            overlay_opts,
            bind_root,
            proc_dir: rp("proc")?,
            dev_dir: rp("dev")?,
            dev_nodes: [("null", (1, 3)), ("zero", (1, 5)), ("full", (1, 7)), ("random", (1, 8)), ("urandom", (1, 9)), ("tty", (5, 0))]
                .iter()
                .map(|(name, (ma, mi))| Ok((rp(&format!("dev/{name}"))?, libc::makedev(*ma, *mi))))
                .collect::<Result<_, ExecError>>()?,
            dev_pts: rp("dev/pts")?,
            dev_shm: rp("dev/shm")?,
            dev_links: [
                ("/proc/self/fd", "fd"),
                ("/proc/self/fd/0", "stdin"),
                ("/proc/self/fd/1", "stdout"),
                ("/proc/self/fd/2", "stderr"),
                ("pts/ptmx", "ptmx"),
            ]
            .iter()
            .map(|(t, l)| Ok((cstr(*t)?, rp(&format!("dev/{l}"))?)))
            .collect::<Result<_, ExecError>>()?,
            sys_dir: rp("sys")?,
            etc_dir: rp("etc")?,
            etc_files: vec![(cpath(&hosts)?, rp("etc/hosts")?), (cpath(&resolv)?, rp("etc/resolv.conf")?)],
            extra: spec
                .mounts
                .iter()
                .map(|m| {
                    let mut dirs: Vec<CString> = Vec::new();
                    let mut acc = String::new();
                    for part in m.dest.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..") {
                        acc.push('/');
                        acc.push_str(part);
                        dirs.push(rp(acc.trim_start_matches('/'))?);
                    }
                    let target =
                        dirs.last().cloned().ok_or_else(|| ExecError::Setup(format!("cannot mount over the root: {:?}", m.dest)))?;
                    let file = matches!(m.source, MountSource::File(_));
                    if file {
                        dirs.pop();
                    }
                    let (source, tmpfs_opts) = match &m.source {
                        MountSource::Dir(p) | MountSource::File(p) => (Some(cpath(p)?), cstr("")?),
                        MountSource::Tmpfs { size: Some(n) } => (None, cstr(format!("mode=1777,size={n}"))?),
                        MountSource::Tmpfs { size: None } => (None, cstr("mode=1777")?),
                    };
                    Ok(ExtraPlan { dirs, target, source, file, tmpfs_opts, readonly: m.readonly })
                })
                .collect::<Result<_, ExecError>>()?,
            hostname: cstr(SANDBOX_HOSTNAME)?,
            cwd_parts,
            cwd: cstr(if spec.cwd.is_empty() { "/" } else { &spec.cwd })?,
            uid: spec.user.uid,
            gid: spec.user.gid,
            groups: spec.user.additional_gids.clone(),
            net_loopback: spec.network != Network::Host,
            drop_caps: spec.security == Security::Sandbox,
            exec_paths,
            argv: spec.args.iter().map(cstr).collect::<Result<_, _>>()?,
            envp: spec.env.iter().map(cstr).collect::<Result<_, _>>()?,
            out_fd: out_w.as_raw_fd(),
            err_fd: err_w.as_raw_fd(),
        };
        let mut flags = nix::sched::CloneFlags::CLONE_NEWNS
            | nix::sched::CloneFlags::CLONE_NEWPID
            | nix::sched::CloneFlags::CLONE_NEWUTS
            | nix::sched::CloneFlags::CLONE_NEWIPC;
        if spec.network != Network::Host {
            flags |= nix::sched::CloneFlags::CLONE_NEWNET;
        }
        let mut stack = vec![0u8; 256 * 1024];
        let argv_ptrs: Vec<*const libc::c_char> = plan.argv.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp_ptrs: Vec<*const libc::c_char> = plan.envp.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let started = std::time::Instant::now();
        // SAFETY: the child only reads `plan` and the pointer arrays (its own copy of this
        // address space) and makes raw syscalls; it never returns into Rust code that
        // could allocate or unwind, ending in execve or _exit.
        let pid = unsafe { nix::sched::clone(Box::new(|| child(&plan, &argv_ptrs, &envp_ptrs)), &mut stack, flags, Some(libc::SIGCHLD)) }
            .map_err(|e| ExecError::Setup(format!("clone into new namespaces: {e}")))?;
        drop(out_w);
        drop(err_w);

        let mut out = std::fs::File::from(out_r);
        let mut buf = [0u8; 16 * 1024];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => output(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let status = loop {
            match nix::sys::wait::waitpid(pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        }
        .map_err(|e| ExecError::Setup(format!("waiting for the step: {e}")))?;
        let mut report = [0u8; 5];
        let mut errf = std::fs::File::from(err_r);
        let got = errf.read(&mut report).unwrap_or(0);
        if got == 5 {
            let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
            let err = std::io::Error::from_raw_os_error(errno);
            if report[0] == Stage::Exec as u8 && errno == libc::ENOEXEC {
                return Err(ExecError::ExecFormat { program: prog.clone() });
            }
            if report[0] == Stage::Exec as u8 {
                return Err(ExecError::NotFound { program: prog.clone(), reason: err.to_string() });
            }
            return Err(ExecError::Setup(format!("{}: {err}", Stage::describe(report[0]))));
        }
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, c) => c,
            nix::sys::wait::WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => -1,
        };
        Ok(ExecResult { exit_code: code, duration: started.elapsed() })
    }
}

fn fail(fd: i32, stage: Stage) -> isize {
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

fn mkdir_quiet(p: &CString, mode: libc::mode_t) {
    // SAFETY: p is NUL-terminated. EEXIST is expected and ignored.
    unsafe {
        libc::mkdir(p.as_ptr(), mode);
    }
}

/// The child: raw syscalls only.
fn child(p: &Plan, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> isize {
    // SAFETY: every pointer comes from a CString or array owned by the parent's frame,
    // which this process has a copy of; no allocation happens below.
    unsafe {
        let null: *const libc::c_char = std::ptr::null();
        // Die with the thread that waits for us, so a killed build leaves no step running.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return fail(p.err_fd, Stage::PrivateMounts);
        }
        let rc = match (&p.overlay_opts, &p.bind_root) {
            (Some(opts), _) => libc::mount(c"overlay".as_ptr(), p.root.as_ptr(), c"overlay".as_ptr(), 0, opts.as_ptr().cast()),
            (None, Some((src, _))) => libc::mount(src.as_ptr(), p.root.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()),
            (None, None) => -1,
        };
        if rc != 0 {
            return fail(p.err_fd, Stage::RootMount);
        }
        libc::umask(0);
        mkdir_quiet(&p.proc_dir, 0o555);
        if libc::mount(
            c"proc".as_ptr(),
            p.proc_dir.as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV,
            std::ptr::null(),
        ) != 0
        {
            return fail(p.err_fd, Stage::Proc);
        }
        mkdir_quiet(&p.dev_dir, 0o755);
        if libc::mount(
            c"tmpfs".as_ptr(),
            p.dev_dir.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            c"mode=755,size=65536k".as_ptr().cast(),
        ) != 0
        {
            return fail(p.err_fd, Stage::Dev);
        }
        for (path, dev) in &p.dev_nodes {
            if libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev) != 0 {
                return fail(p.err_fd, Stage::Dev);
            }
        }
        mkdir_quiet(&p.dev_pts, 0o755);
        libc::mount(
            c"devpts".as_ptr(),
            p.dev_pts.as_ptr(),
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
        );
        mkdir_quiet(&p.dev_shm, 0o1777);
        libc::mount(
            c"shm".as_ptr(),
            p.dev_shm.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV,
            c"mode=1777,size=65536k".as_ptr().cast(),
        );
        for (target, link) in &p.dev_links {
            libc::symlink(target.as_ptr(), link.as_ptr());
        }
        mkdir_quiet(&p.sys_dir, 0o555);
        let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
        if libc::mount(c"sysfs".as_ptr(), p.sys_dir.as_ptr(), c"sysfs".as_ptr(), ro, std::ptr::null()) != 0 {
            // In the host network namespace sysfs may be refused; bind the host's read-only.
            if libc::mount(c"/sys".as_ptr(), p.sys_dir.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0
                || libc::mount(null, p.sys_dir.as_ptr(), null, libc::MS_BIND | libc::MS_REMOUNT | ro, std::ptr::null()) != 0
            {
                return fail(p.err_fd, Stage::Sys);
            }
        }
        umask_default();
        mkdir_quiet(&p.etc_dir, 0o755);
        for (src, dst) in &p.etc_files {
            let fd = libc::open(dst.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW, 0o644);
            if fd >= 0 {
                libc::close(fd);
            }
            if libc::mount(src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND, std::ptr::null()) != 0 {
                return fail(p.err_fd, Stage::EtcFiles);
            }
        }
        for m in &p.extra {
            for d in &m.dirs {
                mkdir_quiet(d, 0o755);
            }
            if m.file {
                let fd = libc::open(m.target.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW, 0o600);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            let rc = match &m.source {
                Some(src) => libc::mount(src.as_ptr(), m.target.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()),
                None => libc::mount(
                    c"tmpfs".as_ptr(),
                    m.target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    m.tmpfs_opts.as_ptr().cast(),
                ),
            };
            if rc != 0 {
                return fail(p.err_fd, Stage::Mounts);
            }
            if m.readonly
                && libc::mount(null, m.target.as_ptr(), null, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, std::ptr::null()) != 0
            {
                return fail(p.err_fd, Stage::Mounts);
            }
        }
        if let Some((_, true)) = &p.bind_root {
            libc::mount(null, p.root.as_ptr(), null, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, std::ptr::null());
        }
        // pivot_root(".", ".") then detach the old root: no put_old directory needed.
        if libc::chdir(p.root.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return fail(p.err_fd, Stage::Pivot);
        }
        if libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()) != 0 {
            return fail(p.err_fd, Stage::Hostname);
        }
        if p.net_loopback && !loopback_up() {
            return fail(p.err_fd, Stage::Loopback);
        }
        for part in &p.cwd_parts {
            mkdir_quiet(part, 0o755);
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            return fail(p.err_fd, Stage::Workdir);
        }
        if p.drop_caps {
            for cap in 0..64u32 {
                if !DEFAULT_CAPS.contains(&cap) {
                    // EINVAL past the kernel's last capability ends the loop's effect.
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail(p.err_fd, Stage::Caps);
            }
        }
        // Raw syscalls, not glibc's setgroups/setgid/setuid: those broadcast the change to
        // every thread glibc believes the process has, and this copy of a multi-threaded
        // parent has only one, so glibc would wait for the others forever.
        if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) != 0
            || libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) != 0
        {
            return fail(p.err_fd, Stage::User);
        }
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if devnull >= 0 {
            libc::dup2(devnull, 0);
        }
        libc::dup2(p.out_fd, 1);
        libc::dup2(p.out_fd, 2);
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

fn umask_default() {
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(0o022);
    }
}

/// Sets IFF_UP on `lo` with the SIOCSIFFLAGS ioctl.
fn loopback_up() -> bool {
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
