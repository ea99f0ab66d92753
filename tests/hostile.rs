//! Hostile input, end to end: crafted layers and images, hostile Dockerfiles and probes run
//! inside steps and containers. Every target is a canary directory made by the test in a
//! temporary directory, never a real system file; each test checks the canary is as it was.
//!
//! What these attacks did before issue 13's fixes: a layer's `esc -> HOST` then
//! `esc/.wh.NAME` replaced a host file with a device node; mount targets and /etc stubs
//! through an image's symlinks created host files; a step read a host block device through
//! `mknod`, opened /proc/sys knobs for writing and used `keyctl`, `add_key` and
//! `unshare(CLONE_NEWUSER)`; `--init`'s pid 1 held every capability.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use support::*;

/// A host directory with a canary file, and what it held (to compare after an attack).
struct Canary {
    dir: PathBuf,
}

impl Canary {
    fn new(f: &Fixture, name: &str) -> Canary {
        let dir = f.path(name);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("canary"), "host").unwrap();
        Canary { dir }
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// The directory holds exactly `canary` (a regular file saying "host") and an empty,
    /// non-opaque `sub`.
    fn assert_untouched(&self, attack: &str) {
        let mut names: Vec<String> = walk(&self.dir).iter().map(|p| p.strip_prefix(&self.dir).unwrap().display().to_string()).collect();
        names.sort();
        assert_eq!(names, ["canary", "sub"], "{attack}: the host directory {} changed", self.dir.display());
        let md = std::fs::symlink_metadata(self.dir.join("canary")).unwrap();
        assert!(md.is_file(), "{attack}: the canary was replaced");
        assert_eq!(std::fs::read_to_string(self.dir.join("canary")).unwrap(), "host", "{attack}");
        let sub = std::ffi::CString::new(self.dir.join("sub").to_str().unwrap()).unwrap();
        let mut buf = [0u8; 4];
        // SAFETY: NUL-terminated strings and a buffer of its stated length.
        let n = unsafe { libc::lgetxattr(sub.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n < 0, "{attack}: a host directory was made opaque");
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        v.push(e.path());
        if e.file_type().unwrap().is_dir() {
            v.extend(walk(&e.path()));
        }
    }
    v
}

/// A tar layer from (path, entry) pairs, written raw so any name and link target goes in.
enum E<'a> {
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)))
}

/// A docker-archive of busybox with `extra` appended as one more layer, tagged `name`.
fn image_with_layer(f: &Fixture, name: &str, extra: &[u8]) -> PathBuf {
    image_with_blob(f, name, extra, &sha256(extra))
}

/// The same with a layer blob (compressed, say) whose uncompressed digest is `diff_id`.
fn image_with_blob(f: &Fixture, name: &str, extra: &[u8], diff_id: &str) -> PathBuf {
    image_with_blobs(f, name, &[(extra, diff_id.to_string())])
}

/// A docker-archive of busybox with layer blobs (and their diff IDs) appended.
fn image_with_blobs(f: &Fixture, name: &str, extra: &[(&[u8], String)]) -> PathBuf {
    let files = read_tar_files(busybox_tar());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let m = &manifest[0];
    let mut config: Value = serde_json::from_slice(&files[m["Config"].as_str().unwrap()]).unwrap();
    for (_, diff_id) in extra {
        config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(json!(diff_id));
        if let Some(h) = config["history"].as_array_mut() {
            h.push(json!({"created_by": "hostile layer"}));
        }
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", sha256(&config_bytes).trim_start_matches("sha256:"));
    let mut layers: Vec<Value> = m["Layers"].as_array().unwrap().clone();
    layers.extend((0..extra.len()).map(|i| json!(format!("hostile{i}/layer.tar"))));
    let new_manifest = json!([{ "Config": config_name, "RepoTags": [name], "Layers": layers }]);
    let path = f.path(&format!("{}.tar", name.replace([':', '/'], "-")));
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
    };
    for l in m["Layers"].as_array().unwrap() {
        let l = l.as_str().unwrap();
        add(l, &files[l]);
    }
    for (i, (blob, _)) in extra.iter().enumerate() {
        add(&format!("hostile{i}/layer.tar"), blob);
    }
    add(&config_name, &config_bytes);
    add("manifest.json", &serde_json::to_vec(&new_manifest).unwrap());
    b.finish().unwrap();
    path
}

/// Issue 13: a layer's symlink to a host directory followed by a whiteout, a nested
/// whiteout or an opaque marker beneath it, loaded with `rdock load`, built `FROM` and run.
#[test]
fn layers_with_links_to_the_host_never_touch_it() {
    let f = Fixture::new();
    let canary = Canary::new(&f, "host");
    let h = canary.path();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("whiteout", layer(&[E::Symlink("esc", h), E::File("esc/.wh.canary", "")])),
        ("nested whiteout", layer(&[E::Symlink("esc", h), E::File("esc/a/b/.wh.x", "")])),
        ("opaque", layer(&[E::Symlink("esc", h), E::File("esc/sub/.wh..wh..opq", "")])),
        ("file through a link", layer(&[E::Symlink("esc", h), E::File("esc/canary", "pwned"), E::File("esc/new", "pwned")])),
        ("relative link", layer(&[E::Symlink("esc", "../../../../../../../../.."), E::File(&format!("esc{h}/.wh.canary"), "")])),
    ];
    for (i, (attack, l)) in attacks.iter().enumerate() {
        let name = format!("hostile{i}:latest");
        let tar = image_with_layer(&f, &name, l);
        // Load may refuse the layer or apply it inside the store; either way the host stands.
        let loaded = f.rdock(&["load", "-i", tar.to_str().unwrap()]);
        canary.assert_untouched(attack);
        if loaded.status.success() {
            let ctx = f.ctx(&format!("ctx{i}"), &[("Dockerfile", &format!("FROM {name}\nRUN ls / >/dev/null\n"))]);
            let _ = f.build(&ctx, &[]);
            let _ = f.rdock(&["run", "--rm", &name, "true"]);
            canary.assert_untouched(attack);
        }
    }
    assert!(f.leftovers().is_empty(), "leftovers: {:?}", f.leftovers());
    assert_ok(&f.rdock(&["fsck"]));
}

/// Issue 13: mount targets, /etc stubs and bind targets through an image's symlinks to a
/// host directory are created inside the root, for build steps and `rdock run -v`.
#[test]
fn mount_targets_through_image_links_stay_inside_the_root() {
    let f = Fixture::new();
    let canary = Canary::new(&f, "host");
    let h = canary.path();
    // An image whose /esc points at the host directory, and one whose /etc does.
    let tar = image_with_layer(&f, "escimg:latest", &layer(&[E::Symlink("esc", h)]));
    assert_ok(&f.rdock(&["load", "-i", tar.to_str().unwrap()]));
    let tar = image_with_layer(&f, "etcimg:latest", &layer(&[E::File(".wh.etc", ""), E::Symlink("etc", h)]));
    assert_ok(&f.rdock(&["load", "-i", tar.to_str().unwrap()]));
    let secret = f.path("secret.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    let ctx = f.ctx("ctx", &[("Dockerfile", "FROM escimg\nRUN --mount=type=tmpfs,target=/esc/t --mount=type=bind,target=/esc/b --mount=type=secret,id=s,target=/esc/s/x --mount=type=cache,target=/esc/c ls /esc/t /esc/b /esc/s/x /esc/c >/dev/null\n"), ("file", "x")]);
    let o = f.build(&ctx, &["--secret", &format!("id=s,src={}", secret.display())]);
    canary.assert_untouched("RUN --mount targets through /esc");
    assert_ok(&o);
    let ctx = f.ctx("ctx2", &[("Dockerfile", "FROM etcimg\nRUN cat /etc/hosts >/dev/null\n")]);
    let o = f.build(&ctx, &[]);
    canary.assert_untouched("/etc stubs through /etc");
    assert_ok(&o);
    let src = f.path("bindsrc");
    std::fs::create_dir_all(&src).unwrap();
    let o = f.rdock(&["run", "--rm", "-v", &format!("{}:/esc/x", src.display()), "escimg", "ls", "/esc/x"]);
    canary.assert_untouched("rdock run -v SRC:/esc/x");
    assert_ok(&o);
    let o = f.rdock(&["run", "--rm", "etcimg", "cat", "/etc/hostname"]);
    canary.assert_untouched("rdock run with /etc a link");
    assert_ok(&o);
    assert!(f.leftovers().is_empty(), "leftovers: {:?}", f.leftovers());
}

/// Builds the syscall probe for the busybox image (static, from tests/fixtures/probes).
fn probe(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/probes/syscalls.c");
    let bin = dir.join("probe");
    sh("cc", &["-static", "-O2", "-o", bin.to_str().unwrap(), src.to_str().unwrap()]);
    bin
}

/// A probe's `NAME VALUE` lines.
fn probe_results(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect()
}

/// The probe's view: what Docker's default profile denies is denied (EPERM; clone3
/// ENOSYS) and ordinary calls work.
fn assert_profile(results: &BTreeMap<String, String>, what: &str) {
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "unshare_user",
        "unshare_mount",
        "clone_newuser",
        "bpf",
        "perf_event_open",
        "kexec_load",
        "open_by_handle_at",
        "init_module",
        "mount",
        "socket_vsock",
    ] {
        assert_eq!(results.get(name).map(String::as_str), Some("errno=1"), "{what}: {name} not refused with EPERM: {results:?}");
    }
    assert_eq!(results.get("clone3").map(String::as_str), Some("errno=38"), "{what}: clone3");
    assert_eq!(results.get("getpid").map(String::as_str), Some("ok"), "{what}");
    assert_eq!(results.get("socket_inet").map(String::as_str), Some("ok"), "{what}");
}

/// What a step's shell sees of devices, /proc and /sys.
const SANDBOX_PROBE: &str = r#"
set -u
r() { if (eval "$2") >/dev/null 2>&1; then echo "$1 yes"; else echo "$1 no"; fi; }
r mknod_loop_read 'mknod /tmp/l b 7 0 && head -c 1 /tmp/l'
r mknod_null_in_dev 'mknod /dev/n2 c 1 3 && echo x > /dev/n2'
r dev_null_works 'echo x > /dev/null && head -c 1 /dev/zero | wc -c | grep -q 1'
r core_pattern_rw 'exec 3<>/proc/sys/kernel/core_pattern'
r sysrq_rw 'exec 3<>/proc/sysrq-trigger'
r kcore_read 'test -n "$(head -c 1 /proc/kcore)"'
r keys_read 'test -n "$(cat /proc/keys)"'
r timer_list_read 'test -n "$(head -c 1 /proc/timer_list)"'
r firmware_listed 'test -n "$(ls /sys/firmware)"'
echo "seccomp $(grep '^Seccomp:' /proc/self/status | tr -d '\t' | cut -d: -f2)"
echo "devs $(ls /dev | tr '\n' ' ')"
echo "cgroup $(cat /proc/self/cgroup | tr '\n' ' ')"
"#;

fn assert_sandboxed(r: &BTreeMap<String, String>, what: &str) {
    for k in [
        "mknod_loop_read",
        "mknod_null_in_dev",
        "core_pattern_rw",
        "sysrq_rw",
        "kcore_read",
        "keys_read",
        "timer_list_read",
        "firmware_listed",
    ] {
        assert_eq!(r.get(k).map(String::as_str), Some("no"), "{what}: {k}: {r:?}");
    }
    assert_eq!(r.get("dev_null_works").map(String::as_str), Some("yes"), "{what}: {r:?}");
    assert_eq!(r.get("seccomp").map(String::as_str), Some("2"), "{what}: no seccomp filter: {r:?}");
    let devs: Vec<&str> = r["devs"].split_whitespace().collect();
    for d in &devs {
        assert!(
            ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero", "n2"].contains(d),
            "{what}: /dev has {d}"
        );
    }
}

/// Issue 13: a step and a container get Docker's default sandbox: no device beyond the
/// default set opens (even after mknod), /proc's secrets are masked and its knobs
/// read-only, and Docker's seccomp profile refuses keyctl, user namespaces and the rest.
/// `--security=insecure` (with its grant) lifts it, as BuildKit does.
#[test]
fn steps_and_containers_get_dockers_default_sandbox() {
    let f = Fixture::new();
    let ctx = f.ctx("ctx", &[("probe.sh", SANDBOX_PROBE)]);
    probe(&ctx);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY probe probe.sh /\nRUN /probe > /probe.txt && sh /probe.sh > /sandbox.txt\nRUN --security=insecure sh /probe.sh > /insecure.txt\n",
    )
    .unwrap();
    let dest = f.path("out");
    let o = f.build(
        &ctx,
        &[
            "--allow",
            "security.insecure",
            "--output",
            &format!("type=local,dest={}", dest.display()),
            "--output",
            "type=image,name=probe:1",
        ],
    );
    assert_ok(&o);
    let read = |p: &str| std::fs::read_to_string(dest.join(p)).unwrap();
    assert_profile(&probe_results(&read("probe.txt")), "RUN");
    assert_sandboxed(&probe_results(&read("sandbox.txt")), "RUN");
    let insecure = probe_results(&read("insecure.txt"));
    assert_eq!(insecure["seccomp"], "0", "--security=insecure has no filter: {insecure:?}");
    assert_eq!(insecure["core_pattern_rw"], "yes", "--security=insecure: /proc/sys as BuildKit's insecure mode leaves it: {insecure:?}");

    // The same for containers, with and without an init as pid 1.
    let o = f.rdock(&["run", "--rm", "probe:1", "/probe"]);
    assert_ok(&o);
    assert_profile(&probe_results(&out(&o)), "rdock run");
    let o = f.rdock(&["run", "--rm", "probe:1", "sh", "/probe.sh"]);
    assert_ok(&o);
    assert_sandboxed(&probe_results(&out(&o)), "rdock run");
    // --init: pid 1 holds the command's capabilities, no more.
    let o = f.rdock(&["run", "--rm", "--init", "probe:1", "sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd)' /proc/1/status /proc/self/status"]);
    assert_ok(&o);
    let text = out(&o);
    let caps: Vec<&str> = text.lines().map(|l| l.rsplit('\t').next().unwrap_or("")).collect();
    assert_eq!(caps.len(), 6, "{}", out(&o));
    assert!(
        caps.iter().all(|c| *c == "00000000a80425fb"),
        "--init's pid 1 or the command holds more than Docker's default set: {}",
        out(&o)
    );
}

/// Issue 13: stub cleanup after a step resolves inside the step's layer; a symlink the
/// step left where a stub was does not lead it to the host.
#[test]
fn stub_cleanup_does_not_follow_a_steps_symlink() {
    let f = Fixture::new();
    let canary = Canary::new(&f, "host");
    std::fs::write(canary.dir.join("sub/hosts"), "").unwrap();
    // A step leaves /m a link to the host directory; the next steps mount on /m/sub (an
    // empty directory there: a stub to clean, were it inside) and /m/sub/hosts.
    let ctx = f.ctx(
        "ctx",
        &[("Dockerfile", &format!("FROM busybox\nRUN --mount=type=tmpfs,target=/m/n true\nRUN rm -rf /m && ln -s {} /m\nRUN --mount=type=tmpfs,target=/m/sub true\nRUN --mount=type=tmpfs,target=/m/sub/hosts true\n", canary.path()))],
    );
    let o = f.build(&ctx, &["--output", "type=image,name=stub:1"]);
    assert_ok(&o);
    assert!(canary.dir.join("sub/hosts").exists(), "a host file was removed by stub cleanup");
    std::fs::remove_file(canary.dir.join("sub/hosts")).unwrap();
    canary.assert_untouched("stub cleanup");
}

/// The host path of a process's cgroup for `controller`, from its /proc/PID/cgroup and
/// this process's mountinfo: the controller's v1 hierarchy if it has one, else the v2
/// hierarchy (then `true`).
fn cgroup_dir(pid: u32, controller: &str) -> Option<(PathBuf, bool)> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = |want: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            want(ctrls).then(|| path.to_string())
        })
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = |v1: bool| {
        mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let opts = r.nth(1).unwrap_or("");
            let hit = if v1 { fstype == "cgroup" && opts.split(',').any(|o| o == controller) } else { fstype == "cgroup2" };
            hit.then(|| PathBuf::from(point))
        })
    };
    if let (Some(path), Some(m)) = (line(&|c: &str| c.split(',').any(|c| c == controller)), mount(true)) {
        return Some((m.join(path.trim_start_matches('/')), false));
    }
    let path = line(&|c: &str| c.is_empty())?;
    Some((mount(false)?.join(path.trim_start_matches('/')), true))
}

/// The pid of rdock's first child (the container's pid 1), once it has one.
fn first_child(rdock: u32) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{rdock}/task/{rdock}/children")).unwrap_or_default();
        // The container, not the default network's slirp4netns beside it.
        let container = children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.trim() != "slirp4netns"));
        if let Some(c) = container {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "rdock {rdock} started no container");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Issue 13 (3): a fork bomb in a RUN fails its step with a message naming the pids limit
/// (`[limits] pids` in config.toml), and the machine stands.
#[test]
fn a_fork_bomb_fails_its_step_not_the_machine() {
    let f = Fixture::new();
    std::fs::write(f.root.join("config.toml"), "[limits]\npids = 64\n").unwrap();
    // 200 background sleepers: without a limit the step would wait 3 s and succeed.
    let ctx = f.ctx("ctx", &[("Dockerfile", "FROM busybox\nRUN i=0; while [ $i -lt 200 ]; do sleep 3 & i=$((i+1)); done; wait\n")]);
    let o = f.build(&ctx, &[]);
    assert!(!o.status.success(), "the step forked 200 processes under a limit of 64");
    assert!(stderr(&o).contains("pids limit (64 processes and threads"), "{}", stderr(&o));
    // An unknown key in config.toml is an error that names it.
    std::fs::write(f.root.join("config.toml"), "[limits]\npid = 64\n").unwrap();
    let o = f.build(&ctx, &[]);
    assert!(!o.status.success() && stderr(&o).contains("pid"), "{}", stderr(&o));
    assert!(f.leftovers().is_empty(), "leftovers: {:?}", f.leftovers());
}

/// Issue 13 (3): `rdock run --memory --cpus --pids-limit` land in the container's cgroups
/// as docker's do, the default pids limit applies without them, and the cgroups go when
/// the container does, also when rdock is killed (the next rdock sweeps them).
#[test]
fn containers_get_their_limits_and_cgroups_are_removed() {
    let f = Fixture::new();
    let ready = f.path("ready");
    std::fs::create_dir_all(&ready).unwrap();
    let bind = format!("{}:/ready", ready.display());
    let start = |extra: &[&str], flag: &str| {
        let mut args = vec!["run", "--rm", "-v", &bind];
        args.extend_from_slice(extra);
        let script = format!("touch /ready/{flag}; sleep 20");
        args.extend_from_slice(&["busybox", "sh", "-c", &script]);
        let child = std::process::Command::new(RDOCK).args(&args).env("RDOCK_ROOT", &f.root).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !ready.join(flag).exists() {
            assert!(std::time::Instant::now() < deadline, "the container never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child
    };
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default().trim().to_string();

    let mut c = start(&["--memory", "64m", "--cpus", "0.5", "--pids-limit", "100"], "a");
    let pid = first_child(c.id());
    let (pids, _) = cgroup_dir(pid, "pids").expect("the container has a pids cgroup");
    assert!(pids.ends_with(format!("rdock/{}-0", c.id())), "{}", pids.display());
    assert_eq!(read(&pids, "pids.max"), "100");
    let (mem, v2) = cgroup_dir(pid, "memory").expect("a memory cgroup");
    assert_eq!(read(&mem, if v2 { "memory.max" } else { "memory.limit_in_bytes" }), (64u64 << 20).to_string());
    let (cpu, v2) = cgroup_dir(pid, "cpu").expect("a cpu cgroup");
    if v2 {
        assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
    } else {
        assert_eq!((read(&cpu, "cpu.cfs_quota_us").as_str(), read(&cpu, "cpu.cfs_period_us").as_str()), ("50000", "100000"));
    }
    // Inside, a cgroup namespace: the container's own cgroup is its root.
    let o = f.rdock(&["run", "--rm", "busybox", "cat", "/proc/self/cgroup"]);
    assert!(out(&o).lines().all(|l| l.ends_with(":/")), "{}", out(&o));
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    c.wait().unwrap();
    assert!(!pids.exists() && !mem.exists() && !cpu.exists(), "cgroups left after the container");

    // The default, and rdock killed: its cgroup is swept by the next rdock.
    let mut c = start(&[], "b");
    let (pids, _) = cgroup_dir(first_child(c.id()), "pids").expect("a pids cgroup");
    assert_eq!(read(&pids, "pids.max"), "4096");
    c.kill().unwrap();
    c.wait().unwrap();
    assert_ok(&f.rdock(&["run", "--rm", "busybox", "true"]));
    assert!(!pids.exists(), "{} not swept", pids.display());
}

/// Issue 13 (4): an image of 127 layers (busybox's and 126 RUN steps) builds and runs with
/// a store path of 200 characters (overlay's mount data is one page; rdock stopped near 90
/// layers with a long RDOCK_ROOT).
#[test]
fn an_image_of_127_layers_builds_and_runs_under_a_long_store_path() {
    let mut f = Fixture::empty();
    let long: String = (0..10).map(|i| format!("/{}{i}", "d".repeat(18))).collect();
    f.root = f.dir.path().join(long.trim_start_matches('/'));
    assert!(f.root.display().to_string().len() > 200);
    assert_ok(&f.rdock(&["load", "-i", busybox_tar().to_str().unwrap()]));
    let mut dockerfile = String::from("FROM busybox\n");
    for i in 1..=126 {
        dockerfile.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    let ctx = f.ctx("ctx", &[("Dockerfile", &dockerfile)]);
    assert_ok(&f.build(&ctx, &["--output", "type=image,name=tall:1"]));
    let o = f.rdock(&["run", "--rm", "tall:1", "sh", "-c", "cat /f1 /f126; ls / | grep -c '^f'"]);
    assert_ok(&o);
    assert_eq!(out(&o), "1\n126\n126\n");
    let o = f.rdock(&["history", "--format", "json", "tall:1"]);
    let layers = out(&o).lines().filter(|l| serde_json::from_str::<Value>(l).unwrap()["EmptyLayer"] == false).count();
    assert_eq!(layers, 127, "{}", out(&o));
}

/// A small filesystem (tmpfs) for a store, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(at: PathBuf, mib: u64) -> SmallFs {
        std::fs::create_dir_all(&at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs (the tests run as root)");
        SmallFs(at)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the filesystem of `dir` with a file until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut file = std::fs::File::create(&p).unwrap();
    let chunk = vec![1u8; 1 << 16];
    while file.write_all(&chunk).is_ok() {}
    p
}

/// The store is usable right after: du, fsck, a build, prune; nothing left over.
fn assert_store_heals(f: &Fixture, after: &str) {
    for args in [&["du"][..], &["fsck"]] {
        let o = f.rdock(args);
        assert!(o.status.success(), "{after}: rdock {args:?}: {}", stderr(&o));
    }
    let ctx = f.ctx("small", &[("Dockerfile", "FROM busybox\nRUN echo ok > /ok\n")]);
    let o = f.build(&ctx, &["--no-cache"]);
    assert!(o.status.success(), "{after}: a small build: {}", stderr(&o));
    assert_ok(&f.rdock(&["prune"]));
    assert!(f.leftovers().is_empty(), "{after}: leftovers {:?}", f.leftovers());
}

/// Issue 13 (4, 5): a step that fills the store's filesystem fails with ENOSPC and its
/// snapshot goes; a disk filled from outside still lets every command run (the store keeps
/// a reserve it releases); a gzip bomb says "No space left on device", not "broken layer".
/// No file is deleted by hand in between.
#[test]
fn a_full_disk_fails_the_step_and_the_store_heals_itself() {
    let mut f = Fixture::empty();
    let fs = SmallFs::new(f.path("small"), 48);
    f.root = fs.0.join("store");
    assert_ok(&f.rdock(&["load", "-i", busybox_tar().to_str().unwrap()]));

    let ctx = f.ctx("fill", &[("Dockerfile", "FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M count=100\n")]);
    let o = f.build(&ctx, &[]);
    assert!(!o.status.success(), "100 MB fit in 48 MiB?");
    assert!(stderr(&o).contains("No space left on device"), "{}", stderr(&o));
    assert_store_heals(&f, "a RUN filled the disk");

    let filler = fill(&fs.0);
    assert_store_heals(&f, "the disk was filled from outside");
    std::fs::remove_file(filler).unwrap();

    // 60 MB of zeros, gzipped to a few hundred kB.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(60 << 20);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "bomb", std::io::repeat(0).take(60 << 20)).unwrap();
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let blob = gz.finish().unwrap();
    let image = image_with_blob(&f, "bomb:1", &blob, &sha256(&raw));
    drop(raw);
    let o = f.rdock(&["load", "-i", image.to_str().unwrap()]);
    assert!(!o.status.success(), "a 60 MB layer loaded into 48 MiB?");
    assert!(stderr(&o).contains("No space left on device") && !stderr(&o).contains("broken layer"), "{}", stderr(&o));
    assert_store_heals(&f, "a gzip bomb");
}

/// Issue 13 (4): a manifest of 600 layers (more than overlayfs can stack) is refused up
/// front with a message that says so, in time linear in its size; nothing is left behind.
#[test]
fn an_image_of_600_layers_is_refused_up_front() {
    let f = Fixture::new();
    let layers: Vec<Vec<u8>> = (0..600).map(|i| layer(&[E::File(&format!("f{i}"), "x")])).collect();
    let blobs: Vec<(&[u8], String)> = layers.iter().map(|l| (&l[..], sha256(l))).collect();
    let tar = image_with_blobs(&f, "wide:1", &blobs);
    let started = std::time::Instant::now();
    let o = f.rdock(&["load", "-i", tar.to_str().unwrap()]);
    assert!(!o.status.success(), "600 layers loaded");
    assert!(stderr(&o).contains("601 layers, more than the 500 one overlay mount can stack"), "{}", stderr(&o));
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(f.leftovers().is_empty(), "leftovers: {:?}", f.leftovers());
    assert_ok(&f.rdock(&["fsck"]));
}

/// A layer of device nodes and a FIFO.
fn node_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, major, minor) in
        [("dev2/null", tar::EntryType::Char, 1, 3), ("dev2/loop", tar::EntryType::Block, 7, 0), ("run/fifo", tar::EntryType::Fifo, 0, 0)]
    {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Issue 13 (6): device nodes and FIFOs in a layer are device nodes and FIFOs in the
/// container (they were empty regular files), none of them opens as a device (nodev), and
/// `rdock save` carries them unchanged.
#[test]
fn device_nodes_and_fifos_in_layers_stay_what_they_are() {
    let f = Fixture::new();
    let tar = image_with_layer(&f, "nodes:1", &node_layer());
    assert_ok(&f.rdock(&["load", "-i", tar.to_str().unwrap()]));
    let o = f.rdock(&[
        "run",
        "--rm",
        "nodes:1",
        "sh",
        "-c",
        "stat -c '%F %t:%T' /dev2/null /dev2/loop /run/fifo; head -c 1 /dev2/loop && echo opened",
    ]);
    assert_eq!(out(&o), "character special file 1:3\nblock special file 7:0\nfifo 0:0\n", "{}", stderr(&o));
    let saved = f.path("saved.tar");
    assert_ok(&f.rdock(&["save", "-o", saved.to_str().unwrap(), "nodes:1"]));
    let files = read_tar_files(&saved);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let last = manifest[0]["Layers"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
    let mut blob = Vec::new();
    let raw = &files[&last];
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut blob).unwrap();
    } else {
        blob = raw.clone();
    }
    assert_eq!(blob, node_layer(), "the saved layer differs from the loaded one");
}

/// Issue 13: the same hostile layers served by a real registry (Debian's docker-registry
/// on loopback, the image pushed there by skopeo): `rdock pull` and a build `FROM` it,
/// each into an empty store, leave the host untouched.
#[test]
fn hostile_layers_from_a_registry_never_touch_the_host() {
    let reg = Registry::start(Auth::None);
    let f = Fixture::new();
    let canary = Canary::new(&f, "host");
    let h = canary.path();
    let attacks = [
        ("whiteout", layer(&[E::Symlink("esc", h), E::File("esc/.wh.canary", "")])),
        ("opaque", layer(&[E::Symlink("esc", h), E::File("esc/sub/.wh..wh..opq", "")])),
        ("file", layer(&[E::Symlink("esc", h), E::File("esc/new", "pwned")])),
    ];
    for (i, (attack, l)) in attacks.iter().enumerate() {
        let tar = image_with_layer(&f, &format!("r{i}:1"), l);
        let name = reg.image(&format!("hostile{i}:1"));
        sh(
            "skopeo",
            &["copy", "--quiet", "--dest-tls-verify=false", &format!("docker-archive:{}", tar.display()), &format!("docker://{name}")],
        );
        let g = Fixture::empty();
        let _ = g.rdock(&["pull", &name]);
        canary.assert_untouched(&format!("{attack}: rdock pull"));
        let g = Fixture::new();
        let ctx = g.ctx("ctx", &[("Dockerfile", &format!("FROM {name}\nRUN true\n"))]);
        let _ = g.build(&ctx, &[]);
        canary.assert_untouched(&format!("{attack}: FROM"));
        assert!(g.leftovers().is_empty(), "{attack}: leftovers {:?}", g.leftovers());
    }
}
