//! A solve from start to end: the definition's ops ([`crate::ops`]), their remote sources
//! resolved at once, every key computed bottom-up, then the scheduler's walk
//! ([`crate::scheduler`]) over the step bookkeeping of [`crate::run`].

use crate::SolveError;
use crate::cache::CacheStore;
use crate::explain::KeyInfo;
use crate::key::CacheKey;
use crate::ops::{Env, FileCaches, KeyCx, LocalContent, Output, SolverOp};
use crate::progress::{Event, EventKind};
use crate::request::{SolveOutput, SolveRequest};
use crate::run::Run;
use rdock_llb::{Node, Op, OpDigest};
use rdock_oci::{BlobSource, ImageStore};
use rdock_snapshotter::SnapshotName;
use rdock_worker::Worker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// The solver over a worker and an image store.
#[derive(Clone)]
pub struct Solver {
    pub(crate) worker: Worker,
    images: ImageStore,
    pub(crate) cache: CacheStore,
    /// Where base-image layers the store lacks come from (the registry they were resolved
    /// on); None: they must be in the store.
    layers: Option<Arc<dyn BlobSource + 'static>>,
}

impl Solver {
    /// A solver running ops on `worker`, resolving images from `images`.
    pub fn new(worker: Worker, images: ImageStore) -> Result<Solver, SolveError> {
        let cache = CacheStore::new(worker.store().clone())?;
        Ok(Solver { worker, images, cache, layers: None })
    }

    /// Fetches base-image layers the store lacks from `source` when a step needs them
    /// (images resolved on a registry are pulled lazily: a build that hits the cache
    /// never downloads them).
    pub fn with_layer_source(mut self, source: Arc<dyn BlobSource + 'static>) -> Solver {
        self.layers = Some(source);
        self
    }

    /// The cache records.
    pub fn cache(&self) -> &CacheStore {
        &self.cache
    }

    /// Solves the definition's terminal output.
    pub fn solve(&self, req: &SolveRequest<'_>) -> Result<SolveOutput, SolveError> {
        let def = req.definition;
        def.validate()?;
        let run = self.prepare(req)?;
        let steps: Vec<CacheKey> = (0..run.nodes.len()).filter(|&v| run.ops[v].is_step()).map(|v| run.keys[v].clone()).collect();
        let cache_mounts = cache_mounts(&run.nodes);
        let Some(terminal) = &def.terminal else {
            return Ok(SolveOutput { top: None, executed: 0, cached: 0, keys: steps, cache_mounts });
        };
        let t = run
            .digests
            .iter()
            .position(|d| *d == terminal.digest)
            .ok_or_else(|| SolveError::Definition("terminal is not in the definition".into()))?;
        let out = if req.eager_layers { self.solve_making_layers(&run, t) } else { crate::scheduler::solve(&run, t) };
        // Recorded whether or not the build succeeded: the steps that completed are cached,
        // and the next build's misses are explained against this one.
        if let Some(ex) = &run.explainer {
            let recorded: Vec<(KeyInfo, String)> =
                (0..run.nodes.len()).filter(|&v| run.ops[v].is_step()).map(|v| (run.infos[v].clone(), run.keys[v].to_string())).collect();
            ex.record(&recorded)?;
        }
        let (executed, cached) = (run.executed.load(Ordering::Relaxed), run.cached.load(Ordering::Relaxed));
        let top = match out {
            Ok(Output::Snapshot(s)) => s,
            Ok(Output::Local { .. }) => return Err(SolveError::Definition("a local source cannot be the build result".into())),
            Err(e) => return Err(Arc::try_unwrap(e).unwrap_or_else(|a| SolveError::Definition(a.to_string()))),
        };
        Ok(SolveOutput { top, executed, cached, keys: steps, cache_mounts })
    }

    /// The scheduler's walk while committed steps have their layer blob made, each on a
    /// thread of its own, joined before this returns. A failure to make one is found
    /// again, and reported, by whoever needs the layer.
    fn solve_making_layers(&self, run: &Run<'_>, t: usize) -> Result<Output, Arc<SolveError>> {
        let (tx, rx) = mpsc::channel::<SnapshotName>();
        *run.eager.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let store = self.worker.store();
        std::thread::scope(|s| {
            s.spawn(move || {
                for name in rx {
                    s.spawn(move || {
                        let started = std::time::Instant::now();
                        let made = store.layers().layer(&name);
                        tracing::debug!(snapshot = %name, ok = made.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "layer blob made");
                    });
                }
            });
            let out = crate::scheduler::solve(run, t);
            // Closes the channel: the receiving thread ends once every layer is under way.
            run.eager.lock().unwrap_or_else(|p| p.into_inner()).take();
            out
        })
    }

    /// The solve's ops, with their remote sources resolved and every key computed.
    fn prepare<'a>(&'a self, req: &'a SolveRequest<'a>) -> Result<Run<'a>, SolveError> {
        let def = req.definition;
        let nodes: Vec<&Node> = def.nodes.iter().collect();
        let digests: Vec<OpDigest> = nodes.iter().map(|n| n.digest()).collect();
        let index: HashMap<&OpDigest, usize> = digests.iter().enumerate().map(|(i, d)| (d, i)).collect();
        let inputs: Vec<Vec<usize>> = nodes.iter().map(|n| n.inputs.iter().map(|inp| index[&inp.digest]).collect()).collect();
        let ops = nodes.iter().map(|n| crate::ops::for_node(n)).collect::<Result<Vec<_>, _>>()?;
        let env = Env { worker: &self.worker, images: &self.images, layers: self.layers.as_deref(), req };
        resolve_remote_sources(&env, &ops)?;
        let started = std::time::Instant::now();
        let (keys, infos) = cache_keys(&env, &nodes, &digests, &inputs, &ops)?;
        tracing::debug!(nodes = keys.len(), elapsed_ms = started.elapsed().as_millis() as u64, "cache keys computed");
        let n = nodes.len();
        Ok(Run {
            explainer: req.target.map(|t| crate::explain::Explainer::load(self.worker.store(), t)).transpose()?,
            env,
            cache: &self.cache,
            nodes,
            digests,
            ops,
            inputs,
            keys,
            infos,
            slots: crate::slots::Slots::new(req.max_parallelism),
            settled: (0..n).map(|_| AtomicBool::new(false)).collect(),
            reported: (0..n).map(|_| AtomicBool::new(false)).collect(),
            executed: Default::default(),
            cached: Default::default(),
            eager: Mutex::new(None),
        })
    }
}

/// Resolves every remote source (a git ref's commit, a download) at once: each is network
/// I/O, and none depends on another (sources have no inputs).
fn resolve_remote_sources(env: &Env<'_>, ops: &[Box<dyn SolverOp + '_>]) -> Result<(), SolveError> {
    let remote: Vec<&dyn SolverOp> = ops.iter().filter(|o| o.is_remote()).map(|o| o.as_ref()).collect();
    let results: Vec<Result<(), SolveError>> = std::thread::scope(|s| {
        let handles: Vec<_> = remote.iter().map(|op| s.spawn(move || op.resolve(env))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    results.into_iter().collect()
}

/// Every node's cache key, and what it was made of (for explaining misses), in
/// topological order: the version tag, the op's canonical encoding and its inputs' keys,
/// then what the op itself adds (see [`SolverOp::cache_map`]).
fn cache_keys(
    env: &Env<'_>,
    nodes: &[&Node],
    digests: &[OpDigest],
    inputs: &[Vec<usize>],
    ops: &[Box<dyn SolverOp + '_>],
) -> Result<(Vec<CacheKey>, Vec<KeyInfo>), SolveError> {
    let mut keys: Vec<CacheKey> = Vec::with_capacity(nodes.len());
    let mut infos: Vec<KeyInfo> = Vec::with_capacity(nodes.len());
    let mut locals: Vec<Option<LocalContent>> = Vec::with_capacity(nodes.len());
    let mut file_caches = FileCaches::new();
    for (v, node) in nodes.iter().enumerate() {
        let mut info = key_info(env, node, &digests[v]);
        for &j in &inputs[v] {
            let name = match &nodes[j].op {
                Op::Source(src) => src.identifier.clone(),
                _ => infos[j].name.clone(),
            };
            info.inputs.push((name, keys[j].to_string()));
        }
        let mut h = CacheKey::hasher();
        h.update(&ops[v].key_bytes(env, node));
        for (&j, input) in inputs[v].iter().zip(&node.inputs) {
            h.update(keys[j].as_str().as_bytes());
            h.update(&input.index.to_le_bytes());
        }
        let mut cx = KeyCx {
            env,
            hasher: &mut h,
            info: &mut info,
            inputs: inputs[v].iter().map(|&j| locals[j].as_ref()).collect(),
            file_caches: &mut file_caches,
        };
        let local = ops[v].cache_map(&mut cx).map_err(|e| match env.req.definition.metadata.get(&digests[v]) {
            Some(meta) => e.in_step(&meta.description, meta),
            None => e,
        })?;
        locals.push(local);
        keys.push(CacheKey::finish(&h));
        infos.push(info);
    }
    for (dir, files) in &file_caches {
        files.persist()?;
        let mut e = Event::new(EventKind::ContextHashed, "context", &format!("[internal] hash {}", dir.display()));
        e.hash_stats = Some(files.stats());
        env.req.progress.event(e);
    }
    Ok((keys, infos))
}

/// A node's name as the explanation of a miss shows it.
fn key_info(env: &Env<'_>, node: &Node, digest: &OpDigest) -> KeyInfo {
    match env.req.definition.metadata.get(digest) {
        Some(m) if !m.description.is_empty() => KeyInfo::new(&m.description),
        _ => KeyInfo::new(&node.op.summary()),
    }
}

/// The ids of the cache mounts the definition's steps use, each once.
fn cache_mounts(nodes: &[&Node]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for n in nodes {
        let Op::Exec(e) = &n.op else { continue };
        for m in &e.mounts {
            if let rdock_llb::MountKind::Cache { id, mode, uid, gid, .. } = &m.kind {
                let key = rdock_worker::cachemount::key(id, *mode, *uid, *gid);
                if !ids.contains(&key) {
                    ids.push(key);
                }
            }
        }
    }
    ids
}
