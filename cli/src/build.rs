//! `build` as both binaries take it: the flags they share, `--output` specs, and the run
//! of the library's pipeline ([`rdock_builder`]) with progress, checks, dumps and traces
//! rendered here.

use crate::UsageError;
use crate::progress::{self, Mode};
use anyhow::{Context, bail};
use rdock_builder::{BuildError, Notices, Pipeline};
pub use rdock_builder::{BuildRequest, BuildSummary, Entitlement, Output};
use rdock_imagespec::ImageRef;
use rdock_oci::ExportForm;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A build as the command line asks for it: the library's request, and how to show it.
#[derive(Debug, Clone)]
pub struct BuildCommand {
    /// What to build and where the result goes.
    pub build: BuildRequest,
    /// Progress mode.
    pub progress: Mode,
    /// Print the LLB and stop.
    pub dump: Option<DumpFormat>,
    /// `--check`: run the build checks and stop.
    pub check: bool,
    /// `--explain-cache`: print why steps missed the cache.
    pub explain_cache: bool,
    /// Write the build as a Chrome trace here.
    pub trace: Option<PathBuf>,
    /// Draw the build as an SVG Gantt chart here.
    pub timeline: Option<PathBuf>,
    /// A fetched context's directory, kept until the build is done.
    pub guard: Option<Arc<rdock_builder::context::Fetched>>,
}

impl BuildCommand {
    /// `build`, shown with `progress` and nothing more (no checks, dumps or traces), with
    /// `guard` keeping a fetched context alive: what `rdock bake` and `rdock verify` run.
    pub fn plain(build: BuildRequest, progress: Mode, guard: Option<Arc<rdock_builder::context::Fetched>>) -> BuildCommand {
        BuildCommand { build, progress, dump: None, check: false, explain_cache: false, trace: None, timeline: None, guard }
    }
}

/// Parses an entitlement as `--allow` spells it.
fn parse_entitlement(s: &str) -> anyhow::Result<Entitlement> {
    Entitlement::parse(s).ok_or_else(|| UsageError(format!("--allow {s}: expected network.host or security.insecure")).into())
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
    /// auto, tty, plain, rawjson or quiet (default: $BUILDKIT_PROGRESS, as buildx's, else auto).
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS")]
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
        dockerfile: rdock_builder::DockerfileSource,
        target: Option<String>,
        build_args: BTreeMap<String, String>,
        outputs: Vec<Output>,
        dump: Option<DumpFormat>,
    ) -> anyhow::Result<BuildCommand> {
        let progress = progress::Mode::parse(&self.progress)
            .ok_or_else(|| UsageError(format!("--progress {}: expected auto, tty, plain, rawjson or quiet", self.progress)))?;
        let mut build = BuildRequest::new(context, PathBuf::new());
        build.dockerfile = dockerfile;
        build.target = target;
        build.build_args = build_args;
        build.outputs = outputs;
        build.no_cache = self.no_cache;
        build.no_cache_stages =
            self.no_cache_filter.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        build.metadata_file = self.metadata_file.clone();
        build.secrets = rdock_worker::Secrets {
            values: self.secrets.iter().map(|s| parse_secret(s)).collect::<anyhow::Result<_>>()?,
            ssh: self.ssh.iter().map(|s| parse_ssh(s)).collect::<anyhow::Result<_>>()?,
        };
        build.allow = self.allow.iter().flat_map(|a| a.split(',')).map(parse_entitlement).collect::<anyhow::Result<_>>()?;
        if let Some(n) = self.max_parallelism {
            build.max_parallelism = n;
        }
        Ok(BuildCommand {
            build,
            progress,
            dump,
            check: self.check,
            explain_cache: self.explain_cache,
            trace: self.trace.clone(),
            timeline: self.timeline.clone(),
            guard: None,
        })
    }
}

/// A build's context and Dockerfile as the command line names them, laid out: a local
/// directory is used where it is; standard input, a git repository or a URL is fetched
/// into a private directory that lives as long as the returned guard.
pub struct ResolvedContext {
    /// The context directory.
    pub dir: PathBuf,
    /// The Dockerfile.
    pub dockerfile: rdock_builder::DockerfileSource,
    /// Keeps a fetched context's directory until the build is done.
    pub guard: Option<Arc<rdock_builder::context::Fetched>>,
}

/// Resolves `context` (a directory, `-`, a git or http(s) URL) and `file` (`-f`: a path,
/// `-` for standard input, or for a fetched context a name inside it).
pub fn resolve_context(context: &str, file: Option<&str>, build_args: &BTreeMap<String, String>) -> anyhow::Result<ResolvedContext> {
    use rdock_builder::DockerfileSource;
    use rdock_builder::context::{ContextSource, fetch};
    let src = ContextSource::parse(context);
    if file == Some("-") {
        if src == ContextSource::Stdin {
            return Err(UsageError("the Dockerfile (-f -) and the context (-) cannot both come from standard input".into()).into());
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading the Dockerfile from standard input")?;
        let ResolvedContext { dir, guard, .. } = resolve_context(context, None, build_args)?;
        return Ok(ResolvedContext { dir, dockerfile: DockerfileSource::Text(text), guard });
    }
    // BuildKit's build argument for keeping a git context's .git.
    let keep_git = build_args.get("BUILDKIT_CONTEXT_KEEP_GIT_DIR").is_some_and(|v| matches!(v.as_str(), "1" | "true"));
    let tmp = crate::store_root().join("tmp");
    match fetch(&src, &mut std::io::stdin(), &tmp, file, keep_git)? {
        Some(f) => {
            let text = f.dockerfile.clone();
            Ok(ResolvedContext { dir: f.dir.clone(), dockerfile: DockerfileSource::Text(text), guard: Some(Arc::new(f)) })
        }
        None => {
            let dir = PathBuf::from(context);
            let dockerfile = file.map(PathBuf::from).unwrap_or_else(|| default_dockerfile(&dir));
            Ok(ResolvedContext { dir, dockerfile: DockerfileSource::Path(dockerfile), guard: None })
        }
    }
}

/// Parses `--annotation KEY=VALUE` or `manifest:KEY=VALUE`, as buildx takes it; the
/// other levels (`index:`, descriptors, per platform) are refused by name.
pub fn parse_annotation(spec: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = spec.split_once('=').ok_or_else(|| UsageError(format!("--annotation {spec}: expected KEY=VALUE")))?;
    let k = match k.split_once(':') {
        Some(("manifest", key)) => key,
        Some((level, _)) if ["index", "manifest-descriptor", "index-descriptor"].contains(&level) || level.contains('[') => {
            return Err(UsageError(format!("--annotation {spec}: {level}: annotations are not supported (manifest: is)")).into());
        }
        _ => k,
    };
    if k.is_empty() {
        return Err(UsageError(format!("--annotation {spec}: the key is empty")).into());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `NAME=VALUE` of `--build-context` (`--opt context:NAME=VALUE`).
pub fn parse_build_context(flag: &str, spec: &str) -> anyhow::Result<(String, rdock_builder::NamedContextSource)> {
    let (name, value) = spec.split_once('=').ok_or_else(|| UsageError(format!("{flag} {spec}: expected NAME=VALUE")))?;
    if name.is_empty() {
        return Err(UsageError(format!("{flag} {spec}: the name is empty")).into());
    }
    let src = rdock_builder::NamedContextSource::parse(value).map_err(|e| UsageError(format!("{flag} {spec}: {e}")))?;
    Ok((name.to_string(), src))
}

/// The default Dockerfile in `dir`: `Dockerfile`, or `dockerfile` when only that exists
/// (BuildKit's frontend falls back to the lowercase name for the default filename only).
pub fn default_dockerfile(dir: &Path) -> PathBuf {
    let upper = dir.join("Dockerfile");
    let lower = dir.join("dockerfile");
    if !upper.exists() && lower.is_file() { lower } else { upper }
}

/// Parses a build-wide network mode (`--network`, `force-network-mode`).
pub fn parse_network(flag: &str, spec: &str) -> anyhow::Result<rdock_llb::Network> {
    rdock_frontend::parse_network(spec).ok_or_else(|| UsageError(format!("{flag} {spec}: expected default, none or host")).into())
}

/// Parses `--add-host HOST:IP` (and buildx's `HOST=IP`).
pub fn parse_add_host(spec: &str) -> anyhow::Result<rdock_llb::HostIp> {
    rdock_llb::HostIp::parse(spec).map_err(|e| UsageError(e.to_string()).into())
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
                rewrite_timestamp: rdock_oci::RewriteTimestamp::from_flag(flag(spec, &m, "rewrite-timestamp")?),
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
    form.rewrite_timestamp = rdock_oci::RewriteTimestamp::from_flag(flag(spec, m, "rewrite-timestamp")?);
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

/// Runs a build, then holds the store to its configured cap (see [`crate::gc`]), whether
/// the build succeeded or not: a failed build keeps the steps it completed.
pub fn run(cmd: &BuildCommand) -> anyhow::Result<BuildSummary> {
    // The sandbox's seccomp program compiles while the Dockerfile is read and resolved.
    rdock_worker::seccomp::prepare();
    let store = crate::open_store()?;
    let result = build(cmd, &store);
    let gc = crate::gc::enforce_cap(&store, cmd.progress == progress::Mode::Quiet);
    let summary = result?;
    gc.context("garbage collection after the build")?;
    Ok(summary)
}

/// Warnings on standard error; what outputs did too, unless quiet.
struct Stderr {
    quiet: bool,
}

impl Notices for Stderr {
    fn warning(&self, text: &str) {
        eprintln!("warning: {text}");
    }
    fn done(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

/// The library's error, with its usage errors as the CLI's (exit status 2).
fn cli_error(e: BuildError) -> anyhow::Error {
    if e.is_usage() { UsageError(e.to_string()).into() } else { e.into() }
}

/// Runs `cmd` on `store` (the store at RDOCK_ROOT for `run`; `rdock verify` uses scratch ones).
pub fn run_in(cmd: &BuildCommand, store: &rdock_snapshotter::Store) -> anyhow::Result<BuildSummary> {
    build(cmd, store)
}

fn build(cmd: &BuildCommand, store: &rdock_snapshotter::Store) -> anyhow::Result<BuildSummary> {
    let req = &cmd.build;
    let quiet = cmd.progress == progress::Mode::Quiet;
    // Transfer lines go with plain progress only: they would break the live display and
    // rawjson's one event per line.
    let plain = match cmd.progress {
        progress::Mode::Plain => true,
        progress::Mode::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        _ => false,
    };
    let client = crate::registry::client(&req.insecure_registries());
    let limits = crate::config::limits(store)?;
    let pipeline =
        Pipeline::new(store.clone(), client, limits, crate::registry::printer(!plain), Arc::new(Stderr { quiet })).map_err(cli_error)?;
    let lowered = pipeline.load(req).map_err(cli_error)?;
    if !show_checks(cmd, &lowered)? {
        return Ok(BuildSummary::default());
    }
    pipeline.admit(req, &lowered).map_err(cli_error)?;
    if let Some(fmt) = cmd.dump {
        if req.platforms.len() > 1 {
            return Err(UsageError("--dump-llb shows one platform's graph: give one platform".into()).into());
        }
        let text = match fmt {
            DumpFormat::Json => lowered.definition.to_json(),
            DumpFormat::Ron => lowered.definition.to_ron(),
            DumpFormat::Dot => lowered.definition.to_dot(),
        };
        println!("{text}");
        return Ok(BuildSummary::default());
    }
    let sink = progress::sink(cmd.progress, cmd.explain_cache);
    let recording = rdock_solver::RecordingProgress::default();
    let tee = progress::Tee(sink.as_ref(), &recording);
    let traced = cmd.trace.is_some() || cmd.timeline.is_some();
    let result = pipeline.build(req, &lowered, if traced { &tee } else { sink.as_ref() });
    drop(sink);
    // Written for failed builds too: they are where a timeline helps most.
    if traced {
        write_trace(cmd, &recording, &lowered.definition)?;
    }
    result.map_err(cli_error)
}

/// Shows the build checks' warnings; with `--check`, reports and says to stop (false).
fn show_checks(cmd: &BuildCommand, lowered: &rdock_frontend::Lowered) -> anyhow::Result<bool> {
    let n = lowered.warnings.len();
    if cmd.check || cmd.progress != progress::Mode::Quiet || lowered.check.error {
        for w in &lowered.warnings {
            eprintln!("{w}\n");
        }
    }
    if !cmd.check {
        return Ok(true);
    }
    if n == 0 {
        eprintln!("Check complete, no warnings found.");
        return Ok(false);
    }
    bail!("Check complete, {n} warning{} found", if n == 1 { "" } else { "s" });
}

/// `--trace` and `--timeline` from the build's recorded events.
fn write_trace(cmd: &BuildCommand, recording: &rdock_solver::RecordingProgress, def: &rdock_llb::Definition) -> anyhow::Result<()> {
    let spans = crate::trace::spans(&recording.events(), def);
    if let Some(p) = &cmd.trace {
        std::fs::write(p, serde_json::to_vec(&crate::trace::chrome_trace(&spans))?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &cmd.timeline {
        std::fs::write(p, crate::timeline::svg(&spans)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
