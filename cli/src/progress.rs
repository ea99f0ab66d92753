//! Progress renderers: `tty` (live, BuildKit-like: each step's state and timer, running
//! steps' output tails), `plain` (one line per event, for CI logs), `rawjson` (one JSON
//! object per line) and `quiet`. All write to stderr.

use rdock_solver::{Event, EventKind, ProgressSink};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// tty when stderr is a terminal, else plain.
    Auto,
    /// Live.
    Tty,
    /// Line per event.
    Plain,
    /// JSON per event.
    RawJson,
    /// Errors only.
    Quiet,
}

impl Mode {
    /// Parses `--progress`.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "auto" => Mode::Auto,
            "tty" => Mode::Tty,
            "plain" => Mode::Plain,
            "rawjson" => Mode::RawJson,
            "quiet" => Mode::Quiet,
            _ => return None,
        })
    }
}

/// A sink for the chosen mode.
pub fn sink(mode: Mode, explain: bool) -> Box<dyn ProgressSink> {
    let inner: Box<dyn ProgressSink> = match mode {
        // The live display shows the reasons under their step itself.
        Mode::Tty => return Box::new(Tty::new(explain)),
        Mode::Auto if std::io::stderr().is_terminal() => return Box::new(Tty::new(explain)),
        Mode::Auto | Mode::Plain => Box::new(Plain::default()),
        // rawjson carries the reasons as events already.
        Mode::RawJson => return Box::new(RawJson),
        Mode::Quiet => Box::new(rdock_solver::NoProgress),
    };
    if explain { Box::new(Explain { inner }) } else { inner }
}

/// Hands every event to the display (first), and every event but step output to a
/// recorder (second) for `--trace`/`--timeline`, which need timings, not logs.
pub struct Tee<'a>(pub &'a dyn ProgressSink, pub &'a dyn ProgressSink);

impl ProgressSink for Tee<'_> {
    fn event(&self, e: Event) {
        if e.kind != EventKind::Log {
            self.1.event(e.clone());
        }
        self.0.event(e);
    }
}

/// `--explain-cache`: prints why each step missed, then passes every event on.
pub struct Explain {
    inner: Box<dyn ProgressSink>,
}

impl ProgressSink for Explain {
    fn event(&self, e: Event) {
        if e.kind == EventKind::CacheMiss {
            let mut text = format!("cache miss: {}", e.name);
            for r in &e.reasons {
                text.push_str("\n  - ");
                text.push_str(r);
            }
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
        self.inner.event(e);
    }
}

#[derive(Default)]
struct PlainState {
    ids: HashMap<String, usize>,
    started: HashMap<String, Instant>,
}

/// `#N name`, `#N CACHED`, `#N 0.123 output`, `#N DONE 0.1s`, `#N ERROR …`.
#[derive(Default)]
pub struct Plain {
    state: Mutex<PlainState>,
    origin: std::sync::OnceLock<Instant>,
}

impl ProgressSink for Plain {
    fn event(&self, e: Event) {
        let origin = *self.origin.get_or_init(Instant::now);
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let next = st.ids.len() + 1;
        let id = *st.ids.entry(e.vertex.clone()).or_insert(next);
        let mut err = std::io::stderr().lock();
        let _ = match e.kind {
            EventKind::Started => {
                st.started.insert(e.vertex.clone(), Instant::now());
                writeln!(err, "#{id} {}", e.name)
            }
            EventKind::Cached => writeln!(err, "#{id} {}\n#{id} CACHED", e.name),
            EventKind::Log => {
                let t = origin.elapsed().as_secs_f64();
                let mut r = Ok(());
                for line in e.detail.lines() {
                    r = writeln!(err, "#{id} {t:.3} {line}");
                }
                r
            }
            EventKind::Completed => {
                let d = st.started.get(&e.vertex).map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
                writeln!(err, "#{id} DONE {d:.1}s")
            }
            EventKind::Failed => writeln!(err, "#{id} ERROR: {}", e.detail),
            EventKind::CacheMiss => Ok(()),
            EventKind::ContextHashed => match e.hash_stats {
                Some(h) => writeln!(
                    err,
                    "#{id} {}: {} files read ({:.1} MB), {} unchanged",
                    e.name,
                    h.files_read,
                    h.bytes_read as f64 / 1e6,
                    h.files_reused
                ),
                None => Ok(()),
            },
        };
    }
}

/// One JSON object per event.
pub struct RawJson;

impl ProgressSink for RawJson {
    fn event(&self, e: Event) {
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

/// How many lines of a running step's output the tty display shows, as BuildKit does.
const LOG_TAIL: usize = 6;

/// A vertex as the tty display knows it.
#[derive(Debug, Clone, PartialEq)]
enum VertexState {
    Running { since: Instant },
    Cached,
    Done { secs: f64 },
    Error { secs: f64 },
}

#[derive(Debug, Clone)]
struct Vertex {
    id: String,
    name: String,
    state: VertexState,
    /// The last complete lines of output, and the line being written.
    tail: std::collections::VecDeque<String>,
    partial: String,
    /// Why it missed the cache (`--explain-cache`).
    reasons: Vec<String>,
    /// For errors: what went wrong.
    error: String,
}

/// What the tty display shows: every vertex in the order it first appeared.
#[derive(Debug)]
pub struct TtyState {
    started: Instant,
    vertices: Vec<Vertex>,
    /// Vertices already printed for good (a finished prefix), never redrawn.
    frozen: usize,
    /// Lines of the live area drawn last time, to move back over.
    drawn: usize,
    finished: bool,
    /// Show why steps missed the cache (`--explain-cache`).
    explain: bool,
}

impl TtyState {
    /// An empty display started at `started`; `explain` shows why steps missed the cache.
    pub fn new(started: Instant, explain: bool) -> TtyState {
        TtyState { started, vertices: Vec::new(), frozen: 0, drawn: 0, finished: false, explain }
    }

    fn vertex(&mut self, e: &Event) -> &mut Vertex {
        let i = match self.vertices.iter().position(|v| v.id == e.vertex) {
            Some(i) => i,
            None => {
                self.vertices.push(Vertex {
                    id: e.vertex.clone(),
                    name: e.name.clone(),
                    state: VertexState::Running { since: Instant::now() },
                    tail: Default::default(),
                    partial: String::new(),
                    reasons: Vec::new(),
                    error: String::new(),
                });
                self.vertices.len() - 1
            }
        };
        &mut self.vertices[i]
    }

    /// Takes one event in.
    pub fn apply(&mut self, e: &Event, at: Instant) {
        match e.kind {
            EventKind::ContextHashed => {}
            EventKind::CacheMiss if self.explain => self.vertex(e).reasons = e.reasons.clone(),
            EventKind::CacheMiss => {}
            EventKind::Started => self.vertex(e).state = VertexState::Running { since: at },
            EventKind::Cached => self.vertex(e).state = VertexState::Cached,
            EventKind::Log => {
                let v = self.vertex(e);
                v.partial.push_str(&e.detail);
                while let Some(p) = v.partial.find(['\n', '\r']) {
                    let line: String = v.partial.drain(..=p).collect();
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if !line.is_empty() {
                        v.tail.push_back(line);
                    }
                    if v.tail.len() > LOG_TAIL {
                        v.tail.pop_front();
                    }
                }
            }
            EventKind::Completed | EventKind::Failed => {
                let v = self.vertex(e);
                let secs = match v.state {
                    VertexState::Running { since } => at.saturating_duration_since(since).as_secs_f64(),
                    _ => 0.0,
                };
                let secs = e.duration_ms.map(|ms| ms / 1000.0).unwrap_or(secs);
                if e.kind == EventKind::Failed {
                    v.state = VertexState::Error { secs };
                    v.error = e.detail.clone();
                } else {
                    v.state = VertexState::Done { secs };
                }
            }
        }
    }

    fn vertex_lines(v: &Vertex, now: Instant, width: usize, color: bool) -> Vec<String> {
        let (prefix, secs) = match &v.state {
            VertexState::Running { since } => ("", Some(now.saturating_duration_since(*since).as_secs_f64())),
            VertexState::Cached => ("CACHED ", None),
            VertexState::Done { secs } => ("", Some(*secs)),
            VertexState::Error { secs } => ("ERROR ", Some(*secs)),
        };
        let timer = secs.map(|s| format!("{s:.1}s")).unwrap_or_default();
        let head = format!(" => {prefix}{}", v.name);
        let room = width.saturating_sub(timer.len() + 1);
        let head = fit(&head, room);
        let pad = width.saturating_sub(head.chars().count() + timer.len());
        let mut line = format!("{head}{}{timer}", " ".repeat(pad));
        if color {
            line = match &v.state {
                VertexState::Running { .. } => format!("\x1b[34m{line}\x1b[0m"),
                VertexState::Error { .. } => format!("\x1b[31m{line}\x1b[0m"),
                VertexState::Cached | VertexState::Done { .. } => line,
            };
        }
        let mut out = vec![line];
        for r in &v.reasons {
            out.push(fit(&format!(" => => cache miss: {r}"), width));
        }
        let show_tail = matches!(v.state, VertexState::Running { .. } | VertexState::Error { .. });
        if show_tail {
            let mut tail: Vec<&str> = v.tail.iter().map(String::as_str).collect();
            if !v.partial.trim().is_empty() {
                tail.push(v.partial.trim_end());
            }
            let skip = tail.len().saturating_sub(LOG_TAIL);
            for l in &tail[skip..] {
                let l = fit(&format!(" => => # {l}"), width);
                out.push(if color { format!("\x1b[2m{l}\x1b[0m") } else { l });
            }
        }
        out
    }

    /// The live area: a header with the elapsed time and finished/seen counts, then every
    /// vertex not yet frozen: its state, its time (a running timer while it runs) and,
    /// while it runs or after it failed, the tail of its output. Lines fit `width`.
    pub fn render(&self, now: Instant, width: usize, color: bool) -> Vec<String> {
        let done = self.vertices.iter().filter(|v| !matches!(v.state, VertexState::Running { .. })).count();
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        let status = if self.finished { " FINISHED" } else { "" };
        let mut lines = vec![fit(&format!("[+] Building {elapsed:.1}s ({done}/{}){status}", self.vertices.len()), width)];
        for v in &self.vertices[self.frozen..] {
            lines.extend(Self::vertex_lines(v, now, width, color));
        }
        lines
    }

    /// Freezes the longest finished prefix of vertices that would push the live area past
    /// `height` lines, returning their lines to print once above it.
    fn freeze(&mut self, now: Instant, width: usize, height: usize, color: bool) -> Vec<String> {
        let mut out = Vec::new();
        while self.frozen < self.vertices.len()
            && !matches!(self.vertices[self.frozen].state, VertexState::Running { .. })
            && self.render(now, width, color).len() > height
        {
            out.extend(Self::vertex_lines(&self.vertices[self.frozen], now, width, color));
            self.frozen += 1;
        }
        out
    }
}

/// Cuts a line to `width` characters (by chars: a byte cut could split UTF-8).
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn terminal_size() -> (usize, usize) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 { (ws.ws_col as usize, ws.ws_row as usize) } else { (80, 24) }
}

/// The live display: redrawn ten times a second from a ticker thread, and once more,
/// finished, when dropped.
pub struct Tty {
    state: std::sync::Arc<Mutex<TtyState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

fn draw(st: &mut TtyState) {
    let (width, height) = terminal_size();
    let color = std::env::var_os("NO_COLOR").is_none();
    let now = Instant::now();
    let mut frame = String::new();
    if st.drawn > 0 {
        // Back to the top of the last live area, and clear it.
        frame.push_str(&format!("\x1b[{}F\x1b[J", st.drawn));
    }
    // The last frame is never redrawn, so it may be as tall as it likes.
    if !st.finished {
        for l in st.freeze(now, width, height.saturating_sub(1).max(4), color) {
            frame.push_str(&l);
            frame.push('\n');
        }
    }
    let live = st.render(now, width, color);
    for l in &live {
        frame.push_str(l);
        frame.push('\n');
    }
    st.drawn = live.len();
    let _ = std::io::stderr().lock().write_all(frame.as_bytes());
}

impl Tty {
    fn new(explain: bool) -> Tty {
        let state = std::sync::Arc::new(Mutex::new(TtyState::new(Instant::now(), explain)));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let ticker = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut g) = s.lock() {
                    draw(&mut g);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Tty { state, stop, ticker: Some(ticker) }
    }
}

impl ProgressSink for Tty {
    fn event(&self, e: Event) {
        if let Ok(mut st) = self.state.lock() {
            st.apply(&e, Instant::now());
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Ok(mut st) = self.state.lock() {
            st.finished = true;
            draw(&mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(kind: EventKind, id: &str, name: &str) -> Event {
        Event::new(kind, id, name)
    }

    #[test]
    fn tty_shows_states_timers_parallel_steps_and_log_tails() {
        let t0 = Instant::now();
        let mut st = TtyState::new(t0, false);
        st.apply(&ev(EventKind::Cached, "a", "[2/5] COPY f /f"), t0);
        st.apply(&ev(EventKind::Started, "b", "[3/5] RUN make"), t0);
        st.apply(&ev(EventKind::Started, "c", "[stage-1 2/2] RUN test"), t0 + Duration::from_millis(500));
        for i in 0..9 {
            let mut l = ev(EventKind::Log, "b", "[3/5] RUN make");
            l.detail = format!("line {i}\n");
            st.apply(&l, t0);
        }
        let mut part = ev(EventKind::Log, "b", "[3/5] RUN make");
        part.detail = "partial".into();
        st.apply(&part, t0);
        let lines = st.render(t0 + Duration::from_millis(2300), 60, false);
        assert_eq!(lines[0], "[+] Building 2.3s (1/3)");
        assert_eq!(lines[1], format!(" => CACHED [2/5] COPY f /f{}", " ".repeat(60 - 26)));
        assert!(lines[2].starts_with(" => [3/5] RUN make") && lines[2].ends_with("2.3s"), "{lines:?}");
        assert_eq!(lines[2].chars().count(), 60);
        // The tail: the last six lines, the partial one included.
        let tail: Vec<&String> = lines.iter().filter(|l| l.starts_with(" => => # ")).collect();
        assert_eq!(tail.len(), LOG_TAIL);
        assert_eq!(tail.first().unwrap().as_str(), " => => # line 4");
        assert_eq!(tail.last().unwrap().as_str(), " => => # partial");
        // The parallel step shows, with its own timer.
        assert!(lines.iter().any(|l| l.starts_with(" => [stage-1 2/2] RUN test") && l.ends_with("1.8s")), "{lines:?}");

        let mut done = ev(EventKind::Completed, "b", "[3/5] RUN make");
        done.duration_ms = Some(3140.0);
        st.apply(&done, t0 + Duration::from_secs(3));
        let mut failed = ev(EventKind::Failed, "c", "[stage-1 2/2] RUN test");
        failed.detail = "exit code 1".into();
        let mut out = ev(EventKind::Log, "c", "");
        out.detail = "test: no such file\n".into();
        st.apply(&out, t0);
        st.apply(&failed, t0 + Duration::from_secs(4));
        let lines = st.render(t0 + Duration::from_secs(5), 60, false);
        assert_eq!(lines[0], "[+] Building 5.0s (3/3)");
        assert!(lines[2].starts_with(" => [3/5] RUN make") && lines[2].ends_with("3.1s"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("line 8")), "a finished step's output is folded away");
        assert!(lines[3].starts_with(" => ERROR [stage-1 2/2] RUN test") && lines[3].ends_with("3.5s"), "{lines:?}");
        assert_eq!(lines[4], " => => # test: no such file", "a failed step keeps its output");
        // Long names are cut to the width, never wrapped.
        st.apply(&ev(EventKind::Started, "d", &"x".repeat(200)), t0);
        assert!(st.render(t0, 60, false).iter().all(|l| l.chars().count() <= 60));
    }

    #[test]
    fn finished_vertices_freeze_when_the_live_area_outgrows_the_terminal() {
        let t0 = Instant::now();
        let mut st = TtyState::new(t0, false);
        for i in 0..30 {
            st.apply(&ev(EventKind::Cached, &format!("v{i}"), &format!("[{i}/31] RUN step {i}")), t0);
        }
        st.apply(&ev(EventKind::Started, "last", "[31/31] RUN last"), t0);
        let frozen = st.freeze(t0, 80, 10, false);
        assert_eq!(frozen.len(), 30 - 8, "live area: header, 8 finished, the running one");
        assert_eq!(st.render(t0, 80, false).len(), 10);
        assert!(st.render(t0, 80, false)[1].contains("step 22"));
    }
}
