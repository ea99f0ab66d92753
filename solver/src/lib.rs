//! The solver: takes an LLB definition, computes every vertex's cache key bottom-up, reuses
//! cached results from the persistent store, and runs what misses through the worker,
//! independent branches in parallel and each distinct vertex at most once.
//!
//! Architecture invariant: the solver decides what runs; the worker runs it; `oci` turns
//! snapshots into images. Cache keys are blake3 over the op's definition and its inputs'
//! keys (and, for build-context files, their content): they never leave the machine.
//!
//! ```no_run
//! use rdock_solver::{Solver, SolveRequest, NoProgress};
//! # fn demo(solver: &Solver, def: &rdock_llb::Definition) {
//! let locals = std::collections::HashMap::from([("context".to_string(), std::path::PathBuf::from("."))]);
//! let secrets = rdock_worker::Secrets::default();
//! let out = solver.solve(&SolveRequest { definition: def, locals: &locals, progress: &NoProgress, secrets: &secrets, target: None, imports: &[], max_parallelism: rdock_solver::default_parallelism(), eager_layers: false }).unwrap();
//! println!("result snapshot: {:?}", out.top);
//! # }
//! ```

mod cache;
mod contenthash;
mod explain;
mod export;
pub mod gc;
mod hints;
mod key;
mod ops;
mod progress;
pub mod remote;
mod request;
mod run;
mod scheduler;
mod slots;
mod solve;
mod statcache;

pub use cache::CacheStore;
pub use explain::KeyInfo;
pub use key::CacheKey;
pub use progress::{Event, EventKind, NoProgress, ProgressSink, RecordingProgress};
pub use request::{SolveOutput, SolveRequest};
pub use slots::default_parallelism;
pub use solve::Solver;
pub use statcache::{HashStats, RACY_WINDOW_NS};

/// Why a solve failed.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// A step failed; carries what a user needs to find and fix it.
    #[error("{}", render_step(.name, .lines, .error, .output))]
    Step {
        /// The vertex's name (`[2/3] RUN make`).
        name: String,
        /// Dockerfile lines it came from.
        lines: Option<(usize, usize)>,
        /// The worker's error.
        error: String,
        /// The last lines of its output.
        output: Vec<String>,
    },
    /// A COPY/ADD source is missing from what it copies from.
    #[error("{}failed to compute cache key: \"/{}\": not found in {}", step.as_ref().map(|s| format!("{s}: ")).unwrap_or_default(), path.trim_start_matches('/'), from.as_deref().unwrap_or("the build context"))]
    SourceNotFound {
        /// The path, as the step names it.
        path: String,
        /// What it copies from (`stage build`, `image alpine`); None: the build context.
        from: Option<String>,
        /// The step (`[2/3] COPY nope /x`), once known.
        step: Option<String>,
        /// Dockerfile lines of the step.
        lines: Option<(usize, usize)>,
    },
    /// The build context could not be read.
    #[error("build context: {0}")]
    Context(String),
    /// A build-context file could not be read.
    #[error("build context: {0}")]
    ContextRead(#[source] std::io::Error),
    /// A path in the build context could not be resolved or expanded.
    #[error("build context: {0}")]
    ContextPath(#[source] rdock_worker::WorkerError),
    /// An exclude pattern does not compile.
    #[error(transparent)]
    Pattern(#[from] rdock_llb::patterns::PatternError),
    /// A document could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A source (a git repository, a download) or a cache mount's contents could not be
    /// fetched or unpacked.
    #[error("{what}: {source}")]
    Source {
        /// Which source.
        what: String,
        /// Why.
        #[source]
        source: rdock_worker::WorkerError,
    },
    /// A base image is not available.
    #[error(transparent)]
    Image(#[from] rdock_oci::OciError),
    /// Store trouble.
    #[error(transparent)]
    Snapshot(#[from] rdock_snapshotter::SnapshotError),
    /// Database trouble.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The definition is malformed or uses what is not supported yet.
    #[error("invalid definition: {0}")]
    Definition(String),
    /// The definition does not read back.
    #[error("invalid definition: {0}")]
    Llb(#[from] rdock_llb::DefinitionError),
}

impl SolveError {
    /// A source missing at `path`, before the step is known.
    pub(crate) fn source_not_found(path: impl Into<String>) -> SolveError {
        SolveError::SourceNotFound { path: path.into(), from: None, step: None, lines: None }
    }

    /// The Dockerfile lines the failed step came from, if known.
    pub fn lines(&self) -> Option<(usize, usize)> {
        match self {
            SolveError::Step { lines, .. } | SolveError::SourceNotFound { lines, .. } => *lines,
            _ => None,
        }
    }

    /// The error with the step it happened in (name, lines, what it copies from).
    pub(crate) fn in_step(self, name: &str, meta: &rdock_llb::OpMetadata) -> SolveError {
        match self {
            SolveError::SourceNotFound { path, from, step: None, .. } => SolveError::SourceNotFound {
                path,
                from: from.or_else(|| meta.copy_from.clone()),
                step: Some(name.to_string()),
                lines: meta.source_lines,
            },
            other => other,
        }
    }
}

fn render_step(name: &str, lines: &Option<(usize, usize)>, error: &str, output: &[String]) -> String {
    let mut s = format!("{name}: {error}");
    if let Some((a, b)) = lines {
        if a == b {
            s.push_str(&format!("\n  (Dockerfile line {a})"));
        } else {
            s.push_str(&format!("\n  (Dockerfile lines {a}-{b})"));
        }
    }
    if !output.is_empty() {
        s.push_str("\n  last output:");
        for l in output {
            s.push_str("\n  > ");
            s.push_str(l);
        }
    }
    s
}
