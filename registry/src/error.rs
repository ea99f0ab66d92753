//! What can go wrong talking to a registry, each with the URL, reference or digest a user
//! needs. Credentials never appear in these messages: URLs carry none, and headers are
//! never quoted.

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached, or kept failing (5xx, 429, reset) after retries.
    #[error("{method} {url}: {reason}")]
    Http {
        /// The request method.
        method: String,
        /// The request URL (never with credentials in it).
        url: String,
        /// What happened, with the attempt count when retries ran out.
        reason: String,
    },
    /// The registry wants credentials we do not have, or refused the ones we sent.
    #[error("{registry}: {reason}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What to do about it.
        reason: String,
    },
    /// The registry knows nothing of the manifest or blob.
    #[error("{what} not found in {registry}")]
    NotFound {
        /// The registry host.
        registry: String,
        /// The manifest or blob.
        what: String,
    },
    /// The registry sent content whose digest is not the one asked for.
    #[error("digest mismatch for {what}: expected {expected}, the registry sent content with digest {actual}; nothing was stored")]
    DigestMismatch {
        /// The manifest or blob.
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A blob ended early (or ran long).
    #[error("{what}: the registry sent {got} bytes, but the descriptor says {expected}; nothing was stored")]
    WrongSize {
        /// The blob.
        what: String,
        /// Bytes received.
        got: u64,
        /// Bytes the descriptor promised.
        expected: u64,
    },
    /// A manifest larger than any sane one (BuildKit and containerd stop at 4 MiB too).
    #[error("{what}: manifest is over the {limit}-byte limit; refusing it")]
    TooLarge {
        /// The manifest.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest or token answer that is not what the protocol says.
    #[error("{what}: {reason}")]
    BadDocument {
        /// The document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry answered with a status the operation does not expect.
    #[error("{method} {url}: unexpected status {status}{detail}")]
    Status {
        /// The request method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error message, if it sent one (`: MANIFEST_INVALID …`).
        detail: String,
    },
    /// Reading or writing the docker credentials file.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] rdock_snapshotter::SnapshotError),
    /// A local file (a blob being uploaded) could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
