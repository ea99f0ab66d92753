//! The extra mounts of an exec step (`RUN --mount=…`), and everything made to provide
//! them: views of snapshots, held cache mounts, secret files, filtered context views and
//! throwaway overlays for writable binds. All of it goes when the step ends, in an order
//! that never removes what something else still stacks on.

use crate::{ExtraMount, FileInput, MountSource, Secrets, WorkerError, cachemount, contextview, resolve_in_root};
use rdock_llb::patterns::PatternMatcher;
use rdock_llb::{Mount, MountKind};
use rdock_snapshotter::{MountSpec, Mounted, OverlaySnapshotter, Snapshotter, Store};
use std::path::{Path, PathBuf};

/// What one step mounted besides its root.
pub(crate) struct StepMounts<'a> {
    store: &'a Store,
    /// The step's active snapshot key, which names everything made for it.
    key: &'a str,
    inputs: &'a [FileInput],
    views: Vec<(String, Mounted)>,
    held: Vec<cachemount::Held>,
    secret_dir: SecretDir,
    /// Writable binds of directories: an overlay on top, with its scratch directory.
    scratches: Vec<(PathBuf, Mounted)>,
    /// Writable binds of files: a throwaway copy.
    scratch_files: Vec<PathBuf>,
    contexts: Vec<contextview::ContextView>,
}

impl<'a> StepMounts<'a> {
    pub(crate) fn new(store: &'a Store, key: &'a str, inputs: &'a [FileInput]) -> StepMounts<'a> {
        let secret_dir = SecretDir::new(&store.root().join("tmp"));
        StepMounts {
            store,
            key,
            inputs,
            views: Vec::new(),
            held: Vec::new(),
            secret_dir,
            scratches: Vec::new(),
            scratch_files: Vec::new(),
            contexts: Vec::new(),
        }
    }

    fn snaps(&self) -> &OverlaySnapshotter {
        self.store.snapshots()
    }

    fn tmp(&self, what: &str) -> PathBuf {
        self.store.root().join("tmp").join(format!("{}-{what}", self.key))
    }

    fn input(&self, m: &Mount) -> Option<&'a FileInput> {
        m.input.and_then(|ix| self.inputs.get(ix as usize))
    }

    /// The mount for `m`, the `i`th of the step, adding to `env` what secrets and agents
    /// set; None when an optional secret or agent was not given.
    pub(crate) fn mount(
        &mut self,
        i: usize,
        m: &Mount,
        secrets: &Secrets,
        env: &mut Vec<String>,
    ) -> Result<Option<ExtraMount>, WorkerError> {
        let source = match &m.kind {
            MountKind::Tmpfs { size } => MountSource::Tmpfs { size: *size },
            MountKind::Cache { .. } => self.cache(i, m)?,
            MountKind::Secret { id, required, mode, uid, gid, env: var } => {
                let Some(value) = secrets.values.get(id) else {
                    return missing(m, *required, format!("secret {id} is required but was not provided (--secret id={id},src=FILE)"));
                };
                if let Some(var) = var {
                    env.push(format!("{var}={}", String::from_utf8_lossy(value)));
                }
                if m.dest.is_empty() {
                    return Ok(None);
                }
                MountSource::File(self.secret_dir.write(i, value, *mode, *uid, *gid)?)
            }
            MountKind::Ssh { id, required } => {
                let Some(sock) = secrets.ssh.get(id) else {
                    return missing(m, *required, format!("ssh agent {id} is required but was not forwarded (--ssh {id}=SOCKET)"));
                };
                if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={}", m.dest));
                }
                MountSource::File(sock.clone())
            }
            MountKind::Bind => self.bind(i, m)?,
        };
        let source = self.writable(i, m, source)?;
        let readonly = matches!(m.kind, MountKind::Secret { .. } | MountKind::Ssh { .. }) || m.readonly;
        Ok(Some(ExtraMount { source, dest: m.dest.clone(), readonly }))
    }

    /// A cache mount: one cache per id and owner, as BuildKit's (its base is the mkdir
    /// that sets uid, gid and mode), seeded from its input when it does not exist yet.
    fn cache(&mut self, i: usize, m: &Mount) -> Result<MountSource, WorkerError> {
        let MountKind::Cache { id, sharing, mode, uid, gid } = &m.kind else { unreachable!("only cache mounts come here") };
        let id = &cachemount::key(id, *mode, *uid, *gid);
        let cache_root = self.store.root().join("cache");
        let seed = match self.input(m).filter(|_| cachemount::is_new(&cache_root, id)) {
            Some(FileInput::Local { dir, .. }) => Some(resolve_in_root(dir, &m.selector, true)?),
            Some(FileInput::Snapshot(Some(s))) => Some(resolve_in_root(&self.view(&format!("seed{i}"), Some(s))?, &m.selector, true)?),
            _ => None,
        };
        let h = cachemount::acquire(&cache_root, id, *sharing, *mode, *uid, *gid, seed.as_deref())?;
        let dir = h.dir.clone();
        self.held.push(h);
        Ok(MountSource::Dir(dir))
    }

    /// A bind of the context (filtered through its excludes when it has any) or of a
    /// snapshot (its only layer directly, else a read-only view); a file when the source
    /// is one.
    fn bind(&mut self, i: usize, m: &Mount) -> Result<MountSource, WorkerError> {
        let base = match self.input(m) {
            Some(FileInput::Local { dir, excludes }) if !excludes.is_empty() => {
                let matcher = PatternMatcher::new(excludes).map_err(|e| WorkerError::Path { path: e.pattern, reason: e.reason })?;
                let view = contextview::filtered_context(dir, &matcher, self.tmp(&format!("ctx{i}")))?;
                let base = view.path().to_path_buf();
                self.contexts.push(view);
                base
            }
            Some(FileInput::Local { dir, .. }) => dir.clone(),
            input => {
                let parent = match input {
                    Some(FileInput::Snapshot(s)) => s.clone(),
                    _ => None,
                };
                let dirs = self.snaps().layer_dirs(parent.as_deref())?;
                match dirs.dirs() {
                    [] => self.snaps().empty_dir().to_path_buf(),
                    [one] => one.clone(),
                    _ => self.view(&format!("mount{i}"), parent.as_deref())?,
                }
            }
        };
        let p = resolve_in_root(&base, &m.selector, true)?;
        Ok(if p.is_dir() { MountSource::Dir(p) } else { MountSource::File(p) })
    }

    /// Mounts a read-only view of `parent`, kept until the step ends; returns where.
    fn view(&mut self, what: &str, parent: Option<&str>) -> Result<PathBuf, WorkerError> {
        let vkey = format!("{}-{what}", self.key);
        let spec = self.snaps().view(&vkey, parent)?;
        match Mounted::new(&spec, self.store.root().join("tmp").join(&vkey)) {
            Ok(mt) => {
                let p = mt.path().to_path_buf();
                self.views.push((vkey, mt));
                Ok(p)
            }
            Err(e) => {
                let _ = self.snaps().remove(&vkey);
                Err(e.into())
            }
        }
    }

    /// A writable bind must never write into a snapshot or the context: it gets a
    /// throwaway overlay on top (a throwaway copy for a file), discarded after the step
    /// (as in BuildKit).
    fn writable(&mut self, i: usize, m: &Mount, source: MountSource) -> Result<MountSource, WorkerError> {
        if !matches!(m.kind, MountKind::Bind) || m.readonly {
            return Ok(source);
        }
        let scratch = self.tmp(&format!("rw{i}"));
        match source {
            MountSource::File(file) => {
                std::fs::create_dir_all(&scratch).map_err(|e| WorkerError::Io(scratch.clone(), e))?;
                let copy = scratch.join("file");
                self.scratch_files.push(scratch);
                std::fs::copy(&file, &copy).map_err(|e| WorkerError::Io(file.clone(), e))?;
                Ok(MountSource::File(copy))
            }
            MountSource::Dir(dir) => {
                for d in ["upper", "work"] {
                    std::fs::create_dir_all(scratch.join(d)).map_err(|e| WorkerError::Io(scratch.join(d), e))?;
                }
                let spec = MountSpec::Overlay { lower: vec![dir], upper: Some(scratch.join("upper")), work: Some(scratch.join("work")) };
                let mounted = Mounted::new(&spec, scratch.join("mnt")).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&scratch);
                })?;
                let p = mounted.path().to_path_buf();
                self.scratches.push((scratch, mounted));
                Ok(MountSource::Dir(p))
            }
            other => Ok(other),
        }
    }
}

/// An optional secret or agent that was not given is skipped; a required one is an error.
fn missing(m: &Mount, required: bool, reason: String) -> Result<Option<ExtraMount>, WorkerError> {
    if required { Err(WorkerError::Path { path: m.dest.clone(), reason }) } else { Ok(None) }
}

impl Drop for StepMounts<'_> {
    fn drop(&mut self) {
        for (vkey, m) in self.views.drain(..) {
            drop(m);
            let _ = self.store.snapshots().remove(&vkey);
        }
        self.held.clear();
        for (dir, m) in self.scratches.drain(..) {
            drop(m);
            let _ = std::fs::remove_dir_all(dir);
        }
        for dir in self.scratch_files.drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
        // After the rw scratches: they may be stacked on a context view.
        self.contexts.clear();
        // The secret directory goes with the struct.
    }
}

/// Secret files for one step, in a private directory removed when the step ends.
struct SecretDir {
    dir: PathBuf,
}

impl SecretDir {
    fn new(tmp: &Path) -> SecretDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SecretDir { dir: tmp.join(format!("secrets-{}-{n}", std::process::id())) }
    }

    fn write(&self, i: usize, value: &[u8], mode: u32, uid: u32, gid: u32) -> Result<PathBuf, WorkerError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&self.dir).map_err(|e| WorkerError::Io(self.dir.clone(), e))?;
        let p = self.dir.join(i.to_string());
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map_err(|e| WorkerError::Io(p.clone(), e))?;
        std::io::Write::write_all(&mut f, value).map_err(|e| WorkerError::Io(p.clone(), e))?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| WorkerError::Io(p.clone(), e))?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(|e| WorkerError::Io(p.clone(), e))?;
        Ok(p)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
