//! The store under stress: several builds at once on one store, builds killed with
//! SIGKILL at random points, and garbage collection (`du`, `prune`, the configured cap).
//! Every test ends with `rdock fsck`, which hashes every blob and checks every record
//! against what it names.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn fsck(f: &Fixture) {
    let out = f.rdock(&["fsck"]);
    assert_ok(&out);
}

fn spawn_build(f: &Fixture, ctx: &std::path::Path, extra: &[&str]) -> Child {
    let c = format!("context={}", ctx.display());
    let d = format!("dockerfile={}", ctx.display());
    Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--local", &c, "--local", &d, "--progress=rawjson"])
        .args(extra)
        .env("RDOCK_ROOT", &f.root)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn events_of(stderr: &str) -> Vec<serde_json::Value> {
    stderr.lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn names_with(events: &[serde_json::Value], kind: &str) -> Vec<String> {
    events.iter().filter(|e| e["kind"] == kind).map(|e| e["name"].as_str().unwrap_or("").to_string()).collect()
}

fn metadata_digest(p: &std::path::Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v["containerimage.digest"].as_str().unwrap().to_string()
}

#[test]
fn concurrent_builds_on_one_store_run_each_step_once_and_share_results() {
    let f = Fixture::new();
    let ctx = f.ctx(
        "shared",
        &[("Dockerfile", "FROM busybox\nCOPY f /f\nRUN sleep 1 && echo ran > /ran\nRUN cat /f /ran > /both\n"), ("f", "context file\n")],
    );
    // Three builds of one Dockerfile, started together.
    let children: Vec<(Child, std::path::PathBuf)> = (0..3)
        .map(|i| {
            let meta = f.path(&format!("meta{i}.json"));
            let out = format!("type=oci,dest={}", f.path(&format!("out{i}.tar")).display());
            let child = spawn_build(&f, &ctx, &["--output", &out, "--metadata-file", meta.to_str().unwrap()]);
            (child, meta)
        })
        .collect();
    let mut all = Vec::new();
    let mut digests = BTreeSet::new();
    for (child, meta) in children {
        let out = child.wait_with_output().unwrap();
        assert_ok(&out);
        all.extend(events_of(&stderr(&out)));
        digests.insert(metadata_digest(&meta));
    }
    for step in ["COPY f /f", "RUN sleep 1", "RUN cat /f /ran"] {
        let started = names_with(&all, "started").iter().filter(|n| n.contains(step)).count();
        let cached = names_with(&all, "cached").iter().filter(|n| n.contains(step)).count();
        assert_eq!((started, cached), (1, 2), "{step}: ran once, the other two builds took its result");
    }
    assert_eq!(digests.len(), 1, "the three builds wrote one image: {digests:?}");
    let img = read_image(&f.path("out2.tar"));
    assert_eq!(img.layers.len(), 4);
    let both = img.layers[3].iter().find(|e| e.path == "both").expect("/both in the last layer");
    assert_eq!(String::from_utf8_lossy(&both.data), "context file\nran\n");

    // Different Dockerfiles sharing a prefix, while images are tagged and listed.
    let other = f.ctx(
        "other",
        &[("Dockerfile", "FROM busybox\nCOPY f /f\nRUN sleep 1 && echo ran > /ran\nRUN echo other > /other\n"), ("f", "context file\n")],
    );
    let a = spawn_build(&f, &ctx, &["--no-cache"]);
    let b = spawn_build(&f, &other, &["--output", "type=image,name=other:1"]);
    let c = spawn_build(&f, &other, &["--output", "type=image,name=other:2"]);
    for _ in 0..5 {
        assert_ok(&f.rdock(&["tag", "busybox", "bb:again"]));
        assert_ok(&f.rdock(&["images"]));
    }
    let outs: Vec<_> = [a, b, c].into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outs {
        assert_ok(o);
    }
    let ev: Vec<_> = outs[1..].iter().flat_map(|o| events_of(&stderr(o))).collect();
    let other_runs = names_with(&ev, "started").iter().filter(|n| n.contains("echo other")).count();
    assert_eq!(other_runs, 1, "the two builds of `other` ran its new step once");
    let images = String::from_utf8_lossy(&f.rdock(&["images"]).stdout).into_owned();
    assert!(images.contains("other") && images.contains("bb"), "{images}");
    fsck(&f);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    assert!(std::fs::read_dir(f.root.join("locks")).unwrap().flatten().all(|e| e.file_name() == "store"), "key locks are removed");
}

/// Kill points: a small LCG, seeded from the clock unless RDOCK_KILL_SEED is set, so a
/// failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn kill_context(f: &Fixture) -> std::path::PathBuf {
    let mut files: Vec<(String, String)> = (0..300).map(|i| (format!("data/d{}/f{i}", i % 7), format!("{i}\n").repeat(200 + i))).collect();
    files.push((
        "Dockerfile".into(),
        "FROM busybox\n\
         COPY data /data\n\
         RUN seq 1 200000 > /numbers && echo one\n\
         RUN cp -r /data /copy && rm /copy/d1/f1 && echo two\n\
         RUN sleep 0.3 && echo three > /three # kill-test-marker\n\
         COPY data/d2 /more\n\
         RUN echo four > /four\n"
            .into(),
    ));
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    f.ctx("killctx", &refs)
}

fn marker_processes() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains("kill-test-marker")
        {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

fn mounts_under(root: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(root.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

#[test]
fn sigkill_at_random_points_leaves_a_consistent_store_that_reuses_every_completed_step() {
    let seed: u64 = std::env::var("RDOCK_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("kill points from RDOCK_KILL_SEED={seed}");
    let mut rng = Lcg(seed);
    let out_args = |f: &Fixture| {
        vec![
            "--output".to_string(),
            format!("type=oci,dest={},name=killed:1", f.path("out.tar").display()),
            "--output".to_string(),
            "type=image,name=killed:1".to_string(),
        ]
    };
    // A whole build, to know how long one takes.
    let reference = Fixture::new();
    let ctx = kill_context(&reference);
    let t0 = Instant::now();
    let args = out_args(&reference);
    let out = spawn_build(&reference, &ctx, &args.iter().map(String::as_str).collect::<Vec<_>>()).wait_with_output().unwrap();
    assert_ok(&out);
    let whole = t0.elapsed();
    let steps = names_with(&events_of(&stderr(&out)), "completed").len();
    assert_eq!(steps, 6, "{}", stderr(&out));

    // Kill after each step's completion event, and at random times through the build
    // (hashing, inside steps, committing, exporting, tagging).
    let mut points: Vec<(Option<usize>, Duration)> = (1..=steps).map(|n| (Some(n), Duration::ZERO)).collect();
    points.extend((0..6).map(|_| (None, whole.mul_f64(rng.next() * 1.1))));
    for (after_completed, delay) in points {
        let f = Fixture::new();
        let ctx = kill_context(&f);
        let args = out_args(&f);
        let mut child = spawn_build(&f, &ctx, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let stream = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut seen: Vec<serde_json::Value> = Vec::new();
        let deadline = Instant::now() + delay;
        loop {
            let done = match after_completed {
                Some(n) => names_with(&seen, "completed").len() >= n,
                None => Instant::now() >= deadline,
            };
            if done {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(v) => seen.push(v),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        // SIGKILL; whatever the reader got before the kill was printed before it.
        let _ = child.kill();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        seen.extend(rx.try_iter());
        let point = format!("kill point {after_completed:?}/{delay:?} (exit {status:?})");
        let completed: Vec<String> = names_with(&seen, "completed");
        eprintln!("{point}: {} steps had completed", completed.len());

        // The sandboxed step dies with the build.
        let t = Instant::now();
        while !marker_processes().is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(marker_processes().is_empty(), "{point}: a step outlived its build: {:?}", marker_processes());
        // The next command finds a consistent store: fsck opens it (clearing what the dead
        // process held) and verifies every blob and record.
        fsck(&f);
        assert!(mounts_under(&f.root).is_empty(), "{point}: mounts left: {:?}", mounts_under(&f.root));
        assert!(f.leftovers().is_empty(), "{point}: {:?}", f.leftovers());

        let out = spawn_build(&f, &ctx, &args.iter().map(String::as_str).collect::<Vec<_>>()).wait_with_output().unwrap();
        assert_ok(&out);
        let ev = events_of(&stderr(&out));
        let cached = names_with(&ev, "cached");
        for c in &completed {
            assert!(cached.contains(c), "{point}: {c} had completed before the kill but was not reused; cached: {cached:?}");
        }
        let img = read_image(&f.path("out.tar"));
        assert_eq!(img.layers.len(), 7, "{point}");
        let four = img.layers[6].iter().find(|e| e.path == "four").expect("/four");
        assert_eq!(four.data, b"four\n");
        fsck(&f);
        assert!(String::from_utf8_lossy(&f.rdock(&["images"]).stdout).contains("killed"), "{point}: the image is tagged");
    }
}

fn du_json(f: &Fixture) -> serde_json::Value {
    let out = f.rdock(&["du", "--format", "json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind_of<'a>(du: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    du["kinds"].as_array().unwrap().iter().find(|k| k["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {du}"))
}

fn du_sb1(p: &std::path::Path) -> u64 {
    sh("du", &["-sB1", p.to_str().unwrap()]).split_whitespace().next().unwrap().parse().unwrap()
}

fn ran(f: &Fixture, ctx: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let (out, ev) = f.build_events(ctx, extra);
    assert_ok(&out);
    ev.iter().filter(|e| e["kind"] == "started").map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn du_and_prune_free_least_recently_used_first_and_never_a_tagged_image() {
    let f = Fixture::new();
    let a = f.ctx("a", &[("Dockerfile", "FROM busybox\nRUN dd if=/dev/zero of=/a bs=1k count=2048 2>/dev/null\n")]);
    let b = f.ctx(
        "b",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c dd if=/dev/zero of=/c/z bs=1k count=512 2>/dev/null\n\
             RUN dd if=/dev/zero of=/b bs=1k count=3072 2>/dev/null\n",
        )],
    );
    assert_eq!(ran(&f, &a, &[]).len(), 1);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ran(&f, &b, &[]).len(), 2);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(ran(&f, &a, &[]).is_empty(), "a's step is cached, and now used more recently than b's");

    let du = du_json(&f);
    let on_disk = du_sb1(&f.root);
    let total = du["total"].as_u64().unwrap();
    assert!(total <= on_disk + (64 << 10) && total * 10 >= on_disk * 9, "du says {total}, du -sB1 says {on_disk}");
    let snaps = kind_of(&du, "snapshots");
    assert!(snaps["size"].as_u64().unwrap() > 5 << 20, "{du}");
    assert_eq!(snaps["reclaimable"], snaps["size"], "no tagged image holds a build result: {du}");
    let caches = kind_of(&du, "cache-mounts");
    assert!(caches["size"].as_u64().unwrap() >= 512 << 10 && caches["count"] == 1, "{du}");
    let images = kind_of(&du, "images");
    assert!(images["size"].as_u64().unwrap() > 0 && images["reclaimable"] == 0, "busybox's blobs are needed: {du}");
    let text = String::from_utf8_lossy(&f.rdock(&["du"]).stdout).into_owned();
    for k in ["images", "layers", "snapshots", "cache mounts", "total", "RECLAIMABLE"] {
        assert!(text.contains(k), "{text}");
    }

    // Nothing was last used an hour ago.
    let out = f.rdock(&["prune", "--filter", "until=1h"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0B (0 items)"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(f.rdock(&["prune", "--filter", "since=1h"]).status.code(), Some(2), "unknown filters are usage errors");
    assert_eq!(f.rdock(&["prune", "--keep-storage", "lots"]).status.code(), Some(2));

    // Room for a's result but not b's: b's go (used least recently), a's stay.
    let keep = total - (3 << 20);
    let out = f.rdock(&["prune", "--keep-storage", &keep.to_string(), "-v"]);
    assert_ok(&out);
    let after = du_json(&f)["total"].as_u64().unwrap();
    assert!(after <= keep, "{after} > {keep}: {}", String::from_utf8_lossy(&out.stdout));
    assert!(ran(&f, &a, &[]).is_empty(), "a's result was kept");
    let rerun = ran(&f, &b, &[]);
    assert!(rerun.iter().any(|n| n.contains("count=3072")), "b's result was pruned: {rerun:?}");
    fsck(&f);

    // A tagged image survives `prune --all`: it saves, and serves as a base again.
    let out = f.build(&a, &["--output", "type=image,name=kept:1"]);
    assert_ok(&out);
    let out = f.rdock(&["prune", "--all"]);
    assert_ok(&out);
    let du = du_json(&f);
    assert_eq!(kind_of(&du, "snapshots")["count"], 0, "{du}");
    assert_eq!(kind_of(&du, "cache-mounts")["count"], 0, "{du}");
    assert_eq!(du["reclaimable"], 0, "{du}");
    fsck(&f);
    let saved = f.path("kept.tar");
    assert_ok(&f.rdock(&["save", "-o", saved.to_str().unwrap(), "kept:1"]));
    let img = read_image(&f.path("kept.tar"));
    assert!(img.layers[1].iter().any(|e| e.path == "a" && e.data.len() == 2 << 20));
    let c = f.ctx("c", &[("Dockerfile", "FROM kept:1\nRUN test -s /a && echo ok > /ok\n")]);
    assert_eq!(ran(&f, &c, &[]).len(), 1);
    fsck(&f);
}

#[test]
fn the_configured_cap_holds_after_every_build_and_prune_waits_for_running_builds() {
    let f = Fixture::new();
    let base = du_json(&f)["total"].as_u64().unwrap();
    let cap = base + (3 << 20);
    let step = |name: &str, kb: u32| {
        let df = format!("FROM busybox\nCOPY data /data\nRUN dd if=/dev/zero of=/{name} bs=1k count={kb} 2>/dev/null\n");
        f.ctx(name, &[("Dockerfile", &df), ("data", name)])
    };
    let builds = [step("c", 2048), step("d", 2048), step("e", 1024)];
    // Out of the stat cache's racy window, so that unchanged files are never read again.
    std::thread::sleep(Duration::from_millis(1100));
    for ctx in &builds {
        let c = format!("context={}", ctx.display());
        let out = Command::new(RDOCK_BUILD)
            .args(["--frontend", "dockerfile", "--local", &c, "--local", &format!("dockerfile={}", ctx.display())])
            .env("RDOCK_ROOT", &f.root)
            .env("RDOCK_GC_KEEP_STORAGE", cap.to_string())
            .output()
            .unwrap();
        assert_ok(&out);
        let total = du_json(&f)["total"].as_u64().unwrap();
        assert!(total <= cap, "after {}: {total} > cap {cap}\n{}", ctx.display(), stderr(&out));
        assert!(du_sb1(&f.root) <= cap + (64 << 10), "du -sB1 {} > cap {cap}", du_sb1(&f.root));
    }
    // Collecting leaves the stat cache alone: a capped no-op build reads no file.
    let c = format!("context={}", builds[2].display());
    let out = Command::new(RDOCK_BUILD)
        .args(["--frontend", "dockerfile", "--local", &c, "--progress=rawjson"])
        .env("RDOCK_ROOT", &f.root)
        .env("RDOCK_GC_KEEP_STORAGE", cap.to_string())
        .output()
        .unwrap();
    assert_ok(&out);
    let hashed = events_of(&stderr(&out)).into_iter().find(|e| e["kind"] == "context-hashed").expect("context-hashed event");
    assert_eq!(hashed["hash_stats"]["files_read"], 0, "{hashed}");
    assert!(ran(&f, &builds[2], &[]).is_empty(), "the newest result is kept");
    assert!(!ran(&f, &builds[0], &[]).is_empty(), "the oldest went first");

    // The cap from the config file, when the variable is unset.
    std::fs::write(f.root.join("config.toml"), "[gc]\nkeep-storage = \"1k\"\n").unwrap();
    let out = f.build(&builds[1], &[]);
    assert_ok(&out);
    let du = du_json(&f);
    assert_eq!(kind_of(&du, "snapshots")["count"], 0, "a 1k cap leaves no build result: {du}");
    assert!(stderr(&out).contains("over its cap"), "a cap tagged images exceed is reported: {}", stderr(&out));
    std::fs::remove_file(f.root.join("config.toml")).unwrap();

    // `prune --all` while a build runs waits for it, and removes nothing it needs.
    let slow = f.ctx("slow", &[("Dockerfile", "FROM busybox\nRUN echo first > /first\nRUN sleep 1.5 && cat /first > /second\n")]);
    let mut child = spawn_build(&f, &slow, &["--output", "type=image,name=slow:1"]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("\"started\"") {
            break;
        }
    }
    let t = Instant::now();
    let pruned = f.rdock(&["prune", "--all"]);
    let waited = t.elapsed();
    assert_ok(&pruned);
    assert!(stderr(&pruned).contains("waiting for running builds"), "{}", stderr(&pruned));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
    assert!(waited >= Duration::from_millis(1000), "prune returned after {waited:?}, before the build finished");
    fsck(&f);
    let saved = f.path("slow.tar");
    assert_ok(&f.rdock(&["save", "-o", saved.to_str().unwrap(), "slow:1"]));
    let img = read_image(&saved);
    assert!(img.layers.iter().flatten().any(|e| e.path == "second" && e.data == b"first\n"));
}

/// Turns this rdock's store into what the rdock before store version 2 left: every layer a
/// build made as a gzip blob (named so in the `layers` table and in the image's manifest), no tar
/// blobs, no `compressed` table, `user_version` 1.
fn make_version_1_store(f: &Fixture, image: &str) -> Vec<String> {
    use std::io::Write;
    let conn = rusqlite::Connection::open(f.root.join("metadata.db")).unwrap();
    let blobs = f.root.join("blobs/sha256");
    let rows: Vec<(i64, String)> = {
        // The layers builds made (`op-` snapshots); loaded images kept their blobs as they came.
        let mut s = conn
            .prepare(
                "SELECT l.snapshot, l.blob FROM layers l JOIN snapshots s ON s.id = l.snapshot \
                 WHERE l.media_type = 'application/vnd.oci.image.layer.v1.tar' AND s.key LIKE 'op-%'",
            )
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    assert!(!rows.is_empty(), "the build made no layer");
    // Since store version 2 a built layer's tar is made from its snapshot when read: the
    // tars come from a save.
    let saved = f.path("version-1-source.tar");
    assert_ok(&f.rdock(&["save", "--format", "oci", "-o", saved.to_str().unwrap(), image]));
    let archive = read_tar_files(&saved);
    let mut renamed = Vec::new();
    for (snapshot, tar) in &rows {
        let bytes = &archive[&format!("blobs/sha256/{}", tar.trim_start_matches("sha256:"))];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        gz.write_all(bytes).unwrap();
        let gz = gz.finish().unwrap();
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&gz)));
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), &gz).unwrap();
        let _ = std::fs::remove_file(blobs.join(tar.trim_start_matches("sha256:")));
        conn.execute(
            "UPDATE layers SET blob = ?1, size = ?2, media_type = 'application/vnd.oci.image.layer.v1.tar+gzip' WHERE snapshot = ?3",
            rusqlite::params![digest, gz.len() as i64, snapshot],
        )
        .unwrap();
        renamed.push((tar.clone(), digest, gz.len()));
    }
    let manifest: String = conn.query_row("SELECT manifest FROM images WHERE name = ?1", [image], |r| r.get(0)).unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(manifest.trim_start_matches("sha256:"))).unwrap()).unwrap();
    for l in doc["layers"].as_array_mut().unwrap() {
        if let Some((_, gz, size)) = renamed.iter().find(|(tar, _, _)| l["digest"] == tar.as_str()) {
            l["digest"] = serde_json::json!(gz);
            l["size"] = serde_json::json!(size);
            l["mediaType"] = serde_json::json!("application/vnd.oci.image.layer.v1.tar+gzip");
        }
    }
    let bytes = serde_json::to_vec(&doc).unwrap();
    let new_manifest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
    std::fs::write(blobs.join(new_manifest.trim_start_matches("sha256:")), &bytes).unwrap();
    conn.execute("UPDATE images SET manifest = ?1 WHERE name = ?2", rusqlite::params![new_manifest, image]).unwrap();
    conn.execute_batch("DROP TABLE compressed; DROP TABLE untagged; PRAGMA user_version = 1;").unwrap();
    renamed.into_iter().map(|(_, gz, _)| gz).collect()
}

/// A store from before layers were kept as tars (gzip layer blobs, schema version 1)
/// upgrades when opened and keeps working: builds on its images hit its cache, exports
/// ship its gzip layers byte for byte, and `fsck` finds nothing wrong.
#[test]
fn a_store_with_gzip_layers_from_before_version_2_keeps_working() {
    let f = Fixture::new();
    let ctx = f.ctx("old", &[("Dockerfile", "FROM busybox\nRUN echo old > /old\n")]);
    assert_ok(&f.build(&ctx, &["--output", "type=image,name=old:1"]));
    let gz = make_version_1_store(&f, "docker.io/library/old:1");
    let ctx2 = f.ctx("new", &[("Dockerfile", "FROM busybox\nRUN echo old > /old\nRUN echo new > /new\n")]);
    let out = f.path("new.tar");
    let built = f.build(&ctx2, &["--output", &format!("type=oci,dest={}", out.display())]);
    assert_ok(&built);
    assert!(stderr(&built).contains("CACHED"), "the old store's step is a hit: {}", stderr(&built));
    let img = read_image(&out);
    for d in &gz {
        assert!(img.layer_digests.contains(d), "the old gzip layer {d} ships as it is: {:?}", img.layer_digests);
    }
    assert!(img.manifest["layers"][2]["mediaType"].as_str().unwrap().ends_with("+gzip"), "{}", img.manifest);
    assert_eq!(img.files_in_layers()["new"], b"new\n");
    let conn = rusqlite::Connection::open(f.root.join("metadata.db")).unwrap();
    assert_eq!(conn.query_row::<u32, _, _>("PRAGMA user_version", [], |r| r.get(0)).unwrap(), rdock_snapshotter::schema::VERSION);
    fsck(&f);
}

/// Issue 16: a step's layer is hashed when the step commits, not written out, so a build
/// writes its files once. Its tar is made from the snapshot whenever something reads it,
/// byte for byte what was hashed; a snapshot changed since is an error naming it, never a
/// wrong layer; `prune --all` writes the tar out before the snapshot goes, and the image
/// keeps its layer.
#[test]
fn a_built_layer_is_kept_once_and_made_from_its_snapshot_when_read() {
    let f = Fixture::new();
    let ctx = f.ctx("once", &[("Dockerfile", "FROM busybox\nRUN head -c 2000000 /dev/urandom > /noise && echo hi > /hi\n")]);
    assert_ok(&f.build(&ctx, &["--output", "type=image,name=once:1"]));
    let blob_file = |d: &str| f.root.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let save = |name: &str, to: &str| f.rdock(&["save", "--format", "oci", "-o", f.path(to).to_str().unwrap(), name]);
    assert_ok(&save("once:1", "a.tar"));
    let img = read_image(&f.path("a.tar"));
    let layer = img.layer_digests[1].clone();
    assert_eq!(img.config["rootfs"]["diff_ids"][1], layer.as_str(), "a stored layer is its diff");
    let bytes = &img.files[&format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"))];
    assert_eq!(
        format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))),
        layer,
        "the tar made again hashes as recorded"
    );
    assert_eq!(img.files_in_layers()["hi"], b"hi\n");
    assert_eq!(img.files_in_layers()["noise"].len(), 2_000_000);
    assert!(!blob_file(&layer).exists(), "the build or the save wrote the layer's tar into the store");
    fsck(&f);
    // An image built on it unpacks it from the snapshot and names it with its true size.
    let child = f.ctx("child", &[("Dockerfile", "FROM once:1\nRUN echo child > /child\n")]);
    assert_ok(&f.build(&child, &["--output", "type=image,name=child:1"]));
    assert_ok(&save("child:1", "child.tar"));
    let kid = read_image(&f.path("child.tar"));
    assert_eq!(kid.layer_digests[..2], img.layer_digests[..]);
    assert_eq!(kid.manifest["layers"][1]["size"], img.manifest["layers"][1]["size"]);
    assert_eq!(kid.files_in_layers()["child"], b"child\n");

    // prune --all removes every snapshot: the image's layer is written out first.
    assert_ok(&f.rdock(&["prune", "--all"]));
    assert_eq!(kind_of(&du_json(&f), "snapshots")["count"], 0);
    assert!(blob_file(&layer).exists(), "prune removed the only copy of an image's layer");
    assert_ok(&save("once:1", "b.tar"));
    assert_eq!(read_image(&f.path("b.tar")).layer_digests, img.layer_digests);
    fsck(&f);

    // A snapshot changed behind rdock's back does not pass for the layer it was.
    let ctx = f.ctx("changed", &[("Dockerfile", "FROM busybox\nRUN echo before > /changed\n")]);
    assert_ok(&f.build(&ctx, &["--output", "type=image,name=changed:1"]));
    let conn = rusqlite::Connection::open(f.root.join("metadata.db")).unwrap();
    let id: i64 = conn
        .query_row(
            "SELECT snapshot FROM layers WHERE media_type = 'application/vnd.oci.image.layer.v1.tar' ORDER BY snapshot DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    std::fs::write(f.root.join(format!("snapshots/{id}/fs/changed")), "after!\n").unwrap();
    let out = save("changed:1", "c.tar");
    assert!(!out.status.success(), "a changed snapshot was saved as its layer");
    assert!(stderr(&out).contains("the snapshot changed"), "{}", stderr(&out));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    fsck(&f);
    assert_ok(&save("once:1", "d.tar"));
}
