//! Containers from images, daemonless: `rdock run`, `ps`, `rm` and `commit`.
//!
//! A container is a read-write overlay snapshot on the image's read-only layers, the
//! same snapshots builds use, with an init layer between them holding the mount points
//! the sandbox needs (/proc, /dev, /sys, /etc/hosts, …), as Docker's `-init` layer does,
//! so that a commit diffs only what the container wrote. Its process runs in the
//! worker's namespace sandbox; rdock waits for it in the foreground, forwarding signals
//! ([`attach`]). Records of containers live in the store's metadata database
//! ([`records`]).
//!
//! Architecture: depends on `snapshotter` (layers), `oci` (images), `worker` (the
//! sandbox) and `imagespec`; nothing depends on it but the CLI.

pub mod attach;
pub mod config;
mod names;
pub mod records;

pub use attach::{AttachOptions, Signals};
pub use config::{Bind, ProcessConfig, RunFlags, parse_volume, process_config};
pub use records::{Record, Records, State};

use rdock_imagespec::time::unix_now as now;
use rdock_imagespec::{Digest, History, ImageRef, MEDIA_TYPE_OCI_LAYER};
use rdock_llb::{Network, Security};
use rdock_oci::{CommittedImage, ImageStore, OciError, chain_snapshot_name, commit_image, ensure_unpacked};
use rdock_snapshotter::{SnapshotError, Snapshotter, Store, active_key};
use rdock_worker::container::{ContainerSpec, Process, Streams};
use rdock_worker::{ExecError, ExecSpec, ExtraMount, MountSource, resolve_user};
use std::path::PathBuf;
use std::time::Duration;

/// Why a container could not be run, found or changed. [`RuntimeError::exit_code`] gives
/// the status Docker's CLI would exit with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image and flags give no command.
    #[error("no command specified: the image has no ENTRYPOINT or CMD and none was given")]
    NoCommand,
    /// A flag's value is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A `-v` source is missing.
    #[error("invalid volume: bind source path does not exist: {0}")]
    BindSource(PathBuf),
    /// `-u` names a user or group the image does not have.
    #[error(transparent)]
    User(#[from] rdock_worker::user::UserError),
    /// No container by that name or id.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// The container runs and the operation needs it stopped.
    #[error("cannot {action} the running container {id}: stop it first, or use -f")]
    Running {
        /// What was asked.
        action: &'static str,
        /// Its short id.
        id: String,
    },
    /// The command could not be started.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Image trouble.
    #[error(transparent)]
    Image(#[from] OciError),
    /// Snapshot trouble.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Metadata trouble.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Signals, polling, the terminal.
    #[error("{0}")]
    Setup(String),
}

impl RuntimeError {
    /// Docker's statuses: 127 when the command does not exist, 126 when it cannot be
    /// executed, 125 for every other failure of rdock itself.
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Exec(ExecError::NotFound { .. }) => 127,
            RuntimeError::Exec(ExecError::NotExecutable { .. } | ExecError::ExecFormat { .. }) => 126,
            _ => 125,
        }
    }
}

/// What `rdock run` was asked.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The image as the user named it (shown by `ps`).
    pub image: String,
    /// Its manifest in the local store.
    pub manifest: Digest,
    /// Command, env, workdir, user, volumes.
    pub flags: RunFlags,
    /// `--name`.
    pub name: Option<String>,
    /// `--hostname` (default: the id's first 12 digits, as Docker).
    pub hostname: Option<String>,
    /// `--network`: default (egress through slirp4netns), none or host.
    pub network: Network,
    /// `-p`: ports published on the host (default network only).
    pub ports: Vec<rdock_worker::network::PortMap>,
    /// `--add-host`: extra /etc/hosts entries.
    pub extra_hosts: Vec<rdock_llb::HostIp>,
    /// `--init`.
    pub init: bool,
    /// `-i`.
    pub interactive: bool,
    /// `-t`.
    pub tty: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--stop-signal` (default: the image's STOPSIGNAL, else SIGTERM).
    pub stop_signal: Option<String>,
    /// `--stop-timeout` (default 10 s).
    pub stop_timeout: Duration,
    /// `--memory`, `--cpus`, `--pids-limit`.
    pub limits: rdock_worker::cgroup::Limits,
}

/// Parses `SIGUSR1`, `USR1` or `10`, as Docker's STOPSIGNAL accepts them.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, RuntimeError> {
    let bad = || RuntimeError::Invalid(format!("invalid signal: {s}"));
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    name.parse().map_err(|_| bad())
}

fn new_id() -> String {
    use sha2::Digest as _;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut seed = [0u8; 32];
    // /dev/urandom, with the clock and pid mixed in should it be missing.
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(seed);
    h.update(t.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    hex::encode(h.finalize())
}

/// Paths the sandbox mounts over; the init layer holds them so the container's own
/// layer never does (Docker's `-init` layer).
const INIT_DIRS: &[&str] = &["proc", "dev", "sys", "etc"];
const INIT_FILES: &[&str] = &["etc/hosts", "etc/resolv.conf", "etc/hostname"];

/// Containers over a store.
pub struct Runtime {
    images: ImageStore,
    records: Records,
}

impl Runtime {
    /// The runtime of `store`.
    pub fn new(store: Store) -> Result<Runtime, RuntimeError> {
        let records = Records::new(store.db().clone())?;
        Ok(Runtime { images: ImageStore::new(store), records })
    }

    /// The container records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    fn store(&self) -> &Store {
        self.images.store()
    }

    /// Containers, newest first: all, or only the running ones. Records of `--rm`
    /// containers whose rdock was killed are removed on the way (their snapshots went
    /// with the store's sweep of abandoned ones).
    pub fn list(&self, all: bool) -> Result<Vec<Record>, RuntimeError> {
        let (records, gone) = self.records.list()?;
        for g in gone {
            let _ = self.store().snapshots().remove(&g.snapshot);
        }
        Ok(records.into_iter().filter(|r| all || r.state == State::Running).collect())
    }

    /// The init layer on `top` (None: scratch), made once per image and shared.
    fn init_layer(&self, top: Option<&str>) -> Result<String, RuntimeError> {
        let snaps = self.store().snapshots();
        let name = format!("init-{}", top.map(|t| t.trim_start_matches("layer-")).unwrap_or("scratch"));
        if snaps.exists(&name)? {
            return Ok(name);
        }
        let key = active_key("init");
        snaps.prepare(&key, top)?;
        let made = (|| -> Result<(), RuntimeError> {
            let fs = snaps.fs_dir(&key)?;
            let layers = snaps.layer_dirs(top)?;
            for d in INIT_DIRS {
                if !layers.exists(d) {
                    std::fs::create_dir(fs.join(d)).map_err(|e| SnapshotError::io(fs.join(d), e))?;
                }
            }
            for f in INIT_FILES {
                if !layers.exists(f) {
                    let p = fs.join(f);
                    if let Some(dir) = p.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| SnapshotError::io(dir, e))?;
                    }
                    std::fs::write(&p, b"").map_err(|e| SnapshotError::io(&p, e))?;
                }
            }
            Ok(())
        })();
        match made.and_then(|()| snaps.commit(&name, &key).map_err(RuntimeError::from)) {
            Ok(()) => Ok(name),
            Err(e) => {
                let _ = snaps.remove(&key);
                match e {
                    // Another rdock made it first: theirs serves.
                    RuntimeError::Snapshot(SnapshotError::Exists(_)) => Ok(name),
                    e => Err(e),
                }
            }
        }
    }

    /// Creates and runs a container in the foreground; returns its exit status. Errors
    /// before the command started leave nothing behind with `--rm`, and a `Created`
    /// container without it, as Docker does.
    pub fn run(&self, req: &RunRequest, signals: &Signals) -> Result<i32, RuntimeError> {
        let lease = self.store().lease()?;
        let (top, image_config) = ensure_unpacked(&self.images, &req.manifest)?;
        let m = self.images.manifest(&req.manifest)?;
        let id = new_id();
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
        let mut pc = process_config(&image_config.config, &req.flags, &hostname, |k| std::env::var(k).ok())?;
        let binds = req.flags.volumes.iter().map(|v| parse_volume(v)).collect::<Result<Vec<_>, _>>()?;
        let stop_signal = parse_signal(req.stop_signal.as_deref().or(image_config.config.stop_signal.as_deref()).unwrap_or("SIGTERM"))?;
        let snaps = self.store().snapshots();
        let layers = snaps.layer_dirs(top.as_deref())?;
        let read = |p: &str| -> Result<Option<String>, RuntimeError> {
            Ok(layers.read_file(p)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        let user = resolve_user(&pc.user, read("/etc/passwd")?.as_deref(), read("/etc/group")?.as_deref())?;
        if !pc.env.iter().any(|e| e.starts_with("HOME=")) {
            pc.env.push(format!("HOME={}", user.home));
        }
        let init = self.init_layer(top.as_deref())?;
        let key = if req.auto_remove { active_key("run") } else { format!("container:{id}") };
        let mounts = snaps.prepare(&key, Some(&init))?;
        let record = Record {
            id: id.clone(),
            name: String::new(),
            image: req.image.clone(),
            manifest: req.manifest.clone(),
            image_id: m.config.digest.clone(),
            snapshot: key.clone(),
            parent: top.clone(),
            command: pc.args.clone(),
            created: now(),
            state: State::Created,
            exit_code: None,
            finished: None,
            runner: Some(records::this_runner()),
            auto_remove: req.auto_remove,
            settings: settings(req, &pc, &hostname, stop_signal),
        };
        if let Err(e) = self.insert_named(record, req.name.as_deref()) {
            let _ = snaps.remove(&key);
            return Err(e);
        }
        let spec = container_spec(req, &pc, user, hostname, &binds);
        let started = Process::start(&self.store().root().join("tmp"), &spec, &mounts);
        // Running containers hold no lease: garbage collection must not wait for them;
        // their snapshots are active, which it never removes.
        drop(lease);
        let mut process = match started {
            Ok(p) => p,
            Err(e) => {
                let e = RuntimeError::from(e);
                self.finish(&id, &key, req.auto_remove, State::Created, e.exit_code());
                return Err(e);
            }
        };
        self.records.set_running(&id)?;
        let code = self.supervise(&mut process, req, stop_signal, signals);
        let code = match code {
            Ok(c) => c,
            Err(e) => {
                let _ = process.signal(nix::sys::signal::Signal::SIGKILL);
                let c = process.wait().unwrap_or(137);
                self.finish(&id, &key, req.auto_remove, State::Exited, c);
                return Err(e);
            }
        };
        self.finish(&id, &key, req.auto_remove, State::Exited, code);
        Ok(code)
    }

    /// Attaches the terminal (raw while a tty is interactive) and waits for the process,
    /// forwarding signals; its exit code.
    fn supervise(
        &self,
        process: &mut Process,
        req: &RunRequest,
        stop_signal: nix::sys::signal::Signal,
        signals: &Signals,
    ) -> Result<i32, RuntimeError> {
        let raw = if req.tty && req.interactive { attach::RawMode::enable() } else { None };
        let opts = AttachOptions { stop_signal, stop_timeout: req.stop_timeout, stdin: req.interactive };
        let code = attach::wait(process, signals, &opts);
        drop(raw);
        code
    }

    fn insert_named(&self, mut record: Record, name: Option<&str>) -> Result<(), RuntimeError> {
        if let Some(n) = name {
            let valid = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(RuntimeError::Invalid(format!("invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")));
            }
            record.name = n.to_string();
            return self.records.insert(&record);
        }
        let seed = hex::decode(&record.id[..4]).unwrap_or_default();
        for attempt in 0..100 {
            record.name = names::generate(&seed, attempt);
            match self.records.insert(&record) {
                Err(RuntimeError::Invalid(_)) => continue,
                r => return r,
            }
        }
        record.name = record.id[..12].to_string();
        self.records.insert(&record)
    }

    /// Records how the container ended; with `--rm` removes it instead.
    fn finish(&self, id: &str, key: &str, auto_remove: bool, state: State, code: i32) {
        if auto_remove {
            let _ = self.records.delete(id);
            let _ = self.store().snapshots().remove(key);
        } else {
            let _ = self.records.set_ended(id, state, code);
        }
    }

    /// Removes a container and its layer; a running one only with `force`, which kills it.
    pub fn remove(&self, what: &str, force: bool) -> Result<Record, RuntimeError> {
        let r = self.records.find(what)?;
        if Records::is_running(&r) {
            if !force {
                return Err(RuntimeError::Running { action: "remove", id: r.id[..12].to_string() });
            }
            // Its rdock dies, and the container with it (parent-death signal).
            if let Some((pid, _)) = r.runner {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while Records::is_running(&r) {
                if std::time::Instant::now() > deadline {
                    return Err(RuntimeError::Setup(format!("container {} did not stop", &r.id[..12])));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.records.delete(&r.id)?;
        match self.store().snapshots().remove(&r.snapshot) {
            Ok(()) | Err(SnapshotError::NotFound(_)) => Ok(r),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a new image of the container's image plus what the container wrote, tagged
    /// `name` if given. The container may be running; what it wrote so far is taken.
    pub fn commit(&self, what: &str, name: Option<&ImageRef>, message: Option<&str>) -> Result<CommittedImage, RuntimeError> {
        let _lease = self.store().lease()?;
        let r = self.records.find(what)?;
        let snaps = self.store().snapshots();
        let m = self.images.manifest(&r.manifest)?;
        let mut config = self.images.config(&m)?;
        let upper = snaps.fs_dir(&r.snapshot)?;
        let blob = rdock_snapshotter::write_layer(&upper, self.store().content())?;
        let mut diff_ids = config.rootfs.diff_ids.clone();
        diff_ids.push(blob.diff_id.clone());
        let top = chain_snapshot_name(&diff_ids).ok_or_else(|| RuntimeError::Setup("empty chain".into()))?;
        self.store().layers().import_layer(&top, r.parent.as_deref(), &blob.diff_id, MEDIA_TYPE_OCI_LAYER)?;
        let created = rdock_imagespec::time::build_time();
        config.created = Some(created.clone());
        if !config.history.is_empty() || config.rootfs.diff_ids.is_empty() {
            config.history.push(History {
                created: Some(created.clone()),
                created_by: Some(r.command.join(" ")),
                comment: message.map(str::to_string),
                ..Default::default()
            });
        }
        let image = commit_image(&self.images, Some(&top), config, &created)?;
        if let Some(n) = name {
            self.images.tag(n, &image.manifest)?;
        }
        Ok(image)
    }
}

/// What `rdock inspect` shows of a container's settings, in docker's keys.
fn settings(req: &RunRequest, pc: &ProcessConfig, hostname: &str, stop_signal: nix::sys::signal::Signal) -> serde_json::Value {
    serde_json::json!({
        "Hostname": hostname, "Env": pc.env, "WorkingDir": pc.cwd, "User": pc.user, "Tty": req.tty,
        "OpenStdin": req.interactive, "Init": req.init, "NetworkMode": match req.network { Network::Host => "host", Network::None => "none", Network::Sandbox => "default" },
        "PortBindings": req.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "Binds": req.flags.volumes, "StopSignal": stop_signal.as_str(),
        "Memory": req.limits.memory.unwrap_or(0), "NanoCpus": req.limits.millicpus.unwrap_or(0) * 1_000_000,
        "PidsLimit": req.limits.pids,
    })
}

/// The container as the worker runs it: the process, its bind mounts, streams, limits
/// and ports.
fn container_spec(
    req: &RunRequest,
    pc: &ProcessConfig,
    user: rdock_worker::ResolvedUser,
    hostname: String,
    binds: &[Bind],
) -> ContainerSpec {
    let mounts = binds
        .iter()
        .map(|b| ExtraMount {
            source: if b.source.is_dir() { MountSource::Dir(b.source.clone()) } else { MountSource::File(b.source.clone()) },
            dest: b.dest.clone(),
            readonly: b.readonly,
        })
        .collect();
    let streams = if req.tty {
        let (rows, cols) = attach::terminal_size().unwrap_or((24, 80));
        Streams::Tty { rows, cols }
    } else {
        Streams::Inherit { stdin: req.interactive }
    };
    ContainerSpec {
        exec: ExecSpec {
            args: pc.args.clone(),
            env: pc.env.clone(),
            cwd: pc.cwd.clone(),
            user,
            network: req.network,
            extra_hosts: req.extra_hosts.clone(),
            hostname: None,
            resources: Default::default(),
            security: Security::Sandbox,
            mounts,
        },
        hostname,
        streams,
        init: req.init,
        limits: req.limits,
        ports: req.ports.clone(),
    }
}
