//! UDP ports published with `-p HOST:CTR/udp`.
//!
//! slirp4netns's own UDP forwards cannot answer a client on the host's loopback: libslirp
//! shows the container such a client as its host alias (10.0.2.2), and with
//! `--disable-host-loopback` (which keeps the host's 127.0.0.1 services out of the
//! container's reach) it drops every datagram the container sends back there. So rdock
//! relays UDP itself, as rootlesskit's builtin port driver does: a socket on the host's
//! address, and per client a socket made inside the container's network namespace that
//! talks to the container's port on its loopback. TCP stays with slirp4netns's forwards,
//! which have no such trouble.

use crate::ExecError;
use crate::network::PortMap;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the relay threads look whether they should stop.
const TICK: Duration = Duration::from_millis(200);
/// A client silent this long is forgotten (its socket in the namespace closed).
const IDLE: Duration = Duration::from_secs(120);

/// A running relay; dropping it stops its threads within [`TICK`].
#[derive(Debug)]
pub struct UdpRelay {
    stop: Arc<AtomicBool>,
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl UdpRelay {
    /// Binds the host side of `port` now (so a port in use is an error of `run`) and relays
    /// in the background into the namespace `ns`.
    pub fn start(ns: BorrowedFd<'_>, port: &PortMap) -> Result<UdpRelay, ExecError> {
        let fail = |e: std::io::Error| ExecError::Setup(format!("publishing {port}: {e}"));
        let host = UdpSocket::bind((port.host_ip, port.host_port)).map_err(fail)?;
        host.set_read_timeout(Some(TICK)).map_err(fail)?;
        let ns = ns.try_clone_to_owned().map_err(fail)?;
        let stop = Arc::new(AtomicBool::new(false));
        let relay = Relay { host, ns, container_port: port.container_port, stop: stop.clone() };
        std::thread::Builder::new().name("udp-relay".into()).spawn(move || relay.run()).map_err(fail)?;
        Ok(UdpRelay { stop })
    }
}

struct Relay {
    host: UdpSocket,
    ns: OwnedFd,
    container_port: u16,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Host → container: each client's datagrams go out of its own socket in the
    /// namespace, whose answers a thread of its own sends back to that client.
    fn run(self) {
        let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, Instant)> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::Relaxed) {
            let (n, from) = match self.host.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    clients.retain(|_, (_, last)| last.elapsed() < IDLE);
                    continue;
                }
                Err(_) => return,
            };
            let (inner, last) = match clients.entry(from) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let Ok(inner) = self.inner_socket() else { continue };
                    let inner = Arc::new(inner);
                    self.answer(from, inner.clone());
                    e.insert((inner, Instant::now()))
                }
            };
            *last = Instant::now();
            let _ = inner.send(&buf[..n]);
        }
    }

    /// A socket in the container's namespace, connected to its port on loopback: made on a
    /// thread of its own that joins the namespace and ends (the socket stays in it).
    fn inner_socket(&self) -> std::io::Result<UdpSocket> {
        let ns = self.ns.try_clone()?;
        let port = self.container_port;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                let sock = UdpSocket::bind(("127.0.0.1", 0))?;
                sock.connect(("127.0.0.1", port))?;
                sock.set_read_timeout(Some(TICK))?;
                Ok(sock)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
        })
    }

    /// Container → host: what the container answers `client` on `inner`.
    fn answer(&self, client: SocketAddr, inner: Arc<UdpSocket>) {
        let (Ok(host), stop) = (self.host.try_clone(), self.stop.clone()) else { return };
        let _ = std::thread::Builder::new().name("udp-answer".into()).spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) && last.elapsed() < IDLE {
                match inner.recv(&mut buf) {
                    Ok(n) => {
                        last = Instant::now();
                        let _ = host.send_to(&buf[..n], client);
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    // ECONNREFUSED: nothing listens in the container (yet); keep waiting.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(_) => return,
                }
            }
        });
    }
}
