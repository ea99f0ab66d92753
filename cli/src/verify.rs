//! `rdock verify`: is this build reproducible? The Dockerfile is built without the cache in
//! a scratch store, and again in a second one (or the result is held against an image of
//! the store, `--against`); the two images are compared bit for bit, and where they differ,
//! file by file ([`rdock_oci::compare_images`]). Scratch stores get the base images from
//! the user's store, so nothing is fetched that the user's build did not fetch; they live
//! under the store's `tmp/` and go when the command ends.

use crate::UsageError;
use crate::build::{BuildCommand, resolve_context, run_in};
use crate::progress::Mode;
use anyhow::Context;
use rdock_builder::{BuildRequest, Notices, Output, Pipeline};
use rdock_imagespec::{Digest, ImageRef, Platform};
use rdock_oci::ImageStore;
use rdock_snapshotter::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// `rdock verify`'s flags.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The Dockerfile (default CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
    /// K=V.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    pub target: Option<String>,
    /// Hold the rebuild against this image of the store instead of against a second one.
    #[arg(long, value_name = "IMAGE")]
    pub against: Option<String>,
    /// How to show the builds (default quiet).
    #[arg(long, default_value = "quiet")]
    pub progress: String,
    /// The build context (a directory, `-`, a git or http(s) URL).
    pub context: String,
}

struct Silent;

impl Notices for Silent {
    fn warning(&self, text: &str) {
        eprintln!("warning: {text}");
    }
    fn done(&self, _: &str) {}
}

/// `rdock verify`: the exit status, 0 only when the images are bit-identical.
pub fn verify(a: VerifyArgs) -> anyhow::Result<i32> {
    let mut args = BTreeMap::new();
    for kv in &a.build_args {
        let (k, v) = kv.split_once('=').ok_or_else(|| UsageError(format!("--build-arg {kv}: expected K=V")))?;
        args.insert(k.to_string(), v.to_string());
    }
    if !args.contains_key("SOURCE_DATE_EPOCH") && std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        eprintln!(
            "warning: SOURCE_DATE_EPOCH is not set: the times of what the build writes will differ (set it in the environment or as --build-arg)"
        );
    }
    let mode = Mode::parse(&a.progress)
        .ok_or_else(|| UsageError(format!("--progress {}: expected auto, tty, plain, rawjson or quiet", a.progress)))?;
    let ctx = resolve_context(&a.context, a.file.as_deref(), &args)?;
    let mut req = BuildRequest::new(ctx.dir.clone(), PathBuf::new());
    req.dockerfile = ctx.dockerfile.clone();
    req.target = a.target.clone();
    req.build_args = args;
    req.no_cache = true;
    req.allow = vec![rdock_builder::Entitlement::NetworkHost];
    req.outputs = vec![Output::Image {
        names: vec![ImageRef::parse("rdock-verify:latest")?],
        push: false,
        insecure: false,
        rewrite_timestamp: Default::default(),
    }];
    let cmd = BuildCommand::plain(req, mode, ctx.guard);
    let user = crate::open_store()?;
    let scratch = |n: &str| -> anyhow::Result<(tempfile::TempDir, Store)> {
        let dir = tempfile::Builder::new().prefix(&format!("verify-{}-{n}-", std::process::id())).tempdir_in(user.root().join("tmp"))?;
        let store = Store::open(dir.path()).context("making a scratch store")?;
        seed_base_images(&user, &store, &cmd.build)?;
        Ok((dir, store))
    };
    let (_da, sa) = scratch("a")?;
    let a_digest = built(&cmd, &sa)?;
    let (_db, other, b_digest) = match &a.against {
        Some(image) => {
            let images = ImageStore::new(user.clone());
            let d = images.find(image)?;
            let d = images.platform_manifest(&d, &Platform::host()).unwrap_or(d);
            (None, user.clone(), d)
        }
        None => {
            let (db, sb) = scratch("b")?;
            let d = built(&cmd, &sb)?;
            (Some(db), sb, d)
        }
    };
    report(&ImageStore::new(sa), &a_digest, &ImageStore::new(other), &b_digest, a.against.as_deref())
}

/// Builds `cmd` in `store`; the stored image's manifest.
fn built(cmd: &BuildCommand, store: &Store) -> anyhow::Result<Digest> {
    let summary = run_in(cmd, store)?;
    let m = summary.manifest.context("the rebuild made no image")?;
    Ok(Digest::parse(&m)?)
}

/// Puts the base images the Dockerfile names, as the user's store resolves them, into
/// the scratch store under the same names.
fn seed_base_images(user: &Store, scratch: &Store, req: &BuildRequest) -> anyhow::Result<()> {
    let client = Arc::new(rdock_registry::Client::new(Default::default()));
    let pipeline = Pipeline::new(user.clone(), client, Default::default(), rdock_oci::quiet(), Arc::new(Silent))?;
    let lowered = pipeline.load(req)?;
    drop(pipeline);
    let (from, to) = (ImageStore::new(user.clone()), ImageStore::new(scratch.clone()));
    for node in &lowered.definition.nodes {
        let rdock_llb::Op::Source(src) = &node.op else { continue };
        let Some(pinned) = src.identifier.strip_prefix("docker-image://") else { continue };
        let r = ImageRef::parse(pinned)?;
        let digest = from.get(&r)?.with_context(|| format!("{pinned} is not in the store"))?;
        let name = ImageRef { digest: None, ..r.clone() };
        let layout =
            tempfile::Builder::new().prefix(&format!("verify-{}-base-", std::process::id())).tempdir_in(user.root().join("tmp"))?;
        rdock_oci::export_layout_dir(&from, &digest, std::slice::from_ref(&name), layout.path())?;
        rdock_oci::load_archive(&to, layout.path())?;
    }
    Ok(())
}

/// Prints what differs; 0 when nothing does.
fn report(ia: &ImageStore, a: &Digest, ib: &ImageStore, b: &Digest, against: Option<&str>) -> anyhow::Result<i32> {
    let what = match against {
        Some(image) => format!("the rebuild and {image}"),
        None => "two rebuilds".to_string(),
    };
    if a == b {
        println!("reproducible: {what} are bit-identical ({a})");
        return Ok(0);
    }
    println!("not reproducible: {what} differ ({a} vs {b})");
    let diff = rdock_oci::compare_images(ia, a, ib, b)?;
    if !diff.config.is_empty() {
        println!("config: {}", diff.config.join(", "));
    }
    if let Some((x, y)) = diff.layer_counts {
        println!("layers: {x} vs {y}");
    }
    for l in &diff.layers {
        println!(
            "layer {} ({}): {} file{} differ{}",
            l.index,
            l.created_by,
            l.files.len(),
            if l.files.len() == 1 { "" } else { "s" },
            if l.files.len() == 1 { "s" } else { "" }
        );
        for (path, how) in &l.files {
            println!("  /{path}: {}", how.join(", "));
        }
    }
    Ok(1)
}
