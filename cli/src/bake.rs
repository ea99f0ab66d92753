//! `rdock bake`: buildx bake's files (read by [`rdock_bake`]) turned into builds. Targets
//! build at once, each on a thread of its own, against one store: a step two targets
//! share runs once (the other waits on its key's lock and takes the result), independent
//! targets run in parallel. A target another names as a context (`target:NAME`) builds
//! first, into an OCI layout the other reads as `oci-layout://`.

use crate::UsageError;
use crate::build::{BuildCommand, parse_build_context, parse_output, parse_secret, parse_ssh, resolve_context};
use crate::progress::Mode;
use crate::registry::{parse_cache_export, parse_cache_import};
use anyhow::Context;
use rdock_bake::{BakeFile, Plan, Target};
use rdock_builder::{BuildRequest, DockerfileSource, Entitlement, Output};
use rdock_imagespec::ImageRef;
use std::path::{Path, PathBuf};

/// `rdock bake`'s flags, as `docker buildx bake` takes them.
#[derive(clap::Args, Debug)]
pub struct BakeArgs {
    /// A bake file: HCL, JSON or compose YAML, told by its name (default: compose.yaml,
    /// compose.yml, docker-compose.yml, docker-compose.yaml, docker-bake.json,
    /// docker-bake.hcl, docker-bake.override.json, docker-bake.override.hcl in the
    /// current directory, those that exist, merged in that order).
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Print the resolved targets as JSON, as `buildx bake --print`, and build nothing.
    #[arg(long)]
    pub print: bool,
    /// `TARGET.KEY=VALUE` (`*` for every target): override an attribute.
    #[arg(long = "set", value_name = "TARGET.KEY=VALUE")]
    pub set: Vec<String>,
    /// Push every target's tags to their registries.
    #[arg(long)]
    pub push: bool,
    /// Keep every target's image in the store (tagged ones are kept anyway).
    #[arg(long)]
    pub load: bool,
    /// Run every step of every target without the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Ask registries for base images the store has.
    #[arg(long)]
    pub pull: bool,
    /// auto, tty, plain, rawjson or quiet (several targets: auto is plain).
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS")]
    pub progress: String,
    /// Write each target's result digests, as `{"TARGET": {…}}`.
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// Targets or groups to build (default: `default`).
    pub targets: Vec<String>,
}

/// `rdock bake`.
pub fn bake(a: BakeArgs) -> anyhow::Result<()> {
    let paths = if a.files.is_empty() { rdock_bake::default_files(Path::new(".")) } else { a.files.clone() };
    if paths.is_empty() {
        return Err(UsageError("no bake file here (compose.yaml, docker-bake.json, docker-bake.hcl, …): give -f FILE".into()).into());
    }
    let files = paths.iter().map(|p| BakeFile::read(p)).collect::<Result<Vec<_>, _>>()?;
    let def = rdock_bake::parse(&files, &|k| std::env::var(k).ok())?;
    let mut plan = def.resolve(&a.targets)?;
    // A target another uses as a context is built too, as buildx does.
    let needed: Vec<String> = plan.targets.values().flat_map(target_deps).filter(|d| !plan.targets.contains_key(d)).collect();
    if !needed.is_empty() {
        let mut names = plan.order.clone();
        names.extend(needed);
        plan = def.resolve(&names)?;
    }
    for s in &a.set {
        plan.set(s)?;
    }
    if a.print {
        println!("{}", plan.to_json());
        return Ok(());
    }
    let mode = Mode::parse(&a.progress)
        .ok_or_else(|| UsageError(format!("--progress {}: expected auto, tty, plain, rawjson or quiet", a.progress)))?;
    let mode = if plan.order.len() > 1 && matches!(mode, Mode::Auto | Mode::Tty) { Mode::Plain } else { mode };
    let layouts = tempfile::Builder::new().prefix(&format!("bake-{}-", std::process::id())).tempdir_in(std::env::temp_dir())?;
    let metadata = build_in_waves(&plan, &a, mode, layouts.path())?;
    if let Some(path) = &a.metadata_file {
        std::fs::write(path, serde_json::to_vec_pretty(&metadata)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The targets `t` names as contexts (`target:NAME`).
fn target_deps(t: &Target) -> Vec<String> {
    t.contexts.values().filter_map(|v| v.strip_prefix("target:")).map(str::to_string).collect()
}

/// Builds the plan's targets, each wave (those whose `target:` contexts are built) at
/// once; each target's metadata by name.
fn build_in_waves(plan: &Plan, a: &BakeArgs, mode: Mode, layouts: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut done: Vec<String> = Vec::new();
    let mut metadata = serde_json::Map::new();
    while done.len() < plan.order.len() {
        let wave: Vec<&String> =
            plan.order.iter().filter(|n| !done.contains(n) && target_deps(&plan.targets[*n]).iter().all(|d| done.contains(d))).collect();
        if wave.is_empty() {
            let left: Vec<&str> = plan.order.iter().filter(|n| !done.contains(n)).map(String::as_str).collect();
            return Err(UsageError(format!("targets {} use one another as contexts in a cycle", left.join(", "))).into());
        }
        let cmds = wave.iter().map(|n| command(n, &plan.targets[*n], plan, a, mode, layouts)).collect::<anyhow::Result<Vec<_>>>()?;
        let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let threads: Vec<_> = cmds.iter().map(|c| s.spawn(move || crate::build::run(c).map(|_| ()))).collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        for ((name, cmd), r) in wave.iter().zip(&cmds).zip(results) {
            r.with_context(|| format!("target {name}"))?;
            if let Some(p) = &cmd.build.metadata_file {
                let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(p)?)?;
                metadata.insert((*name).clone(), doc);
            }
            done.push((*name).clone());
        }
    }
    Ok(metadata)
}

/// The build a target describes.
fn command(name: &str, t: &Target, plan: &Plan, a: &BakeArgs, mode: Mode, layouts: &Path) -> anyhow::Result<BuildCommand> {
    let context = t.context.clone().unwrap_or_else(|| ".".into());
    let dockerfile = t.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
    let remote = !matches!(rdock_builder::context::ContextSource::parse(&context), rdock_builder::context::ContextSource::Dir(_));
    // The Dockerfile is relative to the context, for a directory as for a URL.
    let file = if remote { dockerfile.clone() } else { Path::new(&context).join(&dockerfile).display().to_string() };
    let ctx = resolve_context(&context, if t.dockerfile_inline.is_some() { None } else { Some(&file) }, &t.args)?;
    let mut req = BuildRequest::new(ctx.dir.clone(), PathBuf::new());
    req.dockerfile = match &t.dockerfile_inline {
        Some(text) => DockerfileSource::Text(text.clone()),
        None => ctx.dockerfile.clone(),
    };
    req.name_prefix = (plan.order.len() > 1).then(|| name.to_string());
    req.target = t.target.clone();
    req.build_args = t.args.clone();
    req.labels = t.labels.clone();
    req.no_cache = a.no_cache || t.no_cache == Some(true);
    req.no_cache_stages = t.no_cache_filter.clone();
    req.pull = a.pull || t.pull == Some(true);
    req.platforms = t.platforms.iter().map(|p| crate::format::parse_platforms(p)).collect::<anyhow::Result<Vec<_>>>()?.concat();
    req.network = crate::build::parse_network(&format!("{name}: network"), t.network.as_deref().unwrap_or("default"))?;
    // As `rdock build`: dockerd grants network.host to its builds.
    req.allow = vec![Entitlement::NetworkHost];
    req.secrets = rdock_worker::Secrets {
        values: t.secret.iter().map(|s| parse_secret(s)).collect::<anyhow::Result<_>>()?,
        ssh: t.ssh.iter().map(|s| parse_ssh(s)).collect::<anyhow::Result<_>>()?,
    };
    req.cache_imports = t.cache_from.iter().map(|c| parse_cache_import("cache-from", c)).collect::<anyhow::Result<_>>()?;
    req.cache_exports = t.cache_to.iter().map(|c| parse_cache_export("cache-to", c)).collect::<anyhow::Result<_>>()?;
    for (k, v) in &t.contexts {
        let src = match v.strip_prefix("target:") {
            Some(dep) => {
                rdock_builder::NamedContextSource::OciLayout { dir: layouts.join(dep), pick: rdock_oci::LayoutPick::Tag("latest".into()) }
            }
            None => parse_build_context("contexts", &format!("{k}={v}"))?.1,
        };
        req.named_contexts.insert(k.clone(), src);
    }
    req.outputs = outputs(name, t, plan, a, layouts)?;
    if a.metadata_file.is_some() {
        req.metadata_file = Some(layouts.join(format!("{name}.metadata.json")));
    }
    Ok(BuildCommand::plain(req, mode, ctx.guard))
}

/// A target's outputs: its own, its tags (pushed with `--push`), and an OCI layout when
/// another target uses it as a context.
fn outputs(name: &str, t: &Target, plan: &Plan, a: &BakeArgs, layouts: &Path) -> anyhow::Result<Vec<Output>> {
    let mut outs: Vec<Output> = t.output.iter().map(|o| parse_output(o)).collect::<anyhow::Result<_>>()?;
    let names = t
        .tags
        .iter()
        .map(|n| ImageRef::parse(n).map_err(|e| UsageError(format!("{name}: tags: {e}")).into()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.push && names.is_empty() {
        return Err(UsageError(format!("--push: target {name} has no tags to push")).into());
    }
    if !names.is_empty() || a.load {
        outs.push(Output::Image { names, push: a.push, insecure: false, rewrite_timestamp: Default::default() });
    }
    if plan.targets.values().any(|other| target_deps(other).iter().any(|d| d == name)) {
        let latest = ImageRef::parse("latest").map_err(|e| UsageError(e.to_string()))?;
        outs.push(Output::Oci { dest: layouts.join(name), names: vec![latest], form: rdock_oci::ExportForm::stored(), tar: false });
    }
    Ok(outs)
}
