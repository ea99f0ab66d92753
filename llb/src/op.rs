//! The op kinds: source, exec, file, merge and diff.

use crate::digest::OpDigest;
use serde::{Deserialize, Serialize};

/// A reference to one output of another node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Input {
    /// The producing node.
    pub digest: OpDigest,
    /// Which of its outputs (an exec op has one per writable mount).
    pub index: u32,
}

/// Everything a node can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Brings in content from outside the graph.
    Source(SourceOp),
    /// Runs a process on mounted inputs.
    Exec(ExecOp),
    /// Copies, creates and removes files natively.
    File(FileOp),
    /// Stacks inputs on top of each other.
    Merge(MergeOp),
    /// The difference between two inputs.
    Diff(DiffOp),
}

/// A source: `docker-image://REF`, `local://NAME`, later `git://`, `https://`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOp {
    /// The scheme-prefixed identifier.
    pub identifier: String,
    /// Sorted key/value attributes (for local sources: include and exclude patterns).
    pub attrs: Vec<(String, String)>,
}

impl SourceOp {
    /// An image source for a fully normalised reference.
    pub fn image(reference: &str) -> SourceOp {
        SourceOp { identifier: format!("docker-image://{reference}"), attrs: Vec::new() }
    }

    /// A local directory (`context`, `dockerfile`) with optional include/exclude patterns.
    pub fn local(name: &str, include: &[String], exclude: &[String]) -> SourceOp {
        let mut attrs = Vec::new();
        if !exclude.is_empty() {
            attrs.push(("local.excludepatterns".to_string(), join_patterns(exclude)));
        }
        if !include.is_empty() {
            attrs.push(("local.includepatterns".to_string(), join_patterns(include)));
        }
        SourceOp { identifier: format!("local://{name}"), attrs }
    }

    /// An http(s) download: the file it holds is named by the URL path's last segment
    /// (`http.filename`); `checksum` (`sha256:…`) is verified when fetched.
    pub fn http(url: &str, checksum: Option<&str>) -> SourceOp {
        let no_query = url.split(['?', '#']).next().unwrap_or(url);
        let path = no_query.splitn(4, '/').nth(3).unwrap_or("");
        let filename = path.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("__unnamed__");
        let mut attrs = Vec::new();
        if let Some(c) = checksum {
            attrs.push(("http.checksum".to_string(), c.to_string()));
        }
        attrs.push(("http.filename".to_string(), filename.to_string()));
        SourceOp { identifier: url.to_string(), attrs }
    }

    /// A git repository (`URL[#ref[:subdir]]`), optionally keeping `.git`.
    pub fn git(spec: &str, keep_git_dir: bool) -> SourceOp {
        let mut attrs = Vec::new();
        if keep_git_dir {
            attrs.push(("git.keepgitdir".to_string(), "true".to_string()));
        }
        SourceOp { identifier: format!("git:{spec}"), attrs }
    }

    /// What the identifier names, parsed once here rather than by prefix wherever a
    /// source is handled. An identifier of no known scheme is an error that names it.
    pub fn source(&self) -> Result<Source<'_>, crate::error::DefinitionError> {
        let id = self.identifier.as_str();
        if let Some(r) = id.strip_prefix("docker-image://") {
            return Ok(Source::Image(r));
        }
        if let Some(name) = id.strip_prefix("local://") {
            return Ok(Source::Local(name));
        }
        if let Some(spec) = id.strip_prefix("git:") {
            return parse_git_ref(spec).map(Source::Git).ok_or_else(|| crate::error::DefinitionError::BadSource {
                identifier: id.to_string(),
                reason: "not a git repository URL".into(),
            });
        }
        if id.starts_with("http://") || id.starts_with("https://") {
            return Ok(Source::Http(id));
        }
        Err(crate::error::DefinitionError::BadSource {
            identifier: id.to_string(),
            reason: "unknown scheme (docker-image://, local://, git:, http:// or https://)".into(),
        })
    }

    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Patterns stored by [`SourceOp::local`] under `key` (none when absent). A value that
    /// is not a JSON list of strings is an error: read as "no patterns" it would silently
    /// exclude nothing.
    pub fn patterns(&self, key: &str) -> Result<Vec<String>, crate::error::DefinitionError> {
        match self.attr(key) {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_str(v).map_err(|e| crate::error::DefinitionError::BadAttribute {
                key: key.to_string(),
                reason: format!("not a JSON list of patterns: {e}"),
            }),
        }
    }
}

fn join_patterns(p: &[String]) -> String {
    serde_json::to_string(p).unwrap_or_default()
}

/// What a [`SourceOp`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    /// An image, by its fully normalised reference.
    Image(&'a str),
    /// A directory the caller supplies by name (`context`, `dockerfile`).
    Local(&'a str),
    /// A git repository at a ref.
    Git(GitRef),
    /// A file downloaded over http(s), by URL.
    Http(&'a str),
}

/// A git source as ADD names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef {
    /// Remote URL (no fragment).
    pub remote: String,
    /// Branch, tag or commit; None is the remote's HEAD.
    pub reference: Option<String>,
    /// Sub-directory of the repository to take.
    pub subdir: Option<String>,
}

/// Parses `URL[#ref[:subdir]]` if it names a git repository (BuildKit's ParseGitRef rules:
/// `git@…`, `git://…`, `ssh://…`, or an http(s) URL whose path ends in `.git`).
pub fn parse_git_ref(s: &str) -> Option<GitRef> {
    let (remote, fragment) = match s.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (s, None),
    };
    let is_git = remote.starts_with("git@")
        || remote.starts_with("git://")
        || remote.starts_with("ssh://")
        || ((remote.starts_with("https://") || remote.starts_with("http://")) && remote.trim_end_matches('/').ends_with(".git"));
    if !is_git {
        return None;
    }
    let (reference, subdir) = match fragment {
        None | Some("") => (None, None),
        Some(f) => match f.split_once(':') {
            Some((r, d)) => ((!r.is_empty()).then(|| r.to_string()), (!d.is_empty()).then(|| d.to_string())),
            None => (Some(f.to_string()), None),
        },
    };
    Some(GitRef { remote: remote.to_string(), reference, subdir })
}

/// Network mode of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Network {
    /// A network namespace of its own that reaches the outside world through a user-mode
    /// network stack (slirp4netns), as BuildKit's bridge does; the host's loopback stays
    /// unreachable.
    #[default]
    Sandbox,
    /// The host's network namespace.
    Host,
    /// A new network namespace with nothing up.
    None,
}

/// Security mode of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Security {
    /// Docker's default capability set, no_new_privs.
    #[default]
    Sandbox,
    /// All capabilities (RUN --security=insecure).
    Insecure,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CacheSharing {
    /// Everyone uses the same directory at once.
    #[default]
    Shared,
    /// A user that finds it busy gets a directory of its own.
    Private,
    /// Users wait for each other.
    Locked,
}

/// What a mount is backed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// An input (or scratch when `input` is None), writable if it has an output.
    Bind,
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// A persistent directory shared between builds of one store, never in an image.
    Cache {
        /// The cache's identity.
        id: String,
        /// Concurrency.
        sharing: CacheSharing,
        /// Mode of the directory when first created.
        mode: u32,
        /// Owner of the directory when first created.
        uid: u32,
        /// Group of the directory when first created.
        gid: u32,
    },
    /// A secret provided to the build, as a file at `dest` (or an env var); its value
    /// never appears in the graph.
    Secret {
        /// The secret's id (`--secret id=…`).
        id: String,
        /// Fail if the secret was not provided.
        required: bool,
        /// File mode.
        mode: u32,
        /// File owner.
        uid: u32,
        /// File group.
        gid: u32,
        /// Also (or instead) expose it as this environment variable.
        env: Option<String>,
    },
    /// An SSH agent socket forwarded from the client (`--ssh id=SOCKET`), with
    /// SSH_AUTH_SOCK pointing at it.
    Ssh {
        /// The agent's id (`default` unless named).
        id: String,
        /// Fail if no such agent was forwarded.
        required: bool,
    },
}

/// One mount of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Index into the node's inputs; None mounts an empty directory.
    pub input: Option<u32>,
    /// Where it appears in the container.
    pub dest: String,
    /// Sub-path of the input to mount.
    pub selector: String,
    /// The output index this mount produces, if it is writable and kept.
    pub output: Option<u32>,
    /// Mounted read-only.
    pub readonly: bool,
    /// Backing.
    pub kind: MountKind,
}

/// Runs a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// `user[:group]`, names or ids, resolved in the root filesystem.
    pub user: String,
    /// Network mode.
    pub network: Network,
    /// Security mode.
    pub security: Security,
    /// Mounts; the one at `/` is the root filesystem.
    pub mounts: Vec<Mount>,
    /// The platform (`os/arch[/variant]`) the process's binaries are built for, as BuildKit's
    /// op constraint: part of the digest, so one step built for two platforms is two vertices
    /// (and two cache records). None means the worker's own platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Extra `/etc/hosts` entries (`--add-host HOST:IP`), in order: part of the digest, as
    /// BuildKit's `ExtraHosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<HostIp>,
    /// The sandbox's hostname (the `BUILDKIT_SANDBOX_HOSTNAME` build arg); None is
    /// BuildKit's `buildkitsandbox`. Part of the digest, as BuildKit's `Meta.Hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `/dev/shm`'s size and the process's rlimits (`--shm-size`, `--ulimit`): part of the
    /// digest, as BuildKit's `ShmSize` and `Ulimit`; omitted when default.
    #[serde(default, skip_serializing_if = "Resources::is_default")]
    pub resources: Resources,
}

/// What a sandbox's process may use beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `/dev/shm`'s size in bytes (None: 64 MiB, as Docker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// Resource limits, set before the command runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

impl Resources {
    /// True when nothing differs from the defaults.
    pub fn is_default(&self) -> bool {
        *self == Resources::default()
    }
}

/// One `--ulimit NAME=SOFT[:HARD]` (-1: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Docker's name of the limit: `nofile`, `nproc`, `core`, `stack`, …
    pub name: String,
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
}

/// The limits `--ulimit` knows, by Docker's names, and their `RLIMIT_*` numbers on Linux.
pub const ULIMITS: &[(&str, u32)] = &[
    ("cpu", 0),
    ("fsize", 1),
    ("data", 2),
    ("stack", 3),
    ("core", 4),
    ("rss", 5),
    ("nproc", 6),
    ("nofile", 7),
    ("memlock", 8),
    ("as", 9),
    ("locks", 10),
    ("sigpending", 11),
    ("msgqueue", 12),
    ("nice", 13),
    ("rtprio", 14),
    ("rttime", 15),
];

impl Ulimit {
    /// Parses `NAME=SOFT[:HARD]` as `docker build --ulimit` takes it.
    pub fn parse(s: &str) -> Result<Ulimit, UlimitError> {
        let bad = |why: &str| UlimitError(format!("--ulimit {s}: {why}"));
        let (name, limits) = s.split_once('=').ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
        if !ULIMITS.iter().any(|(n, _)| *n == name) {
            let known = ULIMITS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(bad(&format!("unknown limit {name:?} (known: {known})")));
        }
        let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
        let num =
            |v: &str| v.parse::<i64>().ok().filter(|n| *n >= -1).ok_or_else(|| bad(&format!("{v:?} is not a limit (a number, or -1)")));
        let (soft, hard) = (num(soft)?, num(hard)?);
        let unlimited = |n: i64| if n < 0 { u64::MAX } else { n as u64 };
        if unlimited(soft) > unlimited(hard) {
            return Err(bad("the soft limit is above the hard one"));
        }
        Ok(Ulimit { name: name.to_string(), soft, hard })
    }

    /// The limit's `RLIMIT_*` number.
    pub fn resource(&self) -> Option<u32> {
        ULIMITS.iter().find(|(n, _)| *n == self.name).map(|(_, r)| *r)
    }
}

/// A `--ulimit` value that is not `NAME=SOFT[:HARD]` of a known limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UlimitError(String);

/// One `/etc/hosts` entry added to an exec's sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIp {
    /// The name.
    pub host: String,
    /// Its address, checked to be an IPv4 or IPv6 address.
    pub ip: std::net::IpAddr,
}

/// An `--add-host` value that is not `HOST:IP`, with what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostIpError(String);

impl HostIp {
    /// Parses docker's `HOST:IP` (the IP may be IPv6, `host:::1`; `host=IP` is accepted as
    /// buildx does). `host-gateway` is refused: rdock's default network does not reach the
    /// host.
    pub fn parse(s: &str) -> Result<HostIp, HostIpError> {
        HostIp::parse_message(s).map_err(HostIpError)
    }

    fn parse_message(s: &str) -> Result<HostIp, String> {
        let (host, ip) =
            s.split_once('=').or_else(|| s.split_once(':')).ok_or_else(|| format!("invalid --add-host {s:?}: expected HOST:IP"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(format!("invalid --add-host {s:?}: {host:?} is not a host name"));
        }
        if ip == "host-gateway" {
            return Err(format!(
                "--add-host {s}: host-gateway is not supported: rdock's default network does not reach the host (use --network host)"
            ));
        }
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = ip.parse().map_err(|_| format!("invalid --add-host {s:?}: {ip:?} is not an IP address"))?;
        Ok(HostIp { host: host.to_string(), ip })
    }
}

/// Ownership for created or copied files: names or numeric ids, resolved against the
/// destination's /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChownOpt {
    /// User name or uid.
    pub user: String,
    /// Group name or gid; None means the user's primary group.
    pub group: Option<String>,
}

/// Copies from a secondary input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAction {
    /// Index into the node's inputs of the source.
    pub src_input: u32,
    /// Source paths (may contain wildcards when `allow_wildcard`).
    pub src: Vec<String>,
    /// Destination path; a trailing slash means "into this directory".
    pub dest: String,
    /// Owner of copied files.
    pub chown: Option<ChownOpt>,
    /// Mode of copied files and directories.
    pub chmod: Option<crate::Chmod>,
    /// Expand wildcards in `src`.
    pub allow_wildcard: bool,
    /// A wildcard matching nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// Unpack local tar archives at the destination (ADD).
    pub unpack_archives: bool,
    /// Exclusion patterns applied to the copied tree.
    pub exclude: Vec<String>,
    /// `--parents`: keep each source's parent directories (below a `/./` pivot, if the
    /// pattern has one). Omitted from the encoding when false, so older digests hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
}

/// One step of a file op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileAction {
    /// Copy files in.
    Copy(CopyAction),
    /// Make a directory.
    Mkdir {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Create missing parents.
        make_parents: bool,
        /// Owner.
        chown: Option<ChownOpt>,
    },
    /// Write a file.
    Mkfile {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
        /// Owner.
        chown: Option<ChownOpt>,
    },
    /// Remove a path.
    Rm {
        /// Absolute path.
        path: String,
        /// Missing is fine.
        allow_not_found: bool,
    },
    /// Make a symlink.
    Symlink {
        /// Link target.
        target: String,
        /// Where the link is created.
        path: String,
    },
}

/// A sequence of file actions applied to a base input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    /// Index into the node's inputs of the tree to modify; None starts from scratch.
    pub base: Option<u32>,
    /// Applied in order.
    pub actions: Vec<FileAction>,
}

/// Layers inputs, later ones on top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeOp {
    /// Indexes into the node's inputs, bottom first.
    pub inputs: Vec<u32>,
}

/// What `upper` changed relative to `lower`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffOp {
    /// Index of the lower input; None is scratch.
    pub lower: Option<u32>,
    /// Index of the upper input.
    pub upper: u32,
}

impl Op {
    /// A short human label: `exec`, `file`, …
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Source(_) => "source",
            Op::Exec(_) => "exec",
            Op::File(_) => "file",
            Op::Merge(_) => "merge",
            Op::Diff(_) => "diff",
        }
    }

    /// A one-line summary for dumps and progress.
    pub fn summary(&self) -> String {
        match self {
            Op::Source(s) => s.identifier.clone(),
            Op::Exec(e) => e.args.join(" "),
            Op::File(f) => f
                .actions
                .iter()
                .map(|a| match a {
                    FileAction::Copy(c) => format!("copy {} {}", c.src.join(" "), c.dest),
                    FileAction::Mkdir { path, .. } => format!("mkdir {path}"),
                    FileAction::Mkfile { path, .. } => format!("mkfile {path}"),
                    FileAction::Rm { path, .. } => format!("rm {path}"),
                    FileAction::Symlink { target, path } => format!("symlink {path} -> {target}"),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Op::Merge(m) => format!("merge {} inputs", m.inputs.len()),
            Op::Diff(_) => "diff".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_round_trip_and_a_malformed_value_is_an_error() {
        let src = SourceOp::local("context", &[], &["*.log".to_string(), "!keep.log".to_string()]);
        assert_eq!(src.patterns("local.excludepatterns").unwrap(), vec!["*.log", "!keep.log"]);
        assert!(src.patterns("local.includepatterns").unwrap().is_empty());
        let bad = SourceOp { identifier: "local://context".into(), attrs: vec![("local.excludepatterns".into(), "*.log".into())] };
        let err = bad.patterns("local.excludepatterns").unwrap_err().to_string();
        assert!(err.contains("local.excludepatterns") && err.contains("JSON"), "{err}");
    }

    #[test]
    fn sources_parse_by_scheme_once() {
        assert_eq!(
            SourceOp::image("docker.io/library/busybox:latest").source().unwrap(),
            Source::Image("docker.io/library/busybox:latest")
        );
        assert_eq!(SourceOp::local("context", &[], &[]).source().unwrap(), Source::Local("context"));
        assert_eq!(SourceOp::http("https://example.com/a.tar", None).source().unwrap(), Source::Http("https://example.com/a.tar"));
        let Source::Git(g) = SourceOp::git("https://example.com/r.git#v1:sub", false).source().unwrap().clone() else { panic!() };
        assert_eq!((g.reference.as_deref(), g.subdir.as_deref()), (Some("v1"), Some("sub")));
        let err = SourceOp { identifier: "ftp://x/y".into(), attrs: vec![] }.source().unwrap_err().to_string();
        assert!(err.contains("ftp://x/y") && err.contains("unknown scheme"), "{err}");
    }
}
