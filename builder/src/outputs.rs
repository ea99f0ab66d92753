//! Outputs: the solved snapshot committed as an image when one is wanted, then written
//! where each output says (archives, directories, the store and registries), and the
//! `--metadata-file` that reports it.

use crate::{BuildError, Output, Pipeline};
use rdock_imagespec::{Descriptor, Digest, ImageRef};
use rdock_oci::{ArchiveFormat, BuiltOn, CommittedImage, ExportForm, ImageStore};
use std::path::Path;

/// What the outputs made: the image reported (the stored one, or its rewritten form) and
/// the names it was given.
#[derive(Default)]
pub(crate) struct Written {
    pub image: Option<CommittedImage>,
    pub names: Vec<ImageRef>,
    /// The manifest as the first output that sends it away wrote it (an export, a push):
    /// the stored one keeps its layers as tars, this one has them compressed.
    pub shipped: Option<Shipped>,
}

/// A manifest (or a multi-platform index) as it left the machine, and the manifest's
/// config's digest (an index has none).
#[derive(Clone)]
pub(crate) struct Shipped {
    pub manifest: Descriptor,
    pub config: Option<Digest>,
}

/// How the image of this build is made: its config, times and base.
pub(crate) struct ImagePlan<'a> {
    pub config: &'a rdock_imagespec::ImageConfig,
    /// RFC 3339 creation time.
    pub created: String,
    pub built: BuiltOn,
    /// `--annotation`s of the manifest.
    pub annotations: &'a std::collections::BTreeMap<String, String>,
}

impl Pipeline {
    /// Writes every output of a solve whose result is `top`.
    pub(crate) fn write_outputs(&self, outputs: &[Output], top: Option<&str>, plan: &ImagePlan<'_>) -> Result<Written, BuildError> {
        let mut committed = None;
        let mut written = Written::default();
        for o in outputs {
            if o.needs_image() && committed.is_none() {
                let c = rdock_oci::commit_image(&self.images, top, plan.config.clone(), &plan.created)?;
                committed = Some(c.annotated(&self.images, plan.annotations)?);
            }
            match (o, &committed) {
                (Output::Docker { dest, names, form }, Some(c)) => {
                    let m = self.export_image(c, form, &plan.built, dest, |m| {
                        rdock_oci::export_archive(&self.images, m, names, ArchiveFormat::Docker, dest)
                    })?;
                    self.shipped(&mut written, &m)?;
                    written.names.extend(names.iter().cloned());
                }
                (Output::Oci { dest, names, form, tar }, Some(c)) => {
                    let m = self.export_image(c, form, &plan.built, dest, |m| match tar {
                        true => rdock_oci::export_archive(&self.images, m, names, ArchiveFormat::Oci, dest),
                        false => rdock_oci::export_layout_dir(&self.images, m, names, dest),
                    })?;
                    self.shipped(&mut written, &m)?;
                    written.names.extend(names.iter().cloned());
                }
                (Output::Image { names, push, rewrite_timestamp, .. }, Some(c)) => {
                    let (image, pushed) = self.store_image(c, names, *push, *rewrite_timestamp, &plan.built)?;
                    written.image = Some(image);
                    if let Some(d) = pushed {
                        self.shipped(&mut written, &d)?;
                    }
                    written.names.extend(names.iter().cloned());
                }
                (Output::Local { dest }, _) => rdock_oci::export_local(&self.store, top, dest).map_err(|e| exporting(dest, e))?,
                (Output::Tar { dest }, _) => rdock_oci::export_tar(&self.store, top, dest).map_err(|e| exporting(dest, e))?,
                (_, None) => {}
            }
        }
        written.image = written.image.or(committed);
        Ok(written)
    }

    /// Records `manifest` as the shipped one unless an earlier output was.
    fn shipped(&self, written: &mut Written, manifest: &Digest) -> Result<(), BuildError> {
        if written.shipped.is_none() {
            let bytes = self.images.store().content().read(manifest)?;
            let m: rdock_imagespec::Manifest = serde_json::from_slice(&bytes)?;
            let media = m.media_type.unwrap_or_else(|| rdock_imagespec::MEDIA_TYPE_OCI_MANIFEST.to_string());
            let manifest = Descriptor::new(&media, manifest.clone(), bytes.len() as u64);
            written.shipped = Some(Shipped { manifest, config: Some(m.config.digest) });
        }
        Ok(())
    }

    /// An image archive of `c` in `form`, written by `write`; the manifest written.
    fn export_image(
        &self,
        c: &CommittedImage,
        form: &ExportForm,
        built: &BuiltOn,
        dest: &Path,
        write: impl FnOnce(&rdock_imagespec::Digest) -> Result<(), rdock_oci::OciError>,
    ) -> Result<Digest, BuildError> {
        self.warn_without_epoch(form.rewrite_timestamp, built);
        let manifest = rdock_oci::convert_manifest(&self.images, &c.manifest, form, built).map_err(|e| exporting(dest, e))?;
        write(&manifest).map_err(|e| exporting(dest, e))?;
        Ok(manifest)
    }

    /// Tags (and pushes) the image, rewritten first when asked; with the digest pushed.
    fn store_image(
        &self,
        c: &CommittedImage,
        names: &[ImageRef],
        push: bool,
        rewrite_timestamp: rdock_oci::RewriteTimestamp,
        built: &BuiltOn,
    ) -> Result<(CommittedImage, Option<Digest>), BuildError> {
        self.warn_without_epoch(rewrite_timestamp, built);
        let c = if rewrite_timestamp.clamps() && built.epoch.is_some() { rewritten(&self.images, c, built)? } else { c.clone() };
        let mut pushed = None;
        if names.is_empty() {
            self.images.keep_untagged(&c.manifest)?;
        }
        for n in names {
            self.images.tag(n, &c.manifest)?;
            if push {
                pushed.get_or_insert(self.push(n, &c.manifest)?);
            }
        }
        Ok((c, pushed))
    }

    /// Pushes the local image `d` as `r`; the digest pushed.
    pub(crate) fn push(&self, r: &ImageRef, d: &rdock_imagespec::Digest) -> Result<Digest, BuildError> {
        let started = std::time::Instant::now();
        let report = rdock_oci::push(&self.images, &self.client, r, d, &self.transfers)
            .map_err(|source| BuildError::Push { name: r.familiar(), source })?;
        self.notices.done(&report.summary(r, started.elapsed()));
        Ok(report.digest)
    }

    /// BuildKit's warning for `rewrite-timestamp=true` without an epoch to clamp to.
    fn warn_without_epoch(&self, rewrite: rdock_oci::RewriteTimestamp, built: &BuiltOn) {
        if rewrite == rdock_oci::RewriteTimestamp::Asked && built.epoch.is_none() {
            self.notices
                .warning("rewrite-timestamp=true without SOURCE_DATE_EPOCH (environment or --build-arg): file times are left as built");
        }
    }
}

fn exporting(dest: &Path, source: rdock_oci::OciError) -> BuildError {
    BuildError::Export { dest: dest.to_path_buf(), source }
}

/// The committed image with its own layers' times clamped, written to the store.
fn rewritten(images: &ImageStore, c: &CommittedImage, built: &BuiltOn) -> Result<CommittedImage, BuildError> {
    // Stored, so kept as tars: compressing is for what leaves the machine.
    let form = ExportForm {
        rewrite_timestamp: rdock_oci::RewriteTimestamp::WithEpoch,
        compression: Some(rdock_snapshotter::Compression::None),
        ..ExportForm::stored()
    };
    let manifest = rdock_oci::convert_manifest(images, &c.manifest, &form, built)?;
    let bytes = images.store().content().read(&manifest)?;
    let manifest_doc: rdock_imagespec::Manifest = serde_json::from_slice(&bytes)?;
    Ok(CommittedImage { manifest, manifest_size: bytes.len() as u64, config: manifest_doc.config.digest.clone(), manifest_doc })
}

/// buildx's `--metadata-file`: the image's digests and names.
/// A build's reference: 25 hex digits (buildx's are 25 of [a-z0-9]), unique per build
/// (from the process, the time and a counter).
fn build_ref() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{}-{nanos}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    Digest::of(seed.as_bytes()).hex()[..25].to_string()
}

pub(crate) fn write_metadata(path: &Path, written: &Written) -> Result<(), BuildError> {
    let mut doc = serde_json::Map::new();
    // What left the machine, as BuildKit reports it; else the stored manifest.
    let stored = written.image.as_ref().map(|c| Shipped {
        manifest: Descriptor::new(rdock_imagespec::MEDIA_TYPE_OCI_MANIFEST, c.manifest.clone(), c.manifest_size),
        config: Some(c.config.clone()),
    });
    if let Some(Shipped { manifest: d, config }) = written.shipped.clone().or(stored) {
        doc.insert("containerimage.digest".into(), d.digest.to_string().into());
        if let Some(config) = config {
            doc.insert("containerimage.config.digest".into(), config.to_string().into());
        }
        doc.insert("containerimage.descriptor".into(), serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size}));
    }
    // Each name once, though several outputs wrote it (a tag and a push, say).
    let mut names: Vec<String> = Vec::new();
    for n in written.names.iter().map(|n| n.to_string()) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if !names.is_empty() {
        doc.insert("image.name".into(), names.join(",").into());
    }
    // buildx's `builder/node/ref` of the build, which scripts read to tell builds apart.
    doc.insert("buildx.build.ref".into(), format!("rdock/local/{}", build_ref()).into());
    let bytes = serde_json::to_vec_pretty(&doc)?;
    std::fs::write(path, bytes).map_err(|source| BuildError::Io { what: format!("writing {}", path.display()), source })
}
