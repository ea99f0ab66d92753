//! The build checks against golden files: every Dockerfile under `tests/data/lint` is
//! lowered (with `ignored.txt` in `.dockerignore` and a fake resolver whose `arm` image is
//! arm64) and its warnings, rendered as users see them, compared with `NAME.expected`.
//! Together the cases fire every rule but DuplicateStageName (a lowering error). After a
//! deliberate change, `RDOCK_BLESS=1 cargo test --test lints` rewrites the expectations.

use rdock_frontend::{BuildOptions, ImageResolver, ResolveError, ResolvedImage, lower};
use rdock_imagespec::{ContainerConfig, ImageConfig, ImageRef, Platform};
use std::path::Path;

struct Images;

impl ImageResolver for Images {
    fn resolve(&self, r: &ImageRef, _platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let arch = if r.repository == "library/arm" { "arm64" } else { "amd64" };
        let env = vec!["PATH=/bin".into(), "HOME=/root".into()];
        let config = ImageConfig {
            architecture: arch.into(),
            os: "linux".into(),
            config: ContainerConfig { env, ..Default::default() },
            ..Default::default()
        };
        Ok(ResolvedImage { pinned: format!("{r}@sha256:{}", "a".repeat(64)), config })
    }
}

fn warnings(path: &Path) -> String {
    let df = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let opts = BuildOptions { filename: name, excludes: vec!["ignored.txt".into()], ..Default::default() };
    let lowered = lower(&df, &opts, &Images).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    lowered.warnings.iter().map(|w| format!("{w}\n\n")).collect()
}

#[test]
fn build_checks_match_their_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lint");
    let mut cases: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "Dockerfile")).collect();
    cases.sort();
    assert!(cases.len() >= 4, "the cases are in {}", dir.display());
    let mut rules = std::collections::BTreeSet::new();
    for case in cases {
        let got = warnings(&case);
        let expected = case.with_extension("expected");
        if std::env::var_os("RDOCK_BLESS").is_some() {
            std::fs::write(&expected, &got).unwrap();
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
        assert_eq!(got, want, "{}", case.display());
        rules.extend(got.lines().filter_map(|l| l.strip_prefix("warning: ")).filter_map(|l| l.split(':').next()).map(str::to_string));
    }
    let all: Vec<&str> = rdock_frontend::lint::RULES.iter().map(|r| r.name).filter(|n| *n != "DuplicateStageName").collect();
    let missing: Vec<&&str> = all.iter().filter(|n| !rules.contains(**n)).collect();
    assert!(missing.is_empty(), "rules no case fires: {missing:?}");
}
