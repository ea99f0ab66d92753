//! Two images compared file by file, for `rdock verify`: which parts of the config differ,
//! and for each layer that differs, which files and how (content, mode, owner, time,
//! xattrs, type, link target, present on one side only), in the manner of diffoscope's
//! summary. The images may live in different stores.

use crate::{ImageStore, OciError};
use rdock_imagespec::Digest;
use std::collections::BTreeMap;
use std::io::Read;

/// How two images differ; empty lists when they are the same image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDiff {
    /// Config keys whose values differ (`created`, `history`, `config.Env`, …).
    pub config: Vec<String>,
    /// Layers whose content differs, by position.
    pub layers: Vec<LayerDiff>,
    /// The images have different numbers of layers.
    pub layer_counts: Option<(usize, usize)>,
}

/// One layer's differences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDiff {
    /// Its position, 0 the base.
    pub index: usize,
    /// What made it (the history entry's `created_by`), when known.
    pub created_by: String,
    /// Files that differ, with how.
    pub files: Vec<(String, Vec<String>)>,
}

/// What a layer says of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: u8,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    content: [u8; 32],
    link: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn entries(images: &ImageStore, layer: &Digest) -> Result<BTreeMap<String, Entry>, OciError> {
    let io = |e: std::io::Error| OciError::Io(layer.to_string().into(), e);
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(images.store().content().open_uncompressed(layer)?);
    for e in archive.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        let path = e.path().map_err(io)?.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().map_err(io)? {
            for x in exts.flatten() {
                if let Ok(k) = x.key()
                    && let Some(name) = k.strip_prefix("SCHILY.xattr.")
                {
                    xattrs.insert(name.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        let h = e.header();
        let link = e.link_name().map_err(io)?.map(|l| l.to_string_lossy().into_owned());
        let (kind, mode, owner, mtime) =
            (h.entry_type().as_byte(), h.mode().unwrap_or(0), (h.uid().unwrap_or(0), h.gid().unwrap_or(0)), h.mtime().unwrap_or(0));
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = e.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
        }
        out.insert(path, Entry { kind, mode, owner, mtime, content: sha2::Digest::finalize(hasher).into(), link, xattrs });
    }
    Ok(out)
}

/// How `a` and `b` differ, in words.
fn how(a: &Entry, b: &Entry) -> Vec<String> {
    let mut v = Vec::new();
    if a.kind != b.kind {
        v.push("type".to_string());
    }
    if a.content != b.content {
        v.push("content".to_string());
    }
    if a.mode != b.mode {
        v.push(format!("mode {:o} vs {:o}", a.mode, b.mode));
    }
    if a.owner != b.owner {
        v.push(format!("owner {}:{} vs {}:{}", a.owner.0, a.owner.1, b.owner.0, b.owner.1));
    }
    if a.mtime != b.mtime {
        v.push(format!("time {} vs {}", a.mtime, b.mtime));
    }
    if a.link != b.link {
        v.push("link target".to_string());
    }
    if a.xattrs != b.xattrs {
        v.push("xattrs".to_string());
    }
    v
}

/// The files of two layers that differ.
fn layer_files(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (p, ea) in a {
        match b.get(p) {
            None => out.push((p.clone(), vec!["only in the first".to_string()])),
            Some(eb) if ea != eb => out.push((p.clone(), how(ea, eb))),
            Some(_) => {}
        }
    }
    out.extend(b.keys().filter(|p| !a.contains_key(*p)).map(|p| (p.clone(), vec!["only in the second".to_string()])));
    out
}

/// The config keys (and `config.` keys) whose values differ.
fn config_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let mut keys = Vec::new();
    let (Some(ao), Some(bo)) = (a.as_object(), b.as_object()) else { return vec!["(the whole config)".into()] };
    let mut all: Vec<&String> = ao.keys().chain(bo.keys()).collect();
    all.sort();
    all.dedup();
    for k in all {
        match (ao.get(k), bo.get(k)) {
            (Some(x), Some(y)) if k == "config" && x != y => keys.extend(config_keys(x, y).into_iter().map(|s| format!("config.{s}"))),
            (x, y) if x != y => keys.push(k.clone()),
            _ => {}
        }
    }
    keys
}

/// Compares the image with manifest `a` in `ia` with the one with manifest `b` in `ib`.
pub fn compare_images(ia: &ImageStore, a: &Digest, ib: &ImageStore, b: &Digest) -> Result<ImageDiff, OciError> {
    let (ma, mb) = (ia.manifest(a)?, ib.manifest(b)?);
    let (ca, cb) = (ia.store().content().read(&ma.config.digest)?, ib.store().content().read(&mb.config.digest)?);
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| OciError::json("config", e));
    let (ja, jb) = (json(&ca)?, json(&cb)?);
    let mut diff = ImageDiff { config: config_keys(&ja, &jb), ..Default::default() };
    if ma.layers.len() != mb.layers.len() {
        diff.layer_counts = Some((ma.layers.len(), mb.layers.len()));
    }
    let history: Vec<String> = ja["history"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["empty_layer"] != true).map(|e| e["created_by"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    for (i, (la, lb)) in ma.layers.iter().zip(&mb.layers).enumerate() {
        let (da, db) = (&ja["rootfs"]["diff_ids"][i], &jb["rootfs"]["diff_ids"][i]);
        if la.digest == lb.digest || (da.is_string() && da == db) {
            continue;
        }
        let files = layer_files(&entries(ia, &la.digest)?, &entries(ib, &lb.digest)?);
        diff.layers.push(LayerDiff { index: i, created_by: history.get(i).cloned().unwrap_or_default(), files });
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mtime: u64, content: u8) -> Entry {
        Entry { kind: b'0', mode: 0o644, owner: (0, 0), mtime, content: [content; 32], link: None, xattrs: BTreeMap::new() }
    }

    #[test]
    fn files_are_told_apart_by_how_they_differ() {
        let a = BTreeMap::from([("x".to_string(), entry(1, 1)), ("gone".to_string(), entry(1, 1)), ("same".to_string(), entry(5, 5))]);
        let b = BTreeMap::from([("x".to_string(), entry(2, 9)), ("new".to_string(), entry(1, 1)), ("same".to_string(), entry(5, 5))]);
        let d = layer_files(&a, &b);
        assert_eq!(
            d,
            vec![
                ("gone".to_string(), vec!["only in the first".to_string()]),
                ("x".to_string(), vec!["content".to_string(), "time 1 vs 2".to_string()]),
                ("new".to_string(), vec!["only in the second".to_string()]),
            ]
        );
        let ja = serde_json::json!({"created": "a", "config": {"Env": ["A=1"], "Cmd": ["sh"]}});
        let jb = serde_json::json!({"created": "b", "config": {"Env": ["A=2"], "Cmd": ["sh"]}});
        assert_eq!(config_keys(&ja, &jb), vec!["config.Env", "created"]);
    }
}
