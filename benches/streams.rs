//! The `streams` workload: what issue 17 added, each cold (empty store; BuildKit and
//! Buildah with --no-cache), beside what docker 20.10 and Buildah offer for the same job.
//!
//! - `tar-context`: `rdock build - < ctx.tar` of 1,000 files (16 MB), against
//!   `docker build - < ctx.tar` (Buildah takes no tar on standard input).
//! - `bake-2`: two targets whose Dockerfiles share a step writing 32 MB, built by
//!   `rdock bake` at once (the shared step runs once), against two `docker build`s and two
//!   `buildah bud`s one after the other (docker 20.10 has no bake).
//! - `multiplatform`: `--platform linux/amd64,linux/arm64` (arm64 under qemu-user), both
//!   platforms at once into one index, against the same two platforms built one after the
//!   other by rdock (the BuildKit column: docker 20.10's builder takes one platform).

use super::{Row, Tools, fresh_store, median, random_context, run, time};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) fn workload_streams(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    Ok(vec![tar_context(t, dir, runs)?, bake_two(t, dir, runs)?, multiplatform(t, dir, runs)?])
}

/// `cmd` with standard input from `file`, timed.
fn time_stdin(cmd: &mut Command, file: &Path) -> Result<std::time::Duration> {
    cmd.stdin(Stdio::from(std::fs::File::open(file)?));
    time(cmd)
}

fn tar_context(t: &Tools, dir: &Path, runs: usize) -> Result<Row> {
    let ctx = dir.join("tar-context");
    let tar = dir.join("tar-context.tar");
    if !tar.exists() {
        random_context(&ctx, 1000, 16 * 1024)?;
        std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY . /app\nRUN ls /app | wc -l > /count\n")?;
        run(Command::new("tar").arg("-C").arg(&ctx).args(["-cf"]).arg(&tar).arg("."))?;
    }
    let (mut rd, mut bk) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        rd.push(time_stdin(Command::new(&t.rdock).args(["build", "-q", "-"]).env("RDOCK_ROOT", &root), &tar)?);
        if t.docker {
            let mut c = Command::new(super::docker_cli());
            c.env("DOCKER_BUILDKIT", "1").args(["build", "-q", "--no-cache", "-t", "rdock-bench:latest", "-"]);
            bk.push(time_stdin(&mut c, &tar)?);
        }
    }
    Ok(Row { name: "tar-context".into(), rdock: median(rd), buildkit: opt(bk), buildah: None, per: None, limit: None })
}

fn opt(v: Vec<std::time::Duration>) -> Option<std::time::Duration> {
    (!v.is_empty()).then(|| median(v))
}

fn bake_two(t: &Tools, dir: &Path, runs: usize) -> Result<Row> {
    let p = dir.join("bake-2");
    let shared = "FROM busybox\nRUN head -c 33554432 /dev/urandom > /shared\n";
    for (name, extra) in [("a", "RUN md5sum /shared > /a\n"), ("b", "RUN sha1sum /shared > /b\n")] {
        std::fs::create_dir_all(p.join(name))?;
        std::fs::write(p.join(name).join("Dockerfile"), format!("{shared}{extra}"))?;
    }
    let hcl = "group \"default\" {\n  targets = [\"a\", \"b\"]\n}\ntarget \"a\" {\n  context = \"a\"\n  tags = [\"bench/a:1\"]\n}\n\
               target \"b\" {\n  context = \"b\"\n  tags = [\"bench/b:1\"]\n}\n";
    std::fs::write(p.join("docker-bake.hcl"), hcl)?;
    let (mut rd, mut bk, mut ba) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        rd.push(time(Command::new(&t.rdock).args(["bake", "--progress", "quiet"]).current_dir(&p).env("RDOCK_ROOT", &root))?);
        if t.docker {
            let start = std::time::Instant::now();
            for name in ["a", "b"] {
                run(&mut super::docker_build(&p.join(name), true))?;
            }
            bk.push(start.elapsed());
        }
        if t.buildah {
            let start = std::time::Instant::now();
            for name in ["a", "b"] {
                run(&mut super::buildah_build(&p.join(name), true))?;
            }
            ba.push(start.elapsed());
        }
    }
    Ok(Row {
        name: "bake-2 (BuildKit, Buildah: 2 builds)".into(),
        rdock: median(rd),
        buildkit: opt(bk),
        buildah: opt(ba),
        per: None,
        limit: None,
    })
}

/// The multi-platform busybox (amd64, arm64) as the tests make it; None without the
/// arm64 busybox scripts/test-deps.sh fetches.
fn bbmulti(dir: &Path) -> Result<Option<PathBuf>> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let arm = ws.join(".test-deps/arm64/busybox");
    let out = dir.join("bbmulti.tar");
    if !arm.is_file() {
        return Ok(None);
    }
    if !out.exists() {
        let host = if Path::new("/bin/busybox").exists() { "/bin/busybox" } else { "/usr/bin/busybox" };
        run(Command::new("bash")
            .arg(ws.join("scripts/make-busybox-image.sh"))
            .arg(&out)
            .arg("bbmulti:latest")
            .arg(format!("amd64={host}"))
            .arg(format!("arm64={}", arm.display())))?;
    }
    Ok(Some(out))
}

fn multiplatform(t: &Tools, dir: &Path, runs: usize) -> Result<Row> {
    let Some(base) = bbmulti(dir)? else {
        anyhow::bail!("multiplatform needs .test-deps/arm64/busybox: run scripts/test-deps.sh");
    };
    let ctx = dir.join("multiplatform");
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(ctx.join("Dockerfile"), "FROM bbmulti\nRUN for i in $(seq 1 2000); do echo $i; done > /n\nRUN uname -m > /arch\n")?;
    let (mut both, mut one_by_one) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (k, acc) in [(0, &mut both), (1, &mut one_by_one)] {
            let root = fresh_store(t, dir)?;
            run(Command::new(&t.rdock).args(["load", "-i"]).arg(&base).env("RDOCK_ROOT", &root))?;
            let build = |platform: &str| {
                let mut c = Command::new(&t.rdock);
                c.args(["build", "-q", "--platform", platform, "-t", "bench/multi:1"]).arg(&ctx).env("RDOCK_ROOT", &root);
                c
            };
            let start = std::time::Instant::now();
            if k == 0 {
                run(&mut build("linux/amd64,linux/arm64"))?;
            } else {
                run(&mut build("linux/amd64"))?;
                run(&mut build("linux/arm64"))?;
            }
            acc.push(start.elapsed());
        }
    }
    Ok(Row {
        name: "multiplatform (BuildKit column: rdock, one platform after the other)".into(),
        rdock: median(both),
        buildkit: Some(median(one_by_one)),
        buildah: None,
        per: None,
        limit: None,
    })
}
