//! Containers for `rdock run`: the build sandbox (same namespaces, root, /proc, /dev,
//! capabilities and user switch) with a hostname of its own, the caller's streams or a
//! pty, and optionally a small init as pid 1. Starting returns once the command has been
//! executed, so "not found" and "not executable" are errors here, not exit codes; the
//! caller then waits, forwarding signals and copying the pty as it sees fit.

use crate::network::{NetNs, PortMap, Proto};
use crate::sandbox::{SpawnOptions, Spawned, Stdio, spawn};
use crate::udprelay::UdpRelay;
use crate::{ExecError, ExecSpec};
use rdock_llb::Network;
use rdock_snapshotter::MountSpec;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// How the container's standard streams are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// rdock's own stdout and stderr; stdin too if `stdin` (`-i`), else /dev/null.
    Inherit {
        /// Pass stdin through.
        stdin: bool,
    },
    /// A new pty of this size (`-t`); rdock copies between it and its own terminal.
    Tty {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// What to run, beyond the step's fields.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Command, environment, working directory, user, network and mounts.
    pub exec: ExecSpec,
    /// The container's hostname (also in /etc/hosts and /etc/hostname).
    pub hostname: String,
    /// Its streams.
    pub streams: Streams,
    /// Run a small init as pid 1 that forwards signals and reaps zombies (`--init`).
    pub init: bool,
    /// Its cgroup limits (`--memory`, `--cpus`, `--pids-limit`).
    pub limits: crate::cgroup::Limits,
    /// Ports published on the host (`-p`), with the default network.
    pub ports: Vec<PortMap>,
}

/// A running container's first process.
pub struct Process {
    inner: Spawned,
    /// Relays of the UDP ports published (stopped when dropped, before the namespace).
    _udp: Vec<UdpRelay>,
    /// The default network's namespace and its slirp4netns, for as long as the container.
    _net: Option<NetNs>,
}

/// A socket path for slirp4netns's API of one container, short enough for `sun_path`.
fn api_socket_for(scratch: &Path) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = scratch.join(format!("slirp-{}-{n}.sock", std::process::id()));
    // sun_path holds 108 bytes; a deep store path falls back to /run.
    if p.as_os_str().len() < 100 { p } else { std::path::PathBuf::from(format!("/run/rdock-slirp-{}-{n}.sock", std::process::id())) }
}

impl Process {
    /// Starts `spec` on `root` with per-run files under `scratch`; returns once the command
    /// was executed. The caller must block the signals it means to forward before this, in
    /// every thread: the container unblocks them for itself.
    pub fn start(scratch: &Path, spec: &ContainerSpec, root: &MountSpec) -> Result<Process, ExecError> {
        let stdio = match spec.streams {
            Streams::Inherit { stdin } => Stdio::Inherit { stdin },
            Streams::Tty { rows, cols } => Stdio::Pty { winsize: libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 } },
        };
        let mut udp = Vec::new();
        let net = match spec.exec.network {
            Network::Sandbox => {
                let tcp = spec.ports.iter().any(|p| p.proto == Proto::Tcp);
                let ns = NetNs::create(tcp.then(|| api_socket_for(scratch)))?;
                for p in &spec.ports {
                    match p.proto {
                        Proto::Tcp => ns.forward(p)?,
                        Proto::Udp => udp.push(UdpRelay::start(ns.fd(), p)?),
                    }
                }
                Some(ns)
            }
            _ if !spec.ports.is_empty() => {
                return Err(ExecError::Setup("-p publishes ports of the default network only, not of --network none|host".into()));
            }
            _ => None,
        };
        let opts = SpawnOptions {
            hostname: &spec.hostname,
            hostname_file: true,
            stdio,
            init: spec.init,
            limits: spec.limits,
            netns: net.as_ref().map(|n| n.fd()),
        };
        let mut inner = spawn(scratch, &spec.exec, root, &opts)?;
        inner.started()?;
        if matches!(spec.streams, Streams::Tty { .. }) && inner.pty.is_none() {
            return Err(ExecError::Setup("the container did not send its terminal".into()));
        }
        Ok(Process { inner, _udp: udp, _net: net })
    }

    /// The pid (in rdock's pid namespace) of the container's pid 1.
    pub fn pid(&self) -> i32 {
        self.inner.pid.as_raw()
    }

    /// The pty master, for [`Streams::Tty`].
    pub fn pty(&self) -> Option<BorrowedFd<'_>> {
        self.inner.pty.as_ref().map(|f| f.as_fd())
    }

    /// Sends signal `sig` to the container's pid 1.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), ExecError> {
        nix::sys::signal::kill(self.inner.pid, sig).map_err(|e| ExecError::Setup(format!("signalling the container: {e}")))
    }

    /// The exit status (128+N for signal N) if pid 1 has ended; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<i32>, ExecError> {
        self.inner.try_wait()
    }

    /// Waits for pid 1 to end; its end ends every process of the container.
    pub fn wait(&mut self) -> Result<i32, ExecError> {
        self.inner.wait()
    }
}
