//! `rdock-build`: buildctl-like. Parses flags and calls `rdock_cli::build`.

use clap::Parser;
use rdock_cli::build::{BuildCommand, CommonFlags, DumpFormat, parse_add_host, parse_network, parse_output, run};
use rdock_cli::format::parse_platforms;
use rdock_cli::registry::{parse_cache_export, parse_cache_import};
use rdock_cli::{UsageError, exit_with};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rdock-build", version, about = "Build a Dockerfile into an image, BuildKit-style, without a daemon")]
struct Args {
    /// Show diagnostics on standard error; RDOCK_LOG=FILTER chooses them finer.
    #[arg(long)]
    debug: bool,
    /// The frontend; only `dockerfile`.
    #[arg(long)]
    frontend: String,
    /// `context=DIR` and `dockerfile=DIR`.
    #[arg(long = "local", value_name = "NAME=DIR")]
    locals: Vec<String>,
    /// `filename=NAME`, `target=STAGE`, `build-arg:K=V`, `platform=`, `no-cache=`,
    /// `force-network-mode=default|none|host`, `add-hosts=HOST=IP,…`.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
    /// `type=docker|oci|local|tar|image,...`.
    #[arg(long = "output", short = 'o')]
    outputs: Vec<String>,
    /// Export the build cache: `type=registry,ref=REF` or `type=local,dest=DIR`, with
    /// `mode=min|max` and `cache-mounts=true`.
    #[arg(long = "export-cache")]
    export_cache: Vec<String>,
    /// Import a build cache: `type=registry,ref=REF` or `type=local,src=DIR`.
    #[arg(long = "import-cache")]
    import_cache: Vec<String>,
    #[command(flatten)]
    common: CommonFlags,
    /// Print the LLB definition (json, ron or dot) instead of building.
    #[arg(long, value_name = "FORMAT")]
    dump_llb: Option<String>,
}

/// The frontend options (`--opt KEY=VALUE`), BuildKit's dockerfile frontend's spellings.
struct FrontendOpts {
    filename: Option<String>,
    target: Option<String>,
    build_args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    platforms: Vec<rdock_imagespec::Platform>,
    /// `no-cache`: empty for every stage, else the stages.
    no_cache: Option<Vec<String>>,
    network: rdock_llb::Network,
    extra_hosts: Vec<rdock_llb::HostIp>,
    pull: bool,
    resources: rdock_llb::Resources,
    /// `context=URL`: a git or http(s) context in place of `--local context=`.
    context: Option<String>,
    /// `context:NAME=VALUE`, the value as `--build-context` takes it, or `local:NAME` for
    /// the directory `--local NAME=` gives.
    named: Vec<(String, String)>,
}

impl FrontendOpts {
    fn parse(opts: &[String]) -> anyhow::Result<FrontendOpts> {
        let mut o = FrontendOpts {
            filename: None,
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            platforms: Vec::new(),
            no_cache: None,
            network: rdock_llb::Network::Sandbox,
            extra_hosts: Vec::new(),
            pull: false,
            resources: rdock_llb::Resources::default(),
            context: None,
            named: Vec::new(),
        };
        for opt in opts {
            let (k, v) = opt.split_once('=').ok_or_else(|| UsageError(format!("--opt {opt}: expected KEY=VALUE")))?;
            o.set(k, v)?;
        }
        Ok(o)
    }

    fn set(&mut self, k: &str, v: &str) -> anyhow::Result<()> {
        if let Some(arg) = k.strip_prefix("build-arg:") {
            self.build_args.insert(arg.to_string(), v.to_string());
            return Ok(());
        }
        if let Some(name) = k.strip_prefix("context:") {
            self.named.push((name.to_string(), v.to_string()));
            return Ok(());
        }
        if let Some(label) = k.strip_prefix("label:") {
            self.labels.insert(label.to_string(), v.to_string());
            return Ok(());
        }
        match k {
            "filename" => self.filename = Some(v.to_string()),
            "context" => self.context = Some(v.to_string()),
            "target" => self.target = Some(v.to_string()),
            "platform" => self.platforms = parse_platforms(v)?,
            // BuildKit's frontend option: empty means every stage, else a list of stages.
            "no-cache" => self.no_cache = Some(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()),
            // The options behind buildx's --shm-size (bytes) and --ulimit (comma-separated
            // NAME=SOFT[:HARD]).
            "shm-size" => {
                self.resources.shm_size =
                    Some(v.parse().map_err(|_| UsageError(format!("--opt shm-size={v}: expected a number of bytes")))?)
            }
            "ulimit" => {
                for u in v.split(',').filter(|u| !u.is_empty()) {
                    self.resources.ulimits.push(rdock_llb::Ulimit::parse(u).map_err(|e| UsageError(e.to_string()))?);
                }
            }
            // BuildKit's spelling of `--pull`: `pull`, or `default`/`local` (the store first).
            "image-resolve-mode" => {
                self.pull = match v {
                    "pull" => true,
                    "default" | "local" => false,
                    other => return Err(UsageError(format!("--opt image-resolve-mode={other}: expected default, pull or local")).into()),
                }
            }
            "force-network-mode" => self.network = parse_network("--opt force-network-mode=", v)?,
            // BuildKit's spelling: `host=ip,host2=ip2`.
            "add-hosts" => {
                for h in v.split(',').filter(|h| !h.is_empty()) {
                    self.extra_hosts.push(parse_add_host(h)?);
                }
            }
            _ => return Err(UsageError(format!("--opt {k} is not supported yet")).into()),
        }
        Ok(())
    }
}

fn request(a: Args) -> anyhow::Result<BuildCommand> {
    if a.frontend != "dockerfile" && a.frontend != "dockerfile.v0" {
        return Err(UsageError(format!("unknown frontend {:?} (only dockerfile)", a.frontend)).into());
    }
    let mut locals = BTreeMap::new();
    for l in &a.locals {
        let (k, v) = l.split_once('=').ok_or_else(|| UsageError(format!("--local {l}: expected NAME=DIR")))?;
        locals.insert(k.to_string(), PathBuf::from(v));
    }
    let o = FrontendOpts::parse(&a.opts)?;
    let context = context_and_dockerfile(&locals, &o)?;
    let dump = match a.dump_llb.as_deref() {
        None => None,
        Some("json") => Some(DumpFormat::Json),
        Some("ron") => Some(DumpFormat::Ron),
        Some("dot") => Some(DumpFormat::Dot),
        Some(other) => {
            return Err(UsageError(format!("--dump-llb {other}: expected json, ron or dot")).into());
        }
    };
    let outputs = a.outputs.iter().map(|o| parse_output(o)).collect::<anyhow::Result<_>>()?;
    let mut req = a.common.request(context.dir.clone(), context.dockerfile.clone(), o.target, o.build_args, outputs, dump)?;
    req.guard = context.guard;
    for (name, value) in &o.named {
        let spec = match value.strip_prefix("local:") {
            Some(l) => {
                let dir = locals.get(l).ok_or_else(|| UsageError(format!("--opt context:{name}={value}: no --local {l}=DIR")))?;
                format!("{name}={}", dir.display())
            }
            None => format!("{name}={value}"),
        };
        let (name, src) = rdock_cli::build::parse_build_context("--opt context:", &spec)?;
        req.build.named_contexts.insert(name, src);
    }
    req.build.platforms = o.platforms;
    req.build.network = o.network;
    req.build.extra_hosts = o.extra_hosts;
    req.build.labels = o.labels;
    req.build.pull = o.pull;
    req.build.resources = o.resources;
    req.build.cache_exports = a.export_cache.iter().map(|c| parse_cache_export("--export-cache", c)).collect::<anyhow::Result<_>>()?;
    req.build.cache_imports = a.import_cache.iter().map(|c| parse_cache_import("--import-cache", c)).collect::<anyhow::Result<_>>()?;
    match o.no_cache {
        Some(stages) if stages.is_empty() => req.build.no_cache = true,
        Some(stages) => req.build.no_cache_stages.extend(stages),
        None => {}
    }
    Ok(req)
}

/// The context (`--local context=DIR`, or `--opt context=URL`) and the Dockerfile
/// (`--local dockerfile=DIR` and `--opt filename=`; inside a fetched context).
fn context_and_dockerfile(locals: &BTreeMap<String, PathBuf>, o: &FrontendOpts) -> anyhow::Result<rdock_cli::build::ResolvedContext> {
    if let Some(url) = &o.context {
        return rdock_cli::build::resolve_context(url, o.filename.as_deref(), &o.build_args);
    }
    let context = locals.get("context").cloned().ok_or_else(|| UsageError("--local context=DIR is required".into()))?;
    let dockerfile_dir = locals.get("dockerfile").cloned().unwrap_or_else(|| context.clone());
    let dockerfile = match &o.filename {
        Some(f) => dockerfile_dir.join(f),
        None => rdock_cli::build::default_dockerfile(&dockerfile_dir),
    };
    Ok(rdock_cli::build::ResolvedContext { dir: context, dockerfile: rdock_builder::DockerfileSource::Path(dockerfile), guard: None })
}

fn main() {
    let args = Args::parse();
    rdock_cli::init_logging(args.debug);
    match request(args).and_then(|r| run(&r)) {
        Ok(_) => {}
        Err(e) => exit_with(e),
    }
}
