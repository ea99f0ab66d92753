//! The Linux namespace sandbox: a RUN step's (or a container's) process is cloned into
//! new mount, pid, uts, ipc and (unless the host network is asked for) net namespaces,
//! mounts its overlay root there, gets /proc, a minimal /dev, a read-only /sys, and
//! bind-mounted /etc/hosts and /etc/resolv.conf (and /etc/hostname for containers), pivots
//! into the root, drops to Docker's default capability set with no_new_privs, switches
//! user and execs the command with every signal at its default and no fd of rdock's but
//! its streams. A build step's output is captured through a pipe; a container gets rdock's
//! streams or a pty allocated from its own devpts, and optionally a small init as pid 1.
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
    Tty,
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
            14 => "allocating a terminal",
            15 => "executing the command",
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
    stdio: ChildStdio,
    /// Run a small init as pid 1 that forwards signals and reaps zombies, with the
    /// command as its child (`docker run --init`).
    init: bool,
    err_fd: i32,
}

/// How the child's standard streams are wired.
#[derive(Debug, Clone, Copy)]
enum ChildStdio {
    /// A build step: stdin is /dev/null, stdout and stderr both go to this pipe.
    Capture(i32),
    /// `rdock run` without `-t`: the streams rdock has (stdin only if asked, else /dev/null).
    Inherit { stdin: bool },
    /// `rdock run -t`: a new pty from the container's own devpts; the master is sent back
    /// over this socket, the slave becomes the controlling terminal and the streams.
    Pty { sock: i32, winsize: libc::winsize },
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

/// What differs between a build step and a container: the sandbox's hostname, its
/// streams, and whether a small init runs as pid 1.
pub(crate) struct SpawnOptions<'a> {
    /// The hostname (and the name /etc/hosts gives 127.0.0.1).
    pub hostname: &'a str,
    /// Also bind an /etc/hostname naming it (containers; build steps have none, as in
    /// BuildKit).
    pub hostname_file: bool,
    /// The streams.
    pub stdio: Stdio,
    /// A small init as pid 1.
    pub init: bool,
}

/// The streams of a spawned sandbox, as the caller asks for them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stdio {
    /// stdout and stderr captured through one pipe ([`Spawned::output`]); stdin /dev/null.
    Capture,
    /// The caller's own streams (stdin only if `stdin`).
    Inherit {
        /// Pass stdin through (`-i`); otherwise /dev/null.
        stdin: bool,
    },
    /// A new pty with this window size; the master arrives in [`Spawned::pty`].
    Pty {
        /// Rows and columns.
        winsize: libc::winsize,
    },
}

/// A cloned sandbox. [`Spawned::started`] tells whether its command was executed.
pub(crate) struct Spawned {
    /// The child's pid, in rdock's pid namespace.
    pub pid: nix::unistd::Pid,
    /// The read end of the captured output ([`Stdio::Capture`]).
    pub output: Option<OwnedFd>,
    /// The pty master ([`Stdio::Pty`]), once [`Spawned::started`] has returned.
    pub pty: Option<OwnedFd>,
    pty_sock: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
    prog: String,
    reaped: bool,
    _dir: RunDir,
}

impl Spawned {
    /// Waits until the command has been executed, or setup failed; a failure is
    /// returned (the child is reaped), success means the command runs.
    pub fn started(&mut self) -> Result<(), ExecError> {
        if let Some(sock) = self.pty_sock.take() {
            self.pty = receive_fd(&sock);
        }
        let Some(err_r) = self.err_r.take() else { return Ok(()) };
        let mut report = [0u8; 5];
        let mut errf = std::fs::File::from(err_r);
        let mut got = 0;
        while got < 5 {
            match errf.read(&mut report[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if got < 5 {
            return Ok(());
        }
        let _ = self.wait();
        let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        let err = std::io::Error::from_raw_os_error(errno);
        let prog = self.prog.clone();
        Err(match (report[0], errno) {
            (s, libc::ENOEXEC) if s == Stage::Exec as u8 => ExecError::ExecFormat { program: prog },
            (s, libc::EACCES | libc::EISDIR | libc::EPERM) if s == Stage::Exec as u8 => {
                ExecError::NotExecutable { program: prog, reason: err.to_string() }
            }
            (s, _) if s == Stage::Exec as u8 => ExecError::NotFound { program: prog, reason: err.to_string() },
            (s, _) => ExecError::Setup(format!("{}: {err}", Stage::describe(s))),
        })
    }

    /// Waits for the child and returns its exit status (128+N when killed by signal N).
    pub fn wait(&mut self) -> Result<i32, ExecError> {
        let status = loop {
            match nix::sys::wait::waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        }
        .map_err(|e| ExecError::Setup(format!("waiting for the process: {e}")))?;
        self.reaped = true;
        Ok(exit_code(status))
    }

    /// The exit status if the child has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<i32>, ExecError> {
        if self.reaped {
            return Ok(None);
        }
        match nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => Ok(None),
            Ok(s) => {
                self.reaped = true;
                Ok(Some(exit_code(s)))
            }
            Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(ExecError::Setup(format!("waiting for the process: {e}"))),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // A sandbox is never left running behind its handle.
        if !self.reaped {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// 128+N for a process killed by signal N, as shells and Docker report it.
fn exit_code(status: nix::sys::wait::WaitStatus) -> i32 {
    match status {
        nix::sys::wait::WaitStatus::Exited(_, c) => c,
        nix::sys::wait::WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => -1,
    }
}

/// Receives one fd sent with SCM_RIGHTS; None if the peer closed without sending.
fn receive_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us; nothing else owns it.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

/// Clones a sandbox running `spec` on `root`, with per-run files under `scratch`.
pub(crate) fn spawn(scratch: &Path, spec: &ExecSpec, root: &MountSpec, opts: &SpawnOptions<'_>) -> Result<Spawned, ExecError> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = RunDir(scratch.join(format!("run-{}-{n}", std::process::id())));
    let rootfs = dir.0.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| ExecError::Io(rootfs.clone(), e))?;
    let hosts = dir.0.join("hosts");
    let hostname = opts.hostname;
    std::fs::write(&hosts, format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"))
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
    let mut etc_files = vec![(cpath(&hosts)?, rp("etc/hosts")?), (cpath(&resolv)?, rp("etc/resolv.conf")?)];
    if opts.hostname_file {
        let f = dir.0.join("hostname");
        std::fs::write(&f, format!("{hostname}\n")).map_err(|e| ExecError::Io(f.clone(), e))?;
        etc_files.push((cpath(&f)?, rp("etc/hostname")?));
    }
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
        let path =
            spec.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':').filter(|d| !d.is_empty()).map(|d| cstr(format!("{d}/{prog}"))).collect::<Result<Vec<_>, _>>()?
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Setup(format!("pipe: {e}")));
    let (err_r, err_w) = pipe()?;
    let (out_r, out_w) = match opts.stdio {
        Stdio::Capture => {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        }
        _ => (None, None),
    };
    let (sock_parent, sock_child) = match opts.stdio {
        Stdio::Pty { .. } => {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
            let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| ExecError::Setup(format!("socketpair: {e}")))?;
            (Some(a), Some(b))
        }
        _ => (None, None),
    };
    let stdio = match (opts.stdio, &out_w, &sock_child) {
        (Stdio::Capture, Some(w), _) => ChildStdio::Capture(w.as_raw_fd()),
        (Stdio::Pty { winsize }, _, Some(s)) => ChildStdio::Pty { sock: s.as_raw_fd(), winsize },
        (Stdio::Inherit { stdin }, _, _) => ChildStdio::Inherit { stdin },
        _ => ChildStdio::Inherit { stdin: false },
    };
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
        etc_files,
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
                let target = dirs.last().cloned().ok_or_else(|| ExecError::Setup(format!("cannot mount over the root: {:?}", m.dest)))?;
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
        hostname: cstr(hostname)?,
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
        stdio,
        init: opts.init,
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
    // SAFETY: the child only reads `plan` and the pointer arrays (its own copy of this
    // address space) and makes raw syscalls; it never returns into Rust code that
    // could allocate or unwind, ending in execve or _exit.
    let pid = unsafe { nix::sched::clone(Box::new(|| child(&plan, &argv_ptrs, &envp_ptrs)), &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| ExecError::Setup(format!("clone into new namespaces: {e}")))?;
    drop(err_w);
    drop(out_w);
    drop(sock_child);
    Ok(Spawned { pid, output: out_r, pty: None, pty_sock: sock_parent, err_r: Some(err_r), prog: prog.clone(), reaped: false, _dir: dir })
}

impl Executor for NamespaceExecutor {
    fn run(&self, spec: &ExecSpec, root: &MountSpec, output: &mut dyn FnMut(&[u8])) -> Result<ExecResult, ExecError> {
        let started = std::time::Instant::now();
        let opts = SpawnOptions { hostname: SANDBOX_HOSTNAME, hostname_file: false, stdio: Stdio::Capture, init: false };
        let mut child = spawn(&self.scratch, spec, root, &opts)?;
        child.started()?;
        if let Some(out) = child.output.take() {
            let mut out = std::fs::File::from(out);
            let mut buf = [0u8; 16 * 1024];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => output(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        let code = child.wait()?;
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
            // O_EXCL: an existing file is left alone (opening it to write would copy it up
            // into the container's layer).
            let fd = libc::open(dst.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW, 0o644);
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
                let fd = libc::open(
                    m.target.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o600,
                );
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
        match p.stdio {
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
