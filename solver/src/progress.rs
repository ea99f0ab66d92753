//! Progress events: what the solver reports as vertices start, hit the cache, log,
//! complete or fail. Renderers (tty, plain, rawjson) live in the CLI.

use serde::Serialize;
use std::time::SystemTime;

/// What happened to a vertex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Execution began.
    Started,
    /// A cache record was used; nothing ran.
    Cached,
    /// Execution finished.
    Completed,
    /// Execution failed.
    Failed,
    /// Output from the step.
    Log,
    /// A build-context directory was hashed for cache keys; `hash_stats` says how much
    /// was read and how much the stat cache saved.
    #[serde(rename = "context-hashed")]
    ContextHashed,
    /// A step missed the cache and will run; `reasons` says why, against the last build of
    /// the same target.
    #[serde(rename = "cache-miss")]
    CacheMiss,
}

/// One progress event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The vertex's op digest.
    pub vertex: String,
    /// Its human name (`[2/3] RUN make`).
    pub name: String,
    /// When, as Unix time in nanoseconds.
    pub time_ns: u128,
    /// Log bytes (Log), error text (Failed), or nothing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// For Completed: how long the vertex ran, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// For ContextHashed: files read and reused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_stats: Option<crate::HashStats>,
    /// For CacheMiss: why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Event {
    /// A new event stamped now.
    pub fn new(kind: EventKind, vertex: &str, name: &str) -> Event {
        let time_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Event {
            kind,
            vertex: vertex.to_string(),
            name: name.to_string(),
            time_ns,
            detail: String::new(),
            duration_ms: None,
            hash_stats: None,
            reasons: Vec::new(),
        }
    }
}

/// Receives events from solver threads.
pub trait ProgressSink: Send + Sync {
    /// Handles one event.
    fn event(&self, e: Event);
}

/// Discards everything.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _: Event) {}
}

/// Keeps every event, for tests and for summaries.
#[derive(Default)]
pub struct RecordingProgress {
    events: std::sync::Mutex<Vec<Event>>,
}

impl RecordingProgress {
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl ProgressSink for RecordingProgress {
    fn event(&self, e: Event) {
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }
}
