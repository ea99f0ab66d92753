//! Download sources (`https://…`): fetched with every other remote source at once, before
//! keys are computed, and keyed by what they returned, so a changed file reruns what
//! depends on it and an unchanged one does not.

use super::{Env, ExecCx, KeyCx, LocalContent, OpError, Output, SolverOp};
use crate::SolveError;
use rdock_llb::SourceOp;
use rdock_snapshotter::SnapshotName;
use rdock_worker::http::Fetched;
use std::sync::OnceLock;

pub(crate) struct HttpOp<'a> {
    src: &'a SourceOp,
    url: &'a str,
    fetched: OnceLock<Fetched>,
}

impl<'a> HttpOp<'a> {
    pub(crate) fn new(src: &'a SourceOp, url: &'a str) -> HttpOp<'a> {
        HttpOp { src, url, fetched: OnceLock::new() }
    }

    fn fetched(&self) -> Result<&Fetched, SolveError> {
        self.fetched.get().ok_or_else(|| SolveError::Definition("an http source was not fetched".into()))
    }
}

impl SolverOp for HttpOp<'_> {
    fn is_remote(&self) -> bool {
        true
    }

    fn resolve(&self, env: &Env<'_>) -> Result<(), SolveError> {
        let f = rdock_worker::http::fetch(self.url, self.src.attr("http.checksum"), env.worker.store().content())
            .map_err(|source| SolveError::Source { what: format!("downloading {}", self.url), source })?;
        let _ = self.fetched.set(f);
        Ok(())
    }

    fn cache_map(&self, cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        let f = self.fetched()?;
        cx.hasher.update(f.digest.as_str().as_bytes());
        cx.info.resolved = Some(f.digest.to_string());
        cx.hasher.update(&f.mtime.unwrap_or(0).to_le_bytes());
        Ok(None)
    }

    fn exec(&self, cx: &ExecCx<'_>, _inputs: &[Output], _log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        let name = cx
            .env
            .worker
            .http_snapshot(self.fetched()?, self.src.attr("http.filename").unwrap_or("__unnamed__"))
            .map_err(|source| SolveError::Source { what: self.src.identifier.clone(), source })?;
        Ok(Output::Snapshot(Some(SnapshotName::new(name))))
    }
}
