//! `rdock-build`: buildctl-like. Parses flags and calls `rdock_cli::build`.

use clap::Parser;
use rdock_cli::build::{BuildRequest, DumpFormat, parse_output, parse_secret, parse_ssh, run};
use rdock_cli::progress::Mode;
use rdock_cli::{UsageError, exit_with};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rdock-build", about = "Build a Dockerfile into an image, BuildKit-style, without a daemon")]
struct Args {
    /// The frontend; only `dockerfile`.
    #[arg(long)]
    frontend: String,
    /// `context=DIR` and `dockerfile=DIR`.
    #[arg(long = "local", value_name = "NAME=DIR")]
    locals: Vec<String>,
    /// `filename=NAME`, `target=STAGE`, `build-arg:K=V`.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
    /// `type=docker|oci|local|tar|image,...`.
    #[arg(long = "output", short = 'o')]
    outputs: Vec<String>,
    /// Not supported yet.
    #[arg(long = "export-cache")]
    export_cache: Vec<String>,
    /// Not supported yet.
    #[arg(long = "import-cache")]
    import_cache: Vec<String>,
    /// Run every step, ignoring cache records.
    #[arg(long)]
    no_cache: bool,
    /// auto, tty, plain, rawjson or quiet.
    #[arg(long, default_value = "auto")]
    progress: String,
    /// Write result digests as JSON here.
    #[arg(long)]
    metadata_file: Option<PathBuf>,
    /// `id=NAME,src=FILE` or `id=NAME,env=VAR`: a secret for RUN --mount=type=secret.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// `default` or `ID=SOCKET`: an SSH agent for RUN --mount=type=ssh.
    #[arg(long = "ssh")]
    ssh: Vec<String>,
    /// Run the build checks (lint rules) and report, without building; exit 1 on warnings.
    #[arg(long)]
    check: bool,
    /// Print the LLB definition (json, ron or dot) instead of building.
    #[arg(long, value_name = "FORMAT")]
    dump_llb: Option<String>,
}

fn request(a: Args) -> anyhow::Result<BuildRequest> {
    if a.frontend != "dockerfile" && a.frontend != "dockerfile.v0" {
        return Err(UsageError(format!("unknown frontend {:?} (only dockerfile)", a.frontend)).into());
    }
    if !a.export_cache.is_empty() || !a.import_cache.is_empty() {
        return Err(UsageError("--export-cache and --import-cache are not supported yet".into()).into());
    }
    let mut locals = BTreeMap::new();
    for l in &a.locals {
        let (k, v) = l.split_once('=').ok_or_else(|| UsageError(format!("--local {l}: expected NAME=DIR")))?;
        locals.insert(k.to_string(), PathBuf::from(v));
    }
    let context = locals.get("context").cloned().ok_or_else(|| UsageError("--local context=DIR is required".into()))?;
    let dockerfile_dir = locals.get("dockerfile").cloned().unwrap_or_else(|| context.clone());
    let mut filename = "Dockerfile".to_string();
    let mut target = None;
    let mut build_args = BTreeMap::new();
    for o in &a.opts {
        let (k, v) = o.split_once('=').ok_or_else(|| UsageError(format!("--opt {o}: expected KEY=VALUE")))?;
        if let Some(arg) = k.strip_prefix("build-arg:") {
            build_args.insert(arg.to_string(), v.to_string());
        } else {
            match k {
                "filename" => filename = v.to_string(),
                "target" => target = Some(v.to_string()),
                _ => return Err(UsageError(format!("--opt {k} is not supported yet")).into()),
            }
        }
    }
    let progress = Mode::parse(&a.progress)
        .ok_or_else(|| UsageError(format!("--progress {}: expected auto, tty, plain, rawjson or quiet", a.progress)))?;
    let dump = match a.dump_llb.as_deref() {
        None => None,
        Some("json") => Some(DumpFormat::Json),
        Some("ron") => Some(DumpFormat::Ron),
        Some("dot") => Some(DumpFormat::Dot),
        Some(other) => {
            return Err(UsageError(format!("--dump-llb {other}: expected json, ron or dot")).into());
        }
    };
    Ok(BuildRequest {
        context,
        dockerfile: dockerfile_dir.join(filename),
        target,
        build_args,
        outputs: a.outputs.iter().map(|o| parse_output(o)).collect::<anyhow::Result<_>>()?,
        no_cache: a.no_cache,
        progress,
        metadata_file: a.metadata_file,
        dump,
        check: a.check,
        secrets: a.secrets.iter().map(|s| parse_secret(s)).chain(a.ssh.iter().map(|s| parse_ssh(s))).collect::<anyhow::Result<_>>()?,
    })
}

fn main() {
    let args = Args::parse();
    match request(args).and_then(|r| run(&r)) {
        Ok(_) => {}
        Err(e) => exit_with(e),
    }
}
