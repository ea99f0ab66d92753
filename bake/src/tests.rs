//! buildx's documented bake examples, read and resolved as `buildx bake --print` shows them.

use super::*;

fn file(name: &str, text: &str) -> BakeFile {
    BakeFile { path: PathBuf::from(name), text: text.to_string() }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn print(files: &[BakeFile], env: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> serde_json::Value {
    let def = parse(files, env).unwrap();
    let plan = def.resolve(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    serde_json::from_str(&plan.to_json()).unwrap()
}

/// The reference's `target.inherits` example: the last of `inherits` wins a conflict.
#[test]
fn inherits_merges_as_the_reference_shows() {
    let hcl = r#"
target "app-dev" {
  args = {
    GO_VERSION = "1.20"
    BUILDX_EXPERIMENTAL = 1
  }
  tags = ["docker.io/username/myapp"]
  dockerfile = "app.Dockerfile"
  labels = {
    "org.opencontainers.image.source" = "https://github.com/username/myapp"
  }
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
    let got = print(&[file("docker-bake.hcl", hcl)], &no_env, &["app-release"]);
    let want = serde_json::json!({
      "group": {"default": {"targets": ["app-release"]}},
      "target": {
        "app-release": {
          "context": ".",
          "dockerfile": "app.Dockerfile",
          "args": {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "1", "BUILDX_EXPERIMENTAL": "0", "GO_VERSION": "1.20"},
          "labels": {"org.opencontainers.image.source": "https://github.com/username/myapp"},
          "tags": ["docker.io/username/myapp"],
          "platforms": ["linux/amd64", "linux/arm64"]
        }
      }
    });
    assert_eq!(got, want);
}

/// The bake overview's frontend/backend example: the default group builds both.
#[test]
fn the_default_group_names_what_bake_builds() {
    let hcl = r#"
group "default" {
  targets = ["frontend", "backend"]
}

target "frontend" {
  context = "./frontend"
  dockerfile = "frontend.Dockerfile"
  args = {
    NODE_VERSION = "22"
  }
  tags = ["myapp/frontend:latest"]
}

target "backend" {
  context = "./backend"
  dockerfile = "backend.Dockerfile"
  args = {
    GO_VERSION = "1.25"
  }
  tags = ["myapp/backend:latest"]
}
"#;
    let def = parse(&[file("docker-bake.hcl", hcl)], &no_env).unwrap();
    let plan = def.resolve(&[]).unwrap();
    assert_eq!(plan.order, ["frontend", "backend"]);
    assert_eq!(plan.targets["backend"].args["GO_VERSION"], "1.25");
    assert_eq!(plan.targets["frontend"].context.as_deref(), Some("./frontend"));
}

/// The reference's JSON file, and variables overridden by the environment.
#[test]
fn json_files_and_variables_from_the_environment() {
    let json = r#"{
  "variable": {"TAG": {"default": "latest"}},
  "group": {"default": {"targets": ["webapp"]}},
  "target": {"webapp": {"dockerfile": "Dockerfile", "tags": ["docker.io/username/webapp:${TAG}"]}}
}"#;
    let got = print(&[file("docker-bake.json", json)], &no_env, &[]);
    assert_eq!(got["target"]["webapp"]["tags"], serde_json::json!(["docker.io/username/webapp:latest"]));
    let env = |k: &str| (k == "TAG").then(|| "v2".to_string());
    let got = print(&[file("docker-bake.json", json)], &env, &[]);
    assert_eq!(got["target"]["webapp"]["tags"], serde_json::json!(["docker.io/username/webapp:v2"]));

    let hcl = r#"
variable "REGISTRY" { default = "docker.io/myorg" }
variable "TAG" { default = "latest" }
variable "FULL" { default = "${REGISTRY}/app" }
variable "PUSH" { default = false }
target "app" {
  tags = ["${FULL}:${TAG}", upper("x-${TAG}"), join("-", ["a", TAG])]
  no-cache = PUSH
}
"#;
    let env = |k: &str| match k {
        "TAG" => Some("v2.0".to_string()),
        "PUSH" => Some("true".to_string()),
        _ => None,
    };
    let got = print(&[file("docker-bake.hcl", hcl)], &env, &["app"]);
    assert_eq!(got["target"]["app"]["tags"], serde_json::json!(["docker.io/myorg/app:v2.0", "X-V2.0", "a-v2.0"]));
    assert_eq!(got["target"]["app"]["no-cache"], true);
}

/// The reference's merge example: compose.yaml, then docker-bake.hcl, whose tags win.
#[test]
fn later_files_override_tags_and_merge_args() {
    let compose =
        "services:\n  webapp:\n    image: first\n    build:\n      context: .\n      tags:\n        - bar\n      args:\n        A: one\n";
    let hcl = "target \"webapp\" {\n  tags = [\"foo\"]\n  args = { B = \"two\" }\n}\n";
    let got = print(&[file("compose.yaml", compose), file("docker-bake.hcl", hcl)], &no_env, &["webapp"]);
    assert_eq!(got["target"]["webapp"]["tags"], serde_json::json!(["foo"]));
    assert_eq!(got["target"]["webapp"]["args"], serde_json::json!({"A": "one", "B": "two"}));
    let got = print(&[file("compose.yaml", compose)], &no_env, &[]);
    assert_eq!(got["target"]["webapp"]["tags"], serde_json::json!(["first", "bar"]), "image: is the first tag");
}

#[test]
fn what_rdock_does_not_know_is_named() {
    let err = |hcl: &str| parse(&[file("docker-bake.hcl", hcl)], &no_env).unwrap_err().to_string();
    assert!(err("target \"a\" {\n  matrix = { x = [\"1\"] }\n}\n").contains("unknown field `matrix`"));
    assert!(err("function \"f\" {\n}\n").contains("function blocks are not supported"));
    assert!(err("target \"a\" {\n  tags = [nope]\n}\n").contains("nope"));
    assert!(err("target \"a\" {\n  tags = [\n").contains("docker-bake.hcl"));
    let def =
        parse(&[file("docker-bake.hcl", "target \"a\" {\n  inherits = [\"b\"]\n}\ntarget \"b\" {\n  inherits = [\"a\"]\n}\n")], &no_env)
            .unwrap();
    assert!(matches!(def.resolve(&["a".into()]), Err(BakeError::Cycle(_))));
    let e = def.resolve(&["c".into()]).unwrap_err().to_string();
    assert!(e.contains("\"c\"") && e.contains("a, b"), "{e}");
}

#[test]
fn set_overrides_attributes_of_the_targets_it_names() {
    let def = parse(
        &[file("docker-bake.hcl", "target \"a\" {}\ntarget \"b\" {}\ngroup \"default\" {\n  targets = [\"a\", \"b\"]\n}\n")],
        &no_env,
    )
    .unwrap();
    let mut plan = def.resolve(&[]).unwrap();
    plan.set("*.platform=linux/amd64,linux/arm64").unwrap();
    plan.set("a.args.V=2").unwrap();
    plan.set("b.tags=x:1").unwrap();
    assert_eq!(plan.targets["b"].platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(plan.targets["a"].args["V"], "2");
    assert_eq!(plan.targets["b"].tags, ["x:1"]);
    assert!(plan.set("a.potato=1").unwrap_err().to_string().contains("potato"));
    assert!(plan.set("c.tags=x").is_err());
}
