//! Image tarballs: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), and
//! for the docker format the same plus `manifest.json`, which `docker load` reads. The
//! file is written beside its destination and renamed into place when complete.

use crate::atomic::write_atomically;
use crate::{ImageStore, OciError};
use rdock_imagespec::{Descriptor, Digest, ImageRef, Index, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Which tarball to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker load` format (an OCI layout plus manifest.json).
    Docker,
    /// An OCI image layout.
    Oci,
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, bytes)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())
}

/// Writes the image with manifest `manifest` to `dest`, named `names` (may be empty).
pub fn export_archive(
    images: &ImageStore,
    manifest: &Digest,
    names: &[ImageRef],
    format: ArchiveFormat,
    dest: &Path,
) -> Result<(), OciError> {
    let m = images.manifest(manifest)?;
    let manifest_bytes = images.store().content().read(manifest)?;
    let io = |e: std::io::Error| OciError::Io(dest.to_path_buf(), e);
    write_atomically(dest, |w| {
        let mut tar = tar::Builder::new(w);
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        let mut manifests = Vec::new();
        let targets: Vec<Option<&ImageRef>> = if names.is_empty() { vec![None] } else { names.iter().map(Some).collect() };
        for name in &targets {
            let mut annotations = BTreeMap::new();
            if let Some(n) = name {
                annotations.insert("io.containerd.image.name".to_string(), n.to_string());
                if let Some(tag) = &n.tag {
                    annotations.insert("org.opencontainers.image.ref.name".to_string(), tag.clone());
                }
            }
            let mut d = Descriptor::new(MEDIA_TYPE_OCI_MANIFEST, manifest.clone(), manifest_bytes.len() as u64);
            d.annotations = annotations;
            manifests.push(d);
        }
        let index = Index { schema_version: 2, media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()), manifests };
        append_bytes(&mut tar, "index.json", &index.to_json()).map_err(io)?;
        append_dir(&mut tar, "blobs/").map_err(io)?;
        append_dir(&mut tar, "blobs/sha256/").map_err(io)?;
        let content = images.store().content();
        append_bytes(&mut tar, &format!("blobs/sha256/{}", manifest.hex()), &manifest_bytes).map_err(io)?;
        let config_bytes = content.read(&m.config.digest)?;
        append_bytes(&mut tar, &format!("blobs/sha256/{}", m.config.digest.hex()), &config_bytes).map_err(io)?;
        let mut seen = std::collections::BTreeSet::new();
        for l in &m.layers {
            if !seen.insert(l.digest.clone()) {
                continue;
            }
            let f = content.open(&l.digest)?;
            let len = f.metadata().map_err(io)?.len();
            let mut h = tar::Header::new_ustar();
            h.set_size(len);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, format!("blobs/sha256/{}", l.digest.hex()), f).map_err(io)?;
        }
        if format == ArchiveFormat::Docker {
            let repo_tags: Vec<String> = names.iter().filter(|n| n.tag.is_some()).map(|n| n.familiar()).collect();
            let doc = serde_json::json!([{
                "Config": format!("blobs/sha256/{}", m.config.digest.hex()),
                "RepoTags": repo_tags,
                "Layers": m.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
            }]);
            append_bytes(&mut tar, "manifest.json", doc.to_string().as_bytes()).map_err(io)?;
        }
        tar.into_inner().map_err(io)?;
        Ok(())
    })
}
