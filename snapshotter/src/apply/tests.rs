use super::*;
use crate::whiteout::{is_opaque, is_overlay_whiteout};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A tar entry for [`tar_of`].
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Node(&'a str, tar::EntryType, u32, u32),
}

/// Writes the name bytes straight into the header: the tar crate refuses `..` in set_path.
fn raw_name(h: &mut tar::Header, path: &str) {
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match e {
            E::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (p, d)
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, b"")
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                let kind = if matches!(e, E::Symlink(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                h.set_entry_type(kind);
                h.set_link_name(t).unwrap();
                (p, b"")
            }
            E::Node(p, kind, major, minor) => {
                h.set_entry_type(*kind);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (p, b"")
            }
        };
        raw_name(&mut h, path);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A root to apply into and a host directory beside it with a canary file.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    host: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let host = tmp.path().join("host");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("canary"), "host").unwrap();
    Fixture { _tmp: tmp, root, host }
}

/// The host directory as it was: the canary, an empty `sub`, no opaque marker, no new file.
fn assert_host_untouched(f: &Fixture, attack: &str) {
    let mut names: Vec<_> = walkdir::WalkDir::new(&f.host).min_depth(1).into_iter().map(|e| e.unwrap().path().to_path_buf()).collect();
    names.sort();
    assert_eq!(names, vec![f.host.join("canary"), f.host.join("sub")], "{attack}: the host directory changed");
    let md = std::fs::symlink_metadata(f.host.join("canary")).unwrap();
    assert!(md.is_file(), "{attack}: the canary was replaced");
    assert_eq!(std::fs::read_to_string(f.host.join("canary")).unwrap(), "host", "{attack}");
    assert!(!is_opaque(&f.host.join("sub")) && !is_opaque(&f.host), "{attack}: a host directory was made opaque");
}

#[test]
fn refuses_entries_that_escape() {
    let f = fixture();
    for attack in [&[E::File("../host/canary", b"x")][..], &[E::Hardlink("x", "../host/canary")]] {
        let err = apply_layer(&mut &tar_of(attack)[..], &f.root, "test").unwrap_err();
        assert!(matches!(err, SnapshotError::PathEscape { .. }), "{err}");
    }
    assert_host_untouched(&f, "../");
}

/// Issue 13's reproduced attacks: a symlink to a host directory, then a whiteout, a nested
/// whiteout, an opaque marker, a file, a hard link and a device node through it. Applied
/// into a fresh root each, none reaches the host, whether the layer fails or applies.
#[test]
fn links_to_the_host_never_reach_it() {
    type Attack = Box<dyn Fn(&str) -> Vec<u8>>;
    let attacks: Vec<(&str, Attack)> = vec![
        ("whiteout", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::File("esc/.wh.canary", b"")]))),
        ("nested whiteout", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::File("esc/a/b/.wh.x", b"")]))),
        ("opaque", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::File("esc/sub/.wh..wh..opq", b"")]))),
        ("file", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::File("esc/canary", b"pwned")]))),
        ("new file", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::File("esc/new", b"pwned")]))),
        ("dir", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::Dir("esc/sub/d")]))),
        ("hard link through a symlink", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::Hardlink("x", "esc/canary")]))),
        ("device", Box::new(|h| tar_of(&[E::Symlink("esc", h), E::Node("esc/dev", tar::EntryType::Block, 7, 0)]))),
        ("relative link", Box::new(|_| tar_of(&[E::Symlink("esc", "../../../../../../../../.."), E::File("esc/.wh.tmp", b"")]))),
        ("symlink replaces file", Box::new(|h| tar_of(&[E::File("f", b"1"), E::Symlink("f", h), E::File("f/.wh.canary", b"")]))),
        ("dir then symlink", Box::new(|h| tar_of(&[E::Dir("d"), E::File("d/x", b""), E::Symlink("d", h), E::File("d/.wh.canary", b"")]))),
    ];
    for (name, make) in attacks {
        let f = fixture();
        let layer = make(f.host.to_str().unwrap());
        let _ = apply_layer(&mut &layer[..], &f.root, name);
        assert_host_untouched(&f, name);
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let data = tar_of(&[E::File("d/.wh.gone", b""), E::File("e/.wh..wh..opq", b"")]);
    let d = apply_layer(&mut &data[..], dir.path(), "test").unwrap();
    assert_eq!(d, Digest::of(&data));
    let md = std::fs::symlink_metadata(dir.path().join("d/gone")).unwrap();
    assert!(is_overlay_whiteout(&md));
    assert!(is_opaque(&dir.path().join("e")));
}

/// Issue 13 (6): device nodes and FIFOs were unpacked as empty regular files.
#[test]
fn devices_and_fifos_are_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let data = tar_of(&[
        E::Node("dev/null", tar::EntryType::Char, 1, 3),
        E::Node("dev/loop9", tar::EntryType::Block, 7, 9),
        E::Node("run/fifo", tar::EntryType::Fifo, 0, 0),
        E::File("a", b"hello"),
        E::Hardlink("b", "a"),
        E::Symlink("c", "/a"),
    ]);
    apply_layer(&mut &data[..], dir.path(), "test").unwrap();
    let md = |p: &str| std::fs::symlink_metadata(dir.path().join(p)).unwrap();
    assert!(md("dev/null").file_type().is_char_device());
    assert_eq!(md("dev/null").rdev(), libc::makedev(1, 3));
    assert!(md("dev/loop9").file_type().is_block_device());
    assert_eq!(md("dev/loop9").rdev(), libc::makedev(7, 9));
    assert!(md("run/fifo").file_type().is_fifo());
    assert_eq!(md("a").ino(), md("b").ino(), "hard link");
    assert_eq!(std::fs::read_link(dir.path().join("c")).unwrap(), Path::new("/a"));
    // And back: the layer written from this tree holds the same kinds of entry.
    let mut back = tar::Archive::new(std::io::Cursor::new(crate::write_tree_tar(dir.path(), Vec::new()).unwrap()));
    let kinds: Vec<(String, tar::EntryType)> = back
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path().unwrap().display().to_string(), e.header().entry_type())
        })
        .filter(|(p, _)| !p.ends_with('/'))
        .collect();
    for want in [
        ("dev/null".to_string(), tar::EntryType::Char),
        ("dev/loop9".to_string(), tar::EntryType::Block),
        ("run/fifo".to_string(), tar::EntryType::Fifo),
        ("b".to_string(), tar::EntryType::Link),
    ] {
        assert!(kinds.contains(&want), "{want:?} not in {kinds:?}");
    }
}

#[test]
fn xattrs_apply_but_overlay_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..]), ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "d/", std::io::empty()).unwrap();
    let data = b.into_inner().unwrap();
    apply_layer(&mut &data[..], dir.path(), "test").unwrap();
    let d = dir.path().join("d");
    assert!(!is_opaque(&d), "trusted.overlay.opaque taken from a layer");
    let c = CString::new(d.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 8];
    // SAFETY: NUL-terminated strings and a buffer of its stated length.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), c"user.k".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 1, "user.k not set");
    assert_eq!(buf[0], b'v');
}

/// Files are written 1 MiB at a time: one larger than the buffer, one of exactly its size,
/// an empty one and a small one come out byte for byte.
#[test]
fn files_of_every_size_come_out_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(3 << 20) + 12_345).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let exact = vec![7u8; 1 << 20];
    let data = tar_of(&[E::File("big", &big), E::File("exact", &exact), E::File("empty", b""), E::File("small", b"abc")]);
    apply_layer(&mut &data[..], dir.path(), "test").unwrap();
    let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
    assert!(read("big") == big, "the large file differs");
    assert!(read("exact") == exact);
    assert_eq!(read("empty"), b"");
    assert_eq!(read("small"), b"abc");
}
