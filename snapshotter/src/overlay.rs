//! The overlay snapshotter: each snapshot is a directory used as an overlay upper dir;
//! its parents are the lower dirs. Records live in the `snapshots` table. This is the
//! bookkeeping only: making layers from snapshots and snapshots from layers is
//! `LayerStore`'s (`layers.rs`).

use crate::db::Db;
use crate::mount::MountSpec;
use crate::{SnapshotError, Snapshotter};
use rdock_imagespec::Digest;
use rdock_imagespec::time::unix_now as now;
use rdock_inroot::{Last, Root};
use rusqlite::{OptionalExtension, params};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Writable, being built.
    Active,
    /// A read-only view.
    View,
    /// Immutable.
    Committed,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "active" => Kind::Active,
            "view" => Kind::View,
            _ => Kind::Committed,
        }
    }
}

/// A snapshot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Internal id (the directory name).
    pub id: i64,
    /// Key or committed name.
    pub key: String,
    /// The parent's key.
    pub parent: Option<String>,
    /// Kind.
    pub kind: Kind,
}

/// Disk use of one snapshot's own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes in regular files.
    pub size: u64,
    /// Number of entries.
    pub inodes: u64,
}

/// A snapshot as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Internal id.
    pub id: i64,
    /// Key or committed name.
    pub key: String,
    /// The parent's id.
    pub parent: Option<i64>,
    /// Kind.
    pub kind: Kind,
    /// Unix seconds of creation.
    pub created: i64,
    /// Unix seconds of last use as a base image or a result (None: never since creation).
    pub last_used: Option<i64>,
    /// Disk use in bytes, once measured (committed snapshots only).
    pub size: Option<u64>,
    /// Its layer blob, if one was computed or imported.
    pub layer_blob: Option<Digest>,
}

/// Disk use of a tree as `du` counts it: allocated blocks of every entry, so that many
/// small files cost what they cost on disk, and hard-linked files once.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut linked = std::collections::HashSet::new();
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_dir() || m.nlink() < 2 || linked.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum()
}

/// The overlay snapshotter over a store root.
pub struct OverlaySnapshotter {
    root: PathBuf,
    db: Arc<Db>,
    empty: PathBuf,
}

impl OverlaySnapshotter {
    /// The snapshotter for a store root; `Store::open` makes one.
    pub fn new(root: &Path, db: Arc<Db>) -> Result<OverlaySnapshotter, SnapshotError> {
        let empty = root.join("snapshots/empty");
        std::fs::create_dir_all(&empty).map_err(|e| SnapshotError::io(&empty, e))?;
        Ok(OverlaySnapshotter { root: root.to_path_buf(), db, empty })
    }

    /// An empty directory, the root of scratch.
    pub fn empty_dir(&self) -> &Path {
        &self.empty
    }

    fn dir(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory holding a snapshot's own contents (its upper dir).
    pub fn fs_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        Ok(self.dir(self.info(key)?.id).join("fs"))
    }

    pub(crate) fn info(&self, key: &str) -> Result<Info, SnapshotError> {
        self.find(key)?.ok_or_else(|| SnapshotError::NotFound(key.to_string()))
    }

    fn find(&self, key: &str) -> Result<Option<Info>, SnapshotError> {
        let conn = self.db.conn();
        let row = conn
            .query_row(
                "SELECT s.id, s.key, p.key, s.kind FROM snapshots s LEFT JOIN snapshots p ON s.parent = p.id WHERE s.key = ?1",
                params![key],
                |r| Ok(Info { id: r.get(0)?, key: r.get(1)?, parent: r.get(2)?, kind: Kind::parse(&r.get::<_, String>(3)?) }),
            )
            .optional()?;
        Ok(row)
    }

    /// Marks a snapshot used now (garbage collection removes least recently used first).
    pub fn touch(&self, key: &str) -> Result<(), SnapshotError> {
        self.db.conn().execute("UPDATE snapshots SET last_used = ?1 WHERE key = ?2", params![now(), key])?;
        Ok(())
    }

    /// Every snapshot with what garbage collection needs to know.
    pub fn records(&self) -> Result<Vec<SnapshotRecord>, SnapshotError> {
        let conn = self.db.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, s.key, s.parent, s.kind, s.created, s.last_used, s.size, l.blob FROM snapshots s \
             LEFT JOIN layers l ON l.snapshot = s.id ORDER BY s.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SnapshotRecord {
                id: r.get(0)?,
                key: r.get(1)?,
                parent: r.get(2)?,
                kind: Kind::parse(&r.get::<_, String>(3)?),
                created: r.get(4)?,
                last_used: r.get(5)?,
                size: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
                layer_blob: r.get::<_, Option<String>>(7)?.and_then(|b| Digest::parse(&b).ok()),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// A committed snapshot's disk use, measured the first time and remembered.
    pub fn measure(&self, rec: &SnapshotRecord) -> Result<u64, SnapshotError> {
        if let Some(n) = rec.size {
            return Ok(n);
        }
        let n = disk_usage(&self.dir(rec.id));
        if rec.kind == Kind::Committed {
            self.db.conn().execute("UPDATE snapshots SET size = ?1 WHERE id = ?2", params![n as i64, rec.id])?;
        }
        Ok(n)
    }

    /// True if a snapshot with this key or name exists.
    pub fn exists(&self, key: &str) -> Result<bool, SnapshotError> {
        Ok(self.find(key)?.is_some())
    }

    /// Keys of the committed chain from `name` down to the bottom, top first.
    pub fn chain(&self, name: &str) -> Result<Vec<Info>, SnapshotError> {
        // One recursive query rather than one per layer: deep images walk this often.
        let conn = self.db.conn();
        let mut stmt = conn.prepare_cached(
            "WITH RECURSIVE c(id, key, parent, kind, depth) AS (
                 SELECT id, key, parent, kind, 0 FROM snapshots WHERE key = ?1
                 UNION ALL
                 SELECT s.id, s.key, s.parent, s.kind, c.depth + 1 FROM snapshots s JOIN c ON s.id = c.parent
             )
             SELECT c.id, c.key, p.key, c.kind FROM c LEFT JOIN snapshots p ON c.parent = p.id ORDER BY c.depth",
        )?;
        let rows = stmt.query_map(params![name], |r| {
            Ok(Info { id: r.get(0)?, key: r.get(1)?, parent: r.get(2)?, kind: Kind::parse(&r.get::<_, String>(3)?) })
        })?;
        let out = rows.collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            return Err(SnapshotError::NotFound(name.to_string()));
        }
        Ok(out)
    }

    /// The directories of `name`'s chain, top first: what an overlay of it stacks, and
    /// what [`Layers`] looks paths up in.
    pub fn layer_dirs(&self, name: Option<&str>) -> Result<Layers, SnapshotError> {
        let dirs = self.lowers(name)?;
        let roots = Arc::new(dirs.iter().map(|d| Root::open(d).ok()).collect());
        Ok(Layers { dirs, roots })
    }

    fn lowers(&self, parent: Option<&str>) -> Result<Vec<PathBuf>, SnapshotError> {
        match parent {
            None => Ok(Vec::new()),
            Some(p) => Ok(self.chain(p)?.iter().map(|i| self.dir(i.id).join("fs")).collect()),
        }
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind) -> Result<MountSpec, SnapshotError> {
        let parent_id = match parent {
            Some(p) => {
                let i = self.info(p)?;
                if i.kind != Kind::Committed {
                    return Err(SnapshotError::WrongKind { key: p.to_string(), actual: i.kind.as_str(), expected: "committed" });
                }
                Some(i.id)
            }
            None => None,
        };
        let id = {
            let conn = self.db.conn();
            let r = conn.execute(
                "INSERT INTO snapshots (key, parent, kind, created) VALUES (?1, ?2, ?3, ?4)",
                params![key, parent_id, kind.as_str(), now()],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    return Err(SnapshotError::Exists(key.to_string()));
                }
                r => r?,
            };
            conn.last_insert_rowid()
        };
        let dir = self.dir(id);
        let made = std::fs::create_dir_all(dir.join("fs"))
            .and_then(|_| if kind == Kind::Active { std::fs::create_dir_all(dir.join("work")) } else { Ok(()) });
        if let Err(e) = made {
            let _ = self.db.conn().execute("DELETE FROM snapshots WHERE id = ?1", params![id]);
            return Err(SnapshotError::io(dir, e));
        }
        self.mounts(key)
    }

    /// Removes active snapshots and views whose creating process is gone, and stray temp
    /// files: what a killed build leaves behind.
    pub fn clean_abandoned(&self) -> Result<(), SnapshotError> {
        let stale: Vec<String> = {
            let conn = self.db.conn();
            let mut stmt = conn.prepare("SELECT key FROM snapshots WHERE kind != 'committed'")?;
            let keys = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            keys.into_iter().filter(|k| !owner_alive(k)).collect()
        };
        for k in stale {
            let _ = self.remove(&k);
        }
        // Directories whose record is gone: a process killed inside `remove`, which deletes
        // the record first. Records are written before directories, so a directory read
        // before the record query cannot belong to a snapshot being created.
        let snaps = self.root.join("snapshots");
        let dirs: Vec<i64> = std::fs::read_dir(&snaps)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect())
            .unwrap_or_default();
        if !dirs.is_empty() {
            let known: std::collections::HashSet<i64> = {
                let conn = self.db.conn();
                let mut stmt = conn.prepare("SELECT id FROM snapshots")?;
                stmt.query_map([], |r| r.get::<_, i64>(0))?.collect::<Result<_, _>>()?
            };
            for id in dirs.into_iter().filter(|id| !known.contains(id)) {
                let _ = std::fs::remove_dir_all(self.dir(id));
            }
        }
        // Mounts a killed process left under tmp/ (file ops mount in the host namespace):
        // detach them before anything below is removed, or removal would reach into
        // committed snapshots.
        let tmp = self.root.join("tmp");
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<PathBuf> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(PathBuf::from)
                .filter(|p| p.starts_with(&tmp))
                .filter(|p| {
                    p.strip_prefix(&tmp)
                        .ok()
                        .and_then(|r| r.components().next())
                        .is_some_and(|c| !owner_alive(&c.as_os_str().to_string_lossy()))
                })
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in points {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !owner_alive(&name) {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        }
        Ok(())
    }

    /// Makes the directory `tmp` (filled elsewhere, on the same filesystem) the committed
    /// snapshot `name` on `parent`, by renaming it into place: how unpacked layers become
    /// snapshots without a copy. Returns the snapshot's id, or None if another process
    /// committed `name` first (theirs stands, and `tmp` is left to the caller).
    pub(crate) fn commit_dir(&self, name: &str, parent: Option<&str>, tmp: &Path) -> Result<Option<i64>, SnapshotError> {
        let key = active_key("import");
        self.create(&key, parent, Kind::Active)?;
        let fs = self.fs_dir(&key)?;
        let moved = std::fs::remove_dir(&fs).and_then(|_| std::fs::rename(tmp, &fs));
        if let Err(e) = moved {
            let _ = self.remove(&key);
            return Err(SnapshotError::io(&fs, e));
        }
        match self.commit(name, &key) {
            Ok(()) => Ok(Some(self.info(name)?.id)),
            Err(SnapshotError::Exists(_)) => {
                let _ = self.remove(&key);
                Ok(None)
            }
            Err(e) => {
                let _ = self.remove(&key);
                Err(e)
            }
        }
    }

    /// Reads a file as it appears in the committed snapshot `name` (through its layers),
    /// without mounting. Used to resolve users and groups. Symlinks are not followed.
    pub fn read_file(&self, name: &str, path: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.layer_dirs(Some(name))?.read_file(path)
    }

    /// True if `path` exists in the committed snapshot `name`.
    pub fn path_exists(&self, name: Option<&str>, path: &str) -> Result<bool, SnapshotError> {
        Ok(self.layer_dirs(name)?.exists(path))
    }
}

/// A snapshot's layer directories, top first, for looking paths up as an overlay of them
/// would show them, without mounting.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    dirs: Vec<PathBuf>,
    /// Each directory opened once, to resolve paths inside it.
    roots: Arc<Vec<Option<Root>>>,
}

impl Layers {
    /// The directories, top first.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The topmost entry for `path` (None if absent or whited out), opened `O_PATH`. The
    /// path is resolved inside each layer's directory (its symlinks are the image's: they
    /// never lead out of it), the last component not followed.
    fn find(&self, path: &str) -> Option<(OwnedFd, libc::stat)> {
        for root in self.roots.iter().flatten() {
            if let Ok(Some(fd)) = root.lookup(Path::new(path), Last::NoFollow) {
                let st = rdock_inroot::fstat(fd.as_fd()).ok()?;
                let whiteout = st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0;
                return (!whiteout).then_some((fd, st));
            }
        }
        None
    }

    /// True if `path` exists.
    pub fn exists(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    /// A regular file's contents (None if absent, whited out or not a regular file).
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        match self.find(path) {
            Some((fd, st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                let io = |e| SnapshotError::io(path, e);
                let mut f = std::fs::File::from(rdock_inroot::reopen(fd.as_fd(), libc::O_RDONLY).map_err(io)?);
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut buf).map_err(io)?;
                Ok(Some(buf))
            }
            _ => Ok(None),
        }
    }
}

/// An active-snapshot key that records the creating process, so that a later process
/// can tell an abandoned one.
pub fn active_key(purpose: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{purpose}-{}-{n}-{}", std::process::id(), now())
}

/// Parses the pid out of keys and temp names written as `purpose-PID-…`.
pub(crate) fn owner_alive(name: &str) -> bool {
    let Some(pid) = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
        return true;
    };
    pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists()
}

impl Snapshotter for OverlaySnapshotter {
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<MountSpec, SnapshotError> {
        self.create(key, parent, Kind::Active)
    }

    fn view(&self, key: &str, parent: Option<&str>) -> Result<MountSpec, SnapshotError> {
        self.create(key, parent, Kind::View)
    }

    fn mounts(&self, key: &str) -> Result<MountSpec, SnapshotError> {
        let info = self.info(key)?;
        let own = self.dir(info.id);
        let readonly = |mut lower: Vec<PathBuf>| match lower.len() {
            0 => MountSpec::Bind { source: self.empty.clone(), readonly: true },
            1 => MountSpec::Bind { source: lower.remove(0), readonly: true },
            // overlay needs at least two lower dirs when it has no upper.
            _ => MountSpec::Overlay { lower, upper: None, work: None },
        };
        let spec = match info.kind {
            Kind::Active => {
                let mut lower = self.lowers(info.parent.as_deref())?;
                if lower.is_empty() {
                    lower.push(self.empty.clone());
                }
                MountSpec::Overlay { lower, upper: Some(own.join("fs")), work: Some(own.join("work")) }
            }
            Kind::View => readonly(self.lowers(info.parent.as_deref())?),
            Kind::Committed => readonly(self.lowers(Some(key))?),
        };
        Ok(spec)
    }

    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError> {
        let info = self.info(key)?;
        if info.kind != Kind::Active {
            return Err(SnapshotError::WrongKind { key: key.to_string(), actual: info.kind.as_str(), expected: "active" });
        }
        let r = self.db.conn().execute("UPDATE snapshots SET key = ?1, kind = 'committed' WHERE id = ?2", params![name, info.id]);
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(SnapshotError::Exists(name.to_string()));
            }
            r => r?,
        };
        let work = self.dir(info.id).join("work");
        let _ = std::fs::remove_dir_all(work);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let info = self.info(key)?;
        if info.kind != Kind::Committed {
            // An active snapshot's contents are disposable: freed first, so that removing
            // a step that filled the disk leaves room for the database to record it. (Killed
            // here, the snapshot stays active and abandoned, and is swept again.)
            let fs = self.dir(info.id).join("fs");
            if let Ok(entries) = std::fs::read_dir(&fs) {
                for e in entries.flatten() {
                    let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        std::fs::remove_file(e.path())
                    };
                }
            }
        }
        {
            let conn = self.db.conn();
            let children: i64 = conn.query_row("SELECT COUNT(*) FROM snapshots WHERE parent = ?1", params![info.id], |r| r.get(0))?;
            if children > 0 {
                return Err(SnapshotError::InUse(key.to_string()));
            }
            conn.execute("DELETE FROM layers WHERE snapshot = ?1", params![info.id])?;
            conn.execute("DELETE FROM snapshots WHERE id = ?1", params![info.id])?;
        }
        let dir = self.dir(info.id);
        std::fs::remove_dir_all(&dir)
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(|e| SnapshotError::io(dir, e))
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        self.info(key)
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let fs = self.fs_dir(key)?;
        let mut u = Usage::default();
        for e in walkdir::WalkDir::new(&fs).min_depth(1).into_iter().flatten() {
            u.inodes += 1;
            if let Ok(md) = e.metadata()
                && md.is_file()
            {
                u.size += md.len();
            }
        }
        Ok(u)
    }

    fn walk(&self) -> Result<Vec<Info>, SnapshotError> {
        let conn = self.db.conn();
        let mut stmt =
            conn.prepare("SELECT s.id, s.key, p.key, s.kind FROM snapshots s LEFT JOIN snapshots p ON s.parent = p.id ORDER BY s.id")?;
        let rows = stmt
            .query_map([], |r| Ok(Info { id: r.get(0)?, key: r.get(1)?, parent: r.get(2)?, kind: Kind::parse(&r.get::<_, String>(3)?) }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
