//! Scheduling: cache keys bottom-up, then a parallel walk where every vertex is solved
//! once (later callers wait on the first) and independent inputs run on their own threads.

use crate::SolveError;
use crate::cache::CacheStore;
use crate::contenthash::{hash_copy_sources, hash_mount_source};
use crate::progress::{Event, EventKind, ProgressSink};
use rdock_imagespec::ImageRef;
use rdock_llb::patterns::PatternMatcher;
use rdock_llb::{Definition, FileAction, Node, Op, OpDigest, Source};
use rdock_oci::{BlobSource, ImageStore, ensure_unpacked};
use rdock_worker::{FileInput, Worker};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

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
    pub top: Option<String>,
    /// How many vertices ran.
    pub executed: usize,
    /// How many came from the cache.
    pub cached: usize,
    /// The cache key of every step (exec and file op), in topological order: what a cache
    /// export looks up.
    pub keys: Vec<String>,
    /// The ids of the build's `RUN --mount=type=cache` mounts.
    pub cache_mounts: Vec<String>,
}

/// A vertex's result.
#[derive(Debug, Clone)]
enum Output {
    Snapshot(Option<String>),
    Local { dir: PathBuf, excludes: Vec<String> },
}

fn file_input(o: &Output) -> FileInput {
    match o {
        Output::Snapshot(s) => FileInput::Snapshot(s.clone()),
        Output::Local { dir, excludes } => FileInput::Local { dir: dir.clone(), excludes: excludes.clone() },
    }
}

/// The solver over a worker and an image store.
#[derive(Clone)]
pub struct Solver {
    worker: Worker,
    images: ImageStore,
    cache: CacheStore,
    /// Where base-image layers the store lacks come from (the registry they were resolved
    /// on); None: they must be in the store.
    layers: Option<Arc<dyn BlobSource + 'static>>,
}

/// Number of output lines kept for an error message.
const TAIL_LINES: usize = 12;

/// http sources fetched, by node index.
type FetchedSources = HashMap<usize, rdock_worker::http::Fetched>;
/// git sources and the commit each names now, by node index.
type ResolvedCommits = HashMap<usize, (rdock_llb::GitRef, String)>;

struct Run<'a> {
    req: &'a SolveRequest<'a>,
    /// The parallelism limit's slots.
    slots: crate::slots::Slots,
    nodes: Vec<&'a Node>,
    index: HashMap<OpDigest, usize>,
    keys: Vec<String>,
    /// http sources, fetched while computing keys (their key is their content).
    fetched: FetchedSources,
    /// git sources, resolved to a commit while computing keys.
    commits: ResolvedCommits,
    /// What each key was made of, for explaining misses.
    infos: Vec<crate::explain::KeyInfo>,
    explainer: Option<crate::explain::Explainer>,
    results: Vec<OnceLock<Result<Output, Arc<SolveError>>>>,
    /// Steps that must run: asked to ignore the cache, or below one that is. A cache hit
    /// above them cannot stand in for them.
    forced: Vec<bool>,
    /// Steps already reported as cached.
    reported: Vec<AtomicBool>,
    executed: std::sync::atomic::AtomicUsize,
    cached: std::sync::atomic::AtomicUsize,
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
        let nodes: Vec<&Node> = def.nodes.iter().collect();
        let index: HashMap<OpDigest, usize> = nodes.iter().enumerate().map(|(i, n)| (n.digest(), i)).collect();
        let mut run = Run {
            req,
            slots: crate::slots::Slots::new(req.max_parallelism),
            nodes,
            index,
            keys: Vec::new(),
            fetched: HashMap::new(),
            commits: HashMap::new(),
            infos: Vec::new(),
            explainer: req.target.map(|t| crate::explain::Explainer::load(self.worker.store(), t)).transpose()?,
            results: (0..def.nodes.len()).map(|_| OnceLock::new()).collect(),
            forced: Vec::new(),
            reported: (0..def.nodes.len()).map(|_| AtomicBool::new(false)).collect(),
            executed: Default::default(),
            cached: Default::default(),
        };
        let (fetched, commits) = self.resolve_remote_sources(&run)?;
        run.fetched = fetched;
        run.commits = commits;
        let started = std::time::Instant::now();
        let (keys, infos) = self.cache_keys(&run)?;
        tracing::debug!(
            nodes = keys.len(),
            remote_sources = run.fetched.len() + run.commits.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache keys computed"
        );
        run.keys = keys;
        run.infos = infos;
        run.forced = Vec::with_capacity(run.nodes.len());
        for node in &run.nodes {
            let own = def.metadata.get(&node.digest()).is_some_and(|m| m.ignore_cache);
            let below = node.inputs.iter().any(|inp| run.forced[run.index[&inp.digest]]);
            run.forced.push(own || below);
        }
        let steps: Vec<String> = run
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::Exec(_) | Op::File(_)))
            .map(|(i, _)| run.keys[i].clone())
            .collect();
        let mut cache_mounts: Vec<String> = Vec::new();
        for n in &run.nodes {
            if let Op::Exec(e) = &n.op {
                for m in &e.mounts {
                    if let rdock_llb::MountKind::Cache { id, mode, uid, gid, .. } = &m.kind {
                        let key = rdock_worker::cachemount::key(id, *mode, *uid, *gid);
                        if !cache_mounts.contains(&key) {
                            cache_mounts.push(key);
                        }
                    }
                }
            }
        }
        let Some(terminal) = &def.terminal else {
            return Ok(SolveOutput { top: None, executed: 0, cached: 0, keys: steps, cache_mounts });
        };
        let t = *run.index.get(&terminal.digest).ok_or_else(|| SolveError::Definition("terminal is not in the definition".into()))?;
        let out = std::thread::scope(|s| self.solve_node(s, &run, t));
        // Recorded whether or not the build succeeded: the steps that completed are cached,
        // and the next build's misses are explained against this one.
        if let Some(ex) = &run.explainer {
            let steps: Vec<(crate::explain::KeyInfo, String)> = run
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| matches!(n.op, Op::Exec(_) | Op::File(_)))
                .map(|(i, _)| (run.infos[i].clone(), run.keys[i].clone()))
                .collect();
            ex.record(&steps)?;
        }
        // Every vertex that failed holds a clone of the error; drop them so the caller
        // gets the typed error itself.
        let executed = run.executed.load(std::sync::atomic::Ordering::Relaxed);
        let cached = run.cached.load(std::sync::atomic::Ordering::Relaxed);
        run.results.clear();
        let top = match out {
            Ok(Output::Snapshot(s)) => s,
            Ok(Output::Local { .. }) => {
                return Err(SolveError::Definition("a local source cannot be the build result".into()));
            }
            Err(e) => {
                return Err(Arc::try_unwrap(e).unwrap_or_else(|a| SolveError::Definition(a.to_string())));
            }
        };
        Ok(SolveOutput { top, executed, cached, keys: steps, cache_mounts })
    }

    /// Resolves every git source to a commit and fetches every http source, all at once:
    /// each is network I/O, and none depends on another (sources have no inputs).
    fn resolve_remote_sources(&self, run: &Run<'_>) -> Result<(FetchedSources, ResolvedCommits), SolveError> {
        enum Got {
            Fetched(rdock_worker::http::Fetched),
            Commit(rdock_llb::GitRef, String),
        }
        let content = self.worker.store().content();
        let remote: Vec<(usize, &rdock_llb::SourceOp, Source<'_>)> = run
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Source(src) => src.source().ok().filter(|s| matches!(s, Source::Git(_) | Source::Http(_))).map(|s| (i, src, s)),
                _ => None,
            })
            .collect();
        let got: Vec<Result<(usize, Got), SolveError>> = std::thread::scope(|s| {
            let handles: Vec<_> = remote
                .into_iter()
                .map(|(i, src, source)| {
                    s.spawn(move || match source {
                        Source::Git(r) => {
                            let commit = rdock_worker::git::resolve_commit(&r)
                                .map_err(|source| SolveError::Source { what: format!("git {}", r.remote), source })?;
                            Ok((i, Got::Commit(r, commit)))
                        }
                        Source::Http(url) => rdock_worker::http::fetch(url, src.attr("http.checksum"), content)
                            .map(|f| (i, Got::Fetched(f)))
                            .map_err(|source| SolveError::Source { what: format!("downloading {url}"), source }),
                        _ => Err(SolveError::Definition("not a remote source".into())),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(SolveError::Definition("a fetch thread panicked".into()))))
                .collect()
        });
        let (mut fetched, mut commits) = (HashMap::new(), HashMap::new());
        for g in got {
            match g? {
                (i, Got::Fetched(f)) => drop(fetched.insert(i, f)),
                (i, Got::Commit(r, c)) => drop(commits.insert(i, (r, c))),
            }
        }
        Ok((fetched, commits))
    }

    /// Every node's cache key, and what it was made of (for explaining misses), in
    /// topological order: blake3 over a version tag, the op's canonical encoding, its
    /// inputs' keys and, for copies from a local source, the content of exactly what they
    /// copy.
    fn cache_keys(&self, run: &Run<'_>) -> Result<(Vec<String>, Vec<crate::explain::KeyInfo>), SolveError> {
        let mut keys: Vec<String> = Vec::with_capacity(run.nodes.len());
        let mut infos: Vec<crate::explain::KeyInfo> = Vec::with_capacity(run.nodes.len());
        let mut matchers: HashMap<usize, (PathBuf, PatternMatcher)> = HashMap::new();
        // One stat cache per local source directory.
        let mut file_caches: HashMap<PathBuf, crate::statcache::FileHashCache> = HashMap::new();
        for (i, node) in run.nodes.iter().enumerate() {
            let mut h = blake3::Hasher::new();
            h.update(b"rdock-cache-v1\0");
            let meta = run.req.definition.metadata.get(&node.digest());
            let mut info = crate::explain::KeyInfo::new(match meta {
                Some(m) if !m.description.is_empty() => &m.description,
                _ => "",
            });
            if info.name.is_empty() {
                info = crate::explain::KeyInfo::new(&node.op.summary());
            }
            if let Op::Exec(e) = &node.op {
                info.env = e.env.clone();
            }
            for input in &node.inputs {
                let j = run.index[&input.digest];
                let name = match &run.nodes[j].op {
                    Op::Source(src) => src.identifier.clone(),
                    _ => infos.get(j).map(|x: &crate::explain::KeyInfo| x.name.clone()).unwrap_or_default(),
                };
                info.inputs.push((name, keys[j].clone()));
            }
            h.update(&serde_json::to_vec(&node.op).unwrap_or_default());
            for input in &node.inputs {
                let j = run.index[&input.digest];
                h.update(keys[j].as_bytes());
                h.update(&input.index.to_le_bytes());
            }
            match &node.op {
                Op::Source(src) => match src.source()? {
                    Source::Git(_) => {
                        // A git source is keyed by the commit its ref names now.
                        let (_, commit) =
                            run.commits.get(&i).ok_or_else(|| SolveError::Definition("a git source was not resolved".into()))?;
                        h.update(commit.as_bytes());
                        info.resolved = Some(format!("commit {commit}"));
                    }
                    Source::Http(_) => {
                        // Downloads are keyed by what they return, so a changed file reruns
                        // what depends on it and an unchanged one does not.
                        let f = run.fetched.get(&i).ok_or_else(|| SolveError::Definition("an http source was not fetched".into()))?;
                        h.update(f.digest.as_str().as_bytes());
                        info.resolved = Some(f.digest.to_string());
                        h.update(&f.mtime.unwrap_or(0).to_le_bytes());
                    }
                    Source::Local(name) => {
                        let dir = run
                            .req
                            .locals
                            .get(name)
                            .ok_or_else(|| SolveError::Context(format!("no directory given for local source {name:?}")))?;
                        let m =
                            PatternMatcher::new(&src.patterns("local.excludepatterns")?).map_err(|e| SolveError::Context(e.to_string()))?;
                        if !file_caches.contains_key(dir) {
                            file_caches.insert(dir.clone(), crate::statcache::FileHashCache::load(self.worker.store(), dir)?);
                        }
                        matchers.insert(i, (dir.clone(), m));
                    }
                    // An image is keyed by its pinned reference, already in the op.
                    Source::Image(_) => {}
                },
                Op::Exec(e) => {
                    // A bind mount of the context makes the step depend on what it shows.
                    for m in &e.mounts {
                        if let (rdock_llb::MountKind::Bind, Some(ix)) = (&m.kind, m.input)
                            && let Some(input) = node.inputs.get(ix as usize)
                            && let Some((dir, matcher)) = matchers.get(&run.index[&input.digest])
                        {
                            hash_mount_source(&mut h, dir, &file_caches[dir], matcher, &m.selector, &mut info.files)?;
                        }
                    }
                }
                Op::File(f) => {
                    for a in &f.actions {
                        if let FileAction::Copy(c) = a
                            && let Some(input) = node.inputs.get(c.src_input as usize)
                            && let Some((dir, m)) = matchers.get(&run.index[&input.digest])
                        {
                            hash_copy_sources(&mut h, dir, &file_caches[dir], m, c, &mut info.files)?;
                        }
                    }
                }
                _ => {}
            }
            keys.push(h.finalize().to_hex().to_string());
            infos.push(info);
        }
        for (dir, files) in &file_caches {
            files.persist()?;
            let mut e = Event::new(EventKind::ContextHashed, "context", &format!("[internal] hash {}", dir.display()));
            e.hash_stats = Some(files.stats());
            run.req.progress.event(e);
        }
        Ok((keys, infos))
    }

    fn solve_node<'s>(&'s self, s: &'s std::thread::Scope<'s, '_>, run: &'s Run<'s>, i: usize) -> Result<Output, Arc<SolveError>> {
        run.results[i]
            .get_or_init(|| {
                let node = run.nodes[i];
                // Top down: a step found in the cache needs none of its inputs, so a build
                // that hits at the end downloads and unpacks nothing below.
                if matches!(node.op, Op::Exec(_) | Op::File(_)) && !run.forced[i] {
                    match self.find(run, i) {
                        Ok(Some(out)) => {
                            tracing::debug!(key = %run.keys[i], "cache hit");
                            self.report_skipped(run, i);
                            self.mark_cached(run, i);
                            return Ok(out);
                        }
                        Ok(None) => {}
                        Err(e) => return Err(Arc::new(e)),
                    }
                }
                // Inputs in parallel: all but the last on their own threads.
                let input_idx: Vec<usize> = node.inputs.iter().map(|inp| run.index[&inp.digest]).collect();
                let mut outs: Vec<Option<Result<Output, Arc<SolveError>>>> = vec![None; input_idx.len()];
                if input_idx.len() > 1 {
                    let handles: Vec<_> =
                        input_idx[..input_idx.len() - 1].iter().map(|&j| s.spawn(move || self.solve_node(s, run, j))).collect();
                    let last = self.solve_node(s, run, input_idx[input_idx.len() - 1]);
                    for (k, h) in handles.into_iter().enumerate() {
                        outs[k] =
                            Some(h.join().unwrap_or_else(|_| Err(Arc::new(SolveError::Definition("a solver thread panicked".into())))));
                    }
                    outs[input_idx.len() - 1] = Some(last);
                } else if let Some(&j) = input_idx.first() {
                    outs[0] = Some(self.solve_node(s, run, j));
                }
                let mut inputs = Vec::with_capacity(outs.len());
                for o in outs.into_iter().flatten() {
                    inputs.push(o?);
                }
                let out = self.run_vertex(run, i, &inputs).map_err(Arc::new)?;
                if run.req.eager_layers
                    && matches!(node.op, Op::Exec(_) | Op::File(_))
                    && let Output::Snapshot(Some(name)) = &out
                {
                    // Joined when the solve's scope ends. A failure here is found again, and
                    // reported, by whoever needs the layer.
                    let (store, name) = (self.worker.store().clone(), name.clone());
                    s.spawn(move || {
                        let started = std::time::Instant::now();
                        let made = store.snapshots().layer(&name);
                        tracing::debug!(snapshot = %name, ok = made.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "layer blob made");
                    });
                }
                Ok(out)
            })
            .clone()
    }

    fn run_vertex(&self, run: &Run<'_>, i: usize, inputs: &[Output]) -> Result<Output, SolveError> {
        let node = run.nodes[i];
        let digest = node.digest();
        let meta = run.req.definition.metadata.get(&digest).cloned().unwrap_or_default();
        let name = if meta.description.is_empty() { node.op.summary() } else { meta.description.clone() };
        let key = &run.keys[i];
        let progress = run.req.progress;
        let vertex = digest.to_string();
        match &node.op {
            Op::Source(src) => match src.source()? {
                Source::Local(name) => {
                    let dir = run
                        .req
                        .locals
                        .get(name)
                        .cloned()
                        .ok_or_else(|| SolveError::Context(format!("no directory for local source {name:?}")))?;
                    Ok(Output::Local { dir, excludes: src.patterns("local.excludepatterns")? })
                }
                Source::Git(_) => {
                    let (r, commit) = run.commits.get(&i).ok_or_else(|| SolveError::Definition("a git source was not resolved".into()))?;
                    let keep = src.attr("git.keepgitdir") == Some("true");
                    let name = self
                        .worker
                        .git_snapshot(r, commit, keep)
                        .map_err(|source| SolveError::Source { what: format!("git {} at {commit}", r.remote), source })?;
                    Ok(Output::Snapshot(Some(name)))
                }
                Source::Http(_) => {
                    let f = run.fetched.get(&i).ok_or_else(|| SolveError::Definition("an http source was not fetched".into()))?;
                    let name = self
                        .worker
                        .http_snapshot(f, src.attr("http.filename").unwrap_or("__unnamed__"))
                        .map_err(|source| SolveError::Source { what: src.identifier.clone(), source })?;
                    Ok(Output::Snapshot(Some(name)))
                }
                Source::Image(reference) => {
                    let r = ImageRef::parse(reference).map_err(|e| SolveError::Definition(e.to_string()))?;
                    let m = self.images.get(&r)?.ok_or_else(|| rdock_oci::OciError::NotFound(r.familiar()))?;
                    self.fetch_layers(&m)?;
                    let (top, _) = ensure_unpacked(&self.images, &m)?;
                    Ok(Output::Snapshot(top))
                }
            },
            Op::Exec(_) | Op::File(_) => {
                if !meta.ignore_cache
                    && let Some(out) = self.lookup(run, i)?
                {
                    return Ok(out);
                }
                // One process at a time runs a key: another build running the same step
                // finishes it, and this one then takes its result from the cache.
                let _running = self.worker.store().name_lock(key, rdock_snapshotter::lock::Wait::Block)?;
                if !meta.ignore_cache
                    && let Some(out) = self.lookup(run, i)?
                {
                    return Ok(out);
                }
                if let Some(ex) = &run.explainer {
                    let mut e = Event::new(EventKind::CacheMiss, &vertex, &name);
                    e.reasons = ex.why(&run.infos[i], key, meta.ignore_cache);
                    progress.event(e);
                }
                // Held while the op runs, so that the step's time is its own, not a wait.
                let _slot = run.slots.acquire();
                tracing::debug!(step = %name, key = %key, "running");
                progress.event(Event::new(EventKind::Started, &vertex, &name));
                let started = std::time::Instant::now();
                let snap_name = if self.worker.store().snapshots().exists(&format!("op-{key}"))? {
                    format!(
                        "op-{key}-{}",
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
                    )
                } else {
                    format!("op-{key}")
                };
                let mut tail: VecDeque<String> = VecDeque::new();
                let mut partial = String::new();
                let result = match &node.op {
                    Op::Exec(e) => {
                        self.import_cache_mounts(run, e)?;
                        let exec_inputs: Vec<FileInput> = inputs.iter().map(file_input).collect();
                        let mut on_output = |bytes: &[u8]| {
                            let text = String::from_utf8_lossy(bytes);
                            let mut ev = Event::new(EventKind::Log, &vertex, &name);
                            ev.detail = text.to_string();
                            progress.event(ev);
                            partial.push_str(&text);
                            while let Some(p) = partial.find('\n') {
                                let line: String = partial.drain(..=p).collect();
                                tail.push_back(line.trim_end().to_string());
                                if tail.len() > TAIL_LINES {
                                    tail.pop_front();
                                }
                            }
                        };
                        let with_proxy;
                        let e = if meta.proxy_env.is_empty() {
                            e
                        } else {
                            let mut op = e.clone();
                            op.env.extend(meta.proxy_env.iter().cloned());
                            with_proxy = op;
                            &with_proxy
                        };
                        self.worker.exec(e, &exec_inputs, run.req.secrets, &snap_name, &mut on_output)
                    }
                    Op::File(f) => {
                        let file_inputs: Vec<FileInput> = inputs.iter().map(file_input).collect();
                        self.worker.file(f, &file_inputs, &snap_name)
                    }
                    _ => Ok(()),
                };
                if !partial.trim().is_empty() {
                    tail.push_back(partial.trim_end().to_string());
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
                match result {
                    Ok(()) => {
                        let committed = if self.worker.store().snapshots().exists(&snap_name)? { snap_name } else { format!("op-{key}") };
                        tracing::debug!(step = %name, snapshot = %committed, elapsed_ms = started.elapsed().as_millis() as u64, "completed");
                        self.cache.put(key, &committed)?;
                        let mut ev = Event::new(EventKind::Completed, &vertex, &name);
                        ev.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                        progress.event(ev);
                        run.executed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(Output::Snapshot(Some(committed)))
                    }
                    Err(err) => {
                        let mut ev = Event::new(EventKind::Failed, &vertex, &name);
                        ev.detail = err.to_string();
                        progress.event(ev);
                        if let rdock_worker::WorkerError::SourceNotFound(p) = &err {
                            return Err(SolveError::SourceNotFound(p.clone()));
                        }
                        let mut error = err.to_string();
                        if let (Op::Exec(e), rdock_worker::WorkerError::ExitCode { .. }) = (&node.op, &err)
                            && tail.iter().any(|l| crate::hints::name_resolution_failed(l))
                        {
                            error.push_str(&crate::hints::network_note(e.network, meta.network_origin.as_deref()));
                        }
                        Err(SolveError::Step { name, lines: meta.source_lines, error, output: tail.into_iter().collect() })
                    }
                }
            }
            Op::Merge(_) | Op::Diff(_) => Err(SolveError::Definition(format!("{} ops are not supported yet", node.op.kind()))),
        }
    }
}

/// How many blobs a cache hit fetches at once.
const FETCH_THREADS: usize = 6;

impl Solver {
    fn vertex_name(run: &Run<'_>, i: usize) -> (String, String) {
        let node = run.nodes[i];
        let digest = node.digest();
        let name = match run.req.definition.metadata.get(&digest) {
            Some(m) if !m.description.is_empty() => m.description.clone(),
            _ => node.op.summary(),
        };
        (digest.to_string(), name)
    }

    /// Reports step `i` as cached, once.
    fn mark_cached(&self, run: &Run<'_>, i: usize) {
        if run.reported[i].swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (vertex, name) = Solver::vertex_name(run, i);
        run.req.progress.event(Event::new(EventKind::Cached, &vertex, &name));
        run.cached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Step `i`'s result from the local cache, else from an imported export (fetching and
    /// unpacking its chain, and recording it locally).
    fn lookup(&self, run: &Run<'_>, i: usize) -> Result<Option<Output>, SolveError> {
        let out = self.find(run, i)?;
        if out.is_some() {
            self.mark_cached(run, i);
        }
        Ok(out)
    }

    /// [`Solver::lookup`] without reporting the hit.
    fn find(&self, run: &Run<'_>, i: usize) -> Result<Option<Output>, SolveError> {
        let key = &run.keys[i];
        let snap = match self.cache.get(key)? {
            Some(s) => Some(s),
            None => self.imported(run.req.imports, key)?,
        };
        Ok(snap.map(|s| Output::Snapshot(Some(s))))
    }

    fn imported(&self, imports: &[crate::remote::ImportedCache], key: &str) -> Result<Option<String>, SolveError> {
        for c in imports {
            if let Some(chain) = c.lookup(key) {
                let name = self.materialize(c, chain)?;
                self.cache.put(key, &name)?;
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Unpacks an imported chain into snapshots named by chain ID (shared with images
    /// that have the same layers), fetching only the blobs of layers not unpacked yet.
    fn materialize(&self, c: &crate::remote::ImportedCache, chain: &[crate::remote::CacheLayer]) -> Result<String, SolveError> {
        let snaps = self.worker.store().snapshots();
        let content = self.worker.store().content();
        let mut names = Vec::with_capacity(chain.len());
        let mut diff_ids = Vec::with_capacity(chain.len());
        for l in chain {
            diff_ids.push(l.diff_id.clone());
            names.push(rdock_oci::chain_snapshot_name(&diff_ids).unwrap_or_default());
        }
        let mut missing = Vec::new();
        for (l, name) in chain.iter().zip(&names) {
            if !snaps.exists(name)? && !content.contains(&l.blob.digest) {
                missing.push(l);
            }
        }
        rdock_oci::parallel(&missing, FETCH_THREADS, |l| c.source().fetch(&l.blob, content))?;
        let layers: Vec<rdock_snapshotter::ChainLayer<'_>> = chain
            .iter()
            .zip(&names)
            .map(|(l, n)| rdock_snapshotter::ChainLayer { name: n, blob: &l.blob.digest, media_type: &l.blob.media_type })
            .collect();
        let infos = snaps.import_chain(&layers, None)?;
        for (i, (info, l)) in infos.iter().zip(chain).enumerate() {
            if info.diff_id != l.diff_id {
                for n in names[i..].iter().rev() {
                    let _ = rdock_snapshotter::Snapshotter::remove(snaps.as_ref(), n);
                }
                return Err(SolveError::Definition(format!(
                    "cache import {}: layer {} unpacks to {}, but the export says {}",
                    c.name, l.blob.digest, info.diff_id, l.diff_id
                )));
            }
        }
        let parent = names.last().cloned();
        parent.ok_or_else(|| SolveError::Definition(format!("cache import {}: a record with no layers", c.name)))
    }

    /// After a hit at step `i`, reports the steps below it that have cache records as
    /// cached (in the definition's order, which is topological), without fetching or
    /// unpacking them: they are not needed.
    fn report_skipped(&self, run: &Run<'_>, i: usize) {
        let mut hits = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<usize> = run.nodes[i].inputs.iter().map(|inp| run.index[&inp.digest]).collect();
        while let Some(j) = todo.pop() {
            if !seen.insert(j) || run.results[j].get().is_some() {
                continue;
            }
            if matches!(run.nodes[j].op, Op::Exec(_) | Op::File(_)) && !run.reported[j].load(std::sync::atomic::Ordering::Relaxed) {
                let key = &run.keys[j];
                let recorded = self.cache.contains(key).unwrap_or(false) || run.req.imports.iter().any(|c| c.lookup(key).is_some());
                if recorded {
                    hits.push(j);
                }
            }
            todo.extend(run.nodes[j].inputs.iter().map(|inp| run.index[&inp.digest]));
        }
        hits.sort_unstable();
        for j in hits {
            self.mark_cached(run, j);
        }
    }

    /// Fetches the layers of base image `m` that the store lacks and that are not unpacked
    /// yet, in parallel, from the layer source.
    fn fetch_layers(&self, m: &rdock_imagespec::Digest) -> Result<(), SolveError> {
        let Some(source) = &self.layers else { return Ok(()) };
        let manifest = self.images.manifest(m)?;
        let config = self.images.config(&manifest)?;
        let snaps = self.worker.store().snapshots();
        let content = self.worker.store().content();
        let mut needed = Vec::new();
        for (k, l) in manifest.layers.iter().enumerate() {
            let name = config.rootfs.diff_ids.get(..=k).and_then(rdock_oci::chain_snapshot_name).unwrap_or_default();
            if !content.contains(&l.digest) && !snaps.exists(&name)? {
                needed.push(l);
            }
        }
        rdock_oci::parallel(&needed, FETCH_THREADS, |l| source.fetch(l, content))?;
        Ok(())
    }

    /// Before a step with `RUN --mount=type=cache` runs, creates the caches it mounts
    /// that exist only in an imported export.
    fn import_cache_mounts(&self, run: &Run<'_>, e: &rdock_llb::ExecOp) -> Result<(), SolveError> {
        let root = self.worker.store().root().join("cache");
        let content = self.worker.store().content();
        for m in &e.mounts {
            let rdock_llb::MountKind::Cache { id, mode, uid, gid, .. } = &m.kind else { continue };
            let id = &rdock_worker::cachemount::key(id, *mode, *uid, *gid);
            if rdock_worker::cachemount::dir(&root, id).is_dir() {
                continue;
            }
            if let Some((c, desc)) = run.req.imports.iter().find_map(|c| c.mount(id).map(|d| (c, d))) {
                c.source().fetch(desc, content)?;
                let mut tar = content.open_uncompressed(&desc.digest)?;
                rdock_worker::cachemount::import(&root, id, &mut tar)
                    .map_err(|source| SolveError::Source { what: format!("cache mount {id} from the imported cache"), source })?;
            }
        }
        Ok(())
    }

    /// The cache export of a finished solve: records for its steps (`mode=min`: those
    /// whose result is part of the output; `mode=max`: all), taken from the local cache or,
    /// for steps that were hits in `imports` and never unpacked, from there (their blobs
    /// are fetched: the export needs them). With `mounts`, the build's cache mounts too.
    pub fn export_cache(
        &self,
        out: &SolveOutput,
        mode: crate::remote::CacheMode,
        mounts: bool,
        imports: &[crate::remote::ImportedCache],
    ) -> Result<crate::remote::CacheExport, SolveError> {
        use crate::remote::{CacheLayer, CacheMode, ExportBuilder};
        let snaps = self.worker.store().snapshots();
        let content = self.worker.store().content();
        let top: Vec<rdock_imagespec::Digest> = match &out.top {
            Some(t) => snaps.chain_layers(t)?.into_iter().map(|l| l.blob).collect(),
            None => Vec::new(),
        };
        let mut seen = std::collections::HashSet::new();
        let mut local: Vec<(String, String)> = Vec::new();
        let mut remote: Vec<(String, Vec<CacheLayer>, &crate::remote::ImportedCache)> = Vec::new();
        for key in &out.keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(snap) = self.cache.get(key)? {
                local.push((key.clone(), snap));
            } else if let Some((c, chain)) = imports.iter().find_map(|c| c.lookup(key).map(|ch| (c, ch.to_vec()))) {
                remote.push((key.clone(), chain, c));
            }
        }
        // Every snapshot of every chain gets its layer blob, compressed in parallel.
        let mut chain_names: Vec<String> = Vec::new();
        let mut named = std::collections::HashSet::new();
        for (_, snap) in &local {
            for info in snaps.chain(snap)? {
                if named.insert(info.key.clone()) {
                    chain_names.push(info.key);
                }
            }
        }
        rdock_oci::parallel(&chain_names, FETCH_THREADS, |n| snaps.layer(n).map(|_| ()).map_err(Into::into))?;
        let in_output = |chain: &[CacheLayer]| chain.len() <= top.len() && chain.iter().zip(&top).all(|(a, b)| a.blob.digest == *b);
        let mut b = ExportBuilder::default();
        for (key, snap) in &local {
            let chain: Vec<CacheLayer> = snaps
                .chain_layers(snap)?
                .into_iter()
                .map(|l| CacheLayer { blob: rdock_imagespec::Descriptor::new(&l.media_type, l.blob, l.size), diff_id: l.diff_id })
                .collect();
            if mode == CacheMode::Max || in_output(&chain) {
                b.record(key, &chain);
            }
        }
        for (key, chain, c) in &remote {
            if mode == CacheMode::Max || in_output(chain) {
                rdock_oci::parallel(chain, FETCH_THREADS, |l| c.source().fetch(&l.blob, content))?;
                b.record(key, chain);
            }
        }
        if mounts {
            let root = self.worker.store().root().join("cache");
            for id in &out.cache_mounts {
                let dir = rdock_worker::cachemount::dir(&root, id);
                if dir.is_dir() {
                    let lb = rdock_snapshotter::write_layer(&dir, content)?;
                    let layer = CacheLayer {
                        blob: rdock_imagespec::Descriptor::new(rdock_imagespec::MEDIA_TYPE_OCI_LAYER_GZIP, lb.blob, lb.size),
                        diff_id: lb.diff_id,
                    };
                    b.mount(id, &layer);
                }
            }
        }
        b.finish(content)
    }
}
