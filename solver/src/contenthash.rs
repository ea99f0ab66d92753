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
use rdock_worker::fileop::{excluded, expand_sources};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    let sources = expand_sources(&src, copy).map_err(|e| match e {
        rdock_worker::WorkerError::SourceNotFound(p) => SolveError::source_not_found(p),
        e => SolveError::ContextPath(e),
    })?;
    for (_, found) in sources {
        for rel in found {
            let p = if rel == "." {
                dir.to_path_buf()
            } else {
                rdock_worker::resolve_in_root(dir, &rel, true).map_err(SolveError::ContextPath)?
            };
            if rel != "." && excluded(&src, &rel) {
                return Err(SolveError::source_not_found(format!("{rel} (excluded by .dockerignore)")));
            }
            let md = std::fs::symlink_metadata(&p).map_err(|_| SolveError::source_not_found(rel.clone()))?;
            h.update(b"src\0");
            h.update(rel.as_bytes());
            h.update(b"\0");
            hash_entry(h, files, &rel, &p, &md, seen)?;
            if md.is_dir() {
                let base = if rel == "." { String::new() } else { rel.clone() };
                let mut entries = Vec::new();
                for e in walkdir::WalkDir::new(&p).min_depth(1).sort_by_file_name() {
                    let e = e.map_err(|e| SolveError::ContextRead(e.into()))?;
                    let r = e.path().strip_prefix(dir).unwrap_or(e.path()).to_string_lossy().into_owned();
                    let in_copy = r.strip_prefix(&base).unwrap_or(&r).trim_start_matches('/').to_string();
                    if excluded(&src, &r) || (!copy_excludes.is_empty() && copy_excludes.matches(&in_copy)) {
                        continue;
                    }
                    let md = e.metadata().map_err(|e| SolveError::ContextRead(e.into()))?;
                    entries.push(Walked { rel: r, in_copy, path: e.path().to_path_buf(), md });
                }
                let digests = file_digests(files, &entries)?;
                for (e, d) in entries.iter().zip(digests) {
                    h.update(e.in_copy.as_bytes());
                    h.update(b"\0");
                    hash_entry_with(h, &e.rel, &e.path, &e.md, d, seen)?;
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
    let digest = if md.is_file() { Some(files.digest(rel, p, md)?) } else { None };
    hash_entry_with(h, rel, p, md, digest, seen)
}

/// A context entry a copy reads: its path in the context and in the copy, and its stat.
struct Walked {
    rel: String,
    in_copy: String,
    path: PathBuf,
    md: std::fs::Metadata,
}

/// The content digests of the regular files among `entries` (None for the rest), read on
/// every core: a cold context is mostly reading and hashing.
fn file_digests(files: &FileHashCache, entries: &[Walked]) -> Result<Vec<Option<[u8; 32]>>, SolveError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(entries.len().max(1));
    let chunk = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<Vec<Option<[u8; 32]>>, SolveError> {
                    part.iter().map(|e| if e.md.is_file() { files.digest(&e.rel, &e.path, &e.md).map(Some) } else { Ok(None) }).collect()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for p in parts {
            let part = p.join().map_err(|_| SolveError::Context("a hashing thread panicked".into()))??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// [`hash_entry`] with the file's digest already known.
fn hash_entry_with(
    h: &mut blake3::Hasher,
    rel: &str,
    p: &Path,
    md: &std::fs::Metadata,
    digest: Option<[u8; 32]>,
    seen: &mut BTreeMap<String, FileNote>,
) -> Result<(), SolveError> {
    h.update(&md.mode().to_le_bytes());
    let ft = md.file_type();
    let content = if let (true, Some(d)) = (ft.is_file(), digest) {
        h.update(&md.len().to_le_bytes());
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
