//! Local sources (`local://NAME`): a directory the caller names (the build context). The
//! source itself keys nothing; the ops that read it key the content of what they read.

use super::{ExecCx, KeyCx, LocalContent, OpError, Output, SolverOp};
use crate::SolveError;
use rdock_llb::SourceOp;
use rdock_llb::patterns::PatternMatcher;
use std::path::PathBuf;

pub(crate) struct LocalOp<'a> {
    name: &'a str,
    /// `.dockerignore` and the like: never read, never keyed.
    excludes: Vec<String>,
}

impl<'a> LocalOp<'a> {
    pub(crate) fn new(src: &'a SourceOp, name: &'a str) -> Result<LocalOp<'a>, SolveError> {
        Ok(LocalOp { name, excludes: src.patterns("local.excludepatterns")? })
    }

    fn dir<'e>(&self, cx: &crate::ops::Env<'e>) -> Result<&'e PathBuf, SolveError> {
        cx.req.locals.get(self.name).ok_or_else(|| SolveError::Context(format!("no directory given for local source {:?}", self.name)))
    }
}

impl SolverOp for LocalOp<'_> {
    fn cache_map(&self, cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        let dir = self.dir(cx.env)?.clone();
        let excludes = PatternMatcher::new(&self.excludes)?;
        if !cx.file_caches.contains_key(&dir) {
            let cache = crate::statcache::FileHashCache::load(cx.env.worker.store(), &dir)?;
            cx.file_caches.insert(dir.clone(), cache);
        }
        Ok(Some(LocalContent { dir, excludes }))
    }

    fn exec(&self, cx: &ExecCx<'_>, _inputs: &[Output], _log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        Ok(Output::Local { dir: self.dir(cx.env)?.clone(), excludes: self.excludes.clone() })
    }
}
