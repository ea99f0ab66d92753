//! Image sources (`docker-image://REF`): the image's layer chain, fetched lazily from the
//! registry it was resolved on and unpacked once into snapshots shared by every build.

use super::{Env, ExecCx, KeyCx, LocalContent, OpError, Output, SolverOp};
use crate::SolveError;
use rdock_imagespec::ImageRef;
use rdock_llb::Node;
use rdock_snapshotter::SnapshotName;

/// How many layers an image source fetches at once.
const FETCH_THREADS: usize = 6;

pub(crate) struct ImageOp<'a> {
    reference: &'a str,
}

impl<'a> ImageOp<'a> {
    pub(crate) fn new(reference: &'a str) -> ImageOp<'a> {
        ImageOp { reference }
    }
}

impl SolverOp for ImageOp<'_> {
    /// The image's filesystem: the chain ID of its layers' diff IDs, as BuildKit keys an
    /// image (`cacheKeyFromConfig`), not its manifest digest, which changes with the
    /// layers' compression. An image pushed from this store (its tars gzipped) and the
    /// same image pulled elsewhere key alike, so a cache exported on one hits on the other.
    /// An image not in the store, or without layers, keys by its pinned reference.
    fn key_bytes(&self, env: &Env<'_>, node: &Node) -> Vec<u8> {
        let chain = ImageRef::parse(self.reference).ok().and_then(|r| {
            let m = env.images.get(&r).ok()??;
            let config = env.images.config(&env.images.manifest(&m).ok()?).ok()?;
            rdock_oci::chain_snapshot_name(&config.rootfs.diff_ids)
        });
        match chain {
            Some(c) => format!("image-chain:{c}").into_bytes(),
            None => serde_json::to_vec(&node.op).unwrap_or_default(),
        }
    }

    fn cache_map(&self, _cx: &mut KeyCx<'_>) -> Result<Option<LocalContent>, SolveError> {
        Ok(None)
    }

    fn exec(&self, cx: &ExecCx<'_>, _inputs: &[Output], _log: &mut dyn FnMut(&[u8])) -> Result<Output, OpError> {
        let r = ImageRef::parse(self.reference).map_err(rdock_oci::OciError::from)?;
        let images = cx.env.images;
        let m = images.get(&r)?.ok_or_else(|| rdock_oci::OciError::NotFound(r.familiar()))?;
        // Layers left to fetch when first needed download now, each unpacked as it comes.
        let (top, _) = match cx.env.layers {
            Some(source) => rdock_oci::fetch_unpacked_image(images, &m, source, FETCH_THREADS)?,
            None => rdock_oci::ensure_unpacked(images, &m)?,
        };
        Ok(Output::Snapshot(top.map(SnapshotName::new)))
    }
}
