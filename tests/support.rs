//! Fixtures for the end-to-end tests: a store per test with the busybox base image loaded
//! (made once per run by scripts/make-busybox-image.sh, without any registry), context
//! directories, and readers for the image tarballs the builds write.

#![allow(dead_code)]

use flate2::read::GzDecoder;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const RDOCK: &str = env!("CARGO_BIN_EXE_rdock");
pub const RDOCK_BUILD: &str = env!("CARGO_BIN_EXE_rdock-build");

/// This test process's directory `rdock-e2e-KIND-PID` under the temporary directory, for
/// what it makes once per run; those of processes that are gone are removed first, so
/// runs do not pile them up.
fn own_dir(kind: &str) -> PathBuf {
    let prefix = format!("rdock-e2e-{kind}-");
    for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The busybox docker-archive, made once per test run.
pub fn busybox_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = own_dir("base");
        let out = dir.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image.sh");
        let st = Command::new("bash").arg(script).arg(&out).output().unwrap();
        assert!(st.status.success(), "make-busybox-image.sh failed: {}", String::from_utf8_lossy(&st.stderr));
        out
    })
}

/// A multi-platform OCI layout tarball `bbmulti:latest`: linux/amd64 (the host's busybox),
/// linux/arm64 (Debian's arm64 busybox-static, which scripts/test-deps.sh fetches) and
/// linux/s390x, whose busybox is the arm64 one with its ELF machine set to one no emulator
/// handles (EM_VAX), so that running it fails as a foreign binary without an emulator does.
pub fn multiarch_busybox_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let arm = ws.join(".test-deps/arm64/busybox");
        assert!(arm.is_file(), "{} is missing: run scripts/test-deps.sh (.ci/run does)", arm.display());
        let dir = own_dir("multi");
        let mut foreign = std::fs::read(&arm).unwrap();
        foreign[18] = 75; // e_machine = EM_VAX
        foreign[19] = 0;
        let fake = dir.join("busybox-vax");
        std::fs::write(&fake, foreign).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = dir.join("bbmulti.tar");
        let host = if cfg!(target_arch = "x86_64") { "amd64" } else { "arm64" };
        let host_bb =
            if std::path::Path::new("/bin/busybox").exists() { "/bin/busybox".to_string() } else { "/usr/bin/busybox".to_string() };
        let (other, other_bb) = if host == "amd64" { ("arm64", arm.display().to_string()) } else { ("amd64", String::new()) };
        assert!(!other_bb.is_empty(), "the multi-platform fixture assumes an amd64 host");
        let st = Command::new("bash")
            .arg(ws.join("scripts/make-busybox-image.sh"))
            .arg(&out)
            .arg("bbmulti:latest")
            .arg(format!("{host}={host_bb}"))
            .arg(format!("{other}={other_bb}"))
            .arg(format!("s390x={}", fake.display()))
            .output()
            .unwrap();
        assert!(st.status.success(), "make-busybox-image.sh failed: {}", String::from_utf8_lossy(&st.stderr));
        out
    })
}

/// A store with busybox:latest loaded, and a scratch directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let f = Fixture::empty();
        let out = f.rdock(&["load", "-i", busybox_tar().to_str().unwrap()]);
        assert_ok(&out);
        f
    }

    /// A store with nothing loaded.
    pub fn empty() -> Fixture {
        let dir = tempfile::Builder::new().prefix("rdock-e2e-").tempdir().unwrap();
        let root = dir.path().join("store");
        Fixture { dir, root }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes a context directory `name` with `files` (path, content).
    pub fn ctx(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.path(name);
        for (p, c) in files {
            let full = d.join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, c).unwrap();
        }
        d
    }

    pub fn rdock(&self, args: &[&str]) -> Output {
        Command::new(RDOCK).args(args).env("RDOCK_ROOT", &self.root).output().unwrap()
    }

    /// `rdock-build --frontend dockerfile --local context=CTX --local dockerfile=CTX` + extra.
    pub fn build(&self, ctx: &Path, extra: &[&str]) -> Output {
        let c = format!("context={}", ctx.display());
        let d = format!("dockerfile={}", ctx.display());
        let mut args = vec!["--frontend", "dockerfile", "--local", &c, "--local", &d];
        if !extra.iter().any(|a| a.starts_with("--progress")) {
            args.push("--progress=plain");
        }
        args.extend_from_slice(extra);
        Command::new(RDOCK_BUILD).args(&args).env("RDOCK_ROOT", &self.root).output().unwrap()
    }

    /// Builds with `--progress=rawjson` and returns the events.
    pub fn build_events(&self, ctx: &Path, extra: &[&str]) -> (Output, Vec<Value>) {
        let mut args = vec!["--progress=rawjson"];
        args.extend_from_slice(extra);
        let out = self.build(ctx, &args);
        let events = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad rawjson line {l:?}: {e}")))
            .collect();
        (out, events)
    }

    /// Active snapshots and temp files left in the store (a consistent store has none).
    pub fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("tmp"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let db = self.root.join("metadata.db");
        if db.exists() {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let mut stmt = conn.prepare("SELECT key FROM snapshots WHERE kind != 'committed'").unwrap();
            let keys = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            v.extend(keys.map(|k| format!("snapshot:{}", k.unwrap())));
        }
        v
    }
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `docker run ARGS`'s standard output. dockerd on this kind of machine (gVisor) has
/// failed the first start of an image just loaded with runc's "executable file not found
/// in $PATH" and started the same image a moment later: that one error is retried twice,
/// any other fails at once.
pub fn docker_run(args: &[&str]) -> String {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    for attempt in 1.. {
        let o = Command::new("/usr/bin/docker").args(&all).output().unwrap();
        if o.status.success() || attempt == 3 || !stderr(&o).contains("OCI runtime create failed") {
            assert_ok(&o);
            return out(&o);
        }
        eprintln!("docker run {args:?}: {} (attempt {attempt}, retrying)", stderr(&o).trim());
        std::thread::sleep(Duration::from_secs(1));
    }
    unreachable!()
}

/// A command's standard output, as text.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub data: Vec<u8>,
    pub link: Option<String>,
}

/// An image read back from an OCI-layout or docker tarball.
pub struct Image {
    pub index: Value,
    pub manifest: Value,
    pub config: Value,
    pub layers: Vec<Vec<Entry>>,
    pub layer_digests: Vec<String>,
    pub files: BTreeMap<String, Vec<u8>>,
}

pub fn read_tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut files = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        files.insert(p, buf);
    }
    files
}

pub fn layer_entries(blob: &[u8]) -> Vec<Entry> {
    let mut raw = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        GzDecoder::new(blob).read_to_end(&mut raw).unwrap();
    } else {
        raw = blob.to_vec();
    }
    let mut a = tar::Archive::new(&raw[..]);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Entry {
                path: e.path().unwrap().to_string_lossy().into_owned(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                data,
                link: e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
            }
        })
        .collect()
}

pub fn read_image(path: &Path) -> Image {
    let files = read_tar_files(path);
    let blob = |d: &str| {
        files.get(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))).unwrap_or_else(|| panic!("blob {d} missing")).clone()
    };
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mbytes = blob(&mdigest);
    assert_eq!(format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&mbytes))), mdigest, "manifest digest");
    let manifest: Value = serde_json::from_slice(&mbytes).unwrap();
    let config: Value = serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layer_digests: Vec<String> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    let layers = layer_digests.iter().map(|d| layer_entries(&blob(d))).collect();
    Image { index, manifest, config, layers, layer_digests, files }
}

impl Image {
    /// created_by of every history entry.
    pub fn history(&self) -> Vec<String> {
        self.config["history"].as_array().unwrap().iter().map(|h| h["created_by"].as_str().unwrap_or("").to_string()).collect()
    }

    /// The regular files of the image's filesystem (later layers win; whiteouts are not
    /// applied), by path without a leading `./` or `/`.
    pub fn files_in_layers(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in self.layers.iter().flatten() {
            if e.kind.is_file() {
                out.insert(e.path.trim_start_matches("./").trim_start_matches('/').to_string(), e.data.clone());
            }
        }
        out
    }

    /// Entries of the layers this build added (after the base's one layer).
    pub fn new_entries(&self) -> Vec<&Entry> {
        self.layers.iter().skip(1).flatten().collect()
    }
}

/// Runs a command and returns stdout, asserting success.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} could not run ({e}); .ci/run installs it"));
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// A real registry: Debian's docker-registry on a free loopback port, stopped on drop.

pub enum Auth {
    None,
    /// htpasswd (bcrypt) with one user.
    Basic {
        user: &'static str,
        password: &'static str,
    },
    /// Tokens from this realm, verified against this certificate.
    Token {
        realm: String,
        cert: PathBuf,
    },
}

pub struct Registry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain GET over loopback: the status code, or None if nothing answers.
pub fn http_status(host: &str, path: &str) -> Option<u16> {
    http_request(host, "GET", path)
}

/// A bodiless request over loopback: the status code.
pub fn http_request(host: &str, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Foreign layers may name URLs on loopback (distribution accepts none unless its config
/// lists them, as a registry hosting Windows images lists Microsoft's).
const FOREIGN_URLS: &str = "validation:\n  manifests:\n    urls:\n      allow:\n        - '^http://127\\.0\\.0\\.1:'\n";

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::Builder::new().prefix("rdock-registry-").tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, password } => {
                let line = sh("htpasswd", &["-Bbn", user, password]);
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line.trim()).unwrap();
                format!("auth:\n  htpasswd:\n    realm: rdock-test\n    path: {}\n", path.display())
            }
            Auth::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: rdock-test\n    issuer: rdock-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{FOREIGN_URLS}{auth_yaml}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry could not start; .ci/run installs it (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&host, "/v2/").is_none() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer: {}",
                std::fs::read_to_string(dir.path().join("log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { host, child, _dir: dir }
    }

    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A static file server on loopback (python's http.server), stopped when dropped.
pub struct HttpServer {
    child: std::process::Child,
    pub port: u16,
}

impl HttpServer {
    pub fn serve(dir: &std::path::Path) -> HttpServer {
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // It announces its port on its first line: wait for that, not for a fixed time.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .split("port ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected: {line}"));
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The names of the steps that ran, from rawjson events.
pub fn started(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().filter(|e| e["kind"] == "started").map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// A tar of `entries` (path, content), owned by 1234:1234.
pub fn tar_bytes(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, c) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(c.len() as u64);
        h.set_mode(0o600);
        h.set_uid(1234);
        h.set_gid(1234);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, p, c.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}
