//! File steps (COPY, ADD, WORKDIR's mkdir): keyed by their encoding and, for copies from
//! the build context, the content of exactly what they copy.

use super::{ExecCx, KeyCx, LocalContent, OpError, Output, SolverOp, local_input};
use crate::SolveError;
use rdock_llb::{FileAction, FileOp, Node};
use rdock_snapshotter::SnapshotName;
use rdock_worker::FileInput;

pub(crate) struct FileStep<'a> {
    op: &'a FileOp,
    node: &'a Node,
}

impl<'a> FileStep<'a> {
    pub(crate) fn new(op: &'a FileOp, node: &'a Node) -> FileStep<'a> {
        FileStep { op, node }
    }
}

impl SolverOp for FileStep<'_> {
    fn cache_map(&self, cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        for a in &self.op.actions {
            let FileAction::Copy(c) = a else { continue };
            if c.src_input as usize >= self.node.inputs.len() {
                continue;
            }
            if let Some((local, files)) = local_input(cx.inputs.as_slice(), cx.file_caches, c.src_input as usize) {
                crate::contenthash::hash_copy_sources(cx.hasher, &local.dir, files, &local.excludes, c, &mut cx.info.files)?;
            }
        }
        Ok(None)
    }

    fn is_step(&self) -> bool {
        true
    }

    fn exec(&self, cx: &ExecCx<'_>, inputs: &[Output], _log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        let inputs: Vec<FileInput> = inputs.iter().map(Output::file_input).collect();
        cx.env.worker.file(self.op, &inputs, cx.snapshot).map_err(OpError::Worker)?;
        Ok(Output::Snapshot(Some(SnapshotName::new(cx.snapshot))))
    }
}
