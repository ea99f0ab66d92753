//! Registries, for real: Debian's `docker-registry` (distribution 2.8) started on a free
//! loopback port with a config of its own (anonymous, htpasswd, or token auth with a token
//! server in this file signing RS256 JWTs through openssl), pushes and pulls checked with
//! skopeo and umoci, and the build cache moved between empty stores. Misbehaving
//! registries (wrong digests, truncated blobs, huge or garbage manifests, 5xx and 429) are
//! a small HTTP server here, since a real registry does not misbehave on demand.

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Pushes busybox (loaded into a scratch store) to `reg` as `busybox:1`.
fn seed_busybox(reg: &Registry) -> String {
    let f = Fixture::new();
    let name = reg.image("busybox:1");
    assert_ok(&f.rdock(&["tag", "busybox:latest", &name]));
    assert_ok(&f.rdock(&["push", &name]));
    name
}

fn skopeo_inspect(image: &str, extra: &[&str]) -> Value {
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    let r = format!("docker://{image}");
    args.push(&r);
    serde_json::from_str(&sh("skopeo", &args)).unwrap()
}

fn blobs_of(f: &Fixture) -> BTreeSet<String> {
    std::fs::read_dir(f.root.join("blobs/sha256"))
        .map(|d| d.flatten().map(|e| format!("sha256:{}", e.file_name().to_string_lossy())).collect())
        .unwrap_or_default()
}

fn fsck(f: &Fixture) {
    assert_ok(&f.rdock(&["fsck"]));
}

fn kinds(events: &[Value], kind: &str) -> Vec<String> {
    events.iter().filter(|e| e["kind"] == kind).map(|e| e["name"].as_str().unwrap_or("").to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Push and pull.

#[test]
fn push_pull_round_trip_through_a_real_registry() {
    let reg = Registry::start(Auth::None);
    let base = seed_busybox(&reg);
    let a = Fixture::empty();
    let ctx = a.ctx(
        "app",
        &[("Dockerfile", &format!("FROM {base}\nCOPY msg /msg\nRUN echo built > /built && dd if=/dev/urandom of=/blob bs=1k count=1500 2>/dev/null\nCMD [\"cat\", \"/msg\"]\n")), ("msg", "hello from the registry\n")],
    );
    // FROM a registry image on an empty store pulls it on demand.
    let app = reg.image("team/app:1");
    let meta = a.path("meta.json");
    let out = a.build(&ctx, &["--output", &format!("type=image,name={app},push=true"), "--metadata-file", meta.to_str().unwrap()]);
    assert_ok(&out);
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let digest = m["containerimage.digest"].as_str().unwrap().to_string();

    // skopeo reads what was pushed; its digest is the one in the metadata file.
    let info = skopeo_inspect(&app, &[]);
    assert_eq!(info["Digest"], digest.as_str(), "{info}");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    // Stored as tars, the build's layers leave as gzip.
    let raw = skopeo_inspect(&app, &["--raw"]);
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip", "{raw}");
    }
    // ... and umoci unpacks it (after skopeo copies it to an OCI layout).
    let layout = a.path("layout");
    sh("skopeo", &["copy", "--src-tls-verify=false", &format!("docker://{app}"), &format!("oci:{}:app", layout.display())]);
    let bundle = a.path("bundle");
    sh("umoci", &["unpack", "--image", &format!("{}:app", layout.display()), bundle.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/msg")).unwrap(), "hello from the registry\n");
    assert_eq!(std::fs::metadata(bundle.join("rootfs/blob")).unwrap().len(), 1500 * 1024);

    // docker reads it too, where a dockerd runs (CI has none; loopback registries are
    // insecure to docker by default).
    if Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        sh("docker", &["pull", "-q", &app]);
        assert_eq!(docker_run(&["--rm", &app]), "hello from the registry\n");
        sh("docker", &["rmi", "-f", &app]);
    } else {
        eprintln!("no dockerd: docker pull of the pushed image not checked here");
    }

    // A second push uploads nothing; a push to another repository mounts every blob.
    let again = a.rdock(&["push", &app]);
    assert_ok(&again);
    assert!(stderr(&again).contains("0 uploaded, 0 mounted, 4 already there"), "{}", stderr(&again));
    let other = reg.image("other/app:2");
    assert_ok(&a.rdock(&["tag", &app, &other]));
    let mounted = a.rdock(&["push", &other]);
    assert_ok(&mounted);
    assert!(stderr(&mounted).contains("0 uploaded, 4 mounted"), "{}", stderr(&mounted));

    // Pulled back on an empty store, it runs the same.
    let b = Fixture::empty();
    let pulled = Command::new(RDOCK).args(["pull", &app]).env("RDOCK_ROOT", &b.root).env("RDOCK_LOG", "rdock_oci=debug").output().unwrap();
    assert_ok(&pulled);
    // Each layer was unpacked as it downloaded, in one pass, not after.
    assert_eq!(stderr(&pulled).matches("unpacked while downloading").count(), 3, "{}", stderr(&pulled));
    assert!(String::from_utf8_lossy(&pulled.stdout).contains(&digest));
    let ctx_b = b.ctx("run", &[("Dockerfile", &format!("FROM {app}\nRUN cat /msg /built > /seen && wc -c < /blob >> /seen\n"))]);
    let out = b.path("out.tar");
    assert_ok(&b.build(&ctx_b, &["--output", &format!("type=oci,dest={}", out.display())]));
    let img = read_image(&out);
    assert_eq!(String::from_utf8_lossy(&img.files_in_layers()["seen"]), "hello from the registry\nbuilt\n1536000\n");
    // A second pull downloads nothing.
    let second = b.rdock(&["pull", &app]);
    assert_ok(&second);
    assert!(!stderr(&second).contains("downloaded"), "{}", stderr(&second));
    fsck(&b);

    // By digest, on another empty store.
    let c = Fixture::empty();
    let by_digest = format!("{}@{digest}", reg.image("team/app"));
    let ctx_c = c.ctx("d", &[("Dockerfile", &format!("FROM {by_digest}\nRUN cat /msg > /again\n"))]);
    assert_ok(&c.build(&ctx_c, &[]));
    fsck(&c);

    // A mount the registry declines (the blob's link in the source repository is gone)
    // falls back to an upload.
    let config_digest = skopeo_inspect(&other, &["--raw"])["config"]["digest"].as_str().unwrap().to_string();
    assert_eq!(http_request(&reg.host, "DELETE", &format!("/v2/team/app/blobs/{config_digest}")), Some(202));
    assert_eq!(http_request(&reg.host, "DELETE", &format!("/v2/other/app/blobs/{config_digest}")), Some(202));
    let third = reg.image("third/app:3");
    assert_ok(&a.rdock(&["tag", &app, &third]));
    let fallback = a.rdock(&["push", &third]);
    assert_ok(&fallback);
    assert!(stderr(&fallback).contains("1 uploaded, 3 mounted"), "{}", stderr(&fallback));
    assert_eq!(skopeo_inspect(&third, &[])["Digest"], digest.as_str());
}

/// `--pull` (`--opt image-resolve-mode=pull`) asks the registry for a base the store
/// already has by that name; without it the stored one is used.
#[test]
fn pull_asks_the_registry_for_a_base_the_store_has() {
    let reg = Registry::start(Auth::None);
    let name = seed_busybox(&reg);
    let f = Fixture::new();
    assert_ok(&f.rdock(&["pull", &name]));
    // The registry's tag moves on to an image with /v in it.
    let other = Fixture::new();
    let newer = other.ctx("newer", &[("Dockerfile", "FROM busybox\nRUN echo 2 > /v\n")]);
    assert_ok(&other.rdock(&["build", "-t", &name, "--push", newer.to_str().unwrap()]));
    let ctx = f.ctx("p", &[("Dockerfile", &format!("FROM {name}\nRUN (cat /v 2>/dev/null || echo stored) > /seen\n"))]);
    let seen = |extra: &[&str]| {
        let o = f.path(&format!("o{}", extra.len()));
        let mut args = vec!["build", "-o", o.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        assert_ok(&f.rdock(&args));
        std::fs::read_to_string(o.join("seen")).unwrap()
    };
    assert_eq!(seen(&[]), "stored\n");
    assert_eq!(seen(&["--pull"]), "2\n");
    let o = f.path("obk");
    assert_ok(&f.build(&ctx, &["--opt", "image-resolve-mode=pull", "--output", &format!("type=local,dest={}", o.display())]));
    assert_eq!(std::fs::read_to_string(o.join("seen")).unwrap(), "2\n");
    let bad = f.build(&ctx, &["--opt", "image-resolve-mode=sometimes"]);
    assert!(!bad.status.success() && stderr(&bad).contains("image-resolve-mode=sometimes"), "{}", stderr(&bad));
}

#[test]
fn chunked_uploads_and_docker_media_types() {
    let reg = Registry::start(Auth::None);
    let base = seed_busybox(&reg);
    let a = Fixture::empty();
    let ctx = a.ctx("big", &[("Dockerfile", &format!("FROM {base}\nRUN dd if=/dev/urandom of=/big bs=1k count=3000 2>/dev/null\n"))]);
    assert_ok(&a.build(&ctx, &["--output", "type=image,name=big:1"]));
    let name = reg.image("big:1");
    assert_ok(&a.rdock(&["tag", "big:1", &name]));
    // 1 MiB chunks: the 3 MB layer goes up in several PATCHes.
    let out =
        Command::new(RDOCK).args(["push", &name]).env("RDOCK_ROOT", &a.root).env("RDOCK_REGISTRY_CHUNK_SIZE", "1048576").output().unwrap();
    assert_ok(&out);
    let info = skopeo_inspect(&name, &["--raw"]);
    let layer = info["layers"][1]["digest"].as_str().unwrap().to_string();
    // The registry has the blob whole: skopeo copies it and its digest holds.
    let layout = a.path("l");
    sh("skopeo", &["copy", "--src-tls-verify=false", &format!("docker://{name}"), &format!("oci:{}:x", layout.display())]);
    assert!(layout.join("blobs/sha256").join(layer.trim_start_matches("sha256:")).exists());

    // An image in docker's media types (skopeo converts on copy) pulls and builds.
    let docker_name = reg.image("dockertypes:1");
    sh(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            &format!("oci:{}:x", layout.display()),
            &format!("docker://{docker_name}"),
        ],
    );
    let raw = skopeo_inspect(&docker_name, &["--raw"]);
    assert_eq!(raw["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let b = Fixture::empty();
    assert_ok(&b.rdock(&["pull", &docker_name]));
    let ctx_b = b.ctx("x", &[("Dockerfile", &format!("FROM {docker_name}\nRUN test $(wc -c < /big) = 3072000\n"))]);
    assert_ok(&b.build(&ctx_b, &[]));
    fsck(&b);
}

#[test]
fn multi_platform_index_pulls_the_host_platform_only() {
    let reg = Registry::start(Auth::None);
    let a = Fixture::empty();
    assert_ok(&a.rdock(&["load", "-i", multiarch_busybox_tar().to_str().unwrap()]));
    let name = reg.image("multi:1");
    assert_ok(&a.rdock(&["tag", "bbmulti:latest", &name]));
    let pushed = a.rdock(&["push", &name]);
    assert_ok(&pushed);
    let raw = skopeo_inspect(&name, &["--raw"]);
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 3, "the whole index was pushed: {raw}");
    let b = Fixture::empty();
    assert_ok(&b.rdock(&["pull", &name]));
    // One platform's layers only: the index, one manifest, one config, one layer.
    assert_eq!(blobs_of(&b).len(), 4, "{:?}", blobs_of(&b));
    fsck(&b);
    let ctx = b.ctx("m", &[("Dockerfile", &format!("FROM {name}\nRUN uname -m > /arch\n"))]);
    assert_ok(&b.build(&ctx, &[]));
}

// ---------------------------------------------------------------------------------------
// Authentication.

/// Everything in the store, as bytes, to look for a secret in.
fn store_contains(f: &Fixture, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in walk(&f.root) {
        if let Ok(bytes) = std::fs::read(&e)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            hits.push(e);
        }
    }
    hits
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => out.extend(walk(&path)),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

fn with_config(f: &Fixture, args: &[&str], config_dir: &Path) -> std::process::Output {
    Command::new(RDOCK).args(args).env("RDOCK_ROOT", &f.root).env("DOCKER_CONFIG", config_dir).output().unwrap()
}

/// `rdock login -u alice --password-stdin HOST`, the password written to its stdin.
fn login(f: &Fixture, config_dir: &Path, host: &str, password: &str) -> std::process::Output {
    let mut child = Command::new(RDOCK)
        .args(["login", "-u", "alice", "--password-stdin", host])
        .env("RDOCK_ROOT", &f.root)
        .env("DOCKER_CONFIG", config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn basic_auth_login_and_credentials_from_docker_config() {
    const PASSWORD: &str = "correct-horse-battery-42";
    let reg = Registry::start(Auth::Basic { user: "alice", password: PASSWORD });
    let f = Fixture::new();
    let cfg = f.path("docker");
    let name = reg.image("private/bb:1");
    assert_ok(&f.rdock(&["tag", "busybox:latest", &name]));

    // Without credentials: a clear error that says how to log in.
    let denied = with_config(&f, &["push", &name], &cfg);
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains(&format!("rdock login {}", reg.host)), "{}", stderr(&denied));

    // A wrong password is refused by login, and nothing is stored.
    let bad = login(&f, &cfg, &reg.host, "wrong");
    assert!(!bad.status.success(), "a wrong password logged in");
    assert!(!cfg.join("config.json").exists());

    let ok = login(&f, &cfg, &reg.host, PASSWORD);
    assert_ok(&ok);
    // docker's format: auths[host].auth = base64(user:password), mode 0600.
    let config: Value = serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    let auth = config["auths"][&reg.host]["auth"].as_str().unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(auth).unwrap(), format!("alice:{PASSWORD}").as_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(cfg.join("config.json")).unwrap().permissions().mode() & 0o777, 0o600);

    let pushed = with_config(&f, &["push", &name], &cfg);
    assert_ok(&pushed);
    // Pull and build from it on another store, with a config.json written by hand in the
    // username/password form.
    let g = Fixture::empty();
    let cfg2 = g.path("docker2");
    std::fs::create_dir_all(&cfg2).unwrap();
    std::fs::write(
        cfg2.join("config.json"),
        json!({"auths": {format!("http://{}", reg.host): {"username": "alice", "password": PASSWORD}}}).to_string(),
    )
    .unwrap();
    let ctx = g.ctx("c", &[("Dockerfile", &format!("FROM {name}\nRUN echo ok > /ok\n"))]);
    let c = format!("context={}", ctx.display());
    let built = Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--local", &c, "--local", &format!("dockerfile={}", ctx.display()), "--progress=plain"])
        .args(["--output", &format!("type=image,name={},push=true", reg.image("private/built:1"))])
        .env("RDOCK_ROOT", &g.root)
        .env("DOCKER_CONFIG", &cfg2)
        .output()
        .unwrap();
    assert_ok(&built);

    // The password appears in no output and nowhere in either store.
    for out in [&denied, &bad, &ok, &pushed, &built] {
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out));
        assert!(!all.contains(PASSWORD), "the password was printed: {all}");
    }
    assert_eq!(store_contains(&f, PASSWORD), Vec::<PathBuf>::new());
    assert_eq!(store_contains(&g, PASSWORD), Vec::<PathBuf>::new());
    assert_ok(&with_config(&f, &["logout", &reg.host], &cfg));
    let config: Value = serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert!(config["auths"].get(&reg.host).is_none());
}

/// A token server for distribution's token auth: checks basic credentials, grants the
/// scopes asked for, and signs RS256 JWTs with a key whose certificate it puts in `x5c`.
struct TokenServer {
    realm: String,
    cert: PathBuf,
    requests: Arc<AtomicUsize>,
    scopes: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Method, path, headers (lower-case names) and body.
type Request = (String, String, Vec<(String, String)>, Vec<u8>);

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0usize);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenServer {
    fn start(user: &'static str, password: &'static str, expires_in: u64) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
                "-days",
                "2",
                "-subj",
                "/CN=rdock-token",
            ],
        );
        let der = Command::new("openssl").args(["x509", "-in", cert.to_str().unwrap(), "-outform", "der"]).output().unwrap().stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let (req2, scopes2, key2) = (requests.clone(), scopes.clone(), key.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let Some((_, path, headers, _)) = read_request(&mut s) else { continue };
                req2.fetch_add(1, Ordering::SeqCst);
                let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
                if !headers.iter().any(|(k, v)| k == "authorization" && *v == expected) {
                    let _ = write!(s, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
                let mut access = Vec::new();
                for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                    if k == "scope" {
                        let v = percent_decode(v);
                        scopes2.lock().unwrap().push(v.clone());
                        let parts: Vec<&str> = v.split(':').collect();
                        if parts.len() == 3 {
                            access.push(json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
                        }
                    }
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let claims = json!({
                    "iss": "rdock-test-issuer", "sub": user, "aud": "rdock-test",
                    "exp": now + expires_in, "nbf": now - 10, "iat": now - 10,
                    "jti": format!("{now}-{}", req2.load(Ordering::SeqCst)), "access": access
                });
                let signing = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
                let mut child = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign", key2.to_str().unwrap()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(signing.as_bytes()).unwrap();
                let sig = child.wait_with_output().unwrap().stdout;
                let token = format!("{signing}.{}", b64url(&sig));
                let body = json!({"token": token, "expires_in": expires_in}).to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer { realm, cert, requests, scopes, _dir: dir }
    }
}

#[test]
fn bearer_token_auth_against_distribution_caches_tokens_per_scope() {
    const PASSWORD: &str = "token-pass-77";
    let tokens = TokenServer::start("bob", PASSWORD, 300);
    let reg = Registry::start(Auth::Token { realm: tokens.realm.clone(), cert: tokens.cert.clone() });
    let f = Fixture::new();
    let cfg = f.path("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    let name = reg.image("tok/bb:1");
    assert_ok(&f.rdock(&["tag", "busybox:latest", &name]));

    let anon = with_config(&f, &["push", &name], &cfg);
    assert!(!anon.status.success());
    assert!(stderr(&anon).contains("rdock login"), "{}", stderr(&anon));

    let auth = base64::engine::general_purpose::STANDARD.encode(format!("bob:{PASSWORD}"));
    std::fs::write(cfg.join("config.json"), json!({"auths": {reg.host.clone(): {"auth": auth}}}).to_string()).unwrap();
    let before = tokens.requests.load(Ordering::SeqCst);
    let pushed = with_config(&f, &["push", &name], &cfg);
    assert_ok(&pushed);
    // A push is a dozen registry requests (HEADs, uploads, the manifest) but one token
    // for its scope.
    let used = tokens.requests.load(Ordering::SeqCst) - before;
    assert_eq!(used, 1, "tokens were not cached: {used} token requests for one push; scopes {:?}", tokens.scopes.lock().unwrap());
    assert!(tokens.scopes.lock().unwrap().iter().any(|s| s == "repository:tok/bb:pull,push"), "{:?}", tokens.scopes.lock().unwrap());

    // Pull (a pull scope) on another store, then wait past the token's life and pull a
    // second image: a new token is fetched and the pull works.
    let g = Fixture::empty();
    let pull =
        |what: &str| Command::new(RDOCK).args(["pull", what]).env("RDOCK_ROOT", &g.root).env("DOCKER_CONFIG", &cfg).output().unwrap();
    assert_ok(&pull(&name));
    assert!(tokens.scopes.lock().unwrap().iter().any(|s| s == "repository:tok/bb:pull"));
    // A build that resolves its base and pushes its result.
    let ctx = g.ctx("t", &[("Dockerfile", &format!("FROM {name}\nRUN echo built > /built\n"))]);
    let n0 = tokens.requests.load(Ordering::SeqCst);
    let c = format!("context={}", ctx.display());
    let built = Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--local", &c, "--local", &format!("dockerfile={}", ctx.display()), "--progress=plain"])
        .args(["--output", &format!("type=image,name={},push=true", reg.image("tok/built:1"))])
        .env("RDOCK_ROOT", &g.root)
        .env("DOCKER_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_ok(&built);
    // One token for the pull scope (resolving the base) and one for the push scope.
    let n = tokens.requests.load(Ordering::SeqCst) - n0;
    assert_eq!(n, 2, "{n} token requests: {:?}", tokens.scopes.lock().unwrap());
    let info = skopeo_inspect(&reg.image("tok/built:1"), &["--creds", &format!("bob:{PASSWORD}")]);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
    for out in [&anon, &pushed, &built] {
        assert!(!format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out)).contains(PASSWORD));
    }
    assert_eq!(store_contains(&g, PASSWORD), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------------------------
// Remote cache.

const MULTI: &str = "FROM BASE AS builder
COPY src.txt /src.txt
RUN echo compiled-$(cat /src.txt) > /app && date +%s%N > /builder-stamp
RUN echo unused-by-output > /tmp/x && date +%s%N > /b2

FROM BASE
COPY --from=builder /app /app
COPY conf.txt /conf.txt
RUN cat /app /conf.txt > /final && date +%s%N > /stamp
";

fn cache_ctx(f: &Fixture, base: &str, conf: &str) -> PathBuf {
    f.ctx("cachectx", &[("Dockerfile", &MULTI.replace("BASE", base)), ("src.txt", "v1\n"), ("conf.txt", conf)])
}

fn layers_of(tar: &Path) -> Vec<String> {
    read_image(tar).layer_digests
}

/// An image keys by its layers (their chain ID), not by its manifest: the store that
/// pushed busybox (whose `docker save` layers it keeps as tars and sends as gzip, a new
/// manifest digest) builds on its local tag and exports the cache, and an empty store that
/// pulls the pushed image hits every step of it.
#[test]
fn an_image_keys_the_same_in_the_store_that_pushed_it_and_one_that_pulled_it() {
    let reg = Registry::start(Auth::None);
    let a = Fixture::new();
    let base = reg.image("base:1");
    assert_ok(&a.rdock(&["tag", "busybox:latest", &base]));
    assert_ok(&a.rdock(&["push", &base]));
    let df = format!("FROM {base}\nRUN echo one > /one\nRUN echo two > /two\n");
    let ctx = a.ctx("keys", &[("Dockerfile", &df)]);
    let cache = format!("type=registry,ref={},mode=max", reg.image("cache/keys:1"));
    assert_ok(&a.build(&ctx, &["--export-cache", &cache]));
    let b = Fixture::empty();
    let ctx_b = b.ctx("keys", &[("Dockerfile", &df)]);
    let (out, events) = b.build_events(&ctx_b, &["--import-cache", &cache.replace(",mode=max", "")]);
    assert_ok(&out);
    let cached = kinds(&events, "cached");
    assert!(cached.iter().any(|n| n.contains("echo two")), "every step a hit: {cached:?}\n{}", stderr(&out));
    assert!(kinds(&events, "started").iter().all(|n| !n.contains("echo")), "{}", stderr(&out));
}

#[test]
fn cache_exported_from_one_store_makes_every_step_a_hit_on_an_empty_one() {
    let reg = Registry::start(Auth::None);
    let base = seed_busybox(&reg);
    let a = Fixture::empty();
    let ctx = cache_ctx(&a, &base, "conf-1\n");
    let out_a = a.path("a.tar");
    let max_ref = reg.image("cache/multi:max");
    let min_ref = reg.image("cache/multi:min");
    let local_max = a.path("local-max");
    let local_min = a.path("local-min");
    let built = a.build(
        &ctx,
        &[
            "--output",
            &format!("type=oci,dest={}", out_a.display()),
            "--export-cache",
            &format!("type=registry,ref={max_ref},mode=max"),
            "--export-cache",
            &format!("type=registry,ref={min_ref}"),
            "--export-cache",
            &format!("type=local,dest={},mode=max", local_max.display()),
            "--export-cache",
            &format!("type=local,dest={}", local_min.display()),
        ],
    );
    assert_ok(&built);
    let layers_a = layers_of(&out_a);
    // The max export's layers that the output does not have: the builder stage's.
    let max_manifest: Value = {
        let idx: Value = serde_json::from_slice(&std::fs::read(local_max.join("index.json")).unwrap()).unwrap();
        let d = idx["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        serde_json::from_slice(&std::fs::read(local_max.join("blobs/sha256").join(d)).unwrap()).unwrap()
    };
    let intermediate: Vec<String> = max_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .filter(|d| !layers_a.contains(d))
        .collect();
    assert_eq!(intermediate.len(), 3, "the builder's COPY and two RUNs: {max_manifest}");

    for (how, import) in [
        ("registry max", format!("type=registry,ref={max_ref}")),
        ("registry min", format!("type=registry,ref={min_ref}")),
        ("local max", format!("type=local,src={}", local_max.display())),
        ("local min", format!("type=local,src={}", local_min.display())),
    ] {
        let b = Fixture::empty();
        let ctx_b = cache_ctx(&b, &base, "conf-1\n");
        let out_b = b.path("b.tar");
        let (out, events) = b.build_events(&ctx_b, &["--import-cache", &import, "--output", &format!("type=oci,dest={}", out_b.display())]);
        assert_ok(&out);
        assert_eq!(kinds(&events, "started"), Vec::<String>::new(), "{how}: steps ran");
        let cached = kinds(&events, "cached");
        assert!(cached.iter().any(|c| c.contains("RUN cat /app /conf.txt")), "{how}: {cached:?}");
        assert!(cached.len() >= 3, "{how}: {cached:?}");
        // The same layers, so the same files (the RUN stamps among them).
        assert_eq!(layers_of(&out_b), layers_a, "{how}");
        let blobs = blobs_of(&b);
        for d in &intermediate {
            assert!(!blobs.contains(d), "{how}: downloaded the unneeded intermediate layer {d}");
        }
        fsck(&b);
    }

    // An imported chain's layers are unpacked while they download, as a pull's are.
    let d = Fixture::empty();
    let ctx_d = cache_ctx(&d, &base, "conf-1\n");
    let out = Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--local", &format!("context={}", ctx_d.display())])
        .args(["--local", &format!("dockerfile={}", ctx_d.display()), "--import-cache", &format!("type=registry,ref={max_ref}")])
        .args(["--output", &format!("type=oci,dest={}", d.path("d.tar").display())])
        .env("RDOCK_ROOT", &d.root)
        .env("RDOCK_LOG", "rdock_oci=debug")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(layers_of(&d.path("d.tar")), layers_a);
    assert!(stderr(&out).matches("unpacked while downloading").count() >= 2, "{}", stderr(&out));
    fsck(&d);

    // A changed context file misses only the steps that read it: the final stage's COPY of
    // it and the RUN after; the builder stage and the COPY --from stay hits.
    let c = Fixture::empty();
    let ctx_c = cache_ctx(&c, &base, "conf-2\n");
    let out_c = c.path("c.tar");
    let (out, events) = c.build_events(
        &ctx_c,
        &["--import-cache", &format!("type=registry,ref={max_ref}"), "--output", &format!("type=oci,dest={}", out_c.display())],
    );
    assert_ok(&out);
    let started = kinds(&events, "started");
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started.iter().any(|s| s.contains("COPY conf.txt")) && started.iter().any(|s| s.contains("RUN cat /app")), "{started:?}");
    assert!(kinds(&events, "cached").iter().any(|s| s.contains("COPY --from=builder")));
    let img = read_image(&out_c);
    assert_eq!(String::from_utf8_lossy(&img.files_in_layers()["final"]), "compiled-v1\nconf-2\n");
    assert_eq!(img.layer_digests[..2], layers_a[..2], "the base and the COPY --from are shared");
    assert_ne!(img.layer_digests[2], layers_a[2]);

    // Cache from a different Dockerfile never gives a wrong hit: a changed RUN runs, and
    // so does everything after it.
    let d = Fixture::empty();
    let other = MULTI.replace("BASE", &base).replace("echo compiled-", "echo built-");
    let ctx_d = d.ctx("cachectx", &[("Dockerfile", &other), ("src.txt", "v1\n"), ("conf.txt", "conf-1\n")]);
    let out_d = d.path("d.tar");
    let (out, events) = d.build_events(
        &ctx_d,
        &["--import-cache", &format!("type=registry,ref={max_ref}"), "--output", &format!("type=oci,dest={}", out_d.display())],
    );
    assert_ok(&out);
    let started = kinds(&events, "started");
    assert!(started.iter().any(|s| s.contains("echo built-")), "{started:?}");
    assert!(started.iter().any(|s| s.contains("COPY --from=builder")), "{started:?}");
    assert!(started.iter().any(|s| s.contains("RUN cat /app")), "{started:?}");
    assert_eq!(String::from_utf8_lossy(&read_image(&out_d).files_in_layers()["final"]), "built-v1\nconf-1\n");

    // docker's flags on `rdock build`, and a cache that does not exist yet is a warning.
    let e = Fixture::empty();
    let ctx_e = cache_ctx(&e, &base, "conf-1\n");
    let first = Command::new(RDOCK)
        .args([
            "build",
            "--progress=plain",
            "--cache-from",
            &reg.image("cache/none:1"),
            "--cache-to",
            &format!("type=registry,ref={},mode=max", reg.image("cache/docker:1")),
            "-t",
            "e:1",
        ])
        .arg(&ctx_e)
        .env("RDOCK_ROOT", &e.root)
        .output()
        .unwrap();
    assert_ok(&first);
    assert!(stderr(&first).contains("has no cache yet"), "{}", stderr(&first));
    let g = Fixture::empty();
    let ctx_g = cache_ctx(&g, &base, "conf-1\n");
    let second = Command::new(RDOCK)
        .args(["build", "--progress=rawjson", "--cache-from", &reg.image("cache/docker:1"), "-t", "g:1"])
        .arg(&ctx_g)
        .env("RDOCK_ROOT", &g.root)
        .output()
        .unwrap();
    assert_ok(&second);
    assert!(!stderr(&second).contains("\"kind\":\"started\""), "{}", stderr(&second));
}

#[test]
fn cache_mounts_travel_with_the_cache_when_asked() {
    let reg = Registry::start(Auth::None);
    let base = seed_busybox(&reg);
    let df = |word: &str| {
        format!(
            "FROM {base}\nRUN --mount=type=cache,target=/var/cache/pkg,id=pkgs sh -c 'echo {word} >> /var/cache/pkg/log; cp /var/cache/pkg/log /seen'\n"
        )
    };
    let a = Fixture::empty();
    let ctx = a.ctx("m", &[("Dockerfile", &df("from-a"))]);
    let with = reg.image("cache/mounts:with");
    let without = reg.image("cache/mounts:without");
    assert_ok(&a.build(
        &ctx,
        &[
            "--export-cache",
            &format!("type=registry,ref={with},cache-mounts=true"),
            "--export-cache",
            &format!("type=registry,ref={without}"),
        ],
    ));

    for (r, expected) in [(&with, "from-a\nfrom-b\n"), (&without, "from-b\n")] {
        let b = Fixture::empty();
        // Another command, so the step misses and runs with the cache mounted.
        let ctx_b = b.ctx("m", &[("Dockerfile", &df("from-b"))]);
        let out = b.path("o.tar");
        assert_ok(&b.build(
            &ctx_b,
            &["--import-cache", &format!("type=registry,ref={r}"), "--output", &format!("type=oci,dest={}", out.display())],
        ));
        assert_eq!(String::from_utf8_lossy(&read_image(&out).files_in_layers()["seen"]), expected, "{r}");
    }
}

// ---------------------------------------------------------------------------------------
// Misbehaving registries.

/// What the fake registry answers for a path.
#[derive(Clone)]
enum Reply {
    /// Status, headers and body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// 200 announcing `len` bytes, sending `body` (shorter), then closing.
    Truncated(Vec<u8>, usize),
}

struct Fake {
    host: String,
    /// Path → replies in order (the last repeats).
    routes: Arc<Mutex<std::collections::HashMap<String, Vec<Reply>>>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let routes: Arc<Mutex<std::collections::HashMap<String, Vec<Reply>>>> = Default::default();
        let hits: Arc<Mutex<Vec<String>>> = Default::default();
        let (r2, h2) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (r3, h3) = (r2.clone(), h2.clone());
                std::thread::spawn(move || {
                    let Some((method, path, _, _)) = read_request(&mut s) else { return };
                    h3.lock().unwrap().push(format!("{method} {path}"));
                    let reply = {
                        let mut routes = r3.lock().unwrap();
                        match routes.get_mut(&path) {
                            Some(v) if v.len() > 1 => Some(v.remove(0)),
                            Some(v) => v.first().cloned(),
                            None => None,
                        }
                    };
                    let reply = reply.unwrap_or_else(|| Reply::Full(if path == "/v2/" { 200 } else { 404 }, vec![], b"{}".to_vec()));
                    match reply {
                        Reply::Full(status, headers, body) => {
                            let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                            for (k, v) in headers {
                                head.push_str(&format!("{k}: {v}\r\n"));
                            }
                            head.push_str("\r\n");
                            let _ = s.write_all(head.as_bytes());
                            if method != "HEAD" {
                                let _ = s.write_all(&body);
                            }
                        }
                        Reply::Truncated(body, len) => {
                            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
                            let _ = s.write_all(&body);
                        }
                    }
                    let _ = s.flush();
                });
            }
        });
        Fake { host, routes, hits }
    }

    fn route(&self, path: &str, replies: Vec<Reply>) {
        self.routes.lock().unwrap().insert(path.to_string(), replies);
    }

    fn ok(body: &[u8], media: &str) -> Reply {
        Reply::Full(200, vec![("Content-Type".into(), media.into())], body.to_vec())
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)))
}

/// A one-layer image served by `fake` as `repo:1`; returns the layer's bytes and digest.
fn serve_image(fake: &Fake, repo: &str) -> (Vec<u8>, String) {
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "hello", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let ld = sha(&layer);
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}, "config": {}}).to_string();
    let cd = sha(config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    })
    .to_string();
    fake.route(&format!("/v2/{repo}/manifests/1"), vec![Fake::ok(manifest.as_bytes(), "application/vnd.oci.image.manifest.v1+json")]);
    fake.route(&format!("/v2/{repo}/blobs/{cd}"), vec![Fake::ok(config.as_bytes(), "application/octet-stream")]);
    fake.route(&format!("/v2/{repo}/blobs/{ld}"), vec![Fake::ok(&layer, "application/octet-stream")]);
    (layer, ld)
}

fn pull_fails(f: &Fixture, what: &str, expect: &str) {
    let before = blobs_of(f);
    let out = f.rdock(&["pull", what]);
    assert!(!out.status.success(), "{what} pulled");
    assert!(stderr(&out).contains(expect), "{what}: expected {expect:?} in:\n{}", stderr(&out));
    assert_eq!(blobs_of(f), before, "{what}: the store changed");
    assert_eq!(f.leftovers(), Vec::<String>::new());
    let images = f.rdock(&["images"]);
    let repo = what.rsplit_once(':').unwrap().0;
    assert!(!String::from_utf8_lossy(&images.stdout).contains(repo), "{what} was tagged");
}

#[test]
fn a_misbehaving_registry_gets_clear_errors_and_leaves_the_store_as_it_was() {
    let fake = Fake::start();
    let f = Fixture::new();
    fsck(&f);

    // A blob whose bytes are not its digest.
    let (layer, ld) = serve_image(&fake, "wrongdigest");
    let mut evil = layer.clone();
    evil[0] ^= 0xff;
    fake.route(&format!("/v2/wrongdigest/blobs/{ld}"), vec![Fake::ok(&evil, "application/octet-stream")]);
    pull_fails(&f, &format!("{}/wrongdigest:1", fake.host), &format!("digest mismatch for blob {ld}"));

    // A manifest that is not the one the tag's digest header names.
    serve_image(&fake, "wrongmanifest");
    let path = "/v2/wrongmanifest/manifests/1".to_string();
    let body = {
        let r = fake.routes.lock().unwrap();
        match &r[&path][0] {
            Reply::Full(_, _, b) => b.clone(),
            _ => unreachable!(),
        }
    };
    let bogus = sha(b"something else");
    fake.route(&path, vec![Reply::Full(200, vec![("Docker-Content-Digest".into(), bogus.clone())], body)]);
    pull_fails(&f, &format!("{}/wrongmanifest:1", fake.host), &format!("expected {bogus}"));

    // A truncated blob: the connection closes early every time.
    let (layer, ld) = serve_image(&fake, "truncated");
    fake.route(&format!("/v2/truncated/blobs/{ld}"), vec![Reply::Truncated(layer[..layer.len() / 2].to_vec(), layer.len())]);
    pull_fails(&f, &format!("{}/truncated:1", fake.host), "broke after");

    // A manifest over 4 MiB.
    let huge = format!("{{\"schemaVersion\":2,\"pad\":\"{}\"}}", "x".repeat(5 << 20));
    fake.route("/v2/huge/manifests/1", vec![Fake::ok(huge.as_bytes(), "application/vnd.oci.image.manifest.v1+json")]);
    pull_fails(&f, &format!("{}/huge:1", fake.host), "over the 4194304-byte limit");

    // Docker's schema 1 (signed, `fsLayers`): refused by name, with the way out.
    let v1 = json!({
        "schemaVersion": 1, "name": "old", "tag": "1", "architecture": "amd64",
        "fsLayers": [{"blobSum": sha(b"x")}], "history": [{"v1Compatibility": "{}"}],
        "signatures": []
    })
    .to_string();
    fake.route("/v2/old/manifests/1", vec![Fake::ok(v1.as_bytes(), "application/vnd.docker.distribution.manifest.v1+prettyjws")]);
    pull_fails(&f, &format!("{}/old:1", fake.host), "manifest v2 schema 1");

    // Garbage.
    fake.route("/v2/garbage/manifests/1", vec![Fake::ok(b"<html>not json</html>", "application/vnd.oci.image.manifest.v1+json")]);
    pull_fails(&f, &format!("{}/garbage:1", fake.host), "not a valid manifest");

    // Transient failures are retried: two 503s, then the manifest; a 429 with
    // Retry-After: 1, then the layer.
    let (layer, ld) = serve_image(&fake, "flaky");
    let mpath = "/v2/flaky/manifests/1".to_string();
    let good = fake.routes.lock().unwrap()[&mpath][0].clone();
    fake.route(&mpath, vec![Reply::Full(503, vec![], b"{}".to_vec()), Reply::Full(503, vec![], b"{}".to_vec()), good]);
    fake.route(
        &format!("/v2/flaky/blobs/{ld}"),
        vec![Reply::Full(429, vec![("Retry-After".into(), "1".into())], b"{}".to_vec()), Fake::ok(&layer, "application/octet-stream")],
    );
    let t = Instant::now();
    let flaky = f.rdock(&["pull", &format!("{}/flaky:1", fake.host)]);
    assert_ok(&flaky);
    assert!(t.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
    let hits = fake.hits.lock().unwrap().clone();
    assert_eq!(hits.iter().filter(|h| h.ends_with("/flaky/manifests/1")).count(), 3, "{hits:?}");

    // ... but not for ever: a registry that keeps failing is reported with the count.
    fake.route(
        "/v2/down/manifests/1",
        vec![Reply::Full(503, vec![], br#"{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}"#.to_vec())],
    );
    pull_fails(&f, &format!("{}/down:1", fake.host), "gave up after 5 attempts");

    // Nothing is half-stored: the store is consistent and builds as before.
    fsck(&f);
    let ctx = f.ctx("after", &[("Dockerfile", "FROM busybox\nRUN echo fine > /fine\n")]);
    assert_ok(&f.build(&ctx, &[]));
}

#[test]
fn a_token_the_registry_refuses_is_renewed_once() {
    // Scripted: the manifest answers 401 (a bearer challenge), then 200; the config blob
    // answers 401 to the first token (as to one that expired early), then 200.
    let fake = Fake::start();
    serve_image(&fake, "ren");
    let realm = format!("http://{}/token", fake.host);
    let challenge = Reply::Full(401, vec![("WWW-Authenticate".into(), format!("Bearer realm=\"{realm}\",service=fake"))], b"{}".to_vec());
    let mpath = "/v2/ren/manifests/1".to_string();
    let (m, c) = {
        let r = fake.routes.lock().unwrap();
        let config_path = r
            .keys()
            .find(|k| k.starts_with("/v2/ren/blobs/") && matches!(&r[*k][0], Reply::Full(_, _, b) if b.starts_with(b"{")))
            .unwrap()
            .clone();
        (r[&mpath][0].clone(), (config_path.clone(), r[&config_path][0].clone()))
    };
    fake.route(&mpath, vec![challenge.clone(), m]);
    fake.route(&c.0, vec![challenge, c.1]);
    fake.route(
        "/token?service=fake&scope=repository:ren:pull",
        vec![
            Fake::ok(br#"{"token":"t1","expires_in":300}"#, "application/json"),
            Fake::ok(br#"{"token":"t2","expires_in":300}"#, "application/json"),
        ],
    );
    let f = Fixture::empty();
    let out = f.rdock(&["pull", &format!("{}/ren:1", fake.host)]);
    assert_ok(&out);
    let hits = fake.hits.lock().unwrap().clone();
    assert_eq!(hits.iter().filter(|h| h.contains("/token?")).count(), 2, "one token, then one renewal: {hits:?}");
    fsck(&f);
}

// ---------------------------------------------------------------------------------------
// Foreign (non-distributable) layers.

/// An OCI layout (written by hand, as a producer of Windows-style images would) of busybox
/// plus one non-distributable layer whose descriptor points at `url`; its config runs
/// `cat /etc/foreign`. Returns the layout and the foreign layer's gzip bytes and digest.
fn layout_with_foreign_layer(dir: &Path, url: &str) -> (Vec<u8>, String) {
    let bb = read_tar_files(busybox_tar());
    let docker_manifest: Value = serde_json::from_slice(&bb["manifest.json"]).unwrap();
    let mut config: Value = serde_json::from_slice(&bb[docker_manifest[0]["Config"].as_str().unwrap()]).unwrap();
    let base = bb[docker_manifest[0]["Layers"][0].as_str().unwrap()].clone();
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(18);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, "etc/foreign", &b"served from a url\n"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let foreign = gz.finish().unwrap();
    config["rootfs"]["diff_ids"] = json!([sha(&base), sha(&tar)]);
    config["config"]["Cmd"] = json!(["cat", "/etc/foreign"]);
    let config = config.to_string();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config.as_bytes()), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&base), "size": base.len()},
            {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": sha(&foreign),
             "size": foreign.len(), "urls": [url]}
        ]
    })
    .to_string();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for b in [&base, &foreign, config.as_bytes(), manifest.as_bytes()] {
        std::fs::write(blobs.join(sha(b).trim_start_matches("sha256:")), b).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(manifest.as_bytes()), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    let d = sha(&foreign);
    (foreign, d)
}

/// Foreign layers as docker and containerd handle them: a pull downloads them from the
/// URLs their descriptors list (the registry never had them), verified like any blob; a
/// push leaves them out and keeps their URLs in the manifest. skopeo publishes the image
/// (it too skips foreign layers), in OCI and docker media types.
#[test]
fn foreign_layers_come_from_their_urls_and_are_never_uploaded() {
    let reg = Registry::start(Auth::None);
    let cdn = Fake::start();
    let f = Fixture::empty();
    let (foreign, fd) = layout_with_foreign_layer(&f.path("layout"), &format!("http://{}/layers/foreign.tar.gz", cdn.host));
    cdn.route("/layers/foreign.tar.gz", vec![Fake::ok(&foreign, "application/octet-stream")]);
    let oci = reg.image("foreign/oci:1");
    let v2s2 = reg.image("foreign/docker:1");
    let src = format!("oci:{}:1", f.path("layout").display());
    sh("skopeo", &["copy", "--dest-tls-verify=false", &src, &format!("docker://{oci}")]);
    sh("skopeo", &["copy", "--dest-tls-verify=false", "--format", "v2s2", &src, &format!("docker://{v2s2}")]);
    let raw = skopeo_inspect(&v2s2, &["--raw"]);
    assert_eq!(raw["layers"][1]["mediaType"], "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "{raw}");
    // The reference consumer: skopeo (containers/image, as podman) fetches the layer from
    // its URL too. (docker 20.10 on Linux asks the registry only, and fails: "unknown blob".)
    let before = cdn.hits.lock().unwrap().len();
    sh("skopeo", &["copy", "--src-tls-verify=false", &format!("docker://{v2s2}"), &format!("dir:{}", f.path("skopeo-dir").display())]);
    assert!(cdn.hits.lock().unwrap()[before..].iter().any(|h| h == "GET /layers/foreign.tar.gz"));
    for (image, repo) in [(&oci, "foreign/oci"), (&v2s2, "foreign/docker")] {
        assert_eq!(http_request(&reg.host, "HEAD", &format!("/v2/{repo}/blobs/{fd}")), Some(404), "the registry has no copy");
        let g = Fixture::empty();
        let before = cdn.hits.lock().unwrap().len();
        assert_ok(&g.rdock(&["pull", image]));
        assert!(cdn.hits.lock().unwrap()[before..].iter().any(|h| h == "GET /layers/foreign.tar.gz"), "not fetched from its URL");
        assert_eq!(out(&g.rdock(&["run", "--rm", "--network", "none", image])), "served from a url\n");
        fsck(&g);
        // A push to another repository uploads the rest and names the foreign layer by URL.
        let moved = reg.image(&format!("{repo}-moved:1"));
        assert_ok(&g.rdock(&["tag", image, &moved]));
        let pushed = g.rdock(&["push", &moved]);
        assert_ok(&pushed);
        let raw = skopeo_inspect(&moved, &["--raw"]);
        assert_eq!(raw["layers"][1]["urls"], json!([format!("http://{}/layers/foreign.tar.gz", cdn.host)]), "{raw}");
        assert_eq!(http_request(&reg.host, "HEAD", &format!("/v2/{repo}-moved/blobs/{fd}")), Some(404), "uploaded anyway");
        // ... and what was pushed pulls again.
        let h = Fixture::empty();
        assert_ok(&h.rdock(&["pull", &moved]));
        assert_eq!(out(&h.rdock(&["run", "--rm", "--network", "none", &moved])), "served from a url\n");
    }
    // A URL that serves other bytes: the digest check refuses them, names the URL, and the
    // store is as it was.
    let bad = f.path("bad-layout");
    layout_with_foreign_layer(&bad, &format!("http://{}/layers/swapped.tar.gz", cdn.host));
    cdn.route("/layers/swapped.tar.gz", vec![Fake::ok(&foreign[..foreign.len() - 1], "application/octet-stream")]);
    let swapped = reg.image("foreign/swapped:1");
    sh("skopeo", &["copy", "--dest-tls-verify=false", &format!("oci:{}:1", bad.display()), &format!("docker://{swapped}")]);
    let g = Fixture::empty();
    pull_fails(&g, &swapped, "/layers/swapped.tar.gz");
    fsck(&g);
}
