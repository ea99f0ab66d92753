//! The solver against a recording executor: what runs, how often, in parallel or not,
//! and what a failure reports. No namespaces or mounts needed.

use rdock_llb::{Definition, DefinitionBuilder, ExecOp, FileAction, FileOp, Input, Mount, MountKind, Network, Op, OpMetadata, Security};
use rdock_oci::ImageStore;
use rdock_snapshotter::{MountSpec, Store};
use rdock_solver::{NoProgress, SolveError, SolveRequest, Solver};
use rdock_worker::{ExecError, ExecResult, ExecSpec, Executor, Worker};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Records every command; commands named `meet-*` wait (up to 10 s) until two of them are
/// running at once, and record whether they met.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    waiting: Mutex<usize>,
    cv: Condvar,
    met: Mutex<Vec<bool>>,
    /// Commands named `hold-*` running now, and the most seen at once.
    holding: Mutex<(usize, usize)>,
}

impl Executor for Recorder {
    fn run(&self, spec: &ExecSpec, _root: &MountSpec, output: &mut dyn FnMut(&[u8])) -> Result<ExecResult, ExecError> {
        let cmd = spec.args.join(" ");
        self.calls.lock().unwrap().push(cmd.clone());
        if cmd.starts_with("meet-") {
            let mut n = self.waiting.lock().unwrap();
            *n += 1;
            self.cv.notify_all();
            let (n, timeout) = self.cv.wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2).unwrap();
            drop(n);
            self.met.lock().unwrap().push(!timeout.timed_out());
        }
        if cmd.starts_with("hold-") {
            {
                let mut h = self.holding.lock().unwrap();
                h.0 += 1;
                h.1 = h.1.max(h.0);
            }
            std::thread::sleep(Duration::from_millis(200));
            self.holding.lock().unwrap().0 -= 1;
        }
        if let Some(code) = cmd.strip_prefix("fail ") {
            for i in 0..20 {
                output(format!("line {i}\n").as_bytes());
            }
            return Ok(ExecResult { exit_code: code.parse().unwrap(), duration: Duration::ZERO, limit_hit: None });
        }
        Ok(ExecResult { exit_code: 0, duration: Duration::ZERO, limit_hit: None })
    }
}

fn exec(b: &mut DefinitionBuilder, base: Option<Input>, cmd: &str, ignore_cache: bool) -> Input {
    let op = ExecOp {
        args: cmd.split(' ').map(str::to_string).collect(),
        env: vec![],
        cwd: "/".into(),
        user: "0".into(),
        network: Network::None,
        security: Security::Sandbox,
        mounts: vec![Mount {
            input: base.as_ref().map(|_| 0),
            dest: "/".into(),
            selector: String::new(),
            output: Some(0),
            readonly: false,
            kind: MountKind::Bind,
        }],
        platform: None,
        extra_hosts: Vec::new(),
        hostname: None,
        resources: Default::default(),
    };
    b.add(
        Op::Exec(op),
        base.into_iter().collect(),
        OpMetadata { description: cmd.into(), ignore_cache, source_lines: Some((7, 7)), ..Default::default() },
    )
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    solver: Solver,
    rec: Arc<Recorder>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rec = Arc::new(Recorder::default());
    let worker = Worker::new(store.clone(), rec.clone());
    let solver = Solver::new(worker, ImageStore::new(store.clone())).unwrap();
    Env { _dir: dir, store, solver, rec }
}

fn solve(e: &Env, def: &Definition) -> Result<rdock_solver::SolveOutput, SolveError> {
    solve_with(e, def, false, 4)
}

fn solve_eager(e: &Env, def: &Definition, eager_layers: bool) -> Result<rdock_solver::SolveOutput, SolveError> {
    solve_with(e, def, eager_layers, 4)
}

fn solve_with(e: &Env, def: &Definition, eager_layers: bool, parallel: usize) -> Result<rdock_solver::SolveOutput, SolveError> {
    let locals = HashMap::new();
    e.solver.solve(&SolveRequest {
        definition: def,
        locals: &locals,
        progress: &NoProgress,
        secrets: &rdock_worker::Secrets::default(),
        target: None,
        imports: &[],
        max_parallelism: std::num::NonZeroUsize::new(parallel).unwrap(),
        eager_layers,
    })
}

/// `--max-parallelism`: three independent branches run three at once with room for three,
/// one at a time with room for one (and all still run).
#[test]
fn the_parallelism_limit_caps_steps_running_at_once() {
    for (limit, expect) in [(3, 3), (1, 1)] {
        let e = env();
        let mut b = DefinitionBuilder::default();
        let branches: Vec<Input> = (0..3).map(|n| exec(&mut b, None, &format!("hold-{n}"), false)).collect();
        let join = b.add(
            Op::File(FileOp {
                base: Some(0),
                actions: vec![FileAction::Mkdir { path: "/joined".into(), mode: 0o755, make_parents: true, chown: None }],
            }),
            branches,
            OpMetadata::default(),
        );
        // The joining file op mounts overlays, which needs root: its result is not the point.
        let _ = solve_with(&e, &b.finish(Some(join)), false, limit);
        let calls = e.rec.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| c.starts_with("hold-")).count(), 3, "{calls:?}");
        assert_eq!(e.rec.holding.lock().unwrap().1, expect, "limit {limit}");
    }
}

/// With `eager_layers`, every executed step's layer blob is made (and recorded) by the
/// time the solve returns; without, none is made until an image needs it.
#[test]
fn eager_layers_are_made_while_the_build_runs() {
    let layers = |e: &Env| -> i64 { e.store.db().conn().query_row("SELECT count(*) FROM layers", [], |r| r.get(0)).unwrap() };
    for eager in [false, true] {
        let e = env();
        let mut b = DefinitionBuilder::default();
        let one = exec(&mut b, None, "one", false);
        let two = exec(&mut b, Some(one), "two", false);
        let def = b.finish(Some(two));
        let out = solve_eager(&e, &def, eager).unwrap();
        assert_eq!(out.executed, 2);
        assert_eq!(layers(&e), if eager { 2 } else { 0 }, "eager_layers={eager}");
    }
}

#[test]
fn cached_vertices_do_not_run_and_ignore_cache_reruns() {
    let e = env();
    let mut b = DefinitionBuilder::default();
    let a = exec(&mut b, None, "step-a", false);
    let t = exec(&mut b, Some(a), "step-b", false);
    let def = b.finish(Some(t));
    let out = solve(&e, &def).unwrap();
    assert_eq!((out.executed, out.cached), (2, 0));
    assert!(out.top.is_some());
    let out2 = solve(&e, &def).unwrap();
    assert_eq!((out2.executed, out2.cached), (0, 2));
    assert_eq!(out2.top, out.top);
    assert_eq!(e.rec.calls.lock().unwrap().len(), 2);

    let mut b = DefinitionBuilder::default();
    let a = exec(&mut b, None, "step-a", false);
    let t = exec(&mut b, Some(a), "step-b", true);
    let out3 = solve(&e, &b.finish(Some(t))).unwrap();
    assert_eq!((out3.executed, out3.cached), (1, 1));
    assert_eq!(*e.rec.calls.lock().unwrap(), vec!["step-a", "step-b", "step-b"]);
}

#[test]
fn a_shared_vertex_runs_once_and_independent_branches_overlap() {
    let e = env();
    let mut b = DefinitionBuilder::default();
    let shared = exec(&mut b, None, "shared", false);
    let left = exec(&mut b, Some(shared.clone()), "meet-left", false);
    let right = exec(&mut b, Some(shared), "meet-right", false);
    // A file op reading both branches joins them.
    let join = b.add(
        Op::File(FileOp {
            base: Some(0),
            actions: vec![FileAction::Mkdir { path: "/joined".into(), mode: 0o755, make_parents: true, chown: None }],
        }),
        vec![left, right],
        OpMetadata::default(),
    );
    let def = b.finish(Some(join));
    // The file op mounts overlays, which needs root; the exec part is what this test is about.
    let _ = solve(&e, &def);
    let calls = e.rec.calls.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|c| *c == "shared").count(), 1, "{calls:?}");
    assert_eq!(*e.rec.met.lock().unwrap(), vec![true, true], "the two branches never ran at the same time");
}

#[test]
fn a_failing_step_reports_its_exit_code_line_and_last_output() {
    let e = env();
    let mut b = DefinitionBuilder::default();
    let t = exec(&mut b, None, "fail 2", false);
    let err = solve(&e, &b.finish(Some(t))).unwrap_err();
    let SolveError::Step { name, lines, error, output } = &err else { panic!("{err}") };
    assert_eq!(name, "fail 2");
    assert_eq!(*lines, Some((7, 7)));
    assert!(error.contains("exit code: 2"), "{error}");
    assert_eq!(output.first().map(String::as_str), Some("line 8"));
    assert_eq!(output.last().map(String::as_str), Some("line 19"));
    let text = err.to_string();
    assert!(text.contains("Dockerfile line 7") && text.contains("> line 19"), "{text}");
    // Nothing was cached for the failed step.
    assert!(e.solver.cache().is_empty().unwrap());
}
