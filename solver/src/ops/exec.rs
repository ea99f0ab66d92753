//! Exec steps (RUN): keyed by their encoding and, for bind mounts of the build context,
//! the content they show; run by the worker in a sandbox under a parallelism slot.

use super::{ExecCx, KeyCx, LocalContent, OpError, Output, SolverOp, local_input};
use crate::SolveError;
use rdock_llb::{ExecOp, MountKind, Node, OpMetadata};
use rdock_snapshotter::SnapshotName;
use rdock_worker::{FileInput, WorkerError, cachemount};

pub(crate) struct ExecStep<'a> {
    op: &'a ExecOp,
    node: &'a Node,
}

impl<'a> ExecStep<'a> {
    pub(crate) fn new(op: &'a ExecOp, node: &'a Node) -> ExecStep<'a> {
        ExecStep { op, node }
    }

    /// Creates the caches the step mounts (`RUN --mount=type=cache`) that exist only in an
    /// imported cache export.
    fn import_cache_mounts(&self, cx: &ExecCx<'_>) -> Result<(), SolveError> {
        let store = cx.env.worker.store();
        let root = store.root().join("cache");
        for m in &self.op.mounts {
            let MountKind::Cache { id, mode, uid, gid, .. } = &m.kind else { continue };
            let id = &cachemount::key(id, *mode, *uid, *gid);
            if cachemount::dir(&root, id).is_dir() {
                continue;
            }
            if let Some((c, desc)) = cx.env.req.imports.iter().find_map(|c| c.mount(id).map(|d| (c, d))) {
                c.source().fetch(desc, store.content())?;
                let mut tar = store.content().open_uncompressed(&desc.digest)?;
                cachemount::import(&root, id, &mut tar)
                    .map_err(|source| SolveError::Source { what: format!("cache mount {id} from the imported cache"), source })?;
            }
        }
        Ok(())
    }
}

impl SolverOp for ExecStep<'_> {
    /// A bind mount of the context makes the step depend on what it shows.
    fn cache_map(&self, cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        cx.info.env = self.op.env.clone();
        for m in &self.op.mounts {
            let (MountKind::Bind, Some(ix)) = (&m.kind, m.input) else { continue };
            if ix as usize >= self.node.inputs.len() {
                continue;
            }
            if let Some((local, files)) = local_input(cx.inputs.as_slice(), cx.file_caches, ix as usize) {
                crate::contenthash::hash_mount_source(cx.hasher, &local.dir, files, &local.excludes, &m.selector, &mut cx.info.files)?;
            }
        }
        Ok(None)
    }

    fn is_step(&self) -> bool {
        true
    }

    fn exec(&self, cx: &ExecCx<'_>, inputs: &[Output], log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        self.import_cache_mounts(cx)?;
        let inputs: Vec<FileInput> = inputs.iter().map(Output::file_input).collect();
        let with_proxy;
        let op = if cx.meta.proxy_env.is_empty() {
            self.op
        } else {
            // Proxies reach the process but not the op: they never change its key.
            let mut op = self.op.clone();
            op.env.extend(cx.meta.proxy_env.iter().cloned());
            with_proxy = op;
            &with_proxy
        };
        cx.env.worker.exec(op, &inputs, cx.env.req.secrets, cx.snapshot, log).map_err(OpError::Worker)?;
        Ok(Output::Snapshot(Some(SnapshotName::new(cx.snapshot))))
    }

    /// A step that failed to resolve a host name is told which network it had.
    fn failure_note(&self, err: &WorkerError, tail: &[String], meta: &OpMetadata) -> Option<String> {
        let failed_lookup = matches!(err, WorkerError::ExitCode { .. }) && tail.iter().any(|l| crate::hints::name_resolution_failed(l));
        failed_lookup.then(|| crate::hints::network_note(self.op.network, meta.network_origin.as_deref()))
    }
}
