//! The build pipeline as a library: a Dockerfile and its context in; images, archives,
//! directories and cache exports out. The CLI parses flags into a [`BuildRequest`] and
//! renders what this crate reports; any other program can do the same.
//!
//! A build has two halves, so a caller can stop between them (`--check`, `--dump-llb`) or
//! show the build checks' warnings before anything runs:
//!
//! 1. [`Pipeline::load`]: reads the Dockerfile and `.dockerignore`, resolves base images
//!    (local store, then registry) and lowers it to LLB, with its warnings.
//! 2. [`Pipeline::build`]: checks entitlements, imports caches, solves, exports caches,
//!    writes the outputs and the metadata file.
//!
//! Architecture invariant: nothing here prints. Step progress goes to the caller's
//! [`rdock_solver::ProgressSink`], blob transfers to its [`rdock_oci::OnTransfer`], and
//! warnings and what outputs did to its [`Notices`].
//!
//! ```no_run
//! use rdock_builder::{BuildRequest, Notices, Pipeline};
//! # fn demo(store: rdock_snapshotter::Store, notices: std::sync::Arc<dyn Notices>) -> Result<(), rdock_builder::BuildError> {
//! let req = BuildRequest::new(".".into(), "Dockerfile".into());
//! let client = std::sync::Arc::new(rdock_registry::Client::new(Default::default()));
//! let pipeline = Pipeline::new(store, client, Default::default(), rdock_oci::quiet(), notices)?;
//! let lowered = pipeline.load(&req)?;
//! let summary = pipeline.build(&req, &lowered, &rdock_solver::NoProgress)?;
//! println!("{} steps ran", summary.executed);
//! # Ok(()) }
//! ```

mod cache;
pub mod context;
mod entitlements;
mod outputs;
mod platforms;
mod request;
mod resolver;

pub use request::{BuildRequest, BuildSummary, CacheExportSpec, CacheLocation, DockerfileSource, Entitlement, NamedContextSource, Output};

use rdock_frontend::{BuildOptions, Lowered, NamedContext};
use rdock_imagespec::Platform;
use rdock_oci::{BuiltOn, ImageStore, OnTransfer};
use rdock_registry::Client;
use rdock_snapshotter::Store;
use rdock_solver::{ProgressSink, SolveRequest, Solver};
use rdock_worker::{NamespaceExecutor, Worker};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// What the pipeline tells its caller beside step progress.
pub trait Notices: Send + Sync {
    /// Something the user should know that does not stop the build.
    fn warning(&self, text: &str);
    /// What an output did (`pushed … in 0.31s: …`).
    fn done(&self, text: &str);
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile could not be read.
    #[error("reading Dockerfile {}", path.display())]
    Dockerfile {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The context is not a directory (a usage error).
    #[error("build context {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A stdin, git or URL context could not be laid out.
    #[error(transparent)]
    Context(#[from] context::ContextError),
    /// A named context's image could not be read.
    #[error("named context {name}")]
    NamedContext {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: rdock_oci::OciError,
    },
    /// The request asks for something rdock cannot do (a usage error).
    #[error("{0} is not supported")]
    Unsupported(String),
    /// `SOURCE_DATE_EPOCH` is not a number (a usage error).
    #[error("SOURCE_DATE_EPOCH={0}: expected Unix seconds")]
    SourceDateEpoch(String),
    /// The Dockerfile is wrong, or a base image could not be resolved. (Boxed: it carries
    /// the rendered source excerpt, and every other result would pay for its size.)
    #[error(transparent)]
    Frontend(Box<rdock_frontend::FrontendError>),
    /// `# check=error=true` and the build checks warned.
    #[error("{0} build check warning{s} and `# check=error=true`", s = if *.0 == 1 { "" } else { "s" })]
    Checks(usize),
    /// A step needs a privilege the caller did not grant.
    #[error("{step}: RUN {flag} needs the {} entitlement, which was not granted (pass --allow {})", entitlement.name(), entitlement.name())]
    NotEntitled {
        /// The step.
        step: String,
        /// Its flag.
        flag: &'static str,
        /// What it needs.
        entitlement: Entitlement,
    },
    /// The solve failed.
    #[error(transparent)]
    Solve(#[from] rdock_solver::SolveError),
    /// A step failed, and these are its Dockerfile lines.
    #[error("{source}\n{excerpt}")]
    Step {
        /// Why. (Boxed: a solve error is large, and every result would pay for it.)
        #[source]
        source: Box<rdock_solver::SolveError>,
        /// The step's lines, framed.
        excerpt: String,
    },
    /// Image store, archive or registry trouble.
    #[error(transparent)]
    Image(#[from] rdock_oci::OciError),
    /// Store trouble.
    #[error(transparent)]
    Store(#[from] rdock_snapshotter::SnapshotError),
    /// Registry trouble.
    #[error(transparent)]
    Registry(#[from] rdock_registry::RegistryError),
    /// An output could not be written.
    #[error("exporting to {}", dest.display())]
    Export {
        /// Where.
        dest: PathBuf,
        /// Why.
        #[source]
        source: rdock_oci::OciError,
    },
    /// An image could not be pushed.
    #[error("pushing {name}")]
    Push {
        /// The name pushed.
        name: String,
        /// Why.
        #[source]
        source: rdock_oci::OciError,
    },
    /// A cache import could not be read.
    #[error("importing cache from {name}")]
    CacheImport {
        /// Where from.
        name: String,
        /// Why.
        #[source]
        source: Box<BuildError>,
    },
    /// A cache export could not be written.
    #[error("exporting cache to {name}")]
    CacheExport {
        /// Where to.
        name: String,
        /// Why.
        #[source]
        source: rdock_oci::OciError,
    },
    /// A file could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl From<rdock_frontend::FrontendError> for BuildError {
    fn from(e: rdock_frontend::FrontendError) -> BuildError {
        BuildError::Frontend(Box::new(e))
    }
}

impl BuildError {
    /// Whether the request itself was wrong (exit status 2 in the CLI's contract).
    pub fn is_usage(&self) -> bool {
        matches!(self, BuildError::NotADirectory(_) | BuildError::SourceDateEpoch(_) | BuildError::Unsupported(_))
    }
}

/// Builds on one store. Holds the store's lease from creation to drop, so garbage
/// collection never removes what the build resolves, runs or exports.
pub struct Pipeline {
    store: Store,
    images: ImageStore,
    client: Arc<Client>,
    limits: rdock_worker::cgroup::Limits,
    transfers: OnTransfer,
    notices: Arc<dyn Notices>,
    _lease: rdock_snapshotter::lock::FileLock,
}

impl Pipeline {
    /// A pipeline on `store`, reaching registries through `client`, running steps under
    /// `limits`, reporting blob transfers to `transfers` and the rest to `notices`.
    pub fn new(
        store: Store,
        client: Arc<Client>,
        limits: rdock_worker::cgroup::Limits,
        transfers: OnTransfer,
        notices: Arc<dyn Notices>,
    ) -> Result<Pipeline, BuildError> {
        let lease = store.lease()?;
        let images = ImageStore::new(store.clone());
        Ok(Pipeline { store, images, client, limits, transfers, notices, _lease: lease })
    }

    /// Reads the Dockerfile and lowers it to LLB, resolving its base images: for the
    /// first of the request's platforms (the others are lowered by `build`).
    pub fn load(&self, req: &BuildRequest) -> Result<Lowered, BuildError> {
        self.lower(req, req.platforms.first())
    }

    /// Lowers the Dockerfile for `platform` (None: the host's).
    fn lower(&self, req: &BuildRequest, platform: Option<&Platform>) -> Result<Lowered, BuildError> {
        let (source, filename, specific) = match &req.dockerfile {
            DockerfileSource::Path(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| BuildError::Dockerfile { path: p.clone(), source })?;
                // `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's.
                (text, p.display().to_string(), Some(PathBuf::from(format!("{}.dockerignore", p.display()))))
            }
            DockerfileSource::Text(t) => (t.clone(), "Dockerfile".to_string(), None),
        };
        if !req.context.is_dir() {
            return Err(BuildError::NotADirectory(req.context.clone()));
        }
        let opts = BuildOptions {
            filename,
            target: req.target.clone(),
            build_args: req.build_args.clone(),
            excludes: dockerignore(specific.as_deref(), &req.context),
            no_cache: req.no_cache,
            no_cache_stages: req.no_cache_stages.clone(),
            target_platform: platform.cloned(),
            platform_in_names: req.platforms.len() > 1,
            name_prefix: req.name_prefix.clone(),
            network: req.network,
            extra_hosts: req.extra_hosts.clone(),
            labels: req.labels.clone(),
            resources: req.resources.clone(),
            named_contexts: self.named_contexts(req)?,
            ..Default::default()
        };
        let resolver = resolver::StoreResolver {
            images: self.images.clone(),
            client: self.client.clone(),
            answers: Default::default(),
            pull: req.pull,
        };
        Ok(rdock_frontend::lower(&source, &opts, &resolver)?)
    }

    /// The request's named contexts as the frontend takes them: a directory becomes a
    /// local source with its own `.dockerignore`, an OCI layout's image is brought into
    /// the store and named by digest.
    fn named_contexts(&self, req: &BuildRequest) -> Result<BTreeMap<String, NamedContext>, BuildError> {
        let mut out = BTreeMap::new();
        for (name, src) in &req.named_contexts {
            let c = match src {
                NamedContextSource::Dir(dir) => {
                    if !dir.is_dir() {
                        return Err(BuildError::NotADirectory(dir.clone()));
                    }
                    NamedContext::Local { source: local_source_name(name), excludes: dockerignore(None, dir) }
                }
                NamedContextSource::Image(r) => NamedContext::Image(r.clone()),
                NamedContextSource::OciLayout { dir, pick } => {
                    let fail = |source| BuildError::NamedContext { name: name.clone(), source };
                    let digest = rdock_oci::load_layout_image(&self.images, dir, pick).map_err(fail)?;
                    let safe: String = name.to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                    let r = rdock_imagespec::ImageRef::parse(&format!("local/oci-layout-{safe}@{digest}")).map_err(|e| fail(e.into()))?;
                    NamedContext::Image(r)
                }
                NamedContextSource::Git(u) => NamedContext::Git(u.clone()),
                NamedContextSource::Url(u) => NamedContext::Http(u.clone()),
            };
            out.insert(name.clone(), c);
        }
        Ok(out)
    }

    /// Whether what `load` lowered may be built as asked: `# check=error=true` without
    /// warnings, and every entitlement a step needs granted.
    pub fn admit(&self, req: &BuildRequest, lowered: &Lowered) -> Result<(), BuildError> {
        if lowered.check.error && !lowered.warnings.is_empty() {
            return Err(BuildError::Checks(lowered.warnings.len()));
        }
        entitlements::check(&lowered.definition, &req.allow)
    }

    /// Solves what `load` lowered and writes the outputs, reporting steps to `progress`.
    /// With several platforms, `lowered` is the first's and the others are lowered here.
    pub fn build(&self, req: &BuildRequest, lowered: &Lowered, progress: &dyn ProgressSink) -> Result<BuildSummary, BuildError> {
        self.admit(req, lowered)?;
        let epoch = source_date_epoch(&req.build_args)?;
        let mut imports = Vec::new();
        for loc in &req.cache_imports {
            imports.extend(cache::import(loc, &self.images, &self.client, self.notices.as_ref())?);
        }
        if req.platforms.len() > 1 {
            return self.build_platforms(req, lowered, progress, &imports, epoch);
        }
        let (solver, out) = self.solve(req, lowered, req.platforms.first(), progress, &imports)?;
        for spec in &req.cache_exports {
            let export = solver.export_cache(&out, spec.mode, spec.mounts, &imports)?;
            cache::export(spec, &export, &self.images, &self.client, self.notices.as_ref())?;
        }
        let created = created_time(epoch);
        let built = BuiltOn { base_diff_ids: lowered.base_diff_ids.clone(), epoch };
        let plan = outputs::ImagePlan { config: &lowered.image, created, built, annotations: &req.annotations };
        let written = self.write_outputs(&req.outputs, out.top.as_deref(), &plan)?;
        if let Some(path) = &req.metadata_file {
            outputs::write_metadata(path, &written)?;
        }
        Ok(BuildSummary {
            executed: out.executed,
            cached: out.cached,
            manifest: written.image.as_ref().map(|c| c.manifest.to_string()),
            image_id: written.image.as_ref().map(|c| c.config.to_string()),
        })
    }

    /// Solves `lowered` (for `platform`, None: the host's) with the request's contexts.
    fn solve(
        &self,
        req: &BuildRequest,
        lowered: &Lowered,
        platform: Option<&Platform>,
        progress: &dyn ProgressSink,
        imports: &[rdock_solver::remote::ImportedCache],
    ) -> Result<(Solver, rdock_solver::SolveOutput), BuildError> {
        let solver = self.solver(lowered)?;
        let locals = locals(req)?;
        let with_lines = |e: rdock_solver::SolveError| match e.lines() {
            Some(lines) => {
                BuildError::Step { excerpt: rdock_frontend::excerpt(&lowered.source.0, &lowered.source.1, lines), source: Box::new(e) }
            }
            None => BuildError::Solve(e),
        };
        let target = target_id(req, platform);
        let out = solver
            .solve(&SolveRequest {
                definition: &lowered.definition,
                locals: &locals,
                progress,
                secrets: &req.secrets,
                target: Some(&target),
                imports,
                max_parallelism: req.max_parallelism,
                // Layers are made while later steps run when something will need them.
                eager_layers: !req.cache_exports.is_empty() || req.outputs.iter().any(Output::needs_image),
            })
            .map_err(with_lines)?;
        Ok((solver, out))
    }

    /// A solver whose worker runs steps in namespaces under the configured limits, and
    /// which fetches base layers from where their images were resolved.
    fn solver(&self, lowered: &Lowered) -> Result<Solver, BuildError> {
        let executor = Arc::new(NamespaceExecutor::new(self.store.root().join("tmp")).with_limits(self.limits));
        // The default network's first namespace starts while the context loads and the
        // cache is checked, so the first RUN that misses need not wait for it. One, not one
        // per parallel step: a second made ahead saved a parallel step 3 ms and cost every
        // no-op build 1 ms.
        let default_network =
            lowered.definition.nodes.iter().any(|n| matches!(&n.op, rdock_llb::Op::Exec(e) if e.network == rdock_llb::Network::Sandbox));
        if default_network {
            executor.net.prewarm();
        }
        let worker = Worker::new(self.store.clone(), executor);
        let origin = rdock_oci::OriginSource { client: self.client.clone(), images: self.images.clone(), on: self.transfers.clone() };
        Ok(Solver::new(worker, self.images.clone())?.with_layer_source(Arc::new(origin)))
    }
}

/// The image's creation time: `SOURCE_DATE_EPOCH`'s, else now (RFC 3339).
fn created_time(epoch: Option<i64>) -> String {
    match epoch {
        Some(e) => rdock_imagespec::time::rfc3339(e, 0),
        None => rdock_imagespec::time::build_time(),
    }
}

/// The directories of the build's local sources: the context and named contexts.
/// Absolute: the worker mounts context views through a descriptor of `/`, and a relative
/// path would be taken from there rather than from the working directory.
fn locals(req: &BuildRequest) -> Result<HashMap<String, PathBuf>, BuildError> {
    let canon = |p: &std::path::Path, what: String| std::fs::canonicalize(p).map_err(|source| BuildError::Io { what, source });
    let mut locals = HashMap::from([("context".to_string(), canon(&req.context, format!("build context {}", req.context.display()))?)]);
    for (name, src) in &req.named_contexts {
        if let NamedContextSource::Dir(dir) = src {
            locals.insert(local_source_name(name), canon(dir, format!("named context {name} ({})", dir.display()))?);
        }
    }
    Ok(locals)
}

/// The local source a named context's directory is sent as.
fn local_source_name(name: &str) -> String {
    format!("context:{name}")
}

/// The patterns of `specific` (`<Dockerfile>.dockerignore`), else of `dir/.dockerignore`.
fn dockerignore(specific: Option<&std::path::Path>, dir: &std::path::Path) -> Vec<String> {
    let text = specific
        .and_then(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::fs::read_to_string(dir.join(".dockerignore")).ok())
        .unwrap_or_default();
    rdock_frontend::dockerignore::parse(&text)
}

/// What identifies "the same build" for explaining cache misses: context, Dockerfile,
/// stage and platform.
fn target_id(req: &BuildRequest, platform: Option<&Platform>) -> String {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    format!(
        "{}|{}|{}|{}",
        canon(&req.context),
        match &req.dockerfile {
            DockerfileSource::Path(p) => canon(p),
            DockerfileSource::Text(_) => "-".into(),
        },
        req.target.as_deref().unwrap_or(""),
        platform.cloned().unwrap_or_else(Platform::host)
    )
}

/// `SOURCE_DATE_EPOCH`: the build argument, else the environment variable (as buildx
/// passes it on); Unix seconds.
fn source_date_epoch(build_args: &BTreeMap<String, String>) -> Result<Option<i64>, BuildError> {
    let value = match build_args.get("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        Some(v) => v.clone(),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => v,
            _ => return Ok(None),
        },
    };
    value.trim().parse::<i64>().map(Some).map_err(|_| BuildError::SourceDateEpoch(value))
}
