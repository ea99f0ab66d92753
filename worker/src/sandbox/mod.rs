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

mod child;

use crate::cgroup::{Cgroup, Limits};
use crate::{ExecError, ExecResult, ExecSpec, Executor, MountSource};
use child::{ChildStdio, ExtraPlan, Plan, Stage, Target, child};
use rdock_llb::{Network, Security};
use rdock_snapshotter::MountSpec;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The hostname BuildKit gives build containers.
pub const SANDBOX_HOSTNAME: &str = "buildkitsandbox";

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
    /// The cgroup limits of every step.
    pub limits: Limits,
    /// The default network's namespaces, shared by the executor's clones.
    pub net: std::sync::Arc<crate::network::NetPool>,
}

impl NamespaceExecutor {
    /// An executor using `scratch` for per-run files, with the default limits.
    pub fn new(scratch: PathBuf) -> NamespaceExecutor {
        NamespaceExecutor { scratch, limits: Limits::default(), net: Default::default() }
    }

    /// The same with `limits` for every step (`[limits]` in config.toml).
    pub fn with_limits(self, limits: Limits) -> NamespaceExecutor {
        NamespaceExecutor { limits, ..self }
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
    /// Its cgroup limits.
    pub limits: Limits,
    /// The network namespace of [`Network::Sandbox`] (slirp4netns's), joined instead of a
    /// new one with loopback only.
    pub netns: Option<std::os::fd::BorrowedFd<'a>>,
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
    /// Dropped after the child is reaped (fields drop after `Drop::drop`): killed, removed.
    cgroup: Cgroup,
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
    let mut hosts_text = format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in &spec.extra_hosts {
        hosts_text.push_str(&format!("{}\t{}\n", h.ip, h.host));
    }
    std::fs::write(&hosts, hosts_text).map_err(|e| ExecError::Io(hosts.clone(), e))?;
    let resolv = dir.0.join("resolv.conf");
    let resolv_text = match (spec.network, opts.netns) {
        (Network::Sandbox, Some(_)) => crate::network::resolv_conf(&host_resolv_conf()),
        _ => host_resolv_conf(),
    };
    std::fs::write(&resolv, resolv_text).map_err(|e| ExecError::Io(resolv.clone(), e))?;

    // The child changes into the layers' common parent and names them relative to it.
    let overlay = root.overlay_options("run").map_err(|e| ExecError::Setup(e.to_string()))?;
    let overlay_opts = overlay.as_ref().map(|d| Ok::<_, ExecError>((cpath(&d.base)?, cstr(d.relative())?))).transpose()?;
    let bind_root = match root {
        MountSpec::Bind { source, readonly } => Some((cpath(source)?, *readonly)),
        MountSpec::Overlay { .. } => None,
    };

    let target =
        |path: &str, file: bool| Target::new(path, file).ok_or_else(|| ExecError::Setup(format!("cannot mount over the root: {path:?}")));
    let mut etc_files = vec![(cpath(&hosts)?, target("etc/hosts", true)?), (cpath(&resolv)?, target("etc/resolv.conf", true)?)];
    if opts.hostname_file {
        let f = dir.0.join("hostname");
        std::fs::write(&f, format!("{hostname}\n")).map_err(|e| ExecError::Io(f.clone(), e))?;
        etc_files.push((cpath(&f)?, target("etc/hostname", true)?));
    }
    let cwd = Target::new(&spec.cwd, false).unwrap_or(Target { path: cstr(".")?, file_in: None });
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
    let cgroup = Cgroup::create(&opts.limits)?;
    let seccomp = match spec.security {
        Security::Sandbox => Some(crate::seccomp::docker_default(crate::caps::DEFAULT_CAPS)?.fprog()),
        Security::Insecure => None,
    };
    let plan = Plan {
        root: cpath(&rootfs)?,
        overlay_opts,
        bind_root,
        proc: target("proc", false)?,
        dev: target("dev", false)?,
        sys: target("sys", false)?,
        dev_nodes: [("null", (1, 3)), ("zero", (1, 5)), ("full", (1, 7)), ("random", (1, 8)), ("urandom", (1, 9)), ("tty", (5, 0))]
            .iter()
            .map(|(name, (ma, mi))| Ok((cstr(*name)?, cstr(format!("/dev/{name}"))?, libc::makedev(*ma, *mi))))
            .collect::<Result<_, ExecError>>()?,
        dev_links: [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("pts/ptmx", "ptmx"),
        ]
        .iter()
        .map(|(t, l)| Ok((cstr(*t)?, cstr(*l)?)))
        .collect::<Result<_, ExecError>>()?,
        etc_files,
        extra: spec
            .mounts
            .iter()
            .map(|m| {
                let file = matches!(m.source, MountSource::File(_));
                let (source, tmpfs_opts) = match &m.source {
                    MountSource::Dir(p) | MountSource::File(p) => (Some(cpath(p)?), cstr("")?),
                    MountSource::Tmpfs { size: Some(n) } => (None, cstr(format!("mode=1777,size={n}"))?),
                    MountSource::Tmpfs { size: None } => (None, cstr("mode=1777")?),
                };
                Ok(ExtraPlan { target: target(&m.dest, file)?, source, tmpfs_opts, readonly: m.readonly })
            })
            .collect::<Result<_, ExecError>>()?,
        cgroup_join: cgroup.join_files().iter().map(|p| cpath(p)).collect::<Result<_, _>>()?,
        hostname: cstr(hostname)?,
        cwd,
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.additional_gids.clone(),
        net_loopback: spec.network != Network::Host && opts.netns.is_none(),
        netns: opts.netns.filter(|_| spec.network == Network::Sandbox).map_or(-1, |f| f.as_raw_fd()),
        security: spec.security,
        seccomp,
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
    if spec.network == Network::None || (spec.network == Network::Sandbox && opts.netns.is_none()) {
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
    Ok(Spawned {
        pid,
        output: out_r,
        pty: None,
        pty_sock: sock_parent,
        err_r: Some(err_r),
        prog: prog.clone(),
        reaped: false,
        cgroup,
        _dir: dir,
    })
}

impl Executor for NamespaceExecutor {
    fn run(&self, spec: &ExecSpec, root: &MountSpec, output: &mut dyn FnMut(&[u8])) -> Result<ExecResult, ExecError> {
        let started = std::time::Instant::now();
        let netns = match spec.network {
            Network::Sandbox => Some(self.net.take()?),
            _ => None,
        };
        let opts = SpawnOptions {
            hostname: SANDBOX_HOSTNAME,
            hostname_file: false,
            stdio: Stdio::Capture,
            init: false,
            limits: self.limits,
            netns: netns.as_ref().map(|n| n.fd()),
        };
        let child = spawn(&self.scratch, spec, root, &opts);
        // The step's processes die with its pid namespace; a sandboxed step could not change
        // the namespace's interfaces or routes, so the next step may have it.
        let give_back = |ns: Option<crate::network::NetNs>| {
            if let Some(ns) = ns.filter(|_| spec.security == Security::Sandbox) {
                self.net.put(ns);
            }
        };
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                give_back(netns);
                return Err(e);
            }
        };
        if let Err(e) = child.started() {
            drop(child);
            give_back(netns);
            return Err(e);
        }
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
        let limit_hit = match (code, &self.limits) {
            (0, _) => None,
            (_, Limits { pids: Some(n), .. }) if child.cgroup.hit_pids_limit() => Some(crate::LimitHit::Pids(*n)),
            (_, Limits { memory: Some(m), .. }) if child.cgroup.hit_memory_limit() => Some(crate::LimitHit::Memory(*m)),
            _ => None,
        };
        drop(child);
        give_back(netns);
        Ok(ExecResult { exit_code: code, duration: started.elapsed(), limit_hit })
    }
}
