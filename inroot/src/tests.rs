//! Hostile trees, resolved by both resolvers: whatever the image's symlinks say, nothing
//! resolves to, or is created at, the canary directory beside the root.

use super::*;
use std::os::unix::fs::symlink;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// A host directory outside the root with a canary file in it.
    host: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let host = tmp.path().join("host");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("canary"), "host").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    // Absolute and relative links out, a link to a file, a dangling link and a loop.
    symlink(&host, root.join("esc")).unwrap();
    symlink("../../../../../../..", root.join("up")).unwrap();
    symlink("/etc/passwd", root.join("pw")).unwrap();
    symlink(host.join("new"), root.join("dangling")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    Fixture { _tmp: tmp, root, host }
}

fn both(f: &Fixture) -> [Root; 2] {
    let kernel = Root::with_resolver(&f.root, Resolver::Kernel).unwrap();
    let walk = Root::with_resolver(&f.root, Resolver::Walk).unwrap();
    [kernel, walk]
}

fn host_untouched(f: &Fixture) {
    let names: Vec<_> = std::fs::read_dir(&f.host).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![OsString::from("canary")], "the host directory changed");
    assert_eq!(std::fs::read_to_string(f.host.join("canary")).unwrap(), "host");
}

#[test]
fn links_out_of_the_root_stay_inside_it() {
    let f = fixture();
    for root in both(&f) {
        let r = root.resolver;
        for p in ["esc/canary", "/esc/canary", "up/esc/canary", "../../canary", "up/../host/canary", "/../../host/canary"] {
            let got = root.resolve(Path::new(p), Last::Follow);
            assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::ENOENT), "{r:?} {p}");
        }
        // `up` is the root itself: /etc/passwd through it.
        let pw = root.host_path(Path::new("up/up/etc/passwd"), Last::Follow).unwrap();
        assert_eq!(pw, f.root.join("etc/passwd"), "{r:?}");
        assert_eq!(root.host_path(Path::new("pw"), Last::Follow).unwrap(), f.root.join("etc/passwd"), "{r:?}");
        assert_eq!(root.host_path(Path::new("pw"), Last::NoFollow).unwrap(), f.root.join("pw"), "{r:?}");
        let e = root.resolve(Path::new("loop1/x"), Last::Follow).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{r:?}");
        assert_eq!(root.read(Path::new("esc/canary")).unwrap(), None, "{r:?}");
        assert!(root.lookup(Path::new("esc/canary"), Last::Follow).unwrap().is_none(), "{r:?}");
        assert!(root.lookup(Path::new("etc/passwd/x"), Last::Follow).unwrap().is_none(), "{r:?}");
        let pw = root.lookup(Path::new("up/pw"), Last::NoFollow).unwrap().unwrap();
        assert_eq!(root.fd_path(pw.as_fd()).unwrap(), f.root.join("pw"), "{r:?}");
        assert_eq!(root.read(Path::new("/up/pw")).unwrap().unwrap(), b"root:x:0:0::/root:/bin/sh\n", "{r:?}");
    }
    host_untouched(&f);
}

#[test]
fn creating_through_links_creates_inside() {
    let f = fixture();
    let mirror = f.root.join(f.host.strip_prefix("/").unwrap());
    for root in both(&f) {
        let r = root.resolver;
        // The link's target is made inside the root, as the container's `mkdir -p` would.
        let d = root.mkdir_all(Path::new("esc/a/b"), 0o755).unwrap();
        let inside = mirror.join("a/b");
        assert_eq!(root.fd_path(d.as_fd()).unwrap(), inside, "{r:?}");
        let (dir, name) = root.parent(Path::new("up/esc/x"), true).unwrap();
        assert_eq!(name, "x");
        assert_eq!(root.fd_path(dir.as_fd()).unwrap(), mirror, "{r:?}");
        // A dangling link to the host: the file is created where it leads in the root.
        drop(root.open_file(Path::new("dangling"), libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap());
        assert!(mirror.join("new").is_file(), "{r:?}");
        std::fs::remove_file(mirror.join("new")).unwrap();
        // O_NOFOLLOW refuses the link itself.
        let e = root.open_file(Path::new("dangling"), libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW, 0o644).unwrap_err();
        assert!(matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ELOOP)), "{r:?} {e}");
    }
    host_untouched(&f);
}

#[test]
fn walk_reports_where_a_create_goes() {
    let f = fixture();
    for root in both(&f) {
        match root.walk(Path::new("/etc/new"), Last::NoFollow).unwrap() {
            Walked::Missing { parent, name } => {
                assert_eq!(name, "new");
                assert_eq!(root.fd_path(parent.as_fd()).unwrap(), f.root.join("etc"));
            }
            Walked::Found(_) => panic!("{:?}: /etc/new found", root.resolver),
        }
        // A missing middle component is an error, not a place to create.
        let e = root.walk(Path::new("/nope/new"), Last::Follow).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // A file in the middle of a path.
        let e = root.mkdir_all(Path::new("/etc/passwd/x"), 0o755).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{:?}", root.resolver);
    }
}

#[test]
fn proc_fd_path_formats_without_allocating() {
    let mut buf = [0u8; 32];
    for (fd, want) in [(0, "/proc/self/fd/0"), (7, "/proc/self/fd/7"), (1234567, "/proc/self/fd/1234567")] {
        let p = raw::proc_fd_path(fd, &mut buf);
        // SAFETY: proc_fd_path NUL-terminates within buf.
        let got = unsafe { std::ffi::CStr::from_ptr(p) };
        assert_eq!(got.to_str().unwrap(), want);
    }
}

#[test]
fn raw_mkdir_all_follows_links_inside_the_root() {
    let f = fixture();
    let root = Root::with_resolver(&f.root, Resolver::Kernel).unwrap();
    let mirror = f.root.join(f.host.strip_prefix("/").unwrap());
    for (path, want) in [
        ("esc/a/b", mirror.join("a/b")),
        ("/up/up/esc/c", mirror.join("c")),
        ("dangling/x", mirror.join("new/x")),
        ("./etc//d/../e", f.root.join("etc/e")),
        ("", f.root.clone()),
    ] {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: a NUL-terminated path and the root's fd.
        let fd = unsafe { raw::mkdir_all(root.as_fd().as_raw_fd(), c.as_ptr(), 0o755) };
        assert!(fd >= 0, "{path}: {}", io::Error::last_os_error());
        // SAFETY: mkdir_all returned a new fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        assert_eq!(root.fd_path(fd.as_fd()).unwrap(), want, "{path}");
        // The library's mkdir_all agrees.
        assert_eq!(root.fd_path(root.mkdir_all(Path::new(path), 0o755).unwrap().as_fd()).unwrap(), want, "{path}");
    }
    for (path, errno) in [("loop1/x", libc::ELOOP), ("etc/passwd/x", libc::ENOTDIR)] {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: as above.
        let fd = unsafe { raw::mkdir_all(root.as_fd().as_raw_fd(), c.as_ptr(), 0o755) };
        assert_eq!((fd, io::Error::last_os_error().raw_os_error()), (-1, Some(errno)), "{path}");
    }
    host_untouched(&f);
}
