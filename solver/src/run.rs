//! One solve as the scheduler sees it ([`Graph`]): the ops of a definition with their keys,
//! and the bookkeeping every step shares whatever its kind: the cache lookup, the
//! per-key lock between processes, the parallelism slot, progress events, the output
//! tail kept for errors, the cache record, and the layer blob made early.

use crate::explain::{Explainer, KeyInfo};
use crate::key::CacheKey;
use crate::ops::{Env, ExecCx, OpError, Output, SolverOp};
use crate::progress::{Event, EventKind};
use crate::remote::{CacheLayer, ImportedCache};
use crate::scheduler::Graph;
use crate::slots::Slots;
use crate::{CacheStore, SolveError};
use rdock_llb::{Node, OpDigest, OpMetadata};
use rdock_snapshotter::SnapshotName;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

/// Number of output lines kept for an error message.
const TAIL_LINES: usize = 12;

/// How many blobs a hit in an imported cache fetches at once.
const FETCH_THREADS: usize = 6;

pub(crate) struct Run<'a> {
    pub env: Env<'a>,
    pub cache: &'a CacheStore,
    pub nodes: Vec<&'a Node>,
    /// Each node's digest, computed once (it hashes the node's encoding).
    pub digests: Vec<OpDigest>,
    pub ops: Vec<Box<dyn SolverOp + 'a>>,
    /// Each vertex's inputs, by index.
    pub inputs: Vec<Vec<usize>>,
    pub keys: Vec<CacheKey>,
    /// What each key was made of, for explaining misses.
    pub infos: Vec<KeyInfo>,
    pub explainer: Option<Explainer>,
    pub slots: Slots,
    /// Vertices with a result (run or cached): never reported as skipped.
    pub settled: Vec<AtomicBool>,
    /// Steps already reported as cached.
    pub reported: Vec<AtomicBool>,
    pub executed: AtomicUsize,
    pub cached: AtomicUsize,
    /// Where committed steps go to have their layer blob made (`eager_layers`).
    pub eager: Mutex<Option<mpsc::Sender<SnapshotName>>>,
}

impl Graph for Run<'_> {
    type Output = Output;
    type Error = SolveError;

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn inputs(&self, v: usize) -> &[usize] {
        &self.inputs[v]
    }

    fn ignores_cache(&self, v: usize) -> bool {
        self.meta(v).is_some_and(|m| m.ignore_cache)
    }

    fn cached(&self, v: usize) -> Result<Option<Output>, SolveError> {
        if !self.ops[v].is_step() {
            return Ok(None);
        }
        let Some(out) = self.find(v)? else { return Ok(None) };
        tracing::debug!(key = %self.keys[v], "cache hit");
        self.report_skipped(v);
        self.mark_cached(v);
        self.settled[v].store(true, Ordering::Relaxed);
        Ok(Some(out))
    }

    fn run(&self, v: usize, inputs: &[Output]) -> Result<Output, SolveError> {
        let out = if self.ops[v].is_step() {
            self.step(v, inputs)
        } else {
            let cx = ExecCx { env: &self.env, meta: &self.meta(v).cloned().unwrap_or_default(), snapshot: "" };
            self.ops[v].exec(&cx, inputs, &mut |_| {}).map_err(|e| match e {
                OpError::Solve(e) => e,
                OpError::Worker(source) => SolveError::Source { what: self.name(v), source },
            })
        };
        self.settled[v].store(true, Ordering::Relaxed);
        out
    }
}

impl Run<'_> {
    fn meta(&self, v: usize) -> Option<&OpMetadata> {
        self.env.req.definition.metadata.get(&self.digests[v])
    }

    /// The vertex's name in progress: its description, else a summary of its op.
    pub(crate) fn name(&self, v: usize) -> String {
        match self.meta(v) {
            Some(m) if !m.description.is_empty() => m.description.clone(),
            _ => self.nodes[v].op.summary(),
        }
    }

    /// Runs step `v` unless another build ran it meanwhile, and files its result.
    fn step(&self, v: usize, inputs: &[Output]) -> Result<Output, SolveError> {
        let meta = self.meta(v).cloned().unwrap_or_default();
        let key = &self.keys[v];
        if !meta.ignore_cache
            && let Some(out) = self.lookup(v)?
        {
            return Ok(out);
        }
        // One process at a time runs a key: another build running the same step finishes
        // it, and this one then takes its result from the cache.
        let _running = self.env.worker.store().name_lock(key.as_str(), rdock_snapshotter::lock::Wait::Block)?;
        if !meta.ignore_cache
            && let Some(out) = self.lookup(v)?
        {
            return Ok(out);
        }
        let (vertex, name) = (self.digests[v].to_string(), self.name(v));
        if let Some(ex) = &self.explainer {
            let mut e = Event::new(EventKind::CacheMiss, &vertex, &name);
            e.reasons = ex.why(&self.infos[v], key.as_str(), meta.ignore_cache);
            self.env.req.progress.event(e);
        }
        // Held while the op runs, so that the step's time is its own, not a wait.
        let _slot = self.ops[v].acquire(&self.slots);
        tracing::debug!(step = %name, key = %key, "running");
        self.env.req.progress.event(Event::new(EventKind::Started, &vertex, &name));
        let started = std::time::Instant::now();
        let snapshot = self.snapshot_name(key)?;
        let mut tail = Tail::default();
        let mut log = |bytes: &[u8]| {
            let mut ev = Event::new(EventKind::Log, &vertex, &name);
            ev.detail = String::from_utf8_lossy(bytes).to_string();
            self.env.req.progress.event(ev);
            tail.push(bytes);
        };
        let cx = ExecCx { env: &self.env, meta: &meta, snapshot: &snapshot };
        let result = self.ops[v].exec(&cx, inputs, &mut log);
        let tail = tail.finish();
        match result {
            Ok(out) => self.completed(v, &name, started, out),
            Err(err) => Err(self.failed(v, &meta, name, err, tail)),
        }
    }

    /// Where a step's result goes: `op-KEY`, or, when a snapshot of that name exists but
    /// has no cache record (a record pruned, a forced rerun), a fresh name beside it.
    fn snapshot_name(&self, key: &CacheKey) -> Result<String, SolveError> {
        let plain = format!("op-{key}");
        if !self.env.worker.store().snapshots().exists(&plain)? {
            return Ok(plain);
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(format!("op-{key}-{nanos}"))
    }

    fn completed(&self, v: usize, name: &str, started: std::time::Instant, out: Output) -> Result<Output, SolveError> {
        let Output::Snapshot(Some(made)) = out else {
            return Err(SolveError::Definition(format!("{name}: a step produced no snapshot")));
        };
        // A step that found its result already committed under the plain name (another
        // build's, unrecorded) leaves the fresh one unmade.
        let committed =
            if self.env.worker.store().snapshots().exists(&made)? { made } else { SnapshotName::new(format!("op-{}", self.keys[v])) };
        tracing::debug!(step = %name, snapshot = %committed, elapsed_ms = started.elapsed().as_millis() as u64, "completed");
        self.cache.put(&self.keys[v], &committed)?;
        let mut ev = Event::new(EventKind::Completed, &self.digests[v].to_string(), name);
        ev.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        self.env.req.progress.event(ev);
        self.executed.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = self.eager.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(committed.clone());
        }
        Ok(Output::Snapshot(Some(committed)))
    }

    fn failed(&self, v: usize, meta: &OpMetadata, name: String, err: OpError, tail: Vec<String>) -> SolveError {
        let vertex = self.digests[v].to_string();
        let mut ev = Event::new(EventKind::Failed, &vertex, &name);
        let err = match err {
            OpError::Solve(e) => {
                let e = e.in_step(&name, meta);
                ev.detail = e.to_string();
                self.env.req.progress.event(ev);
                return e;
            }
            OpError::Worker(e) => e,
        };
        ev.detail = err.to_string();
        self.env.req.progress.event(ev);
        if let rdock_worker::WorkerError::SourceNotFound(p) = &err {
            return SolveError::source_not_found(p.clone()).in_step(&name, meta);
        }
        let mut error = err.to_string();
        if let Some(note) = self.ops[v].failure_note(&err, &tail, meta) {
            error.push_str(&note);
        }
        SolveError::Step { name, lines: meta.source_lines, error, output: tail }
    }

    /// Reports step `v` as cached, once.
    fn mark_cached(&self, v: usize) {
        if self.reported[v].swap(true, Ordering::Relaxed) {
            return;
        }
        let (vertex, name) = (self.digests[v].to_string(), self.name(v));
        self.env.req.progress.event(Event::new(EventKind::Cached, &vertex, &name));
        self.cached.fetch_add(1, Ordering::Relaxed);
    }

    /// Step `v`'s result from the cache, reported as a hit.
    fn lookup(&self, v: usize) -> Result<Option<Output>, SolveError> {
        let out = self.find(v)?;
        if out.is_some() {
            self.mark_cached(v);
        }
        Ok(out)
    }

    /// Step `v`'s result from the local cache, else from an imported export (fetching and
    /// unpacking its chain, and recording it locally).
    fn find(&self, v: usize) -> Result<Option<Output>, SolveError> {
        let key = &self.keys[v];
        let snap = match self.cache.get(key)? {
            Some(s) => Some(s),
            None => self.imported(key)?,
        };
        Ok(snap.map(|s| Output::Snapshot(Some(s))))
    }

    fn imported(&self, key: &CacheKey) -> Result<Option<SnapshotName>, SolveError> {
        for c in self.env.req.imports {
            if let Some(chain) = c.lookup(key.as_str()) {
                let name = self.materialize(c, chain)?;
                self.cache.put(key, &name)?;
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Unpacks an imported chain into snapshots named by chain ID (shared with images
    /// that have the same layers), fetching only the blobs of layers not unpacked yet,
    /// each unpacked while it downloads.
    fn materialize(&self, c: &ImportedCache, chain: &[CacheLayer]) -> Result<SnapshotName, SolveError> {
        let store = self.env.worker.store();
        let layers: Vec<rdock_oci::ChainBlob<'_>> =
            chain.iter().map(|l| rdock_oci::ChainBlob { blob: &l.blob, diff_id: &l.diff_id }).collect();
        let top = rdock_oci::fetch_unpacking(store, &layers, c.source(), FETCH_THREADS).map_err(|e| match e {
            rdock_oci::OciError::LayerMismatch { layer, unpacked, claimed } => SolveError::Definition(format!(
                "cache import {}: layer {layer} unpacks to {unpacked}, but the export says {claimed}",
                c.name
            )),
            e => e.into(),
        })?;
        top.map(SnapshotName::new).ok_or_else(|| SolveError::Definition(format!("cache import {}: a record with no layers", c.name)))
    }

    /// After a hit at step `v`, reports the steps below it that have cache records as
    /// cached (in the definition's order, which is topological), without fetching or
    /// unpacking them: they are not needed.
    fn report_skipped(&self, v: usize) {
        let mut hits = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<usize> = self.inputs[v].clone();
        while let Some(j) = todo.pop() {
            if !seen.insert(j) || self.settled[j].load(Ordering::Relaxed) {
                continue;
            }
            if self.ops[j].is_step() && !self.reported[j].load(Ordering::Relaxed) {
                let key = &self.keys[j];
                let recorded =
                    self.cache.contains(key).unwrap_or(false) || self.env.req.imports.iter().any(|c| c.lookup(key.as_str()).is_some());
                if recorded {
                    hits.push(j);
                }
            }
            todo.extend(self.inputs[j].iter().copied());
        }
        hits.sort_unstable();
        for j in hits {
            self.mark_cached(j);
        }
    }
}

/// The last lines a step printed, kept for its error message.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: String,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.push_str(&String::from_utf8_lossy(bytes));
        while let Some(p) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=p).collect();
            self.keep(line.trim_end().to_string());
        }
    }

    fn keep(&mut self, line: String) {
        self.lines.push_back(line);
        if self.lines.len() > TAIL_LINES {
            self.lines.pop_front();
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.partial.trim().is_empty() {
            let rest = self.partial.trim_end().to_string();
            self.keep(rest);
        }
        self.lines.into()
    }
}
