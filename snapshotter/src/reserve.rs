//! Room to recover in: a store whose filesystem fills up must still let the next command
//! record its clean-up (SQLite appends to its log even to delete rows). While the disk has
//! room the store keeps a 2 MiB file (counted with the metadata by `rdock du` and the cap); a command that opens the store with (almost) no room
//! left deletes it, so its database writes and the removal of what filled the disk go
//! through, and a later command, once there is room again, puts it back.

use std::path::Path;

/// The reserve's size: many times what the database's log needs to delete a step's rows.
const RESERVE: u64 = 2 << 20;

/// The reserve's name in the store's root.
pub const RESERVE_FILE: &str = "reserve";

/// Free bytes for unprivileged writers on the filesystem holding `root` (what SQLite and
/// layer writes get), or None if unknown.
fn available(root: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(root).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Releases the reserve when space is short, makes it when there is plenty.
pub(crate) fn keep(root: &Path) {
    let path = root.join(RESERVE_FILE);
    let Some(free) = available(root) else { return };
    if free < RESERVE / 2 {
        let _ = std::fs::remove_file(&path);
    } else if free > 4 * RESERVE && !path.exists() {
        // Written beside and renamed into place: a reserve is either whole or absent.
        let tmp = root.join("tmp").join(format!("reserve-{}", std::process::id()));
        let made = std::fs::File::create(&tmp).and_then(|f| {
            nix::fcntl::posix_fallocate(&f, 0, RESERVE as i64).map_err(std::io::Error::from)?;
            f.sync_all()
        });
        if made.is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
