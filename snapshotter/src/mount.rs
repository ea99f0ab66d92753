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

/// An overlay's mount data, naming its directories relative to their common parent, so
/// the length does not grow with the store's path: 127 layers fit whatever `RDOCK_ROOT` is.
#[derive(Debug)]
pub struct OverlayData {
    /// The directories' common parent.
    pub base: PathBuf,
    /// Lower dirs, top first, then upper and work, each relative to `base` (absolute when
    /// outside it).
    lower: Vec<String>,
    upper_work: Option<(String, String)>,
}

impl OverlayData {
    /// The option string for a process that changes into `base` first (a sandbox's
    /// single-threaded child).
    pub fn relative(&self) -> String {
        self.render("")
    }

    /// The option string naming `base` through `fd`, an open descriptor of it in the
    /// mounting process's own mount namespace (overlayfs refuses another namespace's).
    pub fn through_fd(&self, fd: i32) -> String {
        self.render(&format!("/proc/self/fd/{fd}/"))
    }

    fn render(&self, prefix: &str) -> String {
        let at = |p: &String| if p.starts_with('/') { p.clone() } else { format!("{prefix}{p}") };
        let mut opts = format!("lowerdir={}", self.lower.iter().map(at).collect::<Vec<_>>().join(":"));
        if let Some((u, w)) = &self.upper_work {
            opts.push_str(&format!(",upperdir={},workdir={}", at(u), at(w)));
        }
        // index=off and metacopy=off keep upper dirs plain, portable layer diffs.
        opts.push_str(",index=off,metacopy=off");
        opts
    }
}

impl MountSpec {
    /// The overlay's mount data, checked against the kernel's limits; None for a bind.
    pub fn overlay_options(&self, key: &str) -> Result<Option<OverlayData>, SnapshotError> {
        let MountSpec::Overlay { lower, upper, work } = self else {
            return Ok(None);
        };
        if lower.len() > rdock_imagespec::MAX_LAYERS {
            return Err(SnapshotError::TooManyLayers { key: key.to_string(), layers: lower.len() });
        }
        // Absolute first: the data names the layers relative to their common parent, or
        // through a descriptor of it, and a relative path would be read from elsewhere.
        let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let (lower, upper, work): (Vec<PathBuf>, Option<PathBuf>, Option<PathBuf>) =
            (lower.iter().map(absolute).collect(), upper.as_ref().map(absolute), work.as_ref().map(absolute));
        let all: Vec<&PathBuf> = lower.iter().chain(&upper).chain(&work).collect();
        let base = common_parent(&all);
        let name = |p: &PathBuf| match p.strip_prefix(&base) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
            _ => p.display().to_string(),
        };
        let data = OverlayData {
            lower: lower.iter().map(name).collect(),
            upper_work: upper.as_ref().zip(work.as_ref()).map(|(u, w)| (name(u), name(w))),
            base,
        };
        if data.relative().len() >= PAGE {
            return Err(SnapshotError::TooManyLayers { key: key.to_string(), layers: lower.len() });
        }
        Ok(Some(data))
    }

    /// Mounts at `target` in the calling process's mount namespace.
    pub fn mount_at(&self, target: &Path) -> Result<(), SnapshotError> {
        match self {
            MountSpec::Overlay { .. } => {
                let Some(data) = self.overlay_options(&target.display().to_string())? else { return Ok(()) };
                let fd = rdock_inroot::open_at(libc::AT_FDCWD, data.base.as_os_str(), libc::O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(|e| SnapshotError::io(&data.base, e))?;
                let opts = data.through_fd(std::os::fd::AsRawFd::as_raw_fd(&fd));
                if opts.len() >= PAGE {
                    return Err(SnapshotError::TooManyLayers { key: target.display().to_string(), layers: data.lower.len() });
                }
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

/// The deepest directory that holds every path (their parent, for one).
fn common_parent(paths: &[&PathBuf]) -> PathBuf {
    let mut base: PathBuf = paths.first().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    while !paths.iter().all(|p| p.starts_with(&base)) {
        if !base.pop() {
            return PathBuf::from("/");
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_name_layers_relative_to_their_parent() {
        let root = PathBuf::from(format!("/{}", "long/".repeat(60)));
        let lower: Vec<PathBuf> = (1..=127).rev().map(|i| root.join(format!("snapshots/{i}/fs"))).collect();
        let spec = MountSpec::Overlay { lower, upper: Some(root.join("snapshots/200/fs")), work: Some(root.join("snapshots/200/work")) };
        let data = spec.overlay_options("k").unwrap().unwrap();
        assert_eq!(data.base, root.join("snapshots"));
        let rel = data.relative();
        assert!(rel.starts_with("lowerdir=127/fs:126/fs:"), "{rel}");
        assert!(rel.ends_with("1/fs,upperdir=200/fs,workdir=200/work,index=off,metacopy=off"), "{rel}");
        assert!(data.through_fd(7).starts_with("lowerdir=/proc/self/fd/7/127/fs:/proc/self/fd/7/126/fs"));
        assert!(data.through_fd(7).len() < PAGE);
    }
}
