//! What a build is asked to do, as types: no flag spellings here (the CLI parses those).

use rdock_imagespec::{ImageRef, Platform};
use rdock_oci::ExportForm;
use rdock_solver::remote::CacheMode;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a build's result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// docker-archive tarball.
    Docker {
        /// The tarball (`-`: standard output).
        dest: PathBuf,
        /// Names recorded in it.
        names: Vec<ImageRef>,
        /// Layer compression, media types and annotations.
        form: ExportForm,
    },
    /// OCI layout tarball, or directory with `tar=false`.
    Oci {
        /// The tarball (`-`: standard output) or directory.
        dest: PathBuf,
        /// Names recorded in it.
        names: Vec<ImageRef>,
        /// Layer compression, media types and annotations.
        form: ExportForm,
        /// A tarball (else an OCI layout directory).
        tar: bool,
    },
    /// The final filesystem in a directory.
    Local {
        /// The directory.
        dest: PathBuf,
    },
    /// The final filesystem as a tarball.
    Tar {
        /// The tarball.
        dest: PathBuf,
    },
    /// The local image store under names, and with `push=true` their registries.
    Image {
        /// The names.
        names: Vec<ImageRef>,
        /// Push to the names' registries.
        push: bool,
        /// `registry.insecure=true`: plain HTTP to these registries.
        insecure: bool,
        /// Whether the stored (and pushed) image has its own layers' file times clamped to
        /// `SOURCE_DATE_EPOCH` (by default, whenever it is set).
        rewrite_timestamp: rdock_oci::RewriteTimestamp,
    },
}

impl Output {
    /// Whether the output is an image (so the build commits one, and makes its layers early).
    pub fn needs_image(&self) -> bool {
        matches!(self, Output::Docker { .. } | Output::Oci { .. } | Output::Image { .. })
    }
}

/// Privileges a Dockerfile can ask for and the caller must grant, as BuildKit's entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entitlement {
    /// `network.host`: RUN --network=host.
    NetworkHost,
    /// `security.insecure`: RUN --security=insecure.
    SecurityInsecure,
}

impl Entitlement {
    /// BuildKit's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }

    /// Reads BuildKit's spelling.
    pub fn parse(s: &str) -> Option<Entitlement> {
        [Entitlement::NetworkHost, Entitlement::SecurityInsecure].into_iter().find(|e| e.name() == s)
    }
}

/// Where a cache export goes or an import comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheLocation {
    /// A registry reference.
    Registry(ImageRef),
    /// An OCI layout directory, and the tag in its index.
    Local {
        /// The directory.
        dir: PathBuf,
        /// The tag (`latest`).
        tag: String,
    },
}

/// A cache export: where, and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheExportSpec {
    /// Where.
    pub to: CacheLocation,
    /// min or max.
    pub mode: CacheMode,
    /// `cache-mounts=true`.
    pub mounts: bool,
}

/// Where the Dockerfile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// A file (`-f PATH`, or the context's `Dockerfile`); `PATH.dockerignore` beside it
    /// wins over the context's `.dockerignore`, as in BuildKit.
    Path(PathBuf),
    /// Its text: `-f -` (standard input), or read from a fetched context.
    Text(String),
}

/// What a named context (`--build-context NAME=VALUE`) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContextSource {
    /// A local directory.
    Dir(PathBuf),
    /// `docker-image://REF`: an image, from the store or its registry.
    Image(ImageRef),
    /// `oci-layout://DIR[:TAG|@DIGEST]`: an image in an OCI layout directory.
    OciLayout {
        /// The layout.
        dir: PathBuf,
        /// Which of its images.
        pick: rdock_oci::LayoutPick,
    },
    /// A git repository (`https://host/repo.git#ref:subdir`, `git@host:repo.git`).
    Git(String),
    /// An http(s) URL: its body, as one file named `context`.
    Url(String),
}

impl NamedContextSource {
    /// Reads buildx's spelling of a named context's value.
    pub fn parse(value: &str) -> Result<NamedContextSource, String> {
        if let Some(r) = value.strip_prefix("docker-image://") {
            return ImageRef::parse(r).map(NamedContextSource::Image).map_err(|e| format!("docker-image://{r}: {e}"));
        }
        if let Some(rest) = value.strip_prefix("oci-layout://") {
            return parse_layout(rest);
        }
        if rdock_llb::parse_git_ref(value).is_some() {
            return Ok(NamedContextSource::Git(value.to_string()));
        }
        if value.starts_with("http://") || value.starts_with("https://") {
            return Ok(NamedContextSource::Url(value.to_string()));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            return Err(format!(
                "{scheme}:// is not a kind of context rdock knows (docker-image://, oci-layout://, a git or http(s) URL, or a directory)"
            ));
        }
        Ok(NamedContextSource::Dir(PathBuf::from(value)))
    }
}

/// `DIR@sha256:…`, `DIR:TAG` or `DIR` (tag `latest`), as buildx reads `oci-layout://`.
fn parse_layout(rest: &str) -> Result<NamedContextSource, String> {
    if let Some((dir, d)) = rest.rsplit_once('@') {
        let digest = rdock_imagespec::Digest::parse(d).map_err(|e| format!("oci-layout://{rest}: {e}"))?;
        return Ok(NamedContextSource::OciLayout { dir: dir.into(), pick: rdock_oci::LayoutPick::Digest(digest) });
    }
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let (dir, tag) = match last.rsplit_once(':') {
        Some((_, tag)) => (&rest[..rest.len() - tag.len() - 1], tag),
        None => (rest, "latest"),
    };
    if dir.is_empty() {
        return Err(format!("oci-layout://{rest}: no directory"));
    }
    Ok(NamedContextSource::OciLayout { dir: dir.into(), pick: rdock_oci::LayoutPick::Tag(tag.to_string()) })
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile.
    pub dockerfile: DockerfileSource,
    /// The stage to build (None: the last).
    pub target: Option<String>,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// Labels of the image, over the Dockerfile's (`--label`).
    pub labels: BTreeMap<String, String>,
    /// Outputs.
    pub outputs: Vec<Output>,
    /// Run every step, ignoring cache records.
    pub no_cache: bool,
    /// Stages to rebuild without the cache.
    pub no_cache_stages: Vec<String>,
    /// Where to write result digests as JSON (buildx's `--metadata-file` keys).
    pub metadata_file: Option<PathBuf>,
    /// Secret values and SSH agents by id.
    pub secrets: rdock_worker::Secrets,
    /// The target platforms: none for the host's; several make one image per platform,
    /// built in parallel, in one OCI index.
    pub platforms: Vec<Platform>,
    /// Entitlements granted: what RUN --network=host and --security=insecure need.
    pub allow: Vec<Entitlement>,
    /// Caches to import.
    pub cache_imports: Vec<CacheLocation>,
    /// Caches to export.
    pub cache_exports: Vec<CacheExportSpec>,
    /// The network of every RUN without its own.
    pub network: rdock_llb::Network,
    /// Extra `/etc/hosts` entries of every RUN.
    pub extra_hosts: Vec<rdock_llb::HostIp>,
    /// How many steps run at once.
    pub max_parallelism: std::num::NonZeroUsize,
    /// Ask base images' registries even for images the store has (`--pull`).
    pub pull: bool,
    /// `--shm-size` and `--ulimit` of every RUN.
    pub resources: rdock_llb::Resources,
    /// Named contexts by name (`--build-context NAME=VALUE`).
    pub named_contexts: BTreeMap<String, NamedContextSource>,
    /// A word every step's name starts with (a bake target's name).
    pub name_prefix: Option<String>,
    /// Annotations of the image's manifest (`--annotation`), each platform's in a build
    /// for several.
    pub annotations: BTreeMap<String, String>,
}

impl BuildRequest {
    /// A request to build `dockerfile` in `context` with no outputs and the defaults.
    pub fn new(context: PathBuf, dockerfile: PathBuf) -> BuildRequest {
        BuildRequest {
            context,
            dockerfile: DockerfileSource::Path(dockerfile),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            outputs: Vec::new(),
            no_cache: false,
            no_cache_stages: Vec::new(),
            metadata_file: None,
            secrets: rdock_worker::Secrets::default(),
            platforms: Vec::new(),
            allow: Vec::new(),
            cache_imports: Vec::new(),
            cache_exports: Vec::new(),
            network: rdock_llb::Network::Sandbox,
            extra_hosts: Vec::new(),
            max_parallelism: rdock_solver::default_parallelism(),
            pull: false,
            resources: Default::default(),
            named_contexts: BTreeMap::new(),
            name_prefix: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Registries the outputs may reach over plain HTTP.
    pub fn insecure_registries(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for o in &self.outputs {
            if let Output::Image { names, insecure: true, .. } = o {
                hosts.extend(names.iter().map(|n| n.registry.clone()));
            }
        }
        hosts
    }
}

/// What a build produced.
#[derive(Debug, Clone, Default)]
pub struct BuildSummary {
    /// Vertices that ran.
    pub executed: usize,
    /// Vertices from the cache.
    pub cached: usize,
    /// The image manifest digest, if an image was made.
    pub manifest: Option<String>,
    /// The image ID (its config's digest), if an image was made.
    pub image_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_contexts_are_read_as_buildx_spells_them() {
        let p = |v: &str| NamedContextSource::parse(v).unwrap();
        assert_eq!(p("./dir"), NamedContextSource::Dir("./dir".into()));
        assert!(matches!(p("docker-image://busybox:1.36"), NamedContextSource::Image(r) if r.tag.as_deref() == Some("1.36")));
        assert_eq!(p("https://example.com/r.git#main"), NamedContextSource::Git("https://example.com/r.git#main".into()));
        assert_eq!(p("https://example.com/a.tar"), NamedContextSource::Url("https://example.com/a.tar".into()));
        let tag = |t: &str| rdock_oci::LayoutPick::Tag(t.into());
        assert_eq!(p("oci-layout:///l/x"), NamedContextSource::OciLayout { dir: "/l/x".into(), pick: tag("latest") });
        assert_eq!(p("oci-layout:///l/x:v2"), NamedContextSource::OciLayout { dir: "/l/x".into(), pick: tag("v2") });
        let d = format!("sha256:{}", "a".repeat(64));
        let NamedContextSource::OciLayout { dir, pick: rdock_oci::LayoutPick::Digest(got) } = p(&format!("oci-layout://./l@{d}")) else {
            panic!()
        };
        assert_eq!((dir, got.to_string()), (PathBuf::from("./l"), d));
        assert!(NamedContextSource::parse("s3://bucket/x").unwrap_err().contains("s3://"));
    }
}
