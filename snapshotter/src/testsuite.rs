//! A test suite every [`Snapshotter`] implementation must pass, after containerd's
//! `snapshots/testsuite`: the verbs' rules (kinds, parents, names, removal) and what a
//! mounted snapshot shows (layers stacking, deletions hiding lower files, views read-only,
//! modes and owners surviving a commit). Each check gets a fresh snapshotter and a scratch
//! directory to mount in; it panics, as a test does, when the implementation is wrong.
//!
//! The mounting checks need root (mount(2)), as the rest of rdock's tests do. Run the
//! suite for an implementation with one `#[test]` per entry of [`CHECKS`]; see
//! `tests/suite.rs` for the overlay snapshotter.

use crate::{Kind, MountSpec, Mounted, SnapshotError, Snapshotter};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// One check: its name and what it does with a fresh snapshotter and a scratch directory.
pub struct Check {
    /// The check's name.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(&dyn Snapshotter, &Path),
}

/// Every check of the suite.
pub const CHECKS: &[Check] = &[
    Check { name: "commit_and_view", run: commit_and_view },
    Check { name: "layers_stack", run: layers_stack },
    Check { name: "deleted_files_hide_lower_ones", run: deleted_files_hide_lower_ones },
    Check { name: "removed_directories_hide_lower_trees", run: removed_directories_hide_lower_trees },
    Check { name: "views_are_read_only", run: views_are_read_only },
    Check { name: "modes_and_owners_survive_commit", run: modes_and_owners_survive_commit },
    Check { name: "a_deep_chain_shows_every_layer", run: a_deep_chain_shows_every_layer },
    Check { name: "keys_are_unique", run: keys_are_unique },
    Check { name: "only_active_snapshots_commit", run: only_active_snapshots_commit },
    Check { name: "parents_must_be_committed", run: parents_must_be_committed },
    Check { name: "parents_outlive_children", run: parents_outlive_children },
    Check { name: "stat_and_walk_report_kinds_and_parents", run: stat_and_walk_report_kinds_and_parents },
    Check { name: "usage_counts_the_snapshots_own_files", run: usage_counts_the_snapshots_own_files },
    Check { name: "mounts_of_an_active_snapshot_are_its_prepare_mounts", run: mounts_of_an_active_snapshot_are_its_prepare_mounts },
];

/// A change to make in a layer.
enum Change<'a> {
    Write(&'a str, &'a str),
    Remove(&'a str),
}

/// Prepares `key` on `parent`, makes `changes` through its mount, and commits it as `name`.
fn layer(s: &dyn Snapshotter, scratch: &Path, name: &str, parent: Option<&str>, changes: &[Change<'_>]) {
    let key = format!("{name}-active");
    let spec = s.prepare(&key, parent).expect("prepare");
    {
        let m = Mounted::new(&spec, scratch.join(&key)).expect("mount the active snapshot");
        for c in changes {
            match c {
                Change::Write(path, text) => {
                    let p = m.path().join(path);
                    std::fs::create_dir_all(p.parent().expect("a path under the root")).expect("mkdir");
                    std::fs::write(&p, text).expect("write");
                }
                Change::Remove(path) => {
                    let p = m.path().join(path);
                    if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.expect("remove");
                }
            }
        }
    }
    s.commit(name, &key).expect("commit");
}

/// What `path` holds in a read-only view of `parent` (None: absent).
fn read(s: &dyn Snapshotter, scratch: &Path, parent: &str, path: &str) -> Option<String> {
    let key = format!("view-{parent}-{}", path.replace('/', "_"));
    let spec = s.view(&key, Some(parent)).expect("view");
    let text = {
        let m = Mounted::new(&spec, scratch.join(&key)).expect("mount the view");
        std::fs::read_to_string(m.path().join(path)).ok()
    };
    s.remove(&key).expect("remove the view");
    text
}

fn commit_and_view(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "base", None, &[Change::Write("foo", "1")]);
    assert_eq!(read(s, scratch, "base", "foo").as_deref(), Some("1"));
}

fn layers_stack(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "base", None, &[Change::Write("foo", "1"), Change::Write("keep", "k")]);
    layer(s, scratch, "top", Some("base"), &[Change::Write("foo", "2"), Change::Write("bar", "b")]);
    assert_eq!(read(s, scratch, "top", "foo").as_deref(), Some("2"), "the upper layer wins");
    assert_eq!(read(s, scratch, "top", "bar").as_deref(), Some("b"));
    assert_eq!(read(s, scratch, "top", "keep").as_deref(), Some("k"), "what the upper layer leaves shows through");
    assert_eq!(read(s, scratch, "base", "foo").as_deref(), Some("1"), "a committed snapshot never changes");
}

fn deleted_files_hide_lower_ones(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "base", None, &[Change::Write("foo", "1")]);
    layer(s, scratch, "top", Some("base"), &[Change::Remove("foo")]);
    assert_eq!(read(s, scratch, "top", "foo"), None);
    layer(s, scratch, "again", Some("top"), &[Change::Write("foo", "3")]);
    assert_eq!(read(s, scratch, "again", "foo").as_deref(), Some("3"), "a path deleted below can be written again");
}

fn removed_directories_hide_lower_trees(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "base", None, &[Change::Write("d/x", "x"), Change::Write("d/e/y", "y")]);
    layer(s, scratch, "top", Some("base"), &[Change::Remove("d")]);
    assert_eq!(read(s, scratch, "top", "d/x"), None);
    assert_eq!(read(s, scratch, "top", "d/e/y"), None);
    layer(s, scratch, "again", Some("top"), &[Change::Write("d/z", "z")]);
    assert_eq!(read(s, scratch, "again", "d/x"), None, "a directory made again is empty but for what is new");
    assert_eq!(read(s, scratch, "again", "d/z").as_deref(), Some("z"));
}

fn views_are_read_only(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "base", None, &[Change::Write("foo", "1")]);
    let spec = s.view("v", Some("base")).expect("view");
    let m = Mounted::new(&spec, scratch.join("v")).expect("mount");
    let err = std::fs::write(m.path().join("new"), "x").expect_err("a view takes no writes");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

fn modes_and_owners_survive_commit(s: &dyn Snapshotter, scratch: &Path) {
    let spec = s.prepare("a", None).expect("prepare");
    {
        let m = Mounted::new(&spec, scratch.join("a")).expect("mount");
        std::fs::create_dir(m.path().join("private")).expect("mkdir");
        std::fs::set_permissions(m.path().join("private"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(m.path().join("owned"), "x").expect("write");
        std::os::unix::fs::chown(m.path().join("owned"), Some(1234), Some(5678)).expect("chown");
    }
    s.commit("base", "a").expect("commit");
    let spec = s.view("v", Some("base")).expect("view");
    let m = Mounted::new(&spec, scratch.join("v")).expect("mount");
    let dir = std::fs::metadata(m.path().join("private")).expect("stat");
    assert_eq!(dir.mode() & 0o7777, 0o700);
    let file = std::fs::metadata(m.path().join("owned")).expect("stat");
    assert_eq!((file.uid(), file.gid()), (1234, 5678));
}

fn a_deep_chain_shows_every_layer(s: &dyn Snapshotter, scratch: &Path) {
    let mut parent: Option<String> = None;
    for i in 0..20 {
        let name = format!("l{i}");
        let path = format!("f{i}");
        layer(s, scratch, &name, parent.as_deref(), &[Change::Write(&path, &name)]);
        parent = Some(name);
    }
    let top = parent.expect("twenty layers");
    for i in [0, 7, 19] {
        assert_eq!(read(s, scratch, &top, &format!("f{i}")), Some(format!("l{i}")));
    }
}

fn keys_are_unique(s: &dyn Snapshotter, _scratch: &Path) {
    s.prepare("k", None).expect("prepare");
    assert!(matches!(s.prepare("k", None), Err(SnapshotError::Exists(_))), "an active key is taken");
    assert!(matches!(s.view("k", None), Err(SnapshotError::Exists(_))), "keys and view keys share one namespace");
    s.commit("name", "k").expect("commit");
    s.prepare("k2", None).expect("prepare");
    assert!(matches!(s.commit("name", "k2"), Err(SnapshotError::Exists(_))), "a committed name is taken");
    assert_eq!(s.stat("k2").expect("the losing snapshot is still there").kind, Kind::Active);
}

fn only_active_snapshots_commit(s: &dyn Snapshotter, _scratch: &Path) {
    s.prepare("a", None).expect("prepare");
    s.commit("base", "a").expect("commit");
    s.view("v", Some("base")).expect("view");
    assert!(matches!(s.commit("x", "v"), Err(SnapshotError::WrongKind { .. })), "a view does not commit");
    assert!(matches!(s.commit("y", "base"), Err(SnapshotError::WrongKind { .. })), "a committed snapshot does not commit again");
    assert!(matches!(s.commit("z", "missing"), Err(SnapshotError::NotFound(_))));
}

fn parents_must_be_committed(s: &dyn Snapshotter, _scratch: &Path) {
    s.prepare("a", None).expect("prepare");
    assert!(matches!(s.prepare("b", Some("a")), Err(SnapshotError::WrongKind { .. })), "an active snapshot is no parent");
    assert!(matches!(s.view("c", Some("missing")), Err(SnapshotError::NotFound(_))));
}

fn parents_outlive_children(s: &dyn Snapshotter, _scratch: &Path) {
    s.prepare("a", None).expect("prepare");
    s.commit("base", "a").expect("commit");
    s.prepare("child", Some("base")).expect("prepare");
    assert!(matches!(s.remove("base"), Err(SnapshotError::InUse(_))));
    s.remove("child").expect("remove the child");
    s.remove("base").expect("then the parent");
    assert!(matches!(s.stat("base"), Err(SnapshotError::NotFound(_))));
    assert!(matches!(s.remove("base"), Err(SnapshotError::NotFound(_))));
}

fn stat_and_walk_report_kinds_and_parents(s: &dyn Snapshotter, _scratch: &Path) {
    s.prepare("a", None).expect("prepare");
    s.commit("base", "a").expect("commit");
    s.prepare("active", Some("base")).expect("prepare");
    s.view("view", Some("base")).expect("view");
    let base = s.stat("base").expect("stat");
    assert_eq!((base.kind, base.parent), (Kind::Committed, None));
    let active = s.stat("active").expect("stat");
    assert_eq!((active.kind, active.parent.as_deref()), (Kind::Active, Some("base")));
    assert_eq!(s.stat("view").expect("stat").kind, Kind::View);
    let mut all: Vec<(String, Kind)> = s.walk().expect("walk").into_iter().map(|i| (i.key, i.kind)).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all, vec![("active".into(), Kind::Active), ("base".into(), Kind::Committed), ("view".into(), Kind::View)]);
}

fn usage_counts_the_snapshots_own_files(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "base", None, &[Change::Write("big", &"x".repeat(10_000))]);
    layer(s, scratch, "top", Some("base"), &[Change::Write("d/small", "12345")]);
    let u = s.usage("top").expect("usage");
    assert_eq!(u.size, 5, "the parent's files are not the child's");
    assert_eq!(u.inodes, 2, "d and d/small");
    assert_eq!(s.usage("base").expect("usage").size, 10_000);
}

fn mounts_of_an_active_snapshot_are_its_prepare_mounts(s: &dyn Snapshotter, _scratch: &Path) {
    s.prepare("a", None).expect("prepare");
    s.commit("base", "a").expect("commit");
    let prepared = s.prepare("b", Some("base")).expect("prepare");
    assert_eq!(s.mounts("b").expect("mounts"), prepared);
    assert!(!matches!(prepared, MountSpec::Bind { readonly: true, .. }), "an active snapshot is writable");
    assert!(matches!(s.mounts("missing"), Err(SnapshotError::NotFound(_))));
}
