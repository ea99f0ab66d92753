//! Content hashes of build-context files, the part of a COPY's cache key that depends on
//! the context: exactly the paths the copy will read (wildcards expanded, `.dockerignore`
//! and `--exclude` applied), by path, type, mode and content, never by mtime. Touching a
//! file changes nothing; editing one changes only the copies that read it.

use crate::SolveError;
use crate::explain::{FileContent, FileNote};
use crate::statcache::FileHashCache;
use rdock_llb::CopyAction;
use rdock_llb::patterns::PatternMatcher;
use rdock_worker::CopySource;
use rdock_worker::fileop::{excluded, expand_source};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Hashes the subtree `path` of the context at `dir` that a bind mount shows.
pub fn hash_mount_source(
    h: &mut blake3::Hasher,
    dir: &Path,
    files: &FileHashCache,
    excludes: &PatternMatcher,
    path: &str,
    seen: &mut BTreeMap<String, FileNote>,
) -> Result<(), SolveError> {
    let copy = CopyAction {
        src_input: 0,
        src: vec![if path.is_empty() { "/".to_string() } else { path.to_string() }],
        dest: String::new(),
        chown: None,
        chmod: None,
        allow_wildcard: false,
        allow_empty_wildcard: false,
        unpack_archives: false,
        exclude: Vec::new(),
        parents: false,
    };
    hash_copy_sources(h, dir, files, excludes, &copy, seen)
}

/// Hashes what `copy` reads from the context at `dir` into `h`.
pub fn hash_copy_sources(
    h: &mut blake3::Hasher,
    dir: &Path,
    files: &FileHashCache,
    excludes: &PatternMatcher,
    copy: &CopyAction,
    seen: &mut BTreeMap<String, FileNote>,
) -> Result<(), SolveError> {
    let src = CopySource { root: dir, excludes: Some(excludes), reset_ownership: true };
    let copy_excludes = PatternMatcher::new(&copy.exclude).map_err(|e| SolveError::Context(format!("invalid --exclude pattern: {e}")))?;
    for pattern in &copy.src {
        let found = expand_source(&src, pattern, copy.allow_wildcard).map_err(SolveError::ContextPath)?;
        if found.is_empty() && !copy.allow_empty_wildcard {
            return Err(SolveError::SourceNotFound(pattern.trim_start_matches('/').to_string()));
        }
        for rel in found {
            let p = if rel == "." {
                dir.to_path_buf()
            } else {
                rdock_worker::resolve_in_root(dir, &rel, true).map_err(SolveError::ContextPath)?
            };
            if rel != "." && excluded(&src, &rel) {
                return Err(SolveError::SourceNotFound(format!("{rel} (excluded by .dockerignore)")));
            }
            let md = std::fs::symlink_metadata(&p).map_err(|_| SolveError::SourceNotFound(rel.clone()))?;
            h.update(b"src\0");
            h.update(rel.as_bytes());
            h.update(b"\0");
            hash_entry(h, files, &rel, &p, &md, seen)?;
            if md.is_dir() {
                let base = if rel == "." { String::new() } else { rel.clone() };
                for e in walkdir::WalkDir::new(&p).min_depth(1).sort_by_file_name() {
                    let e = e.map_err(|e| SolveError::ContextRead(e.into()))?;
                    let r = e.path().strip_prefix(dir).unwrap_or(e.path()).to_string_lossy().into_owned();
                    let in_copy = r.strip_prefix(&base).unwrap_or(&r).trim_start_matches('/');
                    if excluded(&src, &r) || (!copy_excludes.is_empty() && copy_excludes.matches(in_copy)) {
                        continue;
                    }
                    let md = e.metadata().map_err(|e| SolveError::ContextRead(e.into()))?;
                    h.update(in_copy.as_bytes());
                    h.update(b"\0");
                    hash_entry(h, files, &r, e.path(), &md, seen)?;
                }
            }
        }
    }
    Ok(())
}

/// Type and mode bits, then a file's size and content digest (from the stat cache when
/// unchanged) or a link's target. What was hashed is also noted in `seen` (path →
/// `mode size digest`), for explaining a cache miss later.
fn hash_entry(
    h: &mut blake3::Hasher,
    files: &FileHashCache,
    rel: &str,
    p: &Path,
    md: &std::fs::Metadata,
    seen: &mut BTreeMap<String, FileNote>,
) -> Result<(), SolveError> {
    h.update(&md.mode().to_le_bytes());
    let ft = md.file_type();
    let content = if ft.is_file() {
        h.update(&md.len().to_le_bytes());
        let d = files.digest(rel, p, md)?;
        h.update(&d);
        let mut prefix = [0u8; 12];
        prefix.copy_from_slice(&d[..12]);
        FileContent::Digest(prefix)
    } else if ft.is_symlink() {
        let t = std::fs::read_link(p).map_err(|e| SolveError::Context(format!("{}: {e}", p.display())))?;
        h.update(t.as_os_str().as_encoded_bytes());
        FileContent::Link(t.to_string_lossy().into_owned())
    } else {
        FileContent::None
    };
    seen.insert(rel.to_string(), FileNote { mode: md.mode(), size: md.len(), content });
    Ok(())
}
