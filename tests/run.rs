//! `rdock run` and the commands that look inside images, end to end: real overlay mounts,
//! real namespaces, real signals and a real pty; images built from Dockerfiles on the
//! busybox base; archives checked with skopeo (and docker where a dockerd runs).

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Lines of this process's mountinfo that mention the store: a run leaves none.
fn store_mounts(f: &Fixture) -> Vec<String> {
    let root = f.root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&root)).map(str::to_string).collect()
}

/// Builds `dockerfile` into the image `name`.
fn build_image(f: &Fixture, name: &str, dockerfile: &str) {
    let ctx = f.ctx(&format!("ctx-{}", name.replace([':', '/'], "-")), &[("Dockerfile", dockerfile)]);
    assert_ok(&f.build(&ctx, &["--output", &format!("type=image,name={name}")]));
}

fn run(f: &Fixture, args: &[&str]) -> Output {
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    f.rdock(&a)
}

fn spawn_run(f: &Fixture, args: &[&str]) -> std::process::Child {
    Command::new(RDOCK).arg("run").args(args).env("RDOCK_ROOT", &f.root).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits until `path` exists (a container signals readiness by writing it to a bind mount).
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn json_lines(o: &Output) -> Vec<Value> {
    out(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))).collect()
}

#[test]
fn entrypoint_cmd_env_workdir_and_user_combine_as_docker() {
    let f = Fixture::new();
    build_image(&f, "app:1", "FROM busybox\nENV A=image B=image\nWORKDIR /srv\nENTRYPOINT [\"/bin/echo\", \"ep\"]\nCMD [\"c1\", \"c2\"]\n");
    assert_eq!(out(&run(&f, &["--rm", "app:1"])), "ep c1 c2\n");
    // Arguments replace CMD only.
    assert_eq!(out(&run(&f, &["--rm", "app:1", "x", "-y"])), "ep x -y\n");
    // --entrypoint replaces ENTRYPOINT and drops the image's CMD.
    let o = run(&f, &["--rm", "--entrypoint", "sh", "app:1", "-c", "echo $A $B $HOSTNAME; pwd; id -u"]);
    assert_ok(&o);
    let lines: Vec<String> = out(&o).lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("image image ") && lines[0].len() == "image image ".len() + 12, "{lines:?}");
    assert_eq!(lines[1..], ["/srv", "0"]);
    assert_eq!(out(&run(&f, &["--rm", "--entrypoint", "/bin/pwd", "app:1"])), "/srv\n");
    // -e overrides by key (and -e K passes rdock's own), -w and -u replace WORKDIR and USER.
    let o = Command::new(RDOCK)
        .args(["run", "--rm", "-e", "A=flag", "-e", "FROM_HOST", "-e", "NOT_SET_ANYWHERE", "-w", "/tmp/new", "-u", "nobody"])
        .args(["--entrypoint", "sh", "app:1", "-c", "echo $A $B $FROM_HOST ${NOT_SET_ANYWHERE-unset}; pwd; id -u; id -g; echo $HOME"])
        .env("RDOCK_ROOT", &f.root)
        .env("FROM_HOST", "hv")
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(out(&o), "flag image hv unset\n/tmp/new\n65534\n65534\n/nonexistent\n");
    // USER from the image, overridden by -u; numeric ids need no passwd entry.
    build_image(&f, "asuser:1", "FROM busybox\nUSER nobody\nCMD [\"id\", \"-u\"]\n");
    assert_eq!(out(&run(&f, &["--rm", "asuser:1"])), "65534\n");
    // As docker 20.10.24 (and containerd since CVE-2023-25173): the primary group is listed too.
    assert_eq!(out(&run(&f, &["--rm", "-u", "1234:55", "asuser:1", "id"])), "uid=1234 gid=55 groups=55\n");
    // Shell-form CMD, and the status passes through.
    build_image(&f, "shell:1", "FROM busybox\nCMD echo shell form $$; exit 3\n");
    let o = run(&f, &["--rm", "shell:1"]);
    assert_eq!((out(&o).as_str(), o.status.code()), ("shell form 1\n", Some(3)));
    // 127: not found; 126: not executable; each with the program's name.
    let o = run(&f, &["--rm", "busybox", "no-such-program"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-program"), "{}", stderr(&o));
    let o = run(&f, &["--rm", "busybox", "/etc/passwd"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("/etc/passwd") && stderr(&o).contains("ermission denied"), "{}", stderr(&o));
    // stdin passes through with -i, and is empty without.
    let mut child = Command::new(RDOCK)
        .args(["run", "--rm", "-i", "busybox", "sh", "-c", "read l; echo got $l; exit 4"])
        .env("RDOCK_ROOT", &f.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"line\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((out(&o).as_str(), o.status.code()), ("got line\n", Some(4)));
    assert_eq!(out(&run(&f, &["--rm", "busybox", "sh", "-c", "cat; echo end"])), "end\n");
    assert!(store_mounts(&f).is_empty());
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    assert_eq!(out(&f.rdock(&["ps", "-a", "-q"])), "", "--rm leaves no container");
}

#[test]
fn containers_are_isolated_from_the_host_and_from_each_other() {
    let f = Fixture::new();
    let secret = f.path("host-secret");
    std::fs::write(&secret, "host only").unwrap();
    // Own root: no host file, and nothing of rdock's open files but the three streams.
    let o =
        run(&f, &["--rm", "busybox", "sh", "-c", &format!("test -e {} && echo leak; ls /proc/self/fd | tr '\\n' ' '", secret.display())]);
    assert_eq!(out(&o), "0 1 2 3 ");
    // Own pid namespace: the command is pid 1 and every pid is small.
    let script = "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -E '^[0-9]+$'";
    let o = run(&f, &["--rm", "busybox", "sh", "-c", script]);
    let lines: Vec<String> = out(&o).lines().map(str::to_string).collect();
    assert_eq!(lines[..2], ["1".to_string(), format!("sh -c {script} ")]);
    assert!(lines[2..].iter().all(|p| p.parse::<u32>().unwrap() < 20), "{lines:?}");
    // Own hostname: the id's first 12 digits, or --hostname; in /etc/hostname and /etc/hosts.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let o = run(&f, &["--rm", "busybox", "hostname"]);
    let h = out(&o).trim().to_string();
    assert!(h.len() == 12 && h.chars().all(|c| c.is_ascii_hexdigit()) && h != host.trim(), "{h}");
    let o = run(&f, &["--rm", "--hostname", "box", "busybox", "sh", "-c", "hostname; cat /etc/hostname; grep -c box /etc/hosts"]);
    assert_eq!(out(&o), "box\nbox\n1\n");
    // The default: lo up and slirp4netns's tap0 (tests/network.rs checks where it reaches);
    // --network none: loopback only; host: the host's interfaces.
    let ifaces = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s.lines().skip(2).filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim().to_string()).collect();
        v.sort();
        v
    };
    let o = run(&f, &["--rm", "busybox", "sh", "-c", "cat /proc/net/dev; ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-up"]);
    assert_eq!(ifaces(&out(&o)), ["lo", "tap0"]);
    assert!(out(&o).ends_with("lo-up\n"), "{}", out(&o));
    let o = run(&f, &["--rm", "--network", "none", "busybox", "cat", "/proc/net/dev"]);
    assert_eq!(ifaces(&out(&o)), ["lo"]);
    let o = run(&f, &["--rm", "--network", "host", "busybox", "cat", "/proc/net/dev"]);
    assert_eq!(ifaces(&out(&o)), ifaces(&std::fs::read_to_string("/proc/net/dev").unwrap()));
    assert_eq!(run(&f, &["--rm", "--network", "mynet", "busybox", "true"]).status.code(), Some(125));
    // Docker's default capabilities (0xa80425fb), bounded too; none for another user.
    let o = run(&f, &["--rm", "busybox", "sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status"]);
    assert_eq!(out(&o), "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n");
    let o = run(&f, &["--rm", "-u", "1000", "busybox", "grep", "^CapEff", "/proc/self/status"]);
    assert_eq!(out(&o), "CapEff:\t0000000000000000\n");
    // Writes land in the container's layer only; another container does not see them.
    assert_ok(&run(&f, &["--name", "a", "busybox", "sh", "-c", "echo a > /etc/a; echo changed >> /etc/passwd; rm /bin/vi"]));
    let o = run(&f, &["--name", "b", "busybox", "sh", "-c", "cat /etc/a; grep -c changed /etc/passwd; ls /bin/vi"]);
    assert_eq!(out(&o), "0\n/bin/vi\n");
    let inspect = |what: &str| -> Value {
        let o = f.rdock(&["inspect", what]);
        assert_ok(&o);
        serde_json::from_slice::<Value>(&o.stdout).unwrap()[0].clone()
    };
    let upper = std::path::PathBuf::from(inspect("a")["GraphDriver"]["Data"]["UpperDir"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(upper.join("etc/a")).unwrap(), "a\n");
    assert!(std::fs::read_to_string(upper.join("etc/passwd")).unwrap().ends_with("changed\n"));
    // The whiteout for /bin/vi is an overlay one (0/0 char device) in a's layer.
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&std::fs::symlink_metadata(upper.join("bin/vi")).unwrap().file_type()));
    let lower = inspect("busybox")["GraphDriver"]["Data"]["LowerDir"].as_str().unwrap().to_string();
    for dir in lower.split(':') {
        assert!(!Path::new(dir).join("etc/a").exists(), "the image's layer {dir} was written");
        assert!(!std::fs::read_to_string(Path::new(dir).join("etc/passwd")).unwrap_or_default().contains("changed"));
    }
    // Nor does a's write touch b's layer; and the mount points are in neither.
    let upper_b = std::path::PathBuf::from(inspect("b")["GraphDriver"]["Data"]["UpperDir"].as_str().unwrap());
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = walk(d).into_iter().map(|p| p.strip_prefix(d).unwrap().display().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&upper), ["bin", "bin/vi", "etc", "etc/a", "etc/passwd"]);
    assert!(names(&upper_b).is_empty(), "{:?}", names(&upper_b));
    assert!(store_mounts(&f).is_empty());
    assert_ok(&f.rdock(&["rm", "a", "b"]));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn bind_mounts_read_write_and_read_only() {
    let f = Fixture::new();
    let data = f.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "from host\n").unwrap();
    let file = f.path("single.txt");
    std::fs::write(&file, "one file\n").unwrap();
    let v = format!("{}:/data", data.display());
    let o = run(&f, &["--rm", "-v", &v, "busybox", "sh", "-c", "cat /data/in; echo from container > /data/out"]);
    assert_eq!(out(&o), "from host\n");
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "from container\n");
    let v = format!("{}:/ro/deep:ro", data.display());
    let o = run(&f, &["--rm", "-v", &v, "busybox", "sh", "-c", "cat /ro/deep/in; echo x > /ro/deep/nope"]);
    assert_eq!(out(&o), "from host\n");
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("Read-only file system"), "{}", stderr(&o));
    assert!(!data.join("nope").exists());
    let v = format!("{}:/etc/single.txt:ro", file.display());
    assert_eq!(out(&run(&f, &["--rm", "-v", &v, "busybox", "cat", "/etc/single.txt"])), "one file\n");
    assert!(store_mounts(&f).is_empty());
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing_behind() {
    let f = Fixture::new();
    build_image(&f, "nocmd:1", "FROM busybox\nCMD []\n");
    let before = out(&f.rdock(&["ps", "-a", "-q"]));
    let missing = f.path("no-such-dir");
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (vec!["nosuchimage-rdock-test:1".into(), "true".into()], 125, "nosuchimage-rdock-test:1".into()),
        (vec!["Bad::Ref".into(), "true".into()], 125, "Bad::Ref".into()),
        (vec!["-u".into(), "nobody-at-all".into(), "busybox".into(), "true".into()], 125, "unable to find user nobody-at-all".into()),
        (vec!["busybox".into(), "not-a-command".into()], 127, "not-a-command".into()),
        (vec!["-v".into(), format!("{}:/x", missing.display()), "busybox".into(), "true".into()], 125, missing.display().to_string()),
        (vec!["-v".into(), "relative:/x".into(), "busybox".into(), "true".into()], 125, "absolute host path".into()),
        (vec!["-w".into(), "rel".into(), "busybox".into(), "true".into()], 125, "absolute path".into()),
        (vec!["nocmd:1".into()], 125, "no command specified".into()),
        // A flag rdock lacks is named, never taken for an image to pull.
        (vec!["--privileged".into(), "busybox".into(), "true".into()], 125, "unexpected argument '--privileged'".into()),
    ];
    for rm in [true, false] {
        for (args, code, needle) in &cases {
            let mut a: Vec<&str> = if rm { vec!["--rm"] } else { vec![] };
            a.extend(args.iter().map(String::as_str));
            let o = run(&f, &a);
            assert_eq!(o.status.code(), Some(*code), "{a:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(needle.as_str()), "{a:?}: {:?} lacks {needle:?}", stderr(&o));
            assert!(store_mounts(&f).is_empty(), "{a:?} left mounts: {:?}", store_mounts(&f));
            assert!(f.leftovers().iter().all(|l| l.starts_with("snapshot:container:")), "{a:?}: {:?}", f.leftovers());
        }
    }
    // Only a command that could not be executed leaves a container (Created, as docker), and
    // only without --rm.
    let o = f.rdock(&["ps", "-a", "--format", "json"]);
    let created: Vec<Value> = json_lines(&o);
    assert_eq!(before, "");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!((created[0]["State"].as_str(), created[0]["ExitCode"].as_i64()), (Some("created"), Some(127)));
    assert_ok(&f.rdock(&["rm", created[0]["ID"].as_str().unwrap()]));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    assert_eq!(f.rdock(&["rm", "nonesuch"]).status.code(), Some(1));
    assert!(stderr(&f.rdock(&["rm", "nonesuch"])).contains("No such container: nonesuch"));
    assert_ok(&f.rdock(&["fsck"]));
}

#[test]
fn signals_are_forwarded_and_stop_signal_honoured() {
    let f = Fixture::new();
    let sync = f.path("sync");
    std::fs::create_dir_all(&sync).unwrap();
    let v = format!("{}:/sync", sync.display());
    let trap = |sig: &str, code: u8, ready: &str| {
        format!("trap 'echo got {sig}; exit {code}' {sig}; touch /sync/{ready}; while :; do sleep 0.05; done")
    };
    // SIGTERM (a stop request) reaches a pid 1 that traps it.
    let child = spawn_run(&f, &["--rm", "-v", &v, "busybox", "sh", "-c", &trap("TERM", 7, "t")]);
    wait_for(&sync.join("t"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((out(&o).as_str(), o.status.code()), ("got TERM\n", Some(7)));
    // SIGINT and SIGUSR1 are forwarded as they are.
    for (sig, name) in [(nix::sys::signal::Signal::SIGINT, "INT"), (nix::sys::signal::Signal::SIGUSR1, "USR1")] {
        let child = spawn_run(&f, &["--rm", "-v", &v, "busybox", "sh", "-c", &trap(name, 9, name)]);
        wait_for(&sync.join(name));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!((out(&o), o.status.code()), (format!("got {name}\n"), Some(9)));
    }
    // The image's STOPSIGNAL is what a stop request sends.
    build_image(&f, "stopper:1", "FROM busybox\nSTOPSIGNAL SIGUSR2\n");
    let child = spawn_run(&f, &["--rm", "-v", &v, "stopper:1", "sh", "-c", &trap("USR2", 5, "s")]);
    wait_for(&sync.join("s"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((out(&o).as_str(), o.status.code()), ("got USR2\n", Some(5)));
    // A pid 1 that ignores the stop signal is killed after the stop timeout: 137.
    let child = spawn_run(&f, &["--rm", "--stop-timeout", "1", "-v", &v, "busybox", "sh", "-c", "touch /sync/k; exec sleep 60"]);
    wait_for(&sync.join("k"));
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(137));
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // --init: the command is pid 2, dies of SIGINT by default (130), and orphans are reaped.
    let child = spawn_run(&f, &["--rm", "--init", "-v", &v, "busybox", "sh", "-c", "echo $$; touch /sync/i; exec sleep 60"]);
    wait_for(&sync.join("i"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((out(&o).as_str(), o.status.code()), ("2\n", Some(130)));
    let zombies = "sh -c 'sleep 0.1 &'; sleep 0.6; cat /proc/[0-9]*/stat | awk '{print $3}' | grep -c Z";
    assert_eq!(out(&run(&f, &["--rm", "--init", "busybox", "sh", "-c", zombies])), "0\n");
    // A command killed from outside still leaves nothing behind with --rm.
    let child = spawn_run(&f, &["--rm", "-v", &v, "busybox", "sh", "-c", "touch /sync/x; exec sleep 60"]);
    wait_for(&sync.join("x"));
    let kids = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id())).unwrap();
    // The container, not the default network's slirp4netns beside it.
    let pid1: i32 = kids
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.trim() != "slirp4netns"))
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1), nix::sys::signal::Signal::SIGKILL).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(137));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    // rdock itself killed: the container dies with it, and the next command sweeps the rest.
    let mut child = spawn_run(&f, &["--rm", "-v", &v, "busybox", "sh", "-c", "touch /sync/y; exec sleep 60"]);
    wait_for(&sync.join("y"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(out(&f.rdock(&["ps", "-a", "-q"])), "");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    assert!(store_mounts(&f).is_empty());
    // Without --rm, a killed rdock's container shows as exited (137).
    let mut child = spawn_run(&f, &["--name", "victim", "-v", &v, "busybox", "sh", "-c", "touch /sync/z; exec sleep 60"]);
    wait_for(&sync.join("z"));
    let running = json_lines(&f.rdock(&["ps", "--format", "json"]));
    assert_eq!((running.len(), running[0]["Names"].as_str(), running[0]["State"].as_str()), (1, Some("victim"), Some("running")));
    assert_eq!(f.rdock(&["rm", "victim"]).status.code(), Some(1), "a running container needs -f");
    child.kill().unwrap();
    child.wait().unwrap();
    let o = json_lines(&f.rdock(&["ps", "-a", "--format", "json"]));
    assert_eq!((o[0]["State"].as_str(), o[0]["ExitCode"].as_i64()), (Some("exited"), Some(137)));
    assert_ok(&f.rdock(&["rm", "victim"]));
}

#[test]
fn a_tty_has_the_terminal_size_and_carries_input() {
    let f = Fixture::new();
    let ws = nix::pty::Winsize { ws_row: 33, ws_col: 77, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new(RDOCK)
        .args(["run", "--rm", "-it", "busybox", "sh", "-c", "stty size; tty; echo TERM=$TERM; read x; echo got $x; exit 6"])
        .env("RDOCK_ROOT", &f.root)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    // The reader ends when rdock exits and the slave side closes (EIO).
    let reader = {
        let mut m = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            all
        })
    };
    // Typed input; the terminal is raw, so the container's line discipline sees the \r.
    master.write_all(b"hello\r").unwrap();
    let status = child.wait().unwrap();
    drop(master);
    let seen = reader.join().unwrap();
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert_eq!(status.code(), Some(6), "{text}");
    assert!(text.contains("33 77\r\n"), "{text:?}");
    assert!(text.contains("/dev/pts/0\r\n"), "{text:?}");
    assert!(text.contains("TERM=xterm\r\n"), "{text:?}");
    assert!(text.contains("got hello\r\n"), "{text:?}");
}

#[test]
fn ps_rm_commit_and_rmi_in_use() {
    let f = Fixture::new();
    let o = run(&f, &["--name", "maker", "busybox", "sh", "-c", "echo made > /made; rm /bin/vi; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let all = f.rdock(&["ps", "-a"]);
    let text = out(&all);
    assert!(text.lines().next().unwrap().starts_with("CONTAINER ID   IMAGE"), "{text}");
    assert!(text.contains("Exited (3)") && text.contains("maker") && text.contains("\"sh -c echo made"), "{text}");
    assert_eq!(out(&f.rdock(&["ps", "-q"])), "", "not running");
    // commit: the changes become a layer on the image; the new image runs them.
    let o = f.rdock(&["commit", "-m", "by hand", "maker", "made:1"]);
    assert_ok(&o);
    let id = out(&o).trim().to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(out(&run(&f, &["--rm", "made:1", "sh", "-c", "cat /made; ls /bin/vi 2>&1 | grep -c 'No such'"])), "made\n1\n");
    let img: Value = serde_json::from_slice(&f.rdock(&["inspect", "made:1"]).stdout).unwrap();
    assert_eq!(img[0]["Id"].as_str(), Some(id.as_str()));
    assert_eq!(img[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(img[0]["Comment"].as_str(), Some("by hand"));
    let layers: Value = serde_json::from_slice(&f.rdock(&["layers", "--format", "json", "made:1"]).stdout).unwrap();
    let top = &layers["layers"][1];
    assert_eq!(top["added"], serde_json::json!([{"path": "/made", "size": 5}]), "only the container's writes: {top}");
    assert_eq!(top["removed"][0]["path"].as_str(), Some("/bin/vi"));
    // rmi refuses the last name of an image a container uses, unless -f; another name goes.
    let o = f.rdock(&["rmi", "busybox"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must force") && stderr(&o).contains("is using its referenced image"), "{}", stderr(&o));
    assert_ok(&f.rdock(&["tag", "busybox", "alias:1"]));
    assert_ok(&f.rdock(&["rmi", "alias:1"]));
    assert_ok(&f.rdock(&["rm", "maker"]));
    assert_ok(&f.rdock(&["rmi", "busybox"]));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    assert_ok(&f.rdock(&["fsck"]));
    // -f removes the name even while a container uses the image.
    let g = Fixture::new();
    assert_ok(&run(&g, &["busybox", "true"]));
    assert_ok(&g.rdock(&["rmi", "-f", "busybox"]));
}

#[test]
fn images_history_inspect_and_layers_show_what_docker_and_dive_show() {
    let f = Fixture::new();
    build_image(
        &f,
        "waste:1",
        "FROM busybox\nRUN head -c 300000 /dev/zero > /big && echo one > /keep\n\
         RUN head -c 100000 /dev/zero > /big && mkdir -p /d && echo x > /d/f\nRUN rm /big && rm -r /d\nLABEL k=v\n",
    );
    let report: Value = serde_json::from_slice(&f.rdock(&["layers", "--format", "json", "waste:1"]).stdout).unwrap();
    let l = report["layers"].as_array().unwrap();
    assert_eq!(l.len(), 4);
    let paths = |v: &Value| -> Vec<(String, u64)> {
        v.as_array().unwrap().iter().map(|e| (e["path"].as_str().unwrap().to_string(), e["size"].as_u64().unwrap())).collect()
    };
    assert_eq!(paths(&l[1]["added"]), [("/big".to_string(), 300000), ("/keep".to_string(), 4)]);
    assert_eq!(paths(&l[2]["changed"]), [("/big".to_string(), 100000)]);
    assert_eq!(paths(&l[2]["added"]), [("/d/f".to_string(), 2)]);
    assert_eq!(paths(&l[3]["removed"]), [("/big".to_string(), 100000), ("/d".to_string(), 2)]);
    assert_eq!(l[3]["created_by"].as_str(), Some("RUN /bin/sh -c rm /big && rm -r /d # buildkit"));
    assert_eq!(report["wasted_bytes"].as_u64(), Some(400002));
    let ineff = &report["inefficiencies"][0];
    assert_eq!((ineff["path"].as_str(), ineff["count"].as_u64(), ineff["wasted"].as_u64()), (Some("/big"), Some(3), Some(400000)));
    let total = report["total_bytes"].as_u64().unwrap();
    let eff = report["efficiency"].as_f64().unwrap();
    assert!((eff - (1.0 - 400002.0 / total as f64)).abs() < 1e-9);
    let text = out(&f.rdock(&["layers", "waste:1"]));
    assert!(text.contains("Potential wasted space: 400.0kB") && text.contains("Image efficiency score:"), "{text}");
    assert!(text.contains("  M   100.0kB  /big") && text.contains("  D   100.0kB  /big"), "{text}");
    // history: one row per entry, newest first, with the layer's size and empty-layer flag.
    let h = json_lines(&f.rdock(&["history", "--format", "json", "waste:1"]));
    let rows: Vec<(String, u64, bool)> = h
        .iter()
        .map(|r| (r["CreatedBy"].as_str().unwrap().to_string(), r["SizeBytes"].as_u64().unwrap(), r["EmptyLayer"].as_bool().unwrap()))
        .collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0], ("LABEL k=v".to_string(), 0, true));
    assert_eq!(rows[1].1, 0);
    assert_eq!(rows[2].1, 100002);
    assert_eq!(rows[3].1, 300004);
    let table = out(&f.rdock(&["history", "waste:1"]));
    assert!(table.starts_with("IMAGE") && table.lines().count() == 7, "{table}");
    // images and inspect.
    let imgs = json_lines(&f.rdock(&["images", "--format", "json"]));
    let w = imgs.iter().find(|i| i["Repository"] == "waste").unwrap();
    let inspect: Value = serde_json::from_slice(&f.rdock(&["inspect", "waste:1"]).stdout).unwrap();
    assert_eq!(w["ID"], inspect[0]["Id"]);
    assert_eq!(inspect[0]["RepoTags"], serde_json::json!(["waste:1"]));
    assert_eq!(inspect[0]["Config"]["Labels"]["k"], "v");
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 4);
    assert_eq!(inspect[0]["Os"], "linux");
    // The short image ID from `images` finds the image.
    let short = &w["ID"].as_str().unwrap()[7..19];
    assert!(out(&f.rdock(&["images"])).contains(short));
    assert_eq!(out(&run(&f, &["--rm", short, "cat", "/keep"])), "one\n");
    assert_eq!(f.rdock(&["images", "--format", "yaml"]).status.code(), Some(2));
}

#[test]
fn save_and_load_round_trip_through_docker_archive_and_oci_archive() {
    let f = Fixture::new();
    build_image(&f, "rt:1", "FROM busybox\nRUN echo round > /trip\nCMD [\"cat\", \"/trip\"]\n");
    let id = serde_json::from_slice::<Value>(&f.rdock(&["inspect", "rt:1"]).stdout).unwrap()[0]["Id"].as_str().unwrap().to_string();
    let docker_tar = f.path("rt-docker.tar");
    let oci_tar = f.path("rt-oci.tar");
    assert_ok(&f.rdock(&["save", "-o", docker_tar.to_str().unwrap(), "rt:1"]));
    assert_ok(&f.rdock(&["save", "--format", "oci", "-o", oci_tar.to_str().unwrap(), "rt:1"]));
    assert!(read_tar_files(&docker_tar).contains_key("manifest.json"));
    assert!(!read_tar_files(&oci_tar).contains_key("manifest.json"));
    // skopeo reads both, with the same config.
    let cfg = |src: String| -> Value { serde_json::from_str(&sh("skopeo", &["inspect", "--config", &src])).unwrap() };
    assert_eq!(cfg(format!("docker-archive:{}", docker_tar.display()))["config"]["Cmd"], serde_json::json!(["cat", "/trip"]));
    assert_eq!(cfg(format!("oci-archive:{}", oci_tar.display()))["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    // What skopeo writes loads back: its oci-archive and its docker-archive (docker save's
    // legacy layout: ID.tar layers, ID.json config, repositories).
    let sk_oci = f.path("sk-oci.tar");
    let sk_docker = f.path("sk-docker.tar");
    sh("skopeo", &["copy", &format!("docker-archive:{}", docker_tar.display()), &format!("oci-archive:{}:sk:2", sk_oci.display())]);
    sh("skopeo", &["copy", &format!("oci-archive:{}", oci_tar.display()), &format!("docker-archive:{}:skd:3", sk_docker.display())]);
    for (tar, name) in [(&sk_oci, "sk:2"), (&sk_docker, "skd:3"), (&docker_tar, "rt:1"), (&oci_tar, "rt:1")] {
        let g = Fixture::empty();
        let o = g.rdock(&["load", "-i", tar.to_str().unwrap()]);
        assert_ok(&o);
        let loaded = out(&o);
        let name = if tar == &oci_tar {
            // An OCI archive carries its tag as the ref name only; it loads under its id.
            loaded.trim().rsplit(' ').next().unwrap().to_string()
        } else {
            assert!(loaded.contains(name), "{loaded}");
            name.to_string()
        };
        let got = serde_json::from_slice::<Value>(&g.rdock(&["inspect", &name]).stdout).unwrap()[0]["Id"].as_str().unwrap().to_string();
        // skopeo's conversions may rewrite the config; rdock's own archives keep the image ID.
        if tar == &docker_tar || tar == &oci_tar {
            assert_eq!(got, id, "{}", tar.display());
        }
        assert_eq!(out(&run(&g, &["--rm", &name])), "round\n", "{}", tar.display());
        assert_ok(&g.rdock(&["fsck"]));
    }
    // docker loads rdock's archive and rdock loads docker's, where a dockerd runs.
    if Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        let loaded = sh("docker", &["load", "-i", docker_tar.to_str().unwrap()]);
        assert!(loaded.contains("rt:1"), "{loaded}");
        assert_eq!(docker_run(&["--rm", "rt:1"]), "round\n");
        let from_docker = f.path("from-docker.tar");
        sh("docker", &["save", "-o", from_docker.to_str().unwrap(), "rt:1"]);
        sh("docker", &["rmi", "-f", "rt:1"]);
        let g = Fixture::empty();
        assert_ok(&g.rdock(&["load", "-i", from_docker.to_str().unwrap()]));
        assert_eq!(out(&run(&g, &["--rm", "rt:1"])), "round\n");
    } else {
        eprintln!("no dockerd: docker load/save of the archives not checked here");
    }
    assert_eq!(f.rdock(&["save", "--format", "zip", "-o", "/dev/null", "rt:1"]).status.code(), Some(2));
}
