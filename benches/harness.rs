//! rdock-bench: builds named workloads with rdock and, when they are installed, with
//! BuildKit (`DOCKER_BUILDKIT=1 docker build`, against a dockerd you started) and Buildah,
//! and prints a table of medians and ratios. Benchmarks measure; tests check behaviour.
//!
//!   cargo build --release && cargo run --release -p rdock-benches -- [--runs N] [WORKLOAD...]
//!
//! Workloads:
//!   run30-cold    30 trivial `RUN echo N > /fN` steps on busybox, empty cache, image stored
//!   run30-noop    the same Dockerfile rebuilt with everything cached
//!   context-hash  `COPY . /app` of 2,000 files (32 MiB), then a no-op rebuild that must
//!                 re-hash the whole context
//!   context5k     `COPY . /app` of 5,000 files (58 MB): cold, a no-op rebuild (the stat
//!                 cache must make it read no file), and a rebuild after one file changed
//!                 (hashing reads one file; the COPY really re-runs)
//!   layer-commit  one RUN writing 64 MiB of incompressible data: snapshot commit, diff,
//!                 gzip, sha256 (exported as an OCI tarball)
//!   oci-export    exporting that image again as an OCI tarball (layers already compressed)
//!   registry      against Debian's docker-registry on a loopback port: push and pull of a
//!                 ~490 MB image (five 98 MB layers) by rdock, `docker push`/`docker pull`
//!                 and `skopeo copy … oci-archive:` (in the BuildKit and Buildah columns);
//!                 and an empty-store build of a 10-step image with `--import-cache`
//!   network       the default network's cost: one trivial RUN (`RUN true`, cold) and the
//!                 run30 workload, each with the default network and with
//!                 `force-network-mode=none`, interleaved run by run
//!   realworld     a Dockerfile as real projects write it, on a debootstrapped Debian
//!                 (scripts/make-debian-rootfs.sh): apt-get install python3 + venv, pip
//!                 install of two packages, COPY of the app; cold (empty cache; BuildKit
//!                 and Buildah with --no-cache) and warm with one source file changed
//!   run           `rdock run --rm busybox true` against `docker run --rm busybox true`:
//!                 container start to exit (overlay mount, namespaces, exec, cleanup);
//!                 at least 20 runs each after one warm-up
//!   disk          what writes real data, cold with an image output, beside BuildKit,
//!                 Buildah and the same work by host tools (a second table, "limit"): a
//!                 RUN writing 512 MB (limit: busybox head > file; sha256sum), exporting it to a
//!                 gzip docker-archive (against `docker save | pigz -1`), COPY of the
//!                 5,000-file context (limit: cp -a), `cp -a /usr/share` on Debian
//!                 (limit: cp -a of the same tree)
//!   streams       a tar context on standard input, `rdock bake` of two targets sharing a
//!                 step, and a build for linux/amd64,linux/arm64 (see streams.rs)
//!
//! Stores and outputs are never deleted by the harness (see `fresh_store`): remove
//! `$TMPDIR/rdock-bench/stores` when no benchmark follows.
//!
//! `--baseline DIR` also times the `rdock` and `rdock-build` in DIR (another build of
//! rdock, say the last release's) on the run30 and run workloads, interleaved run by run
//! with this one's, as extra rows marked "(baseline)".

mod streams;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Tools {
    rdock: PathBuf,
    rdock_build: PathBuf,
    /// Another build's binaries, timed beside these.
    baseline: Option<Box<Tools>>,
    docker: bool,
    buildah: bool,
    base_tar: PathBuf,
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("no parent of current exe")?.to_path_buf())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn time(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    run(cmd)?;
    Ok(t.elapsed())
}

/// Wall time of an rdock build run with `--progress rawjson`, and the time outside the
/// steps that ran (wall time minus the sum of their durations): what the builder itself
/// costs around the work a change really causes.
fn time_overhead(cmd: &mut Command) -> Result<(Duration, Duration)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let total = t.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let steps_ms: f64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("\"kind\":\"completed\""))
        .filter_map(|l| l.split("\"duration_ms\":").nth(1))
        .filter_map(|rest| rest.trim_end_matches('}').split(',').next().and_then(|n| n.parse::<f64>().ok()))
        .sum();
    Ok((total, total.saturating_sub(Duration::from_secs_f64(steps_ms / 1000.0))))
}

/// Medians over `runs` of a cold build followed by a warm rebuild (None: no warm run).
fn cold_warm(
    runs: usize,
    mut cold: impl FnMut() -> Command,
    mut warm: Option<&mut dyn FnMut() -> Command>,
) -> Result<(Duration, Option<Duration>)> {
    let mut c = Vec::new();
    let mut w = Vec::new();
    for _ in 0..runs {
        c.push(time(&mut cold())?);
        if let Some(warm) = warm.as_mut() {
            w.push(time(&mut warm())?);
        }
    }
    Ok((median(c), (!w.is_empty()).then(|| median(w))))
}

/// BuildKit and Buildah medians for a context, where installed.
fn others(t: &Tools, ctx: &Path, runs: usize, warm: bool) -> Result<[(Option<Duration>, Option<Duration>); 2]> {
    let mut out = [(None, None), (None, None)];
    if t.docker {
        let mut w = || docker_build(ctx, false);
        let (c, w) = cold_warm(runs, || docker_build(ctx, true), if warm { Some(&mut w) } else { None })?;
        out[0] = (Some(c), w);
    }
    if t.buildah {
        let mut w = || buildah_build(ctx, false);
        let (c, w) = cold_warm(runs, || buildah_build(ctx, true), if warm { Some(&mut w) } else { None })?;
        out[1] = (Some(c), w);
    }
    Ok(out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn available(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// A fresh rdock store with the base image loaded. The harness never removes stores: ext4
/// without a journal skips recently freed inodes when allocating, so creating thousands of
/// files right after deleting thousands (even at the end of the previous run) measures the
/// allocator, not the builder.
fn fresh_store(t: &Tools, dir: &Path) -> Result<PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let root = dir.join("stores").join(format!("{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    run(Command::new(&t.rdock).args(["load", "-i"]).arg(&t.base_tar).env("RDOCK_ROOT", &root))?;
    Ok(root)
}

fn rdock_build(t: &Tools, root: &Path, ctx: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(&t.rdock_build);
    c.args(["--frontend", "dockerfile"]);
    if !extra.contains(&"--progress") {
        c.args(["--progress", "quiet"]);
    }
    c.arg(format!("--local=context={}", ctx.display())).args(extra).env("RDOCK_ROOT", root);
    c
}

/// Debian's docker.io client: it drives its daemon's built-in BuildKit with
/// DOCKER_BUILDKIT=1 (a newer client elsewhere on PATH may insist on buildx).
fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() { "/usr/bin/docker" } else { "docker" }
}

fn docker_build(ctx: &Path, no_cache: bool) -> Command {
    let mut c = Command::new(docker_cli());
    c.env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", "rdock-bench:latest"]);
    if no_cache {
        c.arg("--no-cache");
    }
    c.arg(ctx);
    c
}

fn buildah_build(ctx: &Path, no_cache: bool) -> Command {
    let mut c = Command::new("buildah");
    c.args(["bud", "-q", "--layers", "--isolation", "chroot", "-t", "rdock-bench:latest"]);
    if no_cache {
        c.arg("--no-cache");
    }
    c.arg(ctx);
    c
}

struct Row {
    name: String,
    rdock: Duration,
    buildkit: Option<Duration>,
    buildah: Option<Duration>,
    per: Option<(u32, &'static str)>,
    /// What the same work costs done by plain tools on the host (the hardware's limit).
    limit: Option<Duration>,
}

fn workload_run30(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let ctx = dir.join("run30");
    std::fs::create_dir_all(&ctx)?;
    let mut df = String::from("FROM busybox\n");
    for i in 1..=30 {
        df.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    std::fs::write(ctx.join("Dockerfile"), df)?;
    // This build and the baseline take turns going first: always running first tilted
    // the comparison by several per cent on this machine.
    let tools: Vec<&Tools> = std::iter::once(t).chain(t.baseline.as_deref()).collect();
    let mut times = vec![(Vec::new(), Vec::new()); tools.len()];
    for i in 0..runs {
        let mut order: Vec<usize> = (0..tools.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let root = fresh_store(tools[k], dir)?;
            let build = || time(&mut rdock_build(tools[k], &root, &ctx, &["--output", "type=image,name=bench:run30"]));
            times[k].0.push(build()?);
            times[k].1.push(build()?);
        }
    }
    let mut times = times.into_iter();
    let (cold, noop) = times.next().unwrap_or_default();
    let base = times.next().unwrap_or_default();
    let [(bk_cold, bk_noop), (ba_cold, ba_noop)] = others(t, &ctx, runs, true)?;
    let mut rows = vec![
        Row { limit: None, name: "run30-cold".into(), rdock: median(cold), buildkit: bk_cold, buildah: ba_cold, per: Some((30, "step")) },
        Row { limit: None, name: "run30-noop".into(), rdock: median(noop), buildkit: bk_noop, buildah: ba_noop, per: None },
    ];
    if t.baseline.is_some() {
        rows.push(Row {
            limit: None,
            name: "run30-cold (baseline)".into(),
            rdock: median(base.0),
            buildkit: bk_cold,
            buildah: ba_cold,
            per: Some((30, "step")),
        });
        rows.push(Row {
            limit: None,
            name: "run30-noop (baseline)".into(),
            rdock: median(base.1),
            buildkit: bk_noop,
            buildah: ba_noop,
            per: None,
        });
    }
    Ok(rows)
}

fn workload_context(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let ctx = dir.join("context");
    if !ctx.join("Dockerfile").exists() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..2000 {
            let d = ctx.join(format!("d{}", i % 40));
            std::fs::create_dir_all(&d)?;
            let mut buf = vec![0u8; 16 * 1024];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            std::fs::write(d.join(format!("f{i}.bin")), buf)?;
        }
        std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY . /app\n")?;
    }
    let mut cold = Vec::new();
    let mut noop = Vec::new();
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        cold.push(time(&mut rdock_build(t, &root, &ctx, &["--output", "type=image,name=bench:ctx"]))?);
        noop.push(time(&mut rdock_build(t, &root, &ctx, &[]))?);
    }
    let [bk, ba] = others(t, &ctx, runs, true)?;
    Ok(vec![
        Row { limit: None, name: "context-copy-cold".into(), rdock: median(cold), buildkit: bk.0, buildah: ba.0, per: None },
        Row { limit: None, name: "context-hash-noop".into(), rdock: median(noop), buildkit: bk.1, buildah: ba.1, per: None },
    ])
}

/// Fills `ctx` with `n` files of `size` pseudo-random bytes in 50 directories.
fn random_context(ctx: &Path, n: usize, size: usize) -> Result<()> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        let d = ctx.join(format!("d{}", i % 50));
        std::fs::create_dir_all(&d)?;
        let mut buf = vec![0u8; size];
        for b in buf.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::fs::write(d.join(format!("f{i}.bin")), buf)?;
    }
    Ok(())
}

/// Changes one byte of a different file each time, as an edit does.
fn edit_one(ctx: &Path, k: usize) -> Result<()> {
    let p = ctx.join(format!("d{}", k % 50)).join(format!("f{k}.bin"));
    let mut b = std::fs::read(&p)?;
    b[0] = b[0].wrapping_add(1);
    std::fs::write(&p, b)?;
    Ok(())
}

/// The 5,000-file, 58 MB context with `COPY . /app`, made once per machine.
fn context5k(dir: &Path) -> Result<PathBuf> {
    let ctx = dir.join("context5k");
    if !ctx.join("Dockerfile").exists() {
        random_context(&ctx, 5000, 11_600)?;
        std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY . /app\n")?;
        // Files modified within the last second are re-read (the stat cache's racy window).
        std::thread::sleep(Duration::from_millis(1100));
    }
    Ok(ctx)
}

fn workload_context5k(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let ctx = context5k(dir)?;
    let mut k = 0;
    let (mut cold, mut noop, mut one, mut over) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        cold.push(time(&mut rdock_build(t, &root, &ctx, &[]))?);
        noop.push(time(&mut rdock_build(t, &root, &ctx, &[]))?);
        edit_one(&ctx, k)?;
        k += 1;
        let (total, overhead) = time_overhead(&mut rdock_build(t, &root, &ctx, &["--progress", "rawjson"]))?;
        one.push(total);
        over.push(overhead);
    }
    let mut theirs: [(Option<Duration>, Option<Duration>, Option<Duration>); 2] = [(None, None, None), (None, None, None)];
    for (slot, on, build) in [(0, t.docker, docker_build as fn(&Path, bool) -> Command), (1, t.buildah, buildah_build)] {
        if !on {
            continue;
        }
        let (mut c, mut n, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            c.push(time(&mut build(&ctx, true))?);
            n.push(time(&mut build(&ctx, false))?);
            edit_one(&ctx, k)?;
            k += 1;
            o.push(time(&mut build(&ctx, false))?);
        }
        theirs[slot] = (Some(median(c)), Some(median(n)), Some(median(o)));
    }
    let [bk, ba] = theirs;
    Ok(vec![
        Row { limit: None, name: "context5k-cold".into(), rdock: median(cold), buildkit: bk.0, buildah: ba.0, per: None },
        Row { limit: None, name: "context5k-noop".into(), rdock: median(noop), buildkit: bk.1, buildah: ba.1, per: None },
        Row { limit: None, name: "context5k-one-changed".into(), rdock: median(one), buildkit: bk.2, buildah: ba.2, per: None },
        Row { limit: None, name: "context5k-one-changed-overhead".into(), rdock: median(over), buildkit: None, buildah: None, per: None },
    ])
}

/// Garbage collection on a store holding the 5,000-file context's results: the no-op
/// build with a cap configured (the collector takes stock after every build), `du`, and
/// `prune --all`; BuildKit's `docker system df` and `docker builder prune -af` beside them.
fn workload_gc(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let ctx = context5k(dir)?;
    let (mut first_cap, mut capped, mut du, mut prune) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        run(&mut rdock_build(t, &root, &ctx, &[]))?;
        // A cap far above the store's size: the cost of taking stock, nothing removed. The
        // first collection measures the new 5,000-file snapshot once; later ones do not.
        first_cap.push(time(rdock_build(t, &root, &ctx, &[]).env("RDOCK_GC_KEEP_STORAGE", "100GB"))?);
        capped.push(time(rdock_build(t, &root, &ctx, &[]).env("RDOCK_GC_KEEP_STORAGE", "100GB"))?);
        du.push(time(Command::new(&t.rdock).arg("du").env("RDOCK_ROOT", &root))?);
        prune.push(time(Command::new(&t.rdock).args(["prune", "--all"]).env("RDOCK_ROOT", &root))?);
    }
    let (mut bk_df, mut bk_prune) = (None, None);
    if t.docker {
        let (mut df, mut pr) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            run(&mut docker_build(&ctx, true))?;
            df.push(time(Command::new(docker_cli()).args(["system", "df"]))?);
            pr.push(time(Command::new(docker_cli()).args(["builder", "prune", "-af"]))?);
        }
        (bk_df, bk_prune) = (Some(median(df)), Some(median(pr)));
    }
    Ok(vec![
        Row {
            limit: None,
            name: "gc-noop-build-with-cap-first".into(),
            rdock: median(first_cap),
            buildkit: None,
            buildah: None,
            per: None,
        },
        Row { limit: None, name: "gc-noop-build-with-cap".into(), rdock: median(capped), buildkit: None, buildah: None, per: None },
        Row { limit: None, name: "gc-du".into(), rdock: median(du), buildkit: bk_df, buildah: None, per: None },
        Row { limit: None, name: "gc-prune-all-5k-files".into(), rdock: median(prune), buildkit: bk_prune, buildah: None, per: None },
    ])
}

fn workload_layer(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let ctx = dir.join("layer");
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN head -c 67108864 /dev/urandom > /big\n")?;
    let mut commit = Vec::new();
    let mut export = Vec::new();
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        let out = dir.join("layer.tar");
        commit.push(time(&mut rdock_build(t, &root, &ctx, &["--output", &format!("type=oci,dest={}", out.display())]))?);
        export.push(time(&mut rdock_build(t, &root, &ctx, &["--output", &format!("type=oci,dest={}", out.display())]))?);
    }
    let [(bk, _), (ba, _)] = others(t, &ctx, runs, false)?;
    Ok(vec![
        Row { limit: None, name: "layer-commit-64MiB".into(), rdock: median(commit), buildkit: bk, buildah: ba, per: None },
        Row { limit: None, name: "oci-export-64MiB".into(), rdock: median(export), buildkit: None, buildah: None, per: None },
    ])
}

/// A docker-registry on a free loopback port, killed on drop.
struct LoopbackRegistry {
    host: String,
    child: std::process::Child,
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Result<LoopbackRegistry> {
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let host = format!("127.0.0.1:{port}");
    // A new directory each time: nothing is deleted before a timed run.
    let data = unique(dir, "registry-data");
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            data.display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(&host).is_ok() {
            return Ok(LoopbackRegistry { host, child });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("docker-registry did not start")
}

/// Push and pull through a loopback registry, beside docker and skopeo; and a 10-step
/// build on an empty store that imports its cache.
fn workload_registry(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let reg = start_registry(dir)?;
    // The image: five layers of 98 MB of random data on busybox.
    let ctx = dir.join("registry-image");
    std::fs::create_dir_all(&ctx)?;
    let steps: String = (0..5).map(|i| format!("RUN head -c 98000000 /dev/urandom > /data{i}\n")).collect();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM busybox\n{steps}"))?;
    let src = fresh_store(t, dir)?;
    let image_tar = dir.join("registry-image.tar");
    run(&mut rdock_build(t, &src, &ctx, &["--output", &format!("type=docker,dest={},name=bigimg:1", image_tar.display())]))?;
    let (mut push, mut pull, mut dpush, mut dpull, mut skopeo) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        // A store that knows no registry: everything is uploaded.
        let root = fresh_store(t, dir)?;
        run(Command::new(&t.rdock).args(["load", "-i"]).arg(&image_tar).env("RDOCK_ROOT", &root))?;
        let name = format!("{}/rd{n}:1", reg.host);
        run(Command::new(&t.rdock).args(["tag", "bigimg:1", &name]).env("RDOCK_ROOT", &root))?;
        push.push(time(Command::new(&t.rdock).args(["push", "-q", &name]).env("RDOCK_ROOT", &root))?);
        let empty = dir.join("stores").join(format!("pull-{}-{n}", std::process::id()));
        pull.push(time(Command::new(&t.rdock).args(["pull", "-q", &name]).env("RDOCK_ROOT", &empty))?);
        let archive = unique(dir, "skopeo.tar");
        skopeo.push(time(Command::new("skopeo").args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            &format!("oci-archive:{}", archive.display()),
        ]))?);
        drop_output(&[&archive]);
        if t.docker {
            // A registry of its own: docker remembers which registries had its layers and
            // would mount them instead of uploading.
            let dreg = start_registry(&dir.join(format!("docker-registry-{n}")))?;
            run(Command::new(docker_cli()).args(["load", "-q", "-i"]).arg(&image_tar))?;
            let dname = format!("{}/dk{n}:1", dreg.host);
            run(Command::new(docker_cli()).args(["tag", "bigimg:1", &dname]))?;
            dpush.push(time(Command::new(docker_cli()).args(["push", "-q", &dname]))?);
            run(Command::new(docker_cli()).args(["rmi", "-f", &dname, "bigimg:1"]))?;
            dpull.push(time(Command::new(docker_cli()).args(["pull", "-q", &dname]))?);
            run(Command::new(docker_cli()).args(["rmi", "-f", &dname]))?;
        }
    }
    // Ten steps, their cache exported from one store and imported into empty ones.
    let ctx10 = dir.join("registry-cache10");
    std::fs::create_dir_all(&ctx10)?;
    let base = format!("{}/busybox:1", reg.host);
    run(Command::new(&t.rdock).args(["tag", "busybox:latest", &base]).env("RDOCK_ROOT", &src))?;
    run(Command::new(&t.rdock).args(["push", "-q", &base]).env("RDOCK_ROOT", &src))?;
    let steps10: String = (0..10).map(|i| format!("RUN head -c 100000 /dev/urandom > /f{i} && sleep 0.2\n")).collect();
    std::fs::write(ctx10.join("Dockerfile"), format!("FROM {base}\n{steps10}"))?;
    let cache = format!("type=registry,ref={}/cache10:1,mode=max", reg.host);
    run(&mut rdock_build(t, &src, &ctx10, &["--export-cache", &cache]))?;
    let mut hit = Vec::new();
    for n in 0..runs {
        let empty = dir.join("stores").join(format!("cache-{}-{n}", std::process::id()));
        let out = dir.join("cache10.tar");
        hit.push(time(&mut rdock_build(
            t,
            &empty,
            &ctx10,
            &["--import-cache", &cache, "--output", &format!("type=oci,dest={}", out.display())],
        ))?);
    }
    let opt = |v: Vec<Duration>| if v.is_empty() { None } else { Some(median(v)) };
    Ok(vec![
        Row {
            limit: None,
            name: "push-490MB (docker push; skopeo: -)".into(),
            rdock: median(push),
            buildkit: opt(dpush),
            buildah: None,
            per: None,
        },
        Row {
            limit: None,
            name: "pull-490MB (docker pull; skopeo copy to oci-archive)".into(),
            rdock: median(pull),
            buildkit: opt(dpull),
            buildah: Some(median(skopeo)),
            per: None,
        },
        Row { limit: None, name: "import-cache-10-steps-empty-store".into(), rdock: median(hit), buildkit: None, buildah: None, per: None },
    ])
}

fn workload_run(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let n = runs.max(20);
    let prepare = |t: &Tools| -> Result<PathBuf> {
        let root = fresh_store(t, dir)?;
        // The first run makes the image's init layer; every later one is what is measured.
        run(&mut rdock_run_true(t, &root))?;
        Ok(root)
    };
    let root = prepare(t)?;
    let base_root = t.baseline.as_deref().map(prepare).transpose()?;
    let mut times = Vec::new();
    let mut base_times = Vec::new();
    for _ in 0..n {
        times.push(time(&mut rdock_run_true(t, &root))?);
        if let (Some(b), Some(r)) = (&t.baseline, &base_root) {
            base_times.push(time(&mut rdock_run_true(b, r))?);
        }
    }
    let docker = if t.docker {
        run(Command::new(docker_cli()).args(["run", "--rm", "busybox", "true"]))?;
        let mut d = Vec::new();
        for _ in 0..n {
            d.push(time(Command::new(docker_cli()).args(["run", "--rm", "busybox", "true"]))?);
        }
        Some(median(d))
    } else {
        None
    };
    let mut rows = vec![Row { limit: None, name: "run-rm-true".into(), rdock: median(times), buildkit: docker, buildah: None, per: None }];
    if !base_times.is_empty() {
        rows.push(Row {
            limit: None,
            name: "run-rm-true (baseline)".into(),
            rdock: median(base_times),
            buildkit: docker,
            buildah: None,
            per: None,
        });
    }
    Ok(rows)
}

fn workload_network(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let one = dir.join("net-one");
    std::fs::create_dir_all(&one)?;
    std::fs::write(one.join("Dockerfile"), "FROM busybox\nRUN true\n")?;
    let thirty = dir.join("net-thirty");
    std::fs::create_dir_all(&thirty)?;
    let df: String = std::iter::once("FROM busybox\n".to_string()).chain((1..=30).map(|i| format!("RUN echo {i} > /f{i}\n"))).collect();
    std::fs::write(thirty.join("Dockerfile"), df)?;
    let mut rows = Vec::new();
    for (name, ctx, per) in [("net-run1", &one, (1, "step")), ("net-run30", &thirty, (30, "step"))] {
        let (mut default, mut none) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let root = fresh_store(t, dir)?;
            default.push(time(&mut rdock_build(t, &root, ctx, &["--output", "type=image,name=bench:net"]))?);
            let root = fresh_store(t, dir)?;
            none.push(time(&mut rdock_build(
                t,
                &root,
                ctx,
                &["--opt", "force-network-mode=none", "--output", "type=image,name=bench:net"],
            ))?);
        }
        let [(bk, _), (ba, _)] = others(t, ctx, runs, false)?;
        rows.push(Row {
            limit: None,
            name: format!("{name} (default network)"),
            rdock: median(default),
            buildkit: bk,
            buildah: ba,
            per: Some(per),
        });
        rows.push(Row {
            limit: None,
            name: format!("{name} (--network none)"),
            rdock: median(none),
            buildkit: bk,
            buildah: ba,
            per: Some(per),
        });
    }
    Ok(rows)
}

/// The Debian base, built once by each builder from the official-image-style Dockerfile;
/// for rdock also saved, so each fresh store loads it.
fn debian_base(t: &Tools, dir: &Path) -> Result<PathBuf> {
    let tar = dir.join("debian-base.tar");
    let ctx = dir.join("debian-base");
    std::fs::create_dir_all(&ctx)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-debian-rootfs.sh");
    let out = Command::new("bash").arg(&script).output()?;
    if !out.status.success() {
        bail!("make-debian-rootfs.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::copy(String::from_utf8_lossy(&out.stdout).trim(), ctx.join("rootfs.tar.xz"))?;
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nADD rootfs.tar.xz /\nCMD [\"bash\"]\n")?;
    let root = dir.join("stores").join(format!("debian-{}", std::process::id()));
    run(rdock_build(t, &root, &ctx, &["--output", "type=image,name=rdbench/debian:bookworm"]).env("RDOCK_ROOT", &root))?;
    run(Command::new(&t.rdock).args(["save", "-o"]).arg(&tar).arg("rdbench/debian:bookworm").env("RDOCK_ROOT", &root))?;
    if t.docker {
        run(Command::new(docker_cli()).env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", "rdbench/debian:bookworm"]).arg(&ctx))?;
    }
    if t.buildah {
        run(Command::new("buildah").args(["pull", "-q"]).arg(format!("docker-archive:{}", tar.display())))?;
    }
    Ok(tar)
}

/// Writes back what the cold build left dirty (hundreds of MB of packages), untimed, before
/// a warm build: as the kernel does within seconds of any real edit. Otherwise whichever
/// builder unmounts something first pays for it (on this gVisor machine an unmount syncs,
/// which took 190 ms of rdock's first warm build after a cold one).
fn settle() -> Result<()> {
    run(&mut Command::new("sync"))
}

fn workload_realworld(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let base = debian_base(t, dir)?;
    let ctx = dir.join("realworld");
    std::fs::create_dir_all(ctx.join("app"))?;
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM rdbench/debian:bookworm\n\
         ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1\n\
         RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*\n\
         RUN python3 -m venv /venv\n\
         COPY requirements.txt /app/\n\
         RUN /venv/bin/pip install -r /app/requirements.txt\n\
         COPY app/ /app/\n\
         CMD [\"/venv/bin/python\", \"/app/main.py\"]\n",
    )?;
    std::fs::write(ctx.join("requirements.txt"), "six==1.16.0\nidna==3.7\n")?;
    let edit = |n: usize| std::fs::write(ctx.join("app/main.py"), format!("print('edit {n}')\n"));
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..runs {
        edit(i)?;
        let root = dir.join("stores").join(format!("real-{}-{i}", std::process::id()));
        run(Command::new(&t.rdock).args(["load", "-i"]).arg(&base).env("RDOCK_ROOT", &root))?;
        cold.push(time(&mut rdock_build(t, &root, &ctx, &["--output", "type=image,name=bench:real"]))?);
        edit(1000 + i)?;
        settle()?;
        warm.push(time(&mut rdock_build(t, &root, &ctx, &["--output", "type=image,name=bench:real"]))?);
    }
    let other = |build: &dyn Fn(bool) -> Command| -> Result<(Duration, Duration)> {
        let (mut c, mut w) = (Vec::new(), Vec::new());
        for i in 0..runs {
            edit(2000 + i)?;
            c.push(time(&mut build(true))?);
            edit(3000 + i)?;
            settle()?;
            w.push(time(&mut build(false))?);
        }
        Ok((median(c), median(w)))
    };
    let bk = if t.docker { Some(other(&|nc| docker_build(&ctx, nc))?) } else { None };
    let ba = if t.buildah { Some(other(&|nc| buildah_build(&ctx, nc))?) } else { None };
    Ok(vec![
        Row {
            limit: None,
            name: "realworld-cold".into(),
            rdock: median(cold),
            buildkit: bk.map(|b| b.0),
            buildah: ba.map(|b| b.0),
            per: None,
        },
        Row {
            limit: None,
            name: "realworld-one-file-changed".into(),
            rdock: median(warm),
            buildkit: bk.map(|b| b.1),
            buildah: ba.map(|b| b.1),
            per: None,
        },
    ])
}

/// A shell command, for the host-side limits.
fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

/// Removes single output files once timed; never a store or a tree of many files.
fn drop_output(files: &[&Path]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// A path for one run's output that was never used before: nothing is deleted before a
/// timed run (see [`fresh_store`]).
fn unique(dir: &Path, what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join("stores").join(format!("{what}-{}-{n}", std::process::id()))
}

/// What writes real data: a RUN writing 512 MB, exporting that image to a gzip docker
/// archive, COPY of the 5,000-file context, and `cp -a /usr/share` on Debian. Each rdock
/// figure is a cold build into a fresh store with an image output (so its layers are
/// made), beside BuildKit's and Buildah's cold builds and the same work done by plain
/// tools on the host.
fn workload_disk(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let mut rows = disk_write512(t, dir, runs)?;
    rows.push(disk_copy5k(t, dir, runs)?);
    rows.push(disk_debian(t, dir, runs)?);
    Ok(rows)
}

fn disk_write512(t: &Tools, dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let ctx = dir.join("write512");
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN head -c 536870912 /dev/urandom > /big\n")?;
    let (mut build, mut export, mut limit) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        run(&mut Command::new("sync"))?;
        build.push(time(&mut rdock_build(t, &root, &ctx, &["--output", "type=image,name=bench:w512"]))?);
        let dest = unique(dir, "w512.tar");
        let out = format!("type=docker,dest={},name=bench:w512", dest.display());
        export.push(time(&mut rdock_build(t, &root, &ctx, &["--output", &out]))?);
        // The same program the step runs: the base image's busybox is the host's
        // busybox-static. (coreutils' head reads /dev/urandom in larger blocks and wrote
        // the same 512 MB in 2.3 s where busybox's took 5.4 s: it measured another program.)
        let f = unique(dir, "w512-limit");
        limit.push(time(&mut sh(&format!("busybox head -c 536870912 /dev/urandom > {0} && sha256sum {0} > /dev/null", f.display())))?);
        // Single large files go as soon as they are timed (a handful of inodes, unlike a
        // store): five runs of them filled this machine's disk.
        drop_output(&[&dest, &f]);
    }
    let [(bk, _), (ba, _)] = others(t, &ctx, runs, false)?;
    // docker's own export of the image its BuildKit just built, gzipped on every core.
    let mut save = Vec::new();
    if t.docker {
        for _ in 0..runs {
            let dest = unique(dir, "docker-save.tar.gz");
            save.push(time(&mut sh(&format!("{} save rdock-bench:latest | pigz -1 > {}", docker_cli(), dest.display())))?);
            drop_output(&[&dest]);
        }
    }
    Ok(vec![
        Row { limit: Some(median(limit)), name: "write512-cold".into(), rdock: median(build), buildkit: bk, buildah: ba, per: None },
        Row {
            limit: None,
            name: "write512-export-docker-gzip (BuildKit column: docker save | pigz -1)".into(),
            rdock: median(export),
            buildkit: (!save.is_empty()).then(|| median(save)),
            buildah: None,
            per: None,
        },
    ])
}

fn disk_copy5k(t: &Tools, dir: &Path, runs: usize) -> Result<Row> {
    let ctx = context5k(dir)?;
    let (mut cold, mut limit) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh_store(t, dir)?;
        run(&mut Command::new("sync"))?;
        cold.push(time(&mut rdock_build(t, &root, &ctx, &["--output", "type=image,name=bench:c5k"]))?);
        limit.push(time(Command::new("cp").arg("-a").arg(&ctx).arg(unique(dir, "c5k-limit")))?);
    }
    let [(bk, _), (ba, _)] = others(t, &ctx, runs, false)?;
    Ok(Row { limit: Some(median(limit)), name: "copy5k-cold-image".into(), rdock: median(cold), buildkit: bk, buildah: ba, per: None })
}

fn disk_debian(t: &Tools, dir: &Path, runs: usize) -> Result<Row> {
    let base = debian_base(t, dir)?;
    let ctx = dir.join("debian-cp");
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(ctx.join("Dockerfile"), "FROM rdbench/debian:bookworm\nRUN cp -a /usr/share /copy\n")?;
    let rootfs = dir.join("debian-rootfs");
    if !rootfs.join("usr/share").is_dir() {
        std::fs::create_dir_all(&rootfs)?;
        run(Command::new("tar").arg("-xJf").arg(dir.join("debian-base/rootfs.tar.xz")).arg("-C").arg(&rootfs))?;
    }
    let (mut cold, mut limit) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = unique(dir, "debian-cp");
        run(Command::new(&t.rdock).args(["load", "-i"]).arg(&base).env("RDOCK_ROOT", &root))?;
        run(&mut Command::new("sync"))?;
        cold.push(time(&mut rdock_build(t, &root, &ctx, &["--output", "type=image,name=bench:debcp"]))?);
        limit.push(time(Command::new("cp").arg("-a").arg(rootfs.join("usr/share")).arg(unique(dir, "share-limit")))?);
    }
    let [(bk, _), (ba, _)] = others(t, &ctx, runs, false)?;
    Ok(Row { limit: Some(median(limit)), name: "debian-cp-usr-share".into(), rdock: median(cold), buildkit: bk, buildah: ba, per: None })
}

fn rdock_run_true(t: &Tools, root: &Path) -> Command {
    let mut c = Command::new(&t.rdock);
    c.args(["run", "--rm", "busybox", "true"]).env("RDOCK_ROOT", root);
    c
}

fn fmt(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into())
}

fn ratio(a: Duration, b: Option<Duration>) -> String {
    b.map(|b| format!("{:.1}x", b.as_secs_f64() / a.as_secs_f64())).unwrap_or_else(|| "-".into())
}

/// A workload: whether an argument names it, and what it measures.
type Workload = (fn(&str) -> bool, fn(&Tools, &Path, usize) -> Result<Vec<Row>>);

/// Every workload, in the order they run and print.
const WORKLOADS: &[Workload] = &[
    (|w| w.starts_with("run30"), workload_run30),
    (|w| w == "context" || w.starts_with("context-"), workload_context),
    (|w| w.starts_with("context5k"), workload_context5k),
    (|w| w.starts_with("gc"), workload_gc),
    (|w| w.starts_with("layer") || w.starts_with("oci"), workload_layer),
    (|w| w == "registry", workload_registry),
    (|w| w == "network", workload_network),
    (|w| w == "realworld", workload_realworld),
    (|w| w == "run", workload_run),
    (|w| w == "disk", workload_disk),
    (|w| w == "streams", streams::workload_streams),
];

/// `[--runs N] [--baseline DIR] [WORKLOAD…]`.
fn parse_args(args: &[String]) -> Result<(usize, Vec<String>, Option<PathBuf>)> {
    let mut runs = 5;
    let mut wanted: Vec<String> = Vec::new();
    let mut baseline: Option<PathBuf> = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--runs" {
            runs = args.get(i + 1).context("--runs N")?.parse()?;
            i += 2;
        } else if args[i] == "--baseline" {
            baseline = Some(PathBuf::from(args.get(i + 1).context("--baseline DIR")?));
            i += 2;
        } else {
            wanted.push(args[i].clone());
            i += 1;
        }
    }
    Ok((runs, wanted, baseline))
}

/// The tools compared: this build's rdock, the baseline's, and BuildKit and Buildah when
/// there, each with the busybox base loaded.
fn tools(dir: &Path, baseline: Option<PathBuf>) -> Result<Tools> {
    let bins = bin_dir()?;
    let base_tar = dir.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image.sh");
    run(Command::new("bash").arg(&script).arg(&base_tar))?;
    let docker = available(docker_cli(), &["info"]);
    if docker {
        run(Command::new(docker_cli()).arg("load").arg("-i").arg(&base_tar))?;
    }
    let buildah = available("buildah", &["--version"]);
    if buildah {
        run(Command::new("buildah").args(["pull", "-q"]).arg(format!("docker-archive:{}", base_tar.display())))?;
    }
    let baseline = baseline.map(|d| {
        let (rdock, rdock_build) = (d.join("rdock"), d.join("rdock-build"));
        Box::new(Tools { rdock, rdock_build, baseline: None, docker, buildah, base_tar: base_tar.clone() })
    });
    let t = Tools { rdock: bins.join("rdock"), rdock_build: bins.join("rdock-build"), baseline, docker, buildah, base_tar };
    if !t.rdock_build.exists() {
        bail!("{} not built: run `cargo build --release` first", t.rdock_build.display());
    }
    Ok(t)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (runs, wanted, baseline) = parse_args(&args)?;
    let dir = std::env::temp_dir().join("rdock-bench");
    std::fs::create_dir_all(&dir)?;
    let t = tools(&dir, baseline)?;
    let mut rows = Vec::new();
    for (named, workload) in WORKLOADS {
        if wanted.is_empty() || wanted.iter().any(|w| named(w)) {
            let done = workload(&t, &dir, runs)?;
            // As each workload ends, so that a later failure loses nothing measured.
            for r in &done {
                eprintln!(
                    "{}: rdock {}, BuildKit {}, Buildah {}, limit {}",
                    r.name,
                    fmt(Some(r.rdock)),
                    fmt(r.buildkit),
                    fmt(r.buildah),
                    fmt(r.limit)
                );
            }
            rows.extend(done);
        }
    }
    // Stores are kept: deleting them here would put the next run's stores on just-freed
    // inodes (see fresh_store). Remove DIR/stores when no benchmark follows.
    let kept = Command::new("du").args(["-sh"]).arg(dir.join("stores")).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    eprintln!("stores kept: {} (remove them when no benchmark follows)", kept.unwrap_or_default().trim());
    println!(
        "medians of {runs} runs; BuildKit: {}; Buildah: {}",
        if t.docker { "docker (DOCKER_BUILDKIT=1)" } else { "not running" },
        if t.buildah { "installed" } else { "not installed" }
    );
    println!("| workload | rdock | per unit | BuildKit | rdock vs BuildKit | Buildah | rdock vs Buildah |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let per = r.per.map(|(n, unit)| format!("{:.1} ms/{unit}", r.rdock.as_secs_f64() * 1000.0 / n as f64)).unwrap_or_default();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            fmt(Some(r.rdock)),
            per,
            fmt(r.buildkit),
            ratio(r.rdock, r.buildkit),
            fmt(r.buildah),
            ratio(r.rdock, r.buildah)
        );
    }
    let limited: Vec<&Row> = rows.iter().filter(|r| r.limit.is_some()).collect();
    if !limited.is_empty() {
        println!("\n| workload | rdock | limit (host tools) | rdock / limit |");
        println!("|---|---|---|---|");
        for r in limited {
            let times = r.limit.map(|l| format!("{:.2}x", r.rdock.as_secs_f64() / l.as_secs_f64())).unwrap_or_default();
            println!("| {} | {} | {} | {times} |", r.name, fmt(Some(r.rdock)), fmt(r.limit));
        }
    }
    Ok(())
}
