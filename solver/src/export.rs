//! Cache export: the records of a finished solve, with their layer chains, for
//! `--export-cache`.

use crate::SolveError;
use crate::Solver;
use crate::key::CacheKey;
use crate::remote::{CacheExport, CacheLayer, CacheMode, ExportBuilder, ImportedCache};
use crate::request::SolveOutput;
use rdock_snapshotter::{Compression, Form, LayerInfo, SnapshotName};

/// How many blobs an export compresses or fetches at once.
const FETCH_THREADS: usize = 6;

impl Solver {
    /// The cache export of a finished solve: records for its steps (`mode=min`: those
    /// whose result is part of the output; `mode=max`: all), taken from the local cache or,
    /// for steps that were hits in `imports` and never unpacked, from there (their blobs
    /// are fetched: the export needs them). With `mounts`, the build's cache mounts too.
    pub fn export_cache(
        &self,
        out: &SolveOutput,
        mode: CacheMode,
        mounts: bool,
        imports: &[ImportedCache],
    ) -> Result<CacheExport, SolveError> {
        let snaps = self.worker.store().snapshots();
        let layers = self.worker.store().layers();
        let content = self.worker.store().content();
        let top: Vec<rdock_imagespec::Digest> = match &out.top {
            Some(t) => layers.chain_layers(t)?.into_iter().map(|l| l.diff_id).collect(),
            None => Vec::new(),
        };
        let mut seen = std::collections::HashSet::new();
        let mut local: Vec<(CacheKey, SnapshotName)> = Vec::new();
        let mut remote: Vec<(CacheKey, Vec<CacheLayer>, &ImportedCache)> = Vec::new();
        for key in &out.keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(snap) = self.cache.get(key)? {
                local.push((key.clone(), snap));
            } else if let Some((c, chain)) = imports.iter().find_map(|c| c.lookup(key.as_str()).map(|ch| (c, ch.to_vec()))) {
                remote.push((key.clone(), chain, c));
            }
        }
        // Every snapshot of every chain gets its layer blob and, since what leaves the
        // machine is compressed, a stored tar its gzip form (remembered, so `shipped` below
        // finds it made), in parallel.
        let mut chain_names: Vec<String> = Vec::new();
        let mut named = std::collections::HashSet::new();
        for (_, snap) in &local {
            for info in snaps.chain(snap)? {
                if named.insert(info.key.clone()) {
                    chain_names.push(info.key);
                }
            }
        }
        rdock_oci::parallel(&chain_names, FETCH_THREADS, |n| {
            let l = layers.layer(n)?;
            if l.media_type == rdock_imagespec::MEDIA_TYPE_OCI_LAYER {
                self.worker.store().compressor().compressed(&l.blob, gzip())?;
            }
            Ok(())
        })?;
        let in_output = |chain: &[CacheLayer]| chain.len() <= top.len() && chain.iter().zip(&top).all(|(a, b)| a.diff_id == *b);
        let mut b = ExportBuilder::default();
        for (key, snap) in &local {
            let chain: Vec<CacheLayer> = layers.chain_layers(snap)?.into_iter().map(|l| self.shipped(l)).collect::<Result<_, _>>()?;
            if mode == CacheMode::Max || in_output(&chain) {
                b.record(key.as_str(), &chain);
            }
        }
        for (key, chain, c) in &remote {
            if mode == CacheMode::Max || in_output(chain) {
                rdock_oci::parallel(chain, FETCH_THREADS, |l| c.source().fetch(&l.blob, content))?;
                b.record(key.as_str(), chain);
            }
        }
        if mounts {
            let root = self.worker.store().root().join("cache");
            for id in &out.cache_mounts {
                let dir = rdock_worker::cachemount::dir(&root, id);
                if dir.is_dir() {
                    let lb = rdock_snapshotter::write_layer(&dir, content)?;
                    let (blob, size) = self.worker.store().compressor().compressed(&lb.diff_id, gzip())?;
                    let layer = CacheLayer {
                        blob: rdock_imagespec::Descriptor::new(rdock_imagespec::MEDIA_TYPE_OCI_LAYER_GZIP, blob, size),
                        diff_id: lb.diff_id,
                    };
                    b.mount(id, &layer);
                }
            }
        }
        b.finish(content)
    }

    /// A stored layer as a cache export carries it: gzip in place of an uncompressed tar
    /// (remembered, so usually already made), anything else as it is.
    fn shipped(&self, l: LayerInfo) -> Result<CacheLayer, SolveError> {
        let blob = if l.media_type == rdock_imagespec::MEDIA_TYPE_OCI_LAYER {
            let (d, size) = self.worker.store().compressor().compressed(&l.blob, gzip())?;
            rdock_imagespec::Descriptor::new(rdock_imagespec::MEDIA_TYPE_OCI_LAYER_GZIP, d, size)
        } else {
            rdock_imagespec::Descriptor::new(&l.media_type, l.blob, l.size)
        };
        Ok(CacheLayer { blob, diff_id: l.diff_id })
    }
}

/// The form cache layers travel in: gzip at its default level, as BuildKit's cache exports.
fn gzip() -> Form {
    Form::new(Compression::Gzip, None)
}
