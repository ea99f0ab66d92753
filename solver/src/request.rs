//! What a solve is asked for and what it gives back: the types the ops, the scheduler's
//! graph and callers share, in a module of their own so that none of them imports another
//! for them.

use crate::key::CacheKey;
use crate::progress::ProgressSink;
use rdock_llb::Definition;
use rdock_snapshotter::SnapshotName;
use std::collections::HashMap;
use std::path::PathBuf;

/// What to solve.
pub struct SolveRequest<'a> {
    /// The graph.
    pub definition: &'a Definition,
    /// Local sources by name (`context`) → directory.
    pub locals: &'a HashMap<String, PathBuf>,
    /// Where events go.
    pub progress: &'a dyn ProgressSink,
    /// Secrets and forwarded SSH agents, for `RUN --mount=type=secret|ssh`. They are
    /// handed to the worker only: never part of the graph, a cache key or an event.
    pub secrets: &'a rdock_worker::Secrets,
    /// The build's identity (context, Dockerfile, stage, platform) for explaining cache
    /// misses against the last build of the same target; None records nothing.
    pub target: Option<&'a str>,
    /// Imported cache exports (`--import-cache`): looked up after the local cache; their
    /// blobs are fetched only for the hits the build needs.
    pub imports: &'a [crate::remote::ImportedCache],
    /// How many steps may run their op at once (`--max-parallelism`; see
    /// [`crate::default_parallelism`]).
    pub max_parallelism: std::num::NonZeroUsize,
    /// Make each executed step's layer blob (tar diff, digests, compression) as soon as the
    /// step commits, on a thread of its own while later steps run, rather than all at the
    /// end when an image is committed. For builds whose outputs need layers (an image, a
    /// cache export); the solve returns once every such blob is made.
    pub eager_layers: bool,
}

/// The result of a solve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolveOutput {
    /// The committed snapshot of the terminal output (None: empty/scratch).
    pub top: Option<SnapshotName>,
    /// How many vertices ran.
    pub executed: usize,
    /// How many came from the cache.
    pub cached: usize,
    /// The cache key of every step (exec and file op), in topological order: what a cache
    /// export looks up.
    pub keys: Vec<CacheKey>,
    /// The ids of the build's `RUN --mount=type=cache` mounts.
    pub cache_mounts: Vec<String>,
}
