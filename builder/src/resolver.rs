//! Base images for the frontend: from the local store first, then from their registry
//! (manifest and config only: layers are fetched when a step needs them), pinned by
//! manifest digest.

use rdock_frontend::{ImageResolver, ResolveError, ResolvedImage};
use rdock_imagespec::{ImageRef, Platform};
use rdock_oci::ImageStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the registry answered, by reference and platform.
type Answers = HashMap<(String, String), Result<ResolvedImage, ResolveError>>;

pub(crate) struct StoreResolver {
    pub images: ImageStore,
    pub client: Arc<rdock_registry::Client>,
    /// Asked once per build: the build checks and the lowering both ask.
    pub answers: Mutex<Answers>,
    /// `--pull`: the registry first, for every name it can answer for (a name pinned by
    /// digest the store has needs no registry).
    pub pull: bool,
}

impl ImageResolver for StoreResolver {
    fn resolve(&self, image: &ImageRef, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let key = (image.to_string(), platform.to_string());
        if let Some(r) = self.answers.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return r.clone();
        }
        let r = self.resolve_uncached(image, platform);
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).insert(key, r.clone());
        r
    }
}

impl StoreResolver {
    fn resolve_uncached(&self, image: &ImageRef, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let local = |e: rdock_oci::OciError| ResolveError::failed("the local store", e);
        let local_first = !self.pull || image.digest.is_some();
        if local_first && let Some(digest) = self.images.resolve(image, platform).map_err(local)? {
            let m = self.images.manifest(&digest).map_err(local)?;
            let config = self.images.config(&m).map_err(local)?;
            let mut pinned = image.clone();
            pinned.digest = Some(digest);
            return Ok(ResolvedImage { pinned: pinned.to_string(), config });
        }
        let r = rdock_oci::resolve_remote(&self.client, image, platform).and_then(|r| r.store(&self.images).map(|_| r)).map_err(
            |e| match e {
                rdock_oci::OciError::Registry(rdock_registry::RegistryError::NotFound { .. }) => {
                    ResolveError::NotFound { registry: image.registry.clone() }
                }
                other if !local_first => ResolveError::failed("--pull asked its registry, and pulling it failed", other),
                other => ResolveError::failed("not in the local store, and pulling it failed", other),
            },
        )?;
        // Pinned exactly as a local image would be (name, tag and platform manifest), so
        // that cache keys agree between a store that pulled and one that loaded it.
        let mut pinned = image.clone();
        pinned.digest = Some(r.manifest);
        Ok(ResolvedImage { pinned: pinned.to_string(), config: r.config })
    }
}
