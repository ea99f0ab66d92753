//! Git sources (`ADD https://host/repo.git#ref:subdir`, `git@host:repo.git`): the ref is
//! resolved to a commit (the cache key), the commit is checked out with the `git` client,
//! and the tree (or a subdirectory) becomes a committed snapshot, without `.git` unless
//! `--keep-git-dir`.

use crate::WorkerError;
use rdock_snapshotter::Snapshotter;
use std::path::Path;
use std::process::Command;

pub use rdock_llb::{GitRef, parse_git_ref};

fn git(args: &[&str], dir: Option<&Path>) -> Result<String, WorkerError> {
    let mut c = Command::new("git");
    if let Some(d) = dir {
        c.arg("-C").arg(d);
    }
    // Never prompt for credentials in a build; fail instead.
    c.args(args).env("GIT_TERMINAL_PROMPT", "0");
    let out = c.output().map_err(|e| WorkerError::Path { path: "git".into(), reason: format!("cannot run git ({e}); install git") })?;
    if !out.status.success() {
        return Err(WorkerError::Path { path: args.join(" "), reason: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `r` names on its remote.
pub fn resolve_commit(r: &GitRef) -> Result<String, WorkerError> {
    if let Some(c) = &r.reference
        && c.len() == 40
        && c.chars().all(|x| x.is_ascii_hexdigit())
    {
        return Ok(c.to_ascii_lowercase());
    }
    let want = r.reference.clone().unwrap_or_else(|| "HEAD".into());
    let listing = git(&["ls-remote", &r.remote, &want], None)?;
    // Prefer an exact branch or tag (peeled tags end in ^{}).
    let mut best: Option<String> = None;
    for line in listing.lines() {
        let mut parts = line.split_whitespace();
        let (Some(sha), Some(name)) = (parts.next(), parts.next()) else { continue };
        if name == want
            || name == format!("refs/heads/{want}")
            || name == format!("refs/tags/{want}^{{}}")
            || (best.is_none() && name == format!("refs/tags/{want}"))
        {
            best = Some(sha.to_string());
            if name.ends_with("^{}") || name.starts_with("refs/heads/") || name == "HEAD" {
                break;
            }
        }
    }
    best.ok_or_else(|| WorkerError::Path { path: r.remote.clone(), reason: format!("no ref {want:?} in the repository") })
}

/// Checks out `commit` of `r` (with its submodules) into `work`, which must not exist, and
/// returns the directory `r` names: `work`, or its `#ref:subdir` resolved inside it.
pub fn checkout(r: &GitRef, commit: &str, work: &Path, keep_git_dir: bool) -> Result<std::path::PathBuf, WorkerError> {
    let w = work.to_string_lossy().into_owned();
    git(&["clone", "--quiet", "--no-checkout", &r.remote, &w], None)?;
    git(&["-c", "advice.detachedHead=false", "checkout", "--quiet", commit], Some(work))?;
    git(&["submodule", "update", "--init", "--recursive", "--quiet"], Some(work)).ok();
    if !keep_git_dir {
        std::fs::remove_dir_all(work.join(".git")).map_err(|e| WorkerError::Io(work.join(".git"), e))?;
    }
    let from = match &r.subdir {
        Some(d) => crate::resolve_in_root(work, d, true)?,
        None => work.to_path_buf(),
    };
    if !from.is_dir() {
        return Err(WorkerError::SourceNotFound(format!("{}#{}", r.remote, r.subdir.clone().unwrap_or_default())));
    }
    Ok(from)
}

impl crate::Worker {
    /// Checks out `commit` of `r` into a committed snapshot and returns its name.
    pub fn git_snapshot(&self, r: &GitRef, commit: &str, keep_git_dir: bool) -> Result<String, WorkerError> {
        let snaps = self.store().snapshots();
        let tag = blake3::hash(format!("{}\0{:?}\0{keep_git_dir}", r.remote, r.subdir).as_bytes()).to_hex();
        let name = format!("git-{commit}-{}", &tag[..16]);
        if snaps.exists(&name)? {
            return Ok(name);
        }
        let key = rdock_snapshotter::active_key("git");
        snaps.prepare(&key, None)?;
        let work = self.store().root().join("tmp").join(format!("{key}-clone"));
        let result = (|| {
            let from = checkout(r, commit, &work, keep_git_dir)?;
            let fs = snaps.fs_dir(&key)?;
            let ok = Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", from.display()))
                .arg(&fs)
                .status()
                .map_err(|e| WorkerError::Io(fs.clone(), e))?;
            if !ok.success() {
                return Err(WorkerError::Path { path: fs.display().to_string(), reason: "copying the checkout failed".into() });
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&work);
        match result.and_then(|()| snaps.commit(&name, &key).map_err(WorkerError::from)) {
            Ok(()) => Ok(name),
            Err(e) => {
                let _ = snaps.remove(&key);
                if snaps.exists(&name)? { Ok(name) } else { Err(e) }
            }
        }
    }
}
