//! `--timeline FILE.svg`: the build as a Gantt chart. One row per vertex in start order,
//! a bar from its start to its end; cache hits as hollow grey marks labelled CACHED,
//! failures in red, the critical path in orange with a bold label. Plain SVG 1.1 with
//! inline styles, so browsers and image viewers show it without scripts.

use crate::trace::Span;
use std::fmt::Write;

const LABEL_W: f64 = 420.0;
const PLOT_W: f64 = 640.0;
const ROW_H: f64 = 20.0;
const TOP: f64 = 46.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The smallest round tick step that gives at most ten ticks over `total` seconds.
fn tick_step(total: f64) -> f64 {
    const STEPS: [f64; 16] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
    STEPS.iter().copied().find(|s| total / s <= 10.0).unwrap_or((total / 10.0 / 600.0).ceil() * 600.0)
}

/// The SVG document for `spans` (as [`crate::trace::spans`] returns them).
pub fn svg(spans: &[Span]) -> String {
    let origin = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(origin);
    let chart = Chart { origin, total: ((end.saturating_sub(origin)) as f64 / 1e9).max(0.001), rows: spans.len() };
    let (width, height) = (LABEL_W + PLOT_W + 70.0, TOP + ROW_H * spans.len() as f64 + 40.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">"#
    );
    let ran = spans.iter().filter(|s| !s.cached).count();
    let _ = writeln!(
        o,
        r#"<text x="8" y="18" font-size="14" font-weight="bold">rdock build: {:.2}s, {} steps ({ran} ran, {} cached); critical path in orange</text>"#,
        chart.total,
        spans.len(),
        spans.len() - ran
    );
    chart.axis(&mut o);
    for (i, s) in spans.iter().enumerate() {
        chart.row(&mut o, i, s, width);
    }
    chart.legend(&mut o);
    o.push_str("</svg>\n");
    o
}

/// The chart's time scale: where the build starts, how long it took, how many rows.
struct Chart {
    origin: u128,
    /// Seconds.
    total: f64,
    rows: usize,
}

impl Chart {
    fn x(&self, ns: u128) -> f64 {
        LABEL_W + (ns.saturating_sub(self.origin)) as f64 / 1e9 / self.total * PLOT_W
    }

    /// The time axis: a tick and a label per round step.
    fn axis(&self, o: &mut String) {
        let step = tick_step(self.total);
        let mut t = 0.0;
        while t <= self.total + 1e-9 {
            let tx = LABEL_W + t / self.total * PLOT_W;
            let _ = writeln!(
                o,
                r##"<line class="tick" x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{}" stroke="#ddd"/><text x="{tx:.1}" y="{}" text-anchor="middle" fill="#666">{}</text>"##,
                TOP - 6.0,
                TOP + ROW_H * self.rows as f64,
                TOP - 10.0,
                if step < 1.0 { format!("{t:.2}s") } else { format!("{t:.0}s") }
            );
            t += step;
        }
    }

    /// Row `i`: the step's label, and its bar (or a CACHED mark).
    fn row(&self, o: &mut String, i: usize, s: &Span, width: f64) {
        let y = TOP + ROW_H * i as f64;
        let state = if s.cached {
            "cached"
        } else if s.failed {
            "failed"
        } else {
            "executed"
        };
        let class = if s.critical { format!("row {state} critical") } else { format!("row {state}") };
        let secs = (s.end_ns.saturating_sub(s.start_ns)) as f64 / 1e9;
        let _ = writeln!(o, r#"<g class="{class}" data-vertex="{}">"#, esc(&s.vertex));
        let title = if s.cached { format!("{} (cached)", s.name) } else { format!("{} ({secs:.3}s)", s.name) };
        let _ = writeln!(o, "<title>{}</title>", esc(&title));
        if i % 2 == 1 {
            let _ = writeln!(o, r##"<rect x="0" y="{y}" width="{width}" height="{ROW_H}" fill="#f7f7f7"/>"##);
        }
        let mut label: String = s.name.chars().take(56).collect();
        if s.name.chars().count() > 56 {
            label.push('…');
        }
        let weight = if s.critical { "bold" } else { "normal" };
        let _ = writeln!(o, r#"<text x="8" y="{:.1}" font-weight="{weight}">{}</text>"#, y + 14.0, esc(&label));
        let (x0, x1) = (self.x(s.start_ns), self.x(s.end_ns));
        if s.cached {
            let _ = writeln!(
                o,
                r##"<rect x="{x0:.1}" y="{:.1}" width="4" height="{:.1}" fill="none" stroke="#999"/><text x="{:.1}" y="{:.1}" fill="#999" font-size="10">CACHED</text>"##,
                y + 4.0,
                ROW_H - 8.0,
                x0 + 8.0,
                y + 14.0
            );
        } else {
            let fill = if s.failed {
                "#d62728"
            } else if s.critical {
                "#ff7f0e"
            } else {
                "#1f77b4"
            };
            let _ = writeln!(
                o,
                r##"<rect class="bar" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/><text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{secs:.2}s</text>"##,
                y + 3.0,
                (x1 - x0).max(1.5),
                ROW_H - 6.0,
                x1.max(x0 + 1.5) + 4.0,
                y + 14.0
            );
        }
        let _ = writeln!(o, "</g>");
    }

    fn legend(&self, o: &mut String) {
        let ly = TOP + ROW_H * self.rows as f64 + 24.0;
        let _ = writeln!(
            o,
            r##"<g class="legend"><rect x="8" y="{:.1}" width="12" height="10" fill="#1f77b4"/><text x="24" y="{ly:.1}">ran</text><rect x="64" y="{:.1}" width="12" height="10" fill="#ff7f0e"/><text x="80" y="{ly:.1}">critical path</text><rect x="184" y="{:.1}" width="12" height="10" fill="none" stroke="#999"/><text x="200" y="{ly:.1}">cached</text><rect x="256" y="{:.1}" width="12" height="10" fill="#d62728"/><text x="272" y="{ly:.1}">failed</text></g>"##,
            ly - 9.0,
            ly - 9.0,
            ly - 9.0,
            ly - 9.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_few() {
        for (total, want) in [(0.3, 0.05), (2.0, 0.2), (9.0, 1.0), (60.0, 10.0), (7200.0, 1200.0)] {
            assert_eq!(tick_step(total), want, "{total}");
        }
    }

    #[test]
    fn names_are_escaped() {
        let s = Span {
            vertex: "v".into(),
            name: "RUN echo <a> & \"b\"".into(),
            start_ns: 0,
            end_ns: 1_000_000,
            cached: false,
            failed: false,
            deps: vec![],
            critical: true,
            lane: 0,
        };
        let doc = svg(&[s]);
        assert!(doc.contains("RUN echo &lt;a&gt; &amp; &quot;b&quot;"));
        assert!(doc.contains(r#"class="row executed critical""#));
    }
}
