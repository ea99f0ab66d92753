//! Layer analysis, what Dive shows: each layer's tar is read (not
//! its unpacked snapshot, which has lost nothing but would need the layers below to tell
//! a change from an addition) and replayed over the files of the layers below it:
//! - a path not there before is *added*; one that was is *changed*;
//! - a whiteout (`.wh.NAME`) *removes* NAME and all below it; an opaque directory
//!   (`.wh..wh..opq`) removes what lower layers had in it.
//!
//! Waste is every version of a file but the one the image ends with: bytes written and
//! then changed or removed by a later layer. Efficiency is 1 − waste / bytes written.

use crate::{ImageStore, OciError};
use rdock_imagespec::{Digest, ImageConfig, Manifest};
use serde::Serialize;
use std::collections::BTreeMap;

/// One file in a layer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path.
    pub path: String,
    /// Bytes (0 for directories, links and removals).
    pub size: u64,
}

/// What one layer does.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// 1-based, bottom first.
    pub index: usize,
    /// Blob digest.
    pub digest: Digest,
    /// Uncompressed digest.
    pub diff_id: Option<Digest>,
    /// The history entry's created-by.
    pub created_by: String,
    /// Bytes of the files the layer writes.
    pub size: u64,
    /// New paths (files and links; directories only if empty of anything listed).
    pub added: Vec<FileEntry>,
    /// Paths an earlier layer had, written again.
    pub changed: Vec<FileEntry>,
    /// Paths removed (with the bytes they held).
    pub removed: Vec<FileEntry>,
}

/// A path written more than once, or written and removed.
#[derive(Debug, Clone, Serialize)]
pub struct Waste {
    /// Path.
    pub path: String,
    /// How many layers wrote or removed it.
    pub count: usize,
    /// Bytes of the versions that do not survive.
    pub wasted: u64,
}

/// The whole analysis.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// As named.
    pub image: String,
    /// Config digest.
    pub id: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerReport>,
    /// Bytes of all file versions of all layers.
    pub total_bytes: u64,
    /// Bytes of the image's final files.
    pub final_bytes: u64,
    /// Bytes written and later changed or removed.
    pub wasted_bytes: u64,
    /// 1 − wasted / total (1 for an image with no bytes).
    pub efficiency: f64,
    /// Worst first.
    pub inefficiencies: Vec<Waste>,
}

struct Version {
    size: u64,
    is_dir: bool,
}

/// Analyses the image with manifest `m` and config `cfg`.
pub fn analyse(images: &ImageStore, name: &str, m: &Manifest, cfg: &ImageConfig) -> Result<ImageReport, OciError> {
    let mut files = Files::default();
    let created_by: Vec<String> = cfg.history.iter().filter(|h| !h.empty_layer).map(|h| h.created_by.clone().unwrap_or_default()).collect();
    let mut layers = Vec::new();
    for (i, desc) in m.layers.iter().enumerate() {
        let mut report = LayerReport {
            index: i + 1,
            digest: desc.digest.clone(),
            diff_id: cfg.rootfs.diff_ids.get(i).cloned(),
            created_by: created_by.get(i).cloned().unwrap_or_default(),
            size: 0,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
        };
        let entries = read_layer(images, &desc.digest)?;
        // Removals apply to the layers below, before this layer's own writes.
        files.remove(&entries, &mut report);
        files.write(entries.writes, &mut report);
        layers.push(report);
    }
    Ok(files.report(name, &m.config.digest, layers))
}

/// What one layer's tar does, in its own order.
#[derive(Default)]
struct LayerEntries {
    writes: Vec<(String, Version)>,
    /// Whiteouts: paths removed with everything under them.
    removals: Vec<String>,
    /// Opaque directories: what lower layers had in them is gone.
    opaque: Vec<String>,
}

fn read_layer(images: &ImageStore, digest: &Digest) -> Result<LayerEntries, OciError> {
    let io = |e| OciError::Io(std::path::PathBuf::from(digest.to_string()), e);
    let reader = images.store().content().open_uncompressed(digest)?;
    let mut archive = tar::Archive::new(reader);
    let mut out = LayerEntries::default();
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let raw = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let rel = raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
        if rel.is_empty() || rel == "." {
            continue;
        }
        let path = format!("/{rel}");
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", &path));
        if base == ".wh..wh..opq" {
            out.opaque.push(if dir.is_empty() { "/".into() } else { dir.to_string() });
            continue;
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            out.removals.push(format!("{dir}/{hidden}"));
            continue;
        }
        let kind = entry.header().entry_type();
        let size = if kind.is_file() { entry.header().size().map_err(io)? } else { 0 };
        out.writes.push((path, Version { size, is_dir: kind.is_dir() }));
    }
    Ok(out)
}

/// The image's files as the layers so far leave them, and every version each path had.
#[derive(Default)]
struct Files {
    tree: BTreeMap<String, Version>,
    /// Sizes in layer order; a removal is a version of 0.
    versions: BTreeMap<String, Vec<u64>>,
}

impl Files {
    fn remove(&mut self, layer: &LayerEntries, report: &mut LayerReport) {
        for r in &layer.removals {
            let under = format!("{r}/");
            let gone: Vec<String> = self.tree.keys().filter(|k| *k == r || k.starts_with(&under)).cloned().collect();
            let bytes: u64 = gone.iter().filter_map(|k| self.tree.get(k)).map(|v| v.size).sum();
            for g in &gone {
                self.drop_path(g);
            }
            report.removed.push(FileEntry { path: r.clone(), size: bytes });
        }
        for o in &layer.opaque {
            let under = if o == "/" { "/".to_string() } else { format!("{o}/") };
            let gone: Vec<String> = self.tree.keys().filter(|k| k.starts_with(&under)).cloned().collect();
            for g in gone {
                if let Some(size) = self.drop_path(&g) {
                    report.removed.push(FileEntry { path: g, size });
                }
            }
        }
    }

    /// Removes a path; returns its size if it was a file (a version of 0 is recorded).
    fn drop_path(&mut self, path: &str) -> Option<u64> {
        let v = self.tree.remove(path)?;
        if v.is_dir {
            return None;
        }
        self.versions.entry(path.to_string()).or_default().push(0);
        Some(v.size)
    }

    fn write(&mut self, writes: Vec<(String, Version)>, report: &mut LayerReport) {
        for (path, v) in writes {
            let existed = self.tree.contains_key(&path);
            if !v.is_dir {
                self.versions.entry(path.clone()).or_default().push(v.size);
                report.size += v.size;
                let e = FileEntry { path: path.clone(), size: v.size };
                if existed { report.changed.push(e) } else { report.added.push(e) }
            }
            self.tree.insert(path, v);
        }
    }

    fn report(&self, name: &str, id: &Digest, layers: Vec<LayerReport>) -> ImageReport {
        let mut total = 0;
        let mut wasted_total = 0;
        let mut inefficiencies = Vec::new();
        for (path, v) in &self.versions {
            let all: u64 = v.iter().sum();
            total += all;
            let survives = self.tree.get(path).filter(|t| !t.is_dir).map(|t| t.size).unwrap_or(0);
            let wasted = all - survives.min(all);
            if v.len() > 1 && wasted > 0 {
                inefficiencies.push(Waste { path: path.clone(), count: v.len(), wasted });
            }
            wasted_total += wasted;
        }
        inefficiencies.sort_by(|a, b| b.wasted.cmp(&a.wasted).then(a.path.cmp(&b.path)));
        let final_bytes = self.tree.values().filter(|v| !v.is_dir).map(|v| v.size).sum();
        ImageReport {
            image: name.to_string(),
            id: id.clone(),
            layers,
            total_bytes: total,
            final_bytes,
            wasted_bytes: wasted_total,
            efficiency: if total == 0 { 1.0 } else { 1.0 - wasted_total as f64 / total as f64 },
            inefficiencies,
        }
    }
}
