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

/// Loads every image in the tarball at `path`, or in the OCI layout directory at `path`.
pub fn load_archive(images: &ImageStore, path: &Path) -> Result<Loaded, OciError> {
    let entries = if path.is_dir() {
        Entries::from_dir(images, path)?
    } else {
        let file = std::fs::File::open(path).map_err(|e| OciError::Io(path.to_path_buf(), e))?;
        Entries::from_tar(images, path, maybe_gunzip(file).map_err(|e| OciError::Io(path.to_path_buf(), e))?)?
    };
    load_entries(images, &entries)
}

/// Loads every image in the tarball `reader` yields (standard input: `label` names it in
/// errors), gzip or not.
pub fn load_stream(images: &ImageStore, label: &Path, reader: Box<dyn Read>) -> Result<Loaded, OciError> {
    let entries = Entries::from_tar(images, label, maybe_gunzip(reader).map_err(|e| OciError::Io(label.to_path_buf(), e))?)?;
    load_entries(images, &entries)
}

fn load_entries(images: &ImageStore, entries: &Entries<'_>) -> Result<Loaded, OciError> {
    if entries.small.contains_key("manifest.json") {
        load_docker(images, entries)
    } else if entries.small.contains_key("index.json") {
        load_oci(images, entries)
    } else {
        Err(entries.bad("neither manifest.json nor index.json found".into()))
    }
}

/// Which image of an OCI layout: its `org.opencontainers.image.ref.name`, or its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutPick {
    /// The tag (`latest` when none is given).
    Tag(String),
    /// The manifest's or index's digest.
    Digest(Digest),
}

/// Brings the image `pick` names in the OCI layout directory `dir` into the store, every
/// platform unpacked, without giving it a name, and returns its digest (a manifest's or an
/// index's): an `oci-layout://` named context.
pub fn load_layout_image(images: &ImageStore, dir: &Path, pick: &LayoutPick) -> Result<Digest, OciError> {
    let entries = Entries::from_dir(images, dir)?;
    let index: Index = serde_json::from_slice(&entries.bytes_at("index.json")?).map_err(|e| OciError::json("index.json", e))?;
    let found = index.manifests.iter().find(|m| match pick {
        LayoutPick::Digest(d) => &m.digest == d,
        LayoutPick::Tag(t) => m.annotations.get("org.opencontainers.image.ref.name").is_some_and(|n| n == t),
    });
    let found = match (found, pick) {
        (Some(f), _) => f,
        // A layout of one untagged image is that image, whatever the tag asked.
        (None, LayoutPick::Tag(_)) if index.manifests.len() == 1 && index.manifests[0].annotations.is_empty() => &index.manifests[0],
        (None, _) => return Err(entries.bad(format!("no image {pick:?} in its index.json"))),
    };
    for m in platform_manifests(images, found)? {
        ensure_unpacked(images, &m)?;
    }
    Ok(found.digest.clone())
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
    fn from_tar(images: &'a ImageStore, path: &'a Path, reader: Box<dyn Read>) -> Result<Entries<'a>, OciError> {
        let mut e = Entries { path, images, small: HashMap::new(), blobs: HashMap::new() };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(|err| OciError::Io(path.to_path_buf(), err))? {
            let mut entry = entry.map_err(|err| OciError::Io(path.to_path_buf(), err))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let p =
                entry.path().map_err(|err| OciError::Io(path.to_path_buf(), err))?.to_string_lossy().trim_start_matches("./").to_string();
            let size = entry.header().size().unwrap_or(0);
            e.add(p, size, &mut entry)?;
        }
        Ok(e)
    }

    /// An OCI layout directory: `index.json`, `oci-layout` and the regular files under
    /// `blobs/` (links are not followed: the layout is read as a tarball of it would be).
    fn from_dir(images: &'a ImageStore, dir: &'a Path) -> Result<Entries<'a>, OciError> {
        let mut e = Entries { path: dir, images, small: HashMap::new(), blobs: HashMap::new() };
        let io = |p: &Path, err| OciError::Io(p.to_path_buf(), err);
        let mut files = vec!["index.json".to_string(), "oci-layout".to_string()];
        for alg in std::fs::read_dir(dir.join("blobs")).map_err(|err| io(&dir.join("blobs"), err))? {
            let alg = alg.map_err(|err| io(dir, err))?;
            if !alg.file_type().map_err(|err| io(&alg.path(), err))?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(alg.path()).map_err(|err| io(&alg.path(), err))? {
                let f = f.map_err(|err| io(&alg.path(), err))?;
                files.push(format!("blobs/{}/{}", alg.file_name().to_string_lossy(), f.file_name().to_string_lossy()));
            }
        }
        for rel in files {
            let p = dir.join(&rel);
            let md = match std::fs::symlink_metadata(&p) {
                Ok(md) if md.is_file() => md,
                Ok(_) => continue,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && rel == "oci-layout" => continue,
                Err(err) => return Err(io(&p, err)),
            };
            let mut f = std::fs::File::open(&p).map_err(|err| io(&p, err))?;
            e.add(rel, md.len(), &mut f)?;
        }
        Ok(e)
    }

    /// Takes the file `p` of `size` bytes: a blob into the content store, a document kept.
    fn add(&mut self, p: String, size: u64, r: &mut dyn Read) -> Result<(), OciError> {
        let content = self.images.store().content();
        if let Some(hex) = p.strip_prefix("blobs/sha256/") {
            let expected = Digest::parse(&format!("sha256:{hex}")).map_err(|err| self.bad(format!("{p}: {err}")))?;
            if !content.contains(&expected) {
                content.put_reader(r, Some(&expected))?;
            }
            self.blobs.insert(p, expected);
        } else if p.ends_with(".json") || p == "oci-layout" || p == "repositories" {
            if size > SMALL {
                return Err(self.bad(format!("{p} is implausibly large")));
            }
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).map_err(|err| OciError::Io(self.path.join(&p), err))?;
            self.small.insert(p, buf);
        } else {
            let (d, _) = content.put_reader(r, None)?;
            self.blobs.insert(p, d);
        }
        Ok(())
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

/// `r`, gunzipped on the way if it is gzip.
fn maybe_gunzip(r: impl Read + 'static) -> std::io::Result<Box<dyn Read>> {
    let mut buffered = std::io::BufReader::with_capacity(1 << 20, r);
    let head = std::io::BufRead::fill_buf(&mut buffered)?;
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
