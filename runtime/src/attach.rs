//! Waiting for a container the way `docker run` attaches to one: signals rdock receives
//! are forwarded to the container's pid 1 (SIGTERM, a request to stop, becomes the
//! image's STOPSIGNAL and then SIGKILL after the stop timeout); with `-t` rdock copies
//! between its terminal (in raw mode) and the container's pty, and passes on window
//! size changes.

use crate::RuntimeError;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use rdock_worker::container::Process;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// The signals rdock forwards (and SIGCHLD, which tells it the container ended).
const HANDLED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCHLD,
];

/// The handled signals, blocked and readable from a signalfd.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals for this thread and every thread it starts later, so
    /// they queue for [`wait`] instead of killing rdock. Call it before any thread exists.
    pub fn block() -> Result<Signals, RuntimeError> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(*s);
        }
        set.thread_block().map_err(|e| RuntimeError::Setup(format!("blocking signals: {e}")))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| RuntimeError::Setup(format!("signalfd: {e}")))?;
        Ok(Signals { fd })
    }
}

/// How to wait.
#[derive(Debug, Clone, Copy)]
pub struct AttachOptions {
    /// What a stop request (SIGTERM to rdock) sends first: the image's STOPSIGNAL.
    pub stop_signal: Signal,
    /// How long after that before SIGKILL.
    pub stop_timeout: Duration,
    /// Copy rdock's stdin to the pty (`-i -t`).
    pub stdin: bool,
}

/// The size of rdock's terminal (stdin's, else stdout's), if it has one.
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [0, 1] {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into our stack value.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

fn copy_size(pty: BorrowedFd<'_>) {
    if let Some((rows, cols)) = terminal_size() {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from our stack value.
        unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// rdock's terminal in raw mode while the container has it; restored when dropped.
pub struct RawMode {
    saved: termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin, if stdin is a terminal.
    pub fn enable() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, &self.saved);
    }
}

fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Option<usize> {
    match nix::unistd::read(fd, buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => Some(0),
        // EIO: every holder of the pty's slave side has closed it.
        Err(_) => None,
    }
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Waits for the container's pid 1 to end, forwarding signals and copying the pty;
/// returns its exit status (128+N if killed by signal N).
pub fn wait(process: &mut Process, signals: &Signals, opts: &AttachOptions) -> Result<i32, RuntimeError> {
    let mut a = Attached { deadline: None, pty_open: process.pty().is_some(), stdin_open: false, buf: vec![0u8; 32 * 1024] };
    a.stdin_open = opts.stdin && a.pty_open;
    if let Some(pty) = process.pty() {
        nix::fcntl::fcntl(pty, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| RuntimeError::Setup(format!("pty: {e}")))?;
    }
    loop {
        if let Some(code) = process.try_wait()? {
            // What the container wrote last is still in the pty.
            if let Some(pty) = process.pty() {
                while let Some(n) = read_fd(pty, &mut a.buf).filter(|n| *n > 0) {
                    a.print(n);
                }
            }
            return Ok(code);
        }
        let Some(timeout) = a.timeout(process) else { continue };
        let ready = a.poll(process, signals, timeout)?;
        if ready[0] {
            a.forward_signals(process, signals, opts);
        }
        a.copy(process, &ready[1..]);
    }
}

/// A container being waited for: the stop deadline once asked to stop, and which of its
/// streams are still open.
struct Attached {
    /// When SIGKILL follows the stop signal.
    deadline: Option<Instant>,
    pty_open: bool,
    stdin_open: bool,
    buf: Vec<u8>,
}

impl Attached {
    fn print(&self, n: usize) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&self.buf[..n]);
        let _ = out.flush();
    }

    /// How long to poll: until the stop deadline, or for ever. None when the deadline has
    /// passed (the process has just been killed: look at it again).
    fn timeout(&mut self, process: &Process) -> Option<nix::poll::PollTimeout> {
        let Some(d) = self.deadline else { return Some(nix::poll::PollTimeout::NONE) };
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = process.signal(Signal::SIGKILL);
            self.deadline = None;
            return None;
        }
        Some(nix::poll::PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1).unwrap_or(nix::poll::PollTimeout::MAX))
    }

    /// Polls the signal fd, the pty (while open) and stdin (while open); which are ready,
    /// in that order.
    fn poll(&self, process: &Process, signals: &Signals, timeout: nix::poll::PollTimeout) -> Result<Vec<bool>, RuntimeError> {
        let stdin = std::io::stdin();
        let mut fds = vec![nix::poll::PollFd::new(signals.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        if let (true, Some(p)) = (self.pty_open, process.pty()) {
            fds.push(nix::poll::PollFd::new(p, nix::poll::PollFlags::POLLIN));
        }
        if self.stdin_open {
            fds.push(nix::poll::PollFd::new(stdin.as_fd(), nix::poll::PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(RuntimeError::Setup(format!("poll: {e}"))),
        }
        Ok(fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect())
    }

    /// SIGWINCH resizes the pty; SIGTERM becomes the stop signal (SIGKILL after the stop
    /// timeout); any other signal is passed on.
    fn forward_signals(&mut self, process: &Process, signals: &Signals, opts: &AttachOptions) {
        while let Ok(Some(info)) = signals.fd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
            match sig {
                Signal::SIGCHLD => {}
                Signal::SIGWINCH => {
                    if let Some(p) = process.pty() {
                        copy_size(p);
                    }
                }
                Signal::SIGTERM => {
                    let _ = process.signal(opts.stop_signal);
                    self.deadline.get_or_insert(Instant::now() + opts.stop_timeout);
                }
                other => {
                    let _ = process.signal(other);
                }
            }
        }
    }

    /// Copies the pty to stdout and stdin to the pty, for those `ready` (pty first).
    fn copy(&mut self, process: &Process, ready: &[bool]) {
        let mut i = 0;
        if self.pty_open {
            if ready.get(i).copied().unwrap_or(false)
                && let Some(p) = process.pty()
            {
                match read_fd(p, &mut self.buf) {
                    Some(n) => self.print(n),
                    None => self.pty_open = false,
                }
            }
            i += 1;
        }
        if self.stdin_open && ready.get(i).copied().unwrap_or(false) {
            match read_fd(std::io::stdin().as_fd(), &mut self.buf) {
                Some(n) => {
                    if let Some(p) = process.pty() {
                        write_all(p, &self.buf[..n]);
                    }
                }
                None => self.stdin_open = false,
            }
        }
    }
}
