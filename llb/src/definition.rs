//! Nodes, their digests, and the whole definition.

use crate::digest::OpDigest;
use crate::error::DefinitionError;
use crate::op::{Input, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An op and the outputs it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// What it does.
    pub op: Op,
    /// What it reads, indexed by the op's input numbers.
    pub inputs: Vec<Input>,
}

impl Node {
    /// The canonical bytes the digest is computed over. Structs serialise their fields in
    /// declaration order and the op types hold no hash maps, so this is stable.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The node's digest.
    pub fn digest(&self) -> OpDigest {
        OpDigest::of(&self.canonical_bytes())
    }
}

/// Data about a node that does not change what it computes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMetadata {
    /// The progress name (`[stage 2/5] RUN make`).
    pub description: String,
    /// Run even if a cache record exists (--no-cache).
    pub ignore_cache: bool,
    /// Dockerfile line range this node came from, 1-based, for error messages.
    pub source_lines: Option<(usize, usize)>,
    /// Proxy variables (`HTTP_PROXY=…`) for an exec: given to the process but kept out of
    /// the op, so a different proxy neither changes a digest nor busts the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
    /// For an exec: where its network mode came from when not the default (`RUN
    /// --network=none`, `--network host` on the command line), named in its error if it
    /// fails to resolve a host name. Kept out of the op, so it never changes a digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_origin: Option<String>,
    /// For a COPY or ADD `--from`: what it copies from (`stage build`, `image alpine:3`,
    /// `context docs`), named when a source is missing. Kept out of the op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_from: Option<String>,
}

/// A whole build graph: nodes in topological order (inputs first), per-node metadata, and
/// the output the build produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Every node once, inputs before the nodes that read them.
    pub nodes: Vec<Node>,
    /// Metadata keyed by node digest.
    pub metadata: BTreeMap<OpDigest, OpMetadata>,
    /// The result; None is an empty (scratch) result.
    pub terminal: Option<Input>,
}

impl Definition {
    /// The node with `digest`.
    pub fn node(&self, digest: &OpDigest) -> Option<&Node> {
        self.nodes.iter().find(|n| &n.digest() == digest)
    }

    /// Checks that every input refers to an earlier node.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            let d = n.digest();
            for i in &n.inputs {
                if !seen.contains(&i.digest) {
                    return Err(DefinitionError::DanglingInput { node: d, input: i.digest.clone() });
                }
            }
            seen.insert(d);
        }
        Ok(())
    }
}

/// Builds a definition, deduplicating identical nodes.
#[derive(Debug, Default)]
pub struct DefinitionBuilder {
    nodes: Vec<Node>,
    index: BTreeMap<OpDigest, usize>,
    metadata: BTreeMap<OpDigest, OpMetadata>,
}

impl DefinitionBuilder {
    /// Adds a node (or finds the identical one already added) and returns its output 0.
    /// Inputs must have been added before.
    pub fn add(&mut self, op: Op, inputs: Vec<Input>, meta: OpMetadata) -> Input {
        let node = Node { op, inputs };
        let digest = node.digest();
        if !self.index.contains_key(&digest) {
            self.index.insert(digest.clone(), self.nodes.len());
            self.nodes.push(node);
            self.metadata.insert(digest.clone(), meta);
        } else if let Some(m) = self.metadata.get_mut(&digest) {
            // The same work reached twice: keep the first description, but any request to
            // ignore the cache wins.
            m.ignore_cache |= meta.ignore_cache;
        }
        Input { digest, index: 0 }
    }

    /// Finishes with `terminal` as the result; nodes not reachable from it are dropped.
    pub fn finish(self, terminal: Option<Input>) -> Definition {
        let mut keep = std::collections::BTreeSet::new();
        let mut stack: Vec<OpDigest> = terminal.iter().map(|t| t.digest.clone()).collect();
        while let Some(d) = stack.pop() {
            if keep.insert(d.clone())
                && let Some(&i) = self.index.get(&d)
            {
                stack.extend(self.nodes[i].inputs.iter().map(|x| x.digest.clone()));
            }
        }
        let nodes: Vec<Node> = self.nodes.into_iter().filter(|n| keep.contains(&n.digest())).collect();
        let metadata = self.metadata.into_iter().filter(|(d, _)| keep.contains(d)).collect();
        Definition { nodes, metadata, terminal }
    }
}
