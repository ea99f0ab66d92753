//! Lowering as data: a Dockerfile and a fake image resolver in, LLB and config out.

use rdock_frontend::{BuildOptions, FrontendError, ImageResolver, ResolveError, ResolvedImage, lower};
use rdock_imagespec::{ContainerConfig, ImageConfig, ImageRef, Platform};
use rdock_llb::{FileAction, Op};

struct Images;

impl ImageResolver for Images {
    fn resolve(&self, r: &ImageRef, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        if r.repository == "library/arm" {
            let config = ImageConfig { architecture: "arm64".into(), os: "linux".into(), ..Default::default() };
            return Ok(ResolvedImage { pinned: r.to_string(), config });
        }
        if r.repository == "library/busybox" || r.repository == "library/onbuildbase" {
            // busybox is multi-platform (amd64 and arm64), each with its own manifest digest.
            let (arch, digest) = match platform.architecture.as_str() {
                "arm64" if r.repository == "library/busybox" => ("arm64", "b".repeat(64)),
                _ => ("amd64", "a".repeat(64)),
            };
            let config = ImageConfig {
                architecture: arch.into(),
                os: "linux".into(),
                config: ContainerConfig {
                    env: vec!["PATH=/bin".into()],
                    working_dir: Some("/home".into()),
                    user: Some("app".into()),
                    on_build: if r.repository == "library/onbuildbase" { vec!["RUN x".into()] } else { vec![] },
                    ..Default::default()
                },
                ..Default::default()
            };
            Ok(ResolvedImage { pinned: format!("{r}@sha256:{digest}"), config })
        } else {
            Err(ResolveError::NotFound { registry: r.registry.clone() })
        }
    }
}

fn execs(df: &str, opts: &BuildOptions) -> Vec<rdock_llb::ExecOp> {
    let out = lower(df, opts, &Images).unwrap();
    out.definition.nodes.iter().filter_map(|n| if let Op::Exec(e) = &n.op { Some(e.clone()) } else { None }).collect()
}

#[test]
fn global_args_reach_from_only_unless_redeclared() {
    let df = "ARG BASE=busybox\nARG V=global\nFROM $BASE\nRUN echo $V\nARG V\nRUN echo $V\n";
    let e = execs(df, &BuildOptions::default());
    assert!(!e[0].env.iter().any(|v| v.starts_with("V=")), "global ARG leaked into the stage: {:?}", e[0].env);
    assert!(e[1].env.contains(&"V=global".to_string()), "redeclared ARG takes the global value: {:?}", e[1].env);
    let mut opts = BuildOptions::default();
    opts.build_args.insert("V".into(), "cli".into());
    let e = execs(df, &opts);
    assert!(e[1].env.contains(&"V=cli".to_string()));
}

#[test]
fn env_wins_over_arg_and_base_config_is_inherited() {
    let df = "FROM busybox\nENV A=env\nARG A=arg\nRUN true\n";
    let out = lower(df, &BuildOptions::default(), &Images).unwrap();
    let e: Vec<_> = out.definition.nodes.iter().filter_map(|n| if let Op::Exec(e) = &n.op { Some(e.clone()) } else { None }).collect();
    assert!(e[0].env.contains(&"A=env".to_string()), "{:?}", e[0].env);
    assert_eq!(e[0].user, "app", "USER from the base image applies to RUN");
    assert_eq!(e[0].cwd, "/home", "WORKDIR from the base image applies to RUN");
    assert_eq!(out.image.config.env, vec!["PATH=/bin", "A=env"]);
    // The source op is pinned by digest, so the cache follows the base image's content.
    assert!(out.definition.nodes.iter().any(|n| matches!(&n.op, Op::Source(s) if s.identifier.ends_with(&"a".repeat(64)))));
}

#[test]
fn scratch_gets_a_default_path_and_workdir_is_made() {
    let out = lower("FROM scratch\nWORKDIR /a/b\nWORKDIR c\n", &BuildOptions::default(), &Images).unwrap();
    assert_eq!(out.image.config.env, vec![format!("PATH={}", rdock_frontend::DEFAULT_PATH)]);
    assert_eq!(out.image.config.working_dir.as_deref(), Some("/a/b/c"));
    let mkdirs: Vec<String> = out
        .definition
        .nodes
        .iter()
        .filter_map(|n| {
            if let Op::File(f) = &n.op {
                f.actions.iter().find_map(|a| if let FileAction::Mkdir { path, .. } = a { Some(path.clone()) } else { None })
            } else {
                None
            }
        })
        .collect();
    assert_eq!(mkdirs, vec!["/a/b", "/a/b/c"]);
}

#[test]
fn unknown_image_error_points_at_from() {
    let err = lower("FROM busybox\nFROM nope:1 AS x\n", &BuildOptions::default(), &Images).unwrap_err();
    let FrontendError::Dockerfile(e) = err else { panic!("{err}") };
    assert_eq!(e.location.start_line, 2);
    assert!(e.message.contains("nope:1"), "{}", e.message);
}

#[test]
fn unreachable_stages_are_not_lowered() {
    // The `broken` stage names a missing image; building `ok` must not resolve it.
    let df = "FROM nope:1 AS broken\nRUN x\nFROM busybox AS ok\nRUN true\n";
    let opts = BuildOptions { target: Some("ok".into()), ..Default::default() };
    assert!(lower(df, &opts, &Images).is_ok());
}

#[test]
fn a_no_cache_filter_naming_no_stage_is_an_error() {
    let df = "FROM busybox AS Base\nRUN true\nFROM base\nRUN true\n";
    let opts = |stages: &[&str]| BuildOptions { no_cache_stages: stages.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    assert!(lower(df, &opts(&["BASE"]), &Images).is_ok(), "stage names match case-insensitively");
    let err = lower(df, &opts(&["base", "nosuch"]), &Images).unwrap_err();
    assert!(matches!(&err, FrontendError::UnknownNoCacheStage { name, .. } if name == "nosuch"), "{err}");
    assert_eq!(err.to_string(), "--no-cache-filter: stage \"nosuch\" could not be found (stages: base, 1)");
}

#[test]
fn shell_and_exec_forms_and_shell_instruction() {
    let e = execs(
        "FROM busybox\nRUN echo a\nRUN [\"echo\", \"b\"]\nSHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN echo c\n",
        &BuildOptions::default(),
    );
    assert_eq!(e[0].args, vec!["/bin/sh", "-c", "echo a"]);
    assert_eq!(e[1].args, vec!["echo", "b"]);
    assert_eq!(e[2].args, vec!["/bin/ash", "-eo", "pipefail", "-c", "echo c"]);
}

fn exec_platforms(out: &rdock_frontend::Lowered) -> Vec<(String, Option<String>)> {
    out.definition
        .nodes
        .iter()
        .filter_map(|n| if let Op::Exec(e) = &n.op { Some((e.args.join(" "), e.platform.clone())) } else { None })
        .collect()
}

#[test]
fn from_platform_picks_the_base_for_that_platform_and_marks_its_runs() {
    let host = Platform::host().to_string();
    let out = lower("FROM --platform=linux/aarch64 busybox\nRUN true\n", &BuildOptions::default(), &Images).unwrap();
    assert_eq!(exec_platforms(&out), vec![("/bin/sh -c true".to_string(), Some("linux/arm64".to_string()))]);
    assert_eq!(out.image.architecture, "arm64", "an implicit target keeps the base's platform");
    let pinned: Vec<String> =
        out.definition.nodes.iter().filter_map(|n| if let Op::Source(s) = &n.op { Some(s.identifier.clone()) } else { None }).collect();
    assert!(pinned[0].ends_with(&"b".repeat(64)), "the arm64 manifest is pinned: {pinned:?}");

    // Cross-building: tools stage on the build platform, result for the target.
    let df = "FROM --platform=$BUILDPLATFORM busybox AS tools\nARG TARGETARCH BUILDARCH\nRUN echo $BUILDARCH-$TARGETARCH\n\
              FROM busybox\nARG TARGETPLATFORM\nCOPY --from=tools / /\nRUN echo $TARGETPLATFORM\n";
    let opts = BuildOptions { target_platform: Some(Platform::parse("linux/arm64").unwrap()), ..Default::default() };
    let out = lower(df, &opts, &Images).unwrap();
    let host_arch = Platform::host().architecture;
    assert_eq!(
        exec_platforms(&out),
        vec![
            ("/bin/sh -c echo $BUILDARCH-$TARGETARCH".to_string(), Some(host.clone())),
            ("/bin/sh -c echo $TARGETPLATFORM".to_string(), Some("linux/arm64".to_string())),
        ]
    );
    let envs: Vec<Vec<String>> =
        out.definition.nodes.iter().filter_map(|n| if let Op::Exec(e) = &n.op { Some(e.env.clone()) } else { None }).collect();
    assert!(envs[0].contains(&"TARGETARCH=arm64".to_string()) && envs[0].contains(&format!("BUILDARCH={host_arch}")), "{envs:?}");
    assert!(envs[1].contains(&"TARGETPLATFORM=linux/arm64".to_string()), "{envs:?}");
    assert_eq!((out.image.os.as_str(), out.image.architecture.as_str()), ("linux", "arm64"));
    assert!(out.warnings.iter().all(|w| w.rule != "InvalidBaseImagePlatform"), "{:?}", out.warnings);

    // An explicit target platform is what the image says, even over a stage's --platform.
    let opts = BuildOptions { target_platform: Some(Platform::parse("linux/arm/v7").unwrap()), ..Default::default() };
    let out = lower("FROM scratch\n", &opts, &Images).unwrap();
    assert_eq!((out.image.architecture.as_str(), out.image.variant.as_deref()), ("arm", Some("v7")));

    // The same step for two platforms is two vertices.
    let a = lower("FROM --platform=linux/amd64 busybox AS a\nRUN x\n", &BuildOptions::default(), &Images).unwrap();
    let b = lower("FROM --platform=linux/arm64 busybox AS a\nRUN x\n", &BuildOptions::default(), &Images).unwrap();
    assert_ne!(a.definition.terminal, b.definition.terminal);
}

#[test]
fn bad_platforms_are_errors_at_the_flag() {
    let err = lower("FROM --platform=linux/potato busybox\n", &BuildOptions::default(), &Images).unwrap_err().to_string();
    assert!(err.contains("unknown architecture") && err.contains(":1:"), "{err}");
    let err = lower("ARG P\nFROM --platform=$P busybox\n", &BuildOptions::default(), &Images).unwrap_err().to_string();
    assert!(err.contains("empty platform value") && err.contains(":2:"), "{err}");
}

#[test]
fn onbuild_triggers_run_first_and_are_not_inherited() {
    let df = "FROM onbuildbase AS base\nONBUILD RUN echo triggered\nFROM base\nRUN echo own\n";
    let out = lower(df, &BuildOptions::default(), &Images).unwrap();
    let runs: Vec<String> =
        out.definition.nodes.iter().filter_map(|n| if let Op::Exec(e) = &n.op { Some(e.args.join(" ")) } else { None }).collect();
    // The fake onbuildbase image has an ONBUILD of its own ("RUN x"), which runs in `base`.
    assert_eq!(runs, vec!["/bin/sh -c x", "/bin/sh -c echo triggered", "/bin/sh -c echo own"]);
    assert!(out.image.config.on_build.is_empty());
}

/// BuildKit's testOnBuildHeredoc: a heredoc trigger keeps its whole body in the config,
/// and runs whole in a stage built on it.
#[test]
fn an_onbuild_heredoc_keeps_its_body_and_runs_whole() {
    let df = "FROM busybox AS base\nONBUILD RUN <<EOF\necho \"hello world\" >> /dest\nEOF\n";
    let out = lower(df, &BuildOptions::default(), &Images).unwrap();
    assert_eq!(out.image.config.on_build, vec!["RUN <<EOF\necho \"hello world\" >> /dest\nEOF"]);
    let child = format!("{df}FROM base\nRUN echo own\n");
    let runs: Vec<Vec<String>> = execs(&child, &BuildOptions::default()).iter().map(|e| e.args.clone()).collect();
    assert!(runs[0].iter().any(|a| a.contains("echo \"hello world\" >> /dest")), "{runs:?}");
}

#[test]
fn base_image_platform_is_checked() {
    let out = lower("FROM arm\n", &BuildOptions::default(), &Images).unwrap();
    let rules: Vec<&str> = out.warnings.iter().map(|w| w.rule).collect();
    if Platform::host().architecture != "arm64" {
        assert_eq!(rules, vec!["InvalidBaseImagePlatform"]);
        assert!(out.warnings[0].message.contains("\"linux/arm64\""), "{}", out.warnings[0].message);
    }
    let out = lower("FROM busybox\n", &BuildOptions::default(), &Images).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn proxy_args_reach_run_but_not_the_graph_and_targetstage_is_set() {
    let df = "FROM busybox AS final\nARG TARGETSTAGE\nRUN echo $HTTP_PROXY $TARGETSTAGE\n";
    let with = |proxy: &str| {
        let mut opts = BuildOptions::default();
        opts.build_args.insert("HTTP_PROXY".into(), proxy.into());
        lower(df, &opts, &Images).unwrap()
    };
    let (a, b) = (with("http://one:1"), with("http://two:2"));
    assert_eq!(
        a.definition.nodes.iter().map(|n| n.digest()).collect::<Vec<_>>(),
        b.definition.nodes.iter().map(|n| n.digest()).collect::<Vec<_>>(),
        "a proxy changed a digest"
    );
    let run = a.definition.nodes.iter().find(|n| matches!(n.op, Op::Exec(_))).unwrap();
    // Both spellings, as BuildKit's executor sets them.
    assert_eq!(a.definition.metadata[&run.digest()].proxy_env, vec!["HTTP_PROXY=http://one:1", "http_proxy=http://one:1"]);
    let Op::Exec(e) = &run.op else { unreachable!() };
    assert!(e.env.contains(&"TARGETSTAGE=final".to_string()), "{:?}", e.env);
    assert!(!e.env.iter().any(|v| v.starts_with("HTTP_PROXY")));
    assert!(a.image.history.iter().all(|h| !h.created_by.as_deref().unwrap_or("").contains("one:1")));
}

/// BuildKit's testTargetStageNameArg: the target as asked, else the last stage's name,
/// else `default`; only where ARG TARGETSTAGE declares it.
#[test]
fn targetstage_is_the_target_or_the_last_stages_name_or_default() {
    let df = "FROM busybox AS base\nRUN echo first $TARGETSTAGE\nARG TARGETSTAGE\nRUN echo second $TARGETSTAGE\n\
              FROM scratch AS foo\nCOPY --from=base / /\nFROM scratch\nCOPY --from=base / /\n";
    let seen = |df: &str, target: Option<&str>| -> Vec<String> {
        let opts = BuildOptions { target: target.map(str::to_string), ..Default::default() };
        execs(df, &opts).iter().map(|e| e.env.iter().find(|v| v.starts_with("TARGETSTAGE=")).cloned().unwrap_or_default()).collect()
    };
    assert_eq!(seen(df, Some("foo")), ["", "TARGETSTAGE=foo"]);
    assert_eq!(seen(df, None), ["", "TARGETSTAGE=default"]);
    let named_last = format!("{df}FROM scratch AS final\nCOPY --from=base / /\n");
    assert_eq!(seen(&named_last, None), ["", "TARGETSTAGE=final"]);
}

#[test]
fn definition_descriptions_are_checked_when_asked() {
    let df = "# check=experimental=InvalidDefinitionDescription\n# the base image\nARG BASE=busybox\n\n# builder compiles things\nFROM $BASE AS builder\n# wrong words here\nFROM $BASE AS final\n";
    let out = lower(df, &BuildOptions::default(), &Images).unwrap();
    let msgs: Vec<String> = out
        .warnings
        .iter()
        .filter(|w| w.rule == "InvalidDefinitionDescription")
        .map(|w| format!("{}:{}", w.location.start_line, w.message))
        .collect();
    assert_eq!(
        msgs,
        vec![
            "3:Comment for ARG should follow the format: `# BASE <description>`",
            "8:Comment for FROM should follow the format: `# final <description>`"
        ]
    );
    let plain = lower(&df.replace("# check=experimental=InvalidDefinitionDescription\n", ""), &BuildOptions::default(), &Images).unwrap();
    assert!(plain.warnings.iter().all(|w| w.rule != "InvalidDefinitionDescription"), "experimental rules are off by default");
}

/// Issue 13 (4): hostile sizes get a located error, not a stack overflow or an allocation
/// that takes the machine. Run on a thread with a 2 MiB stack (Rust's default for threads,
/// a quarter of the main thread's), in a debug build, so a recursion that grows with the
/// input would show here.
#[test]
fn thousands_of_stages_deep_nesting_and_growing_variables_are_refused() {
    let run = |df: String| {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || match lower(&df, &BuildOptions::default(), &Images) {
                Err(FrontendError::Dockerfile(e)) => e.to_string(),
                Err(other) => panic!("not a located error: {other}"),
                Ok(_) => panic!("accepted"),
            })
            .unwrap()
            .join()
            .unwrap()
    };
    let chained = format!("FROM busybox AS s0\n{}", (1..5000).map(|i| format!("FROM s{} AS s{i}\n", i - 1)).collect::<String>());
    let e = run(chained);
    assert!(e.contains("stages refer to stages 200 deep") && e.contains("at most 200 stages"), "{e}");
    let n = 50_000;
    let nested = format!("FROM busybox\nENV A={}x{}\n", "${A:-".repeat(n), "}".repeat(n));
    let e = run(nested);
    assert!(e.contains("nested more than 64 deep") && e.contains(":2:"), "{e}");
    let growing = format!("FROM busybox\nENV A=aaaaaaaaaaaaaaaa\n{}", "ENV A=$A$A$A$A\n".repeat(12));
    let e = run(growing);
    assert!(e.contains("expands to more than 1 MiB") && e.contains(":11:"), "{e}");
    // Within the bounds all is well: 200 chained stages, 64 levels of nesting.
    let ok = format!("FROM busybox AS s0\n{}", (1..200).map(|i| format!("FROM s{} AS s{i}\nRUN true\n", i - 1)).collect::<String>());
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || lower(&ok, &BuildOptions::default(), &Images).unwrap())
        .unwrap()
        .join()
        .unwrap();
    let deep = format!("FROM busybox\nENV A={}x{}\n", "${B:-".repeat(64), "}".repeat(64));
    let out = lower(&deep, &BuildOptions::default(), &Images).unwrap();
    assert!(out.image.config.env.contains(&"A=x".to_string()), "{:?}", out.image.config.env);
}
