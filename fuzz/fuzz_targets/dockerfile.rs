//! Any bytes as a Dockerfile: parsing, typing, build checks and lowering must return a
//! result or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdock_frontend::{lower, BuildOptions, ImageResolver, ResolveError, ResolvedImage};
use rdock_imagespec::{ImageConfig, ImageRef};

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve(&self, r: &ImageRef, _: &rdock_imagespec::Platform) -> Result<ResolvedImage, ResolveError> {
        if r.repository.contains("missing") {
            return Err(ResolveError::NotFound { registry: r.registry.clone() });
        }
        let mut config = ImageConfig { architecture: "amd64".into(), os: "linux".into(), ..Default::default() };
        config.config.env.push("PATH=/bin".into());
        config.config.on_build.push("RUN echo trigger".into());
        Ok(ResolvedImage { pinned: r.to_string(), config })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(df) = rdock_frontend::parser::parse("Dockerfile", text) {
        let _ = df.dump();
    }
    let mut opts = BuildOptions::default();
    opts.excludes = vec!["*.md".into(), "!README.md".into()];
    if let Ok(out) = lower(text, &opts, &AnyImage) {
        let _ = out.definition.to_json();
        for w in &out.warnings {
            let _ = w.to_string();
        }
    }
});
