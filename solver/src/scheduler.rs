//! The scheduler: solves one vertex of a graph of ops, each distinct vertex at most once,
//! independent inputs in parallel. It knows nothing of LLB, images or snapshots (the
//! [`Graph`] it is given does), so its rules are tested here against fake graphs:
//!
//! - **Dedupe.** A vertex reached by several paths runs once; later callers wait for the
//!   first and share its result.
//! - **Top-down hits.** A vertex is asked for a cached result before its inputs are
//!   solved: a build that hits at its end solves nothing below.
//! - **Forced vertices.** A vertex that ignores the cache, and every vertex above it, is
//!   never answered from the cache top-down: its inputs are solved and it runs.
//! - **Cancellation.** After the first failure no vertex starts running; vertices running
//!   then finish. The failure returned is the first one, never a cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// A graph of vertices numbered in topological order (inputs before the vertices that use
/// them), as the scheduler sees it.
pub(crate) trait Graph: Sync {
    /// A vertex's result, shared by every vertex that uses it.
    type Output: Clone + Send + Sync;
    /// Why a vertex failed.
    type Error: Send + Sync;

    /// How many vertices there are.
    fn len(&self) -> usize;
    /// Vertex `v`'s inputs, in order.
    fn inputs(&self, v: usize) -> &[usize];
    /// Whether `v` itself must run whatever the cache holds.
    fn ignores_cache(&self, v: usize) -> bool;
    /// `v`'s result from the cache, asked before its inputs are solved; None: solve them
    /// and run it. Never asked of a forced vertex.
    fn cached(&self, v: usize) -> Result<Option<Self::Output>, Self::Error>;
    /// Runs `v` on its inputs' results.
    fn run(&self, v: usize, inputs: &[Self::Output]) -> Result<Self::Output, Self::Error>;
}

/// How a vertex ended without a result.
enum Failure<E> {
    /// It (or an input) failed.
    Failed(Arc<E>),
    /// It did not start: another vertex had failed.
    Cancelled,
}

impl<E> Clone for Failure<E> {
    fn clone(&self) -> Self {
        match self {
            Failure::Failed(e) => Failure::Failed(e.clone()),
            Failure::Cancelled => Failure::Cancelled,
        }
    }
}

/// A vertex's result or why it has none.
type Outcome<G> = Result<<G as Graph>::Output, Failure<<G as Graph>::Error>>;

/// One solve's state.
struct Solve<'g, G: Graph> {
    graph: &'g G,
    /// Each vertex's result, set once by whoever solves it first.
    results: Vec<OnceLock<Outcome<G>>>,
    /// Vertices that may not be answered from the cache: forced, or above one that is.
    forced: Vec<bool>,
    /// Set by the first failure; no vertex starts running after it.
    failed: AtomicBool,
    first: OnceLock<Arc<G::Error>>,
}

/// Solves vertex `target` of `graph`. Every clone of a failure's error is dropped before
/// this returns, so the caller can take the error out of its `Arc`.
pub(crate) fn solve<G: Graph>(graph: &G, target: usize) -> Result<G::Output, Arc<G::Error>> {
    let mut forced = Vec::with_capacity(graph.len());
    for v in 0..graph.len() {
        let below = graph.inputs(v).iter().any(|&i| forced.get(i).copied().unwrap_or(false));
        forced.push(graph.ignores_cache(v) || below);
    }
    let state = Solve {
        graph,
        results: (0..graph.len()).map(|_| OnceLock::new()).collect(),
        forced,
        failed: AtomicBool::new(false),
        first: OnceLock::new(),
    };
    let out = std::thread::scope(|s| state.vertex(s, target));
    let Solve { results, first, .. } = state;
    drop(results);
    match out {
        Ok(o) => Ok(o),
        Err(Failure::Failed(e)) => {
            drop(first);
            Err(e)
        }
        // A vertex is cancelled only after another failed, and the first failure was kept.
        Err(Failure::Cancelled) => Err(first.into_inner().expect("a cancellation follows a failure")),
    }
}

impl<'g, G: Graph> Solve<'g, G> {
    fn vertex<'s>(&'s self, s: &'s std::thread::Scope<'s, '_>, v: usize) -> Outcome<G> {
        self.results[v].get_or_init(|| self.solve_vertex(s, v)).clone()
    }

    fn solve_vertex<'s>(&'s self, s: &'s std::thread::Scope<'s, '_>, v: usize) -> Outcome<G> {
        if !self.forced[v] {
            match self.graph.cached(v) {
                Ok(Some(out)) => return Ok(out),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        let inputs = self.inputs(s, v)?;
        if self.failed.load(Ordering::Acquire) {
            return Err(Failure::Cancelled);
        }
        self.graph.run(v, &inputs).map_err(|e| self.fail(e))
    }

    /// `v`'s inputs' results: all but the last on threads of their own.
    fn inputs<'s>(&'s self, s: &'s std::thread::Scope<'s, '_>, v: usize) -> Result<Vec<G::Output>, Failure<G::Error>> {
        let Some((&last, rest)) = self.graph.inputs(v).split_last() else { return Ok(Vec::new()) };
        let handles: Vec<_> = rest.iter().map(|&i| s.spawn(move || self.vertex(s, i))).collect();
        let last = self.vertex(s, last);
        let mut outs = Vec::with_capacity(handles.len() + 1);
        let mut failure = None;
        for h in handles {
            // A panicking vertex takes the build down with it, as it would without threads.
            match h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                Ok(o) => outs.push(o),
                Err(f) => failure = failure.or(Some(f)),
            }
        }
        match (failure, last) {
            (Some(f), _) | (None, Err(f)) => Err(f),
            (None, Ok(o)) => {
                outs.push(o);
                Ok(outs)
            }
        }
    }

    fn fail(&self, e: G::Error) -> Failure<G::Error> {
        let e = Arc::new(e);
        let _ = self.first.set(e.clone());
        self.failed.store(true, Ordering::Release);
        Failure::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A fake graph: vertex `v`'s result is its number plus its inputs' results; runs and
    /// cache lookups are recorded.
    #[derive(Default)]
    struct Fake {
        inputs: Vec<Vec<usize>>,
        ignore: HashSet<usize>,
        hits: HashSet<usize>,
        fail: HashSet<usize>,
        /// Vertices that sleep while they run, and for how many milliseconds.
        slow: std::collections::HashMap<usize, u64>,
        ran: Mutex<Vec<usize>>,
        asked: Mutex<Vec<usize>>,
        running: Mutex<(usize, usize)>,
    }

    impl Fake {
        fn new(inputs: &[&[usize]]) -> Fake {
            Fake { inputs: inputs.iter().map(|i| i.to_vec()).collect(), ..Default::default() }
        }
        fn ran(&self) -> Vec<usize> {
            let mut r = self.ran.lock().unwrap().clone();
            r.sort_unstable();
            r
        }
    }

    impl Graph for Fake {
        type Output = u64;
        type Error = String;
        fn len(&self) -> usize {
            self.inputs.len()
        }
        fn inputs(&self, v: usize) -> &[usize] {
            &self.inputs[v]
        }
        fn ignores_cache(&self, v: usize) -> bool {
            self.ignore.contains(&v)
        }
        fn cached(&self, v: usize) -> Result<Option<u64>, String> {
            self.asked.lock().unwrap().push(v);
            Ok(self.hits.contains(&v).then_some(1000 + v as u64))
        }
        fn run(&self, v: usize, inputs: &[u64]) -> Result<u64, String> {
            self.ran.lock().unwrap().push(v);
            {
                let mut r = self.running.lock().unwrap();
                r.0 += 1;
                r.1 = r.1.max(r.0);
            }
            if let Some(ms) = self.slow.get(&v) {
                std::thread::sleep(Duration::from_millis(*ms));
            }
            self.running.lock().unwrap().0 -= 1;
            if self.fail.contains(&v) {
                return Err(format!("vertex {v} failed"));
            }
            Ok(v as u64 + inputs.iter().sum::<u64>())
        }
    }

    #[test]
    fn a_shared_vertex_runs_once_and_every_user_gets_its_result() {
        // 0 ← 1, 0 ← 2, (1, 2) ← 3: a diamond.
        let g = Fake::new(&[&[], &[0], &[0], &[1, 2]]);
        assert_eq!(solve(&g, 3).unwrap(), 3 + 1 + 2);
        assert_eq!(g.ran(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn independent_inputs_run_at_the_same_time() {
        let mut g = Fake::new(&[&[], &[], &[0, 1]]);
        g.slow = [(0, 150), (1, 150)].into();
        solve(&g, 2).unwrap();
        assert_eq!(g.running.lock().unwrap().1, 2, "the two slow inputs overlapped");
    }

    #[test]
    fn a_hit_at_the_top_solves_nothing_below() {
        let mut g = Fake::new(&[&[], &[0], &[1]]);
        g.hits = HashSet::from([1, 2]);
        assert_eq!(solve(&g, 2).unwrap(), 1002);
        assert!(g.ran().is_empty());
        assert_eq!(*g.asked.lock().unwrap(), vec![2], "inputs of a hit are not even looked up");
    }

    #[test]
    fn a_miss_solves_its_inputs_and_hits_below_it_stand_in() {
        let mut g = Fake::new(&[&[], &[0], &[1]]);
        g.hits = HashSet::from([1]);
        assert_eq!(solve(&g, 2).unwrap(), 2 + 1001);
        assert_eq!(g.ran(), vec![2]);
    }

    #[test]
    fn a_forced_vertex_and_everything_above_it_run_despite_hits() {
        // 0 ← 1 ← 2 ← 3, all in the cache, 1 ignores it.
        let mut g = Fake::new(&[&[], &[0], &[1], &[2]]);
        g.hits = HashSet::from([0, 1, 2, 3]);
        g.ignore = HashSet::from([1]);
        assert_eq!(solve(&g, 3).unwrap(), 3 + 2 + 1 + 1000);
        assert_eq!(g.ran(), vec![1, 2, 3], "0 is below the forced vertex: its hit stands");
    }

    #[test]
    fn the_first_failure_is_returned_and_nothing_starts_after_it() {
        // 1 fails after 50 ms; 2 started with it and runs for 300; 3 needs 2.
        let mut g = Fake::new(&[&[], &[0], &[0], &[2], &[1, 3]]);
        g.fail = HashSet::from([1]);
        g.slow = [(1, 50), (2, 300)].into();
        let e = solve(&g, 4).unwrap_err();
        assert_eq!(*e, "vertex 1 failed");
        assert!(Arc::try_unwrap(e).is_ok(), "the caller holds the only reference");
        let ran = g.ran();
        assert!(ran.contains(&2), "a vertex already running finishes");
        assert!(!ran.contains(&3) && !ran.contains(&4), "nothing starts after the failure: {ran:?}");
    }

    #[test]
    fn a_cancelled_branch_never_hides_the_failure() {
        // The target's first input is cancelled (it waits on slow 2, then sees the failure);
        // its second fails. The error is the failure either way.
        let mut g = Fake::new(&[&[], &[0], &[1], &[0], &[2, 3]]);
        g.slow = [(1, 150)].into();
        g.fail = HashSet::from([3]);
        assert_eq!(*solve(&g, 4).unwrap_err(), "vertex 3 failed");
        assert!(!g.ran().contains(&2));
    }
}
