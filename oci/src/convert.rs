//! What an exporter's `--output` keys ask of the layers and the manifest: another
//! compression (`compression=gzip|zstd|uncompressed`, `compression-level`,
//! `force-compression`), docker or OCI media types (`oci-mediatypes`) and manifest
//! annotations (`annotation.*`), as BuildKit's image exporters take them.
//!
//! The stored image is not changed: a converted manifest and its new blobs are written to
//! the content store beside it, and the exporter writes those. A layer already in the
//! asked compression is kept byte for byte (its digest unchanged) unless
//! `force-compression` is set, so a registry that has it is not sent it again.

use crate::{ImageStore, OciError};
use rdock_imagespec::{Descriptor, Digest, Manifest};
use rdock_snapshotter::Compression;
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The layer and manifest form an export asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportForm {
    /// The layers' compression; None keeps every layer as it is stored (uncompressed base
    /// layers stay so, as `docker save` wrote them).
    pub compression: Option<Compression>,
    /// gzip 0–9, zstd 1–22 (None: gzip 1, zstd 3, as BuildKit's defaults are fast levels).
    pub level: Option<i32>,
    /// Apply `compression` to the base image's layers too, and recompress layers that
    /// already have it.
    pub force: bool,
    /// OCI media types (else docker's v2 schema 2 ones; zstd needs OCI's).
    pub oci_media_types: bool,
    /// Annotations of the manifest.
    pub annotations: BTreeMap<String, String>,
    /// `rewrite-timestamp=true`: clamp the file times of the build's own layers to
    /// `SOURCE_DATE_EPOCH` ([`BuiltOn::epoch`]).
    pub rewrite_timestamp: bool,
}

impl ExportForm {
    /// What rdock stores: gzip layers, OCI media types, no annotations.
    pub fn stored() -> ExportForm {
        ExportForm {
            compression: None,
            level: None,
            force: false,
            oci_media_types: true,
            annotations: BTreeMap::new(),
            rewrite_timestamp: false,
        }
    }
}

fn layer_media_type(c: Compression, oci: bool) -> &'static str {
    match (c, oci) {
        (c, true) => c.media_type(),
        (Compression::None, false) => "application/vnd.docker.image.rootfs.diff.tar",
        (_, false) => rdock_imagespec::MEDIA_TYPE_DOCKER_LAYER_GZIP,
    }
}

/// What the build knows of its image's layers that an export depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltOn {
    /// The base image's diff IDs, bottom first. A layer is the base's while its diff ID is
    /// the base's at the same position: such layers keep their compression unless
    /// `force-compression` (BuildKit's `compression` is for layers the build made), and
    /// `rewrite-timestamp` never touches them.
    pub base_diff_ids: Vec<Digest>,
    /// `SOURCE_DATE_EPOCH`, what `rewrite-timestamp=true` clamps file times to.
    pub epoch: Option<i64>,
}

impl BuiltOn {
    /// How many of `diff_ids` (bottom first) are the base image's own layers.
    fn base_layers(&self, diff_ids: &[Digest]) -> usize {
        diff_ids.iter().zip(&self.base_diff_ids).take_while(|(a, b)| a == b).count()
    }
}

/// The manifest of `manifest` in `form`, stored in the content store; `manifest` itself
/// when nothing changes. With `rewrite-timestamp` and an epoch, the build's own layers
/// have their file times clamped, and the config names their new diff IDs.
pub fn convert_manifest(images: &ImageStore, manifest: &Digest, form: &ExportForm, built: &BuiltOn) -> Result<Digest, OciError> {
    if form.compression == Some(Compression::Zstd) && !form.oci_media_types {
        return Err(OciError::Unsupported("compression=zstd needs OCI media types (oci-mediatypes=true): docker's have no zstd".into()));
    }
    let stored: Manifest = images.manifest(manifest)?;
    let mut m = stored.clone();
    let content = images.store().content();
    let mut config = images.config(&stored)?;
    let base = built.base_layers(&config.rootfs.diff_ids);
    let clamp_to = built.epoch.filter(|_| form.rewrite_timestamp);
    let mut layers = Vec::with_capacity(m.layers.len());
    for (i, l) in m.layers.iter().enumerate() {
        // A foreign layer is not ours to change: its digest is what its URLs serve.
        if l.is_non_distributable() {
            layers.push(l.clone());
            continue;
        }
        let mut head = [0u8; 4];
        let n = content.open(&l.digest)?.read(&mut head).map_err(|e| OciError::Io(content.path(&l.digest), e))?;
        let current = Compression::sniff(&head[..n]);
        let own = i >= base;
        let mut target = if own || form.force { form.compression.unwrap_or(current) } else { current };
        if target == Compression::Zstd && !form.oci_media_types {
            // A zstd base layer in docker media types: docker's have no zstd.
            target = Compression::Gzip;
        }
        let clamped = match clamp_to {
            Some(epoch) if own => {
                let (diff_id, size) = crate::epoch::clamp_stored_layer(content, &l.digest, epoch)?;
                let changed = config.rootfs.diff_ids.get(i) != Some(&diff_id);
                if changed && let Some(d) = config.rootfs.diff_ids.get_mut(i) {
                    *d = diff_id.clone();
                }
                changed.then_some((diff_id, size))
            }
            _ => None,
        };
        let (digest, size) = match clamped {
            Some((d, size)) if target == Compression::None => (d, size),
            Some((d, _)) => recompress(images, &d, target, form.level)?,
            None if current == target && !(form.force && form.compression.is_some()) => (l.digest.clone(), l.size),
            None => recompress(images, &l.digest, target, form.level)?,
        };
        let mut d = Descriptor::new(layer_media_type(target, form.oci_media_types), digest, size);
        d.annotations = l.annotations.clone();
        d.urls = l.urls.clone();
        layers.push(d);
    }
    m.layers = layers;
    if clamp_to.is_some() {
        let bytes = config.to_json();
        let digest = content.put(&bytes)?;
        if digest != m.config.digest {
            m.config = Descriptor::new(&m.config.media_type, digest, bytes.len() as u64);
        }
    }
    m.media_type = Some(
        if form.oci_media_types { rdock_imagespec::MEDIA_TYPE_OCI_MANIFEST } else { rdock_imagespec::MEDIA_TYPE_DOCKER_MANIFEST }
            .to_string(),
    );
    m.config.media_type =
        if form.oci_media_types { rdock_imagespec::MEDIA_TYPE_OCI_CONFIG } else { rdock_imagespec::MEDIA_TYPE_DOCKER_CONFIG }.to_string();
    m.annotations.extend(form.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Nothing asked for changes the document: the stored bytes, and its digest, stand
    // (the one `--metadata-file` and a push report).
    let unchanged = Manifest { media_type: stored.media_type.clone().or(m.media_type.clone()), ..stored.clone() };
    if m == unchanged {
        return Ok(manifest.clone());
    }
    Ok(content.put(&m.to_json())?)
}

/// The layer `digest` uncompressed and compressed again as `form` asks, into the store.
fn recompress(images: &ImageStore, digest: &Digest, target: Compression, level: Option<i32>) -> Result<(Digest, u64), OciError> {
    let content = images.store().content();
    let mut src = content.open_uncompressed(digest)?;
    let mut w = content.writer()?;
    let io = |e: std::io::Error| OciError::Io(content.path(digest), e);
    match target {
        Compression::None => {
            std::io::copy(&mut src, &mut w).map_err(io)?;
        }
        Compression::Gzip => {
            let level = level.unwrap_or(1).clamp(0, 9) as u32;
            let mut gz = flate2::write::GzEncoder::new(&mut w, flate2::Compression::new(level));
            std::io::copy(&mut src, &mut gz).map_err(io)?;
            gz.finish().map_err(io)?;
        }
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(&mut w, level.unwrap_or(3).clamp(1, 22)).map_err(io)?;
            // Every core; libzstd's output is the same for any number of workers (≥ 1).
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            z.multithread(threads).map_err(io)?;
            std::io::copy(&mut src, &mut z).map_err(io)?;
            z.finish().map_err(io)?.flush().map_err(io)?;
        }
    }
    Ok(w.commit(None)?)
}
