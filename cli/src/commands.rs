//! `rdock images | tag | rmi | inspect | history | load | save | fsck`.

use crate::UsageError;
use crate::format::{human, human_duration, table};
use anyhow::Context;
use rdock_imagespec::{ImageConfig, ImageRef, Manifest, Platform};
use rdock_oci::{ArchiveFormat, ImageStore, export_archive, load_archive};
use std::path::Path;

fn images() -> anyhow::Result<ImageStore> {
    Ok(ImageStore::new(crate::open_store()?))
}

fn parse_ref(s: &str) -> anyhow::Result<ImageRef> {
    ImageRef::parse(s).map_err(|e| UsageError(e.to_string()).into())
}

/// The manifest (for this host's platform) and config of the image `name` names.
pub(crate) fn image(images: &ImageStore, name: &str) -> anyhow::Result<(Manifest, ImageConfig)> {
    let d = images.find(name)?;
    let d = images.platform_manifest(&d, &Platform::host()).unwrap_or(d);
    let m = images.manifest(&d)?;
    let cfg = images.config(&m)?;
    Ok((m, cfg))
}

fn short_time(t: Option<&str>) -> String {
    t.map(|c| c.get(..19).unwrap_or(c).replace('T', " ")).unwrap_or_default()
}

/// `rdock images [--format json]`.
pub fn list(json: bool) -> anyhow::Result<()> {
    let images = images()?;
    let mut rows = Vec::new();
    for img in images.list()? {
        let r = ImageRef::parse(&img.name)?;
        let Ok((m, cfg)) = image(&images, &img.name) else { continue };
        let size: u64 = m.layers.iter().map(|l| l.size).sum();
        let repo = r.familiar();
        let repo = match (&r.tag, &r.digest) {
            (Some(_), None) => repo.rsplit_once(':').map(|(a, _)| a.to_string()).unwrap_or(repo),
            _ => repo,
        };
        let tag = r.tag.clone().unwrap_or_else(|| "<none>".into());
        if json {
            let doc = serde_json::json!({
                "Repository": repo, "Tag": tag, "ID": m.config.digest, "Digest": img.manifest,
                "CreatedAt": cfg.created, "Size": human(size), "SizeBytes": size,
            });
            println!("{doc}");
            continue;
        }
        rows.push(vec![repo, tag, m.config.digest.hex()[..12].to_string(), short_time(cfg.created.as_deref()), human(size)]);
    }
    // Images built without a name, as docker lists them.
    for (d, _) in images.untagged()? {
        let Ok(m) = images.manifest(&d) else { continue };
        let created = images.config(&m).ok().and_then(|c| c.created);
        let size: u64 = m.layers.iter().map(|l| l.size).sum();
        if json {
            let doc = serde_json::json!({
                "Repository": "<none>", "Tag": "<none>", "ID": m.config.digest, "Digest": d,
                "CreatedAt": created, "Size": human(size), "SizeBytes": size,
            });
            println!("{doc}");
            continue;
        }
        rows.push(vec![
            "<none>".into(),
            "<none>".into(),
            m.config.digest.hex()[..12].to_string(),
            short_time(created.as_deref()),
            human(size),
        ]);
    }
    if !json {
        table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
    }
    Ok(())
}

/// `rdock tag SRC DST`.
pub fn tag(src: &str, dst: &str) -> anyhow::Result<()> {
    let images = images()?;
    let d = images.find(src)?;
    images.tag(&parse_ref(dst)?, &d)?;
    Ok(())
}

/// `rdock rmi [-f] IMAGE...`: removes names. The last name of an image a container
/// was made from is kept unless `force` (as `docker rmi` refuses), so that `rdock ps -a`
/// and `rdock commit` still know what the container's layer sits on.
pub fn rmi(names: &[String], force: bool) -> anyhow::Result<()> {
    let images = images()?;
    let mut failures = Vec::new();
    for n in names {
        // An untagged image goes by its ID.
        if let Ok(d) = images.find(n)
            && images.untagged()?.iter().any(|(u, _)| *u == d)
            && ImageRef::parse(n).ok().and_then(|r| images.get(&r).ok().flatten()).is_none()
        {
            images.forget_untagged(&d)?;
            println!("Deleted: {d}");
            continue;
        }
        let r = parse_ref(n)?;
        let Some(d) = images.get(&r)? else {
            failures.push(format!("No such image: {n}"));
            continue;
        };
        let others = images.list()?.into_iter().filter(|i| i.manifest == d && i.name != r.to_string()).count();
        if !force && others == 0 {
            let users = rdock_runtime::Records::new(images.store().db().clone())?.using(&d)?;
            if let Some(c) = users.first() {
                let id = images.manifest(&d).map(|m| m.config.digest.hex()[..12].to_string()).unwrap_or_default();
                failures.push(format!(
                    "conflict: unable to remove repository reference {n:?} (must force) - container {} is using its referenced image {id}",
                    &c[..12]
                ));
                continue;
            }
        }
        images.untag(&r)?;
        println!("Untagged: {}", r.familiar());
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// `rdock inspect NAME...`: images as `docker image inspect` shows them, and containers
/// as `docker container inspect` does; a JSON array either way.
pub fn inspect(names: &[String]) -> anyhow::Result<()> {
    let images = images()?;
    let runtime = rdock_runtime::Runtime::new(images.store().clone())?;
    let mut docs = Vec::new();
    for name in names {
        match images.find(name) {
            Ok(_) => docs.push(image_doc(&images, name)?),
            Err(_) => match runtime.records().find(name) {
                Ok(c) => docs.push(container_doc(&images, &c)?),
                Err(_) => anyhow::bail!("No such object: {name}"),
            },
        }
    }
    println!("{}", serde_json::to_string_pretty(&docs)?);
    Ok(())
}

fn image_doc(images: &ImageStore, name: &str) -> anyhow::Result<serde_json::Value> {
    let d = images.find(name)?;
    let (m, cfg) = image(images, name)?;
    let tags: Vec<String> = images
        .list()?
        .into_iter()
        .filter(|i| i.manifest == d)
        .map(|i| ImageRef::parse(&i.name).map(|r| r.familiar()).unwrap_or(i.name))
        .collect();
    let last_tag = images.list()?.into_iter().filter(|i| i.manifest == d).map(|i| i.created).max();
    let snaps = images.store().snapshots();
    let top = rdock_oci::chain_snapshot_name(&cfg.rootfs.diff_ids);
    let lower = match top.as_deref().map(|t| snaps.layer_dirs(Some(t))) {
        Some(Ok(l)) => l.dirs().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
        _ => String::new(),
    };
    Ok(serde_json::json!({
        "Id": m.config.digest,
        "RepoTags": tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": cfg.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
        "Created": cfg.created,
        "DockerVersion": "",
        "Author": cfg.author.clone().unwrap_or_default(),
        "Config": cfg.config,
        "Architecture": cfg.architecture,
        "Variant": cfg.variant,
        "Os": cfg.os,
        "Size": m.layers.iter().map(|l| l.size).sum::<u64>(),
        "GraphDriver": {"Name": "overlay", "Data": {"LowerDir": lower}},
        "RootFS": {"Type": "layers", "Layers": cfg.rootfs.diff_ids},
        "Metadata": {"LastTagTime": last_tag.map(|t| rdock_imagespec::time::rfc3339(t, 0))},
        "Descriptor": {"mediaType": m.media_type, "digest": d, "size": images.store().content().read(&d).map(|b| b.len()).unwrap_or(0)},
    }))
}

fn container_doc(images: &ImageStore, c: &rdock_runtime::Record) -> anyhow::Result<serde_json::Value> {
    let snaps = images.store().snapshots();
    let upper = snaps.fs_dir(&c.snapshot).map(|p| p.display().to_string()).unwrap_or_default();
    let s = &c.settings;
    Ok(serde_json::json!({
        "Id": c.id,
        "Created": rdock_imagespec::time::rfc3339(c.created, 0),
        "Path": c.command.first(),
        "Args": c.command.get(1..).unwrap_or_default(),
        "State": {
            "Status": c.state,
            "Running": rdock_runtime::Records::is_running(c),
            "ExitCode": c.exit_code.unwrap_or(0),
            "FinishedAt": c.finished.map(|f| rdock_imagespec::time::rfc3339(f, 0)),
        },
        "Image": c.image_id,
        "Name": format!("/{}", c.name),
        "Config": {
            "Hostname": s["Hostname"], "User": s["User"], "Env": s["Env"], "Cmd": c.command, "Image": c.image,
            "WorkingDir": s["WorkingDir"], "Tty": s["Tty"], "OpenStdin": s["OpenStdin"], "StopSignal": s["StopSignal"],
        },
        "HostConfig": {"Binds": s["Binds"], "NetworkMode": s["NetworkMode"], "AutoRemove": c.auto_remove, "Init": s["Init"]},
        "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": upper, "Snapshot": c.snapshot, "Parent": c.parent}},
    }))
}

/// `rdock history IMAGE [--no-trunc] [--format json]`: newest first, as docker prints it.
pub fn history(name: &str, no_trunc: bool, json: bool) -> anyhow::Result<()> {
    let images = images()?;
    let (m, cfg) = image(&images, name)?;
    let mut layers = m.layers.iter();
    let mut rows = Vec::new();
    for h in &cfg.history {
        let size = match h.empty_layer {
            false => match layers.next() {
                Some(l) => images.content_bytes(&l.digest)?,
                None => 0,
            },
            true => 0,
        };
        rows.push((h, size));
    }
    let now = rdock_imagespec::time::unix_now();
    let mut table_rows = Vec::new();
    for (i, (h, size)) in rows.iter().enumerate().rev() {
        let id = if i + 1 == rows.len() { m.config.digest.hex()[..12].to_string() } else { "<missing>".into() };
        let by = h.created_by.clone().unwrap_or_default();
        let since = h.created.as_deref().and_then(rdock_imagespec::time::parse_rfc3339).map(|t| format!("{} ago", human_duration(now - t)));
        if json {
            let doc = serde_json::json!({
                "ID": id, "CreatedAt": h.created, "CreatedSince": since, "CreatedBy": by, "Size": human(*size),
                "SizeBytes": size, "Comment": h.comment.clone().unwrap_or_default(), "EmptyLayer": h.empty_layer,
            });
            println!("{doc}");
            continue;
        }
        let by = if no_trunc || by.chars().count() <= 45 { by } else { format!("{}…", by.chars().take(44).collect::<String>()) };
        table_rows.push(vec![id, since.unwrap_or_default(), by, human(*size), h.comment.clone().unwrap_or_default()]);
    }
    if !json {
        table(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], &table_rows);
    }
    Ok(())
}

/// `rdock load -i FILE`.
pub fn load(file: Option<&Path>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let images = images()?;
    // Blobs are written before the name that keeps them: garbage collection must wait.
    let _lease = images.store().lease()?;
    let loaded = match file {
        Some(f) => load_archive(&images, f).with_context(|| format!("loading {}", f.display()))?,
        None if std::io::stdin().is_terminal() => {
            return Err(UsageError("requested load from standard input, which is a terminal: give -i FILE or redirect".into()).into());
        }
        None => rdock_oci::load_stream(&images, Path::new("standard input"), Box::new(std::io::stdin()))
            .context("loading from standard input")?,
    };
    for (name, d) in loaded {
        match name {
            Some(n) => println!("Loaded image: {}", n.familiar()),
            None => println!("Loaded image ID: {d}"),
        }
    }
    Ok(())
}

/// `rdock save [-o FILE] [--format docker|oci] IMAGE`: to standard output without -o, as
/// docker's, which refuses a terminal.
pub fn save(file: Option<&Path>, name: &str, format: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let format = match format {
        "docker" | "docker-archive" => ArchiveFormat::Docker,
        "oci" | "oci-archive" => ArchiveFormat::Oci,
        f => return Err(UsageError(format!("unknown format {f:?}: docker or oci")).into()),
    };
    let file = match file {
        Some(f) => f,
        None if std::io::stdout().is_terminal() => {
            return Err(UsageError("refusing to write an image archive to a terminal: give -o FILE or redirect".into()).into());
        }
        None => Path::new("-"),
    };
    let images = images()?;
    let d = images.find(name)?;
    let d = images.platform_manifest(&d, &Platform::host()).unwrap_or(d);
    // A name, not an id prefix, is kept in the archive.
    let names = ImageRef::parse(name).ok().filter(|r| images.get(r).ok().flatten().is_some()).map(|r| vec![r]).unwrap_or_default();
    export_archive(&images, &d, &names, format, file).with_context(|| format!("saving {name} to {}", file.display()))?;
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
