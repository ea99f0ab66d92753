//! Images ↔ snapshots: unpacking an image's layers into a snapshot chain named by chain
//! ID, and committing a snapshot chain plus a config as a new image.

use crate::{ImageStore, OciError};
use rdock_imagespec::{Descriptor, Digest, ImageConfig, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST, Manifest};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// The snapshot name for the chain of `diff_ids` (OCI chain ID), shared by every image
/// with the same layers, so each layer is unpacked once.
pub fn chain_snapshot_name(diff_ids: &[Digest]) -> Option<String> {
    let mut chain: Option<Digest> = None;
    for d in diff_ids {
        chain = Some(match chain {
            None => d.clone(),
            Some(c) => Digest::from_sha256(Sha256::digest(format!("{c} {d}").as_bytes()).into()),
        });
    }
    chain.map(|c| format!("layer-{c}"))
}

/// One layer of a chain to unpack: its blob and the diff ID its image (or cache export)
/// says it has.
#[derive(Debug, Clone, Copy)]
pub struct ChainBlob<'a> {
    /// The compressed (or not) layer blob.
    pub blob: &'a Descriptor,
    /// The digest of its uncompressed tar, as claimed.
    pub diff_id: &'a Digest,
}

/// The snapshot names of a chain, bottom first: one per prefix, by chain ID.
pub(crate) fn chain_names(layers: &[ChainBlob<'_>]) -> Vec<String> {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    chain_names_of(&diff_ids)
}

/// [`chain_names`] from the diff IDs alone.
fn chain_names_of(diff_ids: &[Digest]) -> Vec<String> {
    (0..diff_ids.len()).map(|i| chain_snapshot_name(&diff_ids[..=i]).unwrap_or_default()).collect()
}

/// Unpacks a layer chain into snapshots named by chain ID (each layer once per store,
/// shared by every image and cache record with the same layers), checking that every
/// layer unpacks to the diff ID claimed for it. A layer that does not is removed with
/// everything built on it, and the error says which. Returns the top snapshot (None for
/// no layers). The one place images and imported caches become snapshots.
pub fn unpack_chain(store: &rdock_snapshotter::Store, layers: &[ChainBlob<'_>]) -> Result<Option<String>, OciError> {
    let snaps = store.snapshots();
    let names = chain_names(layers);
    let chain: Vec<rdock_snapshotter::ChainLayer<'_>> = layers
        .iter()
        .zip(&names)
        .map(|(l, n)| rdock_snapshotter::ChainLayer { name: n, blob: &l.blob.digest, media_type: &l.blob.media_type })
        .collect();
    let infos = store.layers().import_chain(&chain, None)?;
    for (i, (info, l)) in infos.iter().zip(layers).enumerate() {
        if info.diff_id != *l.diff_id {
            // Remove the bad layer and what was built on it, top first.
            for n in names[i..].iter().rev() {
                let _ = rdock_snapshotter::Snapshotter::remove(snaps.as_ref(), n);
            }
            return Err(OciError::LayerMismatch {
                layer: l.blob.digest.clone(),
                unpacked: info.diff_id.clone(),
                claimed: l.diff_id.clone(),
            });
        }
    }
    Ok(names.last().cloned())
}

/// Makes sure every layer of the image with manifest `manifest` is unpacked; returns the
/// top snapshot's name (None for an image without layers) and the config.
pub fn ensure_unpacked(images: &ImageStore, manifest: &Digest) -> Result<(Option<String>, ImageConfig), OciError> {
    unpack_image_with(images, manifest, unpack_chain)
}

/// [`ensure_unpacked`], with `unpack` making the chain's snapshots (fetching what the store
/// lacks, say).
pub(crate) fn unpack_image_with(
    images: &ImageStore,
    manifest: &Digest,
    unpack: impl FnOnce(&rdock_snapshotter::Store, &[ChainBlob<'_>]) -> Result<Option<String>, OciError>,
) -> Result<(Option<String>, ImageConfig), OciError> {
    let m = images.manifest(manifest)?;
    let config = images.config(&m)?;
    if m.layers.len() > rdock_imagespec::MAX_LAYERS {
        return Err(OciError::Inconsistent {
            image: manifest.to_string(),
            reason: format!("{} layers, more than the {} one overlay mount can stack", m.layers.len(), rdock_imagespec::MAX_LAYERS),
        });
    }
    if config.rootfs.diff_ids.len() != m.layers.len() {
        return Err(OciError::Inconsistent {
            image: manifest.to_string(),
            reason: format!("{} layers but {} diff_ids in the config", m.layers.len(), config.rootfs.diff_ids.len()),
        });
    }
    let layers: Vec<ChainBlob<'_>> =
        m.layers.iter().zip(&config.rootfs.diff_ids).map(|(blob, diff_id)| ChainBlob { blob, diff_id }).collect();
    let parent = unpack(images.store(), &layers).map_err(|e| match e {
        OciError::LayerMismatch { layer, unpacked, claimed } => unpacked_wrong(manifest, layer, unpacked, claimed),
        e => e,
    })?;
    if let Some(top) = &parent {
        // Garbage collection keeps what was used last.
        images.store().snapshots().touch(top)?;
    }
    Ok((parent, config))
}

/// The error for a layer of image `manifest` that unpacked to another diff ID than its
/// config claims (whether unpacked from the store or while it downloaded).
pub(crate) fn unpacked_wrong(manifest: &Digest, layer: Digest, unpacked: Digest, claimed: Digest) -> OciError {
    OciError::Inconsistent {
        image: manifest.to_string(),
        reason: format!("layer {layer} unpacks to {unpacked}, but the config says {claimed}"),
    }
}

/// An image written to the content store.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedImage {
    /// Manifest digest.
    pub manifest: Digest,
    /// Manifest size.
    pub manifest_size: u64,
    /// Config digest.
    pub config: Digest,
    /// The manifest itself.
    pub manifest_doc: Manifest,
}

impl CommittedImage {
    /// The same image with `annotations` on its manifest (`--annotation`), written to the
    /// store; itself when there are none.
    pub fn annotated(self, images: &ImageStore, annotations: &BTreeMap<String, String>) -> Result<CommittedImage, OciError> {
        if annotations.is_empty() {
            return Ok(self);
        }
        let mut doc = self.manifest_doc;
        doc.annotations.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
        let bytes = doc.to_json();
        let manifest = images.store().content().put(&bytes)?;
        Ok(CommittedImage { manifest, manifest_size: bytes.len() as u64, config: self.config, manifest_doc: doc })
    }
}

/// Writes the image made of the snapshot chain ending at `top` with `config`: fills in
/// the layers' diff IDs and any missing creation times (`created`, RFC 3339).
pub fn commit_image(images: &ImageStore, top: Option<&str>, mut config: ImageConfig, created: &str) -> Result<CommittedImage, OciError> {
    let layers = match top {
        Some(t) => images.store().layers().chain_layers(t)?,
        None => Vec::new(),
    };
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    if config.created.is_none() {
        config.created = Some(created.to_string());
    }
    for h in &mut config.history {
        if h.created.is_none() {
            h.created = Some(created.to_string());
        }
    }
    let non_empty = config.history.iter().filter(|h| !h.empty_layer).count();
    if !config.history.is_empty() && non_empty != layers.len() {
        return Err(OciError::Inconsistent {
            image: top.unwrap_or("scratch").to_string(),
            reason: format!("{} layers but {non_empty} history entries with a layer", layers.len()),
        });
    }
    let config_bytes = config.to_json();
    let content = images.store().content();
    let config_digest = content.put(&config_bytes)?;
    let manifest_doc = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_string()),
        config: Descriptor::new(MEDIA_TYPE_OCI_CONFIG, config_digest.clone(), config_bytes.len() as u64),
        layers: layers.iter().map(|l| Descriptor::new(&l.media_type, l.blob.clone(), l.size)).collect(),
        annotations: Default::default(),
    };
    let manifest_bytes = manifest_doc.to_json();
    let manifest = content.put(&manifest_bytes)?;
    Ok(CommittedImage { manifest, manifest_size: manifest_bytes.len() as u64, config: config_digest, manifest_doc })
}
