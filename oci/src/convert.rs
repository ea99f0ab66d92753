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

/// The layer and manifest form an export asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportForm {
    /// The layers' compression. None: the build's own layers (stored as tars) become gzip,
    /// and the base image's stay as they are (uncompressed ones stay so, as `docker save`
    /// wrote them).
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
    /// Whether the file times of the build's own layers are clamped to
    /// `SOURCE_DATE_EPOCH` ([`BuiltOn::epoch`]).
    pub rewrite_timestamp: RewriteTimestamp,
}

/// Whether the build's own layers have their file times clamped to `SOURCE_DATE_EPOCH`
/// (BuildKit's `rewrite-timestamp`). BuildKit clamps only when asked; rdock clamps whenever
/// an epoch is set, so that pinning `SOURCE_DATE_EPOCH` is all a reproducible image takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RewriteTimestamp {
    /// Nothing said: clamped when `SOURCE_DATE_EPOCH` is set.
    #[default]
    WithEpoch,
    /// `rewrite-timestamp=true`: as `WithEpoch`, and asking without an epoch is warned of.
    Asked,
    /// `rewrite-timestamp=false`: the times as built.
    Off,
}

impl RewriteTimestamp {
    /// From the output option's value, absent (None) or given.
    pub fn from_flag(v: Option<bool>) -> RewriteTimestamp {
        match v {
            None => RewriteTimestamp::WithEpoch,
            Some(true) => RewriteTimestamp::Asked,
            Some(false) => RewriteTimestamp::Off,
        }
    }

    /// Whether times are clamped when there is an epoch.
    pub fn clamps(self) -> bool {
        self != RewriteTimestamp::Off
    }
}

impl ExportForm {
    /// No conversion asked for: the build's layers as gzip, OCI media types, no annotations.
    pub fn stored() -> ExportForm {
        ExportForm {
            compression: None,
            level: None,
            force: false,
            oci_media_types: true,
            annotations: BTreeMap::new(),
            rewrite_timestamp: RewriteTimestamp::Off,
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
    let clamp_to = built.epoch.filter(|_| form.rewrite_timestamp.clamps());
    // Layers convert in parallel, two at once (each compressor is itself on every core).
    let indices: Vec<usize> = (0..m.layers.len()).collect();
    let converted = crate::parallel_map(&indices, 2, |&i| {
        let own = i >= base;
        let clamp = clamp_to.filter(|_| own).map(|epoch| (epoch, config.rootfs.diff_ids.get(i)));
        convert_layer(images, &m.layers[i], own, form, clamp)
    })?;
    let mut layers = Vec::with_capacity(m.layers.len());
    for (i, c) in converted.into_iter().enumerate() {
        if let Some(diff_id) = c.diff_id
            && let Some(d) = config.rootfs.diff_ids.get_mut(i)
        {
            *d = diff_id;
        }
        layers.push(c.layer);
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

/// A layer as an export carries it, and its new diff ID if its file times were clamped.
struct Converted {
    layer: Descriptor,
    diff_id: Option<Digest>,
}

/// Layer `l` in `form`; `own` for the build's own layers (not the base image's); with
/// `clamp`, its file times clamped to the epoch, which counts as a change only if the diff
/// ID differs from the one the config claims.
fn convert_layer(
    images: &ImageStore,
    l: &Descriptor,
    own: bool,
    form: &ExportForm,
    clamp: Option<(i64, Option<&Digest>)>,
) -> Result<Converted, OciError> {
    // A foreign layer is not ours to change: its digest is what its URLs serve.
    if l.is_non_distributable() {
        return Ok(Converted { layer: l.clone(), diff_id: None });
    }
    let content = images.store().content();
    let current = content.compression(&l.digest)?;
    // A layer the build made is stored as a tar and leaves as gzip unless asked otherwise,
    // as BuildKit's layers do.
    let default = if current == Compression::None { Compression::Gzip } else { current };
    let mut target = if own || form.force { form.compression.unwrap_or(default) } else { current };
    if target == Compression::Zstd && !form.oci_media_types {
        // A zstd base layer in docker media types: docker's have no zstd.
        target = Compression::Gzip;
    }
    let clamped = match clamp {
        Some((epoch, claimed)) => {
            let (diff_id, size) = crate::epoch::clamp_stored_layer(content, &l.digest, epoch)?;
            (claimed != Some(&diff_id)).then_some((diff_id, size))
        }
        None => None,
    };
    let (digest, size) = match &clamped {
        Some((d, size)) if target == Compression::None => (d.clone(), *size),
        Some((d, _)) => recompress(images, d, target, form.level)?,
        None if current == target && !(form.force && form.compression.is_some()) => (l.digest.clone(), l.size),
        None => recompress(images, &l.digest, target, form.level)?,
    };
    let mut layer = Descriptor::new(layer_media_type(target, form.oci_media_types), digest, size);
    layer.annotations = l.annotations.clone();
    layer.urls = l.urls.clone();
    Ok(Converted { layer, diff_id: clamped.map(|(d, _)| d) })
}

/// The layer `digest` uncompressed and compressed again as `form` asks, into the store
/// (made on every core, and remembered: a second export finds it made).
fn recompress(images: &ImageStore, digest: &Digest, target: Compression, level: Option<i32>) -> Result<(Digest, u64), OciError> {
    Ok(images.store().compressor().compressed(digest, rdock_snapshotter::Form::new(target, level))?)
}

/// The manifest `manifest` as it leaves for a registry: each uncompressed layer as gzip
/// (made on every core, or found made before), media types in the manifest's own family;
/// `manifest` itself when every layer is compressed already.
pub fn distributable(images: &ImageStore, manifest: &Digest) -> Result<Digest, OciError> {
    let stored: Manifest = images.manifest(manifest)?;
    let mut m = stored.clone();
    let docker = m.media_type.as_deref() == Some(rdock_imagespec::MEDIA_TYPE_DOCKER_MANIFEST);
    let tars: Vec<usize> = (0..m.layers.len()).filter(|&i| is_tar(&m.layers[i]) && !m.layers[i].is_non_distributable()).collect();
    if tars.is_empty() {
        return Ok(manifest.clone());
    }
    // Two at once: each is itself on every core, and a second keeps them busy between blocks.
    let made = crate::parallel_map(&tars, 2, |&i| recompress(images, &stored.layers[i].digest, Compression::Gzip, None))?;
    for (&i, (digest, size)) in tars.iter().zip(made) {
        let l = &mut m.layers[i];
        l.media_type = layer_media_type(Compression::Gzip, !docker).to_string();
        l.digest = digest;
        l.size = size;
    }
    Ok(images.store().content().put(&m.to_json())?)
}

fn is_tar(l: &Descriptor) -> bool {
    l.media_type == rdock_imagespec::MEDIA_TYPE_OCI_LAYER || l.media_type == "application/vnd.docker.image.rootfs.diff.tar"
}

/// `index` (JSON) with each `(old, new, size)` manifest descriptor pointing at `new`.
pub fn replace_in_index(index: &[u8], replaced: &[(Digest, Digest, u64)]) -> Result<Vec<u8>, OciError> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(index).map_err(|source| OciError::Json { what: "image index".into(), source })?;
    if let Some(ms) = doc.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        for m in ms {
            let Some((_, new, size)) = replaced.iter().find(|(old, _, _)| m.get("digest").and_then(|d| d.as_str()) == Some(old.as_str()))
            else {
                continue;
            };
            m["digest"] = serde_json::Value::String(new.to_string());
            m["size"] = serde_json::Value::from(*size);
        }
    }
    Ok(serde_json::to_vec(&doc).unwrap_or_default())
}
