//! Layers from elsewhere: the sources blobs the store lacks come from (a registry
//! repository, an OCI layout, the repositories the store recorded them in), fetching in
//! parallel, and a chain's layers unpacked while they download. Pulls, imported caches
//! and base images whose layers were left to fetch until needed all come in this way.

use crate::{ChainBlob, ImageStore, OciError};
use rdock_imagespec::{Descriptor, Digest, ImageConfig, ImageRef};
use rdock_registry::Client;
use rdock_snapshotter::ContentStore;
use std::path::PathBuf;
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

    /// [`BlobSource::fetch`], the bytes also written as they arrive to what `tap` makes
    /// (a layer unpacked while it downloads). A source that cannot tap just fetches.
    fn fetch_tapped(&self, desc: &Descriptor, content: &ContentStore, tap: &rdock_registry::Tap<'_>) -> Result<(), OciError> {
        let _ = tap;
        self.fetch(desc, content)
    }
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

    /// The bytes from the registry are tapped (see [`Client::fetch_blob_tapped`]); not
    /// those of a foreign layer's URLs.
    fn fetch_tapped(&self, desc: &Descriptor, content: &ContentStore, tap: &rdock_registry::Tap<'_>) -> Result<(), OciError> {
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
        self.fetch_tapped(desc, content, &|| None)
    }

    fn fetch_tapped(&self, desc: &Descriptor, content: &ContentStore, tap: &rdock_registry::Tap<'_>) -> Result<(), OciError> {
        if content.contains(&desc.digest) {
            return Ok(());
        }
        let origins = self.images.origins(&desc.digest)?;
        let mut last = None;
        for (registry, repository) in origins {
            let repo = ImageRef { registry, repository, tag: None, digest: None };
            match (RegistrySource { client: self.client.clone(), repo, on: self.on.clone() }).fetch_tapped(desc, content, tap) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| OciError::Snapshot(rdock_snapshotter::SnapshotError::BlobNotFound(desc.digest.to_string()))))
    }
}

/// Fetches the blobs of a layer chain (bottom first) that the store has neither as blobs
/// nor unpacked, from `source`, `threads` at a time, each unpacked while it downloads
/// where the source can tap its bytes (a registry), then makes the chain's snapshots,
/// named by chain ID, and returns the top one. How layers come in from elsewhere: pulls,
/// imported caches, base images whose layers were left to fetch when first needed.
pub fn fetch_unpacking(
    store: &rdock_snapshotter::Store,
    layers: &[ChainBlob<'_>],
    source: &dyn BlobSource,
    threads: usize,
) -> Result<Option<String>, OciError> {
    let names = crate::image::chain_names(layers);
    let streamed = StreamedLayers::new(store, &names)?;
    let content = store.content();
    let missing: Vec<usize> = (0..layers.len()).filter(|&i| streamed.wanted[i] && !content.contains(&layers[i].blob.digest)).collect();
    let fetched = parallel(&missing, threads, |&i| source.fetch_tapped(layers[i].blob, content, &|| streamed.tap(i)));
    let unpacked = streamed.finish();
    fetched?;
    place_streamed(store, layers, &names, unpacked)?;
    crate::image::unpack_chain(store, layers)
}

/// The layers of a chain being unpacked as they download: one unpacking thread per
/// download attempt of each layer not yet a snapshot, fed through a pipe.
struct StreamedLayers {
    layers: Arc<rdock_snapshotter::LayerStore>,
    /// Per layer: whether it is wanted (not unpacked yet), and its unpacking threads.
    wanted: Vec<bool>,
    threads: Vec<std::sync::Mutex<Vec<Unpacking>>>,
}

type Unpacking = std::thread::JoinHandle<Result<rdock_snapshotter::Unpacked, rdock_snapshotter::SnapshotError>>;

impl StreamedLayers {
    /// For the chain whose snapshots are `names`.
    fn new(store: &rdock_snapshotter::Store, names: &[String]) -> Result<StreamedLayers, OciError> {
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

/// Places the layers unpacked while downloading, bottom up, as the snapshots
/// [`crate::unpack_chain`] would make (which then has nothing left to do but what was not
/// streamed). Each must have unpacked to the diff ID claimed for it.
fn place_streamed(
    store: &rdock_snapshotter::Store,
    layers: &[ChainBlob<'_>],
    names: &[String],
    unpacked: Vec<Option<rdock_snapshotter::Unpacked>>,
) -> Result<(), OciError> {
    let mut parent: Option<&str> = None;
    for (i, u) in unpacked.into_iter().enumerate() {
        if !store.snapshots().exists(&names[i])? {
            let Some(u) = u else { break };
            let l = &layers[i];
            if u.diff_id() != Some(l.diff_id) {
                let unpacked = u.diff_id().cloned().unwrap_or_else(|| Digest::of(b""));
                return Err(OciError::LayerMismatch { layer: l.blob.digest.clone(), unpacked, claimed: l.diff_id.clone() });
            }
            store.layers().place_unpacked(&names[i], parent, u, &l.blob.digest, &l.blob.media_type)?;
            tracing::debug!(layer = %l.blob.digest, "unpacked while downloading");
        }
        parent = Some(&names[i]);
    }
    Ok(())
}

/// [`crate::ensure_unpacked`], fetching from `source` the layers the store lacks, `threads`
/// at a time, each unpacked while it downloads.
pub fn fetch_unpacked_image(
    images: &ImageStore,
    manifest: &Digest,
    source: &dyn BlobSource,
    threads: usize,
) -> Result<(Option<String>, ImageConfig), OciError> {
    crate::image::unpack_image_with(images, manifest, |store, layers| fetch_unpacking(store, layers, source, threads))
}
