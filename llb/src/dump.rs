//! Dumps of a definition: JSON and RON for reading and diffing, DOT for drawing.

use crate::Definition;
use std::fmt::Write;

impl Definition {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Pretty RON.
    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).unwrap_or_default()
    }

    /// Graphviz DOT: one box per node labelled with its kind, summary and short digest; an
    /// edge per input.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph llb {\n  rankdir=BT;\n  node [shape=box, fontname=monospace];\n");
        for n in &self.nodes {
            let d = n.digest();
            let desc = self.metadata.get(&d).map(|m| m.description.as_str()).unwrap_or("");
            let label = format!("{} {}\\n{}\\n{}", n.op.kind(), d.short(), escape(desc), escape(&n.op.summary()));
            let _ = writeln!(out, "  \"{}\" [label=\"{}\"];", d, label);
            for i in &n.inputs {
                let _ = writeln!(out, "  \"{}\" -> \"{}\" [label=\"{}\"];", i.digest, d, i.index);
            }
        }
        out.push_str("}\n");
        out
    }
}

fn escape(s: &str) -> String {
    let s: String = s.chars().take(80).collect();
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use crate::*;

    fn sample() -> Definition {
        let mut b = DefinitionBuilder::default();
        let img = b.add(Op::Source(SourceOp::image("docker.io/library/busybox:latest")), vec![], OpMetadata::default());
        let run = b.add(
            Op::Exec(ExecOp {
                args: vec!["/bin/sh".into(), "-c".into(), "echo hi > /f".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: "".into(),
                network: Network::Sandbox,
                security: Security::Sandbox,
                mounts: vec![Mount {
                    input: Some(0),
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
            }),
            vec![img],
            OpMetadata { description: "RUN echo hi > /f".into(), ..Default::default() },
        );
        b.finish(Some(run))
    }

    #[test]
    fn digests_are_pinned() {
        // If this changes, every user's cache is invalidated: change it only on purpose.
        let def = sample();
        let digests: Vec<String> = def.nodes.iter().map(|n| n.digest().to_string()).collect();
        assert_eq!(
            digests,
            vec![
                "sha256:aefb647629a9fa939df2f35b014780cc430aa847f076d6f70688ed4fefdcc925".to_string(),
                "sha256:a5cd150f8c2e5bd1361617702ba47bf8b3e010aa571d2baef2a12694e0ae845b".to_string()
            ]
        );
    }

    #[test]
    fn canonical_encoding_is_plain_ordered_json() {
        let n = Node { op: Op::Source(SourceOp::image("docker.io/library/busybox:latest")), inputs: vec![] };
        assert_eq!(
            String::from_utf8(n.canonical_bytes()).unwrap(),
            r#"{"op":{"Source":{"identifier":"docker-image://docker.io/library/busybox:latest","attrs":[]}},"inputs":[]}"#
        );
    }

    #[test]
    fn metadata_does_not_change_digests() {
        let a = sample();
        let mut b = DefinitionBuilder::default();
        let img = b.add(
            Op::Source(SourceOp::image("docker.io/library/busybox:latest")),
            vec![],
            OpMetadata {
                description: "other".into(),
                ignore_cache: true,
                source_lines: Some((1, 1)),
                proxy_env: vec!["HTTP_PROXY=x".into()],
                network_origin: Some("--network none".into()),
                copy_from: Some("stage x".into()),
            },
        );
        assert_eq!(img.digest, a.nodes[0].digest());
    }

    #[test]
    fn dumps_round_trip() {
        let def = sample();
        let back: Definition = serde_json::from_str(&def.to_json()).unwrap();
        assert_eq!(back, def);
        let back: Definition = ron::from_str(&def.to_ron()).unwrap();
        assert_eq!(back, def);
        assert!(def.to_dot().contains("->"));
        def.validate().unwrap();
    }

    #[test]
    fn identical_nodes_are_added_once() {
        let mut b = DefinitionBuilder::default();
        let x = b.add(Op::Source(SourceOp::image("a")), vec![], OpMetadata::default());
        let y = b.add(Op::Source(SourceOp::image("a")), vec![], OpMetadata::default());
        assert_eq!(x, y);
        assert_eq!(b.finish(Some(x)).nodes.len(), 1);
    }
}
