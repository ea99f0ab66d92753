//! `rdock`: docker-like. Parses flags and calls `rdock_cli`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rdock_cli::build::{CommonFlags, Output, parse_add_host, parse_network, parse_output, run};
use rdock_cli::format::parse_platforms;
use rdock_cli::registry::{self, parse_cache_export, parse_cache_import};
use rdock_cli::{UsageError, commands, containers, exit_with, gc, inspect};
use rdock_imagespec::ImageRef;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rdock", version, about = "Build and manage container images without a daemon")]
struct Cli {
    /// Show diagnostics (what the solver, store, registry client and sandbox do) on
    /// standard error; RDOCK_LOG=FILTER chooses them finer.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

// `Build` carries many flags; the enum is parsed once per process, so its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile.
    Build(BuildArgs),
    /// Build the targets of bake files (docker-bake.hcl, docker-bake.json, compose.yaml),
    /// as `docker buildx bake`.
    Bake(rdock_cli::bake::BakeArgs),
    /// Rebuild without the cache in scratch stores and say whether the result is
    /// bit-identical, and if not, which layers and files differ and how (exit 0 only when
    /// identical).
    Verify(rdock_cli::verify::VerifyArgs),
    /// Run a command in a new container from an image, in the foreground.
    #[command(disable_help_flag = true)]
    Run {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[command(flatten)]
        args: containers::RunArgs,
    },
    /// List containers (running ones; -a for all).
    Ps {
        /// All containers, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove containers (their layer and record).
    Rm {
        /// Kill and remove running ones too.
        #[arg(short, long)]
        force: bool,
        /// Names or ids (prefixes of at least 3 digits).
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Make an image of a container's changes on top of its image.
    Commit {
        /// Comment for the history entry.
        #[arg(short, long)]
        message: Option<String>,
        /// The container.
        container: String,
        /// `REPO[:TAG]` for the new image.
        image: Option<String>,
    },
    /// List images.
    Images {
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing name.
        src: String,
        /// New name.
        dst: String,
    },
    /// Remove image names (refused for an image a container uses, unless -f).
    Rmi {
        /// Also when containers use the image.
        #[arg(short, long)]
        force: bool,
        /// Names.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show images (or containers) as JSON like `docker inspect`.
    Inspect {
        /// Names or IDs.
        #[arg(required = true)]
        objects: Vec<String>,
    },
    /// Show an image's history: one row per entry, newest first.
    History {
        /// Name or ID.
        image: String,
        /// Full CREATED BY text.
        #[arg(long)]
        no_trunc: bool,
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// What each layer of an image adds, changes and removes, and how much is wasted
    /// (as Dive shows it).
    Layers {
        /// Name or ID.
        image: String,
        /// `json`: one document.
        #[arg(long)]
        format: Option<String>,
        /// Files listed per layer (0 for all).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Load a docker-archive or OCI-layout tarball (gzip or not), or an OCI layout
    /// directory.
    Load {
        /// The tarball or directory (default: standard input).
        #[arg(short = 'i', long = "input")]
        input: Option<PathBuf>,
    },
    /// Save an image as a docker-archive tarball (or an OCI archive).
    Save {
        /// Where (default: standard output, unless it is a terminal).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// `docker` (docker-archive, the default) or `oci` (an OCI image layout).
        #[arg(long, default_value = "docker")]
        format: String,
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

/// `table` or `json`; anything else is a usage error.
fn json_format(format: Option<&str>) -> anyhow::Result<bool> {
    match format {
        None | Some("table") => Ok(false),
        Some("json") => Ok(true),
        Some(f) => Err(UsageError(format!("unknown format {f:?}: table or json")).into()),
    }
}

/// `rdock build`'s flags, as docker build and buildx take them.
#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// Name and tag the result (stores it in the local image store).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile (default CONTEXT/Dockerfile; `-`: standard input; for a context
    /// fetched from stdin, git or a URL, a name inside it).
    #[arg(short = 'f', long = "file")]
    file: Option<String>,
    /// The stage to build.
    #[arg(long)]
    target: Option<String>,
    /// K=V.
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Output spec, or a directory.
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Target platforms (`linux/arm64`, or `linux/amd64,linux/arm64`: one image per
    /// platform, built in parallel, in one OCI index); the host's by default.
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
    /// Ask base images' registries for their current manifests, even for images the
    /// store has.
    #[arg(long)]
    pull: bool,
    /// Keep the result as an image in the local store, as buildx's `--load` puts it in
    /// docker's (named by -t; without -t it has only an ID, as `-q` prints it).
    #[arg(long)]
    load: bool,
    /// The network of RUN steps without their own `--network`: `default` (egress
    /// through a user-mode stack), `none` or `host`.
    #[arg(long, default_value = "default")]
    network: String,
    /// Add `HOST:IP` to every RUN step's /etc/hosts.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_hosts: Vec<String>,
    /// `KEY=VALUE` (or `manifest:KEY=VALUE`): an annotation of the image's manifest,
    /// stored, pushed and exported with it.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// `KEY=VALUE`: a label of the image, over the Dockerfile's LABELs.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The size of RUN steps' /dev/shm (`128m`; default 64 MiB).
    #[arg(long, value_name = "SIZE")]
    shm_size: Option<String>,
    /// `NAME=SOFT[:HARD]`: a resource limit of RUN steps (`nofile=1024:2048`; -1 unlimited).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// Show no progress; print the image ID when done.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID here when done.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// `NAME=VALUE`: a named context for `FROM NAME`, `COPY --from=NAME` and
    /// `RUN --mount=from=NAME`: a directory, `docker-image://REF`,
    /// `oci-layout://DIR[:TAG|@DIGEST]`, a git URL or an http(s) URL.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    #[command(flatten)]
    common: CommonFlags,
    /// The build context: a directory, `-` (a tar archive, or a Dockerfile alone, on
    /// standard input), a git URL (`https://host/repo.git#ref:subdir`) or an http(s) URL
    /// of a tar archive or a Dockerfile.
    context: String,
}

/// `rdock build`.
fn build(a: BuildArgs) -> anyhow::Result<()> {
    let BuildArgs {
        tags,
        file,
        target,
        build_args,
        outputs,
        platform,
        cache_from,
        cache_to,
        push,
        pull,
        load,
        network,
        add_hosts,
        labels,
        shm_size,
        ulimits,
        quiet,
        iidfile,
        build_contexts,
        annotations,
        mut common,
        context,
    } = a;
    if quiet {
        common.progress = "quiet".into();
    }
    // dockerd grants network.host to its builds by default; so does `rdock build`.
    common.allow.push("network.host".into());
    if push && tags.is_empty() {
        return Err(UsageError("--push needs a name: give -t NAME".into()).into());
    }
    let mut outs: Vec<Output> = outputs.iter().map(|o| parse_output(o)).collect::<anyhow::Result<_>>()?;
    // An image ID needs an image: without -t, one with no name, as `docker build`
    // makes.
    if tags.is_empty() && (quiet || load || iidfile.is_some()) && !outs.iter().any(Output::needs_image) {
        outs.push(Output::Image { names: Vec::new(), push: false, insecure: false, rewrite_timestamp: Default::default() });
    }
    if !tags.is_empty() {
        let names =
            tags.iter().map(|t| ImageRef::parse(t).map_err(|e| UsageError(e.to_string()).into())).collect::<anyhow::Result<Vec<_>>>()?;
        outs.push(Output::Image { names, push, insecure: false, rewrite_timestamp: Default::default() });
    }
    let mut args = BTreeMap::new();
    for a in build_args {
        match a.split_once('=') {
            Some((k, v)) => args.insert(k.to_string(), v.to_string()),
            // `--build-arg K` takes K from the environment, as docker does.
            None => std::env::var(&a).ok().map(|v| args.insert(a.clone(), v)).unwrap_or(None),
        };
    }
    let ctx = rdock_cli::build::resolve_context(&context, file.as_deref(), &args)?;
    let mut req = common.request(ctx.dir.clone(), ctx.dockerfile.clone(), target, args, outs, None)?;
    req.guard = ctx.guard;
    for an in &annotations {
        let (k, v) = rdock_cli::build::parse_annotation(an)?;
        req.build.annotations.insert(k, v);
    }
    for b in &build_contexts {
        let (name, src) = rdock_cli::build::parse_build_context("--build-context", b)?;
        req.build.named_contexts.insert(name, src);
    }
    req.build.platforms = platform.as_deref().map(parse_platforms).transpose()?.unwrap_or_default();
    req.build.pull = pull;
    req.build.resources.shm_size = shm_size.as_deref().map(rdock_cli::format::parse_size).transpose()?;
    req.build.resources.ulimits =
        ulimits.iter().map(|u| rdock_llb::Ulimit::parse(u)).collect::<Result<_, _>>().map_err(|e| UsageError(e.to_string()))?;
    for l in &labels {
        // `--label K` is K with an empty value, as docker's.
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        req.build.labels.insert(k.to_string(), v.to_string());
    }
    req.build.network = parse_network("--network", &network)?;
    req.build.extra_hosts = add_hosts.iter().map(|h| parse_add_host(h)).collect::<anyhow::Result<_>>()?;
    req.build.cache_imports = cache_from.iter().map(|c| parse_cache_import("--cache-from", c)).collect::<anyhow::Result<_>>()?;
    req.build.cache_exports = cache_to.iter().map(|c| parse_cache_export("--cache-to", c)).collect::<anyhow::Result<_>>()?;
    let summary = run(&req)?;
    report_image_id(&summary, quiet, iidfile.as_deref())
}

/// `-q` prints the image ID, `--iidfile` writes it (without a newline, as docker's).
fn report_image_id(summary: &rdock_builder::BuildSummary, quiet: bool, iidfile: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(id) = &summary.image_id else { return Ok(()) };
    if let Some(path) = iidfile {
        std::fs::write(path, id).with_context(|| format!("writing --iidfile {}", path.display()))?;
    }
    if quiet {
        println!("{id}");
    }
    Ok(())
}

fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Build(args) => build(args),
        Command::Bake(args) => rdock_cli::bake::bake(args),
        Command::Verify(args) => match rdock_cli::verify::verify(args)? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Command::Run { .. } => unreachable!("run is dispatched before anything else"),
        Command::Ps { all, quiet, format } => containers::ps(all, quiet, json_format(format.as_deref())?),
        Command::Rm { force, containers: names } => containers::rm(&names, force),
        Command::Commit { message, container, image } => containers::commit(&container, image.as_deref(), message.as_deref()),
        Command::Images { format } => commands::list(json_format(format.as_deref())?),
        Command::Tag { src, dst } => commands::tag(&src, &dst),
        Command::Rmi { force, images } => commands::rmi(&images, force),
        Command::Inspect { objects } => commands::inspect(&objects),
        Command::History { image, no_trunc, format } => commands::history(&image, no_trunc, json_format(format.as_deref())?),
        Command::Layers { image, format, limit } => inspect::layers(&image, json_format(format.as_deref())?, limit),
        Command::Load { input } => commands::load(input.as_deref()),
        Command::Save { output, format, image } => commands::save(output.as_deref(), &image, &format),
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

/// `rdock run`: signals are blocked before anything can start a thread, and the
/// container's status becomes rdock's (125/126/127 for rdock's own failures, as Docker).
fn run_container(args: containers::RunArgs) -> ! {
    let signals = match rdock_runtime::Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rdock: {e}");
            std::process::exit(125);
        }
    };
    // After the signals are blocked (every thread must inherit that): the sandbox's seccomp
    // program compiles while the image is looked up and the container's layer prepared.
    rdock_worker::seccomp::prepare();
    match containers::run(args, &signals) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if let Some(f) = e.downcast_ref::<containers::RunFailed>() {
                eprintln!("rdock: {}", f.message);
                std::process::exit(f.code);
            }
            exit_with(e)
        }
    }
}

/// Prints a command line clap refused and exits: with 125 for a flag `rdock run` does not
/// know, as `docker run` does, else with clap's own status (usage errors 2; help and
/// version 0).
fn usage_error(e: clap::Error) -> ! {
    let is_run = std::env::args().skip(1).find(|a| !a.starts_with('-')).is_some_and(|a| a == "run");
    if is_run && e.kind() == clap::error::ErrorKind::UnknownArgument {
        let _ = e.print();
        std::process::exit(125);
    }
    e.exit()
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    rdock_cli::init_logging(cli.debug);
    if let Command::Run { help: _, args } = cli.command {
        run_container(args);
    }
    if let Err(e) = dispatch(cli.command) {
        exit_with(e);
    }
}
