//! Named contexts (`--build-context NAME=…`): a directory, an image, a git repository or a
//! URL standing in for a stage, for `FROM NAME`, for `COPY --from=NAME` and for
//! `RUN --mount=from=NAME`, as BuildKit's dockerui does.

use super::{Ctx, StageResult};
use crate::FrontendError;
use crate::error::Location;
use crate::request::NamedContext;
use rdock_imagespec::{ImageConfig, Platform};
use rdock_llb::{Op, OpMetadata, SourceOp};

impl Ctx<'_> {
    /// What the named context `name` makes, if there is one: its state and config, for a
    /// stage on `platform`. An image brings its config; a directory, a repository or a
    /// download comes with the empty config of `scratch`.
    pub(super) fn named_context_state(
        &mut self,
        name: &str,
        l: &Location,
        platform: &Platform,
    ) -> Result<Option<StageResult>, FrontendError> {
        let Some((name, c)) = self.opts.named_context(name) else { return Ok(None) };
        let source = match c {
            NamedContext::Image(r) => {
                let (input, image) = self.image_source(&r.to_string(), l, platform)?;
                return Ok(Some(StageResult { state: Some(input), image, platform: platform.clone() }));
            }
            NamedContext::Local { source, excludes } => SourceOp::local(&source, &[], &excludes),
            NamedContext::Git(url) => SourceOp::git(&url, false),
            // BuildKit's http context: the body as one file named `context`.
            NamedContext::Http(url) => {
                let mut op = SourceOp::http(&url, None);
                op.attrs.retain(|(k, _)| k != "http.filename");
                op.attrs.push(("http.filename".into(), "context".into()));
                op
            }
        };
        let meta = OpMetadata { description: format!("[context {name}] load from client"), ..Default::default() };
        let input = self.builder.add(Op::Source(source), vec![], meta);
        Ok(Some(StageResult { state: Some(input), image: scratch_config(platform), platform: platform.clone() }))
    }
}

/// The config of `FROM scratch` for `platform`: BuildKit's empty image, WorkingDir "/".
pub(super) fn scratch_config(platform: &Platform) -> ImageConfig {
    let mut image = ImageConfig {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        ..Default::default()
    };
    image.config.working_dir = Some("/".into());
    image
}
