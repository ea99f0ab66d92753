//! The default network: a network namespace of its own that reaches the outside world
//! through slirp4netns, a user-mode TCP/IP stack (Debian's `slirp4netns`), as BuildKit's
//! bridge network does for its steps and podman's for rootless containers.
//!
//! rdock starts slirp4netns itself; there is no daemon and nothing changes on the host's
//! side (no bridge, no firewall rule): slirp4netns owns a tap device in the namespace and
//! makes ordinary sockets on the host for what crosses it. `--disable-host-loopback` keeps
//! the host's 127.0.0.1 services out of reach; DNS goes to the host's resolvers.
//!
//! Making a namespace and starting slirp4netns costs 5–10 ms, so build steps take theirs
//! from a [`NetPool`], as BuildKit keeps a pool of CNI namespaces: a namespace goes back to
//! the pool when its step has ended (its processes are gone with the step's pid namespace,
//! and a sandboxed step has no CAP_NET_ADMIN to change its interfaces or routes), and
//! [`NetPool::prewarm`] makes one in the background while a build resolves its images.

use crate::ExecError;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

/// The address slirp4netns gives the namespace's `tap0` (`--configure`).
pub const GUEST_ADDR: &str = "10.0.2.100";
/// slirp4netns's DNS forwarder, for hosts whose resolvers are on their own loopback.
pub const SLIRP_DNS: &str = "10.0.2.3";
/// slirp4netns's largest MTU: fewer, larger frames through the tap, as podman sets it.
const MTU: u32 = 65520;

/// A network namespace with slirp4netns attached. Dropping it stops slirp4netns; the
/// namespace goes when its last process has left.
pub struct NetNs {
    ns: OwnedFd,
    slirp: Child,
    /// Closing this ends slirp4netns (`--exit-fd`), also when rdock dies.
    exit: Option<OwnedFd>,
    api: Option<PathBuf>,
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs").field("slirp", &self.slirp.id()).field("api", &self.api).finish()
    }
}

impl NetNs {
    /// A new namespace with `lo` up and slirp4netns configured on `tap0`; returns once
    /// slirp4netns says the interface is up. With `api`, slirp4netns listens on that
    /// socket for port forwards ([`NetNs::forward`]).
    pub fn create(api: Option<PathBuf>) -> Result<NetNs, ExecError> {
        let ns = new_netns()?;
        // Moved above the low numbers, so the child can put them at 3, 4 and 5 with dup2.
        let high = |fd: BorrowedFd<'_>| -> Result<OwnedFd, ExecError> {
            // SAFETY: F_DUPFD_CLOEXEC makes a new fd that nothing else owns.
            let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 16) };
            if n < 0 {
                return Err(ExecError::Setup(format!("dup: {}", std::io::Error::last_os_error())));
            }
            // SAFETY: just made, owned here.
            Ok(unsafe { OwnedFd::from_raw_fd(n) })
        };
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Setup(format!("pipe: {e}")))?;
        let (exit_r, exit_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Setup(format!("pipe: {e}")))?;
        let fds = [high(ns.as_fd())?, high(ready_w.as_fd())?, high(exit_r.as_fd())?];
        drop((ready_w, exit_r));
        let mut cmd = Command::new("slirp4netns");
        cmd.args(["--configure", &format!("--mtu={MTU}"), "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp"]).args([
            "--netns-type=path",
            "--ready-fd=4",
            "--exit-fd=5",
        ]);
        if let Some(a) = &api {
            cmd.arg(format!("--api-socket={}", a.display()));
        }
        cmd.args(["/proc/self/fd/3", "tap0"]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        cmd.stderr(std::process::Stdio::piped());
        let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
        // SAFETY: dup2 is async-signal-safe; the sources are above 16, so no target
        // overwrites a source before it is copied.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut slirp = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ExecError::Setup(
                "the default network needs slirp4netns, which is not installed (apt-get install slirp4netns); \
                 or build with --network none|host"
                    .into(),
            ),
            _ => ExecError::Setup(format!("starting slirp4netns: {e}")),
        })?;
        drop(fds);
        let mut ready = [0u8; 1];
        let got = std::fs::File::from(ready_r).read(&mut ready).unwrap_or(0);
        if got != 1 || ready[0] != b'1' {
            let _ = slirp.kill();
            let mut err = String::new();
            if let Some(mut e) = slirp.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = slirp.wait();
            return Err(ExecError::Setup(format!("slirp4netns did not bring the network up: {}", err.trim())));
        }
        // slirp4netns only writes to stderr on trouble; nobody reads it from here on, so a
        // chatty one must not block on a full pipe.
        if let Some(e) = slirp.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut std::io::BufReader::new(e), &mut std::io::sink()));
        }
        tracing::debug!(slirp4netns = slirp.id(), api = ?api, "network namespace ready");
        Ok(NetNs { ns, slirp, exit: Some(exit_w), api })
    }

    /// The namespace, for `setns`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns.as_fd()
    }

    /// Publishes the TCP `port` on the host's `host_ip:host_port` to the namespace's
    /// `container_port`, through slirp4netns's API socket. (UDP ports are relayed by rdock:
    /// see `udprelay.rs` for why.)
    pub fn forward(&self, p: &PortMap) -> Result<(), ExecError> {
        let api = self.api.as_ref().ok_or_else(|| ExecError::Setup("this network has no API socket for ports".into()))?;
        let req = serde_json::json!({
            "execute": "add_hostfwd",
            "arguments": {
                "proto": p.proto.name(), "host_addr": p.host_ip.to_string(), "host_port": p.host_port,
                "guest_addr": GUEST_ADDR, "guest_port": p.container_port,
            }
        });
        let mut sock = std::os::unix::net::UnixStream::connect(api).map_err(|e| ExecError::Setup(format!("slirp4netns API: {e}")))?;
        sock.write_all(req.to_string().as_bytes()).map_err(|e| ExecError::Setup(format!("slirp4netns API: {e}")))?;
        let _ = sock.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let _ = std::io::BufReader::new(sock).read_line(&mut reply);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
        match v.get("error") {
            None if v.get("return").is_some() => Ok(()),
            err => Err(ExecError::Setup(format!(
                "publishing {p}: {}",
                err.and_then(|e| e.get("desc")).and_then(|d| d.as_str()).unwrap_or(reply.trim())
            ))),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Closing the exit fd ends slirp4netns; it is not waited for (its teardown and the
        // namespace's take tens of milliseconds, which no command should spend at its end):
        // a thread reaps it, or init does once rdock has exited.
        drop(self.exit.take());
        if let Some(a) = &self.api {
            let _ = std::fs::remove_file(a);
        }
        let pid = nix::unistd::Pid::from_raw(self.slirp.id() as i32);
        std::thread::spawn(move || nix::sys::wait::waitpid(pid, None));
    }
}

/// Makes a network namespace with `lo` up, on a thread of its own: `unshare` moves only the
/// calling thread, which then ends, leaving the namespace held by its fd.
fn new_netns() -> Result<OwnedFd, ExecError> {
    std::thread::spawn(|| -> Result<OwnedFd, ExecError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| ExecError::Setup(format!("new network namespace: {e}")))?;
        if !crate::loopback::loopback_up() {
            return Err(ExecError::Setup("bringing up lo in a new network namespace".into()));
        }
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| ExecError::Setup(format!("opening the new network namespace: {e}")))
    })
    .join()
    .map_err(|_| ExecError::Setup("the network namespace thread panicked".into()))?
}

/// Namespaces with slirp4netns ready, handed to build steps one at a time and taken back.
#[derive(Default)]
pub struct NetPool {
    state: Mutex<PoolState>,
    /// Signalled when a namespace is put back or a prewarm ends.
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<NetNs>,
    /// Namespaces being made in the background: a step waits for one rather than make
    /// a second.
    warming: usize,
}

impl std::fmt::Debug for NetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetPool").field("idle", &self.state.lock().map(|s| s.idle.len()).unwrap_or(0)).finish()
    }
}

impl NetPool {
    /// Makes one namespace in the background, so the first step need not wait for it all.
    pub fn prewarm(self: &Arc<Self>) {
        if let Ok(mut s) = self.state.lock() {
            s.warming += 1;
        }
        let pool = Arc::clone(self);
        std::thread::spawn(move || {
            let made = NetNs::create(None);
            if let Ok(mut s) = pool.state.lock() {
                s.warming -= 1;
                if let Ok(ns) = made {
                    s.idle.push(ns);
                }
            }
            pool.changed.notify_all();
        });
    }

    /// An idle namespace, the one being made, or a new one.
    pub fn take(&self) -> Result<NetNs, ExecError> {
        let Ok(mut s) = self.state.lock() else { return NetNs::create(None) };
        loop {
            if let Some(ns) = s.idle.pop() {
                return Ok(ns);
            }
            if s.warming == 0 {
                drop(s);
                let started = std::time::Instant::now();
                let made = NetNs::create(None);
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "network namespace made on demand");
                return made;
            }
            s = match self.changed.wait(s) {
                Ok(s) => s,
                Err(_) => return NetNs::create(None),
            };
        }
    }

    /// Returns a namespace whose step has ended.
    pub fn put(&self, ns: NetNs) {
        if let Ok(mut s) = self.state.lock() {
            s.idle.push(ns);
        }
        self.changed.notify_all();
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p [IP:]HOSTPORT:CTRPORT[/udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    /// The host address to listen on (0.0.0.0 by default, as docker).
    pub host_ip: std::net::IpAddr,
    /// The host's port.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl std::fmt::Display for PortMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}/{}", self.host_ip, self.host_port, self.container_port, self.proto.name())
    }
}

/// A `-p` value rdock cannot publish, with what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortMapError(String);

impl PortMap {
    /// Parses docker's `-p` forms with explicit ports: `8080:80`, `127.0.0.1:8080:80`,
    /// `8080:80/udp`. A port range or a container port alone (a random host port) is an
    /// error that says so.
    pub fn parse(s: &str) -> Result<PortMap, PortMapError> {
        PortMap::parse_message(s).map_err(PortMapError)
    }

    fn parse_message(s: &str) -> Result<PortMap, String> {
        let (spec, proto) = match s.rsplit_once('/') {
            Some((a, "tcp")) => (a, Proto::Tcp),
            Some((a, "udp")) => (a, Proto::Udp),
            Some((_, p)) => return Err(format!("-p {s}: protocol {p:?} is not supported (tcp or udp)")),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let (ip, host, ctr) = match parts.as_slice() {
            [ctr, host] => ("0.0.0.0", *host, *ctr),
            [ctr, host, ip] => (ip.trim_start_matches('[').trim_end_matches(']'), *host, *ctr),
            _ => return Err(format!("-p {s}: give HOSTPORT:CONTAINERPORT (a random host port is not supported)")),
        };
        let port = |p: &str| -> Result<u16, String> {
            if p.contains('-') {
                return Err(format!("-p {s}: port ranges are not supported"));
            }
            p.parse::<u16>().ok().filter(|n| *n != 0).ok_or_else(|| format!("-p {s}: {p:?} is not a port"))
        };
        let host_ip = ip.parse().map_err(|_| format!("-p {s}: {ip:?} is not an IP address"))?;
        Ok(PortMap { host_ip, host_port: port(host)?, container_port: port(ctr)?, proto })
    }
}

/// The resolv.conf of a step with its own network: the host's, as BuildKit makes it, with
/// the nameservers on the host's loopback (systemd-resolved, dnsmasq), which the namespace
/// cannot reach, replaced by slirp4netns's forwarder to them.
pub fn resolv_conf(host: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(host);
    let mut out = String::new();
    let mut servers = 0;
    let mut dropped = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            let loopback = addr.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
            if loopback {
                dropped = true;
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 && (dropped || !out.contains("nameserver")) {
        out.push_str(&format!("nameserver {SLIRP_DNS}\n"));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_become_slirps_forwarder() {
        let host = b"search corp\nnameserver 127.0.0.53\noptions edns0\n";
        assert_eq!(String::from_utf8(resolv_conf(host)).unwrap(), "search corp\noptions edns0\nnameserver 10.0.2.3\n");
        let host = b"nameserver 10.1.1.1\nnameserver ::1\n";
        assert_eq!(String::from_utf8(resolv_conf(host)).unwrap(), "nameserver 10.1.1.1\n");
        assert_eq!(String::from_utf8(resolv_conf(b"")).unwrap(), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn port_specs_parse_as_docker_spells_them() {
        let p = PortMap::parse("8080:80").unwrap();
        assert_eq!((p.host_ip.to_string(), p.host_port, p.container_port, p.proto), ("0.0.0.0".into(), 8080, 80, Proto::Tcp));
        let p = PortMap::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!((p.host_ip.to_string(), p.host_port, p.container_port, p.proto), ("127.0.0.1".into(), 5353, 53, Proto::Udp));
        for bad in ["80", "8000-8010:80", "x:80", "80:80/sctp", "0:80"] {
            assert!(PortMap::parse(bad).is_err(), "{bad}");
        }
    }
}
