//! The ops, one module per kind, as BuildKit's `llbsolver/ops/`: each says what its cache
//! key covers beyond its encoding and its inputs' keys, what it holds while it runs, and
//! how it runs. The scheduler (`scheduler.rs`) and the step bookkeeping (`solve.rs`) know
//! none of them; a new kind of source is a new module and one arm in [`for_node`].

mod exec;
mod file;
mod git;
mod http;
mod image;
mod local;

use crate::SolveError;
use crate::explain::KeyInfo;
use crate::request::SolveRequest;
use crate::slots::{Slot, Slots};
use crate::statcache::FileHashCache;
use rdock_llb::patterns::PatternMatcher;
use rdock_llb::{Node, Op, OpMetadata, Source};
use rdock_oci::{BlobSource, ImageStore};
use rdock_snapshotter::SnapshotName;
use rdock_worker::{FileInput, Worker, WorkerError};
use std::collections::HashMap;
use std::path::PathBuf;

/// A vertex's result.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// A committed snapshot; None is the empty filesystem (scratch).
    Snapshot(Option<SnapshotName>),
    /// A directory of the caller's, with what must never be read from it.
    Local { dir: PathBuf, excludes: Vec<String> },
}

impl Output {
    /// The form the worker takes its inputs in.
    pub(crate) fn file_input(&self) -> FileInput {
        match self {
            Output::Snapshot(s) => FileInput::Snapshot(s.as_ref().map(|s| s.to_string())),
            Output::Local { dir, excludes } => FileInput::Local { dir: dir.clone(), excludes: excludes.clone() },
        }
    }
}

/// What every op may use: the solver's parts and the request being solved.
pub(crate) struct Env<'a> {
    pub worker: &'a Worker,
    pub images: &'a ImageStore,
    /// Where base-image layers the store lacks come from.
    pub layers: Option<&'a (dyn BlobSource + 'static)>,
    pub req: &'a SolveRequest<'a>,
}

/// A build-context directory as a local source shows it to the ops that read it: their
/// keys cover the content of exactly what they read.
pub(crate) struct LocalContent {
    pub dir: PathBuf,
    pub excludes: PatternMatcher,
}

/// One stat cache per context directory, shared by every local source of a build.
pub(crate) type FileCaches = HashMap<PathBuf, FileHashCache>;

/// Computing one vertex's cache key.
pub(crate) struct KeyCx<'a> {
    pub env: &'a Env<'a>,
    /// Already holds the version tag, the op's encoding and its inputs' keys.
    pub hasher: &'a mut blake3::Hasher,
    /// What the key is made of, for explaining a miss.
    pub info: &'a mut KeyInfo,
    /// For each input, the context it shows if it is a local source.
    pub inputs: Vec<Option<&'a LocalContent>>,
    pub file_caches: &'a mut FileCaches,
}

/// Input `ix`'s context, with its stat cache, if it is a local source. (A function of the
/// two fields rather than a method, so the hasher stays free to borrow beside it.)
pub(crate) fn local_input<'c>(
    inputs: &[Option<&'c LocalContent>],
    file_caches: &'c FileCaches,
    ix: usize,
) -> Option<(&'c LocalContent, &'c FileHashCache)> {
    let local = inputs.get(ix).copied().flatten()?;
    Some((local, file_caches.get(&local.dir)?))
}

/// Running one vertex.
pub(crate) struct ExecCx<'a> {
    pub env: &'a Env<'a>,
    pub meta: &'a OpMetadata,
    /// For a step: the snapshot to commit its result as.
    pub snapshot: &'a str,
}

/// Why an op failed.
#[derive(Debug)]
pub(crate) enum OpError {
    /// The solver's own trouble, or a source that could not be fetched.
    Solve(SolveError),
    /// The step's work failed (a non-zero exit, a missing file): reported with its output.
    Worker(WorkerError),
}

impl<E: Into<SolveError>> From<E> for OpError {
    fn from(e: E) -> OpError {
        OpError::Solve(e.into())
    }
}

/// One kind of op, as the solver sees it: BuildKit's `solver.Op` (`CacheMap`, `Acquire`,
/// `Exec`). Sources (image, local, git, http) are recomputed on every build, cheaply or
/// from their own content caches; steps (exec, file) are filed in the cache by key, looked
/// up top-down, and commit a snapshot.
pub(crate) trait SolverOp: Send + Sync {
    /// Whether [`SolverOp::resolve`] does network I/O (all such ops resolve at once).
    fn is_remote(&self) -> bool {
        false
    }
    /// Resolves what the key depends on and only the network knows (a git ref's commit, a
    /// download's content), before any key is computed.
    fn resolve(&self, _env: &Env<'_>) -> Result<(), SolveError> {
        Ok(())
    }
    /// What of the op itself its key is made of: by default its whole LLB encoding.
    fn key_bytes(&self, _env: &Env<'_>, node: &Node) -> Vec<u8> {
        serde_json::to_vec(&node.op).unwrap_or_default()
    }
    /// Adds to the key what the op's encoding does not say: the content it reads. A local
    /// source returns the context it shows to the ops above it.
    fn cache_map(&self, cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError>;
    /// Whether the result is a step: cached by key and committed as `cx.snapshot`.
    fn is_step(&self) -> bool {
        false
    }
    /// What the op holds while it runs: a step takes one of the parallelism limit's slots.
    fn acquire<'s>(&self, slots: &'s Slots) -> Option<Slot<'s>> {
        self.is_step().then(|| slots.acquire())
    }
    /// Runs the op on its inputs' results, passing its output (if any) to `log`.
    fn exec(&self, cx: &ExecCx<'_>, inputs: &[Output], log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError>;
    /// What to add to a failed step's error, given its last output lines.
    fn failure_note(&self, _err: &WorkerError, _tail: &[String], _meta: &OpMetadata) -> Option<String> {
        None
    }
}

/// The op for a node: its source identifier parsed once, here, into the module that
/// handles its scheme.
pub(crate) fn for_node(node: &Node) -> Result<Box<dyn SolverOp + '_>, SolveError> {
    Ok(match &node.op {
        Op::Source(src) => match src.source()? {
            Source::Image(reference) => Box::new(image::ImageOp::new(reference)),
            Source::Local(name) => Box::new(local::LocalOp::new(src, name)?),
            Source::Git(r) => Box::new(git::GitOp::new(src, r)),
            Source::Http(url) => Box::new(http::HttpOp::new(src, url)),
        },
        Op::Exec(e) => Box::new(exec::ExecStep::new(e, node)),
        Op::File(f) => Box::new(file::FileStep::new(f, node)),
        Op::Merge(_) | Op::Diff(_) => Box::new(Unsupported(node.op.kind())),
    })
}

/// Merge and diff ops: keyed like any op, an error if a build needs them.
struct Unsupported(&'static str);

impl SolverOp for Unsupported {
    fn cache_map(&self, _cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        Ok(None)
    }
    fn exec(&self, _cx: &ExecCx<'_>, _inputs: &[Output], _log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        Err(OpError::Solve(SolveError::Definition(format!("{} ops are not supported yet", self.0))))
    }
}
