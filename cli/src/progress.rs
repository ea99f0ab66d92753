//! Progress renderers: `tty` (live, BuildKit-like, with indicatif), `plain` (one line per
//! event, for CI logs), `rawjson` (one JSON object per line) and `quiet`. All write to stderr.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    let inner = base_sink(mode);
    // rawjson carries the reasons as events already.
    if explain && mode != Mode::RawJson { Box::new(Explain { inner }) } else { inner }
}

fn base_sink(mode: Mode) -> Box<dyn ProgressSink> {
    match mode {
        Mode::Auto if std::io::stderr().is_terminal() => Box::new(Tty::new()),
        Mode::Auto | Mode::Plain => Box::new(Plain::default()),
        Mode::Tty => Box::new(Tty::new()),
        Mode::RawJson => Box::new(RawJson),
        Mode::Quiet => Box::new(rdock_solver::NoProgress),
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

/// Live bars: a spinner per running step, a line per finished one.
pub struct Tty {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, (ProgressBar, Instant)>>,
}

impl Tty {
    fn new() -> Tty {
        Tty { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), bars: Mutex::new(HashMap::new()) }
    }
}

impl ProgressSink for Tty {
    fn event(&self, e: Event) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let style = ProgressStyle::with_template(" {spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner());
        match e.kind {
            EventKind::Started => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(style);
                pb.set_message(e.name.clone());
                pb.enable_steady_tick(std::time::Duration::from_millis(100));
                bars.insert(e.vertex, (pb, Instant::now()));
            }
            EventKind::Cached => {
                let _ = self.multi.println(format!(" => CACHED {}", e.name));
            }
            EventKind::Log => {
                if let Some((pb, _)) = bars.get(&e.vertex)
                    && let Some(last) = e.detail.lines().last()
                {
                    pb.set_message(format!("{}  {}", e.name, last.chars().take(60).collect::<String>()));
                }
            }
            EventKind::ContextHashed | EventKind::CacheMiss => {}
            EventKind::Completed | EventKind::Failed => {
                if let Some((pb, t)) = bars.remove(&e.vertex) {
                    pb.finish_and_clear();
                    let verdict = if e.kind == EventKind::Failed { "ERROR" } else { "=>" };
                    let _ = self.multi.println(format!(" {verdict} {} {:.1}s", e.name, t.elapsed().as_secs_f64()));
                }
            }
        }
    }
}
