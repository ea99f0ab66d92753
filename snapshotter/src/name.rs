//! Snapshot names, as a type of their own so they are not confused with the other strings
//! that travel beside them (cache keys, image references, paths).

use std::fmt;

/// The name of a committed snapshot: `op-KEY` for a build step's result, `sha256:CHAIN` for
/// an unpacked image layer chain. Derefs to `str` for the snapshotter's verbs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotName(String);

impl SnapshotName {
    /// A name as the store records it.
    pub fn new(name: impl Into<String>) -> SnapshotName {
        SnapshotName(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SnapshotName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> String {
        n.0
    }
}
