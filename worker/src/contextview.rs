//! A read-only view of the build context without what `.dockerignore` excludes, for
//! `RUN --mount=type=bind` of the context: an overlay whose top lower layer holds overlay
//! whiteouts for every excluded path, so excluded files are not there at all (as in
//! BuildKit), rather than merely absent from the cache key.

use crate::WorkerError;
use rdock_llb::patterns::PatternMatcher;
use rdock_snapshotter::{MountSpec, Mounted};
use std::path::{Path, PathBuf};

/// The mounted view and its scratch directory, removed when dropped.
pub(crate) struct ContextView {
    mounted: Option<Mounted>,
    scratch: PathBuf,
}

impl ContextView {
    /// Where the filtered context appears.
    pub(crate) fn path(&self) -> &Path {
        self.mounted.as_ref().map(|m| m.path()).unwrap_or(&self.scratch)
    }
}

impl Drop for ContextView {
    fn drop(&mut self) {
        drop(self.mounted.take());
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Builds the whiteout layer for `excludes` over `context` and mounts the view under `scratch`.
pub(crate) fn filtered_context(context: &Path, excludes: &PatternMatcher, scratch: PathBuf) -> Result<ContextView, WorkerError> {
    let wh = scratch.join("whiteouts");
    std::fs::create_dir_all(&wh).map_err(|e| WorkerError::Io(wh.clone(), e))?;
    let mut view = ContextView { mounted: None, scratch: scratch.clone() };
    let mut walker = walkdir::WalkDir::new(context).min_depth(1).follow_links(false).into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.map_err(|e| WorkerError::Io(context.to_path_buf(), e.into()))?;
        let rel = entry.path().strip_prefix(context).unwrap_or(entry.path());
        let rel_s = rel.to_string_lossy();
        if !excludes.matches(&rel_s) {
            continue;
        }
        let is_dir = entry.file_type().is_dir();
        if is_dir && excludes.has_exclusions() {
            // Something below may be re-included: hide entry by entry.
            std::fs::create_dir_all(wh.join(rel)).map_err(|e| WorkerError::Io(wh.join(rel), e))?;
            continue;
        }
        let target = wh.join(rel);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| WorkerError::Io(p.to_path_buf(), e))?;
        }
        nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .map_err(|e| WorkerError::Io(target.clone(), e.into()))?;
        if is_dir {
            walker.skip_current_dir();
        }
    }
    let spec = MountSpec::Overlay { lower: vec![wh, context.to_path_buf()], upper: None, work: None };
    view.mounted = Some(Mounted::new(&spec, scratch.join("mnt"))?);
    Ok(view)
}
