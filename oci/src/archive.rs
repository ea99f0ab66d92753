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

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())
}

/// Writes the image with manifest `manifest` to `dest`, named `names` (may be empty); `-`
/// is standard output (`-o -`, `dest=-`).
pub fn export_archive(
    images: &ImageStore,
    manifest: &Digest,
    names: &[ImageRef],
    format: ArchiveFormat,
    dest: &Path,
) -> Result<(), OciError> {
    let io = |e: std::io::Error| OciError::Io(dest.to_path_buf(), e);
    let to_tar = |w: &mut dyn Write| -> Result<(), OciError> {
        let mut tar = tar::Builder::new(w);
        write_image(images, manifest, names, format, &mut |path, len, r| match r {
            None => append_dir(&mut tar, path),
            Some(r) => {
                let mut h = tar::Header::new_ustar();
                h.set_size(len);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, path, r)
            }
        })?;
        tar.into_inner().map_err(io)?;
        Ok(())
    };
    if dest.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut lock = std::io::BufWriter::new(stdout.lock());
        to_tar(&mut lock)?;
        return lock.flush().map_err(io);
    }
    write_atomically(dest, |w| to_tar(w))
}

/// Writes the image as an OCI image layout directory at `dest` (`tar=false`), as BuildKit
/// does: blobs already there are kept, `index.json` is written last.
pub fn export_layout_dir(images: &ImageStore, manifest: &Digest, names: &[ImageRef], dest: &Path) -> Result<(), OciError> {
    let io = |p: &Path, e: std::io::Error| OciError::Io(p.to_path_buf(), e);
    std::fs::create_dir_all(dest).map_err(|e| io(dest, e))?;
    write_image(images, manifest, names, ArchiveFormat::Oci, &mut |path, _, r| {
        let p = dest.join(path);
        match r {
            None => std::fs::create_dir_all(&p),
            Some(r) => {
                let tmp = dest.join(format!("{path}.tmp-{}", std::process::id()));
                let mut f = std::fs::File::create(&tmp)?;
                std::io::copy(r, &mut f)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &p)
            }
        }
    })
}

/// A blob's bytes, which must be exactly its descriptor's size: the archive's entry header
/// says that size before the bytes follow, so a blob of another length would leave a
/// broken archive behind a successful export. Reads the source to its end, where a layer
/// made from a snapshot is checked against its digest.
struct Exact<'a, R> {
    inner: R,
    left: u64,
    digest: &'a Digest,
}

impl<R: std::io::Read> std::io::Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let wrong = |how: &str| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("blob {} is {how} than its descriptor says", self.digest))
        };
        if self.left == 0 {
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one)? {
                0 => Ok(0),
                _ => Err(wrong("longer")),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        match self.inner.read(&mut buf[..want])? {
            0 => Err(wrong("shorter")),
            n => {
                self.left -= n as u64;
                Ok(n)
            }
        }
    }
}

/// One entry of an image layout: a directory (no reader) or a file of `len` bytes.
type Put<'a> = dyn FnMut(&str, u64, Option<&mut dyn std::io::Read>) -> std::io::Result<()> + 'a;

/// The entries of an image layout (plus docker's manifest.json), in the order a tarball
/// lists them.
fn write_image(
    images: &ImageStore,
    manifest: &Digest,
    names: &[ImageRef],
    format: ArchiveFormat,
    put: &mut Put<'_>,
) -> Result<(), OciError> {
    let top_bytes = images.store().content().read(manifest)?;
    let index = crate::store::as_index(&top_bytes);
    if index.is_some() && format == ArchiveFormat::Docker {
        return Err(OciError::Inconsistent {
            image: manifest.to_string(),
            reason: "a multi-platform image (an index) cannot be a docker archive: export it as OCI, or build one platform".into(),
        });
    }
    let io = |e: std::io::Error| OciError::Io(std::path::PathBuf::from(manifest.to_string()), e);
    let bytes = |put: &mut Put<'_>, path: &str, b: &[u8]| put(path, b.len() as u64, Some(&mut &b[..]));
    bytes(put, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    let media = match &index {
        Some(i) => i.media_type.clone().unwrap_or_else(|| MEDIA_TYPE_OCI_INDEX.to_string()),
        None => images.manifest(manifest)?.media_type.unwrap_or_else(|| MEDIA_TYPE_OCI_MANIFEST.to_string()),
    };
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
        let mut d = Descriptor::new(&media, manifest.clone(), top_bytes.len() as u64);
        d.annotations = annotations;
        manifests.push(d);
    }
    let top_index = Index { schema_version: 2, media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()), manifests };
    put("blobs/", 0, None).map_err(io)?;
    put("blobs/sha256/", 0, None).map_err(io)?;
    let mut seen = std::collections::BTreeSet::new();
    let children = match &index {
        Some(i) => {
            bytes(put, &format!("blobs/sha256/{}", manifest.hex()), &top_bytes).map_err(io)?;
            i.manifests.iter().map(|m| m.digest.clone()).collect()
        }
        None => vec![manifest.clone()],
    };
    for child in &children {
        write_manifest_blobs(images, child, &mut seen, put)?;
    }
    let m = images.manifest(manifest).ok();
    if let (ArchiveFormat::Docker, Some(m)) = (format, m) {
        let repo_tags: Vec<String> = names.iter().filter(|n| n.tag.is_some()).map(|n| n.familiar()).collect();
        let doc = serde_json::json!([{
            "Config": format!("blobs/sha256/{}", m.config.digest.hex()),
            "RepoTags": repo_tags,
            "Layers": m.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
        }]);
        bytes(put, "manifest.json", doc.to_string().as_bytes()).map_err(io)?;
    }
    // Last: a reader of a layout directory finds everything index.json names.
    bytes(put, "index.json", &top_index.to_json()).map_err(io)?;
    Ok(())
}

/// A manifest's own bytes, its config and its layers (each blob once across the archive).
fn write_manifest_blobs(
    images: &ImageStore,
    manifest: &Digest,
    seen: &mut std::collections::BTreeSet<Digest>,
    put: &mut Put<'_>,
) -> Result<(), OciError> {
    let io = |e: std::io::Error| OciError::Io(std::path::PathBuf::from(manifest.to_string()), e);
    let content = images.store().content();
    let m = images.manifest(manifest)?;
    let manifest_bytes = content.read(manifest)?;
    let config_bytes = content.read(&m.config.digest)?;
    for (d, b) in [(manifest, &manifest_bytes), (&m.config.digest, &config_bytes)] {
        if seen.insert(d.clone()) {
            put(&format!("blobs/sha256/{}", d.hex()), b.len() as u64, Some(&mut &b[..])).map_err(io)?;
        }
    }
    for l in &m.layers {
        if !seen.insert(l.digest.clone()) {
            continue;
        }
        // A layer made from a snapshot streams from it: nothing is written but the archive.
        let len = l.size;
        // 1 MiB reads: the copy behind `put` goes 8 KiB at a time, a system call each.
        let f = std::io::BufReader::with_capacity((len as usize).clamp(8 << 10, 1 << 20), content.reader(&l.digest)?);
        let mut f = Exact { inner: f, left: len, digest: &l.digest };
        put(&format!("blobs/sha256/{}", l.digest.hex()), len, Some(&mut f)).map_err(io)?;
    }
    Ok(())
}

/// Writes an OCI image index of `children` (manifests in the store, each with its
/// platform) to the content store: a multi-platform image. Returns its digest.
pub fn make_index(images: &ImageStore, children: &[(Digest, rdock_imagespec::Platform)]) -> Result<Digest, OciError> {
    let content = images.store().content();
    let mut manifests = Vec::new();
    for (d, platform) in children {
        let bytes = content.read(d)?;
        let m = images.manifest(d)?;
        let mut desc = Descriptor::new(m.media_type.as_deref().unwrap_or(MEDIA_TYPE_OCI_MANIFEST), d.clone(), bytes.len() as u64);
        desc.platform = Some(platform.clone());
        manifests.push(desc);
    }
    let index = Index { schema_version: 2, media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()), manifests };
    Ok(content.put(&index.to_json())?)
}
