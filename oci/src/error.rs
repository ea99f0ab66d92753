//! Image-level errors.

use rdock_imagespec::Digest;
use std::path::PathBuf;

/// Something went wrong with an image or an archive.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Snapshot or blob trouble.
    #[error(transparent)]
    Snapshot(#[from] rdock_snapshotter::SnapshotError),
    /// Database trouble.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// No such image.
    #[error("image {0} not found in the local store (load it with `rdock load -i FILE`)")]
    NotFound(String),
    /// An archive is not one we can read.
    #[error("{path}: not a docker-archive or OCI-layout tarball: {reason}")]
    BadArchive {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document did not parse.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A reference did not parse.
    #[error(transparent)]
    Reference(#[from] rdock_imagespec::ReferenceError),
    /// I/O at a path.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A multi-platform image has no manifest for the platform asked for.
    #[error("image {image} has no manifest for platform {platform} (it has: {available})")]
    NoPlatform {
        /// The image (index digest).
        image: String,
        /// The platform asked for.
        platform: String,
        /// The platforms it has.
        available: String,
    },
    /// A registry operation failed.
    #[error(transparent)]
    Registry(#[from] rdock_registry::RegistryError),
    /// An export option rdock cannot honour, named.
    #[error("{0}")]
    Unsupported(String),
    /// A layer does not unpack to the diff ID claimed for it.
    #[error("layer {layer} unpacks to {unpacked}, but {claimed} was claimed")]
    LayerMismatch {
        /// The layer blob.
        layer: Digest,
        /// What it unpacked to.
        unpacked: Digest,
        /// What its image or cache export said.
        claimed: Digest,
    },
    /// The image's config and layers disagree.
    #[error("image {image}: {reason}")]
    Inconsistent {
        /// The image.
        image: String,
        /// What disagrees.
        reason: String,
    },
}

impl OciError {
    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> OciError {
        OciError::Json { what: what.into(), source }
    }
}
