//! `rdock run | ps | rm | commit`: containers from images, over `rdock_runtime`.

use crate::UsageError;
use crate::format::{human_duration, parse_size, table};
use anyhow::Context;
use rdock_imagespec::ImageRef;
use rdock_imagespec::time::unix_now as now;
use rdock_oci::ImageStore;
use rdock_runtime::{Record, RunFlags, RunRequest, Runtime, RuntimeError, Signals, State};
use std::time::Duration;

/// `rdock run`'s flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Remove the container (its layer and record) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (`K=V`, or `K` to pass rdock's own).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// `user[:group]` (names or ids from the image's /etc/passwd and /etc/group).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Bind mount a host path: `SRC:DST[:ro]` (SRC absolute and existing).
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// `default` (a network namespace of its own with egress through slirp4netns; also
    /// `bridge`), `none` (loopback only) or `host`.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Publish a port: `[IP:]HOSTPORT:CONTAINERPORT[/udp]`.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Add `HOST:IP` to the container's /etc/hosts.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Replace the image's ENTRYPOINT (and drop its CMD); `""` clears it.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Keep stdin open: pass it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a terminal (a pty with rdock's window size).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run a small init as pid 1 that forwards signals and reaps zombies.
    #[arg(long)]
    pub init: bool,
    /// Name the container (default: a generated adjective_name).
    #[arg(long)]
    pub name: Option<String>,
    /// The container's hostname (default: its id's first 12 digits).
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// What a stop request (SIGTERM to rdock) sends (default: the image's STOPSIGNAL, else SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Memory limit (`512m`, `2g`); default `[limits] memory` in config.toml, else none.
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPUs (`1.5`); default `[limits] cpus` in config.toml, else none.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Tasks limit (-1 or 0: none); default `[limits] pids` in config.toml, else 4096.
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// The image's platform to run (`linux/arm64`; other architectures through the
    /// emulator registered in binfmt_misc); the host's by default.
    #[arg(long)]
    pub platform: Option<String>,
    /// IMAGE [ARG...]. Arguments after the image may start with `-`; the image may not,
    /// so a flag rdock lacks (`--privileged`) is an error that names it, not an image to pull.
    #[arg(required = true, trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// An error `rdock run` exits with a status of Docker's for (125, 126, 127).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunFailed {
    /// The status.
    pub code: i32,
    /// What to print.
    pub message: String,
}

fn failed(code: i32, message: impl Into<String>) -> anyhow::Error {
    RunFailed { code, message: message.into() }.into()
}

impl From<RuntimeError> for RunFailed {
    fn from(e: RuntimeError) -> RunFailed {
        RunFailed { code: e.exit_code(), message: e.to_string() }
    }
}

/// `m`, if its config is for `want` (or names no platform); else docker's error.
fn check_platform(
    images: &ImageStore,
    r: &ImageRef,
    m: &rdock_imagespec::Digest,
    want: &rdock_imagespec::Platform,
) -> anyhow::Result<rdock_imagespec::Digest> {
    let config = images.manifest(m).and_then(|doc| images.config(&doc)).map_err(|e| failed(125, e.to_string()))?;
    let got = rdock_imagespec::Platform { os: config.os, architecture: config.architecture, variant: config.variant };
    if got.architecture.is_empty() || got.satisfies(want) {
        return Ok(m.clone());
    }
    Err(failed(125, format!("image {} was found but does not match the specified platform: wanted {want}, actual: {got}", r.familiar())))
}

/// `rdock run`: returns the container's exit status. `signals` must have been blocked
/// before any thread started.
pub fn run(args: RunArgs, signals: &Signals) -> anyhow::Result<i32> {
    let (image, cmd) = args.command.split_first().ok_or_else(|| UsageError("rdock run needs an IMAGE".into()))?;
    let network = match args.network.as_str() {
        "default" | "bridge" => rdock_llb::Network::Sandbox,
        "none" => rdock_llb::Network::None,
        "host" => rdock_llb::Network::Host,
        other => {
            return Err(failed(
                125,
                format!("network {other:?} is not supported: rdock runs containers with --network default (or bridge), none or host"),
            ));
        }
    };
    let ports = args
        .publish
        .iter()
        .map(|p| rdock_worker::network::PortMap::parse(p).map_err(|e| failed(125, e.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !ports.is_empty() && network != rdock_llb::Network::Sandbox {
        return Err(failed(125, format!("-p publishes ports of the default network; --network {} has none", args.network)));
    }
    let extra_hosts = args
        .add_hosts
        .iter()
        .map(|h| rdock_llb::HostIp::parse(h).map_err(|e| failed(125, e.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let r = ImageRef::parse(image).map_err(|e| failed(125, format!("invalid reference format: {e}")))?;
    let store = crate::open_store().map_err(|e| failed(125, crate::render_error(&e)))?;
    let images = ImageStore::new(store.clone());
    let asked = args.platform.as_deref().map(crate::format::parse_platform).transpose().map_err(|e| failed(125, e.to_string()))?;
    let platform = asked.clone().unwrap_or_else(rdock_imagespec::Platform::host);
    // An index whose manifest for this platform was never pulled counts as missing.
    let local = images
        .find(image)
        .ok()
        .filter(|d| images.platform_manifest(d, &platform).map(|m| store.content().contains(&m)).unwrap_or(asked.is_none()));
    let found = match local {
        Some(d) => d,
        None => {
            eprintln!("Unable to find image '{}' locally", r.familiar());
            let client = crate::registry::client(&[]);
            let _lease = store.lease().map_err(|e| failed(125, e.to_string()))?;
            let pulled = rdock_oci::pull(&images, &client, &r, &platform, crate::registry::printer(false)).map_err(|e| {
                failed(125, format!("unable to find image {}: not in the local store, and pulling it failed: {e}", r.familiar()))
            })?;
            pulled.top
        }
    };
    let manifest = match (images.platform_manifest(&found, &platform), &asked) {
        (Ok(m), Some(want)) => check_platform(&images, &r, &m, want)?,
        (Ok(m), None) => m,
        (Err(e), Some(_)) => return Err(failed(125, e.to_string())),
        (Err(_), None) => found,
    };
    let limits = container_limits(&store, &args).map_err(|e| failed(125, crate::render_error(&e)))?;
    let runtime = Runtime::new(store).map_err(RunFailed::from)?;
    let req = RunRequest {
        limits,
        image: image.clone(),
        manifest,
        flags: RunFlags {
            entrypoint: args.entrypoint,
            args: cmd.to_vec(),
            env: args.env,
            workdir: args.workdir,
            user: args.user,
            volumes: args.volumes,
            tty: args.tty,
        },
        name: args.name,
        hostname: args.hostname,
        network,
        ports,
        extra_hosts,
        init: args.init,
        interactive: args.interactive,
        tty: args.tty,
        auto_remove: args.rm,
        stop_signal: args.stop_signal,
        stop_timeout: Duration::from_secs(args.stop_timeout),
    };
    runtime.run(&req, signals).map_err(|e| RunFailed::from(e).into())
}

/// `[limits]` of config.toml, overridden by `--memory`, `--cpus` and `--pids-limit`.
fn container_limits(store: &rdock_snapshotter::Store, args: &RunArgs) -> anyhow::Result<rdock_worker::cgroup::Limits> {
    let mut l = crate::config::limits(store)?;
    if let Some(m) = &args.memory {
        l.memory = Some(parse_size(m)?);
    }
    if let Some(c) = args.cpus {
        l.millicpus = Some(crate::config::millicpus(c)?);
    }
    if let Some(n) = args.pids_limit {
        l.pids = crate::config::pids(n);
    }
    Ok(l)
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(Runtime::new(crate::open_store()?)?)
}

fn status(r: &Record) -> String {
    match r.state {
        State::Running => format!("Up {}", human_duration(now() - r.created)),
        State::Exited => {
            format!("Exited ({}) {} ago", r.exit_code.unwrap_or(-1), human_duration(now() - r.finished.unwrap_or(r.created)))
        }
        State::Created => "Created".into(),
    }
}

/// `rdock ps [-a] [-q] [--format json]`.
pub fn ps(all: bool, quiet: bool, json: bool) -> anyhow::Result<()> {
    let list = runtime()?.list(all)?;
    if quiet {
        for r in &list {
            println!("{}", &r.id[..12]);
        }
        return Ok(());
    }
    if json {
        for r in &list {
            let doc = serde_json::json!({
                "ID": &r.id[..12], "Names": r.name, "Image": r.image, "ImageID": r.image_id, "Command": r.command.join(" "),
                "CreatedAt": rdock_imagespec::time::rfc3339(r.created, 0), "State": r.state, "Status": status(r),
                "ExitCode": r.exit_code, "Snapshot": r.snapshot,
            });
            println!("{doc}");
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let cmd = format!("\"{}\"", r.command.join(" "));
            let cmd = if cmd.chars().count() > 24 { format!("{}…\"", cmd.chars().take(22).collect::<String>()) } else { cmd };
            vec![
                r.id[..12].to_string(),
                r.image.clone(),
                cmd,
                format!("{} ago", human_duration(now() - r.created)),
                status(r),
                r.name.clone(),
            ]
        })
        .collect();
    table(&["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], &rows);
    Ok(())
}

/// `rdock rm [-f] CONTAINER...`: every one is tried; the status says whether all went.
pub fn rm(names: &[String], force: bool) -> anyhow::Result<()> {
    let rt = runtime()?;
    let mut failures = Vec::new();
    for n in names {
        match rt.remove(n, force) {
            Ok(_) => println!("{n}"),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// `rdock commit [-m MSG] CONTAINER [REPO[:TAG]]`: prints the new image's ID.
pub fn commit(container: &str, name: Option<&str>, message: Option<&str>) -> anyhow::Result<()> {
    let name = name.map(|n| ImageRef::parse(n).map_err(|e| UsageError(e.to_string()))).transpose()?;
    let image = runtime()?.commit(container, name.as_ref(), message).with_context(|| format!("committing {container}"))?;
    println!("{}", image.config);
    Ok(())
}
