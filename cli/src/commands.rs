//! `rdock images | tag | rmi | inspect | history | load | save | du | fsck`.

use crate::UsageError;
use anyhow::Context;
use rdock_imagespec::ImageRef;
use rdock_oci::{ArchiveFormat, ImageStore, export_archive, load_archive};
use std::path::Path;

fn images() -> anyhow::Result<ImageStore> {
    Ok(ImageStore::new(crate::open_store()?))
}

fn parse_ref(s: &str) -> anyhow::Result<ImageRef> {
    ImageRef::parse(s).map_err(|e| UsageError(e.to_string()).into())
}

/// `rdock images`.
pub fn list() -> anyhow::Result<()> {
    let images = images()?;
    println!("{:<40} {:<16} {:<14} {:<22} {:>10}", "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE");
    for img in images.list()? {
        let r = ImageRef::parse(&img.name)?;
        let m = images.manifest(&img.manifest)?;
        let cfg = images.config(&m)?;
        let size: u64 = m.layers.iter().map(|l| l.size).sum();
        let repo = r.familiar();
        let repo = repo.rsplit_once(':').map(|(a, _)| a.to_string()).unwrap_or(repo);
        println!(
            "{:<40} {:<16} {:<14} {:<22} {:>10}",
            repo,
            r.tag.clone().unwrap_or_else(|| "<none>".into()),
            &m.config.digest.hex()[..12],
            cfg.created.as_deref().map(|c| c.get(..19).unwrap_or(c)).unwrap_or(""),
            human(size)
        );
    }
    Ok(())
}

/// A byte count for people, in decimal units as docker prints them: `1.5MB`.
pub(crate) fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{n}B") } else { format!("{v:.1}{}", units[u]) }
}

/// `rdock tag SRC DST`.
pub fn tag(src: &str, dst: &str) -> anyhow::Result<()> {
    let images = images()?;
    let d = images.find(src)?;
    images.tag(&parse_ref(dst)?, &d)?;
    Ok(())
}

/// `rdock rmi IMAGE...`.
pub fn rmi(names: &[String]) -> anyhow::Result<()> {
    let images = images()?;
    for n in names {
        if !images.untag(&parse_ref(n)?)? {
            anyhow::bail!("No such image: {n}");
        }
        println!("Untagged: {n}");
    }
    Ok(())
}

/// `rdock inspect IMAGE`: a docker-inspect-like JSON document.
pub fn inspect(name: &str) -> anyhow::Result<()> {
    let images = images()?;
    let d = images.find(name)?;
    let m = images.manifest(&d)?;
    let cfg = images.config(&m)?;
    let tags: Vec<String> = images
        .list()?
        .into_iter()
        .filter(|i| i.manifest == d)
        .map(|i| ImageRef::parse(&i.name).map(|r| r.familiar()).unwrap_or(i.name))
        .collect();
    let doc = serde_json::json!([{
        "Id": m.config.digest,
        "RepoTags": tags,
        "RepoDigests": [],
        "Created": cfg.created,
        "Author": cfg.author,
        "Architecture": cfg.architecture,
        "Os": cfg.os,
        "Config": cfg.config,
        "RootFS": {"Type": "layers", "Layers": cfg.rootfs.diff_ids},
        "Size": m.layers.iter().map(|l| l.size).sum::<u64>(),
        "Descriptor": {"mediaType": m.media_type, "digest": d},
    }]);
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// `rdock history IMAGE`.
pub fn history(name: &str) -> anyhow::Result<()> {
    let images = images()?;
    let d = images.find(name)?;
    let m = images.manifest(&d)?;
    let cfg = images.config(&m)?;
    println!("{:<22} {:<60} {:>10}  COMMENT", "CREATED", "CREATED BY", "SIZE");
    let mut layers = m.layers.iter();
    let mut rows = Vec::new();
    for h in &cfg.history {
        let size = if h.empty_layer { 0 } else { layers.next().map(|l| l.size).unwrap_or(0) };
        rows.push(format!(
            "{:<22} {:<60} {:>10}  {}",
            h.created.as_deref().map(|c| c.get(..19).unwrap_or(c)).unwrap_or(""),
            h.created_by.as_deref().unwrap_or("").chars().take(60).collect::<String>(),
            human(size),
            h.comment.as_deref().unwrap_or("")
        ));
    }
    for r in rows.iter().rev() {
        println!("{r}");
    }
    Ok(())
}

/// `rdock load -i FILE`.
pub fn load(file: &Path) -> anyhow::Result<()> {
    let images = images()?;
    // Blobs are written before the name that keeps them: garbage collection must wait.
    let _lease = images.store().lease()?;
    let loaded = load_archive(&images, file).with_context(|| format!("loading {}", file.display()))?;
    for (name, d) in loaded {
        match name {
            Some(n) => println!("Loaded image: {}", n.familiar()),
            None => println!("Loaded image ID: {d}"),
        }
    }
    Ok(())
}

/// `rdock save -o FILE IMAGE`.
pub fn save(file: &Path, name: &str) -> anyhow::Result<()> {
    let images = images()?;
    let d = images.find(name)?;
    let names = ImageRef::parse(name).map(|r| vec![r]).unwrap_or_default();
    export_archive(&images, &d, &names, ArchiveFormat::Docker, file)?;
    Ok(())
}

/// `rdock fsck`: verifies the store (every blob against its digest, every record against
/// what it names) and fails if anything is inconsistent.
pub fn fsck() -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let mut problems = store.check()?;
    problems.extend(ImageStore::new(store.clone()).referenced()?.problems);
    problems.extend(rdock_solver::CacheStore::new(store.clone())?.check()?);
    for p in &problems {
        println!("{p}");
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} problem{} in the store at {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            store.root().display()
        );
    }
    println!("store at {} is consistent", store.root().display());
    Ok(())
}
