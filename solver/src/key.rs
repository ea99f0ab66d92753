//! Cache keys: what a step's result is filed under in the cache.

use std::fmt;

/// A vertex's cache key: blake3, in hex, over a version tag, the op's canonical encoding,
/// its inputs' keys and whatever content the op reads (see `ops`). Never leaves the
/// machine except inside a cache export, where it names the same step on another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

/// Bumped whenever what goes into a key changes, so old records are never mistaken for
/// new ones.
const VERSION: &[u8] = b"rdock-cache-v1\0";

impl CacheKey {
    /// A hasher primed with the version tag: everything a key covers goes into it.
    pub(crate) fn hasher() -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        h.update(VERSION);
        h
    }

    /// The key a primed hasher has computed.
    pub(crate) fn finish(h: &blake3::Hasher) -> CacheKey {
        CacheKey(h.finalize().to_hex().to_string())
    }

    /// A key read back from a cache record or export; None if it is not 64 hex digits.
    pub fn parse(s: &str) -> Option<CacheKey> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| CacheKey(s.to_ascii_lowercase()))
    }

    /// The key in hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_only_from_hex() {
        let mut h = CacheKey::hasher();
        h.update(b"x");
        let k = CacheKey::finish(&h);
        assert_eq!(CacheKey::parse(k.as_str()), Some(k.clone()));
        assert_eq!(CacheKey::parse(&k.as_str().to_uppercase()), Some(k));
        assert_eq!(CacheKey::parse("op-abc"), None);
        assert_eq!(CacheKey::parse(&"g".repeat(64)), None);
    }
}
