//! LLB: the low-level build graph that every frontend lowers to and the solver executes.
//!
//! Architecture invariant: pure data, no I/O, and it depends on no other rdock crate. An
//! [`Op`] plus its [`Input`]s forms a [`Node`]; a node's [`OpDigest`] is sha256 over a
//! canonical encoding (JSON of structs with a fixed field order, never a hash map), so it
//! is the same across runs and machines. Metadata that must not change a digest (the
//! progress description, ignore-cache) sits beside the node in [`OpMetadata`].
//!
//! ```
//! use rdock_llb::{DefinitionBuilder, Op, SourceOp};
//! let mut b = DefinitionBuilder::default();
//! let img = b.add(Op::Source(SourceOp::image("docker.io/library/busybox:latest")), vec![], Default::default());
//! let def = b.finish(Some(img));
//! assert_eq!(def.nodes.len(), 1);
//! assert!(def.to_dot().contains("docker-image://"));
//! ```

mod chmod;
mod definition;
mod digest;
mod dump;
mod error;
mod op;
pub mod patterns;

pub use chmod::{Chmod, ChmodError};
pub use definition::{Definition, DefinitionBuilder, Node, OpMetadata};
pub use digest::OpDigest;
pub use error::DefinitionError;
pub use op::{
    CacheSharing, ChownOpt, CopyAction, DiffOp, ExecOp, FileAction, FileOp, GitRef, HostIp, Input, MergeOp, Mount, MountKind, Network, Op,
    Resources, Security, Source, SourceOp, ULIMITS, Ulimit, UlimitError, parse_git_ref,
};
