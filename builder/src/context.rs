//! Build contexts that are not a local directory: a tar stream on standard input, a git
//! repository, an http(s) URL. Each is laid out in a private directory for the length of
//! the build, as `docker build` does with them, and from there it is a context like any
//! other: its files are keyed by content, so the same tree hits the cache wherever it was
//! unpacked.
//!
//! What comes from elsewhere is hostile input: archives are unpacked with every entry
//! kept inside the directory (`rdock_worker::archive`), and the Dockerfile is read through
//! the directory's root, so a `Dockerfile -> /etc/shadow` link reads nothing of the host.

use rdock_llb::GitRef;
use rdock_worker::WorkerError;
use rdock_worker::archive::{archive_kind, unpack_archive};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a build's files come from, as `docker build`'s positional argument names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// A local directory.
    Dir(PathBuf),
    /// Standard input (`-`): a tar archive, plain or compressed, or a Dockerfile alone.
    Stdin,
    /// A git repository: `https://host/repo.git#ref:subdir`, `git@host:repo.git`, `git://…`.
    Git(GitRef),
    /// An http(s) URL of a tar archive, plain or compressed, or of a Dockerfile alone.
    Url(String),
}

impl ContextSource {
    /// Reads the positional argument of `docker build`.
    pub fn parse(arg: &str) -> ContextSource {
        if arg == "-" {
            return ContextSource::Stdin;
        }
        if let Some(g) = rdock_llb::parse_git_ref(arg) {
            return ContextSource::Git(g);
        }
        if arg.starts_with("http://") || arg.starts_with("https://") {
            return ContextSource::Url(arg.to_string());
        }
        ContextSource::Dir(PathBuf::from(arg))
    }
}

/// Why a context could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A git or http context could not be fetched.
    #[error("fetching the build context {url}")]
    Fetch {
        /// What was asked for.
        url: String,
        /// Why it failed.
        #[source]
        source: WorkerError,
    },
    /// An archive could not be unpacked (or one of its entries would land outside).
    #[error("unpacking the build context from {from}")]
    Unpack {
        /// Where the archive came from.
        from: String,
        /// Why.
        #[source]
        source: WorkerError,
    },
    /// Local trouble: standard input, the private directory, the Dockerfile.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Dockerfile `-f` names is not in the context.
    #[error("{name} is not in the build context {from}")]
    NoDockerfile {
        /// The name asked for.
        name: String,
        /// The context.
        from: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContextError {
    let what = what.into();
    move |source| ContextError::Io { what, source }
}

/// A context laid out in a private directory, removed when this is dropped.
#[derive(Debug)]
pub struct Fetched {
    /// The context's root.
    pub dir: PathBuf,
    /// The Dockerfile's text: the source itself when it was a Dockerfile (then the
    /// context is empty), else the one `-f` names inside the tree (default `Dockerfile`).
    pub dockerfile: String,
    _tmp: tempfile::TempDir,
}

/// Lays out a context that is not a local directory under `tmp` (on the store's
/// filesystem), reading standard input from `stdin`; `dockerfile` is `-f`'s name, taken
/// inside the context as docker takes it for remote contexts. `keep_git_dir` keeps a git
/// checkout's `.git` (BuildKit's `BUILDKIT_CONTEXT_KEEP_GIT_DIR`). A `Dir` is returned as
/// None: it is used where it is.
pub fn fetch(
    src: &ContextSource,
    stdin: &mut dyn Read,
    tmp: &Path,
    dockerfile: Option<&str>,
    keep_git_dir: bool,
) -> Result<Option<Fetched>, ContextError> {
    std::fs::create_dir_all(tmp).map_err(io(format!("creating {}", tmp.display())))?;
    // `context-PID-…`: the store removes what a killed build left, as it does its own.
    let t = tempfile::Builder::new()
        .prefix(&format!("context-{}-", std::process::id()))
        .tempdir_in(tmp)
        .map_err(io("making a directory for the build context"))?;
    let root = t.path().join("root");
    let (dir, text, from) = match src {
        ContextSource::Dir(_) => return Ok(None),
        ContextSource::Stdin => {
            let file = t.path().join("stdin");
            let mut f = std::fs::File::create(&file).map_err(io("saving standard input"))?;
            std::io::copy(stdin, &mut f).map_err(io("reading the build context from standard input"))?;
            let text = unpack_or_text(&file, &root, "standard input")?;
            (root, text, "standard input".to_string())
        }
        ContextSource::Url(url) => {
            let file = t.path().join("download");
            rdock_worker::http::download(url, &file).map_err(|source| ContextError::Fetch { url: url.clone(), source })?;
            let text = unpack_or_text(&file, &root, url)?;
            (root, text, url.clone())
        }
        ContextSource::Git(g) => {
            let fail = |source| ContextError::Fetch { url: g.remote.clone(), source };
            let commit = rdock_worker::git::resolve_commit(g).map_err(fail)?;
            let dir = rdock_worker::git::checkout(g, &commit, &root, keep_git_dir).map_err(fail)?;
            (dir, None, g.remote.clone())
        }
    };
    let dockerfile = match text {
        Some(t) => t,
        None => read_dockerfile(&dir, dockerfile, &from)?,
    };
    Ok(Some(Fetched { dir, dockerfile, _tmp: t }))
}

/// Unpacks the archive at `file` into `root` and returns None, or, if it is no archive,
/// makes `root` empty and returns the file's text: a Dockerfile alone.
fn unpack_or_text(file: &Path, root: &Path, from: &str) -> Result<Option<String>, ContextError> {
    std::fs::create_dir(root).map_err(io(format!("creating {}", root.display())))?;
    match archive_kind(file) {
        Some(kind) => {
            unpack_archive(file, kind, root, None).map_err(|source| ContextError::Unpack { from: from.to_string(), source })?;
            Ok(None)
        }
        None => {
            let bytes = std::fs::read(file).map_err(io(format!("reading the build context from {from}")))?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
    }
}

/// The Dockerfile `name` (default `Dockerfile`, else `dockerfile`) read inside `dir`.
fn read_dockerfile(dir: &Path, name: Option<&str>, from: &str) -> Result<String, ContextError> {
    let root = rdock_inroot::Root::open(dir).map_err(io(format!("opening the build context {}", dir.display())))?;
    let names: Vec<&str> = match name {
        Some(n) => vec![n],
        None => vec!["Dockerfile", "dockerfile"],
    };
    for n in &names {
        if let Some(bytes) = root.read(Path::new(n)).map_err(io(format!("reading {n} from the build context {from}")))? {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Err(ContextError::NoDockerfile { name: names[0].to_string(), from: from.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_positional_argument_names_its_kind() {
        assert_eq!(ContextSource::parse("-"), ContextSource::Stdin);
        assert_eq!(ContextSource::parse("."), ContextSource::Dir(".".into()));
        assert_eq!(ContextSource::parse("https://example.com/c.tar.gz"), ContextSource::Url("https://example.com/c.tar.gz".into()));
        let ContextSource::Git(g) = ContextSource::parse("https://example.com/r.git#v1:sub") else { panic!() };
        assert_eq!((g.reference.as_deref(), g.subdir.as_deref()), (Some("v1"), Some("sub")));
    }

    #[test]
    fn a_dockerfile_on_stdin_makes_an_empty_context_and_a_tar_a_full_one() {
        let tmp = tempfile::tempdir().unwrap();
        let got = fetch(&ContextSource::Stdin, &mut &b"FROM scratch\n"[..], tmp.path(), None, false).unwrap().unwrap();
        assert_eq!(got.dockerfile, "FROM scratch\n");
        assert_eq!(std::fs::read_dir(&got.dir).unwrap().count(), 0);

        let mut tar = tar::Builder::new(Vec::new());
        for (name, body) in [("Dockerfile", &b"FROM busybox\n"[..]), ("sub/f", b"f")] {
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, body).unwrap();
        }
        let bytes = tar.into_inner().unwrap();
        let got = fetch(&ContextSource::Stdin, &mut &bytes[..], tmp.path(), None, false).unwrap().unwrap();
        assert_eq!(got.dockerfile, "FROM busybox\n");
        assert_eq!(std::fs::read(got.dir.join("sub/f")).unwrap(), b"f");
        let dir = got.dir.clone();
        drop(got);
        assert!(!dir.exists(), "the private directory goes with the build");
    }
}
