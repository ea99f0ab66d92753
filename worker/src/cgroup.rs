//! Resource bounds: every build step and container runs in a cgroup of its own, with a
//! pids limit by default (a fork bomb fails its step, not the machine) and memory and CPU
//! limits when asked for.
//!
//! Both cgroup versions are handled, per controller: where a controller is bound to a v1
//! hierarchy (as on hosts booted with the hybrid layout) its cgroup is made there,
//! otherwise in the v2 unified hierarchy. Cgroups are made under rdock's own cgroup
//! (`…/rdock/PID-N`), so a session's or a CI job's limits still bound its builds; on v2,
//! where a cgroup holding processes cannot hand controllers down, under the root's
//! `rdock` instead. The child joins by writing `0` (itself) before anything else, then takes
//! a cgroup namespace. On v1 it writes to `tasks`, which moves one thread without the
//! kernel's global threadgroup lock: the child is a single thread, and moving a process
//! through `cgroup.procs` waits for an RCU grace period (5 to 20 ms here), longer than the
//! rest of a step. Once the step has ended its cgroups are killed
//! and removed; those of an rdock that was killed are swept by the next one.

use crate::ExecError;
use std::path::{Path, PathBuf};

/// The pids limit of a build step or container when nothing else is configured: above
/// what a parallel build uses (podman's default is 2048), far below what takes a machine.
pub const DEFAULT_PIDS: u64 = 4096;

/// Limits for one step or container. `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tasks (processes and threads).
    pub pids: Option<u64>,
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPU time in thousandths of a CPU (`--cpus 1.5` is 1500).
    pub millicpus: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { pids: Some(DEFAULT_PIDS), memory: None, millicpus: None }
    }
}

/// How a controller is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    /// A v1 hierarchy: files named for the controller (`memory.limit_in_bytes`).
    V1,
    /// The unified hierarchy (`memory.max`).
    V2,
}

/// Where rdock's cgroups go for one controller.
#[derive(Debug, Clone)]
struct Place {
    controller: &'static str,
    version: Version,
    /// The `rdock` directory that holds the step cgroups.
    parent: PathBuf,
}

const CONTROLLERS: [&str; 3] = ["pids", "memory", "cpu"];

/// The cgroup mounts of this machine and this process's place in them, found once.
fn places() -> &'static [Place] {
    static PLACES: std::sync::OnceLock<Vec<Place>> = std::sync::OnceLock::new();
    PLACES.get_or_init(|| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        discover(&mountinfo, &own, &|p| std::fs::read_to_string(p).ok())
    })
}

/// Finds, for each controller, its hierarchy's mount and this process's cgroup in it.
fn discover(mountinfo: &str, own: &str, read: &dyn Fn(&Path) -> Option<String>) -> Vec<Place> {
    // (mount point, fstype, super options) of every cgroup mount.
    let mounts: Vec<(PathBuf, &str, Vec<&str>)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let opts = r.nth(1).unwrap_or("").split(',').collect();
            (fstype == "cgroup" || fstype == "cgroup2").then(|| (PathBuf::from(point.replace("\\040", " ")), fstype, opts))
        })
        .collect();
    // hierarchy controllers ("" for v2) → this process's path there.
    let own_path = |ctrl: &str| -> Option<String> {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            (ctrls.split(',').any(|c| c == ctrl) || (ctrl.is_empty() && ctrls.is_empty())).then(|| path.to_string())
        })
    };
    let join = |mount: &Path, path: &str| mount.join(path.trim_start_matches('/'));
    let mut places = Vec::new();
    for ctrl in CONTROLLERS {
        let v1 = mounts.iter().find(|(_, t, o)| *t == "cgroup" && o.contains(&ctrl));
        if let (Some((mount, _, _)), Some(path)) = (v1, own_path(ctrl)) {
            places.push(Place { controller: ctrl, version: Version::V1, parent: join(mount, &path).join("rdock") });
            continue;
        }
        let Some((mount, _, _)) = mounts.iter().find(|(_, t, _)| *t == "cgroup2") else { continue };
        let available = read(&mount.join("cgroup.controllers")).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == ctrl) {
            continue;
        }
        let path = own_path("").unwrap_or_else(|| "/".into());
        places.push(Place { controller: ctrl, version: Version::V2, parent: join(mount, &path).join("rdock") });
    }
    places
}

/// A step's or container's cgroups, one per hierarchy in use; killed and removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<(PathBuf, Version)>,
}

impl Cgroup {
    /// Makes the cgroups for `limits` (only the controllers a limit needs; the pids one
    /// always, to count and kill). Fails with what could not be set. The first call in a
    /// process sweeps what killed rdocks left.
    pub fn create(limits: &Limits) -> Result<Cgroup, ExecError> {
        sweep();
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!("{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut cg = Cgroup { dirs: Vec::new() };
        for ctrl in needed(limits) {
            let Some(place) = places().iter().find(|p| p.controller == ctrl) else {
                if ctrl == "pids" {
                    // No pids controller on this machine: the default bound is best effort.
                    continue;
                }
                return Err(ExecError::Setup(format!("cgroups: this machine has no {ctrl} controller for the limit asked")));
            };
            let parent = prepare_parent(place)?;
            let dir = parent.join(&name);
            if !cg.dirs.iter().any(|(d, _)| *d == dir) {
                // Pushed first: a failure below still removes it.
                cg.dirs.push((dir.clone(), place.version.clone()));
                std::fs::create_dir(&dir).map_err(|e| ExecError::Io(dir.clone(), e))?;
            }
            for (file, value) in writes(ctrl, &place.version, limits) {
                let file = dir.join(file);
                std::fs::write(&file, &value).map_err(|e| ExecError::Io(file.clone(), e))?;
            }
        }
        Ok(cg)
    }

    /// The files the step's first process (a single thread) writes `0` into to join:
    /// `tasks` on v1, `cgroup.procs` on v2.
    pub fn join_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(d, v)| d.join(if *v == Version::V1 { "tasks" } else { "cgroup.procs" })).collect()
    }

    /// True if the pids limit refused a fork (`pids.events`' max count is not zero).
    pub fn hit_pids_limit(&self) -> bool {
        self.dirs.iter().any(|(d, _)| {
            std::fs::read_to_string(d.join("pids.events"))
                .ok()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("max ").map(|n| n.trim() != "0")))
                .unwrap_or(false)
        })
    }

    /// True if the memory limit was reached (v1's `memory.failcnt`, v2's OOM kills).
    pub fn hit_memory_limit(&self) -> bool {
        self.dirs.iter().any(|(d, _)| {
            let v1 = std::fs::read_to_string(d.join("memory.failcnt")).ok().map(|t| t.trim() != "0");
            let v2 = std::fs::read_to_string(d.join("memory.events"))
                .ok()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim() != "0")));
            v1.or(v2).unwrap_or(false)
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for (d, _) in &self.dirs {
            remove(d);
        }
    }
}

/// The controllers `limits` needs (pids always: it counts and kills the step's tasks).
fn needed(limits: &Limits) -> Vec<&'static str> {
    let mut v = vec!["pids"];
    if limits.memory.is_some() {
        v.push("memory");
    }
    if limits.millicpus.is_some() {
        v.push("cpu");
    }
    v
}

/// The files to write for `controller` in a hierarchy of `version`: (name, value).
fn writes(controller: &str, version: &Version, limits: &Limits) -> Vec<(&'static str, String)> {
    match (controller, version) {
        ("pids", _) => limits.pids.map(|n| vec![("pids.max", n.to_string())]).unwrap_or_default(),
        ("memory", Version::V1) => limits.memory.map(|m| vec![("memory.limit_in_bytes", m.to_string())]).unwrap_or_default(),
        ("memory", Version::V2) => limits.memory.map(|m| vec![("memory.max", m.to_string())]).unwrap_or_default(),
        ("cpu", version) => {
            // A thousandth of a CPU is 100 µs of each 100 ms period; the kernel's least is 1 ms.
            let Some(quota) = limits.millicpus.map(|c| (c * 100).max(1000)) else { return Vec::new() };
            match version {
                Version::V1 => vec![("cpu.cfs_period_us", "100000".into()), ("cpu.cfs_quota_us", quota.to_string())],
                Version::V2 => vec![("cpu.max", format!("{quota} 100000"))],
            }
        }
        _ => Vec::new(),
    }
}

/// Makes `place`'s `rdock` directory (with the controller handed down to it on v2) and
/// returns it; on v2 falls back to the root's `rdock` when rdock's own cgroup cannot hand
/// controllers down (it holds processes).
fn prepare_parent(place: &Place) -> Result<PathBuf, ExecError> {
    let io = |p: &Path, e| ExecError::Io(p.to_path_buf(), e);
    if place.version == Version::V1 {
        std::fs::create_dir_all(&place.parent).map_err(|e| io(&place.parent, e))?;
        return Ok(place.parent.clone());
    }
    let enable = |dir: &Path| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for d in [dir.parent().unwrap_or(dir), dir] {
            let f = d.join("cgroup.subtree_control");
            let now = std::fs::read_to_string(&f)?;
            if !now.split_whitespace().any(|c| c == place.controller) {
                std::fs::write(&f, format!("+{}", place.controller))?;
            }
        }
        Ok(())
    };
    if enable(&place.parent).is_ok() {
        return Ok(place.parent.clone());
    }
    let root = place.parent.ancestors().find(|a| a.join("cgroup.controllers").exists() && !a.join("cgroup.type").exists());
    let fallback = root.unwrap_or(&place.parent).join("rdock");
    enable(&fallback).map_err(|e| io(&fallback, e))?;
    Ok(fallback)
}

/// Kills whatever is left in the cgroup `dir` and removes it. An emptied cgroup may take
/// the kernel a moment to release; removal is retried for up to a second.
fn remove(dir: &Path) {
    for attempt in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(if attempt < 10 { 1 } else { 10 }));
            }
        }
    }
}

/// Removes the cgroups of rdock processes that are gone (killed before they could), once
/// per process.
fn sweep() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let mut parents: Vec<PathBuf> = places().iter().map(|p| p.parent.clone()).collect();
        parents.dedup();
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(&parent) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() && e.path().is_dir() {
                    remove(&e.path());
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_OWN: &str = "8:pids:/\n4:memory:/job/1\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_controllers_are_found_with_this_process_s_path() {
        let p = discover(HYBRID, HYBRID_OWN, &|_| Some("hugetlb".into()));
        let got: Vec<(&str, Version, PathBuf)> = p.iter().map(|p| (p.controller, p.version.clone(), p.parent.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("pids", Version::V1, PathBuf::from("/sys/fs/cgroup/pids/rdock")),
                ("memory", Version::V1, PathBuf::from("/sys/fs/cgroup/memory/job/1/rdock")),
                ("cpu", Version::V1, PathBuf::from("/sys/fs/cgroup/cpu/rdock")),
            ]
        );
    }

    #[test]
    fn v2_is_used_for_controllers_it_has() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let p = discover(mi, "0::/user.slice/session-2.scope\n", &|_| Some("cpuset cpu io memory pids".into()));
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.version == Version::V2 && p.parent == Path::new("/sys/fs/cgroup/user.slice/session-2.scope/rdock")));
        let none = discover(mi, "0::/\n", &|_| Some("cpuset io".into()));
        assert!(none.is_empty(), "controllers the hierarchy lacks are not used");
    }

    #[test]
    fn limits_become_the_kernel_s_files() {
        let l = Limits { pids: Some(10), memory: Some(64 << 20), millicpus: Some(1500) };
        assert_eq!(needed(&l), ["pids", "memory", "cpu"]);
        assert_eq!(needed(&Limits::default()), ["pids"]);
        assert_eq!(writes("pids", &Version::V1, &l), [("pids.max", "10".to_string())]);
        assert_eq!(writes("memory", &Version::V1, &l), [("memory.limit_in_bytes", (64u64 << 20).to_string())]);
        assert_eq!(writes("memory", &Version::V2, &l), [("memory.max", (64u64 << 20).to_string())]);
        assert_eq!(
            writes("cpu", &Version::V1, &l),
            [("cpu.cfs_period_us", "100000".to_string()), ("cpu.cfs_quota_us", "150000".to_string())]
        );
        assert_eq!(writes("cpu", &Version::V2, &l), [("cpu.max", "150000 100000".to_string())]);
        assert!(writes("pids", &Version::V2, &Limits { pids: None, ..l }).is_empty(), "unlimited writes nothing");
    }
}
