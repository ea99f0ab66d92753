//! `rdock`: docker-like. Parses flags and calls `rdock_cli`.

use clap::{Parser, Subcommand};
use rdock_cli::build::{CommonFlags, Output, parse_output, parse_platform, run};
use rdock_cli::registry::{self, parse_cache_export, parse_cache_import};
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
        /// Import a build cache: `REF`, `type=registry,ref=REF` or `type=local,src=DIR`.
        #[arg(long = "cache-from")]
        cache_from: Vec<String>,
        /// Export the build cache: `type=registry,ref=REF` or `type=local,dest=DIR`, with
        /// `mode=min|max` and `cache-mounts=true`.
        #[arg(long = "cache-to")]
        cache_to: Vec<String>,
        /// Push the image to its registry after building (`-t` names).
        #[arg(long)]
        push: bool,
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
    /// Pull an image from a registry: only the layers the store lacks are downloaded.
    Pull {
        /// Reference (`127.0.0.1:5000/app:1`, `name@sha256:…`).
        reference: String,
        /// The platform to pull from a multi-platform image (the host's by default).
        #[arg(long)]
        platform: Option<String>,
        /// Print only the result.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push an image to its registry: only the blobs the registry lacks are uploaded.
    Push {
        /// Reference (a name in the local store).
        reference: String,
        /// Print only the result.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Log in to a registry; the credentials go to docker's config.json.
    Login {
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Password (prefer --password-stdin).
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// The registry (Docker Hub if omitted).
        server: Option<String>,
    },
    /// Remove a registry's credentials.
    Logout {
        /// The registry (Docker Hub if omitted).
        server: Option<String>,
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
        Command::Build { tags, file, target, build_args, outputs, platform, cache_from, cache_to, push, mut common, context } => {
            // dockerd grants network.host to its builds by default; so does `rdock build`.
            common.allow.push("network.host".into());
            if push && tags.is_empty() {
                return Err(UsageError("--push needs a name: give -t NAME".into()).into());
            }
            let mut outs: Vec<Output> = outputs.iter().map(|o| parse_output(o)).collect::<anyhow::Result<_>>()?;
            if !tags.is_empty() {
                let names = tags
                    .iter()
                    .map(|t| ImageRef::parse(t).map_err(|e| UsageError(e.to_string()).into()))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                outs.push(Output::Image { names, push, insecure: false });
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
            req.cache_imports = cache_from.iter().map(|c| parse_cache_import("--cache-from", c)).collect::<anyhow::Result<_>>()?;
            req.cache_exports = cache_to.iter().map(|c| parse_cache_export("--cache-to", c)).collect::<anyhow::Result<_>>()?;
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
        Command::Pull { reference, platform, quiet } => registry::pull(&reference, platform.as_deref(), quiet),
        Command::Push { reference, quiet } => registry::push(&reference, quiet),
        Command::Login { username, password, password_stdin, server } => {
            registry::login(server.as_deref(), username, password, password_stdin)
        }
        Command::Logout { server } => registry::logout(server.as_deref()),
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
