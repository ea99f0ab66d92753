//! `rdock`: docker-like. Parses flags and calls `rdock_cli`.

use clap::{Parser, Subcommand};
use rdock_cli::build::{CommonFlags, Output, parse_output, parse_platform, run};
use rdock_cli::{UsageError, commands, exit_with, gc};
use rdock_imagespec::ImageRef;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rdock", about = "Build and manage container images without a daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `Build` carries many flags; the enum is parsed once per process, so its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile.
    Build {
        /// Name and tag the result (stores it in the local image store).
        #[arg(short = 't', long = "tag")]
        tags: Vec<String>,
        /// The Dockerfile (default CONTEXT/Dockerfile).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The stage to build.
        #[arg(long)]
        target: Option<String>,
        /// K=V.
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
        /// Output spec, or a directory.
        #[arg(short = 'o', long = "output")]
        outputs: Vec<String>,
        /// Target platform (`linux/arm64`); the host's by default.
        #[arg(long)]
        platform: Option<String>,
        /// Not supported yet.
        #[arg(long = "cache-from")]
        cache_from: Vec<String>,
        /// Not supported yet.
        #[arg(long = "cache-to")]
        cache_to: Vec<String>,
        #[command(flatten)]
        common: CommonFlags,
        /// The build context directory.
        context: PathBuf,
    },
    /// Run a container (not supported yet).
    Run {
        /// Everything else.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List images.
    Images,
    /// Give an image another name.
    Tag {
        /// Existing name.
        src: String,
        /// New name.
        dst: String,
    },
    /// Remove image names.
    Rmi {
        /// Names.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show an image's config as JSON.
    Inspect {
        /// Name or ID.
        image: String,
    },
    /// Show an image's history.
    History {
        /// Name or ID.
        image: String,
    },
    /// Load a docker-archive or OCI-layout tarball.
    Load {
        /// The tarball.
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
    },
    /// Save an image as a docker-archive tarball.
    Save {
        /// Where.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Which.
        image: String,
    },
    /// Pull from a registry (not supported yet).
    Pull {
        /// Reference.
        reference: String,
    },
    /// Push to a registry (not supported yet).
    Push {
        /// Reference.
        reference: String,
    },
    /// Disk usage of the store, by kind, and what `prune --all` would free.
    Du {
        /// Also every item: snapshot, blob, cache mount, with its size and last use.
        #[arg(short, long)]
        verbose: bool,
        /// `json` for a machine-readable report.
        #[arg(long)]
        format: Option<String>,
    },
    /// Verify the store: blobs against their digests, records against what they name.
    Fsck,
    /// Remove build cache and unused blobs, least recently used first; never what a
    /// tagged image or a running build needs.
    Prune {
        /// Also snapshots holding tagged images' layers (they are unpacked again when needed).
        #[arg(short, long)]
        all: bool,
        /// Stop once the store uses at most this much (`10GB`, `512MB`).
        #[arg(long)]
        keep_storage: Option<String>,
        /// `until=DURATION`: only what was last used longer ago (`until=24h`).
        #[arg(long)]
        filter: Vec<String>,
        /// List what was removed.
        #[arg(short, long)]
        verbose: bool,
    },
}

fn not_yet(what: &str) -> anyhow::Result<()> {
    Err(UsageError(format!("{what} is not supported yet")).into())
}

fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Build { tags, file, target, build_args, outputs, platform, cache_from, cache_to, mut common, context } => {
            // dockerd grants network.host to its builds by default; so does `rdock build`.
            common.allow.push("network.host".into());
            if !cache_from.is_empty() || !cache_to.is_empty() {
                return not_yet("--cache-from/--cache-to");
            }
            let mut outs: Vec<Output> = outputs.iter().map(|o| parse_output(o)).collect::<anyhow::Result<_>>()?;
            if !tags.is_empty() {
                let names = tags
                    .iter()
                    .map(|t| ImageRef::parse(t).map_err(|e| UsageError(e.to_string()).into()))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                outs.push(Output::Image { names });
            }
            let mut args = BTreeMap::new();
            for a in build_args {
                match a.split_once('=') {
                    Some((k, v)) => args.insert(k.to_string(), v.to_string()),
                    // `--build-arg K` takes K from the environment, as docker does.
                    None => std::env::var(&a).ok().map(|v| args.insert(a.clone(), v)).unwrap_or(None),
                };
            }
            let mut req = common.request(context.clone(), file.unwrap_or_else(|| context.join("Dockerfile")), target, args, outs, None)?;
            req.platform = platform.as_deref().map(parse_platform).transpose()?;
            run(&req).map(|_| ())
        }
        Command::Run { .. } => not_yet("rdock run"),
        Command::Images => commands::list(),
        Command::Tag { src, dst } => commands::tag(&src, &dst),
        Command::Rmi { images } => commands::rmi(&images),
        Command::Inspect { image } => commands::inspect(&image),
        Command::History { image } => commands::history(&image),
        Command::Load { input } => commands::load(&input),
        Command::Save { output, image } => commands::save(&output, &image),
        Command::Pull { .. } => not_yet("rdock pull"),
        Command::Push { .. } => not_yet("rdock push"),
        Command::Du { verbose, format } => match format.as_deref() {
            None | Some("table") => gc::du(verbose, false),
            Some("json") => gc::du(verbose, true),
            Some(f) => Err(UsageError(format!("unknown format {f:?}: table or json")).into()),
        },
        Command::Fsck => commands::fsck(),
        Command::Prune { all, keep_storage, filter, verbose } => gc::prune(all, keep_storage.as_deref(), &filter, verbose),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        exit_with(e);
    }
}
