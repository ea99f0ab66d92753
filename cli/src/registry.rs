//! Registries from the command line: `rdock pull`, `push`, `login` and `logout`; the
//! `--import-cache`/`--export-cache` (and docker's `--cache-from`/`--cache-to`) specs; and
//! the progress lines of transfers.

use crate::UsageError;
use anyhow::Context;
use rdock_imagespec::{ImageRef, Platform};
use rdock_oci::{ImageStore, OnTransfer, Transfer};
use rdock_registry::{Client, Credentials, Options};
use rdock_solver::remote::CacheMode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A client for this process: plain HTTP for loopback registries and `insecure` hosts.
/// `RDOCK_REGISTRY_CHUNK_SIZE` (bytes) sets the size above which uploads go in chunks.
pub fn client(insecure: &[String]) -> Arc<Client> {
    let mut opts = Options { insecure: insecure.to_vec(), ..Options::default() };
    if let Some(n) = std::env::var("RDOCK_REGISTRY_CHUNK_SIZE").ok().and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > 0) {
        opts.chunk_size = n;
    }
    Arc::new(Client::new(opts))
}

/// Prints a line per blob as it finishes (`sha256:0123456789ab: downloaded 3.2 MB`), and,
/// on a terminal, the bytes of the blobs in flight on one updating line.
pub fn printer(quiet: bool) -> OnTransfer {
    if quiet {
        return rdock_oci::quiet();
    }
    let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    let inflight: Mutex<HashMap<String, (u64, u64)>> = Mutex::new(HashMap::new());
    Arc::new(move |t: Transfer<'_>| {
        let mut map = inflight.lock().unwrap_or_else(|p| p.into_inner());
        match t {
            Transfer::Bytes(d, n) => {
                map.insert(d.digest.to_string(), (n, d.size));
                if tty {
                    let (done, total) = map.values().fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
                    eprint!("\r\x1b[2K  downloading {} / {}", crate::format::human(done), crate::format::human(total));
                }
            }
            Transfer::Done(d, how) => {
                map.remove(d.digest.as_str());
                let short = &d.digest.as_str()[..d.digest.as_str().len().min(19)];
                if tty {
                    eprint!("\r\x1b[2K");
                }
                eprintln!("{short}: {how} {}", crate::format::human(d.size));
            }
        }
    })
}

/// `rdock pull REF`.
pub fn pull(reference: &str, platform: Option<&str>, quiet: bool) -> anyhow::Result<()> {
    let r = ImageRef::parse(reference).map_err(|e| UsageError(e.to_string()))?;
    let platform = match platform {
        Some(p) => crate::format::parse_platform(p)?,
        None => Platform::host(),
    };
    let store = crate::open_store()?;
    let _lease = store.lease()?;
    let images = ImageStore::new(store);
    let client = client(&[]);
    let started = std::time::Instant::now();
    let resolved = rdock_oci::pull(&images, &client, &r, &platform, printer(quiet)).with_context(|| format!("pulling {}", r.familiar()))?;
    if !quiet {
        eprintln!("pulled in {:.2}s", started.elapsed().as_secs_f64());
    }
    println!("Digest: {}", resolved.top);
    println!("{}", r.familiar());
    Ok(())
}

/// `rdock push REF`: the image tagged REF in the local store.
pub fn push(reference: &str, quiet: bool) -> anyhow::Result<()> {
    let r = ImageRef::parse(reference).map_err(|e| UsageError(e.to_string()))?;
    let store = crate::open_store()?;
    let _lease = store.lease()?;
    let images = ImageStore::new(store);
    let d = images.get(&r)?.ok_or_else(|| {
        anyhow::anyhow!("image {} not found in the local store (build it with -t, or `rdock tag` an image with that name)", r.familiar())
    })?;
    let report = push_image(&images, &client(&[]), &r, &d, quiet)?;
    println!("{}: digest: {} size: {}", r.tag.as_deref().unwrap_or("latest"), report.digest, report.size);
    Ok(())
}

/// Pushes the local image `d` as `r`, with progress on stderr.
pub fn push_image(
    images: &ImageStore,
    client: &Arc<Client>,
    r: &ImageRef,
    d: &rdock_imagespec::Digest,
    quiet: bool,
) -> anyhow::Result<rdock_oci::PushReport> {
    let started = std::time::Instant::now();
    let report = rdock_oci::push(images, client, r, d, &printer(quiet)).with_context(|| format!("pushing {}", r.familiar()))?;
    if !quiet {
        eprintln!("{}", report.summary(r, started.elapsed()));
    }
    Ok(report)
}

/// The registry host of a `login`/`logout` argument (`https://host/` and `host/path` too).
fn server_host(server: Option<&str>) -> String {
    let s = server.unwrap_or("docker.io");
    let s = s.trim_start_matches("https://").trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    if host == "index.docker.io" || host == "registry-1.docker.io" { "docker.io".into() } else { host.to_string() }
}

/// `rdock login [-u USER] [-p PASS | --password-stdin] [SERVER]`: checks the credentials
/// against the registry (`/v2/`, through its token server if it has one) and stores them
/// in docker's credentials file.
pub fn login(server: Option<&str>, username: Option<String>, password: Option<String>, password_stdin: bool) -> anyhow::Result<()> {
    let host = server_host(server);
    let username = match username {
        Some(u) => u,
        None => return Err(UsageError("rdock login needs -u USER (it does not prompt)".into()).into()),
    };
    let secret = match (password, password_stdin) {
        (Some(_), true) => return Err(UsageError("--password and --password-stdin are exclusive".into()).into()),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading the password from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => return Err(UsageError("rdock login needs --password-stdin or -p (it does not prompt)".into()).into()),
    };
    let creds = Credentials { username, secret };
    let client = Client::new(Options { credentials: Some((host.clone(), creds.clone())), ..Options::default() });
    client.ping(&host).with_context(|| format!("logging in to {host}"))?;
    let path = rdock_registry::credentials::store(&host, &creds)?;
    eprintln!("credentials stored in {}", path.display());
    println!("Login Succeeded");
    Ok(())
}

/// `rdock logout [SERVER]`.
pub fn logout(server: Option<&str>) -> anyhow::Result<()> {
    let host = server_host(server);
    if rdock_registry::credentials::erase(&host)? {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(())
}

pub use rdock_builder::{CacheExportSpec, CacheLocation};

fn kv(spec: &str) -> Vec<(String, String)> {
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (p.trim().to_string(), String::new()),
        })
        .collect()
}

fn location(flag: &str, spec: &str, m: &HashMap<String, String>, dir_key: &str) -> anyhow::Result<CacheLocation> {
    let ty = m.get("type").map(String::as_str).unwrap_or("registry");
    match ty {
        "registry" => {
            let r = m.get("ref").ok_or_else(|| UsageError(format!("{flag} {spec}: ref= is required for type=registry")))?;
            Ok(CacheLocation::Registry(ImageRef::parse(r).map_err(|e| UsageError(format!("{flag} {spec}: {e}")))?))
        }
        "local" => {
            let d = m.get(dir_key).ok_or_else(|| UsageError(format!("{flag} {spec}: {dir_key}= is required for type=local")))?;
            Ok(CacheLocation::Local { dir: PathBuf::from(d), tag: m.get("tag").cloned().unwrap_or_else(|| "latest".into()) })
        }
        "inline" | "gha" | "s3" | "azblob" => {
            Err(UsageError(format!("{flag} {spec}: cache type {ty} is not supported (registry and local are)")).into())
        }
        other => Err(UsageError(format!("{flag} {spec}: unknown cache type {other:?} (expected registry or local)")).into()),
    }
}

/// Parses `type=registry,ref=REF[,mode=min|max][,cache-mounts=true]` or
/// `type=local,dest=DIR[,…]`; a bare `REF` is a registry ref (docker's `--cache-to REF`).
pub fn parse_cache_export(flag: &str, spec: &str) -> anyhow::Result<CacheExportSpec> {
    let spec_kv: HashMap<String, String> =
        if spec.contains('=') { kv(spec).into_iter().collect() } else { HashMap::from([("ref".to_string(), spec.to_string())]) };
    for k in spec_kv.keys() {
        if ![
            "type",
            "ref",
            "dest",
            "mode",
            "cache-mounts",
            "tag",
            "registry.insecure",
            "compression",
            "oci-mediatypes",
            "image-manifest",
            "ignore-error",
        ]
        .contains(&k.as_str())
        {
            return Err(UsageError(format!("{flag} {spec}: unknown attribute {k:?}")).into());
        }
    }
    let to = location(flag, spec, &spec_kv, "dest")?;
    let mode = match spec_kv.get("mode").map(String::as_str) {
        None | Some("min") => CacheMode::Min,
        Some("max") => CacheMode::Max,
        Some(m) => return Err(UsageError(format!("{flag} {spec}: mode={m}: expected min or max")).into()),
    };
    let mounts = match spec_kv.get("cache-mounts").map(String::as_str) {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(v) => return Err(UsageError(format!("{flag} {spec}: cache-mounts={v}: expected true or false")).into()),
    };
    Ok(CacheExportSpec { to, mode, mounts })
}

/// Parses `type=registry,ref=REF` or `type=local,src=DIR`; a bare `REF` is a registry ref
/// (docker's `--cache-from REF`).
pub fn parse_cache_import(flag: &str, spec: &str) -> anyhow::Result<CacheLocation> {
    let m: HashMap<String, String> =
        if spec.contains('=') { kv(spec).into_iter().collect() } else { HashMap::from([("ref".to_string(), spec.to_string())]) };
    location(flag, spec, &m, "src")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cache_specs() {
        let s = parse_cache_export("--export-cache", "type=registry,ref=127.0.0.1:5000/c:main,mode=max,cache-mounts=true").unwrap();
        assert_eq!(s.mode, CacheMode::Max);
        assert!(s.mounts);
        assert_eq!(s.to, CacheLocation::Registry(ImageRef::parse("127.0.0.1:5000/c:main").unwrap()));
        let s = parse_cache_export("--cache-to", "type=local,dest=/tmp/c").unwrap();
        assert_eq!((s.mode, s.mounts), (CacheMode::Min, false));
        assert_eq!(s.to, CacheLocation::Local { dir: "/tmp/c".into(), tag: "latest".into() });
        assert_eq!(
            parse_cache_import("--cache-from", "127.0.0.1:5000/c").unwrap(),
            CacheLocation::Registry(ImageRef::parse("127.0.0.1:5000/c").unwrap())
        );
        assert!(parse_cache_export("--export-cache", "type=registry").is_err());
        assert!(parse_cache_export("--export-cache", "type=local,dest=d,mode=all").is_err());
        assert!(parse_cache_export("--cache-to", "type=inline").is_err());
        assert!(parse_cache_export("--cache-to", "type=local,dest=d,bogus=1").is_err());
        assert!(parse_cache_import("--import-cache", "type=local").is_err());
    }

    #[test]
    fn login_servers_normalise() {
        assert_eq!(server_host(Some("https://127.0.0.1:5000/")), "127.0.0.1:5000");
        assert_eq!(server_host(None), "docker.io");
        assert_eq!(server_host(Some("index.docker.io")), "docker.io");
    }
}
