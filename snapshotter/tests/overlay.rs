//! Real overlay mounts (the tests run as root): prepare, write, delete, commit, diff.

use rdock_snapshotter::{Mounted, Snapshotter, Store, apply_layer};
use std::io::Read;

fn layer_entries(store: &Store, name: &str) -> Vec<(String, tar::EntryType)> {
    let l = store.layers().layer(name).unwrap();
    // Stored as an uncompressed tar: the blob is the diff.
    assert_eq!((l.blob.clone(), l.media_type.as_str()), (l.diff_id.clone(), rdock_imagespec::MEDIA_TYPE_OCI_LAYER));
    let mut raw = Vec::new();
    store.content().open(&l.blob).unwrap().read_to_end(&mut raw).unwrap();
    assert_eq!(rdock_imagespec::Digest::of(&raw), l.diff_id, "diff id is the sha256 of the uncompressed tar");
    let mut a = tar::Archive::new(&raw[..]);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path().unwrap().display().to_string(), e.header().entry_type())
        })
        .collect()
}

#[test]
fn diff_of_an_overlay_upper_has_oci_whiteouts_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let snaps = store.snapshots();

    // Base: a/keep, a/gone, d/old, d/sub/x
    let m = snaps.prepare("base-active", None).unwrap();
    {
        let mnt = Mounted::new(&m, dir.path().join("m1")).unwrap();
        let p = mnt.path();
        std::fs::create_dir_all(p.join("a")).unwrap();
        std::fs::write(p.join("a/keep"), "k").unwrap();
        std::fs::write(p.join("a/gone"), "g").unwrap();
        std::fs::create_dir_all(p.join("d/sub")).unwrap();
        std::fs::write(p.join("d/old"), "o").unwrap();
        std::fs::write(p.join("d/sub/x"), "x").unwrap();
    }
    snaps.commit("base", "base-active").unwrap();

    // Child: delete a/gone, replace directory d with a new one, add b.
    let m = snaps.prepare("child-active", Some("base")).unwrap();
    {
        let mnt = Mounted::new(&m, dir.path().join("m2")).unwrap();
        let p = mnt.path();
        std::fs::remove_file(p.join("a/gone")).unwrap();
        std::fs::remove_dir_all(p.join("d")).unwrap();
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/new"), "n").unwrap();
        std::fs::write(p.join("b"), "b").unwrap();
    }
    snaps.commit("child", "child-active").unwrap();

    let entries = layer_entries(&store, "child");
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["a/", "a/.wh.gone", "b", "d/", "d/.wh..wh..opq", "d/new"]);

    // The committed view shows the merged tree.
    let v = snaps.view("child-view", Some("child")).unwrap();
    {
        let mnt = Mounted::new(&v, dir.path().join("m3")).unwrap();
        assert!(mnt.path().join("a/keep").exists());
        assert!(!mnt.path().join("a/gone").exists());
        assert!(!mnt.path().join("d/old").exists());
        assert!(mnt.path().join("d/new").exists());
        assert!(std::fs::write(mnt.path().join("z"), "no").is_err(), "views are read-only");
    }
    snaps.remove("child-view").unwrap();
    assert!(snaps.remove("base").is_err(), "a parent cannot be removed");
}

#[test]
fn identical_content_gives_identical_layer_digests() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let snaps = store.snapshots();
    for name in ["one", "two"] {
        let key = format!("{name}-active");
        snaps.prepare(&key, None).unwrap();
        let fs = snaps.fs_dir(&key).unwrap();
        std::fs::create_dir_all(fs.join("etc")).unwrap();
        std::fs::write(fs.join("etc/conf"), "same").unwrap();
        let t = nix::sys::time::TimeSpec::new(1_700_000_000, 0);
        for p in ["etc/conf", "etc"] {
            nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &fs.join(p), &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
        }
        snaps.commit(name, &key).unwrap();
    }
    let a = store.layers().layer("one").unwrap();
    let b = store.layers().layer("two").unwrap();
    assert_eq!(a.blob, b.blob);
    assert_eq!(a.diff_id, b.diff_id);
}

#[test]
fn layers_round_trip_through_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let snaps = store.snapshots();
    snaps.prepare("src-active", None).unwrap();
    let fs = snaps.fs_dir("src-active").unwrap();
    std::fs::create_dir_all(fs.join("bin")).unwrap();
    std::fs::write(fs.join("bin/tool"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("tool", fs.join("bin/alias")).unwrap();
    std::fs::hard_link(fs.join("bin/tool"), fs.join("bin/hard")).unwrap();
    snaps.commit("src", "src-active").unwrap();
    let l = store.layers().layer("src").unwrap();
    let imported = store.layers().import_layer("copy", None, &l.blob, &l.media_type).unwrap();
    assert_eq!(imported.diff_id, l.diff_id);
    let out = snaps.fs_dir("copy").unwrap();
    assert_eq!(std::fs::read_link(out.join("bin/alias")).unwrap().to_str(), Some("tool"));
    assert_eq!(std::fs::read(out.join("bin/hard")).unwrap(), b"#!/bin/sh\n");
    // Re-diffing the imported snapshot gives the same layer.
    let mut raw = Vec::new();
    store.content().open(&l.blob).unwrap().read_to_end(&mut raw).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(apply_layer(&mut &raw[..], scratch.path(), "again").unwrap(), l.diff_id);
}

#[test]
fn abandoned_active_snapshots_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        // A key written by a process that no longer exists.
        store.snapshots().prepare("build-999999999-0-0", None).unwrap();
        std::fs::write(dir.path().join("tmp/blob-999999999-3"), "partial").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.snapshots().exists("build-999999999-0-0").unwrap());
    assert!(!dir.path().join("tmp/blob-999999999-3").exists());
}
