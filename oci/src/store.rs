//! The local image store: normalised names → manifest digests, in the metadata database.

use crate::OciError;
use rdock_imagespec::{Digest, ImageConfig, ImageRef, Manifest};
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
    /// The image store of `store`, creating its table on first use.
    pub fn new(store: Store) -> ImageStore {
        let _ = store
            .db()
            .conn()
            .execute_batch("CREATE TABLE IF NOT EXISTS images (name TEXT PRIMARY KEY, manifest TEXT NOT NULL, created INTEGER NOT NULL);");
        ImageStore { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Points `name` at `manifest`.
    pub fn tag(&self, name: &ImageRef, manifest: &Digest) -> Result<(), OciError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        self.store.db().conn().execute(
            "INSERT OR REPLACE INTO images (name, manifest, created) VALUES (?1, ?2, ?3)",
            params![name.to_string(), manifest.as_str(), now],
        )?;
        Ok(())
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
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            for img in self.list()? {
                if img.manifest.hex().starts_with(hex) {
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

    /// Reads and verifies a manifest.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, OciError> {
        let bytes = self.store.content().read(d)?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::json(format!("manifest {d}"), e))
    }

    /// Reads and verifies an image config.
    pub fn config(&self, m: &Manifest) -> Result<ImageConfig, OciError> {
        let bytes = self.store.content().read(&m.config.digest)?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::json(format!("config {}", m.config.digest), e))
    }
}
