//! Remote cache: the build cache of one machine as an OCI artifact another machine imports.
//!
//! An export is an OCI image manifest whose config (media type [`CACHE_CONFIG_MEDIA_TYPE`])
//! maps cache keys to chains of layers, and whose layers are those blobs: the same gzip
//! layers the steps' snapshots commit to, so exporting recompresses nothing and an image
//! built from the cache shares its blobs. A record is a whole chain, bottom first, because
//! a step's result is its parent's filesystem plus its own diff: importing a hit unpacks
//! the chain's snapshots by chain ID, sharing them with base images that have those layers.
//!
//! Keys are the solver's own (blake3 over the op, its inputs' keys and the content of the
//! build-context files it reads), so a record only ever matches the same step on the same
//! inputs: a different Dockerfile cannot get a wrong hit.
//!
//! `mode=min` exports the records whose result is part of the build's output (the output
//! image's chain); `mode=max` every step's. With `cache-mounts=true` the build's
//! `RUN --mount=type=cache` directories go too, one layer each.

use crate::SolveError;
use rdock_imagespec::{Descriptor, Digest, MEDIA_TYPE_OCI_MANIFEST, Manifest};
use rdock_oci::BlobSource;
use std::collections::HashMap;
use std::sync::Arc;

/// The media type of a cache export's config.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.rdock.cache.config.v1+json";

/// Which records an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps whose results make up the output.
    Min,
    /// Every step, intermediate stages too.
    Max,
}

/// The config document of an export.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheConfig {
    /// Format version (1).
    pub version: u32,
    /// Each of the manifest's layers' diff ID, by position.
    pub diff_ids: Vec<Digest>,
    /// Key → chain.
    pub records: Vec<CacheRecord>,
    /// Cache mounts.
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
}

/// One cached step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CacheRecord {
    /// The step's cache key.
    pub key: String,
    /// Its result's chain, bottom first, as positions in the manifest's layers.
    pub layers: Vec<usize>,
}

/// One `RUN --mount=type=cache` directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// The cache's id.
    pub id: String,
    /// Its contents, as a position in the manifest's layers.
    pub layer: usize,
}

/// One layer of a chain: the blob to fetch and what it must unpack to.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheLayer {
    /// The (compressed) blob.
    pub blob: Descriptor,
    /// The sha256 of its uncompressed tar.
    pub diff_id: Digest,
}

/// An imported export: records to look keys up in, and where their blobs come from.
pub struct ImportedCache {
    /// Where it came from (`registry 127.0.0.1:5000/cache:main`), for messages.
    pub name: String,
    records: HashMap<String, Vec<CacheLayer>>,
    mounts: HashMap<String, Descriptor>,
    source: Arc<dyn BlobSource>,
}

impl std::fmt::Debug for ImportedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedCache").field("name", &self.name).field("records", &self.records.len()).finish()
    }
}

impl ImportedCache {
    /// Reads an export's manifest and config; blobs are fetched from `source` when a hit
    /// needs them.
    pub fn parse(name: &str, manifest: &[u8], config: &[u8], source: Arc<dyn BlobSource>) -> Result<ImportedCache, SolveError> {
        let bad = |reason: String| SolveError::Definition(format!("cache import {name}: {reason}"));
        let m: Manifest = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest is not valid: {e}")))?;
        if m.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
            return Err(bad(format!("not an rdock cache export (config media type {:?})", m.config.media_type)));
        }
        if Digest::of(config) != m.config.digest {
            return Err(bad(format!("config does not match its digest {}", m.config.digest)));
        }
        let c: CacheConfig = serde_json::from_slice(config).map_err(|e| bad(format!("config is not valid: {e}")))?;
        if c.diff_ids.len() != m.layers.len() {
            return Err(bad(format!("{} layers but {} diff IDs", m.layers.len(), c.diff_ids.len())));
        }
        let layer = |i: usize| -> Result<CacheLayer, SolveError> {
            match (m.layers.get(i), c.diff_ids.get(i)) {
                (Some(b), Some(d)) => Ok(CacheLayer { blob: b.clone(), diff_id: d.clone() }),
                _ => Err(bad(format!("a record names layer {i}, but there are {}", m.layers.len()))),
            }
        };
        let mut records = HashMap::new();
        for r in &c.records {
            records.insert(r.key.clone(), r.layers.iter().map(|&i| layer(i)).collect::<Result<Vec<_>, _>>()?);
        }
        let mut mounts = HashMap::new();
        for mr in &c.mounts {
            mounts.insert(mr.id.clone(), layer(mr.layer)?.blob);
        }
        Ok(ImportedCache { name: name.to_string(), records, mounts, source })
    }

    /// The chain recorded for `key`.
    pub fn lookup(&self, key: &str) -> Option<&[CacheLayer]> {
        self.records.get(key).map(Vec::as_slice)
    }

    /// The blob holding cache mount `id`.
    pub fn mount(&self, id: &str) -> Option<&Descriptor> {
        self.mounts.get(id)
    }

    /// Where blobs come from.
    pub fn source(&self) -> &dyn BlobSource {
        self.source.as_ref()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Collects layers and records into an export's manifest.
#[derive(Default)]
pub(crate) struct ExportBuilder {
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    by_blob: HashMap<Digest, usize>,
    records: Vec<CacheRecord>,
    mounts: Vec<MountRecord>,
}

impl ExportBuilder {
    fn layer(&mut self, l: &CacheLayer) -> usize {
        if let Some(&i) = self.by_blob.get(&l.blob.digest) {
            return i;
        }
        self.layers.push(l.blob.clone());
        self.diff_ids.push(l.diff_id.clone());
        self.by_blob.insert(l.blob.digest.clone(), self.layers.len() - 1);
        self.layers.len() - 1
    }

    pub(crate) fn record(&mut self, key: &str, chain: &[CacheLayer]) {
        let layers = chain.iter().map(|l| self.layer(l)).collect();
        self.records.push(CacheRecord { key: key.to_string(), layers });
    }

    pub(crate) fn mount(&mut self, id: &str, l: &CacheLayer) {
        let layer = self.layer(l);
        self.mounts.push(MountRecord { id: id.to_string(), layer });
    }

    /// The config and manifest; the config goes into `content`.
    pub(crate) fn finish(self, content: &rdock_snapshotter::ContentStore) -> Result<CacheExport, SolveError> {
        let config = CacheConfig { version: 1, diff_ids: self.diff_ids, records: self.records, mounts: self.mounts };
        let bytes = serde_json::to_vec(&config)?;
        let d = content.put(&bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_string()),
            config: Descriptor::new(CACHE_CONFIG_MEDIA_TYPE, d, bytes.len() as u64),
            layers: self.layers,
            annotations: Default::default(),
        };
        Ok(CacheExport { records: config.records.len(), mounts: config.mounts.len(), manifest: manifest.to_json() })
    }
}

/// An export ready to be written: its manifest (config and layers are in the store).
#[derive(Debug, Clone)]
pub struct CacheExport {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// How many step records it holds.
    pub records: usize,
    /// How many cache mounts.
    pub mounts: usize,
}
