//! The build as a timeline: one span per vertex from its progress events, the critical
//! path through the graph, and `--trace FILE` (Chrome's trace event format, which
//! chrome://tracing and Perfetto open).

use rdock_llb::Definition;
use rdock_solver::{Event, EventKind};
use std::collections::{HashMap, HashSet};

/// One vertex's time in the build.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The op digest.
    pub vertex: String,
    /// `[2/5] RUN make`.
    pub name: String,
    /// Unix nanoseconds it started (for a cached vertex: when it was found).
    pub start_ns: u128,
    /// Unix nanoseconds it ended.
    pub end_ns: u128,
    /// Came from the cache; nothing ran.
    pub cached: bool,
    /// Failed.
    pub failed: bool,
    /// The vertices with spans it waited for (through sources, which have none).
    pub deps: Vec<String>,
    /// On the critical path: the chain of last-finishing dependencies that set the
    /// build's end.
    pub critical: bool,
    /// Output lane: spans on one lane never overlap.
    pub lane: usize,
}

/// Spans from a build's events, in start order, with dependencies, lanes and the
/// critical path filled in. A step still running when the events stop (a failed build)
/// ends at the last event.
pub fn spans(events: &[Event], def: &Definition) -> Vec<Span> {
    let (mut by_vertex, order) = spans_by_vertex(events);
    // Inputs by vertex, from the graph.
    let inputs: HashMap<String, Vec<String>> =
        def.nodes.iter().map(|n| (n.digest().to_string(), n.inputs.iter().map(|i| i.digest.to_string()).collect())).collect();
    let deps: HashMap<String, Vec<String>> = order.iter().map(|v| (v.clone(), shown_deps(&inputs, &by_vertex, v))).collect();
    for (v, d) in deps {
        if let Some(s) = by_vertex.get_mut(&v) {
            s.deps = d;
        }
    }
    mark_critical_path(&mut by_vertex);
    let mut out: Vec<Span> = order.into_iter().filter_map(|v| by_vertex.remove(&v)).collect();
    out.sort_by_key(|s| (s.start_ns, s.end_ns));
    assign_lanes(&mut out);
    out
}

/// One span per vertex that started, hit the cache, completed or failed, and the order
/// in which they first appeared.
fn spans_by_vertex(events: &[Event]) -> (HashMap<String, Span>, Vec<String>) {
    let last = events.iter().map(|e| e.time_ns).max().unwrap_or(0);
    let mut by_vertex: HashMap<String, Span> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for e in events {
        if !matches!(e.kind, EventKind::Started | EventKind::Cached | EventKind::Completed | EventKind::Failed) {
            continue;
        }
        let s = by_vertex.entry(e.vertex.clone()).or_insert_with(|| {
            order.push(e.vertex.clone());
            Span {
                vertex: e.vertex.clone(),
                name: e.name.clone(),
                start_ns: e.time_ns,
                end_ns: last,
                cached: false,
                failed: false,
                deps: Vec::new(),
                critical: false,
                lane: 0,
            }
        });
        match e.kind {
            EventKind::Started => s.start_ns = e.time_ns,
            EventKind::Cached => {
                s.cached = true;
                s.start_ns = e.time_ns;
                s.end_ns = e.time_ns;
            }
            EventKind::Completed => s.end_ns = e.time_ns,
            EventKind::Failed => {
                s.failed = true;
                s.end_ns = e.time_ns;
            }
            _ => {}
        }
    }
    (by_vertex, order)
}

/// The spans `v` depends on: its inputs that have spans, looking through those that do
/// not (sources, internal vertices) to theirs.
fn shown_deps(inputs: &HashMap<String, Vec<String>>, spans: &HashMap<String, Span>, v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<String> = inputs.get(v).cloned().unwrap_or_default();
    while let Some(d) = todo.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        if spans.contains_key(&d) {
            out.push(d);
        } else {
            todo.extend(inputs.get(&d).cloned().unwrap_or_default());
        }
    }
    out.sort();
    out
}

/// The critical path: from the vertex that ended last, back through whichever
/// dependency ended last.
fn mark_critical_path(by_vertex: &mut HashMap<String, Span>) {
    let mut at = by_vertex.values().max_by_key(|s| (s.end_ns, s.start_ns)).map(|s| s.vertex.clone());
    while let Some(v) = at.take() {
        let Some(s) = by_vertex.get_mut(&v) else { break };
        if s.critical {
            break;
        }
        s.critical = true;
        let deps = s.deps.clone();
        at = deps.iter().filter_map(|d| by_vertex.get(d)).max_by_key(|d| (d.end_ns, d.start_ns)).map(|d| d.vertex.clone());
    }
}

/// Lanes: each span (in start order) takes the first lane free at its start.
fn assign_lanes(spans: &mut [Span]) {
    let mut lane_end: Vec<u128> = Vec::new();
    for s in spans {
        match lane_end.iter().position(|&e| e <= s.start_ns) {
            Some(i) => {
                s.lane = i;
                lane_end[i] = s.end_ns.max(s.start_ns + 1);
            }
            None => {
                s.lane = lane_end.len();
                lane_end.push(s.end_ns.max(s.start_ns + 1));
            }
        }
    }
}

/// The spans as a Chrome trace: complete events (`ph: X`) for steps that ran, instant
/// events (`ph: i`) for cache hits, one thread per lane; times in microseconds from the
/// first span.
pub fn chrome_trace(spans: &[Span]) -> serde_json::Value {
    let origin = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let us = |ns: u128| (ns.saturating_sub(origin)) as f64 / 1000.0;
    let mut events = vec![serde_json::json!({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "rdock build"}})];
    let lanes = spans.iter().map(|s| s.lane + 1).max().unwrap_or(0);
    for l in 0..lanes {
        events.push(
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": l + 1, "args": {"name": format!("lane {}", l + 1)}}),
        );
    }
    for s in spans {
        let args = serde_json::json!({"vertex": s.vertex, "cached": s.cached, "failed": s.failed, "critical": s.critical});
        let cat = if s.cached {
            "cached"
        } else if s.failed {
            "failed"
        } else {
            "executed"
        };
        let mut e = serde_json::json!({"name": s.name, "cat": cat, "pid": 1, "tid": s.lane + 1, "ts": us(s.start_ns), "args": args});
        if s.cached {
            e["ph"] = "i".into();
            e["s"] = "t".into();
        } else {
            e["ph"] = "X".into();
            e["dur"] = ((s.end_ns.saturating_sub(s.start_ns)) as f64 / 1000.0).into();
        }
        events.push(e);
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdock_llb::{Input, Node, Op, SourceOp};

    fn node(id: &str, inputs: &[&Node]) -> Node {
        Node {
            op: Op::Source(SourceOp { identifier: format!("local://{id}"), attrs: Default::default() }),
            inputs: inputs.iter().map(|n| Input { digest: n.digest(), index: 0 }).collect(),
        }
    }

    fn at(kind: EventKind, n: &Node, name: &str, ms: u128) -> Event {
        let mut e = Event::new(kind, &n.digest().to_string(), name);
        e.time_ns = ms * 1_000_000;
        e
    }

    #[test]
    fn critical_path_follows_the_last_finishing_dependency() {
        // base → slow, base → fast; join ← slow, fast.
        let base = node("base", &[]);
        let slow = node("slow", &[&base]);
        let fast = node("fast", &[&base]);
        let join = node("join", &[&slow, &fast]);
        let def = Definition {
            nodes: vec![base.clone(), slow.clone(), fast.clone(), join.clone()],
            metadata: Default::default(),
            terminal: None,
        };
        let events = vec![
            at(EventKind::Started, &slow, "slow", 0),
            at(EventKind::Started, &fast, "fast", 1),
            at(EventKind::Completed, &fast, "fast", 100),
            at(EventKind::Completed, &slow, "slow", 800),
            at(EventKind::Started, &join, "join", 801),
            at(EventKind::Completed, &join, "join", 900),
        ];
        let s = spans(&events, &def);
        let by: HashMap<&str, &Span> = s.iter().map(|s| (s.name.as_str(), s)).collect();
        assert!(by["slow"].critical && by["join"].critical && !by["fast"].critical);
        assert_ne!(by["slow"].lane, by["fast"].lane, "overlapping spans get their own lanes");
        assert_eq!(by["join"].deps.len(), 2);
        let t = chrome_trace(&s);
        let x: Vec<&serde_json::Value> = t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(x.len(), 3);
        let slow_ev = x.iter().find(|e| e["name"] == "slow").unwrap();
        assert_eq!(slow_ev["dur"], 800_000.0);
        assert_eq!(slow_ev["ts"], 0.0);
    }
}
