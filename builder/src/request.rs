//! What a build is asked to do, as types: no flag spellings here (the CLI parses those).

use rdock_imagespec::{ImageRef, Platform};
use rdock_oci::ExportForm;
use rdock_solver::remote::CacheMode;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a build's result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// docker-archive tarball.
    Docker {
        /// The tarball (`-`: standard output).
        dest: PathBuf,
        /// Names recorded in it.
        names: Vec<ImageRef>,
        /// Layer compression, media types and annotations.
        form: ExportForm,
    },
    /// OCI layout tarball, or directory with `tar=false`.
    Oci {
        /// The tarball (`-`: standard output) or directory.
        dest: PathBuf,
        /// Names recorded in it.
        names: Vec<ImageRef>,
        /// Layer compression, media types and annotations.
        form: ExportForm,
        /// A tarball (else an OCI layout directory).
        tar: bool,
    },
    /// The final filesystem in a directory.
    Local {
        /// The directory.
        dest: PathBuf,
    },
    /// The final filesystem as a tarball.
    Tar {
        /// The tarball.
        dest: PathBuf,
    },
    /// The local image store under names, and with `push=true` their registries.
    Image {
        /// The names.
        names: Vec<ImageRef>,
        /// Push to the names' registries.
        push: bool,
        /// `registry.insecure=true`: plain HTTP to these registries.
        insecure: bool,
        /// `rewrite-timestamp=true`: the stored (and pushed) image has its own layers'
        /// file times clamped to `SOURCE_DATE_EPOCH`.
        rewrite_timestamp: bool,
    },
}

impl Output {
    /// Whether the output is an image (so the build commits one, and makes its layers early).
    pub fn needs_image(&self) -> bool {
        matches!(self, Output::Docker { .. } | Output::Oci { .. } | Output::Image { .. })
    }
}

/// Privileges a Dockerfile can ask for and the caller must grant, as BuildKit's entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entitlement {
    /// `network.host`: RUN --network=host.
    NetworkHost,
    /// `security.insecure`: RUN --security=insecure.
    SecurityInsecure,
}

impl Entitlement {
    /// BuildKit's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }

    /// Reads BuildKit's spelling.
    pub fn parse(s: &str) -> Option<Entitlement> {
        [Entitlement::NetworkHost, Entitlement::SecurityInsecure].into_iter().find(|e| e.name() == s)
    }
}

/// Where a cache export goes or an import comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheLocation {
    /// A registry reference.
    Registry(ImageRef),
    /// An OCI layout directory, and the tag in its index.
    Local {
        /// The directory.
        dir: PathBuf,
        /// The tag (`latest`).
        tag: String,
    },
}

/// A cache export: where, and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheExportSpec {
    /// Where.
    pub to: CacheLocation,
    /// min or max.
    pub mode: CacheMode,
    /// `cache-mounts=true`.
    pub mounts: bool,
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile's path.
    pub dockerfile: PathBuf,
    /// The stage to build (None: the last).
    pub target: Option<String>,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// Labels of the image, over the Dockerfile's (`--label`).
    pub labels: BTreeMap<String, String>,
    /// Outputs.
    pub outputs: Vec<Output>,
    /// Run every step, ignoring cache records.
    pub no_cache: bool,
    /// Stages to rebuild without the cache.
    pub no_cache_stages: Vec<String>,
    /// Where to write result digests as JSON (buildx's `--metadata-file` keys).
    pub metadata_file: Option<PathBuf>,
    /// Secret values and SSH agents by id.
    pub secrets: rdock_worker::Secrets,
    /// The target platform (None: the host's).
    pub platform: Option<Platform>,
    /// Entitlements granted: what RUN --network=host and --security=insecure need.
    pub allow: Vec<Entitlement>,
    /// Caches to import.
    pub cache_imports: Vec<CacheLocation>,
    /// Caches to export.
    pub cache_exports: Vec<CacheExportSpec>,
    /// The network of every RUN without its own.
    pub network: rdock_llb::Network,
    /// Extra `/etc/hosts` entries of every RUN.
    pub extra_hosts: Vec<rdock_llb::HostIp>,
    /// How many steps run at once.
    pub max_parallelism: std::num::NonZeroUsize,
    /// Ask base images' registries even for images the store has (`--pull`).
    pub pull: bool,
    /// `--shm-size` and `--ulimit` of every RUN.
    pub resources: rdock_llb::Resources,
}

impl BuildRequest {
    /// A request to build `dockerfile` in `context` with no outputs and the defaults.
    pub fn new(context: PathBuf, dockerfile: PathBuf) -> BuildRequest {
        BuildRequest {
            context,
            dockerfile,
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            outputs: Vec::new(),
            no_cache: false,
            no_cache_stages: Vec::new(),
            metadata_file: None,
            secrets: rdock_worker::Secrets::default(),
            platform: None,
            allow: Vec::new(),
            cache_imports: Vec::new(),
            cache_exports: Vec::new(),
            network: rdock_llb::Network::Sandbox,
            extra_hosts: Vec::new(),
            max_parallelism: rdock_solver::default_parallelism(),
            pull: false,
            resources: Default::default(),
        }
    }

    /// Registries the outputs may reach over plain HTTP.
    pub fn insecure_registries(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for o in &self.outputs {
            if let Output::Image { names, insecure: true, .. } = o {
                hosts.extend(names.iter().map(|n| n.registry.clone()));
            }
        }
        hosts
    }
}

/// What a build produced.
#[derive(Debug, Clone, Default)]
pub struct BuildSummary {
    /// Vertices that ran.
    pub executed: usize,
    /// Vertices from the cache.
    pub cached: usize,
    /// The image manifest digest, if an image was made.
    pub manifest: Option<String>,
    /// The image ID (its config's digest), if an image was made.
    pub image_id: Option<String>,
}
