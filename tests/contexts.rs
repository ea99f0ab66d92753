//! Contexts and streams as CI scripts pass them: a Dockerfile on standard input, a tar
//! context (plain or gzip) on standard input, a git repository or an http(s) tarball as the
//! context, named contexts of every kind, `rdock save` to standard output and `rdock load`
//! from standard input and from an OCI layout directory. Remote contexts are served on
//! loopback (python's http.server, git's "dumb" protocol); hostile archives aim at canary
//! files in the test's own directory.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use support::*;

/// `rdock ARGS` with `input` on standard input.
fn rdock_in(f: &Fixture, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(RDOCK)
        .args(args)
        .env("RDOCK_ROOT", &f.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread: the child may fail before reading it all.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn local(f: &Fixture, name: &str) -> String {
    format!("type=local,dest={}", f.path(name).display())
}

fn read(f: &Fixture, p: &str) -> String {
    std::fs::read_to_string(f.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The steps a `--progress=rawjson` run of `rdock build` started.
fn ran(out: &Output) -> Vec<String> {
    let events: Vec<serde_json::Value> =
        stderr(out).lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect();
    started(&events)
}

#[test]
fn a_dockerfile_or_a_tar_context_comes_from_standard_input() {
    let f = Fixture::new();
    let dir = f.ctx("dir", &[("a.txt", "from the directory\n")]);
    let d = dir.to_str().unwrap();

    // -f -: the Dockerfile on stdin, the context a directory.
    let out = rdock_in(&f, &["build", "-q", "-o", &local(&f, "o1"), "-f", "-", d], b"FROM busybox\nCOPY a.txt /a.txt\n");
    assert_ok(&out);
    assert_eq!(read(&f, "o1/a.txt"), "from the directory\n");

    // `-`: a tar context, plain and gzip; its Dockerfile inside it.
    let df = "FROM busybox\nCOPY . /ctx/\nRUN cat /ctx/sub/b.txt > /b-copy\n";
    let tar = tar_bytes(&[("Dockerfile", df), ("sub/b.txt", "in the tar\n"), ("alt/Other", "FROM busybox\nCOPY sub /s\n")]);
    let out = rdock_in(&f, &["build", "--progress=rawjson", "-o", &local(&f, "o2"), "-"], &tar);
    assert_ok(&out);
    assert_eq!(read(&f, "o2/ctx/sub/b.txt"), "in the tar\n");
    assert_eq!(read(&f, "o2/b-copy"), "in the tar\n");
    // The same files gzipped, unpacked elsewhere: keyed by content, so nothing runs.
    let out = rdock_in(&f, &["build", "--progress=rawjson", "-o", &local(&f, "o3"), "-"], &gzip(&tar));
    assert_ok(&out);
    assert!(ran(&out).is_empty(), "the same context from another directory re-ran {:?}", ran(&out));
    assert_eq!(read(&f, "o3/b-copy"), "in the tar\n");
    // -f names a Dockerfile inside a tar context.
    let out = rdock_in(&f, &["build", "-o", &local(&f, "o4"), "-f", "alt/Other", "-"], &tar);
    assert_ok(&out);
    assert_eq!(read(&f, "o4/s/b.txt"), "in the tar\n");

    // `-` with a Dockerfile alone: an empty context.
    let out = rdock_in(&f, &["build", "-o", &local(&f, "o5"), "-"], b"FROM busybox\nRUN echo built > /x\n");
    assert_ok(&out);
    assert_eq!(read(&f, "o5/x"), "built\n");
    let out = rdock_in(&f, &["build", "-"], b"FROM busybox\nCOPY a.txt /\n");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("a.txt"), "{}", stderr(&out));

    let out = rdock_in(&f, &["build", "-f", "-", "-"], b"FROM busybox\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot both come from standard input"), "{}", stderr(&out));
    assert!(f.leftovers().is_empty(), "left in the store: {:?}", f.leftovers());
}

#[test]
fn a_hostile_tar_context_touches_nothing_outside_it() {
    let f = Fixture::new();
    let canary_dir = f.path("canary");
    std::fs::create_dir_all(&canary_dir).unwrap();
    let secret = canary_dir.join("secret");
    std::fs::write(&secret, "TOP-SECRET-CANARY\n").unwrap();
    let df = "FROM busybox\nCOPY . /ctx/\n";

    let mut escapes: Vec<(&str, Vec<u8>)> = Vec::new();
    // A symlink to the canary directory, then a file through it.
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "Dockerfile", df);
    let mut h = header(tar::EntryType::Symlink);
    b.append_link(&mut h, "link", &canary_dir).unwrap();
    append(&mut b, "link/planted", "owned\n");
    escapes.push(("symlink", b.into_inner().unwrap()));
    // A hard link to the canary file.
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "Dockerfile", df);
    let mut h = header(tar::EntryType::Link);
    b.append_link(&mut h, "stolen", &secret).unwrap();
    escapes.push(("hard link", b.into_inner().unwrap()));
    // A name climbing out (written raw: the tar crate refuses to make one).
    let mut raw = tar_bytes(&[("Dockerfile", df), ("XX/XXXXXXXXXXXXX", "owned\n")]);
    let at = raw.windows(16).position(|w| w == b"XX/XXXXXXXXXXXXX").unwrap();
    raw[at..at + 16].copy_from_slice(b"../../../planted");
    fix_checksum(&mut raw[at..at + 512]);
    escapes.push(("dot-dot", raw));

    for (what, tar) in escapes {
        let out = rdock_in(&f, &["build", "-o", &local(&f, &format!("o-{}", what.replace(' ', "-"))), "-"], &tar);
        let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(text.contains("unpacking the build context") && text.contains("outside") || text.contains("escapes"), "{what}: {text}");
        assert!(!text.contains("TOP-SECRET-CANARY"), "{what}: {text}");
        let leaked = walkdir::WalkDir::new(f.dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file() && e.path() != secret)
            .filter(|e| std::fs::read(e.path()).map(|b| b == b"TOP-SECRET-CANARY\n").unwrap_or(false))
            .map(|e| e.path().display().to_string())
            .collect::<Vec<_>>();
        assert!(leaked.is_empty(), "{what}: the canary's content reached {leaked:?}");
        assert_eq!(std::fs::read_dir(&canary_dir).unwrap().count(), 1, "{what}: something was planted beside the canary");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP-SECRET-CANARY\n");
        assert!(!f.path("planted").exists() && !f.dir.path().parent().unwrap().join("planted").exists(), "{what}");
        assert!(f.leftovers().is_empty(), "{what}: left in the store: {:?}", f.leftovers());
    }

    // A Dockerfile that is a link to a host file is read inside the context: not found.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Symlink);
    b.append_link(&mut h, "Dockerfile", &secret).unwrap();
    let out = rdock_in(&f, &["build", "-"], &b.into_inner().unwrap());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("Dockerfile is not in the build context"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("TOP-SECRET"), "{}", stderr(&out));
    assert_ok(&f.rdock(&["fsck"]));
}

fn header(kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &str) {
    let mut h = header(tar::EntryType::Regular);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, path, body.as_bytes()).unwrap();
}

/// Recomputes a tar header's checksum after its name was changed in place.
fn fix_checksum(header: &mut [u8]) {
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A bare repository `repo.git` under `site`, served over loopback, with `files` on main.
fn git_site(f: &Fixture, files: &[(&str, &str)]) -> (HttpServer, String) {
    let site = f.path("site");
    let bare = site.join("repo.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = f.ctx("work", files);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    git(&bare, &["update-server-info"]);
    let server = HttpServer::serve(&site);
    let url = format!("http://127.0.0.1:{}/repo.git", server.port);
    (server, url)
}

#[test]
fn git_and_http_contexts_are_fetched_and_built() {
    let f = Fixture::new();
    let (_server, repo) = git_site(
        &f,
        &[
            ("app/Dockerfile", "FROM busybox\nCOPY . /app/\n"),
            ("app/hello.txt", "hello from git\n"),
            ("Dockerfile", "FROM busybox\nCOPY . /all/\n"),
        ],
    );
    // #ref:subdir: the sub-directory is the context, its Dockerfile the Dockerfile.
    let out = f.rdock(&["build", "-q", "-o", &local(&f, "g1"), &format!("{repo}#main:app")]);
    assert_ok(&out);
    assert_eq!(read(&f, "g1/app/hello.txt"), "hello from git\n");
    assert!(!f.path("g1/app/.git").exists());
    // The whole repository, .git kept when BuildKit's build argument asks.
    let out = f.rdock(&["build", "-o", &local(&f, "g2"), "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", &repo]);
    assert_ok(&out);
    assert_eq!(read(&f, "g2/all/app/hello.txt"), "hello from git\n");
    assert!(f.path("g2/all/.git").is_dir(), ".git was dropped");
    // rdock-build takes the same as --opt context=.
    let out = Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--opt", &format!("context={repo}#main:app"), "--output", &local(&f, "g3")])
        .env("RDOCK_ROOT", &f.root)
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(read(&f, "g3/app/hello.txt"), "hello from git\n");

    // An http(s) tarball, gzip; a URL of a Dockerfile alone.
    let site = f.path("site");
    std::fs::write(site.join("ctx.tar.gz"), gzip(&tar_bytes(&[("Dockerfile", "FROM busybox\nCOPY t.txt /t\n"), ("t.txt", "tarball\n")])))
        .unwrap();
    std::fs::write(site.join("Dockerfile.txt"), "FROM busybox\nRUN echo from-url > /u\n").unwrap();
    let base = repo.trim_end_matches("/repo.git").to_string();
    assert_ok(&f.rdock(&["build", "-o", &local(&f, "h1"), &format!("{base}/ctx.tar.gz")]));
    assert_eq!(read(&f, "h1/t"), "tarball\n");
    assert_ok(&f.rdock(&["build", "-o", &local(&f, "h2"), &format!("{base}/Dockerfile.txt")]));
    assert_eq!(read(&f, "h2/u"), "from-url\n");

    // What cannot be fetched says so.
    for url in [format!("{base}/missing.tar.gz"), format!("{base}/nope.git#main")] {
        let out = f.rdock(&["build", &url]);
        assert_eq!(out.status.code(), Some(1), "{url}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(e.contains("fetching the build context") && e.contains(url.split('#').next().unwrap()), "{url}: {e}");
        assert!(!e.contains("No such file"), "{url}: {e}");
    }
    assert!(f.leftovers().is_empty(), "left in the store: {:?}", f.leftovers());
}

#[test]
fn named_contexts_stand_in_for_stages_images_and_sources() {
    let f = Fixture::new();
    let (_server, repo) = git_site(&f, &[("README", "readme from git\n")]);
    let libs = f.ctx("libs", &[("lib.txt", "a library\n"), ("secret.txt", "left out\n"), (".dockerignore", "secret.txt\n")]);
    // An OCI layout of an image with /marker, as another build exports it.
    let marker = f.ctx("marker", &[("Dockerfile", "FROM busybox\nRUN echo from-the-layout > /marker\n")]);
    let layout = f.path("layout");
    assert_ok(&f.rdock(&["build", "-o", &format!("type=oci,dest={},tar=false", layout.display()), marker.to_str().unwrap()]));
    let df = "FROM busybox AS tools\nRUN exit 1\n\
              FROM layoutbase AS fromlayout\nRUN cat /marker > /seen\n\
              FROM alpine\n\
              COPY --from=libs . /libs/\n\
              COPY --from=src README /README\n\
              COPY --from=tools /bin/busybox /bb\n\
              COPY --from=fromlayout /seen /seen\n\
              RUN --mount=from=libs,target=/l cat /l/lib.txt > /via-mount\n";
    let ctx = f.ctx("named", &[("Dockerfile", df)]);
    let contexts = [
        format!("libs={}", libs.display()),
        format!("src={repo}#main"),
        // `alpine` is not in the store and no registry is reachable: the context stands in.
        "alpine=docker-image://busybox".to_string(),
        // A stage of this name is replaced whole: its failing RUN never runs.
        "tools=docker-image://busybox:latest".to_string(),
        format!("layoutbase=oci-layout://{}", layout.display()),
    ];
    let mut args = vec!["build".to_string(), "-o".into(), local(&f, "n1")];
    for c in &contexts {
        args.extend(["--build-context".to_string(), c.clone()]);
    }
    args.push(ctx.display().to_string());
    let out = f.rdock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ok(&out);
    assert_eq!(read(&f, "n1/libs/lib.txt"), "a library\n");
    assert!(!f.path("n1/libs/secret.txt").exists(), "the named context's .dockerignore was not applied");
    assert_eq!(read(&f, "n1/README"), "readme from git\n");
    assert!(f.path("n1/bb").is_file());
    assert_eq!(read(&f, "n1/seen"), "from-the-layout\n");
    assert_eq!(read(&f, "n1/via-mount"), "a library\n");

    // The layout by digest; rdock-build's spelling of a local named context.
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let df2 = "FROM layoutbase\nCOPY --from=libs lib.txt /lib.txt\nRUN cat /marker > /seen\n";
    let ctx2 = f.ctx("named2", &[("Dockerfile", df2)]);
    let out = f.build(
        &ctx2,
        &[
            "--opt",
            &format!("context:layoutbase=oci-layout://{}@{digest}", layout.display()),
            "--opt",
            "context:libs=local:libsdir",
            "--local",
            &format!("libsdir={}", libs.display()),
            "--output",
            &local(&f, "n2"),
        ],
    );
    assert_ok(&out);
    assert_eq!(read(&f, "n2/lib.txt"), "a library\n");
    assert_eq!(read(&f, "n2/seen"), "from-the-layout\n");

    // Bad values are refused by name.
    let out = f.rdock(&["build", "--build-context", "x=s3://bucket/key", ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("s3://"), "{}", stderr(&out));
    let out = f.rdock(&["build", "--build-context", &format!("libs={}", f.path("nowhere").display()), ctx.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}

#[test]
fn save_writes_to_standard_output_and_load_reads_standard_input_and_layouts() {
    let f = Fixture::new();
    let out = f.rdock(&["save", "busybox"]);
    assert_ok(&out);
    assert!(out.stdout.len() > 100_000, "save wrote {} bytes to standard output", out.stdout.len());

    let other = Fixture::empty();
    let loaded = rdock_in(&other, &["load"], &gzip(&out.stdout));
    assert_ok(&loaded);
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("Loaded image: busybox"), "{}", String::from_utf8_lossy(&loaded.stdout));
    assert_ok(&other.rdock(&["run", "--rm", "busybox", "true"]));

    // An OCI layout directory, as skopeo writes one.
    let layout = f.path("skopeo-layout");
    let copied = Command::new("skopeo")
        .args(["copy", "-q", &format!("docker-archive:{}", busybox_tar().display()), &format!("oci:{}:v1", layout.display())])
        .output()
        .unwrap();
    assert_ok(&copied);
    let third = Fixture::empty();
    let out = third.rdock(&["load", "-i", layout.to_str().unwrap()]);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let id = said.trim().strip_prefix("Loaded image ID: ").unwrap_or_else(|| panic!("{said}"));
    assert_ok(&third.rdock(&["run", "--rm", id, "true"]));
    assert_ok(&third.rdock(&["fsck"]));

    let out = rdock_in(&third, &["load"], b"not an archive at all");
    assert_ne!(out.status.code(), Some(0));
    assert_ok(&third.rdock(&["fsck"]));
}
