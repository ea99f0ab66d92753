//! The default network end to end: RUN steps and containers reach Debian's package mirror
//! (the outside world these machines reach) through slirp4netns from a namespace of their
//! own, while a service on the host's loopback sees no connection from them; `--network`
//! build-wide and per step, `--add-host`, `run -p`, and the note a step gets when a name
//! does not resolve.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// A file every Debian mirror serves; small.
const MIRROR_FILE: &str = "http://deb.debian.org/debian/dists/bookworm/Release";

/// A canary service on the host's loopback: counts the connections it accepts.
fn loopback_canary() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nCANARY-REACHED\n");
        }
    });
    (port, hits)
}

fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn run_steps_reach_the_outside_world_by_default_but_not_the_hosts_loopback() {
    let f = Fixture::new();
    let (port, hits) = loopback_canary();
    let df = format!(
        "FROM busybox\n\
         RUN wget -q -O /fetched {MIRROR_FILE} && grep -q '^Origin: Debian' /fetched && nslookup deb.debian.org > /dev/null && echo EGRESS-OK\n\
         RUN for a in 127.0.0.1 10.0.2.2 10.0.2.3; do wget -q -O- http://$a:{port}/ && echo REACH\"\"ED-$a; done; ip route > /routes; true\n"
    );
    let ctx = f.ctx("c", &[("Dockerfile", &df)]);
    let dest = f.path("out");
    let o = f.build(&ctx, &["--output", &format!("type=local,dest={}", dest.display())]);
    assert_ok(&o);
    let text = out_text(&o);
    assert!(text.contains("EGRESS-OK"), "{text}");
    assert!(!text.contains("REACHED-"), "a step reached the host's loopback:\n{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the loopback canary saw a connection");
    // Its own namespace: a default route through slirp4netns's tap, not the host's eth0.
    let routes = std::fs::read_to_string(dest.join("routes")).unwrap();
    assert!(routes.contains("default via 10.0.2.2 dev tap0"), "{routes}");
    assert!(dest.join("fetched").exists());
}

#[test]
fn build_wide_network_none_is_said_in_the_error_of_a_step_that_cannot_resolve() {
    let f = Fixture::new();
    let ctx = f.ctx("c", &[("Dockerfile", &format!("FROM busybox\nRUN wget -q -O /dev/null {MIRROR_FILE}\n"))]);
    let o = f.rdock(&["build", "--network", "none", "--progress", "plain", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    let text = out_text(&o);
    assert!(text.contains("could not resolve a host name") && text.contains("the build's --network none"), "{text}");
    // rdock-build spells it as BuildKit's frontend option.
    let o = f.build(&ctx, &["--opt", "force-network-mode=none"]);
    assert!(!o.status.success());
    assert!(out_text(&o).contains("the build's --network none"), "{}", out_text(&o));
    // And the default works with the same file (what the note tells the user to check).
    assert_ok(&f.rdock(&["build", "--progress", "plain", ctx.to_str().unwrap()]));
    // An unknown mode is refused by name.
    let o = f.rdock(&["build", "--network", "bridge2", ctx.to_str().unwrap()]);
    assert!(!o.status.success() && out_text(&o).contains("--network bridge2"), "{}", out_text(&o));
}

#[test]
fn a_step_that_cannot_resolve_a_name_is_told_its_network_and_where_it_came_from() {
    let f = Fixture::new();
    let ctx = f.ctx("c", &[("Dockerfile", "FROM busybox\nRUN true\nRUN --network=none wget -q -O /dev/null http://deb.debian.org/\n")]);
    let o = f.build(&ctx, &[]);
    assert!(!o.status.success());
    let text = out_text(&o);
    assert!(text.contains("no network (--network=none") && text.contains("RUN --network=none on line 3"), "{text}");
    // A name that does not exist, on the default network: the note says it was the default.
    let ctx = f.ctx("d", &[("Dockerfile", "FROM busybox\nRUN wget -q -O /dev/null http://no-such-host.invalid/\n")]);
    let o = f.build(&ctx, &[]);
    assert!(!o.status.success());
    let text = out_text(&o);
    assert!(text.contains("it ran with the default network") && text.contains("set by the default"), "{text}");
    // A failure that has nothing to do with names gets no note.
    let ctx = f.ctx("e", &[("Dockerfile", "FROM busybox\nRUN exit 3\n")]);
    let text = out_text(&f.build(&ctx, &[]));
    assert!(text.contains("exit code: 3") && !text.contains("resolve a host name"), "{text}");
}

#[test]
fn add_host_entries_reach_etc_hosts_and_the_cache_key() {
    let f = Fixture::new();
    let ctx = f.ctx("c", &[("Dockerfile", "FROM busybox\nRUN cat /etc/hosts > /hosts-seen\n")]);
    let dest = f.path("a");
    let o = f.rdock(&[
        "build",
        "--add-host",
        "db.internal:10.9.8.7",
        "--add-host",
        "v6.internal:fd00::7",
        "-o",
        &format!("type=local,dest={}", dest.display()),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let hosts = std::fs::read_to_string(dest.join("hosts-seen")).unwrap();
    assert!(hosts.contains("10.9.8.7\tdb.internal") && hosts.contains("fd00::7\tv6.internal"), "{hosts}");
    // BuildKit's frontend option; another address is another step, not a cache hit.
    let dest = f.path("b");
    let o = f.build(&ctx, &["--opt", "add-hosts=db.internal=10.1.1.1", "--output", &format!("type=local,dest={}", dest.display())]);
    assert_ok(&o);
    assert!(std::fs::read_to_string(dest.join("hosts-seen")).unwrap().contains("10.1.1.1\tdb.internal"));
    for bad in ["nohost", "x:not-an-ip", "gw:host-gateway"] {
        let o = f.rdock(&["build", "--add-host", bad, ctx.to_str().unwrap()]);
        assert!(!o.status.success() && out_text(&o).contains(bad), "{bad}: {}", out_text(&o));
    }
}

#[test]
fn rdock_run_has_egress_by_default_and_none_keeps_it_off() {
    let f = Fixture::new();
    let (port, hits) = loopback_canary();
    let o = f.rdock(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        &format!("wget -q -O- {MIRROR_FILE} | head -1; wget -q -O- http://10.0.2.2:{port}/"),
    ]);
    let text = out_text(&o);
    assert!(text.contains("Origin: Debian"), "{text}");
    assert!(!text.contains("CANARY-REACHED"), "{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let o = f.rdock(&["run", "--rm", "--network", "none", "busybox", "sh", "-c", &format!("wget -q -O- {MIRROR_FILE}")]);
    assert!(!o.status.success(), "{}", out_text(&o));
    let o = f.rdock(&["run", "--rm", "--add-host", "api.test:192.0.2.77", "busybox", "cat", "/etc/hosts"]);
    assert!(out_text(&o).contains("192.0.2.77\tapi.test"), "{}", out_text(&o));
}

#[test]
fn run_publishes_ports_on_the_host() {
    let f = Fixture::new();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(RDOCK)
        .args(["run", "--rm", "-p", &format!("127.0.0.1:{port}:80"), "busybox", "sh", "-c"])
        .arg("mkdir /www && echo served-from-the-container > /www/index.html && exec httpd -f -p 80 -h /www")
        .env("RDOCK_ROOT", &f.root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut s| {
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
            let mut b = String::new();
            s.read_to_string(&mut b).ok()?;
            Some(b)
        });
        match got {
            Some(b) if b.contains("served-from-the-container") => break b,
            _ if Instant::now() > deadline => {
                let _ = child.kill();
                let mut e = String::new();
                child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                panic!("nothing served on 127.0.0.1:{port}: {e}");
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(body.starts_with("HTTP/1.") && body.contains("200"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
    // -p with a network that has none is refused, naming the flag.
    let o = f.rdock(&["run", "--rm", "--network", "host", "-p", "8080:80", "busybox", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", out_text(&o));
    assert!(out_text(&o).contains("-p"), "{}", out_text(&o));
}

/// A UDP echo server for the container (busybox has none): answers each datagram with
/// `echo:` and its bytes. Built static, so it runs in the busybox image from a bind mount.
const UDP_ECHO_C: &str = r#"
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    for (;;) {
        char b[512], r[600];
        struct sockaddr_in p;
        socklen_t l = sizeof p;
        int n = recvfrom(s, b, sizeof b - 1, 0, (struct sockaddr *)&p, &l);
        if (n < 0) return 1;
        b[n] = 0;
        int m = snprintf(r, sizeof r, "echo:%s", b);
        sendto(s, r, m, 0, (struct sockaddr *)&p, l);
    }
}
"#;

/// `-p HOST:CTR/udp` forwards datagrams both ways: a datagram sent to the host port reaches
/// a server in the container, and its answer comes back.
#[test]
fn run_publishes_udp_ports_on_the_host() {
    let f = Fixture::new();
    let bin = f.path("probe");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("udp-echo.c"), UDP_ECHO_C).unwrap();
    sh("cc", &["-static", "-O2", "-o", bin.join("udp-echo").to_str().unwrap(), bin.join("udp-echo.c").to_str().unwrap()]);
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(RDOCK)
        .args(["run", "--rm", "-p", &format!("127.0.0.1:{port}:5353/udp"), "-v", &format!("{}:/probe:ro", bin.display())])
        .args(["busybox", "/probe/udp-echo", "5353"])
        .env("RDOCK_ROOT", &f.root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    host.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        // Datagrams sent before the server and the forward are up are lost: send again.
        host.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 600];
        match host.recv_from(&mut buf) {
            Ok((n, _)) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) if Instant::now() > deadline => {
                let _ = child.kill();
                let mut e = String::new();
                child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                panic!("no answer on udp 127.0.0.1:{port}: {e}");
            }
            Err(_) => {}
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer, "echo:ping");
    // A host port already taken is run's own failure (125), naming it.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let p = taken.local_addr().unwrap().port();
    let o = f.rdock(&["run", "--rm", "-p", &format!("127.0.0.1:{p}:53/udp"), "busybox", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", out_text(&o));
    assert!(out_text(&o).contains(&format!("127.0.0.1:{p}:53/udp")), "{}", out_text(&o));
}
