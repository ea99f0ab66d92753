//! Builds for several platforms at once: `--platform linux/amd64,linux/arm64` makes one OCI
//! index, each platform's image built (arm64 under the qemu-user emulator that
//! scripts/test-deps.sh registers in binfmt_misc), stored, pushed to a real registry and
//! exported; skopeo reads the index and copies each platform, docker loads the host's, and
//! `rdock run --platform` runs either. A base image lacking the platform asked for is an
//! error, not a mislabelled image.

mod support;

use std::process::Command;
use support::*;

const DF: &str = "FROM --platform=$BUILDPLATFORM busybox AS tools\n\
                  RUN echo shared > /shared\n\
                  ARG TARGETPLATFORM BUILDPLATFORM\n\
                  RUN echo \"$BUILDPLATFORM -> $TARGETPLATFORM\" > /note\n\
                  FROM bbmulti\n\
                  ARG TARGETARCH\n\
                  COPY --from=tools /note /shared /\n\
                  RUN uname -m > /arch && echo $TARGETARCH > /targetarch\n";

fn fixture() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new();
    assert_ok(&f.rdock(&["load", "-i", multiarch_busybox_tar().to_str().unwrap()]));
    let ctx = f.ctx("multi", &[("Dockerfile", DF)]);
    (f, ctx)
}

fn rdock_build(f: &Fixture, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    f.rdock(&all)
}

fn run_out(f: &Fixture, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    let out = f.rdock(&all);
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn several_platforms_make_one_index_stored_exported_and_run() {
    let (f, ctx) = fixture();
    let oci = f.path("multi.tar");
    let out = rdock_build(
        &f,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "multi:1",
            "--progress=rawjson",
            "--metadata-file",
            f.path("meta.json").to_str().unwrap(),
            "-o",
            &format!("type=oci,dest={}", oci.display()),
            "-o",
            &format!("type=local,dest={}", f.path("dirs").display()),
            ctx.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let events: Vec<serde_json::Value> =
        stderr(&out).lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect();
    let ran = started(&events);
    // The build platform's stage is the same for both targets up to the target args.
    assert_eq!(ran.iter().filter(|n| n.contains("RUN echo shared")).count(), 1, "{ran:#?}");
    assert!(ran.iter().any(|n| n.starts_with("[linux/arm64 ") && n.contains("uname")), "steps name their platform: {ran:#?}");

    // skopeo reads one index of two platforms and copies each.
    let raw: serde_json::Value =
        serde_json::from_str(&sh("skopeo", &["inspect", "--raw", &format!("oci-archive:{}", oci.display())])).unwrap();
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap()))
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for arch in ["amd64", "arm64"] {
        let dir = f.path(&format!("copy-{arch}"));
        sh(
            "skopeo",
            &["copy", "-q", "--override-arch", arch, &format!("oci-archive:{}", oci.display()), &format!("dir:{}", dir.display())],
        );
        let inspect: serde_json::Value = serde_json::from_str(&sh("skopeo", &["inspect", &format!("dir:{}", dir.display())])).unwrap();
        assert_eq!(inspect["Architecture"], arch);
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.path("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["containerimage.descriptor"]["mediaType"], "application/vnd.oci.image.index.v1+json");

    // Each platform's files, from the local output's directory per platform.
    let read = |p: &str| std::fs::read_to_string(f.path(p)).unwrap();
    assert_eq!(read("dirs/linux_amd64/arch"), "x86_64\n");
    assert_eq!(read("dirs/linux_arm64/arch"), "aarch64\n");
    assert_eq!(read("dirs/linux_arm64/note"), "linux/amd64 -> linux/arm64\n");
    assert_eq!(read("dirs/linux_arm64/targetarch"), "arm64\n");

    // The stored image is the index: run picks the host's, or the one asked for.
    assert_eq!(run_out(&f, &["multi:1", "cat", "/arch"]), "x86_64\n");
    assert_eq!(run_out(&f, &["--platform", "linux/arm64", "multi:1", "cat", "/arch"]), "aarch64\n");
    assert_eq!(run_out(&f, &["--platform", "linux/arm64", "multi:1", "uname", "-m"]), "aarch64\n");

    // docker loads its host's platform from the index.
    let tag = format!("rdock-multi-test:{}", std::process::id());
    sh("skopeo", &["copy", "-q", &format!("oci-archive:{}", oci.display()), &format!("docker-daemon:{tag}")]);
    let arch = docker_run(&["--rm", &tag, "cat", "/arch"]);
    let _ = Command::new("/usr/bin/docker").args(["rmi", "-f", &tag]).output();
    assert_eq!(arch.trim(), "x86_64");
}

#[test]
fn several_platforms_are_pushed_as_one_index() {
    let (f, ctx) = fixture();
    let reg = Registry::start(Auth::None);
    let name = format!("{}/multi:1", reg.host);
    let out = rdock_build(&f, &["--platform", "linux/arm64,linux/amd64", "-t", &name, "--push", "-q", ctx.to_str().unwrap()]);
    assert_ok(&out);
    let raw: serde_json::Value =
        serde_json::from_str(&sh("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{name}")])).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2, "{raw}");
    let arm = sh("skopeo", &["inspect", "--tls-verify=false", "--override-arch", "arm64", &format!("docker://{name}")]);
    assert!(arm.contains("\"Architecture\": \"arm64\""), "{arm}");
    // -q printed the index's digest.
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(printed.starts_with("sha256:"), "{printed}");

    // Another store pulls it and runs the platform it asks for.
    let other = Fixture::empty();
    assert_ok(&other.rdock(&["pull", &name]));
    assert_eq!(run_out(&other, &["--platform", "linux/arm64", &name, "cat", "/arch"]), "aarch64\n");
}

#[test]
fn a_base_without_the_platform_asked_for_is_an_error() {
    let (f, ctx) = fixture();
    // busybox:latest is amd64 only.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN uname -m > /arch\n").unwrap();
    let out = rdock_build(&f, &["--platform", "linux/arm64", ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("base image busybox:latest is for linux/amd64 only, not linux/arm64"), "{}", stderr(&out));
    assert!(stderr(&out).contains("Dockerfile:1"), "{}", stderr(&out));
    // FROM --platform of another, and COPY --from of an image, the same.
    std::fs::write(ctx.join("Dockerfile"), "FROM --platform=linux/arm64 busybox\n").unwrap();
    let out = rdock_build(&f, &[ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not linux/arm64"), "{}", stderr(&out));

    let out = f.rdock(&["run", "--rm", "--platform", "linux/arm64", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not match the specified platform: wanted linux/arm64, actual: linux/amd64"), "{}", stderr(&out));

    // What a build for several platforms cannot write is refused by name.
    std::fs::write(ctx.join("Dockerfile"), DF).unwrap();
    let out = rdock_build(
        &f,
        &["--platform", "linux/amd64,linux/arm64", "-o", &format!("type=docker,dest={}", f.path("d.tar").display()), ctx.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("type=docker") && stderr(&out).contains("several platforms"), "{}", stderr(&out));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}
