//! Garbage collection: what the store holds, by kind ([`inventory`], `rdock du`), and
//! freeing it least recently used first ([`prune`], `rdock prune` and the configured cap
//! after every build).
//!
//! What is never removed: blobs a tagged image reaches (its index, manifests, config and
//! layers), and anything a live build uses: [`prune`] takes a proof that the caller holds
//! the store exclusively ([`Store::exclusive`]), which waits for every build's lease.
//! Snapshots are removable (a base image's unpacked layers are unpacked again from its
//! blobs), but without `all` those that hold a tagged image's layers are kept, as BuildKit
//! keeps records shared with images unless asked for everything.

use crate::SolveError;
use crate::cache::{CacheStore, now};
use rdock_imagespec::Digest;
use rdock_oci::ImageStore;
use rdock_snapshotter::lock::FileLock;
use rdock_snapshotter::{Kind, SnapshotError, Snapshotter, Store, disk_usage};
use rusqlite::params;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// What a piece of the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    /// Blobs a tagged image needs.
    Images,
    /// Other blobs: layers of build results, downloads, images no longer tagged.
    Layers,
    /// Snapshot directories: build results and unpacked base-image layers.
    Snapshots,
    /// `RUN --mount=type=cache` directories.
    CacheMounts,
    /// The metadata database.
    Metadata,
}

impl ItemKind {
    /// Every kind, in display order.
    pub const ALL: [ItemKind; 5] = [ItemKind::Images, ItemKind::Layers, ItemKind::Snapshots, ItemKind::CacheMounts, ItemKind::Metadata];

    /// The name `rdock du` prints.
    pub fn label(self) -> &'static str {
        match self {
            ItemKind::Images => "images",
            ItemKind::Layers => "layers",
            ItemKind::Snapshots => "snapshots",
            ItemKind::CacheMounts => "cache mounts",
            ItemKind::Metadata => "metadata",
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Snapshot { id: i64, key: String, parent: Option<i64>, layer_blob: Option<Digest>, depth: usize },
    Blob(Digest),
    CacheMount(PathBuf),
    Metadata,
}

/// One piece of the store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Item {
    /// What it is.
    pub kind: ItemKind,
    /// Snapshot name, blob digest, cache directory or file name.
    pub name: String,
    /// Bytes on disk (allocated blocks).
    pub size: u64,
    /// Unix seconds of last use. A snapshot counts as used whenever a snapshot built on it
    /// is, so parents never go before their children.
    pub last_used: i64,
    /// Holds a tagged image's layer: removed only by `prune --all`.
    pub shared: bool,
    /// Removable by `prune --all` (not needed by a tagged image).
    pub reclaimable: bool,
    #[serde(skip)]
    target: Target,
}

/// Everything in the store.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Every item.
    pub items: Vec<Item>,
    referenced: HashSet<Digest>,
}

/// Totals of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KindUsage {
    /// The kind.
    pub kind: ItemKind,
    /// Bytes on disk.
    pub size: u64,
    /// Bytes `prune --all` would free.
    pub reclaimable: u64,
    /// Number of items.
    pub count: usize,
}

impl Inventory {
    /// Bytes on disk in all.
    pub fn total(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }

    /// Totals per kind, in [`ItemKind::ALL`] order.
    pub fn by_kind(&self) -> Vec<KindUsage> {
        ItemKind::ALL
            .iter()
            .map(|&kind| {
                let of = self.items.iter().filter(|i| i.kind == kind);
                KindUsage {
                    kind,
                    size: of.clone().map(|i| i.size).sum(),
                    reclaimable: of.clone().filter(|i| i.reclaimable).map(|i| i.size).sum(),
                    count: of.count(),
                }
            })
            .collect()
    }
}

fn mtime(p: &std::path::Path) -> i64 {
    std::fs::metadata(p).map(|m| m.mtime()).unwrap_or(0)
}

/// Takes stock of the store. Measures each committed snapshot once (they never change)
/// and every cache mount each time (they do).
pub fn inventory(store: &Store) -> Result<Inventory, SolveError> {
    let referenced = ImageStore::new(store.clone()).referenced()?.blobs;
    let (mut items, blob_used) = snapshot_items(store, &referenced)?;
    items.extend(blob_items(store, &referenced, &blob_used)?);
    items.extend(cache_mount_items(store));
    // The store's reserve (room to recover from a full disk) is counted here too.
    let db: u64 = ["metadata.db", "metadata.db-wal", "metadata.db-shm", rdock_snapshotter::RESERVE_FILE]
        .iter()
        .filter_map(|f| std::fs::metadata(store.root().join(f)).ok())
        .map(|m| m.blocks() * 512)
        .sum();
    items.push(Item {
        kind: ItemKind::Metadata,
        name: "metadata.db".into(),
        size: db,
        last_used: now(),
        shared: false,
        reclaimable: false,
        target: Target::Metadata,
    });
    Ok(Inventory { items, referenced })
}

/// Every snapshot, last used when it or any snapshot above it (or a cache record naming
/// it) was; and each layer blob's last use through its snapshots.
fn snapshot_items(store: &Store, referenced: &HashSet<Digest>) -> Result<(Vec<Item>, HashMap<Digest, i64>), SolveError> {
    // The cache table may not exist yet in a store that never built.
    let _ = CacheStore::new(store.clone())?;
    let cache_used: HashMap<String, i64> = {
        let conn = store.db().conn();
        let mut stmt = conn.prepare("SELECT snapshot, MAX(last_used) FROM cache GROUP BY snapshot")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
    };
    let snaps = store.snapshots();
    let records = snaps.records()?;
    // Ids grow from parent to child, so one pass down gives depths and one pass up
    // carries each child's last use to its parents.
    let pos: HashMap<i64, usize> = records.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let parent_of = |r: &rdock_snapshotter::SnapshotRecord| r.parent.as_ref().and_then(|p| pos.get(p)).copied();
    let mut depth = vec![0usize; records.len()];
    let mut used: Vec<i64> =
        records.iter().map(|r| r.created.max(r.last_used.unwrap_or(0)).max(cache_used.get(&r.key).copied().unwrap_or(0))).collect();
    for (i, r) in records.iter().enumerate() {
        if let Some(p) = parent_of(r) {
            depth[i] = depth[p] + 1;
        }
    }
    for (i, r) in records.iter().enumerate().rev() {
        if let Some(p) = parent_of(r) {
            used[p] = used[p].max(used[i]);
        }
    }
    let mut items = Vec::new();
    let mut blob_used: HashMap<Digest, i64> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(b) = &r.layer_blob {
            let e = blob_used.entry(b.clone()).or_insert(0);
            *e = (*e).max(used[i]);
        }
        items.push(Item {
            kind: ItemKind::Snapshots,
            name: r.key.clone(),
            size: snaps.measure(r)?,
            last_used: used[i],
            shared: r.layer_blob.as_ref().is_some_and(|b| referenced.contains(b)),
            // Active snapshots belong to a build or container that is running.
            reclaimable: r.kind == Kind::Committed,
            target: Target::Snapshot { id: r.id, key: r.key.clone(), parent: r.parent, layer_blob: r.layer_blob.clone(), depth: depth[i] },
        });
    }
    Ok((items, blob_used))
}

/// Every blob: an image's (kept), or a layer no image needs.
fn blob_items(store: &Store, referenced: &HashSet<Digest>, blob_used: &HashMap<Digest, i64>) -> Result<Vec<Item>, SolveError> {
    let blobs = store.root().join("blobs/sha256");
    let mut items = Vec::new();
    for e in std::fs::read_dir(&blobs).map_err(|e| SnapshotError::io(&blobs, e))?.flatten() {
        let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())) else { continue };
        let Ok(md) = e.metadata() else { continue };
        let needed = referenced.contains(&d);
        items.push(Item {
            kind: if needed { ItemKind::Images } else { ItemKind::Layers },
            name: d.to_string(),
            size: md.blocks() * 512,
            last_used: blob_used.get(&d).copied().unwrap_or(md.mtime()),
            shared: needed,
            reclaimable: !needed,
            target: Target::Blob(d),
        });
    }
    Ok(items)
}

/// Every `RUN --mount=type=cache` directory.
fn cache_mount_items(store: &Store) -> Vec<Item> {
    let Ok(rd) = std::fs::read_dir(store.root().join("cache")) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let p = e.path();
            Item {
                kind: ItemKind::CacheMounts,
                name: e.file_name().to_string_lossy().into_owned(),
                size: disk_usage(&p),
                last_used: mtime(&p),
                shared: false,
                reclaimable: true,
                target: Target::CacheMount(p),
            }
        })
        .collect()
}

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Also snapshots holding tagged images' layers (never the images' blobs).
    pub all: bool,
    /// Stop once the store uses at most this many bytes (least recently used go first).
    pub keep_storage: Option<u64>,
    /// Only what was last used longer ago than this.
    pub until: Option<Duration>,
}

/// What a prune did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    /// What was removed: kind, name, bytes.
    pub removed: Vec<(ItemKind, String, u64)>,
    /// Bytes in use before.
    pub total_before: u64,
    /// Bytes in use after.
    pub total_after: u64,
}

impl PruneReport {
    /// Bytes freed.
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|r| r.2).sum()
    }
}

/// Frees space, least recently used first, children before their parents. `_exclusive`
/// proves no build is running ([`Store::exclusive`]).
pub fn prune(store: &Store, opts: &PruneOptions, _exclusive: &FileLock) -> Result<PruneReport, SolveError> {
    let inv = inventory(store)?;
    let mut p = Pruner::new(store, &inv);
    let cutoff = opts.until.map(|d| now() - d.as_secs() as i64);
    // Children before parents (deeper first); times have a resolution of one second,
    // and within one second snapshots go in the order they were made.
    let order = |it: &Item| match &it.target {
        Target::Snapshot { depth, id, .. } => (std::cmp::Reverse(*depth), *id),
        _ => (std::cmp::Reverse(0), 0),
    };
    let mut candidates: Vec<&Item> =
        inv.items.iter().filter(|i| i.reclaimable && (opts.all || !i.shared) && cutoff.is_none_or(|c| i.last_used < c)).collect();
    candidates.sort_by_key(|i| (i.last_used, order(i)));
    for it in candidates {
        if opts.keep_storage.is_some_and(|cap| p.total <= cap) {
            break;
        }
        match &it.target {
            Target::Snapshot { id, key, parent, layer_blob, .. } => p.snapshot(it, *id, key, *parent, layer_blob.as_ref())?,
            Target::Blob(d) => p.orphan_blob(it, d)?,
            Target::CacheMount(path) => {
                std::fs::remove_dir_all(path).map_err(|e| SnapshotError::io(path, e))?;
                let _ = std::fs::remove_file(PathBuf::from(format!("{}.lock", path.display())));
                p.removed(ItemKind::CacheMounts, it.name.clone(), it.size);
            }
            Target::Metadata => {}
        }
    }
    // Records about what is gone. Skipped when a cap was already met: the collection
    // after every build must cost next to nothing when it has nothing to do.
    if !p.report.removed.is_empty() || opts.keep_storage.is_none() {
        crate::explain::prune_records(store)?;
        crate::statcache::prune_records(store)?;
        // Hand the WAL's pages back to the file system.
        let _ = store.db().conn().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }
    p.report.total_after = p.total;
    Ok(p.report)
}

/// A prune under way: what is left, and who still uses each snapshot and blob.
struct Pruner<'a> {
    store: &'a Store,
    referenced: &'a HashSet<Digest>,
    total: u64,
    report: PruneReport,
    /// Children per snapshot id: a snapshot goes only once it has none.
    children: HashMap<i64, usize>,
    /// Snapshots per layer blob: a blob goes with the last of them.
    blob_users: HashMap<&'a Digest, usize>,
    blob_size: HashMap<&'a Digest, u64>,
    removed_blobs: HashSet<Digest>,
}

impl<'a> Pruner<'a> {
    fn new(store: &'a Store, inv: &'a Inventory) -> Pruner<'a> {
        let total = inv.total();
        let mut p = Pruner {
            store,
            referenced: &inv.referenced,
            total,
            report: PruneReport { total_before: total, ..Default::default() },
            children: HashMap::new(),
            blob_users: HashMap::new(),
            blob_size: HashMap::new(),
            removed_blobs: HashSet::new(),
        };
        for it in &inv.items {
            match &it.target {
                Target::Snapshot { parent, layer_blob, .. } => {
                    if let Some(parent) = parent {
                        *p.children.entry(*parent).or_default() += 1;
                    }
                    if let Some(b) = layer_blob {
                        *p.blob_users.entry(b).or_default() += 1;
                    }
                }
                Target::Blob(d) => drop(p.blob_size.insert(d, it.size)),
                _ => {}
            }
        }
        p
    }

    fn removed(&mut self, kind: ItemKind, name: String, size: u64) {
        self.total = self.total.saturating_sub(size);
        self.report.removed.push((kind, name, size));
    }

    /// Removes a snapshot without children, its cache records first (a record never names
    /// a missing snapshot), and its layer blob unless an image or another snapshot has it.
    fn snapshot(&mut self, it: &Item, id: i64, key: &str, parent: Option<i64>, layer_blob: Option<&Digest>) -> Result<(), SolveError> {
        if self.children.get(&id).copied().unwrap_or(0) > 0 {
            return Ok(());
        }
        self.store.db().conn().execute("DELETE FROM cache WHERE snapshot = ?1", params![key])?;
        if let Some(b) = layer_blob
            && self.referenced.contains(b)
            && !self.store.content().has_file(b)
        {
            // The snapshot is the only copy of a layer an image needs (its tar is made from
            // it when read): the tar is written out before the snapshot goes.
            self.store.content().ensure(b)?;
        }
        match self.store.snapshots().remove(key) {
            Ok(()) => {}
            Err(SnapshotError::InUse(_)) | Err(SnapshotError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.removed(ItemKind::Snapshots, key.to_string(), it.size);
        if let Some(n) = parent.and_then(|p| self.children.get_mut(&p)) {
            *n -= 1;
        }
        let Some(b) = layer_blob else { return Ok(()) };
        let Some(n) = self.blob_users.get_mut(b) else { return Ok(()) };
        *n -= 1;
        if *n == 0 && !self.referenced.contains(b) && remove_blob(self.store, b)? {
            let size = self.blob_size.get(b).copied().unwrap_or(0);
            self.removed(ItemKind::Layers, b.to_string(), size);
            self.removed_blobs.insert(b.clone());
        }
        Ok(())
    }

    /// Removes a blob no snapshot has as its layer (one that is goes with that snapshot).
    fn orphan_blob(&mut self, it: &Item, d: &Digest) -> Result<(), SolveError> {
        if self.removed_blobs.contains(d) || self.blob_users.get(d).copied().unwrap_or(0) > 0 {
            return Ok(());
        }
        if remove_blob(self.store, d)? {
            self.removed(ItemKind::Layers, d.to_string(), it.size);
        }
        Ok(())
    }
}

fn remove_blob(store: &Store, d: &Digest) -> Result<bool, SolveError> {
    let p = store.content().path(d);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SnapshotError::io(p, e).into()),
    }
}
