//! Why a definition does not read back.

use crate::digest::OpDigest;

/// The definition could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// A node reads an output no earlier node produces.
    #[error("node {node} reads {input}, which no earlier node defines")]
    DanglingInput {
        /// The reader.
        node: OpDigest,
        /// The missing producer.
        input: OpDigest,
    },
    /// A source identifier names nothing rdock can fetch.
    #[error("source {identifier}: {reason}")]
    BadSource {
        /// The identifier.
        identifier: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An attribute's value is not what its key says it holds.
    #[error("attribute {key}: {reason}")]
    BadAttribute {
        /// The attribute.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
}
