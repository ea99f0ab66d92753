//! The Dockerfile frontend: parse a Dockerfile, expand its words, and lower it to an LLB
//! definition plus the image config BuildKit would write.
//!
//! Architecture invariant: no I/O. The Dockerfile text, the `.dockerignore` patterns and
//! the build options come in as data; base images are looked up through the
//! [`ImageResolver`] the caller supplies. Everything here is testable as data in, data out.
//!
//! ```
//! use rdock_frontend::{lower, BuildOptions, ImageResolver, ResolveError, ResolvedImage};
//! struct NoImages;
//! impl ImageResolver for NoImages {
//!     fn resolve(&self, r: &rdock_imagespec::ImageRef, _: &rdock_imagespec::Platform) -> Result<ResolvedImage, ResolveError> {
//!         Err(ResolveError::NotFound { registry: r.registry.clone() })
//!     }
//! }
//! let out = lower("FROM scratch\nCOPY a /a\n", &BuildOptions::default(), &NoImages).unwrap();
//! assert_eq!(out.definition.nodes.len(), 2);
//! ```

// Dockerfile errors carry their location inline (file, line, column, source line) so they
// are cheap to build and easy to match in tests; they are the cold path, so their size in
// `Result` does not matter.
#![allow(clippy::result_large_err)]

pub mod dockerignore;
mod error;
pub mod instructions;
pub mod lint;
mod lower;
pub mod parser;
mod request;
pub mod runmount;
pub mod shell;

pub use error::{DockerfileError, Location, excerpt};
pub use lower::{DEFAULT_PATH, FrontendError, HISTORY_COMMENT, Lowered, lower, network_name, parse_network};
pub use request::{BuildOptions, ImageResolver, NamedContext, ResolveError, ResolvedImage};
