//! Images ↔ registries: resolving a reference to a platform's manifest and config, pulling
//! layers in parallel (only those the store lacks, through `fetch.rs`), pushing (only blobs
//! the registry lacks, mounted from another repository of the same registry when we know
//! one that has them). Every blob is verified before it becomes visible in the store; the
//! tag is written last, so a failed pull leaves no name pointing at a half-stored image.

use crate::fetch::{OnTransfer, RegistrySource, Transfer, fetch_unpacking, parallel};
use crate::{ChainBlob, ImageStore, OciError};
use rdock_imagespec::{Descriptor, Digest, ImageConfig, ImageRef, Index, Manifest, Platform};
use rdock_registry::{Client, Pushed};
use rusqlite::params;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many blobs move at once.
const PARALLEL: usize = 6;

impl ImageStore {
    /// Records that `repo` of its registry holds these blobs: later pulls fetch missing
    /// layers from there, and pushes to another repository of that registry mount them.
    pub fn record_origin(&self, repo: &ImageRef, digests: &[&Digest]) -> Result<(), OciError> {
        let mut conn = self.store().db().conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for d in digests {
            tx.execute(
                "INSERT OR IGNORE INTO blob_origins (digest, registry, repository) VALUES (?1, ?2, ?3)",
                params![d.as_str(), repo.registry, repo.repository],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The (registry, repository) pairs known to hold a blob.
    pub fn origins(&self, d: &Digest) -> Result<Vec<(String, String)>, OciError> {
        let conn = self.store().db().conn();
        let mut stmt = conn.prepare("SELECT registry, repository FROM blob_origins WHERE digest = ?1")?;
        let rows = stmt.query_map(params![d.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A reference resolved against a registry: its manifest for one platform and the config,
/// verified; [`Resolved::store`] puts them into the store (the layers are fetched apart).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the reference names: an index, or the manifest itself.
    pub top: Digest,
    /// The platform's manifest.
    pub manifest: Digest,
    /// The manifest.
    pub manifest_doc: Manifest,
    /// The config.
    pub config: ImageConfig,
    /// The documents as received: index (if any), manifest, config.
    documents: Vec<Vec<u8>>,
    repo: ImageRef,
}

impl Resolved {
    /// Stores the documents (children before parents: a stored index always finds its
    /// manifest) and records where the layers can be fetched.
    pub fn store(&self, images: &ImageStore) -> Result<(), OciError> {
        let content = images.store().content();
        for d in self.documents.iter().rev() {
            content.put(d)?;
        }
        let mut known: Vec<&Digest> = self.manifest_doc.layers.iter().map(|l| &l.digest).collect();
        known.push(&self.manifest_doc.config.digest);
        images.record_origin(&self.repo, &known)
    }
}

fn bad(what: &str, e: serde_json::Error) -> OciError {
    OciError::json(what.to_string(), e)
}

/// Resolves `r` on its registry to the manifest for `platform` and its config, all
/// verified, storing nothing.
pub fn resolve_remote(client: &Arc<Client>, r: &ImageRef, platform: &Platform) -> Result<Resolved, OciError> {
    let reference = match (&r.digest, &r.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_string(),
    };
    let top = client.manifest(r, &reference)?;
    let mut documents = Vec::new();
    let (manifest_bytes, manifest) = if top.is_index() {
        let index: Index = serde_json::from_slice(&top.bytes).map_err(|e| bad(&format!("index {}", r.familiar()), e))?;
        let pick = index.manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.satisfies(platform))).ok_or_else(|| {
            OciError::NoPlatform {
                image: r.familiar(),
                platform: platform.to_string(),
                available: index.manifests.iter().filter_map(|m| m.platform.as_ref().map(|p| p.to_string())).collect::<Vec<_>>().join(", "),
            }
        })?;
        let child = client.manifest(r, pick.digest.as_str())?;
        if child.is_index() {
            return Err(OciError::Inconsistent { image: r.familiar(), reason: "an index inside an index is not supported".into() });
        }
        documents.push(top.bytes.clone());
        (child.bytes, child.digest)
    } else {
        (top.bytes.clone(), top.digest.clone())
    };
    let doc: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| bad(&format!("manifest {}", r.familiar()), e))?;
    if doc.layers.len() > rdock_imagespec::MAX_LAYERS {
        return Err(OciError::Inconsistent {
            image: r.familiar(),
            reason: format!("{} layers, more than the {} one overlay mount can stack", doc.layers.len(), rdock_imagespec::MAX_LAYERS),
        });
    }
    let config_bytes = client.small_blob(r, &doc.config)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| bad(&format!("config of {}", r.familiar()), e))?;
    if config.rootfs.diff_ids.len() != doc.layers.len() {
        return Err(OciError::Inconsistent {
            image: r.familiar(),
            reason: format!("{} layers but {} diff_ids in the config", doc.layers.len(), config.rootfs.diff_ids.len()),
        });
    }
    documents.push(manifest_bytes);
    documents.push(config_bytes);
    Ok(Resolved { top: top.digest, manifest, manifest_doc: doc, config, documents, repo: r.clone() })
}

/// Pulls `r` for `platform`: resolves it, downloads the layers the store lacks in
/// parallel, unpacks them, then stores the manifest and config and tags the name (unless
/// `r` is by digest only). If anything fails, the layers this pull downloaded are removed
/// again: the store is left as it was.
pub fn pull(images: &ImageStore, client: &Arc<Client>, r: &ImageRef, platform: &Platform, on: OnTransfer) -> Result<Resolved, OciError> {
    let resolved = resolve_remote(client, r, platform)?;
    let content = images.store().content();
    tracing::debug!(image = %r, manifest = %resolved.manifest, layers = resolved.manifest_doc.layers.len(), "pulling");
    let new: Vec<&Descriptor> = resolved.manifest_doc.layers.iter().filter(|l| !content.contains(&l.digest)).collect();
    let source = RegistrySource { client: client.clone(), repo: r.clone(), on };
    let layers: Vec<ChainBlob<'_>> = resolved
        .manifest_doc
        .layers
        .iter()
        .zip(&resolved.config.rootfs.diff_ids)
        .map(|(blob, diff_id)| ChainBlob { blob, diff_id })
        .collect();
    let result = fetch_unpacking(images.store(), &layers, &source, PARALLEL)
        .map_err(|e| match e {
            OciError::LayerMismatch { layer, unpacked, claimed } => {
                crate::image::unpacked_wrong(&resolved.manifest, layer, unpacked, claimed)
            }
            e => e,
        })
        .and_then(|_| resolved.store(images))
        .and_then(|_| crate::ensure_unpacked(images, &resolved.manifest).map(|_| ()));
    if let Err(e) = result {
        for l in new {
            let _ = std::fs::remove_file(content.path(&l.digest));
        }
        return Err(e);
    }
    if r.tag.is_some() {
        let mut name = r.clone();
        name.digest = None;
        images.tag(&name, &resolved.top)?;
    }
    Ok(resolved)
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The digest of the manifest (or index) under the tag.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had.
    pub existed: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
}

impl PushReport {
    fn new() -> PushReport {
        PushReport { digest: Digest::of(b""), size: 0, media_type: String::new(), uploaded: 0, existed: 0, mounted: 0 }
    }

    /// One line for people: `pushed NAME in 0.31s: 2 uploaded, 0 mounted, 1 already there`.
    pub fn summary(&self, name: &ImageRef, elapsed: std::time::Duration) -> String {
        format!(
            "pushed {} in {:.2}s: {} uploaded, {} mounted, {} already there",
            name.familiar(),
            elapsed.as_secs_f64(),
            self.uploaded,
            self.mounted,
            self.existed
        )
    }
}

/// Pushes blobs (from the content store) to `repo`, in parallel, counting into `report`.
pub fn push_blobs(
    images: &ImageStore,
    client: &Client,
    repo: &ImageRef,
    blobs: &[Descriptor],
    on: &OnTransfer,
    report: &mut PushReport,
) -> Result<(), OciError> {
    let content = images.store().content();
    let counts = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
    parallel(blobs, PARALLEL, |b| {
        // A layer made from a snapshot is written out to be uploaded (push sends gzip, so
        // only an uncompressed push gets here with one).
        content.ensure(&b.digest)?;
        let path = content.path(&b.digest);
        let from = images.origins(&b.digest)?.into_iter().find(|(reg, repo_name)| *reg == repo.registry && *repo_name != repo.repository);
        let how = client.push_blob(repo, b, &path, from.as_ref().map(|(_, r)| r.as_str()))?;
        let (i, word) = match how {
            Pushed::Uploaded => (0, "uploaded"),
            Pushed::Existed => (1, "exists"),
            Pushed::Mounted => (2, "mounted"),
        };
        counts[i].fetch_add(1, Ordering::Relaxed);
        on(Transfer::Done(b, word));
        Ok(())
    })?;
    report.uploaded += counts[0].load(Ordering::Relaxed);
    report.existed += counts[1].load(Ordering::Relaxed);
    report.mounted += counts[2].load(Ordering::Relaxed);
    images.record_origin(repo, &blobs.iter().map(|b| &b.digest).collect::<Vec<_>>())?;
    Ok(())
}

/// Pushes the image whose manifest (or index) is `digest` in the local store to `target`
/// (tag, or its own digest if `target` has none). An index is pushed whole when every
/// manifest it lists is in the store, else as the host platform's manifest alone. Layers
/// stored uncompressed leave as gzip ([`crate::convert::distributable`]), so the pushed
/// digest is that of the converted manifest, as docker's differs from its image ID.
pub fn push(images: &ImageStore, client: &Client, target: &ImageRef, digest: &Digest, on: &OnTransfer) -> Result<PushReport, OciError> {
    let content = images.store().content();
    let mut report = PushReport::new();
    let bytes = content.read(digest)?;
    let mut top = (digest.clone(), bytes);
    let as_index = crate::store::as_index(&top.1);
    let mut whole_index = false;
    if let Some(index) = &as_index {
        whole_index = index.manifests.iter().all(|m| content.contains(&m.digest));
        if whole_index {
            let mut replaced = Vec::new();
            for m in &index.manifests {
                let d = crate::convert::distributable(images, &m.digest)?;
                let mb = content.read(&d)?;
                push_manifest(images, client, target, &d, &mb, on, &mut report, Some(d.as_str()))?;
                if d != m.digest {
                    replaced.push((m.digest.clone(), d, mb.len() as u64));
                }
            }
            if !replaced.is_empty() {
                top.1 = crate::convert::replace_in_index(&top.1, &replaced)?;
                top.0 = content.put(&top.1)?;
            }
        } else {
            let d = crate::convert::distributable(images, &images.platform_manifest(digest, &Platform::host())?)?;
            let b = content.read(&d)?;
            top = (d, b);
        }
    } else {
        let d = crate::convert::distributable(images, digest)?;
        if d != *digest {
            top = (d.clone(), content.read(&d)?);
        }
    }
    let reference = target.tag.clone().unwrap_or_else(|| top.0.to_string());
    if whole_index {
        let media = media_type_of(&top.1, rdock_imagespec::MEDIA_TYPE_OCI_INDEX);
        report.digest = client.put_manifest(target, &reference, &media, &top.1)?;
        report.size = top.1.len() as u64;
        report.media_type = media;
    } else {
        push_manifest(images, client, target, &top.0, &top.1, on, &mut report, Some(&reference))?;
    }
    Ok(report)
}

fn media_type_of(bytes: &[u8], default: &str) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        #[serde(default)]
        media_type: Option<String>,
    }
    serde_json::from_slice::<P>(bytes).ok().and_then(|p| p.media_type).filter(|m| !m.is_empty()).unwrap_or_else(|| default.to_string())
}

#[allow(clippy::too_many_arguments)]
fn push_manifest(
    images: &ImageStore,
    client: &Client,
    target: &ImageRef,
    digest: &Digest,
    bytes: &[u8],
    on: &OnTransfer,
    report: &mut PushReport,
    reference: Option<&str>,
) -> Result<(), OciError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(&format!("manifest {digest}"), e))?;
    // Foreign layers stay where their URLs say, as docker pushes them (without
    // `allow-nondistributable-artifacts`): the registry accepts a manifest that names them.
    let (foreign, mut blobs): (Vec<Descriptor>, Vec<Descriptor>) = m.layers.iter().cloned().partition(Descriptor::is_non_distributable);
    for f in &foreign {
        on(Transfer::Done(f, "not uploaded (foreign layer, its URLs stay in the manifest)"));
    }
    blobs.push(m.config.clone());
    push_blobs(images, client, target, &blobs, on, report)?;
    let media = media_type_of(bytes, rdock_imagespec::MEDIA_TYPE_OCI_MANIFEST);
    let reference = reference.map(str::to_string).unwrap_or_else(|| digest.to_string());
    report.digest = client.put_manifest(target, &reference, &media, bytes)?;
    report.size = bytes.len() as u64;
    report.media_type = media;
    Ok(())
}

/// Writes an OCI image layout at `dir` holding `manifest` (tagged `tag` in index.json) and
/// the blobs it names, copied from the store. What was there before is replaced.
pub fn write_layout(images: &ImageStore, dir: &Path, manifest: &[u8], media_type: &str, tag: &str) -> Result<Digest, OciError> {
    let content = images.store().content();
    let io = |p: &Path, e| OciError::Io(p.to_path_buf(), e);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
    let m: Manifest = serde_json::from_slice(manifest).map_err(|e| bad("cache manifest", e))?;
    for b in std::iter::once(&m.config).chain(m.layers.iter()) {
        let dest = blobs.join(b.digest.hex());
        if dest.exists() {
            continue;
        }
        content.ensure(&b.digest)?;
        let tmp = blobs.join(format!(".{}.tmp{}", b.digest.hex(), std::process::id()));
        // A hard link when the layout is on the store's filesystem, else a copy.
        if std::fs::hard_link(content.path(&b.digest), &tmp).is_err() {
            std::fs::copy(content.path(&b.digest), &tmp).map_err(|e| io(&content.path(&b.digest), e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    }
    let digest = Digest::of(manifest);
    let mpath = blobs.join(digest.hex());
    std::fs::write(&mpath, manifest).map_err(|e| io(&mpath, e))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| io(dir, e))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": rdock_imagespec::MEDIA_TYPE_OCI_INDEX,
        "manifests": [{
            "mediaType": media_type, "digest": digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    let ipath = dir.join("index.json");
    let tmp = dir.join(format!(".index.json.tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&index).unwrap_or_default()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &ipath).map_err(|e| io(&ipath, e))?;
    Ok(digest)
}

/// Reads the manifest tagged `tag` (or the only one) from the OCI layout at `dir`,
/// verified against its digest.
pub fn read_layout(dir: &Path, tag: &str) -> Result<Vec<u8>, OciError> {
    let ipath = dir.join("index.json");
    let text = std::fs::read(&ipath).map_err(|e| OciError::Io(ipath.clone(), e))?;
    let index: Index = serde_json::from_slice(&text).map_err(|e| bad(&ipath.display().to_string(), e))?;
    let pick = index
        .manifests
        .iter()
        .find(|m| m.annotations.get("org.opencontainers.image.ref.name").is_some_and(|t| t == tag))
        .or_else(|| if index.manifests.len() == 1 { index.manifests.first() } else { None })
        .ok_or_else(|| OciError::Inconsistent { image: dir.display().to_string(), reason: format!("no manifest tagged {tag:?}") })?;
    let path = dir.join("blobs").join(pick.digest.algorithm()).join(pick.digest.hex());
    let bytes = std::fs::read(&path).map_err(|e| OciError::Io(path.clone(), e))?;
    if Digest::of(&bytes) != pick.digest {
        return Err(OciError::Inconsistent {
            image: dir.display().to_string(),
            reason: format!("{} does not match its digest", path.display()),
        });
    }
    Ok(bytes)
}

/// Pushes an artifact (a manifest whose config and layers are in the store) to `target`,
/// uploading only the blobs the registry lacks.
pub fn push_artifact(
    images: &ImageStore,
    client: &Client,
    target: &ImageRef,
    manifest: &[u8],
    on: &OnTransfer,
) -> Result<PushReport, OciError> {
    let d = Digest::of(manifest);
    let mut report = PushReport::new();
    let reference = target.tag.clone().unwrap_or_else(|| d.to_string());
    push_manifest(images, client, target, &d, manifest, on, &mut report, Some(&reference))?;
    Ok(report)
}
