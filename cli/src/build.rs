//! The build pipeline both binaries share: read the Dockerfile and `.dockerignore`, lower,
//! solve, export.

use crate::UsageError;
use crate::progress::{self, Mode};
use anyhow::{Context, bail};
use rdock_frontend::{BuildOptions, ImageResolver, ResolveError, ResolvedImage, lower};
use rdock_imagespec::{ImageRef, Platform};
use rdock_oci::{ArchiveFormat, BuiltOn, CommittedImage, ExportForm, ImageStore, commit_image, export_archive, export_local, export_tar};
use rdock_solver::{SolveRequest, Solver};
use rdock_worker::{NamespaceExecutor, Worker};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

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

/// LLB dump formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// JSON.
    Json,
    /// RON.
    Ron,
    /// Graphviz.
    Dot,
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile's path.
    pub dockerfile: PathBuf,
    /// `--target`.
    pub target: Option<String>,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// Outputs.
    pub outputs: Vec<Output>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`: stages to rebuild without the cache.
    pub no_cache_stages: Vec<String>,
    /// Progress mode.
    pub progress: Mode,
    /// `--metadata-file`.
    pub metadata_file: Option<PathBuf>,
    /// Print the LLB and stop.
    pub dump: Option<DumpFormat>,
    /// `--secret` values by id.
    pub secrets: rdock_worker::Secrets,
    /// `--check`: run the build checks and stop.
    pub check: bool,
    /// `--explain-cache`: print why steps missed the cache.
    pub explain_cache: bool,
    /// `--opt platform=` / `--platform`: the target platform (None: the host's).
    pub platform: Option<Platform>,
    /// Entitlements granted (`--allow`): what RUN --network=host and --security=insecure need.
    pub allow: Vec<Entitlement>,
    /// Write the build as a Chrome trace here.
    pub trace: Option<PathBuf>,
    /// Draw the build as an SVG Gantt chart here.
    pub timeline: Option<PathBuf>,
    /// `--import-cache` / `--cache-from`.
    pub cache_imports: Vec<crate::registry::CacheLocation>,
    /// `--export-cache` / `--cache-to`.
    pub cache_exports: Vec<crate::registry::CacheExportSpec>,
    /// `--network` / `--opt force-network-mode=`: the network of every RUN without its own.
    pub network: rdock_llb::Network,
    /// `--add-host` / `--opt add-hosts=`: extra `/etc/hosts` entries of every RUN.
    pub extra_hosts: Vec<rdock_llb::HostIp>,
    /// `--max-parallelism`: how many steps run at once.
    pub max_parallelism: std::num::NonZeroUsize,
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
    /// Parses BuildKit's spelling.
    pub fn parse(s: &str) -> anyhow::Result<Entitlement> {
        match s {
            "network.host" => Ok(Entitlement::NetworkHost),
            "security.insecure" => Ok(Entitlement::SecurityInsecure),
            other => Err(UsageError(format!("--allow {other}: expected network.host or security.insecure")).into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }
}

/// Build flags both binaries take, spelled the same.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonFlags {
    /// Run every step, ignoring cache records.
    #[arg(long)]
    pub no_cache: bool,
    /// Run the steps of these stages (comma-separated names) again, ignoring cache records.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// auto, tty, plain, rawjson or quiet.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Write result digests as JSON here.
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// `id=NAME,src=FILE` or `id=NAME,env=VAR`: a secret for RUN --mount=type=secret.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// `default` or `ID=SOCKET`: an SSH agent for RUN --mount=type=ssh.
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,
    /// Run the build checks (lint rules) and report, without building; exit 1 on warnings.
    #[arg(long)]
    pub check: bool,
    /// Say, for every step that misses the cache, why: what changed against the last build
    /// of the same target (files, build args, base image, instruction), or that there is none.
    #[arg(long)]
    pub explain_cache: bool,
    /// Grant an entitlement: `network.host` (RUN --network=host) or `security.insecure`
    /// (RUN --security=insecure).
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// Write the build as a Chrome trace (JSON for chrome://tracing and Perfetto): a span
    /// per step, cache hits marked, the critical path flagged.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Draw the build as an SVG Gantt chart: a row per step, cache hits marked, the
    /// critical path highlighted.
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
    /// How many steps may run at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub max_parallelism: Option<std::num::NonZeroUsize>,
}

impl CommonFlags {
    /// The request these flags describe, given the rest of it.
    pub fn request(
        &self,
        context: PathBuf,
        dockerfile: PathBuf,
        target: Option<String>,
        build_args: BTreeMap<String, String>,
        outputs: Vec<Output>,
        dump: Option<DumpFormat>,
    ) -> anyhow::Result<BuildRequest> {
        let progress = progress::Mode::parse(&self.progress)
            .ok_or_else(|| UsageError(format!("--progress {}: expected auto, tty, plain, rawjson or quiet", self.progress)))?;
        let secrets = rdock_worker::Secrets {
            values: self.secrets.iter().map(|s| parse_secret(s)).collect::<anyhow::Result<_>>()?,
            ssh: self.ssh.iter().map(|s| parse_ssh(s)).collect::<anyhow::Result<_>>()?,
        };
        Ok(BuildRequest {
            context,
            dockerfile,
            target,
            build_args,
            outputs,
            no_cache: self.no_cache,
            no_cache_stages: self
                .no_cache_filter
                .iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            progress,
            metadata_file: self.metadata_file.clone(),
            dump,
            secrets,
            check: self.check,
            explain_cache: self.explain_cache,
            platform: None,
            allow: self.allow.iter().flat_map(|a| a.split(',')).map(Entitlement::parse).collect::<anyhow::Result<_>>()?,
            trace: self.trace.clone(),
            timeline: self.timeline.clone(),
            cache_imports: Vec::new(),
            cache_exports: Vec::new(),
            network: rdock_llb::Network::Sandbox,
            extra_hosts: Vec::new(),
            max_parallelism: self.max_parallelism.unwrap_or_else(rdock_solver::default_parallelism),
        })
    }
}

/// Parses a build-wide network mode (`--network`, `force-network-mode`).
pub fn parse_network(flag: &str, spec: &str) -> anyhow::Result<rdock_llb::Network> {
    rdock_frontend::parse_network(spec).ok_or_else(|| UsageError(format!("{flag} {spec}: expected default, none or host")).into())
}

/// Parses `--add-host HOST:IP` (and buildx's `HOST=IP`).
pub fn parse_add_host(spec: &str) -> anyhow::Result<rdock_llb::HostIp> {
    rdock_llb::HostIp::parse(spec).map_err(|e| UsageError(e).into())
}

/// Parses an `--ssh` spec: `default` (the agent in $SSH_AUTH_SOCK), `ID=SOCKET`: the id
/// and the agent's socket.
pub fn parse_ssh(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let (id, path) = match spec.split_once('=') {
        Some((id, p)) => (id.to_string(), p.to_string()),
        None => (
            spec.to_string(),
            std::env::var("SSH_AUTH_SOCK").map_err(|_| UsageError(format!("--ssh {spec}: SSH_AUTH_SOCK is not set; give ID=SOCKET")))?,
        ),
    };
    if !std::path::Path::new(&path).exists() {
        return Err(UsageError(format!("--ssh {spec}: {path} does not exist")).into());
    }
    Ok((id, PathBuf::from(path)))
}

/// Parses a `--secret` spec: `id=NAME,src=FILE` (also `source=`), `id=NAME,env=VAR`, or
/// `id=NAME` alone (then the environment variable NAME, else the file NAME), as BuildKit does.
pub fn parse_secret(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let m = kv(spec);
    let id = m.get("id").cloned().filter(|i| !i.is_empty()).ok_or_else(|| UsageError(format!("--secret {spec}: id= is required")))?;
    if let Some(t) = m.get("type")
        && t != "file"
        && t != "env"
    {
        return Err(UsageError(format!("--secret {spec}: type must be file or env")).into());
    }
    let src = m.get("src").or_else(|| m.get("source"));
    if let Some(file) = src {
        let v = std::fs::read(file).map_err(|e| UsageError(format!("--secret {spec}: reading {file}: {e}")))?;
        return Ok((id, v));
    }
    let var = m.get("env").cloned().unwrap_or_else(|| id.clone());
    match std::env::var_os(&var) {
        Some(v) => Ok((id, v.into_encoded_bytes())),
        None if !m.contains_key("env") && std::path::Path::new(&id).is_file() => Ok((id.clone(), std::fs::read(&id)?)),
        None => Err(UsageError(format!("--secret {spec}: environment variable {var} is not set")).into()),
    }
}

fn kv(spec: &str) -> BTreeMap<String, String> {
    spec.split(',').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

fn names(v: Option<&String>) -> anyhow::Result<Vec<ImageRef>> {
    match v {
        None => Ok(Vec::new()),
        Some(s) => {
            s.split(';').filter(|n| !n.is_empty()).map(|n| ImageRef::parse(n).map_err(|e| UsageError(e.to_string()).into())).collect()
        }
    }
}

/// Parses an `--output` spec (`type=docker,dest=F,name=REF`); a bare path means
/// `type=local,dest=PATH`, as in `docker build -o`.
pub fn parse_output(spec: &str) -> anyhow::Result<Output> {
    // buildx: `-o -` is the final filesystem as a tarball on standard output.
    if spec == "-" {
        return Ok(Output::Tar { dest: PathBuf::from("-") });
    }
    if !spec.contains('=') {
        return Ok(Output::Local { dest: PathBuf::from(spec) });
    }
    let m = kv(spec);
    check_output_keys(spec, &m)?;
    let dest = || -> anyhow::Result<PathBuf> {
        m.get("dest").map(PathBuf::from).ok_or_else(|| UsageError(format!("--output {spec}: dest= is required")).into())
    };
    let ty = m.get("type").map(String::as_str).unwrap_or("local");
    Ok(match ty {
        "docker" => Output::Docker { dest: dest()?, names: names(m.get("name"))?, form: export_form(spec, &m, false)? },
        "oci" => Output::Oci {
            dest: dest()?,
            names: names(m.get("name"))?,
            form: export_form(spec, &m, true)?,
            tar: flag(spec, &m, "tar")?.unwrap_or(true),
        },
        "local" => Output::Local { dest: dest()? },
        "tar" => Output::Tar { dest: dest()? },
        "image" | "registry" => {
            let push = ty == "registry" || flag(spec, &m, "push")?.unwrap_or(false);
            let names = names(m.get("name"))?;
            if push && names.is_empty() {
                return Err(UsageError(format!("--output {spec}: name= is required to push")).into());
            }
            if let Some(k) = m.keys().find(|k| FORM_KEYS.contains(&k.as_str()) || k.starts_with("annotation")) {
                return Err(UsageError(format!(
                    "--output {spec}: {k} is not supported yet for type={ty}: images are stored and pushed with gzip \
                     layers and OCI media types (type=oci or type=docker take {k})"
                ))
                .into());
            }
            Output::Image {
                names,
                push,
                insecure: flag(spec, &m, "registry.insecure")?.unwrap_or(false),
                rewrite_timestamp: flag(spec, &m, "rewrite-timestamp")?.unwrap_or(false),
            }
        }
        other => {
            return Err(UsageError(format!("unknown output type {other:?} (expected docker, oci, local, tar or image)")).into());
        }
    })
}

/// Keys that shape an exported image's layers and manifest.
const FORM_KEYS: &[&str] = &["compression", "compression-level", "force-compression", "oci-mediatypes"];

/// Every key each output type takes; any other is an error that names it, never ignored.
fn check_output_keys(spec: &str, m: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let ty = m.get("type").map(String::as_str).unwrap_or("local");
    let allowed: &[&str] = match ty {
        "docker" => {
            &["type", "dest", "name", "compression", "compression-level", "force-compression", "oci-mediatypes", "rewrite-timestamp"]
        }
        "oci" => {
            &["type", "dest", "name", "compression", "compression-level", "force-compression", "oci-mediatypes", "tar", "rewrite-timestamp"]
        }
        "image" | "registry" => &[
            "type",
            "name",
            "push",
            "registry.insecure",
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
            "rewrite-timestamp",
        ],
        "local" | "tar" => &["type", "dest"],
        _ => return Ok(()),
    };
    for k in m.keys() {
        let annotation = matches!(ty, "docker" | "oci" | "image" | "registry")
            && (k.starts_with("annotation.") || k.starts_with("annotation-manifest."));
        if allowed.contains(&k.as_str()) || annotation {
            continue;
        }
        let why = match k.as_str() {
            k if k.starts_with("annotation-index") || k.starts_with("annotation-manifest-descriptor") => {
                " yet: rdock writes single-platform images without an index of their own; use annotation.KEY"
            }
            _ => "",
        };
        return Err(UsageError(format!("--output {spec}: {k} is not supported{why} (type={ty} takes {})", allowed[1..].join(", "))).into());
    }
    Ok(())
}

/// `KEY=true|false` (a bare `KEY` is true), or None when absent.
fn flag(spec: &str, m: &BTreeMap<String, String>, k: &str) -> anyhow::Result<Option<bool>> {
    match m.get(k).map(String::as_str) {
        None => Ok(None),
        Some("true") | Some("") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(UsageError(format!("--output {spec}: {k}={v}: expected true or false")).into()),
    }
}

/// The layer and manifest form of a docker or OCI export.
fn export_form(spec: &str, m: &BTreeMap<String, String>, oci: bool) -> anyhow::Result<ExportForm> {
    let mut form = ExportForm::stored();
    form.compression = match m.get("compression").map(String::as_str) {
        None => None,
        Some("gzip") => Some(rdock_snapshotter::Compression::Gzip),
        Some("zstd") => Some(rdock_snapshotter::Compression::Zstd),
        Some("uncompressed") => Some(rdock_snapshotter::Compression::None),
        Some(other) => {
            return Err(UsageError(format!("--output {spec}: compression={other} is not supported (gzip, zstd or uncompressed)")).into());
        }
    };
    form.level = match m.get("compression-level") {
        None => None,
        Some(l) => Some(l.parse().map_err(|_| UsageError(format!("--output {spec}: compression-level={l}: expected a number")))?),
    };
    form.force = flag(spec, m, "force-compression")?.unwrap_or(false);
    form.rewrite_timestamp = flag(spec, m, "rewrite-timestamp")?.unwrap_or(false);
    // BuildKit's defaults: OCI media types for oci, docker's for docker unless zstd asks for OCI's.
    form.oci_media_types =
        flag(spec, m, "oci-mediatypes")?.unwrap_or(oci || form.compression == Some(rdock_snapshotter::Compression::Zstd));
    for (k, v) in m {
        if let Some(key) = k.strip_prefix("annotation.").or_else(|| k.strip_prefix("annotation-manifest.")) {
            form.annotations.insert(key.to_string(), v.clone());
        }
    }
    Ok(form)
}

/// `SOURCE_DATE_EPOCH`: the build argument, else the environment variable (as buildx
/// passes it on); Unix seconds.
fn source_date_epoch(build_args: &BTreeMap<String, String>) -> anyhow::Result<Option<i64>> {
    let value = match build_args.get("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        Some(v) => v.clone(),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => v,
            _ => return Ok(None),
        },
    };
    let secs = value.trim().parse::<i64>().map_err(|_| UsageError(format!("SOURCE_DATE_EPOCH={value}: expected Unix seconds")))?;
    Ok(Some(secs))
}

/// BuildKit's warning for `rewrite-timestamp=true` without an epoch to clamp to.
fn warn_without_epoch(asked: bool, built: &BuiltOn) {
    if asked && built.epoch.is_none() {
        eprintln!("warning: rewrite-timestamp=true without SOURCE_DATE_EPOCH (environment or --build-arg): file times are left as built");
    }
}

/// The committed image with its own layers' times clamped, written to the store.
fn rewritten(images: &ImageStore, c: &CommittedImage, built: &BuiltOn) -> anyhow::Result<CommittedImage> {
    let form = ExportForm { rewrite_timestamp: true, ..ExportForm::stored() };
    let manifest = rdock_oci::convert_manifest(images, &c.manifest, &form, built)?;
    let bytes = images.store().content().read(&manifest)?;
    let manifest_doc: rdock_imagespec::Manifest = serde_json::from_slice(&bytes)?;
    Ok(CommittedImage { manifest, manifest_size: bytes.len() as u64, config: manifest_doc.config.digest.clone(), manifest_doc })
}

/// Resolves base images from the local store first, then from their registry (manifest
/// and config only: layers are fetched when a step needs them), pinning them by manifest
/// digest.
struct StoreResolver {
    images: ImageStore,
    client: Arc<rdock_registry::Client>,
    /// What the registry answered, so that the build checks and the lowering ask once.
    remote: std::sync::Mutex<HashMap<(String, String), Result<ResolvedImage, ResolveError>>>,
}

impl ImageResolver for StoreResolver {
    fn resolve(&self, image: &ImageRef, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let key = (image.to_string(), platform.to_string());
        if let Some(r) = self.remote.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return r.clone();
        }
        let r = self.resolve_uncached(image, platform);
        self.remote.lock().unwrap_or_else(|p| p.into_inner()).insert(key, r.clone());
        r
    }
}

impl StoreResolver {
    fn resolve_uncached(&self, image: &ImageRef, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let local = |e: rdock_oci::OciError| ResolveError::failed("the local store", e);
        if let Some(digest) = self.images.resolve(image, platform).map_err(local)? {
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

/// Refuses a graph that asks for a privilege the caller did not grant, naming the step.
fn check_entitlements(def: &rdock_llb::Definition, allow: &[Entitlement]) -> anyhow::Result<()> {
    for node in &def.nodes {
        let rdock_llb::Op::Exec(e) = &node.op else { continue };
        let needs = [
            (e.network == rdock_llb::Network::Host, Entitlement::NetworkHost, "--network=host"),
            (e.security == rdock_llb::Security::Insecure, Entitlement::SecurityInsecure, "--security=insecure"),
        ];
        for (asked, ent, flag) in needs {
            if asked && !allow.contains(&ent) {
                let step = def.metadata.get(&node.digest()).map(|m| m.description.clone()).unwrap_or_default();
                bail!("{step}: RUN {flag} needs the {} entitlement, which was not granted (pass --allow {})", ent.name(), ent.name());
            }
        }
    }
    Ok(())
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
}

/// Runs a build, then holds the store to its configured cap (see [`crate::gc`]), whether
/// the build succeeded or not: a failed build keeps the steps it completed.
pub fn run(req: &BuildRequest) -> anyhow::Result<BuildSummary> {
    // The sandbox's seccomp program compiles while the Dockerfile is read and resolved.
    rdock_worker::seccomp::prepare();
    let store = crate::open_store()?;
    let result = build(req, &store);
    let gc = crate::gc::enforce_cap(&store, req.progress == progress::Mode::Quiet);
    let summary = result?;
    gc.context("garbage collection after the build")?;
    Ok(summary)
}

fn build(req: &BuildRequest, store: &rdock_snapshotter::Store) -> anyhow::Result<BuildSummary> {
    let source = std::fs::read_to_string(&req.dockerfile).with_context(|| format!("reading Dockerfile {}", req.dockerfile.display()))?;
    if !req.context.is_dir() {
        bail!(UsageError(format!("build context {} is not a directory", req.context.display())));
    }
    // `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's, as in BuildKit.
    let specific = PathBuf::from(format!("{}.dockerignore", req.dockerfile.display()));
    let ignore =
        std::fs::read_to_string(&specific).or_else(|_| std::fs::read_to_string(req.context.join(".dockerignore"))).unwrap_or_default();
    // Held until the outputs are written: garbage collection waits for it.
    let lease = store.lease()?;
    let images = ImageStore::new(store.clone());
    let opts = BuildOptions {
        filename: req.dockerfile.display().to_string(),
        target: req.target.clone(),
        build_args: req.build_args.clone(),
        excludes: rdock_frontend::dockerignore::parse(&ignore),
        no_cache: req.no_cache,
        no_cache_stages: req.no_cache_stages.clone(),
        target_platform: req.platform.clone(),
        network: req.network,
        extra_hosts: req.extra_hosts.clone(),
        ..Default::default()
    };
    let insecure: Vec<String> = req
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Image { names, insecure: true, .. } => Some(names.iter().map(|n| n.registry.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    let client = crate::registry::client(&insecure);
    let quiet = req.progress == progress::Mode::Quiet;
    let lowered = lower(&source, &opts, &StoreResolver { images: images.clone(), client: client.clone(), remote: Default::default() })?;
    let n = lowered.warnings.len();
    if req.check || req.progress != progress::Mode::Quiet || lowered.check.error {
        for w in &lowered.warnings {
            eprintln!("{w}\n");
        }
    }
    if req.check {
        if n == 0 {
            eprintln!("Check complete, no warnings found.");
            return Ok(BuildSummary::default());
        }
        bail!("Check complete, {n} warning{} found", if n == 1 { "" } else { "s" });
    }
    if lowered.check.error && n > 0 {
        bail!("{n} build check warning{} and `# check=error=true`", if n == 1 { "" } else { "s" });
    }
    check_entitlements(&lowered.definition, &req.allow)?;
    if let Some(fmt) = req.dump {
        let text = match fmt {
            DumpFormat::Json => lowered.definition.to_json(),
            DumpFormat::Ron => lowered.definition.to_ron(),
            DumpFormat::Dot => lowered.definition.to_dot(),
        };
        println!("{text}");
        return Ok(BuildSummary::default());
    }
    let executor = Arc::new(NamespaceExecutor::new(store.root().join("tmp")).with_limits(crate::config::limits(store)?));
    // The default network's first namespace starts while the context loads and the cache
    // is checked, so the first RUN that misses need not wait for it.
    let default_network =
        lowered.definition.nodes.iter().any(|n| matches!(&n.op, rdock_llb::Op::Exec(e) if e.network == rdock_llb::Network::Sandbox));
    if default_network {
        executor.net.prewarm();
    }
    let worker = Worker::new(store.clone(), executor);
    // Transfer lines go with plain progress only: they would break the live display and
    // rawjson's one event per line.
    let plain = match req.progress {
        progress::Mode::Plain => true,
        progress::Mode::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        _ => false,
    };
    let transfers = crate::registry::printer(!plain);
    let origin = rdock_oci::OriginSource { client: client.clone(), images: images.clone(), on: transfers };
    let solver = Solver::new(worker, images.clone())?.with_layer_source(Arc::new(origin));
    let mut imports = Vec::new();
    for loc in &req.cache_imports {
        if let Some(c) = crate::registry::import(loc, &images, &client)? {
            imports.push(c);
        }
    }
    // Absolute: the worker mounts context views through a descriptor of `/`, and a relative
    // path would be taken from there rather than from the working directory.
    let context = std::fs::canonicalize(&req.context).with_context(|| format!("build context {}", req.context.display()))?;
    let locals = HashMap::from([("context".to_string(), context)]);
    let sink = progress::sink(req.progress, req.explain_cache);
    // What identifies "the same build" for explaining misses: context, Dockerfile, stage
    // and platform.
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let target_id = format!(
        "{}|{}|{}|{}",
        canon(&req.context),
        canon(&req.dockerfile),
        req.target.as_deref().unwrap_or(""),
        req.platform.clone().unwrap_or_else(Platform::host)
    );
    let recording = rdock_solver::RecordingProgress::default();
    let tee = progress::Tee(sink.as_ref(), &recording);
    let out = solver.solve(&SolveRequest {
        definition: &lowered.definition,
        locals: &locals,
        progress: if req.trace.is_some() || req.timeline.is_some() { &tee } else { sink.as_ref() },
        secrets: &req.secrets,
        target: Some(&target_id),
        imports: &imports,
        max_parallelism: req.max_parallelism,
        // Layers are made while later steps run when something will need them.
        eager_layers: !req.cache_exports.is_empty()
            || req.outputs.iter().any(|o| matches!(o, Output::Docker { .. } | Output::Oci { .. } | Output::Image { .. })),
    });
    drop(sink);
    // Written for failed builds too: they are where a timeline helps most.
    if req.trace.is_some() || req.timeline.is_some() {
        let spans = crate::trace::spans(&recording.events(), &lowered.definition);
        if let Some(p) = &req.trace {
            std::fs::write(p, serde_json::to_vec(&crate::trace::chrome_trace(&spans))?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if let Some(p) = &req.timeline {
            std::fs::write(p, crate::timeline::svg(&spans)).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let out = out?;

    for spec in &req.cache_exports {
        let export = solver.export_cache(&out, spec.mode, spec.mounts, &imports)?;
        crate::registry::export(spec, &export, &images, &client, quiet)?;
    }
    let mut summary = BuildSummary { executed: out.executed, cached: out.cached, manifest: None };
    let mut committed = None;
    let mut image_names: Vec<ImageRef> = Vec::new();
    let epoch = source_date_epoch(&req.build_args)?;
    let created = match epoch {
        Some(e) => rdock_imagespec::time::rfc3339(e, 0),
        None => rdock_imagespec::time::build_time(),
    };
    let built = BuiltOn { base_diff_ids: lowered.base_diff_ids.clone(), epoch };
    // What --metadata-file and the summary report: the stored image, or its rewritten form.
    let mut reported: Option<CommittedImage> = None;
    for o in &req.outputs {
        let needs_image = matches!(o, Output::Docker { .. } | Output::Oci { .. } | Output::Image { .. });
        if needs_image && committed.is_none() {
            committed = Some(commit_image(&images, out.top.as_deref(), lowered.image.clone(), &created)?);
        }
        match o {
            Output::Docker { dest, names, form } | Output::Oci { dest, names, form, .. } => {
                let fmt = if matches!(o, Output::Docker { .. }) { ArchiveFormat::Docker } else { ArchiveFormat::Oci };
                if let Some(c) = &committed {
                    let export = || -> anyhow::Result<()> {
                        warn_without_epoch(form.rewrite_timestamp, &built);
                        let manifest = rdock_oci::convert_manifest(&images, &c.manifest, form, &built)?;
                        match o {
                            Output::Oci { tar: false, .. } => rdock_oci::export_layout_dir(&images, &manifest, names, dest)?,
                            _ => export_archive(&images, &manifest, names, fmt, dest)?,
                        }
                        Ok(())
                    };
                    export().with_context(|| format!("exporting to {}", dest.display()))?;
                }
                image_names.extend(names.iter().cloned());
            }
            Output::Image { names, push, rewrite_timestamp, .. } => {
                if let Some(c) = &committed {
                    warn_without_epoch(*rewrite_timestamp, &built);
                    let c = if *rewrite_timestamp && epoch.is_some() { rewritten(&images, c, &built)? } else { c.clone() };
                    for n in names {
                        images.tag(n, &c.manifest)?;
                        if *push {
                            crate::registry::push_image(&images, &client, n, &c.manifest, quiet)?;
                        }
                    }
                    reported = Some(c);
                }
                image_names.extend(names.iter().cloned());
            }
            Output::Local { dest } => {
                export_local(store, out.top.as_deref(), dest).with_context(|| format!("exporting to {}", dest.display()))?
            }
            Output::Tar { dest } => {
                export_tar(store, out.top.as_deref(), dest).with_context(|| format!("exporting to {}", dest.display()))?
            }
        }
    }
    let committed = reported.or(committed);
    if let Some(c) = &committed {
        summary.manifest = Some(c.manifest.to_string());
    }
    if let Some(path) = &req.metadata_file {
        let mut doc = serde_json::Map::new();
        if let Some(c) = &committed {
            doc.insert("containerimage.digest".into(), c.manifest.to_string().into());
            doc.insert("containerimage.config.digest".into(), c.config.to_string().into());
            doc.insert(
                "containerimage.descriptor".into(),
                serde_json::json!({"mediaType": rdock_imagespec::MEDIA_TYPE_OCI_MANIFEST, "digest": c.manifest, "size": c.manifest_size}),
            );
        }
        if !image_names.is_empty() {
            doc.insert("image.name".into(), image_names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",").into());
        }
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    drop(lease);
    Ok(summary)
}
