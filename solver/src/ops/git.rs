//! Git sources (`git:URL#ref:subdir`): keyed by the commit the ref names now (resolved
//! with every other remote source at once), checked out into a snapshot per commit.

use super::{Env, ExecCx, KeyCx, LocalContent, OpError, Output, SolverOp};
use crate::SolveError;
use rdock_llb::{GitRef, SourceOp};
use rdock_snapshotter::SnapshotName;
use std::sync::OnceLock;

pub(crate) struct GitOp<'a> {
    src: &'a SourceOp,
    r: GitRef,
    commit: OnceLock<String>,
}

impl<'a> GitOp<'a> {
    pub(crate) fn new(src: &'a SourceOp, r: GitRef) -> GitOp<'a> {
        GitOp { src, r, commit: OnceLock::new() }
    }

    fn commit(&self) -> Result<&str, SolveError> {
        self.commit.get().map(String::as_str).ok_or_else(|| SolveError::Definition("a git source was not resolved".into()))
    }
}

impl SolverOp for GitOp<'_> {
    fn is_remote(&self) -> bool {
        true
    }

    fn resolve(&self, _env: &Env<'_>) -> Result<(), SolveError> {
        let commit = rdock_worker::git::resolve_commit(&self.r)
            .map_err(|source| SolveError::Source { what: format!("git {}", self.r.remote), source })?;
        let _ = self.commit.set(commit);
        Ok(())
    }

    fn cache_map(&self, cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        let commit = self.commit()?;
        cx.hasher.update(commit.as_bytes());
        cx.info.resolved = Some(format!("commit {commit}"));
        Ok(None)
    }

    fn exec(&self, cx: &ExecCx<'_>, _inputs: &[Output], _log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        let commit = self.commit()?;
        let keep = self.src.attr("git.keepgitdir") == Some("true");
        let name = cx
            .env
            .worker
            .git_snapshot(&self.r, commit, keep)
            .map_err(|source| SolveError::Source { what: format!("git {} at {commit}", self.r.remote), source })?;
        Ok(Output::Snapshot(Some(SnapshotName::new(name))))
    }
}
