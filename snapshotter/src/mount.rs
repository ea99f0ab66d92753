//! Mount descriptions (containerd's `Mount`) and a guard that unmounts on drop.

use crate::SnapshotError;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::{Path, PathBuf};

/// How to make a snapshot appear at a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// An overlay: lower dirs top first, and for writable mounts an upper and work dir.
    Overlay {
        /// Read-only layers, top first.
        lower: Vec<PathBuf>,
        /// The writable layer.
        upper: Option<PathBuf>,
        /// Overlay's work dir, beside `upper`.
        work: Option<PathBuf>,
    },
    /// A bind mount of one directory.
    Bind {
        /// The directory.
        source: PathBuf,
        /// Mounted read-only.
        readonly: bool,
    },
}

/// The kernel limits mount data to one page.
const PAGE: usize = 4096;

impl MountSpec {
    /// The overlay option string, checked against the kernel's limit.
    pub fn overlay_options(&self, key: &str) -> Result<Option<String>, SnapshotError> {
        let MountSpec::Overlay { lower, upper, work } = self else {
            return Ok(None);
        };
        let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let mut opts = format!("lowerdir={}", lowers.join(":"));
        if let (Some(u), Some(w)) = (upper, work) {
            opts.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
        }
        // index=off and metacopy=off keep upper dirs plain, portable layer diffs.
        opts.push_str(",index=off,metacopy=off");
        if opts.len() >= PAGE {
            return Err(SnapshotError::TooManyLayers { key: key.to_string(), len: opts.len() });
        }
        Ok(Some(opts))
    }

    /// Mounts at `target` in the calling process's mount namespace.
    pub fn mount_at(&self, target: &Path) -> Result<(), SnapshotError> {
        match self {
            MountSpec::Overlay { .. } => {
                let opts = self.overlay_options(&target.display().to_string())?.unwrap_or_default();
                mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
                    .map_err(|errno| SnapshotError::Mount { what: format!("overlay ({opts})"), target: target.to_path_buf(), errno })
            }
            MountSpec::Bind { source, readonly } => {
                mount(Some(source.as_path()), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(|errno| {
                    SnapshotError::Mount { what: format!("bind {}", source.display()), target: target.to_path_buf(), errno }
                })?;
                if *readonly {
                    mount(None::<&str>, target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
                        .map_err(|errno| SnapshotError::Mount { what: "read-only remount".into(), target: target.to_path_buf(), errno })?;
                }
                Ok(())
            }
        }
    }
}

/// A mounted snapshot; unmounted (lazily, so a busy mount never blocks) when dropped.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    remove_dir: bool,
}

impl Mounted {
    /// Mounts `spec` at a fresh directory `target` (created and removed by the guard).
    pub fn new(spec: &MountSpec, target: PathBuf) -> Result<Mounted, SnapshotError> {
        std::fs::create_dir_all(&target).map_err(|e| SnapshotError::io(&target, e))?;
        if let Err(e) = spec.mount_at(&target) {
            let _ = std::fs::remove_dir(&target);
            return Err(e);
        }
        Ok(Mounted { target, remove_dir: true })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount2(&self.target, MntFlags::MNT_DETACH);
        if self.remove_dir {
            let _ = std::fs::remove_dir(&self.target);
        }
    }
}
