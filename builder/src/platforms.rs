//! Builds for several platforms (`--platform linux/amd64,linux/arm64`), as BuildKit makes
//! them: the Dockerfile is lowered once per platform, every platform is solved at once on
//! a thread of its own (a step all of them share, such as a `FROM --platform=$BUILDPLATFORM`
//! stage, runs once: steps are locked by key), each result is committed as an image, and
//! the images are gathered in one OCI index. That index is what is stored under the
//! names, pushed and exported; a directory output gets a sub-directory per platform
//! (`linux_arm64/`), as BuildKit's local exporter writes it.

use crate::outputs::{Shipped, Written};
use crate::{BuildError, BuildRequest, BuildSummary, Output, Pipeline};
use rdock_frontend::Lowered;
use rdock_imagespec::{Descriptor, Digest, Platform};
use rdock_oci::{ArchiveFormat, BuiltOn, CommittedImage};
use rdock_solver::ProgressSink;

/// One platform's image, committed.
struct Built {
    platform: Platform,
    image: CommittedImage,
    on: BuiltOn,
}

impl Pipeline {
    /// Builds `req` for each of its platforms; `first` is the first platform's lowering.
    pub(crate) fn build_platforms(
        &self,
        req: &BuildRequest,
        first: &Lowered,
        progress: &dyn ProgressSink,
        imports: &[rdock_solver::remote::ImportedCache],
        epoch: Option<i64>,
    ) -> Result<BuildSummary, BuildError> {
        refuse_unsupported(req)?;
        let mut lowered = vec![first.clone()];
        for p in &req.platforms[1..] {
            let l = self.lower(req, Some(p))?;
            self.admit(req, &l)?;
            lowered.push(l);
        }
        let solved: Vec<Result<rdock_solver::SolveOutput, BuildError>> = std::thread::scope(|s| {
            let threads: Vec<_> = req
                .platforms
                .iter()
                .zip(&lowered)
                .map(|(p, l)| s.spawn(move || self.solve(req, l, Some(p), progress, imports).map(|(_, out)| out)))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        let created = crate::created_time(epoch);
        let mut summary = BuildSummary::default();
        let mut built = Vec::new();
        for ((platform, l), out) in req.platforms.iter().zip(&lowered).zip(solved) {
            let out = out?;
            summary.executed += out.executed;
            summary.cached += out.cached;
            for o in &req.outputs {
                if let Output::Local { dest } = o {
                    let dir = dest.join(platform_dir(platform));
                    rdock_oci::export_local(&self.store, out.top.as_deref(), &dir)
                        .map_err(|source| BuildError::Export { dest: dir.clone(), source })?;
                }
            }
            if req.outputs.iter().any(Output::needs_image) {
                let image = rdock_oci::commit_image(&self.images, out.top.as_deref(), l.image.clone(), &created)?
                    .annotated(&self.images, &req.annotations)?;
                built.push(Built { platform: platform.clone(), image, on: BuiltOn { base_diff_ids: l.base_diff_ids.clone(), epoch } });
            }
        }
        if built.is_empty() {
            return Ok(summary);
        }
        let written = self.write_index_outputs(&req.outputs, &built)?;
        if let Some(path) = &req.metadata_file {
            crate::outputs::write_metadata(path, &written)?;
        }
        let index = written.shipped.as_ref().map(|s| s.manifest.digest.to_string());
        summary.manifest = index.clone();
        summary.image_id = index;
        Ok(summary)
    }

    /// The image outputs of a multi-platform build: the index of every platform's image,
    /// tagged and pushed, or each image converted as the output asks and exported in an
    /// index of its own.
    fn write_index_outputs(&self, outputs: &[Output], built: &[Built]) -> Result<Written, BuildError> {
        let mut written = Written::default();
        for o in outputs {
            let (digest, names) = match o {
                Output::Image { names, push, rewrite_timestamp, .. } => {
                    let form = rdock_oci::ExportForm {
                        rewrite_timestamp: *rewrite_timestamp,
                        compression: Some(rdock_snapshotter::Compression::None),
                        ..rdock_oci::ExportForm::stored()
                    };
                    let index = self.index_of(built, |b| match rewrite_timestamp.clamps() && b.on.epoch.is_some() {
                        true => rdock_oci::convert_manifest(&self.images, &b.image.manifest, &form, &b.on),
                        false => Ok(b.image.manifest.clone()),
                    })?;
                    let mut shipped = index.clone();
                    if names.is_empty() {
                        self.images.keep_untagged(&index)?;
                    }
                    for n in names {
                        self.images.tag(n, &index)?;
                        if *push {
                            shipped = self.push(n, &index)?;
                        }
                    }
                    (shipped, names)
                }
                Output::Oci { dest, names, form, tar } => {
                    let fail = |source| BuildError::Export { dest: dest.clone(), source };
                    let index = self
                        .index_of(built, |b| rdock_oci::convert_manifest(&self.images, &b.image.manifest, form, &b.on))
                        .map_err(|e| match e {
                            BuildError::Image(source) => fail(source),
                            other => other,
                        })?;
                    match tar {
                        true => rdock_oci::export_archive(&self.images, &index, names, ArchiveFormat::Oci, dest),
                        false => rdock_oci::export_layout_dir(&self.images, &index, names, dest),
                    }
                    .map_err(fail)?;
                    (index, names)
                }
                _ => continue,
            };
            if written.shipped.is_none() {
                let size = self.images.store().content().read(&digest)?.len() as u64;
                let manifest = Descriptor::new(rdock_imagespec::MEDIA_TYPE_OCI_INDEX, digest.clone(), size);
                written.shipped = Some(Shipped { manifest, config: None });
            }
            written.names.extend(names.iter().cloned());
        }
        Ok(written)
    }

    /// An index of each platform's image as `each` makes it (stored, converted, rewritten).
    fn index_of(&self, built: &[Built], each: impl Fn(&Built) -> Result<Digest, rdock_oci::OciError>) -> Result<Digest, BuildError> {
        let children = built.iter().map(|b| Ok((each(b)?, b.platform.clone()))).collect::<Result<Vec<_>, rdock_oci::OciError>>()?;
        Ok(rdock_oci::make_index(&self.images, &children)?)
    }
}

/// What a build for several platforms cannot do yet, refused by name rather than done for
/// one platform.
fn refuse_unsupported(req: &BuildRequest) -> Result<(), BuildError> {
    let refuse = |what: &str| Err(BuildError::Unsupported(format!("{what} with several platforms")));
    if !req.cache_exports.is_empty() {
        return refuse("a cache export (--cache-to)");
    }
    for o in &req.outputs {
        match o {
            // As buildx: a docker archive holds one platform's image.
            Output::Docker { .. } => return refuse("type=docker (a docker archive holds one image; use type=oci or an image)"),
            Output::Tar { .. } => return refuse("type=tar (use type=local, which writes a directory per platform)"),
            _ => {}
        }
    }
    Ok(())
}

/// A platform's directory in a local output: `linux_arm64`, `linux_arm_v7`.
fn platform_dir(p: &Platform) -> String {
    p.to_string().replace('/', "_")
}
