//! Executes LLB ops on snapshots: exec ops in a namespace sandbox through the
//! [`Executor`] trait, file ops natively, each producing a committed snapshot.
//!
//! Architecture invariant: depends on `llb` (what to do) and `snapshotter` (where), never
//! on the solver: the solver decides *whether* to run an op; the worker only runs it. The
//! executor is a trait so the solver can be tested with a recording one and another
//! runtime (an external OCI runtime) can slot in.
//!
//! ```no_run
//! use rdock_worker::{NamespaceExecutor, Worker};
//! let store = rdock_snapshotter::Store::open("/var/lib/rdock".as_ref()).unwrap();
//! let worker = Worker::new(store.clone(), std::sync::Arc::new(NamespaceExecutor::new(store.root().join("tmp"))));
//! # let _ = worker;
//! ```

pub mod archive;
pub mod cachemount;
mod caps;
pub mod cgroup;
pub mod container;
mod contextview;
pub mod fileop;
pub mod git;
pub mod http;
mod loopback;
pub mod network;
mod sandbox;
pub mod seccomp;
mod stepmounts;
mod teardown;
mod udprelay;
pub mod user;

pub use fileop::{CopySource, resolve_in_root};
pub use sandbox::{NamespaceExecutor, SANDBOX_HOSTNAME};
pub use user::{ResolvedUser, resolve_user};

use rdock_imagespec::Platform;
use rdock_llb::patterns::PatternMatcher;
use rdock_llb::{ExecOp, FileOp, Network, Security};
use rdock_snapshotter::{MountSpec, Mounted, SnapshotError, Snapshotter, Store, active_key};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What the executor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Absolute working directory (created if missing).
    pub cwd: String,
    /// The resolved user.
    pub user: ResolvedUser,
    /// Network mode.
    pub network: Network,
    /// Security mode.
    pub security: Security,
    /// Mounts besides the root, in order.
    pub mounts: Vec<ExtraMount>,
    /// Extra `/etc/hosts` entries.
    pub extra_hosts: Vec<rdock_llb::HostIp>,
    /// A build step's hostname, if not [`SANDBOX_HOSTNAME`] (a container's is its own, given
    /// where it is spawned).
    pub hostname: Option<String>,
    /// `/dev/shm`'s size and rlimits.
    pub resources: rdock_llb::Resources,
}

/// A mount besides the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMount {
    /// What is mounted.
    pub source: MountSource,
    /// Absolute path in the container.
    pub dest: String,
    /// Read-only.
    pub readonly: bool,
}

/// What an extra mount shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host directory, bound.
    Dir(PathBuf),
    /// A host file, bound onto a file.
    File(PathBuf),
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit status (128+N for signal N).
    pub exit_code: i32,
    /// Wall time.
    pub duration: Duration,
    /// A resource limit the step ran into, which likely explains a failure.
    pub limit_hit: Option<LimitHit>,
}

/// A cgroup limit a step reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// A fork or clone was refused: this many tasks is the limit.
    Pids(u64),
    /// The memory limit, in bytes, was reached.
    Memory(u64),
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitHit::Pids(n) => write!(f, "the step reached its pids limit ({n} processes and threads; `[limits] pids` in config.toml)"),
            LimitHit::Memory(n) => write!(f, "the step reached its memory limit ({n} bytes; `[limits] memory` in config.toml)"),
        }
    }
}

/// The executor could not run the command at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The sandbox could not be set up.
    #[error("sandbox: {0}")]
    Setup(String),
    /// The root's mount could not be planned.
    #[error("sandbox: {0}")]
    Root(#[source] SnapshotError),
    /// The program does not exist in the root filesystem.
    #[error("failed to execute {program:?}: {reason} (is it in the image and on its PATH?)")]
    NotFound {
        /// argv\[0\].
        program: String,
        /// The OS's word.
        reason: String,
    },
    /// The program exists but may not be executed (permissions, or a directory).
    #[error("failed to execute {program:?}: {reason}")]
    NotExecutable {
        /// argv\[0\].
        program: String,
        /// The OS's word.
        reason: String,
    },
    /// The kernel would not run the program's binary: it is for another CPU (or corrupt).
    #[error("failed to execute {program:?}: exec format error")]
    ExecFormat {
        /// argv\[0\].
        program: String,
    },
    /// Preparing the run's files failed.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Runs a command on a root filesystem.
pub trait Executor: Send + Sync {
    /// Runs `spec` with `root` mounted as `/`, streaming combined stdout and stderr.
    fn run(&self, spec: &ExecSpec, root: &MountSpec, output: &mut dyn FnMut(&[u8])) -> Result<ExecResult, ExecError>;
}

/// Why an op failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Snapshot or layer trouble.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The executor failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A step for another platform, with no emulator to run its binaries.
    #[error(
        "failed to execute {program:?} for platform {platform}: exec format error: this {host} host has no emulator for it \
         (install qemu-user-static and register it with binfmt_misc, with the F flag, as `tonistiigi/binfmt --install` does)"
    )]
    NoEmulator {
        /// argv\[0\].
        program: String,
        /// The step's platform.
        platform: String,
        /// This machine's platform.
        host: String,
    },
    /// The command ran and failed.
    #[error("process {command:?} did not complete successfully: exit code: {code}{}", limit.map(|l| format!(": {l}")).unwrap_or_default())]
    ExitCode {
        /// The command line.
        command: String,
        /// Its exit code.
        code: i32,
        /// A resource limit it ran into.
        limit: Option<LimitHit>,
    },
    /// User resolution failed.
    #[error(transparent)]
    User(#[from] user::UserError),
    /// A COPY source is missing.
    #[error("failed to compute cache key: {0:?}: not found")]
    SourceNotFound(String),
    /// A path problem.
    #[error("{path}: {reason}")]
    Path {
        /// The path.
        path: String,
        /// The problem.
        reason: String,
    },
    /// I/O at a path.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// What a build hands its steps besides the graph, never part of a cache key or an event:
/// secrets by id (`RUN --mount=type=secret`) and forwarded SSH agents by id
/// (`RUN --mount=type=ssh`). Two maps, so that a secret id can never name an agent's
/// socket, nor the other way round.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Secret values by id.
    pub values: HashMap<String, Vec<u8>>,
    /// Agent sockets by id (`default` for `--ssh default`).
    pub ssh: HashMap<String, PathBuf>,
}

/// The inputs a file op reads, by index.
#[derive(Debug, Clone)]
pub enum FileInput {
    /// A committed snapshot (None: scratch).
    Snapshot(Option<String>),
    /// A local directory (the build context) with its exclude patterns.
    Local {
        /// The directory.
        dir: PathBuf,
        /// `.dockerignore` patterns.
        excludes: Vec<String>,
    },
}

/// Paths the sandbox creates as mount points if the image lacks them; removed from the
/// step's layer afterwards so they never land in an image (BuildKit's mount stubs).
const MOUNT_STUBS: &[&str] = &["etc/hosts", "etc/resolv.conf", "proc", "dev", "sys", "etc"];

/// Runs ops against a store.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    executor: Arc<dyn Executor>,
    /// File ops' mounted roots, unmounted off the steps' path (see `teardown.rs`).
    teardown: Arc<teardown::Teardown>,
}

impl Worker {
    /// A worker over `store` running steps with `executor`.
    pub fn new(store: Store, executor: Arc<dyn Executor>) -> Worker {
        Worker { store, executor, teardown: Arc::default() }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs an exec op whose inputs are `inputs` (committed snapshots, or the build
    /// context for bind mounts), with `secrets` for secret and ssh mounts, and commits its
    /// root mount's result as `name`.
    pub fn exec(
        &self,
        op: &ExecOp,
        inputs: &[FileInput],
        secrets: &Secrets,
        name: &str,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WorkerError> {
        let root_mount = op.mounts.iter().find(|m| m.dest == "/");
        let parent = match root_mount.and_then(|m| m.input).and_then(|i| inputs.get(i as usize)) {
            Some(FileInput::Snapshot(s)) => s.clone(),
            _ => None,
        };
        let key = active_key("exec");
        let root = self.store.snapshots().prepare(&key, parent.as_deref())?;
        let mut mounts = stepmounts::StepMounts::new(&self.store, &key, inputs);
        let result = self.exec_in(op, parent.as_deref(), &key, &root, &mut mounts, secrets, output);
        drop(mounts);
        self.finish(result, name, &key)
    }

    /// Runs the step on its prepared root: resolves its user, mounts what it asks for,
    /// runs it, and clears the mount points the sandbox left in its layer.
    #[allow(clippy::too_many_arguments)] // One step's parts, each from a different place.
    fn exec_in(
        &self,
        op: &ExecOp,
        parent: Option<&str>,
        key: &str,
        root: &MountSpec,
        mounts: &mut stepmounts::StepMounts<'_>,
        secrets: &Secrets,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WorkerError> {
        let layers = self.store.snapshots().layer_dirs(parent)?;
        let read =
            |p: &str| -> Result<Option<String>, WorkerError> { Ok(layers.read_file(p)?.map(|b| String::from_utf8_lossy(&b).into_owned())) };
        let user = resolve_user(&op.user, read("/etc/passwd")?.as_deref(), read("/etc/group")?.as_deref())?;
        let mut env = op.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        let mut stubs: Vec<String> = MOUNT_STUBS.iter().map(|s| s.to_string()).collect();
        let mut extra = Vec::new();
        for (i, m) in op.mounts.iter().enumerate().filter(|(_, m)| m.dest != "/") {
            // Mount points the sandbox creates must not land in the layer: the usual stubs,
            // and every directory an extra mount needs that the image lacks, except a cache
            // mount's: BuildKit leaves its target and missing parents as directories in the
            // layer (`/root/.cache/pip`), and images built from one Dockerfile agree.
            if !m.dest.starts_with("/dev/") && !matches!(m.kind, rdock_llb::MountKind::Cache { .. }) {
                stubs.splice(0..0, mount_point_dirs(&m.dest));
            }
            extra.extend(mounts.mount(i, m, secrets, &mut env)?);
        }
        let existed: Vec<bool> = stubs.iter().map(|s| layers.exists(s)).collect();
        let spec = ExecSpec {
            args: op.args.clone(),
            env,
            cwd: op.cwd.clone(),
            user,
            network: op.network,
            security: op.security,
            mounts: extra,
            extra_hosts: op.extra_hosts.clone(),
            hostname: op.hostname.clone(),
            resources: op.resources.clone(),
        };
        let res = self.executor.run(&spec, root, output).map_err(|e| match (e, &op.platform) {
            (ExecError::ExecFormat { program }, Some(p)) if Platform::parse(p).map_or(true, |p| !p.satisfies(&Platform::host())) => {
                WorkerError::NoEmulator { program, platform: p.clone(), host: Platform::host().to_string() }
            }
            (e, _) => WorkerError::Exec(e),
        })?;
        if res.exit_code != 0 {
            return Err(WorkerError::ExitCode { command: op.args.join(" "), code: res.exit_code, limit: res.limit_hit });
        }
        remove_stubs(&self.store.snapshots().fs_dir(key)?, &stubs, &existed);
        Ok(())
    }

    fn finish(&self, result: Result<(), WorkerError>, name: &str, key: &str) -> Result<(), WorkerError> {
        let snaps = self.store.snapshots();
        match result {
            Ok(()) => match snaps.commit(name, key) {
                Ok(()) => Ok(()),
                Err(SnapshotError::Exists(_)) => {
                    // Another build committed the same result first; theirs is as good.
                    let _ = snaps.remove(key);
                    Ok(())
                }
                Err(e) => {
                    let _ = snaps.remove(key);
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = snaps.remove(key);
                Err(e)
            }
        }
    }

    /// Runs a file op: `inputs` are the op's inputs by index; the result is committed as `name`.
    pub fn file(&self, op: &FileOp, inputs: &[FileInput], name: &str) -> Result<(), WorkerError> {
        let snaps = self.store.snapshots();
        let base = match op.base.and_then(|i| inputs.get(i as usize)) {
            Some(FileInput::Snapshot(s)) => s.clone(),
            _ => None,
        };
        let key = active_key("file");
        let result = (|| {
            let mounts = snaps.prepare(&key, base.as_deref())?;
            let tmp = self.store.root().join("tmp");
            let root = Mounted::new(&mounts, tmp.join(format!("{key}-root")))?;
            let mut views: Vec<(String, Option<Mounted>)> = Vec::new();
            let mut matchers: Vec<Option<PatternMatcher>> = Vec::new();
            let mut roots: Vec<Option<(PathBuf, bool)>> = Vec::new();
            // Only inputs that copies read need a view; the base is the mounted root.
            let read: std::collections::BTreeSet<usize> = op
                .actions
                .iter()
                .filter_map(|a| match a {
                    rdock_llb::FileAction::Copy(c) => Some(c.src_input as usize),
                    _ => None,
                })
                .collect();
            for (i, input) in inputs.iter().enumerate() {
                if !read.contains(&i) {
                    roots.push(None);
                    matchers.push(None);
                    continue;
                }
                match input {
                    FileInput::Snapshot(None) => {
                        roots.push(Some((snaps.empty_dir().to_path_buf(), false)));
                        matchers.push(None);
                    }
                    FileInput::Snapshot(Some(s)) => {
                        let vkey = format!("{key}-view{i}");
                        let m = snaps.view(&vkey, Some(s))?;
                        let mounted = Mounted::new(&m, tmp.join(&vkey));
                        match mounted {
                            Ok(mt) => {
                                roots.push(Some((mt.path().to_path_buf(), false)));
                                views.push((vkey, Some(mt)));
                            }
                            Err(e) => {
                                let _ = snaps.remove(&vkey);
                                return Err(e.into());
                            }
                        }
                        matchers.push(None);
                    }
                    FileInput::Local { dir, excludes } => {
                        roots.push(Some((dir.clone(), true)));
                        matchers.push(Some(
                            PatternMatcher::new(excludes).map_err(|e| WorkerError::Path { path: e.pattern, reason: e.reason })?,
                        ));
                    }
                }
            }
            let sources: Vec<Option<CopySource<'_>>> = roots
                .iter()
                .zip(matchers.iter())
                .map(|(r, m)| r.as_ref().map(|(p, reset)| CopySource { root: p.as_path(), excludes: m.as_ref(), reset_ownership: *reset }))
                .collect();
            let upper = match &mounts {
                MountSpec::Overlay { upper, .. } => upper.as_deref(),
                MountSpec::Bind { .. } => None,
            };
            let applied = fileop::apply_actions(fileop::Target { root: root.path(), upper }, &op.actions, &sources);
            for (vkey, m) in views {
                drop(m);
                let _ = snaps.remove(&vkey);
            }
            // The root is unmounted off the step's path once the copy is complete; a failed
            // op's, before its snapshot is removed.
            applied.map(|()| root)
        })();
        let result = result.map(|root| self.teardown.later(root));
        self.finish(result, name, &key)
    }
}

/// The directories above a mount point and the point itself, relative, deepest first (so
/// parents are removed after their children): `/a/b` gives `a/b`, `a`.
fn mount_point_dirs(dest: &str) -> Vec<String> {
    let mut acc = String::new();
    let mut chain = Vec::new();
    for part in dest.split('/').filter(|p| !p.is_empty()) {
        acc = if acc.is_empty() { part.to_string() } else { format!("{acc}/{part}") };
        chain.push(acc.clone());
    }
    chain.reverse();
    chain
}

/// Removes the mount stubs the sandbox made from the step's upper dir. Each stub is
/// resolved inside the upper dir (a symlink the step left there cannot lead out of it) and
/// looked at without following it: an empty directory goes unless the image had it and the
/// step replaced it (opaque), an empty file only if the image lacked it.
fn remove_stubs(upper: &Path, stubs: &[String], existed: &[bool]) {
    let Ok(root) = rdock_inroot::Root::open(upper) else { return };
    for (stub, existed) in stubs.iter().zip(existed) {
        let Ok((dir, name)) = root.parent(Path::new(stub), false) else { continue };
        let Ok(fd) = rdock_inroot::open_at(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) else { continue };
        let Ok(st) = rdock_inroot::fstat(fd.as_fd()) else { continue };
        let c = match std::ffi::CString::new(name.as_encoded_bytes()) {
            Ok(c) => c,
            Err(_) => continue,
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let Ok(open) = rdock_inroot::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY) else { continue };
                let empty =
                    std::fs::read_dir(format!("/proc/self/fd/{}", open.as_raw_fd())).map(|mut d| d.next().is_none()).unwrap_or(false);
                if empty && (!*existed || !rdock_snapshotter::is_opaque_fd(open.as_fd())) {
                    // SAFETY: a valid fd and a NUL-terminated name.
                    unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
                }
            }
            libc::S_IFREG if !*existed && st.st_size == 0 => {
                // SAFETY: as above.
                unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_listed_deepest_first() {
        assert_eq!(super::mount_point_dirs("/run/secrets/token"), vec!["run/secrets/token", "run/secrets", "run"]);
        assert_eq!(super::mount_point_dirs("//a//b/"), vec!["a/b", "a"]);
        assert!(super::mount_point_dirs("/").is_empty());
    }
}
