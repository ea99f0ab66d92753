//! BuildKit's own Dockerfile tests (frontend/dockerfile/*_test.go), translated: each
//! Dockerfile is BuildKit's, built by rdock, with BuildKit's expected results. Where a test
//! pushes to a registry to build on the result, the local store stands in for it.

mod support;

use std::process::Output;
use support::*;

fn build(f: &Fixture, ctx: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push(ctx.to_str().unwrap());
    f.rdock(&all)
}

fn read(f: &Fixture, p: &str) -> String {
    std::fs::read_to_string(f.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// testCopyHeredocSpecialSymbols: unquoted heredocs take `\` as BuildKit's lexer does.
#[test]
fn copy_heredoc_special_symbols() {
    let f = Fixture::new();
    let df = "FROM scratch\nCOPY <<EOF quotefile\n\"quotes in file\"\nEOF\nCOPY <<EOF slashfile1\n\\\nEOF\nCOPY <<EOF slashfile2\n\\\\\nEOF\n\
              COPY <<EOF slashfile3\n\\$\nEOF\nCOPY <<\"EOF\" rawslashfile1\n\\\nEOF\nCOPY <<\"EOF\" rawslashfile2\n\\\\\nEOF\n\
              COPY <<\"EOF\" rawslashfile3\n\\$\nEOF\n";
    let ctx = f.ctx("heredoc", &[("Dockerfile", df)]);
    assert_ok(&build(&f, &ctx, &["-o", &format!("type=local,dest={}", f.path("o").display())]));
    for (file, want) in [
        ("quotefile", "\"quotes in file\"\n"),
        ("slashfile1", "\n"),
        ("slashfile2", "\\\n"),
        ("slashfile3", "$\n"),
        ("rawslashfile1", "\\\n"),
        ("rawslashfile2", "\\\\\n"),
        ("rawslashfile3", "\\$\n"),
    ] {
        assert_eq!(read(&f, &format!("o/{file}")), want, "{file}");
    }
}

/// testOnBuildHeredoc: a heredoc trigger keeps its body and runs whole downstream.
#[test]
fn onbuild_heredoc() {
    let f = Fixture::new();
    let base = f.ctx("base", &[("Dockerfile", "FROM busybox\nONBUILD RUN <<EOF\necho \"hello world\" >> /dest\nEOF\n")]);
    assert_ok(&build(&f, &base, &["-t", "onbuild-heredoc:base"]));
    let inspected: serde_json::Value = serde_json::from_str(&out(&f.rdock(&["inspect", "onbuild-heredoc:base"]))).unwrap();
    assert_eq!(inspected[0]["Config"]["OnBuild"], serde_json::json!(["RUN <<EOF\necho \"hello world\" >> /dest\nEOF"]));
    let child = f.ctx("child", &[("Dockerfile", "FROM onbuild-heredoc:base AS base\nFROM scratch\nCOPY --from=base /dest /dest\n")]);
    assert_ok(&build(&f, &child, &["-o", &format!("type=local,dest={}", f.path("o").display())]));
    assert_eq!(read(&f, "o/dest"), "hello world\n");
}

/// testTargetStageNameArg: the target, else the last stage's name, else `default`.
#[test]
fn target_stage_name_arg() {
    let f = Fixture::new();
    let df = "FROM busybox AS base\nWORKDIR /out\nRUN echo -n \"value:$TARGETSTAGE\" > /out/first\nARG TARGETSTAGE\n\
              RUN echo -n \"value:$TARGETSTAGE\" > /out/second\n\nFROM scratch AS foo\nCOPY --from=base /out/ /\n\nFROM scratch\nCOPY --from=base /out/ /\n";
    let ctx = f.ctx("ts", &[("Dockerfile", df)]);
    assert_ok(&build(&f, &ctx, &["--target", "foo", "-o", &format!("type=local,dest={}", f.path("o1").display())]));
    assert_eq!((read(&f, "o1/first"), read(&f, "o1/second")), ("value:".into(), "value:foo".into()));
    assert_ok(&build(&f, &ctx, &["-o", &format!("type=local,dest={}", f.path("o2").display())]));
    assert_eq!((read(&f, "o2/first"), read(&f, "o2/second")), ("value:".into(), "value:default".into()));
    std::fs::write(ctx.join("Dockerfile"), format!("{df}\nFROM scratch AS final\nCOPY --from=base /out/ /\n")).unwrap();
    assert_ok(&build(&f, &ctx, &["-o", &format!("type=local,dest={}", f.path("o3").display())]));
    assert_eq!(read(&f, "o3/second"), "value:final");
}

/// testUserAdditionalGids (BuildKit's busybox lists root in wheel; ours is made so).
#[test]
fn user_additional_gids() {
    let f = Fixture::new();
    let df = "FROM busybox\nRUN sed -i 's/^wheel:x:10:.*/wheel:x:10:root/' /etc/group\nSHELL [\"/bin/sh\", \"-euxc\"]\n\
              RUN [ \"$(id)\" = \"uid=0(root) gid=0(root) groups=0(root),10(wheel)\" ]\n\
              USER 1234\nRUN [ \"$(id)\" = \"uid=1234 gid=0(root) groups=0(root)\" ]\n\
              USER 1234:1234\nRUN [ \"$(id)\" = \"uid=1234 gid=1234 groups=1234\" ]\n\
              USER daemon\nRUN [ \"$(id)\" = \"uid=1(daemon) gid=1(daemon) groups=1(daemon)\" ]\n";
    let ctx = f.ctx("gids", &[("Dockerfile", df)]);
    assert_ok(&build(&f, &ctx, &["--progress=plain"]));
}

/// testDockerfileAddChownArchive: --chown reaches every extracted entry.
#[test]
fn add_chown_archive() {
    let f = Fixture::new();
    // The archive's entries are 1234:1234: --chown must win over them.
    let archive = tar_bytes(&[("foo", "content0")]);
    let ctx = f.ctx("chown", &[("Dockerfile", "FROM scratch\nADD --chown=100:200 t.tar /out/\n")]);
    std::fs::write(ctx.join("t.tar"), archive).unwrap();
    let tar = f.path("out.tar");
    assert_ok(&build(&f, &ctx, &["-o", &format!("type=tar,dest={}", tar.display())]));
    let mut a = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut seen = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        seen.push((p.trim_start_matches("./").trim_end_matches('/').to_string(), e.header().uid().unwrap(), e.header().gid().unwrap()));
    }
    assert!(seen.contains(&("out/foo".into(), 100, 200)), "{seen:?}");
    assert!(seen.contains(&("out".into(), 100, 200)), "{seen:?}");
}

/// testCopyChmod: --chmod, including the parents COPY makes.
#[test]
fn copy_chmod() {
    let f = Fixture::new();
    let df = "FROM busybox AS base\nRUN mkdir -m 0777 /out\nCOPY --chmod=0644 foo /\nCOPY --chmod=777 bar /baz\nCOPY --chmod=0 foo /foobis\n\
              COPY --chmod=777 foo /parent/foo\nCOPY --chmod=770 foo /parent/sub/foo\nARG mode\nCOPY --chmod=${mode} foo /footer\n\
              RUN stat -c \"%04a\" /foo  > /out/fooperm\nRUN stat -c \"%04a\" /baz  > /out/barperm\n\
              RUN stat -c \"%04a\" /foobis  > /out/foobisperm\nRUN stat -c \"%04a\" /parent  > /out/parentperm\n\
              RUN stat -c \"%04a\" /parent/sub  > /out/subparentperm\nRUN stat -c \"%04a\" /footer  > /out/footerperm\n\
              FROM scratch\nCOPY --from=base /out /\n";
    let ctx = f.ctx("chmod", &[("Dockerfile", df), ("foo", "foo-contents"), ("bar", "bar-contents")]);
    assert_ok(&build(&f, &ctx, &["--build-arg", "mode=755", "-o", &format!("type=local,dest={}", f.path("o").display())]));
    for (file, want) in [
        ("fooperm", "0644\n"),
        ("barperm", "0777\n"),
        ("foobisperm", "0000\n"),
        ("parentperm", "0777\n"),
        ("subparentperm", "0770\n"),
        ("footerperm", "0755\n"),
    ] {
        assert_eq!(read(&f, &format!("o/{file}")), want, "{file}");
    }
}

/// BuildKit refuses variables in `--from`, with these words.
#[test]
fn from_does_not_take_variables() {
    let f = Fixture::new();
    for (df, words) in [
        (
            "FROM busybox AS base\nFROM busybox\nARG S=base\nRUN --mount=from=$S,target=/b true\n",
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        (
            "FROM busybox AS base\nFROM busybox\nARG S=base\nCOPY --from=${S} /bin/busybox /bb\n",
            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
        ),
    ] {
        let ctx = f.ctx("var", &[("Dockerfile", df)]);
        let o = build(&f, &ctx, &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(words) && stderr(&o).contains("Dockerfile:4"), "{}", stderr(&o));
    }
}

/// A missing COPY source names its line, with the line, and where it was looked for.
#[test]
fn a_missing_copy_source_names_its_line_and_its_stage() {
    let f = Fixture::new();
    for (copy, from) in [("COPY nope /x", "the build context"), ("COPY --from=base /nope /x", "stage base")] {
        let df = format!("FROM busybox AS base\nRUN true\nFROM busybox\n{copy}\n");
        let ctx = f.ctx("missing", &[("Dockerfile", &df)]);
        let o = build(&f, &ctx, &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&format!("\"/nope\": not found in {from}")), "{e}");
        assert!(e.contains("Dockerfile:4") && e.contains(&format!("4 | {copy}")), "{e}");
    }
    // A failed RUN shows its lines too.
    let ctx = f.ctx("run", &[("Dockerfile", "FROM busybox\nRUN echo hi && \\\n  exit 3\n")]);
    let e = stderr(&build(&f, &ctx, &[]));
    assert!(e.contains("2 | RUN echo hi && \\") && e.contains("3 |   exit 3"), "{e}");
}
