//! The local image store: normalised names → manifest digests, in the metadata database.

use crate::OciError;
use rdock_imagespec::{Digest, ImageConfig, ImageRef, Index, Manifest, Platform};
use rdock_snapshotter::Store;
use rusqlite::{OptionalExtension, params};

/// One tagged image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Normalised name (`docker.io/library/busybox:latest`).
    pub name: String,
    /// Manifest digest.
    pub manifest: Digest,
    /// When it was tagged (unix seconds).
    pub created: i64,
}

/// Names and manifests over a store.
#[derive(Clone)]
pub struct ImageStore {
    store: Store,
}

impl ImageStore {
    /// The image store of `store` (its tables, names and where blobs came from, are in the
    /// store's schema).
    pub fn new(store: Store) -> ImageStore {
        ImageStore { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Bytes of file content a layer blob holds, uncompressed (what `history` shows as a
    /// layer's SIZE, as docker does).
    pub fn content_bytes(&self, blob: &Digest) -> Result<u64, OciError> {
        let path = self.store.content().path(blob);
        let io = |e: std::io::Error| OciError::Io(path.clone(), e);
        let mut archive = tar::Archive::new(self.store.content().open_uncompressed(blob)?);
        let mut n = 0;
        for e in archive.entries().map_err(io)? {
            let e = e.map_err(io)?;
            if e.header().entry_type().is_file() {
                n += e.header().size().map_err(io)?;
            }
        }
        Ok(n)
    }

    /// Points `name` at `manifest`.
    pub fn tag(&self, name: &ImageRef, manifest: &Digest) -> Result<(), OciError> {
        let conn = self.store.db().conn();
        conn.execute(
            "INSERT OR REPLACE INTO images (name, manifest, created) VALUES (?1, ?2, ?3)",
            params![name.to_string(), manifest.as_str(), now()],
        )?;
        // Named now: no longer one of the untagged.
        conn.execute("DELETE FROM untagged WHERE manifest = ?1", params![manifest.as_str()])?;
        Ok(())
    }

    /// Keeps an image that has no name (a build without `-t`): listed as `<none>`, a root
    /// for garbage collection, until it is named or removed by ID.
    pub fn keep_untagged(&self, manifest: &Digest) -> Result<(), OciError> {
        let conn = self.store.db().conn();
        let named: bool =
            conn.query_row("SELECT count(*) > 0 FROM images WHERE manifest = ?1", params![manifest.as_str()], |r| r.get(0))?;
        if !named {
            conn.execute("INSERT OR REPLACE INTO untagged (manifest, created) VALUES (?1, ?2)", params![manifest.as_str(), now()])?;
        }
        Ok(())
    }

    /// The images kept without a name, newest first.
    pub fn untagged(&self) -> Result<Vec<(Digest, i64)>, OciError> {
        let conn = self.store.db().conn();
        let mut stmt = conn.prepare("SELECT manifest, created FROM untagged ORDER BY created DESC")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (m, created) = row?;
            if let Ok(d) = Digest::parse(&m) {
                out.push((d, created));
            }
        }
        Ok(out)
    }

    /// Forgets an untagged image; false if it was not one.
    pub fn forget_untagged(&self, manifest: &Digest) -> Result<bool, OciError> {
        Ok(self.store.db().conn().execute("DELETE FROM untagged WHERE manifest = ?1", params![manifest.as_str()])? > 0)
    }

    /// The manifest `name` points at.
    pub fn get(&self, name: &ImageRef) -> Result<Option<Digest>, OciError> {
        if let Some(d) = &name.digest
            && self.store.content().contains(d)
        {
            return Ok(Some(d.clone()));
        }
        let row: Option<String> = self
            .store
            .db()
            .conn()
            .query_row("SELECT manifest FROM images WHERE name = ?1", params![name.to_string()], |r| r.get(0))
            .optional()?;
        Ok(row.and_then(|s| Digest::parse(&s).ok()))
    }

    /// Finds an image by name, or by (a prefix of) its manifest digest.
    pub fn find(&self, what: &str) -> Result<Digest, OciError> {
        if let Ok(r) = ImageRef::parse(what)
            && let Some(d) = self.get(&r)?
        {
            return Ok(d);
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what).to_ascii_lowercase();
        // A whole manifest digest names an image whether or not it is tagged (an archive
        // loaded without names prints it).
        if let Ok(d) = rdock_imagespec::Digest::parse(&format!("sha256:{hex}"))
            && self.store.content().contains(&d)
            && self.manifest(&d).is_ok()
        {
            return Ok(d);
        }
        if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let untagged = self.untagged()?.into_iter().map(|(manifest, created)| ImageRecord { name: String::new(), manifest, created });
            for img in self.list()?.into_iter().chain(untagged) {
                // The manifest digest, or the image ID (the config digest) as docker shows it.
                let config = self.manifest(&img.manifest).map(|m| m.config.digest.hex().starts_with(&hex)).unwrap_or(false);
                if img.manifest.hex().starts_with(&hex) || config {
                    return Ok(img.manifest);
                }
            }
        }
        Err(OciError::NotFound(what.to_string()))
    }

    /// Every tagged image, by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, OciError> {
        let conn = self.store.db().conn();
        let mut stmt = conn.prepare("SELECT name, manifest, created FROM images ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, m, created) = row?;
            if let Ok(manifest) = Digest::parse(&m) {
                out.push(ImageRecord { name, manifest, created });
            }
        }
        Ok(out)
    }

    /// Removes a name; returns false if it did not exist.
    pub fn untag(&self, name: &ImageRef) -> Result<bool, OciError> {
        let n = self.store.db().conn().execute("DELETE FROM images WHERE name = ?1", params![name.to_string()])?;
        Ok(n > 0)
    }

    /// The manifest `name` has for `platform`: the name's own manifest, or for a
    /// multi-platform image (a name tagged to an index) the entry for that platform. A
    /// single-platform image answers whatever its platform, as a registry does; callers
    /// that care compare the config's platform.
    pub fn resolve(&self, name: &ImageRef, platform: &Platform) -> Result<Option<Digest>, OciError> {
        match self.get(name)? {
            None => Ok(None),
            Some(d) => self.platform_manifest(&d, platform).map(Some),
        }
    }

    /// `d` itself if it is a manifest; for an index, the manifest for `platform` in it
    /// (nested indexes followed).
    pub fn platform_manifest(&self, d: &Digest, platform: &Platform) -> Result<Digest, OciError> {
        let mut current = d.clone();
        // Bounded: an index naming itself (or a cycle) must not loop.
        for _ in 0..8 {
            let bytes = self.store.content().read(&current)?;
            let Some(index) = as_index(&bytes) else {
                return Ok(current);
            };
            let pick = index.manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.satisfies(platform)));
            match pick {
                Some(m) => current = m.digest.clone(),
                None => {
                    let available: Vec<String> =
                        index.manifests.iter().filter_map(|m| m.platform.as_ref().map(|p| p.to_string())).collect();
                    return Err(OciError::NoPlatform {
                        image: d.to_string(),
                        platform: platform.to_string(),
                        available: if available.is_empty() { "none labelled".into() } else { available.join(", ") },
                    });
                }
            }
        }
        Err(OciError::Inconsistent { image: d.to_string(), reason: "indexes nested more than 8 deep".into() })
    }

    /// The first manifest of an index (nested indexes followed), for images that lack the
    /// host's platform.
    fn first_manifest(&self, d: &Digest) -> Result<Digest, OciError> {
        let mut current = d.clone();
        for _ in 0..8 {
            let bytes = self.store.content().read(&current)?;
            let Some(index) = as_index(&bytes) else {
                return Ok(current);
            };
            current = index
                .manifests
                .first()
                .map(|m| m.digest.clone())
                .ok_or_else(|| OciError::Inconsistent { image: d.to_string(), reason: "empty index".into() })?;
        }
        Err(OciError::Inconsistent { image: d.to_string(), reason: "indexes nested more than 8 deep".into() })
    }

    /// The platforms a tagged digest offers: one per index entry, or none for a plain
    /// manifest (whose platform is in its config).
    pub fn platforms(&self, d: &Digest) -> Result<Vec<Platform>, OciError> {
        let bytes = self.store.content().read(d)?;
        Ok(as_index(&bytes).map(|i| i.manifests.into_iter().filter_map(|m| m.platform).collect()).unwrap_or_default())
    }

    /// Reads and verifies a manifest. For an index, the manifest for this machine's
    /// platform in it, so that every command that shows an image works on multi-platform
    /// ones too.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, OciError> {
        let d = match self.platform_manifest(d, &Platform::host()) {
            Err(OciError::NoPlatform { .. }) => self.first_manifest(d)?,
            other => other?,
        };
        let bytes = self.store.content().read(&d)?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::json(format!("manifest {d}"), e))
    }

    /// Reads and verifies an image config.
    pub fn config(&self, m: &Manifest) -> Result<ImageConfig, OciError> {
        let bytes = self.store.content().read(&m.config.digest)?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::json(format!("config {}", m.config.digest), e))
    }
}

/// The blobs tagged images need, and what is wrong with them.
#[derive(Debug, Default)]
pub struct Referenced {
    /// Every manifest, index, config and layer blob some tagged name reaches.
    pub blobs: std::collections::HashSet<Digest>,
    /// Blobs a tagged image names that are missing or unreadable, one sentence each.
    pub problems: Vec<String>,
}

impl ImageStore {
    /// What tagged images need: garbage collection never removes these, and `fsck`
    /// reports any that are missing.
    pub fn referenced(&self) -> Result<Referenced, OciError> {
        let mut out = Referenced::default();
        let content = self.store.content();
        let mut roots = self.list()?;
        roots.extend(self.untagged()?.into_iter().map(|(manifest, created)| ImageRecord {
            name: format!("<none>@{manifest}"),
            manifest,
            created,
        }));
        for img in roots {
            let mut todo = vec![img.manifest.clone()];
            while let Some(d) = todo.pop() {
                if !out.blobs.insert(d.clone()) {
                    continue;
                }
                let bytes = match content.read(&d) {
                    Ok(b) => b,
                    Err(e) => {
                        out.problems.push(format!("image {}: {e}", img.name));
                        continue;
                    }
                };
                if let Some(index) = as_index(&bytes) {
                    // A pull stores one platform's manifest of a multi-platform index:
                    // the others may be missing, but not all of them.
                    let present: Vec<Digest> = index.manifests.into_iter().map(|m| m.digest).filter(|d| content.contains(d)).collect();
                    if present.is_empty() {
                        out.problems.push(format!("image {}: index {d} has none of its manifests in the store", img.name));
                    }
                    todo.extend(present);
                    continue;
                }
                match serde_json::from_slice::<Manifest>(&bytes) {
                    Ok(m) => {
                        for blob in std::iter::once(&m.config).chain(m.layers.iter()) {
                            out.blobs.insert(blob.digest.clone());
                            if !content.contains(&blob.digest) {
                                out.problems.push(format!("image {}: blob {} is not in the store", img.name, blob.digest));
                            }
                        }
                    }
                    Err(e) => out.problems.push(format!("image {}: manifest {d}: {e}", img.name)),
                }
            }
        }
        Ok(out)
    }
}

/// The document as an index, if it is one (by media type, or by having `manifests`).
pub(crate) fn as_index(bytes: &[u8]) -> Option<Index> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    let is_index =
        probe.media_type.as_deref().is_some_and(|m| m.contains("index") || m.contains("manifest.list")) || probe.manifests.is_some();
    if !is_index {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// Now, in Unix seconds.
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
