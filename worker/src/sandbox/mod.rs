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
mod plan;

use crate::cgroup::{Cgroup, Limits};
use crate::{ExecError, ExecResult, ExecSpec, Executor};
use child::{ChildStdio, Stage, child};
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
    /// Finished steps' mount namespaces, let go of off the steps' path.
    teardown: std::sync::Arc<crate::teardown::Teardown>,
}

impl NamespaceExecutor {
    /// An executor using `scratch` for per-run files, with the default limits.
    pub fn new(scratch: PathBuf) -> NamespaceExecutor {
        NamespaceExecutor { scratch, limits: Limits::default(), net: Default::default(), teardown: Default::default() }
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
    held: Held,
}

/// What holds a sandbox's mounts once its processes are gone: its mount namespace (so that
/// releasing it, which under gVisor writes back what the step wrote, can happen off the
/// step's path; see `teardown.rs`), then its scratch directory, which holds the root's
/// mount point and is removed once the namespace is gone. Dropped in that order.
#[derive(Default)]
pub(crate) struct Held {
    _ns: Option<OwnedFd>,
    _dir: Option<RunDir>,
}

impl Spawned {
    /// What still holds the sandbox's mounts, for the caller to let go of; call it once the
    /// child is reaped.
    pub fn take_held(&mut self) -> Held {
        std::mem::take(&mut self.held)
    }

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

/// Writes the per-run files (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) in a
/// directory of their own, removed when the run ends.
fn run_files(scratch: &Path, spec: &ExecSpec, opts: &SpawnOptions<'_>) -> Result<(RunDir, plan::RunFiles), ExecError> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = RunDir(scratch.join(format!("run-{}-{n}", std::process::id())));
    let write = |name: &str, text: &[u8]| -> Result<PathBuf, ExecError> {
        let p = dir.0.join(name);
        std::fs::write(&p, text).map_err(|e| ExecError::Io(p.clone(), e))?;
        Ok(p)
    };
    let rootfs = dir.0.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| ExecError::Io(rootfs.clone(), e))?;
    let hosts = write("hosts", plan::hosts_file(opts.hostname, &spec.extra_hosts).as_bytes())?;
    let resolv_text = match (spec.network, opts.netns) {
        (Network::Sandbox, Some(_)) => crate::network::resolv_conf(&host_resolv_conf()),
        _ => host_resolv_conf(),
    };
    let resolv = write("resolv.conf", &resolv_text)?;
    let hostname = if opts.hostname_file { Some(write("hostname", format!("{}\n", opts.hostname).as_bytes())?) } else { None };
    Ok((dir, plan::RunFiles { rootfs, hosts, resolv, hostname }))
}

/// The child's ends of its streams, and the parent's.
struct Pipes {
    err_r: OwnedFd,
    err_w: OwnedFd,
    out: Option<(OwnedFd, OwnedFd)>,
    /// The socket a pty's master comes back over: parent's end, child's end.
    sock: Option<(OwnedFd, OwnedFd)>,
}

impl Pipes {
    fn new(stdio: Stdio) -> Result<Pipes, ExecError> {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Setup(format!("pipe: {e}")));
        let (err_r, err_w) = pipe()?;
        let out = if matches!(stdio, Stdio::Capture) { Some(pipe()?) } else { None };
        let sock = match stdio {
            Stdio::Pty { .. } => {
                use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
                Some(
                    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                        .map_err(|e| ExecError::Setup(format!("socketpair: {e}")))?,
                )
            }
            _ => None,
        };
        Ok(Pipes { err_r, err_w, out, sock })
    }

    fn child_stdio(&self, stdio: Stdio) -> ChildStdio {
        match (stdio, &self.out, &self.sock) {
            (Stdio::Capture, Some((_, w)), _) => ChildStdio::Capture(w.as_raw_fd()),
            (Stdio::Pty { winsize }, _, Some((_, s))) => ChildStdio::Pty { sock: s.as_raw_fd(), winsize },
            (Stdio::Inherit { stdin }, _, _) => ChildStdio::Inherit { stdin },
            _ => ChildStdio::Inherit { stdin: false },
        }
    }
}

/// Clones a sandbox running `spec` on `root`, with per-run files under `scratch`.
pub(crate) fn spawn(scratch: &Path, spec: &ExecSpec, root: &MountSpec, opts: &SpawnOptions<'_>) -> Result<Spawned, ExecError> {
    let (dir, files) = run_files(scratch, spec, opts)?;
    let pipes = Pipes::new(opts.stdio)?;
    let cgroup = Cgroup::create(&opts.limits)?;
    let seccomp = match spec.security {
        Security::Sandbox => Some(crate::seccomp::docker_default(crate::caps::DEFAULT_CAPS)?.fprog()),
        Security::Insecure => None,
    };
    let fds = plan::ChildFds {
        err: pipes.err_w.as_raw_fd(),
        stdio: pipes.child_stdio(opts.stdio),
        netns: opts.netns.map_or(-1, |f| f.as_raw_fd()),
    };
    let plan = plan::plan(spec, root, opts, &files, fds, &cgroup.join_files(), seccomp)?;
    let flags = plan::clone_flags(spec.network, opts.netns.is_some());
    let mut stack = vec![0u8; 256 * 1024];
    let argv_ptrs: Vec<*const libc::c_char> = plan.argv.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_ptrs: Vec<*const libc::c_char> = plan.envp.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    // SAFETY: the child only reads `plan` and the pointer arrays (its own copy of this
    // address space) and makes raw syscalls; it never returns into Rust code that
    // could allocate or unwind, ending in execve or _exit.
    let pid = unsafe { nix::sched::clone(Box::new(|| child(&plan, &argv_ptrs, &envp_ptrs)), &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| ExecError::Setup(format!("clone into new namespaces: {e}")))?;
    // The child cannot have been reaped yet, so this is its namespace (None only if /proc
    // will not say: the namespace then ends with the child, as it always did).
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).ok().map(OwnedFd::from);
    let Pipes { err_r, err_w, out, sock } = pipes;
    // The child's ends close here: reads see EOF when it execs or exits.
    drop(err_w);
    let output = out.map(|(r, _w)| r);
    let pty_sock = sock.map(|(parent, _child)| parent);
    Ok(Spawned {
        pid,
        output,
        pty: None,
        pty_sock,
        err_r: Some(err_r),
        prog: spec.args.first().cloned().unwrap_or_default(),
        reaped: false,
        cgroup,
        held: Held { _ns: ns, _dir: Some(dir) },
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
            hostname: spec.hostname.as_deref().unwrap_or(SANDBOX_HOSTNAME),
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
        self.teardown.later(child.take_held());
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
