//! What a caller hands the frontend: the build's options and the resolver it looks base
//! images up through (the frontend itself does no I/O), and the platform arguments both
//! the lowering and the build checks derive from them.

use rdock_imagespec::{ImageConfig, ImageRef, Platform};
use rdock_llb::{HostIp, Network};
use std::collections::BTreeMap;

/// What the frontend needs to know about a base image. Implemented by the caller over its
/// image store, so the frontend itself does no I/O.
pub trait ImageResolver: Sync {
    /// Finds `image` for `platform` and returns its config and the reference to pin in the
    /// source op (normally with the platform's manifest digest, so the cache follows the
    /// image's content). An image with a single platform is returned whatever its platform;
    /// the InvalidBaseImagePlatform check reports a mismatch, as BuildKit does.
    fn resolve(&self, image: &ImageRef, platform: &Platform) -> Result<ResolvedImage, ResolveError>;
}

/// Why a base image could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// Neither the local store nor the image's registry has it.
    #[error("not found in the local store, nor in its registry {registry}")]
    NotFound {
        /// The registry asked.
        registry: String,
    },
    /// Looking it up failed; `what` says where (the store, the registry), `source` why.
    /// Shared, so that a resolver may remember an answer and give it again.
    #[error("{what}: {source}")]
    Failed {
        /// Where it failed.
        what: String,
        /// Why.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl ResolveError {
    /// A failure of `what`, keeping `source`.
    pub fn failed(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> ResolveError {
        ResolveError::Failed { what: what.into(), source: std::sync::Arc::new(source) }
    }
}

/// A resolved base image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference to build from, pinned by digest where known.
    pub pinned: String,
    /// Its config.
    pub config: ImageConfig,
}

/// Options for a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The Dockerfile's name, for errors.
    pub filename: String,
    /// `--opt target=`.
    pub target: Option<String>,
    /// `--opt build-arg:K=V`.
    pub build_args: BTreeMap<String, String>,
    /// The platform the build runs on (BUILDPLATFORM): the worker's own.
    pub build_platform: Platform,
    /// `--opt platform=` (TARGETPLATFORM). None builds for the build platform, and then, as in
    /// BuildKit, a stage's image keeps its base image's platform.
    pub target_platform: Option<Platform>,
    /// `.dockerignore` patterns, applied to the context.
    pub excludes: Vec<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter` / `--opt no-cache=STAGE,…`: stages (by name, any case) whose
    /// steps run again whatever the cache holds.
    pub no_cache_stages: Vec<String>,
    /// The network of every RUN without `--network` (`--network` on `rdock build`,
    /// `--opt force-network-mode=` on rdock-build): `default`, `none` or `host`.
    pub network: Network,
    /// `--add-host HOST:IP`: `/etc/hosts` entries of every RUN.
    pub extra_hosts: Vec<HostIp>,
    /// `--label K=V` (`--opt label:K=V`): labels of the image, over the Dockerfile's.
    pub labels: BTreeMap<String, String>,
    /// `--shm-size` and `--ulimit` of every RUN.
    pub resources: rdock_llb::Resources,
    /// Named contexts by name (`--build-context NAME=…`, `--opt context:NAME=…`).
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// Step names start with the target platform (`[linux/arm64 2/3] RUN …`), as
    /// BuildKit names them in a build for several platforms.
    pub platform_in_names: bool,
    /// A word step names start with (`[app 2/3] RUN …`): the bake target's name, as
    /// buildx bake names steps when it builds several targets.
    pub name_prefix: Option<String>,
}

/// A named context as the frontend uses it: in place of a stage of its name, of
/// `FROM NAME`, of `COPY --from=NAME` and of `RUN --mount=from=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local source of this name, which the caller maps to a directory, and its
    /// `.dockerignore` patterns.
    Local {
        /// The local source's name.
        source: String,
        /// Patterns left out.
        excludes: Vec<String>,
    },
    /// An image (`docker-image://REF`; an OCI layout's image, loaded by the caller and
    /// named by digest).
    Image(ImageRef),
    /// A git repository, `URL#ref:subdir`.
    Git(String),
    /// An http(s) URL: its body as one file, `/context`.
    Http(String),
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            filename: "Dockerfile".into(),
            target: None,
            build_args: BTreeMap::new(),
            build_platform: Platform::host(),
            target_platform: None,
            excludes: Vec::new(),
            no_cache: false,
            no_cache_stages: Vec::new(),
            network: Network::Sandbox,
            extra_hosts: Vec::new(),
            labels: BTreeMap::new(),
            resources: Default::default(),
            named_contexts: BTreeMap::new(),
            platform_in_names: false,
            name_prefix: None,
        }
    }
}

impl BuildOptions {
    /// The named context `name` stands for, and the name it is known by, looked up as
    /// BuildKit does: the name as written, then its familiar form without `:latest`
    /// (`docker.io/library/alpine:latest` is `alpine`).
    pub fn named_context(&self, name: &str) -> Option<(String, NamedContext)> {
        if let Some(c) = self.named_contexts.get(name) {
            return Some((name.to_string(), c.clone()));
        }
        let familiar = ImageRef::parse(name).ok()?.familiar();
        let short = familiar.strip_suffix(":latest").unwrap_or(&familiar);
        self.named_contexts.get(short).map(|c| (short.to_string(), c.clone()))
    }

    /// TARGETPLATFORM: the explicit target, else the build platform.
    pub fn target(&self) -> Platform {
        self.target_platform.clone().unwrap_or_else(|| self.build_platform.clone())
    }
}

/// The automatic platform args (BUILDPLATFORM, TARGETARCH, …) for a build on `b` for `p`.
pub(crate) fn builtin_args(b: &Platform, p: &Platform) -> Vec<(String, String)> {
    let variant = p.variant.clone().unwrap_or_default();
    vec![
        ("BUILDPLATFORM".into(), b.to_string()),
        ("BUILDOS".into(), b.os.clone()),
        ("BUILDARCH".into(), b.architecture.clone()),
        ("BUILDVARIANT".into(), b.variant.clone().unwrap_or_default()),
        ("TARGETPLATFORM".into(), p.to_string()),
        ("TARGETOS".into(), p.os.clone()),
        ("TARGETARCH".into(), p.architecture.clone()),
        ("TARGETVARIANT".into(), variant),
    ]
}
