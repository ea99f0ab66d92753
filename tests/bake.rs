//! `rdock bake` end to end, with buildx's documented bake files: targets built at once
//! (a step two targets share runs once, independent steps overlap), groups, inherits,
//! variables from the environment, `--set`, compose files, `target:` contexts, `--print`
//! and `--metadata-file`.

mod support;

use std::process::{Command, Output};
use support::*;

fn bake(f: &Fixture, dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(RDOCK);
    c.arg("bake").args(args).current_dir(dir).env("RDOCK_ROOT", &f.root);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn cat(f: &Fixture, image: &str, path: &str) -> String {
    let out = f.rdock(&["run", "--rm", image, "cat", path]);
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bake overview's two-target file, with Dockerfiles that share their first step.
const OVERVIEW: &str = r#"
group "default" {
  targets = ["frontend", "backend"]
}

target "frontend" {
  context = "./frontend"
  dockerfile = "frontend.Dockerfile"
  args = {
    NODE_VERSION = "22"
  }
  tags = ["myapp/frontend:${TAG}"]
}

target "backend" {
  context = "./backend"
  dockerfile = "backend.Dockerfile"
  args = {
    GO_VERSION = "1.25"
  }
  tags = ["myapp/backend:${TAG}"]
}

variable "TAG" {
  default = "latest"
}
"#;

#[test]
fn targets_build_at_once_and_share_steps() {
    let f = Fixture::new();
    let shared = "FROM busybox\nRUN echo shared > /shared\n";
    let dir = f.ctx(
        "project",
        &[
            ("docker-bake.hcl", OVERVIEW),
            ("frontend/frontend.Dockerfile", &format!("{shared}ARG NODE_VERSION\nRUN sleep 2 && echo node-$NODE_VERSION > /what\n")),
            ("backend/backend.Dockerfile", &format!("{shared}ARG GO_VERSION\nRUN sleep 2 && echo go-$GO_VERSION > /what\n")),
        ],
    );
    let meta = f.path("meta.json");
    let out = bake(&f, &dir, &["--progress=rawjson", "--metadata-file", meta.to_str().unwrap()], &[("TAG", "v1")]);
    assert_ok(&out);
    assert_eq!(cat(&f, "myapp/frontend:v1", "/what"), "node-22\n");
    assert_eq!(cat(&f, "myapp/backend:v1", "/what"), "go-1.25\n");

    let events: Vec<serde_json::Value> =
        stderr(&out).lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect();
    let ran = started(&events);
    assert_eq!(ran.iter().filter(|n| n.contains("RUN echo shared")).count(), 1, "the shared step ran more than once: {ran:#?}");
    assert!(ran.iter().any(|n| n.starts_with("[frontend ")) && ran.iter().any(|n| n.starts_with("[backend ")), "{ran:#?}");
    // Both sleeps started before either finished: the targets ran at once.
    let pos = |kind: &str, who: &str| {
        events.iter().position(|e| e["kind"] == kind && e["name"].as_str().is_some_and(|n| n.contains("sleep 2") && n.contains(who)))
    };
    let (s1, s2) = (pos("started", "node"), pos("started", "go"));
    let first_done = [pos("completed", "node"), pos("completed", "go")].into_iter().flatten().min();
    assert!(s1.is_some() && s2.is_some() && first_done.is_some(), "{events:#?}");
    assert!(s1 < first_done && s2 < first_done, "the targets ran one after the other: {events:#?}");

    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert!(m["frontend"]["containerimage.digest"].as_str().unwrap().starts_with("sha256:"), "{m}");
    assert_eq!(m["backend"]["image.name"], "docker.io/myapp/backend:v1");

    // One target by name; --set over the file.
    let out = bake(&f, &dir, &["backend", "--set", "backend.args.GO_VERSION=1.26", "--set", "*.tags=myapp/b:set"], &[]);
    assert_ok(&out);
    assert_eq!(cat(&f, "myapp/b:set", "/what"), "go-1.26\n");
}

/// The reference's `target.inherits` example, printed.
#[test]
fn print_shows_the_resolved_targets() {
    let f = Fixture::empty();
    let hcl = r#"
target "app-dev" {
  args = {
    GO_VERSION = "1.20"
    BUILDX_EXPERIMENTAL = 1
  }
  tags = ["docker.io/username/myapp"]
  dockerfile = "app.Dockerfile"
}

target "_release" {
  args = {
    BUILDKIT_CONTEXT_KEEP_GIT_DIR = 1
    BUILDX_EXPERIMENTAL = 0
  }
}

target "app-release" {
  inherits = ["app-dev", "_release"]
  platforms = ["linux/amd64", "linux/arm64"]
}
"#;
    let dir = f.ctx("p", &[("bake.hcl", hcl)]);
    let out = bake(&f, &dir, &["-f", "bake.hcl", "--print", "app-release"], &[]);
    assert_ok(&out);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["target"]["app-release"],
        serde_json::json!({
            "context": ".",
            "dockerfile": "app.Dockerfile",
            "args": {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "1", "BUILDX_EXPERIMENTAL": "0", "GO_VERSION": "1.20"},
            "tags": ["docker.io/username/myapp"],
            "platforms": ["linux/amd64", "linux/arm64"]
        })
    );
    assert_eq!(got["group"]["default"]["targets"], serde_json::json!(["app-release"]));

    // What rdock does not know is named; so is a target that does not exist.
    std::fs::write(dir.join("bad.hcl"), "target \"a\" {\n  attest = [\"type=sbom\"]\n}\n").unwrap();
    let out = bake(&f, &dir, &["-f", "bad.hcl", "a"], &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("attest"), "{}", stderr(&out));
    let out = bake(&f, &dir, &["-f", "bake.hcl", "nope"], &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("\"nope\"") && stderr(&out).contains("app-release"), "{}", stderr(&out));
    let out = bake(&f, &f.ctx("empty", &[("x", "")]), &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no bake file"), "{}", stderr(&out));
}

#[test]
fn compose_services_and_target_contexts_build() {
    let f = Fixture::new();
    let compose = "services:\n  web:\n    image: shop/web:${TAG:-dev}\n    build:\n      context: ./web\n      args:\n        GREETING: hello\n  db:\n    image: postgres\n";
    let hcl = r#"
target "base" {
  context = "./base"
}
target "app" {
  context = "./app"
  contexts = {
    base = "target:base"
  }
  tags = ["shop/app:1"]
}
"#;
    let dir = f.ctx(
        "shop",
        &[
            ("compose.yaml", compose),
            ("web/Dockerfile", "FROM busybox\nARG GREETING\nRUN echo $GREETING > /greeting\n"),
            ("bake.hcl", hcl),
            ("base/Dockerfile", "FROM busybox\nRUN echo from-base > /base\n"),
            ("app/Dockerfile", "FROM base\nRUN cat /base > /seen\n"),
        ],
    );
    // compose.yaml is found by default; a service without build: is no target.
    let out = bake(&f, &dir, &[], &[]);
    assert_ok(&out);
    assert_eq!(cat(&f, "shop/web:dev", "/greeting"), "hello\n");
    // `target:base` builds base first and gives it to app as `FROM base`.
    let out = bake(&f, &dir, &["-f", "bake.hcl", "app"], &[]);
    assert_ok(&out);
    assert_eq!(cat(&f, "shop/app:1", "/seen"), "from-base\n");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}
