//! Images ↔ registries: resolving a reference to a platform's manifest and config, pulling
//! layers in parallel (only those the store lacks), pushing (only blobs the registry
//! lacks, mounted from another repository of the same registry when we know one that has
//! them), and the blob sources that remote cache imports and lazily pulled base images
//! fetch from. Every blob is verified before it becomes visible in the store; the tag is
//! written last, so a failed pull leaves no name pointing at a half-stored image.

use crate::{ImageStore, OciError};
use rdock_imagespec::{Descriptor, Digest, ImageConfig, ImageRef, Index, Manifest, Platform};
use rdock_registry::{Client, Pushed};
use rdock_snapshotter::ContentStore;
use rusqlite::params;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What happened to one blob, for progress displays.
#[derive(Debug, Clone, Copy)]
pub enum Transfer<'a> {
    /// Bytes moved so far.
    Bytes(&'a Descriptor, u64),
    /// Finished: `"downloaded"`, `"exists"`, `"uploaded"`, `"mounted"`, or what happened
    /// to a foreign layer.
    Done(&'a Descriptor, &'static str),
}

/// A progress callback; called from several threads at once.
pub type OnTransfer = Arc<dyn Fn(Transfer<'_>) + Send + Sync>;

/// A progress callback that ignores everything.
pub fn quiet() -> OnTransfer {
    Arc::new(|_| {})
}

/// Where blobs the store lacks can be fetched from: a registry repository, an OCI layout
/// directory, or wherever the store recorded a blob coming from.
pub trait BlobSource: Send + Sync {
    /// Puts the blob into `content`, verified against its digest and size.
    fn fetch(&self, desc: &Descriptor, content: &ContentStore) -> Result<(), OciError>;
}

/// Runs `f` over `items` on up to `threads` threads; the first error wins.
pub fn parallel<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) -> Result<(), OciError> + Sync) -> Result<(), OciError> {
    if items.len() <= 1 || threads <= 1 {
        return items.iter().try_for_each(f);
    }
    let next = AtomicUsize::new(0);
    let first_err = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item) {
                        first_err.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        next.store(items.len(), Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// [`parallel`] with a result per item, in the items' order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R, OciError> + Sync,
) -> Result<Vec<R>, OciError> {
    let slots: Vec<std::sync::Mutex<Option<R>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let indexed: Vec<(usize, &T)> = items.iter().enumerate().collect();
    parallel(&indexed, threads, |(i, item)| {
        let r = f(item)?;
        *slots[*i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        Ok(())
    })?;
    Ok(slots.into_iter().filter_map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner())).collect())
}

/// How many blobs move at once.
const PARALLEL: usize = 6;

/// A blob source over one registry repository.
pub struct RegistrySource {
    /// The client.
    pub client: Arc<Client>,
    /// The repository (tag and digest ignored).
    pub repo: ImageRef,
    /// Progress.
    pub on: OnTransfer,
}

impl BlobSource for RegistrySource {
    fn fetch(&self, desc: &Descriptor, content: &ContentStore) -> Result<(), OciError> {
        self.fetch_tapped(desc, content, &|| None)
    }
}

impl RegistrySource {
    /// [`BlobSource::fetch`], the bytes from the registry also written to what `tap` makes
    /// (see [`Client::fetch_blob_tapped`]); not those of a foreign layer's URLs.
    pub fn fetch_tapped(&self, desc: &Descriptor, content: &ContentStore, tap: &rdock_registry::Tap<'_>) -> Result<(), OciError> {
        if content.contains(&desc.digest) {
            (self.on)(Transfer::Done(desc, "exists"));
            return Ok(());
        }
        let progress = |n| (self.on)(Transfer::Bytes(desc, n));
        // A foreign layer comes from its URLs first, as docker and containerd fetch it;
        // the registry is the fallback (a mirror may hold it).
        let mut first_err = None;
        for url in &desc.urls {
            match self.client.fetch_url(url, desc, content, &progress) {
                Ok(()) => {
                    (self.on)(Transfer::Done(desc, "downloaded from its URL (foreign layer)"));
                    return Ok(());
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match self.client.fetch_blob_tapped(&self.repo, desc, content, &progress, tap) {
            Ok(()) => {}
            Err(e) => return Err(first_err.unwrap_or(e).into()),
        }
        (self.on)(Transfer::Done(desc, "downloaded"));
        Ok(())
    }
}

/// A blob source over an OCI image layout directory (`blobs/sha256/HEX`).
pub struct LayoutSource {
    /// The layout's root.
    pub dir: PathBuf,
}

impl BlobSource for LayoutSource {
    fn fetch(&self, desc: &Descriptor, content: &ContentStore) -> Result<(), OciError> {
        if content.contains(&desc.digest) {
            return Ok(());
        }
        let path = self.dir.join("blobs").join(desc.digest.algorithm()).join(desc.digest.hex());
        let mut f = std::fs::File::open(&path).map_err(|e| OciError::Io(path.clone(), e))?;
        content.put_reader(&mut f, Some(&desc.digest))?;
        Ok(())
    }
}

/// Fetches blobs from the registry repositories the store recorded them in (the layers
/// of base images whose manifests were resolved but whose layers were not yet needed).
pub struct OriginSource {
    /// The client.
    pub client: Arc<Client>,
    /// The store whose origins are consulted.
    pub images: ImageStore,
    /// Progress.
    pub on: OnTransfer,
}

impl BlobSource for OriginSource {
    fn fetch(&self, desc: &Descriptor, content: &ContentStore) -> Result<(), OciError> {
        if content.contains(&desc.digest) {
            return Ok(());
        }
        let origins = self.images.origins(&desc.digest)?;
        let mut last = None;
        for (registry, repository) in origins {
            let repo = ImageRef { registry, repository, tag: None, digest: None };
            match (RegistrySource { client: self.client.clone(), repo, on: self.on.clone() }).fetch(desc, content) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| OciError::Snapshot(rdock_snapshotter::SnapshotError::BlobNotFound(desc.digest.to_string()))))
    }
}

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
    let streamed = StreamedLayers::new(images.store(), &resolved)?;
    let indices: Vec<usize> = (0..resolved.manifest_doc.layers.len()).collect();
    let fetched = parallel(&indices, PARALLEL, |&i| source.fetch_tapped(&resolved.manifest_doc.layers[i], content, &|| streamed.tap(i)));
    let unpacked = streamed.finish();
    let result = fetched
        .and_then(|_| resolved.store(images))
        .and_then(|_| place_streamed(images.store(), &resolved, unpacked))
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

/// The layers of a pull being unpacked as they download: one unpacking thread per
/// download attempt of each layer not yet a snapshot, fed through a pipe.
struct StreamedLayers {
    layers: Arc<rdock_snapshotter::LayerStore>,
    /// Per layer: whether it is wanted (not unpacked yet), and its unpacking threads.
    wanted: Vec<bool>,
    threads: Vec<std::sync::Mutex<Vec<Unpacking>>>,
}

type Unpacking = std::thread::JoinHandle<Result<rdock_snapshotter::Unpacked, rdock_snapshotter::SnapshotError>>;

impl StreamedLayers {
    fn new(store: &rdock_snapshotter::Store, resolved: &Resolved) -> Result<StreamedLayers, OciError> {
        let names = crate::image::chain_names_of(&resolved.config.rootfs.diff_ids);
        let wanted = names.iter().map(|n| store.snapshots().exists(n).map(|e| !e)).collect::<Result<Vec<_>, _>>()?;
        let threads = names.iter().map(|_| Default::default()).collect();
        Ok(StreamedLayers { layers: store.layers().clone(), wanted, threads })
    }

    /// The writer for one download attempt of layer `i`: a pipe to a new unpacking thread.
    fn tap(&self, i: usize) -> Option<Box<dyn std::io::Write + Send>> {
        if !self.wanted.get(i).copied().unwrap_or(false) {
            return None;
        }
        let (r, w) = std::io::pipe().ok()?;
        let layers = self.layers.clone();
        let what = format!("layer {i}");
        let t = std::thread::spawn(move || layers.unpack_stream(r, &what));
        self.threads[i].lock().unwrap_or_else(|p| p.into_inner()).push(t);
        Some(Box::new(w))
    }

    /// Waits for every unpacking thread (each download is over, so each pipe is closed);
    /// per layer, what its last attempt unpacked. Earlier attempts' directories go.
    fn finish(self) -> Vec<Option<rdock_snapshotter::Unpacked>> {
        self.threads
            .into_iter()
            .map(|t| {
                let attempts = t.into_inner().unwrap_or_else(|p| p.into_inner());
                attempts.into_iter().map(|h| h.join().ok().and_then(Result::ok)).last().flatten()
            })
            .collect()
    }
}

/// Places the layers a pull unpacked while downloading, bottom up, as the snapshots
/// [`crate::ensure_unpacked`] would make (which then has nothing left to do but what was
/// not streamed). Each must have unpacked to the diff ID the config claims.
fn place_streamed(
    store: &rdock_snapshotter::Store,
    resolved: &Resolved,
    unpacked: Vec<Option<rdock_snapshotter::Unpacked>>,
) -> Result<(), OciError> {
    let diff_ids = &resolved.config.rootfs.diff_ids;
    let names = crate::image::chain_names_of(diff_ids);
    let mut parent: Option<&str> = None;
    for (i, u) in unpacked.into_iter().enumerate() {
        if !store.snapshots().exists(&names[i])? {
            let Some(u) = u else { break };
            let l = &resolved.manifest_doc.layers[i];
            if u.diff_id() != Some(&diff_ids[i]) {
                let unpacked = u.diff_id().cloned().unwrap_or_else(|| Digest::of(b""));
                return Err(crate::image::unpacked_wrong(&resolved.manifest, l.digest.clone(), unpacked, diff_ids[i].clone()));
            }
            store.layers().place_unpacked(&names[i], parent, u, &l.digest, &l.media_type)?;
            tracing::debug!(layer = %l.digest, "unpacked while downloading");
        }
        parent = Some(&names[i]);
    }
    Ok(())
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
