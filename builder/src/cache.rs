//! Remote build caches: reading imports before the solve, writing exports after it.

use crate::{BuildError, CacheExportSpec, CacheLocation, Notices};
use rdock_oci::{ImageStore, LayoutSource, RegistrySource};
use rdock_registry::Client;
use rdock_solver::remote::{CacheExport, CacheMode, ImportedCache};
use std::sync::Arc;

/// Reads an import. A cache that is not there is a warning, not an error (as in BuildKit:
/// the first build of a branch has none); a broken one is an error.
pub(crate) fn import(
    loc: &CacheLocation,
    images: &ImageStore,
    client: &Arc<Client>,
    notices: &dyn Notices,
) -> Result<Option<ImportedCache>, BuildError> {
    match loc {
        CacheLocation::Registry(r) => {
            let name = format!("registry {}", r.familiar());
            let failed = |source: BuildError| BuildError::CacheImport { name: r.familiar(), source: Box::new(source) };
            let reference = r.digest.as_ref().map(|d| d.to_string()).or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
            let m = match client.manifest(r, &reference) {
                Ok(m) => m,
                Err(rdock_registry::RegistryError::NotFound { .. }) => {
                    notices.warning(&format!("cache import: {} has no cache yet", r.familiar()));
                    return Ok(None);
                }
                Err(e) => return Err(failed(e.into())),
            };
            let doc: rdock_imagespec::Manifest = serde_json::from_slice(&m.bytes).map_err(|e| failed(e.into()))?;
            let source = Arc::new(RegistrySource { client: client.clone(), repo: r.clone(), on: rdock_oci::quiet() });
            let content = images.store().content();
            rdock_oci::BlobSource::fetch(source.as_ref(), &doc.config, content).map_err(|e| failed(e.into()))?;
            let config = content.read(&doc.config.digest)?;
            Ok(Some(ImportedCache::parse(&name, &m.bytes, &config, source)?))
        }
        CacheLocation::Local { dir, tag } => {
            let name = format!("local {}", dir.display());
            let failed = |source: BuildError| BuildError::CacheImport { name: name.clone(), source: Box::new(source) };
            if !dir.join("index.json").exists() {
                notices.warning(&format!("cache import: {} holds no cache yet", dir.display()));
                return Ok(None);
            }
            let manifest = rdock_oci::read_layout(dir, tag).map_err(|e| failed(e.into()))?;
            let doc: rdock_imagespec::Manifest = serde_json::from_slice(&manifest).map_err(|e| failed(e.into()))?;
            let path = dir.join("blobs").join(doc.config.digest.algorithm()).join(doc.config.digest.hex());
            let config =
                std::fs::read(&path).map_err(|source| failed(BuildError::Io { what: format!("reading {}", path.display()), source }))?;
            Ok(Some(ImportedCache::parse(&name, &manifest, &config, Arc::new(LayoutSource { dir: dir.clone() }))?))
        }
    }
}

/// Writes an export where the spec says, and tells the caller what it wrote.
pub(crate) fn export(
    spec: &CacheExportSpec,
    export: &CacheExport,
    images: &ImageStore,
    client: &Arc<Client>,
    notices: &dyn Notices,
) -> Result<(), BuildError> {
    let started = std::time::Instant::now();
    let (what, detail) = match &spec.to {
        CacheLocation::Registry(r) => {
            let rep = rdock_oci::push_artifact(images, client, r, &export.manifest, &rdock_oci::quiet())
                .map_err(|source| BuildError::CacheExport { name: r.familiar(), source })?;
            (r.familiar(), format!("{} blobs uploaded, {} mounted, {} already there", rep.uploaded, rep.mounted, rep.existed))
        }
        CacheLocation::Local { dir, tag } => {
            rdock_oci::write_layout(images, dir, &export.manifest, rdock_imagespec::MEDIA_TYPE_OCI_MANIFEST, tag)
                .map_err(|source| BuildError::CacheExport { name: dir.display().to_string(), source })?;
            (dir.display().to_string(), String::new())
        }
    };
    notices.done(&format!(
        "exported cache to {what} ({} records{}, mode={}) in {:.2}s{}{}",
        export.records,
        if export.mounts > 0 { format!(", {} cache mounts", export.mounts) } else { String::new() },
        if spec.mode == CacheMode::Max { "max" } else { "min" },
        started.elapsed().as_secs_f64(),
        if detail.is_empty() { "" } else { ": " },
        detail
    ));
    Ok(())
}
