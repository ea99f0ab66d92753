//! The snapshotter test suite (`rdock_snapshotter::testsuite`) against the overlay
//! snapshotter, one test per check, each on a store of its own.

use rdock_snapshotter::Store;
use rdock_snapshotter::testsuite::CHECKS;

fn run(name: &str) {
    let check = CHECKS.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}"));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let scratch = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    (check.run)(store.snapshots().as_ref(), &scratch);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run(stringify!($name)) })*

        #[test]
        fn every_check_of_the_suite_runs_here() {
            let here = [$(stringify!($name)),*];
            let missing: Vec<&str> = CHECKS.iter().map(|c| c.name).filter(|n| !here.contains(n)).collect();
            assert!(missing.is_empty(), "checks not run: {missing:?}");
        }
    };
}

suite!(
    commit_and_view,
    layers_stack,
    deleted_files_hide_lower_ones,
    removed_directories_hide_lower_trees,
    views_are_read_only,
    modes_and_owners_survive_commit,
    a_deep_chain_shows_every_layer,
    keys_are_unique,
    only_active_snapshots_commit,
    parents_must_be_committed,
    parents_outlive_children,
    stat_and_walk_report_kinds_and_parents,
    usage_counts_the_snapshots_own_files,
    mounts_of_an_active_snapshot_are_its_prepare_mounts,
);
