//! `rdock layers IMAGE`: what Dive shows, in the terminal. Each layer's tar is read (not
//! its unpacked snapshot, which has lost nothing but would need the layers below to tell
//! a change from an addition) and replayed over the files of the layers below it:
//! - a path not there before is *added*; one that was is *changed*;
//! - a whiteout (`.wh.NAME`) *removes* NAME and all below it; an opaque directory
//!   (`.wh..wh..opq`) removes what lower layers had in it.
//!
//! Waste is every version of a file but the one the image ends with: bytes written and
//! then changed or removed by a later layer. Efficiency is 1 − waste / bytes written.

use rdock_imagespec::{Digest, ImageConfig, Manifest};
use rdock_oci::ImageStore;
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
pub fn analyse(images: &ImageStore, name: &str, m: &Manifest, cfg: &ImageConfig) -> anyhow::Result<ImageReport> {
    let content = images.store().content();
    let mut tree: BTreeMap<String, Version> = BTreeMap::new();
    // Every version of every path: sizes, in layer order (a removal is a version of 0).
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
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
        let reader = content.open_uncompressed(&desc.digest)?;
        let mut archive = tar::Archive::new(reader);
        let mut writes: Vec<(String, Version)> = Vec::new();
        let mut removals: Vec<String> = Vec::new();
        let mut opaque: Vec<String> = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let rel = raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
            if rel.is_empty() || rel == "." {
                continue;
            }
            let path = format!("/{rel}");
            let (dir, base) = path.rsplit_once('/').unwrap_or(("", &path));
            if base == ".wh..wh..opq" {
                opaque.push(if dir.is_empty() { "/".into() } else { dir.to_string() });
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                removals.push(format!("{dir}/{hidden}"));
                continue;
            }
            let kind = entry.header().entry_type();
            let size = if kind.is_file() { entry.header().size()? } else { 0 };
            writes.push((path, Version { size, is_dir: kind.is_dir() }));
        }
        // Removals apply to the layers below, before this layer's own writes.
        let mut removed_here: Vec<(String, u64)> = Vec::new();
        for r in &removals {
            let under = format!("{r}/");
            let gone: Vec<String> = tree.keys().filter(|k| *k == r || k.starts_with(&under)).cloned().collect();
            let bytes: u64 = gone.iter().filter_map(|k| tree.get(k)).map(|v| v.size).sum();
            for g in &gone {
                if let Some(v) = tree.remove(g)
                    && !v.is_dir
                {
                    versions.entry(g.clone()).or_default().push(0);
                }
            }
            removed_here.push((r.clone(), bytes));
        }
        for o in &opaque {
            let under = if o == "/" { "/".to_string() } else { format!("{o}/") };
            let gone: Vec<String> = tree.keys().filter(|k| k.starts_with(&under)).cloned().collect();
            for g in gone {
                if let Some(v) = tree.remove(&g)
                    && !v.is_dir
                {
                    versions.entry(g.clone()).or_default().push(0);
                    removed_here.push((g, v.size));
                }
            }
        }
        for (path, bytes) in removed_here {
            report.removed.push(FileEntry { path, size: bytes });
        }
        for (path, v) in writes {
            let existed = tree.contains_key(&path);
            if !v.is_dir {
                versions.entry(path.clone()).or_default().push(v.size);
                report.size += v.size;
                let e = FileEntry { path: path.clone(), size: v.size };
                if existed { report.changed.push(e) } else { report.added.push(e) }
            }
            tree.insert(path, v);
        }
        layers.push(report);
    }
    let mut total = 0;
    let mut wasted_total = 0;
    let mut inefficiencies = Vec::new();
    for (path, v) in &versions {
        let all: u64 = v.iter().sum();
        total += all;
        let survives = tree.get(path).filter(|t| !t.is_dir).map(|t| t.size).unwrap_or(0);
        let wasted = all - survives.min(all);
        if v.len() > 1 && wasted > 0 {
            inefficiencies.push(Waste { path: path.clone(), count: v.len(), wasted });
        }
        wasted_total += wasted;
    }
    inefficiencies.sort_by(|a, b| b.wasted.cmp(&a.wasted).then(a.path.cmp(&b.path)));
    let final_bytes = tree.values().filter(|v| !v.is_dir).map(|v| v.size).sum();
    Ok(ImageReport {
        image: name.to_string(),
        id: m.config.digest.clone(),
        layers,
        total_bytes: total,
        final_bytes,
        wasted_bytes: wasted_total,
        efficiency: if total == 0 { 1.0 } else { 1.0 - wasted_total as f64 / total as f64 },
        inefficiencies,
    })
}

/// `rdock layers IMAGE [--format json] [--limit N]`.
pub fn layers(name: &str, json: bool, limit: usize) -> anyhow::Result<()> {
    let images = ImageStore::new(crate::open_store()?);
    let (m, cfg) = crate::commands::image(&images, name)?;
    let report = analyse(&images, name, &m, &cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let human = crate::format::human;
    let cap = |n: usize| if limit == 0 { n } else { n.min(limit) };
    for l in &report.layers {
        println!("Layer {} {} {}", l.index, &l.digest.as_str()[..19], human(l.size));
        if !l.created_by.is_empty() {
            println!("  {}", l.created_by);
        }
        let mut lines: Vec<(char, &FileEntry)> = Vec::new();
        lines.extend(l.added.iter().map(|e| ('A', e)));
        lines.extend(l.changed.iter().map(|e| ('M', e)));
        lines.extend(l.removed.iter().map(|e| ('D', e)));
        for (c, e) in lines.iter().take(cap(lines.len())) {
            println!("  {c} {:>9}  {}", human(e.size), e.path);
        }
        if lines.len() > cap(lines.len()) {
            println!("  … and {} more (--limit 0 lists all)", lines.len() - cap(lines.len()));
        }
        println!("  {} added, {} changed, {} removed", l.added.len(), l.changed.len(), l.removed.len());
    }
    println!();
    println!("Total image size:       {}", human(report.final_bytes));
    println!("Potential wasted space: {}", human(report.wasted_bytes));
    println!("Image efficiency score: {:.1} %", report.efficiency * 100.0);
    if !report.inefficiencies.is_empty() {
        println!();
        println!("{:>6} {:>10}  PATH", "COUNT", "WASTED");
        for w in report.inefficiencies.iter().take(cap(report.inefficiencies.len())) {
            println!("{:>6} {:>10}  {}", w.count, human(w.wasted), w.path);
        }
    }
    Ok(())
}
