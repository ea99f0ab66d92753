//! Loading image tarballs: docker-archive (`docker save`, `manifest.json`, layers as
//! `ID/layer.tar` or `blobs/sha256/…`) and OCI image layouts (`index.json`). Blobs are
//! verified against their digests on the way into the content store; each image's
//! layers are unpacked and checked against the config's diff IDs before it is tagged.

use crate::{ImageStore, OciError, ensure_unpacked};
use rdock_imagespec::{Descriptor, Digest, ImageRef, Index, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST, Manifest};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// What an archive held: for each image, its name (if it had one) and manifest.
pub type Loaded = Vec<(Option<ImageRef>, Digest)>;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

use serde::Deserialize;

const SMALL: u64 = 64 << 20;

/// Loads every image in the tarball at `path`.
pub fn load_archive(images: &ImageStore, path: &Path) -> Result<Loaded, OciError> {
    let entries = Entries::read(images, path)?;
    if entries.small.contains_key("manifest.json") {
        load_docker(images, &entries)
    } else if entries.small.contains_key("index.json") {
        load_oci(images, &entries)
    } else {
        Err(entries.bad("neither manifest.json nor index.json found".into()))
    }
}

/// An archive's files: blobs go to the content store as they are read (verified against
/// their digest when their name says it), small JSON documents are kept in memory.
struct Entries<'a> {
    path: &'a Path,
    images: &'a ImageStore,
    small: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Digest>,
}

impl<'a> Entries<'a> {
    fn read(images: &'a ImageStore, path: &'a Path) -> Result<Entries<'a>, OciError> {
        let mut e = Entries { path, images, small: HashMap::new(), blobs: HashMap::new() };
        let content = images.store().content();
        let mut archive = tar::Archive::new(open_maybe_gzip(path)?);
        for entry in archive.entries().map_err(|err| OciError::Io(path.to_path_buf(), err))? {
            let mut entry = entry.map_err(|err| OciError::Io(path.to_path_buf(), err))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let p =
                entry.path().map_err(|err| OciError::Io(path.to_path_buf(), err))?.to_string_lossy().trim_start_matches("./").to_string();
            if let Some(hex) = p.strip_prefix("blobs/sha256/") {
                let expected = Digest::parse(&format!("sha256:{hex}")).map_err(|err| e.bad(format!("{p}: {err}")))?;
                if !content.contains(&expected) {
                    content.put_reader(&mut entry, Some(&expected))?;
                }
                e.blobs.insert(p.clone(), expected);
            } else if p.ends_with(".json") || p == "oci-layout" || p == "repositories" {
                if entry.header().size().unwrap_or(0) > SMALL {
                    return Err(e.bad(format!("{p} is implausibly large")));
                }
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(|err| OciError::Io(path.to_path_buf(), err))?;
                e.small.insert(p, buf);
            } else {
                let (d, _) = content.put_reader(&mut entry, None)?;
                e.blobs.insert(p, d);
            }
        }
        Ok(e)
    }

    fn bad(&self, reason: String) -> OciError {
        OciError::BadArchive { path: self.path.to_path_buf(), reason }
    }

    /// The bytes of the archive's file `p`.
    fn bytes_at(&self, p: &str) -> Result<Vec<u8>, OciError> {
        if let Some(b) = self.small.get(p) {
            return Ok(b.clone());
        }
        match self.blobs.get(p) {
            Some(d) => Ok(self.images.store().content().read(d)?),
            None => Err(self.bad(format!("{p} is referenced but not in the archive"))),
        }
    }
}

/// The file at `path`, gunzipped on the way if it is gzip.
fn open_maybe_gzip(path: &Path) -> Result<Box<dyn Read>, OciError> {
    let file = std::fs::File::open(path).map_err(|e| OciError::Io(path.to_path_buf(), e))?;
    let mut buffered = std::io::BufReader::with_capacity(1 << 20, file);
    let head = std::io::BufRead::fill_buf(&mut buffered).map_err(|e| OciError::Io(path.to_path_buf(), e))?;
    let gz = head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    Ok(if gz { Box::new(flate2::bufread::MultiGzDecoder::new(buffered)) } else { Box::new(buffered) })
}

/// docker-archive: each `manifest.json` entry becomes an OCI manifest of its config and
/// layers (media types sniffed from the layers themselves), unpacked, then tagged.
fn load_docker(images: &ImageStore, entries: &Entries<'_>) -> Result<Loaded, OciError> {
    let content = images.store().content();
    let docs: Vec<DockerManifestEntry> =
        serde_json::from_slice(&entries.bytes_at("manifest.json")?).map_err(|e| OciError::json("manifest.json", e))?;
    let mut loaded = Vec::new();
    for e in docs {
        let config = entries.bytes_at(&e.config)?;
        let config_digest = content.put(&config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let d = entries.blobs.get(l).cloned().ok_or_else(|| entries.bad(format!("layer {l} is referenced but not in the archive")))?;
            let mut head = [0u8; 4];
            let n = content.open(&d)?.read(&mut head).unwrap_or(0);
            let media = rdock_snapshotter::Compression::sniff(&head[..n]).media_type();
            let size = std::fs::metadata(content.path(&d)).map(|m| m.len()).unwrap_or(0);
            layers.push(Descriptor::new(media, d, size));
        }
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.into()),
            config: Descriptor::new(MEDIA_TYPE_OCI_CONFIG, config_digest, config.len() as u64),
            layers,
            annotations: Default::default(),
        };
        let md = content.put(&m.to_json())?;
        ensure_unpacked(images, &md)?;
        let tags = e.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            loaded.push((None, md.clone()));
        }
        for t in tags {
            let r = ImageRef::parse(&t)?;
            images.tag(&r, &md)?;
            loaded.push((Some(r), md.clone()));
        }
    }
    Ok(loaded)
}

/// OCI layout: each entry of `index.json`, every platform unpacked, named by its
/// annotations.
fn load_oci(images: &ImageStore, entries: &Entries<'_>) -> Result<Loaded, OciError> {
    let index: Index = serde_json::from_slice(&entries.bytes_at("index.json")?).map_err(|e| OciError::json("index.json", e))?;
    let mut loaded = Vec::new();
    for d in index.manifests {
        // A multi-platform image keeps its index, every platform unpacked, so that
        // `FROM --platform` can pick any of them; the name points at the index.
        let md = d.digest.clone();
        for m in platform_manifests(images, &d)? {
            ensure_unpacked(images, &m)?;
        }
        let name = d
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| d.annotations.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/') || n.contains(':')))
            .map(|n| ImageRef::parse(n))
            .transpose()?;
        if let Some(r) = &name {
            images.tag(r, &md)?;
        }
        loaded.push((name, md));
    }
    Ok(loaded)
}

/// The manifests a descriptor stands for: itself, or every entry of a (nested) index.
fn platform_manifests(images: &ImageStore, d: &Descriptor) -> Result<Vec<Digest>, OciError> {
    fn walk(images: &ImageStore, d: &Descriptor, depth: usize, out: &mut Vec<Digest>) -> Result<(), OciError> {
        if !(d.media_type.contains("index") || d.media_type.contains("manifest.list")) {
            out.push(d.digest.clone());
            return Ok(());
        }
        if depth > 8 {
            return Err(OciError::Inconsistent { image: d.digest.to_string(), reason: "indexes nested more than 8 deep".into() });
        }
        let bytes = images.store().content().read(&d.digest)?;
        let idx: Index = serde_json::from_slice(&bytes).map_err(|e| OciError::json(format!("index {}", d.digest), e))?;
        if idx.manifests.is_empty() {
            return Err(OciError::Inconsistent { image: d.digest.to_string(), reason: "empty index".into() });
        }
        for m in &idx.manifests {
            // Attestation manifests (platform unknown/unknown) carry no filesystem.
            if m.platform.as_ref().is_some_and(|p| p.os == "unknown") {
                continue;
            }
            walk(images, m, depth + 1, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(images, d, 0, &mut out)?;
    Ok(out)
}
