//! Image references, normalised as Docker does: `bb:1` is `docker.io/library/bb:1`, no tag
//! means `latest`.

use crate::Digest;
use std::fmt;

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The text given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `docker.io`, `localhost:5000`, …
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    /// `latest` unless given (None only when a digest is given without a tag).
    pub tag: Option<String>,
    /// A pinned manifest digest.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let err = |reason| ReferenceError { reference: s.to_string(), reason };
        if s.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|_| err("bad digest"))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || !t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                || t.starts_with(['.', '-']))
        {
            return Err(err("bad tag"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path.to_string()),
            _ => {
                let repo = if name.contains('/') { name.to_string() } else { format!("library/{name}") };
                ("docker.io".to_string(), repo)
            }
        };
        if repository.is_empty()
            || !repository
                .split('/')
                .all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)))
        {
            return Err(err("repository names must be lower-case letters, digits and separators"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form Docker prints (`busybox:latest`, `localhost:5000/x:1`).
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == "docker.io" {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_string()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        assert_eq!(ImageRef::parse("bb:1").unwrap().to_string(), "docker.io/library/bb:1");
        assert_eq!(ImageRef::parse("busybox").unwrap().to_string(), "docker.io/library/busybox:latest");
        assert_eq!(ImageRef::parse("me/app").unwrap().to_string(), "docker.io/me/app:latest");
        assert_eq!(ImageRef::parse("localhost:5000/a/b:2").unwrap().to_string(), "localhost:5000/a/b:2");
        assert_eq!(ImageRef::parse("localhost:5000/a/b:2").unwrap().familiar(), "localhost:5000/a/b:2");
        assert_eq!(ImageRef::parse("busybox").unwrap().familiar(), "busybox:latest");
        assert!(ImageRef::parse("UPPER").is_err());
        assert!(ImageRef::parse("a:").is_err());
    }
}
