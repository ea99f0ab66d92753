//! End to end: a Dockerfile in, an image out, checked — its files, config, history and
//! layers — plus the cache, the sandbox, the outputs (checked with skopeo and umoci) and
//! what the store looks like after failures. Runs as root on real overlay mounts and
//! namespaces; no registry, no network.

mod support;

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use support::*;

const CORE: &str = r#"FROM busybox AS base
ARG VERSION=1.0
ENV APP_HOME=/srv/app PATH_EXTRA="a b"
LABEL org.example.version=$VERSION maintainer="me"
WORKDIR $APP_HOME
COPY --chown=app:app --chmod=640 conf.txt ./conf/
COPY src/ ./src/
COPY *.md /docs/
ADD archive.tar /unpacked/
RUN echo "built $VERSION" > built.txt
EXPOSE 8080 53/udp
USER app
RUN id -u > /tmp/uid && id -G > /tmp/gids
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat built.txt"]
"#;

fn core_context(f: &Fixture) -> std::path::PathBuf {
    let ctx = f.ctx(
        "core",
        &[
            ("Dockerfile", CORE),
            ("conf.txt", "conf\n"),
            ("src/main.c", "int main(){}\n"),
            ("src/lib/util.c", "util\n"),
            ("src/lib/secret.key", "do not ship\n"),
            ("a.md", "A\n"),
            ("b.md", "B\n"),
            (".dockerignore", "# comment\nsrc/lib/secret.key\n*.md\n!a.md\n"),
        ],
    );
    std::fs::write(ctx.join("archive.tar"), tar_bytes(&[("dir/inner.txt", "inner\n")])).unwrap();
    ctx
}

#[test]
fn core_dockerfile_gives_buildkits_config_history_and_files() {
    let f = Fixture::new();
    let ctx = core_context(&f);
    let oci = f.path("core.tar");
    let out = f.build(
        &ctx,
        &[
            "--output",
            &format!("type=oci,dest={},name=core:1", oci.display()),
            "--output",
            &format!("type=local,dest={}", f.path("fs").display()),
        ],
    );
    assert_ok(&out);
    let img = read_image(&oci);
    let cfg = &img.config["config"];
    assert_eq!(
        cfg["Env"],
        json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "APP_HOME=/srv/app", "PATH_EXTRA=a b"])
    );
    assert_eq!(cfg["Labels"], json!({"org.example.version": "1.0", "maintainer": "me"}));
    assert_eq!(cfg["WorkingDir"], json!("/srv/app"));
    assert_eq!(cfg["ExposedPorts"], json!({"53/udp": {}, "8080/tcp": {}}));
    assert_eq!(cfg["User"], json!("app"));
    assert_eq!(cfg["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["Cmd"], json!(["cat built.txt"]));
    assert_eq!(img.config["architecture"], json!("amd64"));
    assert_eq!(img.config["os"], json!("linux"));
    let history = img.history();
    assert_eq!(
        history[2..],
        [
            "ARG VERSION=1.0",
            "ENV APP_HOME=/srv/app PATH_EXTRA=a b",
            "LABEL org.example.version=1.0 maintainer=me",
            "WORKDIR /srv/app",
            "COPY --chown=app:app --chmod=640 conf.txt ./conf/ # buildkit",
            "COPY src/ ./src/ # buildkit",
            "COPY *.md /docs/ # buildkit",
            "ADD archive.tar /unpacked/ # buildkit",
            "RUN |1 VERSION=1.0 /bin/sh -c echo \"built $VERSION\" > built.txt # buildkit",
            "EXPOSE [8080/tcp 53/udp]",
            "USER app",
            "RUN |1 VERSION=1.0 /bin/sh -c id -u > /tmp/uid && id -G > /tmp/gids # buildkit",
            "ENTRYPOINT [\"/bin/sh\" \"-c\"]",
            "CMD [\"cat built.txt\"]",
        ]
    );
    // One layer per filesystem step, and history agrees.
    let layered = img.config["history"].as_array().unwrap().iter().filter(|h| h["empty_layer"] != json!(true)).count();
    assert_eq!(layered, img.layers.len());
    assert_eq!(img.layers.len(), 1 + 7);
    assert_eq!(img.config["rootfs"]["diff_ids"].as_array().unwrap().len(), img.layers.len());
    assert!(
        img.config["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["comment"] == json!("buildkit.dockerfile.v0") || h["created_by"].as_str().unwrap().starts_with("/bin/sh"))
    );

    // The files.
    let fs = f.path("fs");
    let conf = std::fs::metadata(fs.join("srv/app/conf/conf.txt")).unwrap();
    assert_eq!((conf.uid(), conf.gid(), conf.mode() & 0o7777), (1000, 1000, 0o640));
    assert_eq!(std::fs::read_to_string(fs.join("srv/app/src/main.c")).unwrap(), "int main(){}\n");
    assert!(fs.join("srv/app/src/lib/util.c").exists());
    assert!(!fs.join("srv/app/src/lib/secret.key").exists(), ".dockerignore'd file was copied");
    assert!(fs.join("docs/a.md").exists());
    assert!(!fs.join("docs/b.md").exists(), "*.md is ignored except a.md");
    let src = std::fs::metadata(fs.join("srv/app/src/main.c")).unwrap();
    assert_eq!((src.uid(), src.gid()), (0, 0), "context files are owned by root");
    assert_eq!(std::fs::read_to_string(fs.join("unpacked/dir/inner.txt")).unwrap(), "inner\n");
    assert_eq!(std::fs::metadata(fs.join("unpacked/dir/inner.txt")).unwrap().uid(), 1234, "ADD keeps archive owners");
    assert_eq!(std::fs::read_to_string(fs.join("srv/app/built.txt")).unwrap(), "built 1.0\n");
    assert_eq!(std::fs::read_to_string(fs.join("tmp/uid")).unwrap(), "1000\n", "USER app is resolved from /etc/passwd");
    assert_eq!(std::fs::read_to_string(fs.join("tmp/gids")).unwrap(), "1000 10\n", "supplementary groups from /etc/group");
    assert!(!fs.join("archive.tar").exists());
}

#[test]
fn build_args_override_defaults() {
    let f = Fixture::new();
    let ctx = core_context(&f);
    let oci = f.path("args.tar");
    assert_ok(&f.build(&ctx, &["--opt", "build-arg:VERSION=2.5", "--output", &format!("type=oci,dest={}", oci.display())]));
    let img = read_image(&oci);
    assert_eq!(img.config["config"]["Labels"]["org.example.version"], json!("2.5"));
    let built = img.new_entries().into_iter().find(|e| e.path == "srv/app/built.txt").unwrap().data.clone();
    assert_eq!(String::from_utf8(built).unwrap(), "built 2.5\n");
}

#[test]
fn multi_stage_builds_only_what_the_target_needs() {
    let f = Fixture::new();
    let df = "FROM busybox AS builder\nRUN mkdir /out && echo built > /out/artifact && chown 1000:1000 /out/artifact\n\
              FROM busybox AS unused\nRUN exit 1\n\
              FROM scratch AS final\nCOPY --from=builder /out/artifact /artifact\nCOPY --from=0 /bin/busybox /bin/\n";
    let ctx = f.ctx("ms", &[("Dockerfile", df)]);
    let out = f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("final").display())]);
    assert_ok(&out);
    let fin = f.path("final");
    let art = std::fs::metadata(fin.join("artifact")).unwrap();
    assert_eq!((art.uid(), art.gid()), (1000, 1000), "COPY --from keeps the stage's owners");
    assert!(fin.join("bin/busybox").is_file());
    assert!(!fin.join("out").exists());

    let out = f.build(&ctx, &["--opt", "target=builder", "--output", &format!("type=local,dest={}", f.path("builder").display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("builder/out/artifact")).unwrap(), "built\n");
    assert!(f.path("builder/bin/sh").exists());
}

#[test]
fn copy_follows_dockers_destination_rules() {
    let f = Fixture::new();
    let df = "FROM busybox\nCOPY one.txt /file-as-name\nCOPY one.txt /into-dir/\nCOPY one.txt two.txt /many/\nCOPY dir /dir-contents\nCOPY dir/ /existing/\nCOPY t?o.txt /glob/\nWORKDIR /w\nCOPY one.txt rel\n";
    let ctx = f.ctx("copy", &[("Dockerfile", df), ("one.txt", "1"), ("two.txt", "2"), ("dir/sub/deep.txt", "d")]);
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]));
    let o = f.path("o");
    assert_eq!(std::fs::read_to_string(o.join("file-as-name")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(o.join("into-dir/one.txt")).unwrap(), "1");
    assert!(o.join("many/one.txt").is_file() && o.join("many/two.txt").is_file());
    assert_eq!(std::fs::read_to_string(o.join("dir-contents/sub/deep.txt")).unwrap(), "d", "a directory source copies its contents");
    assert!(!o.join("dir-contents/dir").exists());
    assert!(o.join("existing/sub/deep.txt").is_file());
    assert!(o.join("glob/two.txt").is_file());
    assert_eq!(std::fs::read_to_string(o.join("w/rel")).unwrap(), "1", "relative destinations are under WORKDIR");

    let bad = f.ctx("copy-bad", &[("Dockerfile", "FROM busybox\nCOPY one.txt two.txt /notadir\n"), ("one.txt", "1"), ("two.txt", "2")]);
    let out = f.build(&bad, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("must be a directory and end with a /"), "{}", stderr(&out));
}

#[test]
fn run_is_sandboxed_and_mount_stubs_never_land_in_layers() {
    let f = Fixture::new();
    let marker = f.path("host-only-marker");
    std::fs::write(&marker, "host").unwrap();
    let df = format!(
        "FROM busybox\n\
         RUN test \"$(hostname)\" = buildkitsandbox\n\
         RUN test ! -e {marker}\n\
         RUN test \"$$\" = 1 && n=$(ls /proc | grep -c '^[0-9]') && test \"$n\" -lt 8\n\
         RUN test \"$(grep -c : /proc/net/dev)\" = 2 && grep -q lo: /proc/net/dev && grep -q tap0: /proc/net/dev\n\
         RUN test -c /dev/null && echo ok > /dev/null && grep -q buildkitsandbox /etc/hosts\n\
         RUN echo layer > /f\n",
        marker = marker.display()
    );
    let ctx = f.ctx("sandbox", &[("Dockerfile", &df)]);
    let oci = f.path("sb.tar");
    let out = f.build(&ctx, &["--output", &format!("type=oci,dest={}", oci.display())]);
    assert_ok(&out);
    let img = read_image(&oci);
    let paths: Vec<String> = img.new_entries().iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, vec!["f"], "only the step's own change is in the layers");

    // A root without /proc, /dev, /sys or /etc: the stubs made for the sandbox are removed.
    let df = "FROM busybox AS bb\nFROM scratch\nCOPY --from=bb /bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"touch\", \"/made\"]\n";
    let ctx = f.ctx("stubs", &[("Dockerfile", df)]);
    let oci = f.path("stubs.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={}", oci.display())]));
    let img = read_image(&oci);
    let run_layer: Vec<&str> = img.layers.last().unwrap().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(run_layer, vec!["made"]);
}

#[test]
fn failing_run_reports_exit_code_and_last_output_and_keeps_the_store_consistent() {
    let f = Fixture::new();
    let ctx = f.ctx("fail", &[("Dockerfile", "FROM busybox\nRUN echo ok > /ok\nRUN echo line-one && echo line-two >&2 && exit 3\n")]);
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("> line-one") && err.contains("> line-two"), "{err}");
    assert!(err.contains("RUN echo line-one"), "{err}");
    assert!(err.contains("Dockerfile line 3"), "{err}");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    // The next build works and reuses the step that completed.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo ok > /ok\nRUN echo fixed\n").unwrap();
    let (out, events) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert!(events.iter().any(|e| e["kind"] == "cached" && e["name"].as_str().unwrap().contains("echo ok")));
}

#[test]
fn malformed_dockerfiles_get_file_line_column_and_what_was_expected() {
    let f = Fixture::new();
    let ctx = f.ctx("bad", &[("Dockerfile", "FROM busybox\nCOPY --form=x a b\n")]);
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2:6"), "{err}");
    assert!(err.contains("2 | COPY --form=x a b"), "{err}");
    assert!(err.contains("  |      ^^^^^^^^ expected one of --from"), "{err}");

    std::fs::write(ctx.join("Dockerfile"), "FORM busybox\n").unwrap();
    let err = stderr(&f.build(&ctx, &[]));
    assert!(err.contains("unknown instruction: FORM") && err.contains("Dockerfile:1:1") && err.contains("expected one of"), "{err}");

    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo \\\n").unwrap();
    assert_ok(&f.build(&ctx, &[]));
    assert!(f.leftovers().is_empty());
}

#[test]
fn missing_sources_unknown_images_stages_and_targets_are_named() {
    let f = Fixture::new();
    let ctx = f.ctx("missing", &[("Dockerfile", "FROM busybox\nCOPY nothere.txt /x\n")]);
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothere.txt"), "{}", stderr(&out));

    std::fs::write(ctx.join("Dockerfile"), "FROM nosuchimage:1.0\n").unwrap();
    let err = stderr(&f.build(&ctx, &[]));
    assert!(err.contains("nosuchimage:1.0") && err.contains("Dockerfile:1"), "{err}");

    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY --from=nosuchstage /a /a\n").unwrap();
    let err = stderr(&f.build(&ctx, &[]));
    assert!(err.contains("nosuchstage"), "{err}");

    std::fs::write(ctx.join("Dockerfile"), "FROM busybox AS one\n").unwrap();
    let out = f.build(&ctx, &["--opt", "target=nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("\"nope\"") && stderr(&out).contains("one"), "{}", stderr(&out));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// BuildKit's rule for wildcards: `COPY foo nomatch* /` copies foo, from the context or
/// from a stage; only a COPY where nothing matched at all, or a plain name that is missing,
/// fails, naming the source.
#[test]
fn a_wildcard_that_matches_nothing_is_fine_beside_one_that_does() {
    let f = Fixture::new();
    let df = "FROM busybox AS base\nRUN mkdir /src && echo s > /src/s1\n\
              FROM busybox\nCOPY foo nomatch* /out/\nCOPY --from=base /src/s* /src/nomatch* /out2/\n";
    let ctx = f.ctx("wild", &[("Dockerfile", df), ("foo", "foo\n")]);
    let o = f.path("o");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", o.display())]));
    assert_eq!(std::fs::read_to_string(o.join("out/foo")).unwrap(), "foo\n");
    assert_eq!(std::fs::read_to_string(o.join("out2/s1")).unwrap(), "s\n");
    for (df, missing) in [
        ("FROM busybox\nCOPY nomatch* other* /x/\n", "nomatch*"),
        ("FROM busybox AS base\nFROM busybox\nCOPY --from=base /nomatch* /x/\n", "nomatch*"),
        ("FROM busybox\nCOPY foo missing.txt /x/\n", "missing.txt"),
    ] {
        std::fs::write(ctx.join("Dockerfile"), df).unwrap();
        let out = f.build(&ctx, &[]);
        assert_eq!(out.status.code(), Some(1), "{df}");
        assert!(stderr(&out).contains(missing), "{df}: {}", stderr(&out));
    }
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// `--build-arg http_proxy=…` reaches RUN under both spellings, as BuildKit's executor sets
/// them, and stays out of the image.
#[test]
fn a_proxy_build_arg_reaches_run_in_both_spellings() {
    let f = Fixture::new();
    let ctx = f.ctx("proxy", &[("Dockerfile", "FROM busybox\nRUN env | grep -i '^[a-z]*_proxy=' | sort > /p\n")]);
    let o = f.path("o");
    let out =
        f.build(&ctx, &["--opt", "build-arg:http_proxy=http://p.invalid:3128", "--output", &format!("type=local,dest={}", o.display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(o.join("p")).unwrap(), "HTTP_PROXY=http://p.invalid:3128\nhttp_proxy=http://p.invalid:3128\n");
}

/// `BUILDKIT_SANDBOX_HOSTNAME` names RUN's sandbox (and its /etc/hosts line); a value that
/// is no hostname is refused before anything runs.
#[test]
fn the_sandbox_hostname_build_arg_names_run_steps() {
    let f = Fixture::new();
    let ctx = f.ctx("hn", &[("Dockerfile", "FROM busybox\nRUN hostname > /h; grep -c myhost /etc/hosts >> /h || true\n")]);
    let o = f.path("o");
    let out =
        f.build(&ctx, &["--opt", "build-arg:BUILDKIT_SANDBOX_HOSTNAME=myhost", "--output", &format!("type=local,dest={}", o.display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(o.join("h")).unwrap(), "myhost\n1\n");
    let o = f.path("o2");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", o.display())]));
    assert_eq!(std::fs::read_to_string(o.join("h")).unwrap(), "buildkitsandbox\n0\n");
    let out = f.build(&ctx, &["--opt", "build-arg:BUILDKIT_SANDBOX_HOSTNAME=bad host\nx"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("BUILDKIT_SANDBOX_HOSTNAME"), "{}", stderr(&out));
}

/// `rdock build -q` prints only the image ID and `--iidfile` writes it, as docker's; the
/// ID is the one `inspect` shows, and a build without `-t` still has one.
#[test]
fn quiet_builds_print_the_image_id_and_iidfile_writes_it() {
    let f = Fixture::new();
    let ctx = f.ctx("q", &[("Dockerfile", "FROM busybox\nRUN echo q > /q\n")]);
    let iid = f.path("iid");
    let o = f.rdock(&["build", "-q", "--iidfile", iid.to_str().unwrap(), "-t", "quiet:1", ctx.to_str().unwrap()]);
    assert_ok(&o);
    let id = out(&o);
    assert!(id.starts_with("sha256:") && id.len() == "sha256:".len() + 64 + 1, "{id:?}");
    assert_eq!(stderr(&o), "", "-q shows no progress");
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), id.trim_end());
    let inspected: serde_json::Value = serde_json::from_str(&out(&f.rdock(&["inspect", "quiet:1"]))).unwrap();
    assert_eq!(inspected[0]["Id"].as_str(), Some(id.trim_end()), "{inspected}");
    // Without -t there is still an image, and its ID (its own: the config's time differs).
    let o = f.rdock(&["build", "-q", ctx.to_str().unwrap()]);
    assert_ok(&o);
    assert!(out(&o).starts_with("sha256:") && out(&o).len() == id.len(), "{:?}", out(&o));
    // buildx's --load is accepted: the result is kept in the store (here under -t).
    let o = f.rdock(&["build", "--load", "-q", "-t", "loaded:1", ctx.to_str().unwrap()]);
    assert_ok(&o);
    let inspected: serde_json::Value = serde_json::from_str(&out(&f.rdock(&["inspect", "loaded:1"]))).unwrap();
    assert_eq!(inspected[0]["Id"].as_str(), Some(out(&o).trim_end()));
}

/// A build without a name is listed as `<none>` with its ID, as docker lists it, survives
/// garbage collection, and goes with `rmi ID` or when it is named.
#[test]
fn untagged_builds_are_listed_as_none_until_removed_or_named() {
    let f = Fixture::new();
    let ctx = f.ctx(
        "u",
        &[(
            "Dockerfile",
            "FROM busybox
RUN echo u > /u
",
        )],
    );
    let o = f.rdock(&["build", "-q", ctx.to_str().unwrap()]);
    assert_ok(&o);
    let id = out(&o).trim().to_string();
    let listed = || -> Vec<serde_json::Value> {
        out(&f.rdock(&["images", "--format", "json"])).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let none: Vec<_> = listed().into_iter().filter(|i| i["Repository"] == "<none>").collect();
    assert_eq!(none.len(), 1, "{none:?}");
    assert_eq!(none[0]["Tag"], "<none>");
    assert_eq!(none[0]["ID"].as_str(), Some(id.as_str()));
    let table = out(&f.rdock(&["images"]));
    assert!(table.lines().any(|l| l.starts_with("<none>") && l.contains(&id["sha256:".len()..][..12])), "{table}");
    // Garbage collection keeps it, as docker keeps dangling images until pruned.
    assert_ok(&f.rdock(&["prune", "--all"]));
    assert_eq!(out(&f.rdock(&["run", "--rm", &id["sha256:".len()..][..12], "cat", "/u"])), "u\n");
    // rmi by ID removes it.
    let o = f.rdock(&["rmi", &id["sha256:".len()..][..12]]);
    assert_ok(&o);
    assert!(listed().iter().all(|i| i["Repository"] != "<none>"));
    // Naming one takes it off the <none> list.
    let o = f.rdock(&["build", "-q", "--no-cache", ctx.to_str().unwrap()]);
    let id = out(&o).trim().to_string();
    assert_ok(&f.rdock(&["tag", &id["sha256:".len()..][..12], "named:1"]));
    assert!(listed().iter().all(|i| i["Repository"] != "<none>"));
    assert_ok(&f.rdock(&["fsck"]));
}

/// `--annotation` annotates the manifest that is stored, exported and inspected.
#[test]
fn annotations_reach_the_manifest() {
    let f = Fixture::new();
    let ctx = f.ctx(
        "ann",
        &[(
            "Dockerfile",
            "FROM busybox
",
        )],
    );
    let oci = f.path("ann.tar");
    let o = f.rdock(&[
        "build",
        "--annotation",
        "org.opencontainers.image.vendor=rdock",
        "--annotation",
        "manifest:com.example.k=v",
        "-t",
        "ann:1",
        "-o",
        &format!("type=oci,dest={}", oci.display()),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let raw: serde_json::Value =
        serde_json::from_str(&sh("skopeo", &["inspect", "--raw", &format!("oci-archive:{}", oci.display())])).unwrap();
    assert_eq!(raw["annotations"]["org.opencontainers.image.vendor"], "rdock", "{raw}");
    assert_eq!(raw["annotations"]["com.example.k"], "v", "{raw}");
    let o = f.rdock(&["build", "--annotation", "index:k=v", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("index"), "{}", stderr(&o));
}

/// `--label` (`--opt label:K=V` for rdock-build) labels the image over the Dockerfile's
/// LABELs, as buildx's; `--label K` is an empty value, as docker's.
#[test]
fn build_labels_go_over_the_dockerfiles() {
    let f = Fixture::new();
    let ctx = f.ctx("lbl", &[("Dockerfile", "FROM busybox\nLABEL a=0 c=3\n")]);
    assert_ok(&f.rdock(&["build", "--label", "a=1", "--label", "b", "-t", "l:1", ctx.to_str().unwrap()]));
    assert_ok(&f.build(&ctx, &["--opt", "label:x=y", "--output", "type=image,name=l:2"]));
    let labels = |name: &str| {
        let v: serde_json::Value = serde_json::from_str(&out(&f.rdock(&["inspect", name]))).unwrap();
        v[0]["Config"]["Labels"].clone()
    };
    assert_eq!(labels("l:1"), serde_json::json!({"a": "1", "b": "", "c": "3"}));
    assert_eq!(labels("l:2"), serde_json::json!({"a": "0", "c": "3", "x": "y"}));
}

/// `BUILDKIT_PROGRESS` chooses the progress mode when `--progress` is not given, as in
/// buildx; the flag wins over it.
#[test]
fn buildkit_progress_sets_the_default_progress_mode() {
    let f = Fixture::new();
    let ctx = f.ctx("bp", &[("Dockerfile", "FROM busybox\nRUN echo one\n")]);
    let build = |extra: &[&str]| {
        std::process::Command::new(RDOCK_BUILD)
            .args(["--frontend", "dockerfile", "--local", &format!("context={}", ctx.display()), "--opt", "no-cache="])
            .args(extra)
            .env("RDOCK_ROOT", &f.root)
            .env("BUILDKIT_PROGRESS", "rawjson")
            .output()
            .unwrap()
    };
    let o = build(&[]);
    assert_ok(&o);
    assert!(stderr(&o).lines().any(|l| l.starts_with('{')), "{}", stderr(&o));
    let o = build(&["--progress", "plain"]);
    assert_ok(&o);
    assert!(!stderr(&o).lines().any(|l| l.starts_with('{')) && stderr(&o).contains("RUN echo one"), "{}", stderr(&o));
}

/// `--shm-size` and `--ulimit` (`--opt shm-size=`, `--opt ulimit=`) reach RUN steps, and are
/// part of the step's key: changing them runs it again. A limit rdock does not know is an
/// error naming it.
#[test]
fn shm_size_and_ulimits_reach_run_steps() {
    let f = Fixture::new();
    let df = "FROM busybox\nRUN df -k /dev/shm | tail -1 | awk '{print $2}' > /r && ulimit -n >> /r && ulimit -Hn >> /r\n";
    let ctx = f.ctx("res", &[("Dockerfile", df)]);
    let read = |o: &std::path::Path| std::fs::read_to_string(o.join("r")).unwrap();
    let o = f.path("o1");
    assert_ok(&f.rdock(&["build", "--shm-size", "128m", "--ulimit", "nofile=1000:2000", "-o", o.to_str().unwrap(), ctx.to_str().unwrap()]));
    assert_eq!(read(&o), "131072\n1000\n2000\n");
    let o = f.path("o2");
    assert_ok(&f.build(
        &ctx,
        &["--opt", "shm-size=33554432", "--opt", "ulimit=nofile=500", "--output", &format!("type=local,dest={}", o.display())],
    ));
    assert_eq!(read(&o), "32768\n500\n500\n");
    let o = f.path("o3");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", o.display())]));
    assert!(read(&o).starts_with("65536\n"), "{}", read(&o));
    let bad = f.rdock(&["build", "--ulimit", "bogus=1", ctx.to_str().unwrap()]);
    assert!(!bad.status.success() && stderr(&bad).contains("unknown limit \"bogus\""), "{}", stderr(&bad));
}

#[test]
fn cache_reruns_only_what_changed_by_content_not_mtime() {
    let f = Fixture::new();
    let df = "FROM busybox\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy\nCOPY b.txt /b.txt\n";
    let ctx = f.ctx("cache", &[("Dockerfile", df), ("a.txt", "a"), ("b.txt", "b")]);
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert_eq!(started(&ev).len(), 4);

    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert!(started(&ev).is_empty(), "second build ran {:?}", started(&ev));
    assert_eq!(ev.iter().filter(|e| e["kind"] == "cached").count(), 4);

    // mtime only: nothing runs.
    for p in ["a.txt", "b.txt"] {
        let t = nix_time(2_000_000_000);
        set_mtime(&ctx.join(p), t);
    }
    let (_, ev) = f.build_events(&ctx, &[]);
    assert!(started(&ev).is_empty(), "touching files re-ran {:?}", started(&ev));

    std::fs::write(ctx.join("b.txt"), "b2").unwrap();
    let (_, ev) = f.build_events(&ctx, &[]);
    assert_eq!(started(&ev), vec!["[5/5] COPY b.txt /b.txt"]);

    std::fs::write(ctx.join("a.txt"), "a2").unwrap();
    let (_, ev) = f.build_events(&ctx, &[]);
    assert_eq!(started(&ev), vec!["[3/5] COPY a.txt /a.txt", "[4/5] RUN cat /a.txt > /copy", "[5/5] COPY b.txt /b.txt"]);

    let (_, ev) = f.build_events(&ctx, &["--no-cache"]);
    assert_eq!(started(&ev).len(), 4, "--no-cache runs everything");
}

fn nix_time(s: i64) -> i64 {
    s
}

fn set_mtime(p: &std::path::Path, secs: i64) {
    let st = Command::new("touch").arg("-d").arg(format!("@{secs}")).arg(p).status().unwrap();
    assert!(st.success());
}

/// When stage `stage`'s RUN started and completed, from a build's events.
fn run_span(ev: &[serde_json::Value], stage: &str) -> (u64, u64) {
    let name = |e: &serde_json::Value| e["name"].as_str().unwrap().starts_with(&format!("[{stage} 2/2] RUN"));
    let s = ev.iter().find(|e| e["kind"] == "started" && name(e)).unwrap()["time_ns"].as_u64().unwrap();
    let c = ev.iter().find(|e| e["kind"] == "completed" && name(e)).unwrap()["time_ns"].as_u64().unwrap();
    (s, c)
}

#[test]
fn independent_stages_run_concurrently() {
    let f = Fixture::new();
    let df = "FROM busybox AS a\nRUN sleep 1 && echo a > /a\nFROM busybox AS b\nRUN sleep 1 && echo b > /b\nFROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n";
    let ctx = f.ctx("par", &[("Dockerfile", df)]);
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    let ((sa, ca), (sb, cb)) = (run_span(&ev, "a"), run_span(&ev, "b"));
    assert!(sa < cb && sb < ca, "stage a [{sa}, {ca}] and stage b [{sb}, {cb}] did not overlap");
    // --max-parallelism 1: one step at a time, each started when the other has completed.
    let g = Fixture::new();
    let (out, ev) = g.build_events(&ctx, &["--max-parallelism", "1"]);
    assert_ok(&out);
    let ((sa, ca), (sb, cb)) = (run_span(&ev, "a"), run_span(&ev, "b"));
    assert!(ca <= sb || cb <= sa, "with --max-parallelism 1, stage a [{sa}, {ca}] and stage b [{sb}, {cb}] overlapped");
}

#[test]
fn identical_steps_are_solved_once() {
    let f = Fixture::new();
    let df = "FROM busybox AS a\nRUN echo same > /same\nFROM busybox AS b\nRUN echo same > /same\nFROM busybox\nCOPY --from=a /same /a\nCOPY --from=b /same /b\n";
    let ctx = f.ctx("dedup", &[("Dockerfile", df)]);
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    let runs = started(&ev).into_iter().filter(|n| n.contains("RUN echo same")).count();
    assert_eq!(runs, 1);
}

/// Layers are stored in the form cheapest to make (tars: the blob digest is the diff ID)
/// and compressed only when they leave: an export has the build's layers as gzip, the same
/// bytes each time, while `rdock save` (like `docker save`) writes the stored tars.
#[test]
fn layers_are_stored_as_tars_and_leave_the_machine_as_gzip() {
    let f = Fixture::new();
    let ctx = f.ctx("tars", &[("Dockerfile", "FROM busybox\nRUN head -c 300000 /dev/urandom > /noise && echo hi > /hi\n")]);
    let (a, b, saved) = (f.path("a.tar"), f.path("b.tar"), f.path("saved.tar"));
    assert_ok(&f.build(&ctx, &["--output", "type=image,name=tars:1", "--output", &format!("type=oci,dest={}", a.display())]));
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={}", b.display())]));
    assert_ok(&f.rdock(&["save", "--format", "oci", "-o", saved.to_str().unwrap(), "tars:1"]));
    let (ia, ib, stored) = (read_image(&a), read_image(&b), read_image(&saved));
    assert_eq!(ia.manifest["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip", "{}", ia.manifest);
    assert_eq!(ia.layer_digests, ib.layer_digests, "the same gzip bytes on a second export");
    assert_eq!(stored.manifest["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar", "{}", stored.manifest);
    assert_eq!(stored.layer_digests[1], stored.config["rootfs"]["diff_ids"][1].as_str().unwrap(), "a stored layer is its diff");
    assert_eq!(ia.config["rootfs"], stored.config["rootfs"]);
    assert_eq!(ia.files_in_layers()["hi"], b"hi\n");
    assert_eq!(ia.files_in_layers()["noise"], stored.files_in_layers()["noise"]);
    // compression=uncompressed ships them as stored.
    let c = f.path("c.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={},compression=uncompressed", c.display())]));
    assert_eq!(read_image(&c).layer_digests[1], stored.layer_digests[1]);
}

#[test]
fn outputs_are_accepted_by_skopeo_and_umoci() {
    let f = Fixture::new();
    let ctx = f.ctx("out", &[("Dockerfile", "FROM busybox\nRUN echo hello > /hello\nCMD [\"cat\", \"/hello\"]\n")]);
    let oci = f.path("o.tar");
    let docker = f.path("d.tar");
    let tarball = f.path("fs.tar");
    let out = f.build(
        &ctx,
        &[
            "--output",
            &format!("type=oci,dest={},name=example.com/out:v1", oci.display()),
            "--output",
            &format!("type=docker,dest={},name=out:v1", docker.display()),
            "--output",
            &format!("type=tar,dest={}", tarball.display()),
            "--metadata-file",
            f.path("meta.json").to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let inspect: serde_json::Value = serde_json::from_str(&sh("skopeo", &["inspect", &format!("oci-archive:{}", oci.display())])).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path("meta.json")).unwrap()).unwrap();
    assert_eq!(inspect["Digest"], meta["containerimage.digest"]);
    assert_eq!(meta["image.name"], json!("example.com/out:v1,docker.io/library/out:v1"));
    let build_ref = meta["buildx.build.ref"].as_str().unwrap();
    assert!(build_ref.starts_with("rdock/local/") && build_ref.len() == "rdock/local/".len() + 25, "{build_ref}");
    // A name two outputs write is named once.
    let again = f.path("meta2.json");
    let out = f.build(
        &ctx,
        &[
            "--output",
            "type=image,name=twice:1",
            "--output",
            &format!("type=docker,dest={},name=twice:1", f.path("t2.tar").display()),
            "--metadata-file",
            again.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let meta2: serde_json::Value = serde_json::from_slice(&std::fs::read(&again).unwrap()).unwrap();
    assert_eq!(meta2["image.name"], json!("docker.io/library/twice:1"));
    assert_ne!(meta2["buildx.build.ref"], meta["buildx.build.ref"]);

    let d: serde_json::Value = serde_json::from_str(&sh("skopeo", &["inspect", &format!("docker-archive:{}", docker.display())])).unwrap();
    assert_eq!(d["Layers"].as_array().unwrap().len(), 2);
    let files = read_tar_files(&docker);
    let mj: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(mj[0]["RepoTags"], json!(["out:v1"]));

    let layout = f.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    assert!(Command::new("tar").arg("xf").arg(&oci).arg("-C").arg(&layout).status().unwrap().success());
    let bundle = f.path("bundle");
    sh("umoci", &["unpack", "--image", &format!("{}:v1", layout.display()), bundle.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/hello")).unwrap(), "hello\n");
    let rt: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(rt["process"]["args"], json!(["cat", "/hello"]));

    let listing = sh("tar", &["tf", tarball.to_str().unwrap()]);
    assert!(listing.lines().any(|l| l == "hello") && listing.lines().any(|l| l == "bin/busybox"), "{listing}");
}

#[test]
fn layers_carry_whiteouts_and_identical_content_gives_identical_digests() {
    let f = Fixture::new();
    let df = "FROM busybox\nRUN rm /bin/vi\nRUN rm -rf /home && mkdir /home && touch /home/new\n";
    let ctx = f.ctx("wh", &[("Dockerfile", df)]);
    let oci = f.path("wh.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={}", oci.display())]));
    let img = read_image(&oci);
    let rm: Vec<&str> = img.layers[1].iter().map(|e| e.path.as_str()).collect();
    assert_eq!(rm, vec!["bin/", "bin/.wh.vi"]);
    let replaced: Vec<&str> = img.layers[2].iter().map(|e| e.path.as_str()).collect();
    assert_eq!(replaced, vec!["home/", "home/.wh..wh..opq", "home/new"]);

    // The same Dockerfile and context in two stores give byte-identical images.
    let df = "FROM scratch\nCOPY a.txt /a.txt\nCOPY d /d\n";
    let ctx = f.ctx("det", &[("Dockerfile", df), ("a.txt", "a"), ("d/e.txt", "e")]);
    let digests: Vec<String> = (0..2)
        .map(|i| {
            let g = Fixture::empty();
            let dest = f.path(&format!("det{i}.tar"));
            let out = Command::new(RDOCK_BUILD)
                .args(["--frontend", "dockerfile", "--local", &format!("context={}", ctx.display()), "--progress=quiet"])
                .arg("--output")
                .arg(format!("type=oci,dest={}", dest.display()))
                .env("RDOCK_ROOT", &g.root)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .output()
                .unwrap();
            assert_ok(&out);
            read_image(&dest).index["manifests"][0]["digest"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn llb_dumps_are_stable() {
    let f = Fixture::new();
    let ctx = core_context(&f);
    let dump = |fmt: &str| {
        let out = f.build(&ctx, &["--dump-llb", fmt]);
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let a = dump("json");
    assert_eq!(a, dump("json"));
    let def: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert!(def["nodes"].as_array().unwrap().len() >= 9);
    assert!(dump("ron").contains("Exec("));
    assert!(dump("dot").starts_with("digraph llb"));
    // Dumping builds nothing.
    assert!(f.leftovers().is_empty());
}

#[test]
fn progress_modes() {
    let f = Fixture::new();
    let ctx = f.ctx("prog", &[("Dockerfile", "FROM busybox\nRUN echo visible-output\n")]);
    let out = f.build(&ctx, &["--progress=quiet", "--no-cache"]);
    assert_ok(&out);
    assert!(out.stderr.is_empty(), "quiet printed {}", stderr(&out));
    let out = f.build(&ctx, &["--progress=plain", "--no-cache"]);
    assert!(
        stderr(&out).contains("#1 [2/2] RUN echo visible-output")
            && stderr(&out).contains("visible-output\n")
            && stderr(&out).contains("DONE"),
        "{}",
        stderr(&out)
    );
    let (_, ev) = f.build_events(&ctx, &["--no-cache"]);
    assert!(ev.iter().any(|e| e["kind"] == "log" && e["detail"].as_str().unwrap().contains("visible-output")));
    // tty mode under a pseudo-terminal.
    let cmd = format!(
        "RDOCK_ROOT={} {} --frontend dockerfile --local context={} --progress=tty --no-cache",
        f.root.display(),
        RDOCK_BUILD,
        ctx.display()
    );
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("=> [2/2] RUN echo visible-output"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn docker_style_cli_builds_tags_saves_and_loads() {
    let f = Fixture::new();
    let ctx = f.ctx("cli", &[("Dockerfile", "FROM busybox\nLABEL a=b\nCMD [\"echo\", \"hi\"]\n")]);
    let out = Command::new(RDOCK)
        .args(["build", "-t", "myimg:1", "--progress=quiet", ctx.to_str().unwrap()])
        .env("RDOCK_ROOT", &f.root)
        .output()
        .unwrap();
    assert_ok(&out);
    let images = String::from_utf8(f.rdock(&["images"]).stdout).unwrap();
    assert!(images.lines().any(|l| l.starts_with("myimg ") && l.contains(" 1 ")), "{images}");
    let inspect: serde_json::Value = serde_json::from_slice(&f.rdock(&["inspect", "myimg:1"]).stdout).unwrap();
    assert_eq!(inspect[0]["Config"]["Cmd"], json!(["echo", "hi"]));
    assert_eq!(inspect[0]["Config"]["Labels"], json!({"a": "b"}));
    let hist = String::from_utf8(f.rdock(&["history", "myimg:1"]).stdout).unwrap();
    assert!(hist.contains("LABEL a=b"), "{hist}");
    assert_ok(&f.rdock(&["tag", "myimg:1", "other/name:2"]));
    let saved = f.path("saved.tar");
    assert_ok(&f.rdock(&["save", "-o", saved.to_str().unwrap(), "other/name:2"]));
    let g = Fixture::empty();
    let out = g.rdock(&["load", "-i", saved.to_str().unwrap()]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Loaded image: other/name:2"));
    assert_ok(&f.rdock(&["rmi", "other/name:2"]));
    assert!(!String::from_utf8(f.rdock(&["images"]).stdout).unwrap().contains("other/name"));
    assert_eq!(f.rdock(&["run"]).status.code(), Some(2), "run without an image is a usage error");
    assert_eq!(f.rdock(&["build", "--cache-to", "type=inline", ctx.to_str().unwrap()]).status.code(), Some(2));
}

#[test]
fn oci_layouts_load_and_serve_as_base_images() {
    let f = Fixture::new();
    let ctx = f.ctx("base", &[("Dockerfile", "FROM busybox\nRUN echo base > /base\n")]);
    let oci = f.path("base.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={},name=mybase:2", oci.display())]));
    let g = Fixture::empty();
    let out = g.rdock(&["load", "-i", oci.to_str().unwrap()]);
    assert_ok(&out);
    let ctx2 = g.ctx("child", &[("Dockerfile", "FROM mybase:2\nRUN cat /base > /child\n")]);
    let out = g.build(&ctx2, &["--output", &format!("type=local,dest={}", g.path("o").display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(g.path("o/child")).unwrap(), "base\n");
}

#[test]
fn a_killed_build_leaves_a_store_the_next_build_reuses() {
    let f = Fixture::new();
    let ctx = f.ctx("kill", &[("Dockerfile", "FROM busybox\nRUN echo done-before > /before\nRUN sleep 60\n")]);
    let c = format!("context={}", ctx.display());
    let mut child = Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--local", &c, "--progress=rawjson"])
        .env("RDOCK_ROOT", &f.root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait, by reading its progress, until the long step has started; then kill -9.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("\"started\"") && line.contains("RUN sleep 60") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo done-before > /before\nRUN echo after\n").unwrap();
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert!(ev.iter().any(|e| e["kind"] == "cached" && e["name"].as_str().unwrap().contains("done-before")), "completed work is reused");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// Rewrites the tarball at `src` into `dst`; `edit` returns each file's new name and bytes.
fn rewrite_tar(src: &std::path::Path, dst: &std::path::Path, edit: impl Fn(String, Vec<u8>) -> (String, Vec<u8>)) {
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for (path, data) in read_tar_files(src) {
        if path.ends_with('/') {
            continue;
        }
        let (name, data) = edit(path, data);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, &name, &data[..]).unwrap();
    }
    out.finish().unwrap();
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
}

#[test]
fn broken_archives_are_refused_and_leave_the_store_usable() {
    let f = Fixture::new();
    let ctx = f.ctx("src", &[("Dockerfile", "FROM busybox\nRUN echo payload > /p\n")]);
    let good = f.path("good.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={},name=victim:1", good.display())]));
    let img = read_image(&good);
    let hex_of = |d: &serde_json::Value| d.as_str().unwrap().trim_start_matches("sha256:").to_string();
    let layer = hex_of(&json!(img.layer_digests[1]));
    let g = Fixture::empty();

    // A layer blob whose bytes do not match its digest.
    let flipped = f.path("flipped.tar");
    rewrite_tar(&good, &flipped, |p, mut d| {
        if p.ends_with(&layer) {
            let n = d.len() / 2;
            d[n] ^= 0xff;
        }
        (p, d)
    });
    let out = g.rdock(&["load", "-i", flipped.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));

    // A well-formed image whose config claims a diff ID its layer does not unpack to.
    let (old_cfg, old_m) = (hex_of(&img.manifest["config"]["digest"]), hex_of(&img.index["manifests"][0]["digest"]));
    let mut cfg = img.config.clone();
    cfg["rootfs"]["diff_ids"][1] = json!(format!("sha256:{}", "0".repeat(64)));
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let mut manifest = img.manifest.clone();
    manifest["config"]["digest"] = json!(format!("sha256:{}", sha256_hex(&cfg_bytes)));
    manifest["config"]["size"] = json!(cfg_bytes.len());
    let m_bytes = serde_json::to_vec(&manifest).unwrap();
    let mut index = img.index.clone();
    index["manifests"][0]["digest"] = json!(format!("sha256:{}", sha256_hex(&m_bytes)));
    index["manifests"][0]["size"] = json!(m_bytes.len());
    let lying = f.path("lying.tar");
    rewrite_tar(&good, &lying, |p, d| {
        if p == "index.json" {
            (p, serde_json::to_vec(&index).unwrap())
        } else if p.ends_with(&old_cfg) {
            (format!("blobs/sha256/{}", sha256_hex(&cfg_bytes)), cfg_bytes.clone())
        } else if p.ends_with(&old_m) {
            (format!("blobs/sha256/{}", sha256_hex(&m_bytes)), m_bytes.clone())
        } else {
            (p, d)
        }
    });
    let out = g.rdock(&["load", "-i", lying.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unpacks to"), "{}", stderr(&out));

    assert!(!String::from_utf8(g.rdock(&["images"]).stdout).unwrap().contains("victim"), "a refused image was tagged");
    assert!(g.leftovers().is_empty(), "{:?}", g.leftovers());
    // The good archive still loads and builds on top.
    assert_ok(&g.rdock(&["load", "-i", good.to_str().unwrap()]));
    let ctx2 = g.ctx("on-top", &[("Dockerfile", "FROM victim:1\nRUN cat /p\n")]);
    assert_ok(&g.build(&ctx2, &[]));
}

#[test]
fn heredocs_on_run_copy_and_add() {
    let f = Fixture::new();
    let df = "FROM busybox\n\
RUN <<EOF\necho one > /one\necho two > /two\nEOF\n\
RUN <<EOF\n#!/bin/sh\necho \"shebang $0\" > /shebang\nEOF\n\
RUN cat <<A > /a && cat <<B > /b\nalpha\nA\nbeta\nB\n\
ARG NAME=world\n\
COPY <<EOF /greeting\nhello $NAME \"quoted\"\nEOF\n\
COPY <<\"EOF\" /raw\nhello $NAME\nEOF\n\
ADD <<-EOF <<EOF2 /many/\n\ttabbed\n\tEOF\nx\nEOF2\n\
RUN echo after > /after\n";
    let ctx = f.ctx("heredoc", &[("Dockerfile", df)]);
    let oci = f.path("hd.tar");
    let out = f.build(
        &ctx,
        &["--output", &format!("type=local,dest={}", f.path("o").display()), "--output", &format!("type=oci,dest={}", oci.display())],
    );
    assert_ok(&out);
    let read = |p: &str| std::fs::read_to_string(f.path("o").join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("one"), "one\n");
    assert_eq!(read("two"), "two\n");
    assert_eq!(read("shebang"), "shebang /dev/pipes/EOF\n", "a #! heredoc runs as a file from /dev/pipes");
    assert_eq!(read("a"), "alpha\n");
    assert_eq!(read("b"), "beta\n");
    assert_eq!(read("greeting"), "hello world \"quoted\"\n", "unquoted delimiter: expanded, quotes kept");
    assert_eq!(read("raw"), "hello $NAME\n", "quoted delimiter: not expanded");
    assert_eq!(read("many/EOF"), "tabbed\n", "<<- strips leading tabs");
    assert_eq!(read("many/EOF2"), "x\n");
    assert_eq!(read("after"), "after\n", "lines after the heredocs are instructions again");
    let img = read_image(&oci);
    assert!(img.new_entries().iter().all(|e| !e.path.starts_with("dev")), "the /dev/pipes mount leaked into a layer");
    let history = img.history();
    assert!(history.iter().any(|h| h == "COPY <<EOF /greeting # buildkit"), "{history:?}");
    let (_, ev) = f.build_events(&ctx, &["--no-cache"]);
    assert!(ev.iter().any(|e| e["kind"] == "started" && e["name"] == "[2/9] RUN <<EOF (echo one > /one...)"), "{ev:?}");
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn run_mounts_cache_tmpfs_bind_and_secrets() {
    let f = Fixture::new();
    let secret = "s3cr3t-value-9f8e7d";
    std::fs::write(f.path("token"), secret).unwrap();
    let df = "FROM busybox\n\
RUN --mount=type=cache,target=/cache sh -c 'echo run >> /cache/log; wc -l < /cache/log > /count'\n\
RUN --mount=type=tmpfs,target=/scratch sh -c 'echo t > /scratch/t && test -f /scratch/t && echo ok > /tmpfs-ok'\n\
RUN --mount=type=bind,target=/ctx sh -c 'cat /ctx/input.txt > /from-ctx && find /ctx | sort > /ctx-listing'\n\
RUN --mount=type=bind,target=/ctx,rw sh -c 'echo x > /ctx/new && cat /ctx/input.txt > /rw-ok'\n\
RUN --mount=type=secret,id=token sh -c 'wc -c < /run/secrets/token > /secret-len'\n\
RUN --mount=type=secret,id=token,env=TOKEN,target=/s sh -c 'test \"$TOKEN\" = \"$(cat /s)\" && echo ok > /env-ok'\n";
    let ctx = f.ctx(
        "mounts",
        &[
            ("Dockerfile", df),
            ("input.txt", "from the context\n"),
            ("hidden.txt", "ignored\n"),
            ("private/secret.key", "ignored\n"),
            ("private/keep.txt", "re-included\n"),
            (".dockerignore", "hidden.txt\nprivate\n!private/keep.txt\n"),
        ],
    );
    let secret_arg = format!("id=token,src={}", f.path("token").display());
    let build = |extra: &[&str]| {
        let mut args = vec!["--secret", &secret_arg];
        args.extend_from_slice(extra);
        f.build(&ctx, &args)
    };
    let oci = f.path("m.tar");
    let out = build(&[
        "--output",
        &format!("type=oci,dest={}", oci.display()),
        "--output",
        &format!("type=local,dest={}", f.path("o").display()),
    ]);
    assert_ok(&out);
    let read = |p: &str| std::fs::read_to_string(f.path("o").join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("count").trim(), "1");
    assert_eq!(read("tmpfs-ok"), "ok\n");
    assert_eq!(read("from-ctx"), "from the context\n");
    // The context bind shows what .dockerignore lets through, and nothing else.
    let listing = read("ctx-listing");
    let seen: Vec<&str> = listing.lines().collect();
    assert!(seen.contains(&"/ctx/input.txt") && seen.contains(&"/ctx/private/keep.txt"), "{listing}");
    assert!(
        !seen.contains(&"/ctx/hidden.txt") && !seen.contains(&"/ctx/private/secret.key"),
        "ignored files visible in the bind mount:\n{listing}"
    );
    assert_eq!(read("rw-ok"), "from the context\n");
    assert!(!ctx.join("new").exists(), "a rw bind wrote into the build context");
    assert_eq!(read("secret-len").trim(), secret.len().to_string());
    assert_eq!(read("env-ok"), "ok\n");
    let img = read_image(&oci);
    let paths: Vec<&str> = img.new_entries().iter().map(|e| e.path.as_str()).collect();
    for p in &paths {
        let first = p.trim_end_matches('/').split('/').next().unwrap_or("");
        assert!(!["scratch", "ctx", "run", "s"].contains(&first), "mount point {p} leaked into a layer: {paths:?}");
    }
    // A cache mount's target stays as an empty directory, as BuildKit leaves it (images
    // that `pip install` with a cache at /root/.cache/pip have that directory); never its
    // contents.
    let cache: Vec<&&str> = paths.iter().filter(|p| p.trim_end_matches('/').split('/').next() == Some("cache")).collect();
    assert_eq!(cache.iter().map(|p| p.trim_end_matches('/')).collect::<Vec<_>>(), ["cache"], "{paths:?}");
    // The secret is nowhere: not in the store (blobs, snapshots, database), not in the log.
    for e in walkdir_files(&f.root) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        assert!(!contains_bytes(&bytes, secret.as_bytes()), "secret found in {}", e.display());
    }
    assert!(!stderr(&out).contains(secret));

    // The cache mount persists between builds; the context bind is part of the cache key.
    let out = build(&["--no-cache", "--output", &format!("type=local,dest={}", f.path("o2").display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("o2/count")).unwrap().trim(), "2");
    std::fs::write(ctx.join("input.txt"), "changed\n").unwrap();
    let mut args = vec!["--secret", secret_arg.as_str(), "--progress=rawjson"];
    let o3 = format!("type=local,dest={}", f.path("o3").display());
    args.extend_from_slice(&["--output", &o3]);
    let out = f.build(&ctx, &args);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("o3/from-ctx")).unwrap(), "changed\n");

    // A required secret that was not given fails the step and names it.
    let req = f.ctx("req", &[("Dockerfile", "FROM busybox\nRUN --mount=type=secret,id=missing,required cat /run/secrets/missing\n")]);
    let out = f.build(&req, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("secret missing is required"), "{}", stderr(&out));
}

fn walkdir_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn onbuild_triggers_run_when_the_image_is_a_base() {
    let f = Fixture::new();
    let base = f.ctx("onb-base", &[("Dockerfile", "FROM busybox\nONBUILD RUN echo triggered > /triggered\nONBUILD COPY marker /marker\n")]);
    let base_tar = f.path("onb.tar");
    assert_ok(&f.build(&base, &["--output", "type=image,name=onb:1", "--output", &format!("type=oci,dest={}", base_tar.display())]));
    let img = read_image(&base_tar);
    assert_eq!(img.config["config"]["OnBuild"], json!(["RUN echo triggered > /triggered", "COPY marker /marker"]));
    assert!(img.layers.len() == 1, "ONBUILD adds no layer to the image that declares it");

    let child =
        f.ctx("onb-child", &[("Dockerfile", "FROM onb:1\nRUN cat /triggered /marker > /both\n"), ("marker", "from the child's context\n")]);
    let child_tar = f.path("child.tar");
    let out = f.build(
        &child,
        &["--output", &format!("type=oci,dest={}", child_tar.display()), "--output", &format!("type=local,dest={}", f.path("o").display())],
    );
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("o/both")).unwrap(), "triggered\nfrom the child's context\n");
    let img = read_image(&child_tar);
    assert!(img.config["config"].get("OnBuild").is_none(), "triggers are not inherited: {}", img.config["config"]);
}

#[test]
fn copy_chmod_accepts_octal_and_symbolic_modes() {
    let f = Fixture::new();
    let df =
        "FROM busybox\nCOPY --chmod=u=rwx,go=rx run.sh /bin/run.sh\nCOPY --chmod=a+X,go-w tree /tree\nCOPY --chmod=0600 run.sh /private\n";
    let ctx = f.ctx("chmod", &[("Dockerfile", df), ("run.sh", "#!/bin/sh\n"), ("tree/sub/file", "f")]);
    std::fs::set_permissions(ctx.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(ctx.join("tree/sub/file"), std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]));
    let mode = |p: &str| std::fs::metadata(f.path("o").join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/run.sh"), 0o755);
    assert_eq!(mode("tree/sub"), 0o755, "X adds x to directories");
    assert_eq!(mode("tree/sub/file"), 0o644, "X adds no x to plain files; go-w removes write");
    assert_eq!(mode("private"), 0o600);
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY --chmod=u*x run.sh /x\n").unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid chmod value") && stderr(&out).contains("Dockerfile:2"), "{}", stderr(&out));
}

/// COPY keeps set-user-ID and set-group-ID bits through --chown, as BuildKit does (owner
/// first, then mode: a chown after the chmod clears them), and replaces what was there.
#[test]
fn copy_keeps_setuid_bits_through_chown_and_replaces_what_was_there() {
    let f = Fixture::new();
    let df =
        "FROM busybox\nRUN echo old > /tool && ln -s /etc/passwd /link\nCOPY --chown=7:8 tool /tool\nCOPY tool /link\nCOPY tool /plain\n";
    let ctx = f.ctx("suid", &[("Dockerfile", df), ("tool", "#!/bin/sh\n")]);
    std::fs::set_permissions(ctx.join("tool"), std::os::unix::fs::PermissionsExt::from_mode(0o6755)).unwrap();
    let out = f.path("suid.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={}", out.display())]));
    let img = read_image(&out);
    let last = |p: &str| {
        img.new_entries().into_iter().rev().find(|e| e.path.trim_start_matches('/') == p).cloned().unwrap_or_else(|| panic!("{p} missing"))
    };
    let tool = last("tool");
    assert_eq!((tool.mode & 0o7777, tool.uid, tool.gid, tool.data.as_slice()), (0o6755, 7, 8, &b"#!/bin/sh\n"[..]));
    // The destination's symlink is followed inside the root, as Docker does.
    let through = last("etc/passwd");
    assert_eq!((through.mode & 0o7777, through.data.as_slice()), (0o6755, &b"#!/bin/sh\n"[..]));
    assert_eq!(last("plain").mode & 0o7777, 0o6755);
}

#[test]
fn build_checks_warn_like_a_compiler_and_check_directive_is_honoured() {
    let f = Fixture::new();
    let df = "FROM busybox AS Base\nENV API_TOKEN=x\nCMD echo hi\n";
    let ctx = f.ctx("lint", &[("Dockerfile", df)]);
    // A build warns and still succeeds.
    let out = f.build(&ctx, &[]);
    assert_ok(&out);
    let err = stderr(&out);
    for rule in ["StageNameCasing", "SecretsUsedInArgOrEnv", "JSONArgsRecommended"] {
        assert!(err.contains(&format!("warning: {rule}:")), "{rule} missing:\n{err}");
    }
    assert!(
        err.contains("Dockerfile:1:")
            && err.contains("1 | FROM busybox AS Base")
            && err.contains("= help: https://docs.docker.com/go/dockerfile/rule/stage-name-casing/"),
        "{err}"
    );
    // --check reports without building, and fails when there are warnings.
    let out = f.build(&ctx, &["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Check complete, 3 warnings found"), "{}", stderr(&out));
    let out = Command::new(RDOCK).args(["build", "--check", ctx.to_str().unwrap()]).env("RDOCK_ROOT", &f.root).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // skip= silences rules; error=true turns the rest into a failed build.
    std::fs::write(ctx.join("Dockerfile"), format!("# check=skip=StageNameCasing,SecretsUsedInArgOrEnv,JSONArgsRecommended\n{df}"))
        .unwrap();
    let out = f.build(&ctx, &["--check"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("no warnings found"));
    std::fs::write(ctx.join("Dockerfile"), format!("# check=skip=StageNameCasing;error=true\n{df}")).unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("check=error=true") && !stderr(&out).contains("StageNameCasing"), "{}", stderr(&out));
}

#[test]
fn add_downloads_urls_verifies_checksums_and_caches_by_content() {
    let f = Fixture::new();
    let site = f.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("tool.txt"), "v1\n").unwrap();
    let server = HttpServer::serve(&site);
    let url = format!("http://127.0.0.1:{}/tool.txt", server.port);
    let sum = format!("sha256:{}", sha256_hex(b"v1\n"));
    let df = format!("FROM busybox\nADD {url} /dl/\nADD --checksum={sum} {url} /checked\nRUN cat /dl/tool.txt > /copy\n");
    let ctx = f.ctx("add-url", &[("Dockerfile", &df)]);
    let out = f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("o/dl/tool.txt")).unwrap(), "v1\n");
    assert_eq!(std::fs::metadata(f.path("o/dl/tool.txt")).unwrap().mode() & 0o777, 0o600, "downloads are 0600 as in BuildKit");
    assert_eq!(std::fs::read_to_string(f.path("o/checked")).unwrap(), "v1\n");
    assert_eq!(std::fs::read_to_string(f.path("o/copy")).unwrap(), "v1\n");
    let (_, ev) = f.build_events(&ctx, &[]);
    assert!(started(&ev).is_empty(), "unchanged download re-ran {:?}", started(&ev));

    // The file changes: the checksum no longer holds, and without it the steps rerun.
    std::fs::write(site.join("tool.txt"), "v2\n").unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("checksum mismatch"), "{}", stderr(&out));
    std::fs::write(ctx.join("Dockerfile"), format!("FROM busybox\nADD {url} /dl/\nRUN cat /dl/tool.txt > /copy\n")).unwrap();
    let (out, ev) = f.build_events(&ctx, &["--output", &format!("type=local,dest={}", f.path("o2").display())]);
    assert_ok(&out);
    assert_eq!(started(&ev).len(), 2, "{:?}", started(&ev));
    assert_eq!(std::fs::read_to_string(f.path("o2/copy")).unwrap(), "v2\n");

    // Remote archives are files unless --unpack says otherwise.
    std::fs::write(site.join("bundle.tar"), tar_bytes(&[("inner/file.txt", "packed\n")])).unwrap();
    let bundle = format!("http://127.0.0.1:{}/bundle.tar", server.port);
    std::fs::write(ctx.join("Dockerfile"), format!("FROM busybox\nADD {bundle} /kept/\nADD --unpack {bundle} /opened/\n")).unwrap();
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o3").display())]));
    assert!(f.path("o3/kept/bundle.tar").is_file());
    assert_eq!(std::fs::read_to_string(f.path("o3/opened/inner/file.txt")).unwrap(), "packed\n");

    std::fs::write(ctx.join("Dockerfile"), format!("FROM busybox\nCOPY {url} /x\n")).unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("can't be a URL for COPY"), "{}", stderr(&out));
}

#[test]
fn copy_parents_keeps_source_directories() {
    let f = Fixture::new();
    let df = "FROM busybox\nCOPY --parents a/b/one.txt c/two.txt /flat/\nCOPY --parents src/./pkg/*.go /pivot/\nCOPY --parents a /whole/\nCOPY --link a/b/one.txt /linked\n";
    let ctx =
        f.ctx("parents", &[("Dockerfile", df), ("a/b/one.txt", "1"), ("c/two.txt", "2"), ("src/pkg/x.go", "x"), ("src/pkg/y.go", "y")]);
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]));
    let o = f.path("o");
    assert_eq!(std::fs::read_to_string(o.join("flat/a/b/one.txt")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(o.join("flat/c/two.txt")).unwrap(), "2");
    assert!(o.join("pivot/pkg/x.go").is_file() && o.join("pivot/pkg/y.go").is_file(), "the /./ pivot drops what precedes it");
    assert!(!o.join("pivot/src").exists());
    assert_eq!(std::fs::read_to_string(o.join("whole/a/b/one.txt")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(o.join("linked")).unwrap(), "1");
}

#[test]
fn add_checks_out_git_repositories_by_commit() {
    let f = Fixture::new();
    // A bare repository served over loopback with git's "dumb" HTTP protocol.
    let site = f.path("site");
    let bare = site.join("repo.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = f.path("work");
    std::fs::create_dir_all(work.join("docs")).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "v1\n").unwrap();
    std::fs::write(work.join("docs/guide.md"), "guide\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    git(&bare, &["update-server-info"]);
    let server = HttpServer::serve(&site);
    let repo = format!("http://127.0.0.1:{}/repo.git", server.port);
    let df = format!(
        "FROM busybox\nADD {repo}#main /src\nADD --keep-git-dir {repo} /full\nADD {repo}#main:docs /docs\nRUN cat /src/README > /copy\n"
    );
    let ctx = f.ctx("git", &[("Dockerfile", &df)]);
    let out = f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]);
    assert_ok(&out);
    let o = f.path("o");
    assert_eq!(std::fs::read_to_string(o.join("src/README")).unwrap(), "v1\n");
    assert!(!o.join("src/.git").exists(), ".git is dropped by default");
    assert!(o.join("full/.git").is_dir(), "--keep-git-dir keeps it");
    assert_eq!(std::fs::read_to_string(o.join("docs/guide.md")).unwrap(), "guide\n", "#ref:subdir takes a sub-directory");
    let (_, ev) = f.build_events(&ctx, &[]);
    assert!(started(&ev).is_empty(), "an unchanged commit re-ran {:?}", started(&ev));

    // A new commit on main: what reads it runs again.
    std::fs::write(work.join("README"), "v2\n").unwrap();
    git(&work, &["commit", "-q", "-am", "two"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    git(&bare, &["update-server-info"]);
    let (out, ev) = f.build_events(&ctx, &["--output", &format!("type=local,dest={}", f.path("o2").display())]);
    assert_ok(&out);
    assert!(started(&ev).iter().any(|n| n.contains("RUN cat /src/README")), "{:?}", started(&ev));
    assert_eq!(std::fs::read_to_string(f.path("o2/copy")).unwrap(), "v2\n");

    std::fs::write(ctx.join("Dockerfile"), format!("FROM busybox\nADD {repo}#nosuchbranch /x\n")).unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nosuchbranch"), "{}", stderr(&out));
}

#[test]
fn ssh_mounts_forward_an_agent_socket() {
    let f = Fixture::new();
    let sock = f.path("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let df = "FROM busybox\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock-path\n";
    let ctx = f.ctx("ssh", &[("Dockerfile", df)]);
    let ssh = format!("default={}", sock.display());
    let oci = f.path("ssh.tar");
    assert_ok(&f.build(&ctx, &["--ssh", &ssh, "--output", &format!("type=oci,dest={}", oci.display())]));
    let img = read_image(&oci);
    let entries: Vec<&str> = img.new_entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(entries, vec!["sock-path"], "the socket's mount point leaked");
    let data = img.new_entries()[0].data.clone();
    assert_eq!(String::from_utf8(data).unwrap(), "/run/buildkit/ssh_agent.0\n");
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN --mount=type=ssh,required true\n").unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ssh agent default is required"), "{}", stderr(&out));
    // Regression: agents travelled in the secrets map as `ssh:ID`, so a secret mount of
    // that id read the agent's socket path. Secrets and agents are apart now.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN --mount=type=secret,id=ssh:default,required cat /run/secrets/ssh:default\n")
        .unwrap();
    let out = f.build(&ctx, &["--ssh", &ssh]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("secret ssh:default is required but was not provided"), "{}", stderr(&out));
}

#[test]
fn cache_mounts_can_be_seeded_from_a_stage() {
    let f = Fixture::new();
    let df = "FROM busybox AS seed\nRUN mkdir -p /data && echo seeded > /data/s\nFROM busybox\nRUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/data sh -c 'cat /c/s > /out && echo more >> /c/s'\nRUN --mount=type=cache,id=seeded,target=/c cat /c/s > /out2\n";
    let ctx = f.ctx("seed", &[("Dockerfile", df)]);
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]));
    assert_eq!(std::fs::read_to_string(f.path("o/out")).unwrap(), "seeded\n");
    assert_eq!(std::fs::read_to_string(f.path("o/out2")).unwrap(), "seeded\nmore\n", "the seeded cache is the same cache by id");
}

/// One expected entry of the final filesystem: path, type, mode, owner, content or link.
struct Expect(&'static str, tar::EntryType, u32, (u64, u64), &'static str);

#[test]
fn kitchen_sink_fixture_gives_the_files_and_config_buildkit_writes() {
    let f = Fixture::new();
    let ctx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kitchen-sink/ctx");
    let fs_tar = f.path("fs.tar");
    let oci = f.path("img.tar");
    let out = f.build(
        &ctx,
        &["--output", &format!("type=tar,dest={}", fs_tar.display()), "--output", &format!("type=oci,dest={}", oci.display())],
    );
    assert_ok(&out);
    let entries = layer_entries(&std::fs::read(&fs_tar).unwrap());
    let find = |p: &str| entries.iter().find(|e| e.path.trim_end_matches('/') == p);
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let expected = [
        Expect("opt/app", D, 0o755, (0, 0), ""),
        Expect("opt/app/VERSION", F, 0o644, (1000, 1000), "1.2.3\n"),
        Expect("opt/app/bin", D, 0o755, (1000, 1000), ""),
        Expect("opt/app/bin/app", F, 0o750, (1000, 1000), "#!/bin/sh\necho \"app $*\"\n"),
        Expect("opt/app/bin/app-link", L, 0o777, (1000, 1000), "app"),
        // `COPY --chmod=640 … /etc/app/` made it: current BuildKit gives the directories a
        // copy makes its octal mode (fsutil copy.Copy; docker 20.10's BuildKit gave 0755).
        Expect("etc/app", D, 0o640, (0, 0), ""),
        Expect("etc/app/settings.ini", F, 0o640, (0, 0), "[app]\nport=8080\n"),
        Expect("etc/app/generated.conf", F, 0o644, (0, 0), "home=/opt/app\n"),
        Expect("opt/vendor/lib/dep.txt", F, 0o644, (0, 0), "vendored\n"),
        Expect("var/lib/app", D, 0o755, (1000, 1000), ""),
    ];
    for Expect(path, kind, mode, (uid, gid), body) in &expected {
        let e = find(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(e.kind, *kind, "{path} type");
        if *kind != L {
            assert_eq!(e.mode & 0o7777, *mode, "{path} mode");
        }
        assert_eq!((e.uid, e.gid), (*uid, *gid), "{path} owner");
        match kind {
            F => assert_eq!(String::from_utf8_lossy(&e.data), *body, "{path} content"),
            L => assert_eq!(e.link.as_deref(), Some(*body), "{path} link"),
            _ => {}
        }
    }
    for absent in ["bin/vi", "src", "out", "opt/app/README.md", "opt/vendor/bundle.tar"] {
        assert!(find(absent).is_none(), "{absent} should not be in the image");
    }
    let cfg = read_image(&oci).config["config"].clone();
    assert_eq!(
        cfg,
        json!({
            "User": "app",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "APP_HOME=/opt/app"],
            "Entrypoint": ["/opt/app/bin/app"],
            "Cmd": ["serve"],
            "Volumes": {"/var/lib/app": {}},
            "WorkingDir": "/opt/app",
            "Labels": {"org.opencontainers.image.version": "1.2.3", "purpose": "kitchen sink"},
            "StopSignal": "SIGTERM",
            "Healthcheck": {"Test": ["CMD", "/opt/app/bin/app", "--health"], "Interval": 30_000_000_000i64, "Timeout": 3_000_000_000i64}
        })
    );
}

#[test]
fn from_platform_builds_for_other_platforms_under_emulation() {
    let f = Fixture::new();
    assert_ok(&f.rdock(&["load", "-i", multiarch_busybox_tar().to_str().unwrap()]));
    // The usual cross-build shape: tools on the build platform, the result for the target.
    let df = "FROM --platform=$BUILDPLATFORM bbmulti AS tools\nARG TARGETARCH BUILDARCH\n\
              RUN echo \"$BUILDARCH->$TARGETARCH on $(uname -m)\" > /built\n\
              FROM bbmulti\nCOPY --from=tools /built /built\nRUN uname -m > /arch\n";
    let ctx = f.ctx("plat", &[("Dockerfile", df)]);
    let arm_tar = f.path("arm.tar");
    let out = f.build(
        &ctx,
        &[
            "--opt",
            "platform=linux/arm64",
            "--output",
            &format!("type=oci,dest={}", arm_tar.display()),
            "--output",
            &format!("type=local,dest={}", f.path("arm").display()),
        ],
    );
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("arm/built")).unwrap(), "amd64->arm64 on x86_64\n");
    assert_eq!(std::fs::read_to_string(f.path("arm/arch")).unwrap(), "aarch64\n", "the arm64 stage ran under emulation");
    let img = read_image(&arm_tar);
    assert_eq!((img.config["os"].as_str(), img.config["architecture"].as_str()), (Some("linux"), Some("arm64")));
    let bb = img.layers[0].iter().find(|e| e.path.trim_start_matches("./") == "bin/busybox").expect("busybox in the base layer");
    assert_eq!(&bb.data[18..20], &[0xb7, 0x00], "the base layer is the arm64 one (EM_AARCH64)");
    let inspect: serde_json::Value =
        serde_json::from_str(&sh("skopeo", &["inspect", &format!("oci-archive:{}", arm_tar.display())])).unwrap();
    assert_eq!(inspect["Architecture"], "arm64");

    // The docker-style twin builds for amd64 from the same Dockerfile; nothing of the arm64
    // build is reused for the platform-specific steps.
    let amd = f.path("amd");
    let out = Command::new(RDOCK)
        .args(["build", "--platform", "linux/amd64", "--progress", "plain", "-o", &format!("type=local,dest={}", amd.display())])
        .arg(&ctx)
        .env("RDOCK_ROOT", &f.root)
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(amd.join("built")).unwrap(), "amd64->amd64 on x86_64\n");
    assert_eq!(std::fs::read_to_string(amd.join("arch")).unwrap(), "x86_64\n");

    // A platform the image lacks is named, with what it has, at the FROM line.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nFROM --platform=linux/riscv64 bbmulti\n").unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2") && err.contains("no manifest for platform linux/riscv64"), "{err}");
    assert!(err.contains("linux/amd64, linux/arm64, linux/s390x"), "{err}");

    // A platform with no emulator registered: a clear error, not a bare ENOEXEC.
    std::fs::write(ctx.join("Dockerfile"), "FROM --platform=linux/s390x bbmulti\nRUN true\n").unwrap();
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("linux/s390x") && err.contains("no emulator") && err.contains("binfmt_misc"), "{err}");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());

    // Bad platform strings are usage errors on the command line.
    let out = f.build(&ctx, &["--opt", "platform=linux/potato"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown architecture"), "{}", stderr(&out));
}

#[test]
fn run_network_and_security_modes_need_their_entitlements() {
    let f = Fixture::new();
    let df = "FROM busybox\n\
              RUN --network=none ls /sys/class/net > /net-none\n\
              RUN ls /sys/class/net > /net-default\n\
              RUN --network=host ls /sys/class/net > /net-host\n\
              RUN grep CapEff /proc/self/status > /caps-default\n\
              RUN --security=insecure grep CapEff /proc/self/status > /caps-insecure\n";
    let ctx = f.ctx("modes", &[("Dockerfile", df)]);
    // Without the grants the build is refused before anything runs, naming step and flag.
    let out = f.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("RUN --network=host") && err.contains("--allow network.host"), "{err}");
    let out = f.build(&ctx, &["--allow", "network.host"]);
    assert!(stderr(&out).contains("--allow security.insecure"), "{}", stderr(&out));
    assert!(f.leftovers().is_empty());

    let o = f.path("o");
    assert_ok(&f.build(&ctx, &["--allow", "network.host,security.insecure", "--output", &format!("type=local,dest={}", o.display())]));
    let read = |p: &str| std::fs::read_to_string(o.join(p)).unwrap();
    assert_eq!(read("net-none"), "lo\n");
    assert_eq!(read("net-default"), "lo\ntap0\n", "the default network is its own namespace, with slirp4netns's tap");
    let mut host: Vec<String> =
        std::fs::read_dir("/sys/class/net").unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    host.sort();
    let mut seen: Vec<String> = read("net-host").lines().map(str::to_string).collect();
    seen.sort();
    assert_eq!(seen, host, "--network=host sees the host's interfaces");
    let caps = |p: &str| u64::from_str_radix(read(p).trim().trim_start_matches("CapEff:").trim(), 16).unwrap();
    assert_eq!(caps("caps-default"), 0xa80425fb, "Docker's default capability set");
    assert!(caps("caps-insecure") & 0xa80425fb == 0xa80425fb && caps("caps-insecure") > 0xa80425fb, "insecure keeps every capability");

    // The docker-style CLI grants network.host by default, as dockerd does, but not insecure.
    let run = |df: &str| {
        std::fs::write(ctx.join("Dockerfile"), df).unwrap();
        Command::new(RDOCK).args(["build", "--progress", "plain"]).arg(&ctx).env("RDOCK_ROOT", &f.root).output().unwrap()
    };
    assert_ok(&run("FROM busybox\nRUN --network=host true\n"));
    let out = run("FROM busybox\nRUN --security=insecure true\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("security.insecure"), "{}", stderr(&out));
    // A mode BuildKit does not know is an error at the flag.
    let out = run("FROM busybox\nRUN --network=bridge true\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Dockerfile:2"), "{}", stderr(&out));
}

#[test]
fn copy_and_add_exclude_patterns() {
    let f = Fixture::new();
    let df = "FROM busybox\n\
              COPY --exclude=*.log --exclude=cache/ src/ /app/\n\
              ADD --exclude=**/*.tmp src /add\n\
              COPY --exclude=secret* --exclude=!secret-ok --exclude=sub --exclude=!sub/wanted --exclude=gone keep /keep\n";
    let ctx = f.ctx(
        "excl",
        &[
            ("Dockerfile", df),
            ("src/main.c", "int main;\n"),
            ("src/debug.log", "log\n"),
            ("src/cache/x", "cached\n"),
            ("src/deep/a.tmp", "tmp\n"),
            ("src/deep/a.c", "c\n"),
            ("keep/secret-1", "s\n"),
            ("keep/secret-ok", "ok\n"),
            ("keep/plain", "p\n"),
            ("keep/sub/wanted", "w\n"),
            ("keep/sub/unwanted", "u\n"),
            ("keep/gone/x", "x\n"),
        ],
    );
    let o = f.path("o");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", o.display())]));
    let has = |p: &str| o.join(p).exists();
    assert!(has("app/main.c") && has("app/deep/a.c") && has("app/deep/a.tmp"));
    assert!(!has("app/debug.log") && !has("app/cache"), "COPY --exclude drops matches");
    assert!(has("add/main.c") && has("add/debug.log") && !has("add/deep/a.tmp"), "ADD --exclude with **");
    // Patterns are relative to the copied directory; `!` re-includes, even below an
    // excluded directory, which then holds only what was re-included.
    assert!(has("keep/plain") && has("keep/secret-ok") && !has("keep/secret-1"), "! re-includes");
    assert!(has("keep/sub/wanted") && !has("keep/sub/unwanted"));
    assert!(!has("keep/gone"), "an excluded directory with nothing re-included is not created");

    // An excluded file's edit is not a reason to re-run the step.
    let (out, events) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    std::fs::write(ctx.join("src/debug.log"), "more log\n").unwrap();
    let (out, events2) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    let copy_ran = |ev: &[serde_json::Value]| started(ev).iter().any(|d| d.contains("COPY --exclude=*.log"));
    assert!(!copy_ran(&events), "second build is all cached");
    assert!(!copy_ran(&events2), "editing an excluded file changes no cache key");
}

#[test]
fn mounts_and_args_fixture_gives_the_files_config_and_history_buildkit_writes() {
    let f = Fixture::new();
    let ctx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mounts-and-args/ctx");
    let token = f.path("token");
    std::fs::write(&token, "s3cr3t-value").unwrap();
    let (fs_tar, oci) = (f.path("fs.tar"), f.path("img.tar"));
    let out = f.build(
        &ctx,
        &[
            "--secret",
            &format!("id=token,src={}", token.display()),
            "--output",
            &format!("type=tar,dest={}", fs_tar.display()),
            "--output",
            &format!("type=oci,dest={}", oci.display()),
        ],
    );
    assert_ok(&out);
    let entries = layer_entries(&std::fs::read(&fs_tar).unwrap());
    let find = |p: &str| entries.iter().find(|e| e.path.trim_end_matches('/') == p);
    use tar::EntryType::{Directory as D, Regular as F};
    let greeting: &'static str = format!("hello-env anon on {}\n", rdock_imagespec::Platform::host().architecture).leak();
    let expected = [
        Expect("work", D, 0o755, (0, 0), ""),
        // A file bound from another stage, read through a cache mount there.
        Expect("work/stamp", F, 0o644, (0, 0), "cached\n"),
        // The secret reached the step as $TOKEN (12 bytes) and nowhere else.
        Expect("work/token-info", F, 0o644, (0, 0), "token length 12\n"),
        // <<- strips tabs; ENV overrides ARG; ${UNSET:-anon}; TARGETARCH.
        Expect("work/greeting", F, 0o644, (0, 0), greeting),
        // A quoted heredoc delimiter turns expansion off.
        Expect("work/literal", F, 0o640, (1000, 1000), "$GREETING stays literal\n"),
    ];
    for Expect(path, kind, mode, (uid, gid), body) in &expected {
        let e = find(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!((e.kind, e.mode & 0o7777, e.uid, e.gid), (*kind, *mode, *uid, *gid), "{path}");
        if *kind == F {
            assert_eq!(String::from_utf8_lossy(&e.data), *body, "{path} content");
        }
    }
    // Mount targets the step created are stubs, not content; the deps stage is not in the image.
    for absent in ["mnt", "scratch", "cache", "deps-stamp"] {
        assert!(find(absent).is_none(), "{absent} should not be in the image");
    }
    assert!(!contains_bytes(&std::fs::read(&oci).unwrap(), b"s3cr3t-value"), "the secret is in no blob");
    let img = read_image(&oci);
    let arch = rdock_imagespec::Platform::host().architecture;
    assert_eq!(
        img.config["config"],
        json!({
            "User": "1000:1000",
            "ExposedPorts": {"53/udp": {}, "80/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello-env", "NAME=anon"],
            "Cmd": ["/bin/sh", "-e", "-c", "echo shell form"],
            "Volumes": {"/data": {}, "/logs": {}},
            "WorkingDir": "/work",
            "Labels": {"multi.line": "a b", "other": "hello-env"},
            "Healthcheck": {"Test": ["NONE"]},
            "OnBuild": ["RUN echo child"],
            "Shell": ["/bin/sh", "-e", "-c"]
        })
    );
    // History as BuildKit's dispatchers write it (ONBUILD adds none).
    let h = img.history();
    assert_eq!(
        h[2..],
        [
            "ARG GREETING=hello".to_string(),
            format!("ARG TARGETARCH={arch}"),
            "ENV GREETING=hello-env NAME=anon".into(),
            "SHELL [/bin/sh -e -c]".into(),
            "WORKDIR /work".into(),
            format!(
                "RUN |2 GREETING=hello-env TARGETARCH={arch} /bin/sh -e -c cp /mnt/stamp ./stamp && echo \"token length ${{#TOKEN}}\" > token-info && echo hi > /scratch/x # buildkit"
            ),
            format!(
                "RUN |2 GREETING=hello-env TARGETARCH={arch} /bin/sh -e -c echo \"$GREETING $NAME on $TARGETARCH\" > greeting\n # buildkit"
            ),
            "COPY --chown=1000:1000 --chmod=u=rw,g=r,o= <<EOT /work/literal # buildkit".into(),
            "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}".into(),
            "VOLUME [/data /logs]".into(),
            "EXPOSE [53/udp 80/tcp]".into(),
            "LABEL multi.line=a b other=hello-env".into(),
            "USER 1000:1000".into(),
            "CMD [\"/bin/sh\" \"-e\" \"-c\" \"echo shell form\"]".into(),
        ]
    );
    // The image as a base: its ONBUILD trigger runs in the child.
    assert_ok(&f.build(&ctx, &["--secret", &format!("id=token,src={}", token.display()), "--output", "type=image,name=fixture:1"]));
    let child = f.ctx("child", &[("Dockerfile", "FROM fixture:1\nUSER 0\nRUN test -f /work/literal\n")]);
    let out = f.build(&child, &[]);
    assert_ok(&out);
    assert!(stderr(&out).contains("echo child"), "the trigger ran: {}", stderr(&out));
}

/// The context-hashed event's counters: (files read, files reused from the stat cache).
fn hash_counts(events: &[serde_json::Value]) -> (u64, u64) {
    let e = events.iter().find(|e| e["kind"] == "context-hashed").expect("a context-hashed event");
    (e["hash_stats"]["files_read"].as_u64().unwrap(), e["hash_stats"]["files_reused"].as_u64().unwrap())
}

#[test]
fn a_no_op_rebuild_of_a_large_context_reads_no_file() {
    let f = Fixture::new();
    let ctx = f.ctx("big", &[("Dockerfile", "FROM busybox\nCOPY . /app\nRUN ls /app/d0 | wc -l > /count\n")]);
    // 5,000 files, 58 MB, as in the issue's benchmark.
    for i in 0..5000 {
        let dir = ctx.join(format!("d{}", i % 50));
        std::fs::create_dir_all(&dir).unwrap();
        let body: Vec<u8> = (0..11_600u32).map(|b| (b.wrapping_mul(31).wrapping_add(i)) as u8).collect();
        std::fs::write(dir.join(format!("f{i}.bin")), body).unwrap();
    }
    // Digests of files modified within the racy window are not remembered: let it pass.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert_eq!(hash_counts(&ev), (5001, 0), "the first build reads every file (and the Dockerfile)");
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert_eq!(hash_counts(&ev), (0, 5001), "a no-op rebuild reads nothing");
    assert!(started(&ev).is_empty(), "and runs nothing");

    // Touching a file re-reads that file only, and its unchanged content is a cache hit.
    let touched = ctx.join("d3/f3.bin");
    set_mtime(&touched, 1_000_000_000);
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert_eq!(hash_counts(&ev), (1, 5000));
    assert!(started(&ev).is_empty(), "same content, same key: {:?}", started(&ev));

    // An edit of the same size with the old mtime restored is still seen (ctime changes).
    let old = std::fs::metadata(&touched).unwrap().modified().unwrap();
    let mut body = std::fs::read(&touched).unwrap();
    body[0] ^= 0xff;
    std::fs::write(&touched, body).unwrap();
    std::fs::File::options().write(true).open(&touched).unwrap().set_modified(old).unwrap();
    let (out, ev) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    assert_eq!(hash_counts(&ev).0, 1);
    let ran = started(&ev);
    assert!(ran.iter().any(|n| n.contains("COPY . /app")) && ran.iter().any(|n| n.contains("RUN ls")), "{ran:?}");
}

#[test]
fn no_cache_filter_reruns_only_the_named_stages_and_cache_mounts_survive_no_cache() {
    let f = Fixture::new();
    let df = "FROM busybox AS a\nRUN echo a > /a\n\
              FROM busybox AS b\nRUN --mount=type=cache,target=/c sh -c 'echo x >> /c/log; wc -l < /c/log > /b'\n\
              FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n";
    let ctx = f.ctx("ncf", &[("Dockerfile", df)]);
    let (out, _) = f.build_events(&ctx, &[]);
    assert_ok(&out);
    let (out, ev) = f.build_events(&ctx, &["--no-cache-filter", "A"]);
    assert_ok(&out);
    assert_eq!(started(&ev), vec!["[a 2/2] RUN echo a > /a"], "only stage a re-runs (names match in any case)");
    // buildctl's spelling.
    let (out, ev) = f.build_events(&ctx, &["--opt", "no-cache=b"]);
    assert_ok(&out);
    assert_eq!(started(&ev).len(), 1);
    assert!(started(&ev)[0].starts_with("[b 2/2] RUN"), "{:?}", started(&ev));
    // `--no-cache` (and `--opt no-cache=`) re-runs everything, but the cache mount keeps its
    // content: the third run of b's step sees two earlier lines.
    let o = f.path("o");
    let (out, ev) = f.build_events(&ctx, &["--opt", "no-cache=", "--output", &format!("type=local,dest={}", o.display())]);
    assert_ok(&out);
    assert_eq!(started(&ev).len(), 4, "{:?}", started(&ev));
    assert_eq!(std::fs::read_to_string(o.join("b")).unwrap().trim(), "3");
    // A stage the Dockerfile lacks is an error, not a filter that filters nothing.
    let out = f.build(&ctx, &["--no-cache-filter", "a,nosuch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--no-cache-filter: stage \"nosuch\" could not be found (stages: a, b, 2)"), "{}", stderr(&out));
}

/// What CI scripts lean on: a context whose Dockerfile is spelt `dockerfile` builds with
/// both binaries (BuildKit falls back to the lowercase name), and both say their version.
#[test]
fn a_lowercase_dockerfile_is_found_and_both_binaries_have_a_version() {
    let f = Fixture::new();
    let ctx = f.ctx("lower", &[("dockerfile", "FROM busybox\nRUN echo lower > /which\n")]);
    let o = f.path("o1");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", o.display())]));
    assert_eq!(std::fs::read_to_string(o.join("which")).unwrap(), "lower\n");
    let o = f.path("o2");
    assert_ok(&f.rdock(&["build", "-o", o.to_str().unwrap(), ctx.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(o.join("which")).unwrap(), "lower\n");
    // With both spellings present, `Dockerfile` wins.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo upper > /which\n").unwrap();
    let o = f.path("o3");
    assert_ok(&f.rdock(&["build", "-o", o.to_str().unwrap(), ctx.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(o.join("which")).unwrap(), "upper\n");
    for bin in [RDOCK, RDOCK_BUILD] {
        let v = std::process::Command::new(bin).arg("--version").output().unwrap();
        assert_ok(&v);
        assert!(out(&v).starts_with("rdock") && out(&v).trim_end().ends_with(env!("CARGO_PKG_VERSION")), "{}", out(&v));
    }
}

/// `cache miss: NAME` blocks printed by `--explain-cache`: name → reasons.
fn misses(out: &std::process::Output) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = Vec::new();
    for l in stderr(out).lines() {
        if let Some(name) = l.strip_prefix("cache miss: ") {
            v.push((name.to_string(), Vec::new()));
        } else if let (Some(r), Some(last)) = (l.strip_prefix("  - "), v.last_mut()) {
            last.1.push(r.to_string());
        }
    }
    v
}

#[test]
fn explain_cache_says_why_each_step_missed() {
    let f = Fixture::new();
    let base = f.ctx("base", &[("Dockerfile", "FROM busybox\nRUN echo one > /base\n")]);
    assert_ok(&f.build(&base, &["--output", "type=image,name=base:1"]));
    let df = "FROM base:1\nARG V=1\nCOPY app/ /app/\nRUN echo $V > /v\nRUN cat /app/a.txt\n";
    let ctx = f.ctx("explain", &[("Dockerfile", df), ("app/a.txt", "a\n"), ("app/b.txt", "b\n")]);
    let out = f.build(&ctx, &["--explain-cache"]);
    assert_ok(&out);
    let m = misses(&out);
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m.iter().all(|(_, r)| r == &vec!["no earlier build of this target to compare with".to_string()]), "{m:?}");
    let out = f.build(&ctx, &["--explain-cache"]);
    assert!(misses(&out).is_empty(), "{}", stderr(&out));

    // A context edit, a new file and a build arg: each step says what it saw change.
    std::fs::write(ctx.join("app/a.txt"), "A\n").unwrap();
    std::fs::write(ctx.join("app/c.txt"), "c\n").unwrap();
    let out = f.build(&ctx, &["--explain-cache", "--opt", "build-arg:V=2"]);
    assert_ok(&out);
    let m = misses(&out);
    let reasons = |step: &str| m.iter().find(|(n, _)| n.contains(step)).map(|(_, r)| r.clone()).unwrap_or_default();
    assert_eq!(reasons("COPY app/"), vec!["context files changed: app/a.txt (content changed), app/c.txt (added)".to_string()]);
    let run_v = reasons("RUN echo $V");
    assert!(run_v.contains(&"variable V changed: \"1\" → \"2\"".to_string()), "{run_v:?}");
    assert!(run_v.iter().any(|r| r.starts_with("an input changed: [3/5] COPY app/")), "{run_v:?}");

    // The instruction text.
    std::fs::write(ctx.join("Dockerfile"), df.replace("cat /app/a.txt", "cat /app/b.txt")).unwrap();
    let out = f.build(&ctx, &["--explain-cache", "--opt", "build-arg:V=2"]);
    let m = misses(&out);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].1, vec!["instruction changed: \"RUN cat /app/a.txt\" → \"RUN cat /app/b.txt\"".to_string()]);

    // The base image, rebuilt under the same name; the same data is in rawjson events.
    std::fs::write(base.join("Dockerfile"), "FROM busybox\nRUN echo two > /base\n").unwrap();
    assert_ok(&f.build(&base, &["--output", "type=image,name=base:1"]));
    let (out, events) = f.build_events(&ctx, &["--opt", "build-arg:V=2"]);
    assert_ok(&out);
    let first = events.iter().find(|e| e["kind"] == "cache-miss").expect("cache-miss events in rawjson");
    let r = first["reasons"][0].as_str().unwrap();
    assert!(
        r.starts_with("base image changed: docker.io/library/base:1@sha256:") && r.contains("(was docker.io/library/base:1@sha256:"),
        "{r}"
    );

    // --no-cache says so.
    let out = Command::new(RDOCK)
        .args(["build", "--no-cache", "--explain-cache", "--progress", "quiet", "--build-arg", "V=2"])
        .arg(&ctx)
        .env("RDOCK_ROOT", &f.root)
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(misses(&out).iter().all(|(_, r)| r[0].contains("bypassed")), "{}", stderr(&out));
}

#[test]
fn see_the_build_tty_states_chrome_trace_svg_timeline_and_dot() {
    let f = Fixture::new();
    let ctx = f.ctx(
        "see",
        &[(
            "Dockerfile",
            "FROM busybox AS slow\nRUN sleep 0.8 && echo s > /s\n\
             FROM busybox AS fast\nRUN echo f > /f\n\
             FROM busybox AS final\nCOPY --from=slow /s /s\nCOPY --from=fast /f /f\n\
             RUN for i in 1 2 3 4 5 6 7 8; do echo tail-line-$i; done; sleep 0.4; cat /s /f\n",
        )],
    );
    let (trace, svg) = (f.path("trace.json"), f.path("timeline.svg"));
    let out = f.build(&ctx, &["--trace", trace.to_str().unwrap(), "--timeline", svg.to_str().unwrap()]);
    assert_ok(&out);

    // The Chrome trace: a complete event per step, the parallel stages on their own lanes
    // and overlapping, the critical path through the slow stage.
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let steps: Vec<&serde_json::Value> = t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(steps.len(), 5, "{t}");
    let find = |needle: &str| *steps.iter().find(|e| e["name"].as_str().unwrap().contains(needle)).unwrap();
    let (slow, fast, last) = (find("sleep 0.8"), find("echo f"), find("tail-line"));
    assert!(slow["dur"].as_f64().unwrap() >= 800_000.0, "{slow}");
    assert_ne!(slow["tid"], fast["tid"]);
    let overlap = fast["ts"].as_f64().unwrap() < slow["ts"].as_f64().unwrap() + slow["dur"].as_f64().unwrap();
    assert!(overlap, "the stages ran together: {slow} {fast}");
    assert_eq!(slow["args"]["critical"], true);
    assert_eq!(last["args"]["critical"], true);
    assert_eq!(fast["args"]["critical"], false);

    // The SVG: well-formed (python's XML parser), a row per step, the critical path marked.
    let rows = |path: &std::path::Path| {
        let script = "import sys, xml.etree.ElementTree as E\n\
                      ns={'s':'http://www.w3.org/2000/svg'}\n\
                      for g in E.parse(sys.argv[1]).getroot().iterfind('s:g', ns):\n\
                      \x20   c = g.get('class')\n\
                      \x20   if c.startswith('row'): print(c, '|', g.find('s:title', ns).text)\n";
        sh("python3", &["-c", script, path.to_str().unwrap()]).lines().map(str::to_string).collect::<Vec<_>>()
    };
    let r = rows(&svg);
    assert_eq!(r.len(), 5, "{r:?}");
    assert!(r.iter().any(|l| l.starts_with("row executed critical |") && l.contains("sleep 0.8")), "{r:?}");
    assert!(r.iter().any(|l| l.starts_with("row executed |") && l.contains("echo f")), "{r:?}");
    // A rebuild: every row cached.
    let out = f.build(&ctx, &["--timeline", svg.to_str().unwrap()]);
    assert_ok(&out);
    let r = rows(&svg);
    assert_eq!(r.iter().filter(|l| l.starts_with("row cached")).count(), 5, "{r:?}");

    // --dump-llb dot renders with Graphviz.
    let out = f.build(&ctx, &["--dump-llb", "dot"]);
    assert_ok(&out);
    let dot = f.path("graph.dot");
    std::fs::write(&dot, &out.stdout).unwrap();
    let rendered = sh("dot", &["-Tsvg", dot.to_str().unwrap()]);
    assert!(rendered.contains("<svg") && rendered.contains("sleep 0.8"), "{rendered}");

    // tty under a pseudo-terminal: states, a running timer, the log tail while running.
    let cmd = format!(
        "RDOCK_ROOT={} {} --frontend dockerfile --local context={} --progress=tty --no-cache-filter final",
        f.root.display(),
        RDOCK_BUILD,
        ctx.display()
    );
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    assert_ok(&out);
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(screen.contains("=> CACHED [slow 2/2] RUN sleep 0.8"), "{screen}");
    assert!(screen.contains("=> => # tail-line-8") && !screen.contains("=> => # tail-line-2"), "a six-line tail: {screen}");
    let timer = has_line_ending_with(&screen, "RUN for i in", "s\u{1b}[0m");
    assert!(timer, "a running step shows its timer: {screen}");
    assert!(screen.contains("FINISHED"), "{screen}");
    let last_frame = screen.rsplit("[+] Building").next().unwrap();
    assert!(!last_frame.contains("=> => # tail-line"), "a finished step's output is folded away: {last_frame}");
}

/// True if some line holds `start` and ends (before its colour reset) in `end`.
fn has_line_ending_with(screen: &str, start: &str, end: &str) -> bool {
    screen.split('\n').any(|l| l.contains(start) && l.trim_end_matches('\r').ends_with(end))
}

/// Regression: `COPY d /d` gave /d the time of the build, so two builds of one context a
/// second apart differed (the determinism check above flaked across a second boundary).
#[test]
fn regression_copy_of_a_directory_keeps_its_mtime() {
    let f = Fixture::new();
    let ctx = f.ctx("mt", &[("Dockerfile", "FROM scratch\nCOPY d /d\n"), ("d/e.txt", "e")]);
    let t = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &ctx.join("d"), &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
    let oci = f.path("mt.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={}", oci.display())]));
    let img = read_image(&oci);
    let blob = &img.files[&format!("blobs/sha256/{}", img.layer_digests[0].trim_start_matches("sha256:"))];
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut raw).unwrap();
    let mut a = tar::Archive::new(&raw[..]);
    let d = a.entries().unwrap().map(|e| e.unwrap().header().clone()).find(|h| h.path().unwrap().to_str() == Some("d/")).unwrap();
    assert_eq!(d.mtime().unwrap(), 1_000_000_000);
}

/// Regression (issue 14): docker's classic builder, `docker commit` and `docker import`
/// write Go's nil slices and maps as `null` (`"OnBuild": null`, `"Env": null`, an empty
/// `WorkingDir`); `rdock load` refused every such image. Here busybox's config rewritten so.
#[test]
fn regression_configs_with_go_nulls_load_build_and_run() {
    let f = Fixture::empty();
    let files = read_tar_files(busybox_tar());
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap().to_string();
    let mut config: serde_json::Value = serde_json::from_slice(&files[&config_name]).unwrap();
    for k in ["Env", "Entrypoint", "Volumes", "OnBuild", "Labels", "ExposedPorts", "Shell"] {
        config["config"][k] = serde_json::Value::Null;
    }
    config["config"]["WorkingDir"] = json!("");
    config["container_config"] = json!({"Env": null, "OnBuild": null, "Cmd": null});
    let tar = f.path("nulls.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    for (name, data) in files.iter().filter(|(n, _)| !n.is_empty() && !n.ends_with('/')) {
        let data = if *name == config_name { serde_json::to_vec(&config).unwrap() } else { data.clone() };
        // The config's file name is its digest in docker's layout, but load reads it by name.
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
    assert_ok(&f.rdock(&["load", "-i", tar.to_str().unwrap()]));
    let o = f.rdock(&["run", "--rm", "busybox", "sh", "-c", "pwd; echo ok"]);
    assert_ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/\nok\n");
    let ctx = f.ctx("nulls", &[("Dockerfile", "FROM busybox\nRUN pwd > /wd\n")]);
    let dest = f.path("out");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=local,dest={}", dest.display())]));
    assert_eq!(std::fs::read_to_string(dest.join("wd")).unwrap(), "/\n");
}

/// Regression (issue 14): a zstd layer (`application/vnd.oci.image.layer.v1.tar+zstd`) was
/// read as a broken tar. skopeo writes one with `--dest-compress-format zstd`.
#[test]
fn regression_zstd_layers_from_skopeo_load_and_run() {
    let f = Fixture::empty();
    let oci = f.path("zstd.tar");
    sh(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-compress",
            "--dest-compress-format",
            "zstd",
            &format!("docker-archive:{}", busybox_tar().display()),
            &format!("oci-archive:{}:bbz:1", oci.display()),
        ],
    );
    let img = read_tar_files(&oci);
    let index: serde_json::Value = serde_json::from_slice(&img["index.json"]).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&img[&format!("blobs/sha256/{m}")]).unwrap();
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    assert_ok(&f.rdock(&["load", "-i", oci.to_str().unwrap()]));
    let o = f.rdock(&["run", "--rm", "bbz:1", "echo", "zstd-ok"]);
    assert_ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "zstd-ok\n");
    assert_ok(&f.rdock(&["fsck"]));
}

/// `--output` keys do what BuildKit's do, or are refused by name: compression (zstd on all
/// cores, uncompressed, gzip at a level, forced), media types, annotations, an OCI layout
/// directory, and tarballs on standard output.
#[test]
fn output_keys_shape_the_export_or_are_refused_by_name() {
    use serde_json::Value;
    use std::path::{Path, PathBuf};
    let f = Fixture::new();
    let ctx = f.ctx("c", &[("Dockerfile", "FROM busybox\nRUN echo shaped > /shaped\n")]);
    let layers = |tar: &Path| -> Vec<(String, Vec<u8>)> {
        let img = read_tar_files(tar);
        let index: Value = serde_json::from_slice(&img["index.json"]).unwrap();
        let md = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let manifest: Value = serde_json::from_slice(&img[&format!("blobs/sha256/{md}")]).unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
                (l["mediaType"].as_str().unwrap().to_string(), img[&format!("blobs/sha256/{d}")].clone())
            })
            .collect()
    };
    let export = |name: &str, opts: &str| -> PathBuf {
        let dest = f.path(name);
        assert_ok(&f.build(&ctx, &["--output", &format!("type=oci,dest={},name=shaped:1{opts}", dest.display())]));
        dest
    };
    // As BuildKit's: `compression` is for the layers the build made; the base image's keep
    // theirs (here uncompressed, as `docker save` wrote busybox) unless forced.
    let zstd = export("zstd.tar", ",compression=zstd,compression-level=5");
    let zstd_layers = layers(&zstd);
    assert_eq!(zstd_layers[0].0, "application/vnd.oci.image.layer.v1.tar");
    for (mt, blob) in &zstd_layers[1..] {
        assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar+zstd");
        assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    }
    let all_zstd = export("all-zstd.tar", ",compression=zstd,force-compression=true");
    assert!(layers(&all_zstd).iter().all(|(mt, b)| mt.ends_with("+zstd") && b[..4] == [0x28, 0xb5, 0x2f, 0xfd]));
    // Another store loads it and runs the file the step wrote.
    let g = Fixture::empty();
    assert_ok(&g.rdock(&["load", "-i", zstd.to_str().unwrap()]));
    let run = g.rdock(&["run", "--rm", "shaped:1", "cat", "/shaped"]);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "shaped\n");
    let plain = export("plain.tar", ",compression=uncompressed");
    for (mt, blob) in layers(&plain) {
        assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(&blob[257..262], b"ustar");
    }
    // gzip is what rdock stores its own layers in: kept byte for byte unless forced; the
    // uncompressed base is kept too, unless forced.
    let same = layers(&export("gzip.tar", ",compression=gzip"));
    let forced = layers(&export("forced.tar", ",compression=gzip,compression-level=9,force-compression=true"));
    let stored = layers(&export("default.tar", ""));
    assert_eq!(same, stored);
    assert_eq!(stored[0].0, "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(forced[0].0, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_ne!(forced.last().unwrap().1, stored.last().unwrap().1, "force-compression at level 9 wrote new bytes");
    // docker's exporter writes docker media types, unless asked for OCI's.
    let docker = f.path("docker.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=docker,dest={},name=shaped:1", docker.display())]));
    let docker_layers = layers(&docker);
    assert!(
        docker_layers.iter().all(|(mt, _)| mt.starts_with("application/vnd.docker.image.rootfs.diff.tar")),
        "{:?}",
        docker_layers.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    assert_eq!(docker_layers.last().unwrap().0, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    let docker_oci = f.path("docker-oci.tar");
    assert_ok(&f.build(&ctx, &["--output", &format!("type=docker,dest={},name=shaped:1,oci-mediatypes=true", docker_oci.display())]));
    assert!(layers(&docker_oci).iter().all(|(mt, _)| mt.starts_with("application/vnd.oci.image.layer.v1.tar")));
    // Annotations reach the manifest; tar=false writes a layout directory skopeo reads.
    let dir = f.path("layout");
    assert_ok(&f.build(
        &ctx,
        &["--output", &format!("type=oci,dest={},name=shaped:1,tar=false,annotation.org.opencontainers.image.title=shaped", dir.display())],
    ));
    let inspect: Value = serde_json::from_str(&sh("skopeo", &["inspect", &format!("oci:{}:1", dir.display())])).unwrap();
    assert!(inspect["Layers"].as_array().is_some_and(|l| !l.is_empty()), "{inspect}");
    let raw: Value = serde_json::from_str(&sh("skopeo", &["inspect", "--raw", &format!("oci:{}:1", dir.display())])).unwrap();
    assert_eq!(raw["annotations"]["org.opencontainers.image.title"], json!("shaped"));
    // Standard output: `-o -` is the filesystem as a tar; dest=- the image tarball.
    let out = f.build(&ctx, &["-o", "-", "--progress", "quiet"]);
    assert_ok(&out);
    let mut a = tar::Archive::new(&out.stdout[..]);
    assert!(a.entries().unwrap().any(|e| e.unwrap().path().unwrap().to_string_lossy().trim_start_matches("./") == "shaped"));
    let out = f.build(&ctx, &["--output", "type=oci,dest=-,name=shaped:1", "--progress", "quiet"]);
    assert_ok(&out);
    let mut a = tar::Archive::new(&out.stdout[..]);
    assert!(a.entries().unwrap().any(|e| e.unwrap().path().unwrap().to_string_lossy() == "index.json"));
    assert!(!ctx.join("-").exists() && !Path::new("-").exists(), "no directory named -");
    // What rdock does not do is refused, naming the key; never ignored.
    for (opts, key) in [
        ("type=oci,dest=x.tar,rewrite-timestamp=maybe", "rewrite-timestamp"),
        ("type=oci,dest=x.tar,compression=estargz", "estargz"),
        ("type=docker,dest=x.tar,unpack=true", "unpack"),
        ("type=local,dest=x,compression=zstd", "compression"),
        ("type=image,name=a:1,compression=zstd", "compression"),
        ("type=docker,dest=x.tar,compression=zstd,oci-mediatypes=false", "oci-mediatypes"),
    ] {
        let out = f.build(&ctx, &["--output", opts]);
        assert!(!out.status.success(), "{opts} was accepted");
        assert!(stderr(&out).contains(key), "{opts}: {}", stderr(&out));
    }
}

/// The layers of an OCI tarball: (digest, uncompressed bytes), bottom first, with the
/// manifest digest and the config.
fn oci_layers(tar: &std::path::Path) -> (String, serde_json::Value, Vec<(String, Vec<u8>)>) {
    use serde_json::Value;
    let img = read_tar_files(tar);
    let blob = |d: &str| img[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
    let index: Value = serde_json::from_slice(&img["index.json"]).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let manifest: Value = serde_json::from_slice(&blob(&md)).unwrap();
    let config: Value = serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap().to_string();
            let raw = blob(&d);
            let mut plain = Vec::new();
            if raw.starts_with(&[0x1f, 0x8b]) {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut plain).unwrap();
            } else {
                plain = raw;
            }
            (d, plain)
        })
        .collect();
    (md, config, layers)
}

fn mtimes(layer: &[u8]) -> Vec<(String, u64)> {
    let mut a = tar::Archive::new(layer);
    a.entries().unwrap().map(|e| e.unwrap()).map(|e| (e.path().unwrap().display().to_string(), e.header().mtime().unwrap())).collect()
}

/// Reproducible by default (issue 18): with `SOURCE_DATE_EPOCH` (environment or build
/// argument) every file time later than the epoch in the layers the build wrote is the
/// epoch, as BuildKit's `rewrite-timestamp=true` makes them, without being asked; the base
/// image's layers are untouched, and the config names the new layers. Two builds in fresh
/// stores, from contexts made at different times on different paths, give the same
/// manifest digest, exported and stored alike; one changed byte changes it.
/// `rewrite-timestamp=false` keeps the times as built.
#[test]
fn source_date_epoch_alone_makes_builds_reproducible() {
    const EPOCH: u64 = 1_700_000_000;
    let df = "FROM busybox\nCOPY app.txt /app/\nRUN mkdir -p /out && echo built > /out/file && touch /out/new\n";
    let build = |f: &Fixture, ctx: &std::path::Path, dest: &std::path::Path, opts: &str, env: bool, arg: bool| {
        let out = format!("type=oci,dest={},name=clamped:1{opts}", dest.display());
        let mut args = vec!["build", "--progress", "plain", "-t", "repro:1", "--output", &out];
        if arg {
            args.extend(["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
        }
        args.push(ctx.to_str().unwrap());
        let mut c = std::process::Command::new(RDOCK);
        c.args(&args).env("RDOCK_ROOT", &f.root).env_remove("SOURCE_DATE_EPOCH");
        if env {
            c.env("SOURCE_DATE_EPOCH", EPOCH.to_string());
        }
        let o = c.output().unwrap();
        assert_ok(&o);
        o
    };
    let stored = |f: &Fixture| -> String {
        let o = f.rdock(&["images", "--format", "json"]);
        let line = out(&o).lines().find(|l| l.contains("\"repro\"")).map(str::to_string).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["Digest"].as_str().unwrap_or_default().to_string()
    };
    let a = Fixture::new();
    let ctx_a = a.ctx("a", &[("Dockerfile", df), ("app.txt", "app\n")]);
    let (ta, tplain) = (a.path("a.tar"), a.path("plain.tar"));
    build(&a, &ctx_a, &ta, "", true, false);
    let stored_a = stored(&a);
    build(&a, &ctx_a, &tplain, ",rewrite-timestamp=false", true, false);
    let (digest_a, config, layers) = oci_layers(&ta);
    let (digest_plain, _, plain_layers) = oci_layers(&tplain);
    // The base layer is the base image's, byte for byte; the build's own are clamped.
    assert_eq!(layers[0], plain_layers[0]);
    for (i, (_, layer)) in layers.iter().enumerate().skip(1) {
        let times = mtimes(layer);
        assert!(times.iter().all(|(_, t)| *t <= EPOCH), "layer {i}: {times:?}");
        assert!(times.iter().any(|(_, t)| *t == EPOCH), "layer {i}: {times:?}");
        let diff_id = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(layer)));
        assert_eq!(config["rootfs"]["diff_ids"][i], diff_id.as_str(), "the config names the rewritten layer");
    }
    assert!(mtimes(&plain_layers[2].1).iter().any(|(_, t)| *t > EPOCH), "with rewrite-timestamp=false the build's times stand");
    assert_ne!(digest_a, digest_plain);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert!(config["history"].as_array().unwrap().iter().skip(1).all(|h| h["created"] == "2023-11-14T22:13:20Z"), "{}", config["history"]);
    // Another store, later, elsewhere, with the epoch as a build argument: the same image.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let b = Fixture::new();
    let ctx_b = b.ctx("elsewhere/b", &[("Dockerfile", df), ("app.txt", "app\n")]);
    let tb = b.path("b.tar");
    build(&b, &ctx_b, &tb, "", false, true);
    assert_eq!(oci_layers(&tb).0, digest_a, "the export is not reproducible");
    assert!(!stored_a.is_empty());
    assert_eq!(stored(&b), stored_a, "the stored image is not reproducible");
    std::fs::write(ctx_b.join("app.txt"), "apq\n").unwrap();
    build(&b, &ctx_b, &tb, "", false, true);
    assert_ne!(oci_layers(&tb).0, digest_a, "a changed byte must change the image");
    assert_ne!(stored(&b), stored_a);
    // The stored image is the rewritten one, and runs.
    let run = b.rdock(&["run", "--rm", "--network", "none", "repro:1", "stat", "-c", "%Y", "/out/new"]);
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), EPOCH.to_string());
    assert_ok(&b.rdock(&["fsck"]));
    // No epoch: the times as built; asking for the rewrite anyway gets BuildKit's warning.
    let o = build(&b, &ctx_b, &tb, ",rewrite-timestamp=true", false, false);
    assert!(stderr(&o).contains("rewrite-timestamp=true without SOURCE_DATE_EPOCH"), "{}", stderr(&o));
    assert!(mtimes(&oci_layers(&tb).2[2].1).iter().any(|(_, t)| *t > EPOCH));
}

/// `rdock verify` rebuilds without the cache in scratch stores and says whether the result
/// is bit-identical, and if not, where and how (issue 18, item 2).
#[test]
fn verify_says_whether_a_rebuild_is_bit_identical_and_where_not() {
    let f = Fixture::new();
    let verify = |ctx: &std::path::Path, extra: &[&str], epoch: bool| {
        let mut c = Command::new(RDOCK);
        c.arg("verify").args(extra).arg(ctx).env("RDOCK_ROOT", &f.root).env_remove("SOURCE_DATE_EPOCH");
        if epoch {
            c.env("SOURCE_DATE_EPOCH", "1700000000");
        }
        c.output().unwrap()
    };
    let ctx = f.ctx("v", &[("Dockerfile", "FROM busybox\nCOPY a.txt /app/\nRUN mkdir -p /out && echo hi > /out/f\n"), ("a.txt", "a\n")]);
    let o = verify(&ctx, &[], true);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), stderr(&o));
    assert!(out(&o).contains("bit-identical"), "{}", out(&o));
    // Without the epoch the config's times differ.
    let o = verify(&ctx, &[], false);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), stderr(&o));
    assert!(out(&o).contains("config: created") && stderr(&o).contains("SOURCE_DATE_EPOCH is not set"), "{}{}", out(&o), stderr(&o));
    // A step that writes random bytes: held against the image the store has.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo same > /same && head -c 8 /dev/urandom > /r\n").unwrap();
    let b = Command::new(RDOCK)
        .args(["build", "-q", "-t", "rand:1"])
        .arg(&ctx)
        .env("RDOCK_ROOT", &f.root)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_ok(&b);
    let o = verify(&ctx, &["--against", "rand:1"], true);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), stderr(&o));
    let text = out(&o);
    assert!(text.contains("the rebuild and rand:1 differ") && text.contains("layer 1 (") && text.contains("  /r: content"), "{text}");
    assert!(!text.contains("  /same:"), "an identical file is not listed: {text}");
    assert!(f.leftovers().is_empty(), "scratch stores left behind: {:?}", f.leftovers());
}

/// Downloads (and git refs) are resolved all at once, not one after another: three ADDs of
/// URLs from a server that takes 600 ms per answer are in flight together.
#[test]
fn remote_sources_are_fetched_concurrently() {
    use std::io::{Read as _, Write as _};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let inflight = Arc::new(Mutex::new((0usize, 0usize)));
    let counts = inflight.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let n = s.read(&mut req).unwrap_or(0);
                let path = String::from_utf8_lossy(&req[..n]).split_whitespace().nth(1).unwrap_or("/").to_string();
                {
                    let mut c = counts.lock().unwrap();
                    c.0 += 1;
                    c.1 = c.1.max(c.0);
                }
                std::thread::sleep(std::time::Duration::from_millis(600));
                counts.lock().unwrap().0 -= 1;
                let body = format!("served {path}\n");
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    let f = Fixture::new();
    let df: String = ["a", "b", "c"].iter().map(|n| format!("ADD http://127.0.0.1:{port}/{n}.txt /{n}.txt\n")).collect();
    let ctx = f.ctx("slow-urls", &[("Dockerfile", &format!("FROM busybox\n{df}"))]);
    let out = f.build(&ctx, &["--output", &format!("type=local,dest={}", f.path("o").display())]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(f.path("o/c.txt")).unwrap(), "served /c.txt\n");
    assert_eq!(inflight.lock().unwrap().1, 3, "the downloads were not in flight together");
}

/// Diagnostics: nothing by default; `--debug` or `RDOCK_LOG=FILTER` shows the libraries'
/// events (the solver's keys and steps here) on standard error.
#[test]
fn debug_and_rdock_log_show_diagnostics() {
    let f = Fixture::new();
    let ctx = f.ctx("dbg", &[("Dockerfile", "FROM busybox\nRUN echo traced > /t\n")]);
    let build = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(RDOCK);
        c.args(args).arg(&ctx).env("RDOCK_ROOT", &f.root).env_remove("RDOCK_LOG");
        if let Some(v) = env {
            c.env("RDOCK_LOG", v);
        }
        let o = c.output().unwrap();
        assert_ok(&o);
        stderr(&o)
    };
    let quiet = build(&["build", "--progress", "plain", "--no-cache"], None);
    assert!(!quiet.contains("cache keys computed"), "{quiet}");
    let debug = build(&["--debug", "build", "--progress", "plain", "--no-cache"], None);
    assert!(debug.contains("cache keys computed") && debug.contains("running"), "{debug}");
    let filtered = build(&["build", "--progress", "plain"], Some("rdock_solver=debug"));
    assert!(filtered.contains("cache hit") && !filtered.contains("registry answered"), "{filtered}");
}
