//! The sandbox as a plan: everything the child will do, computed from the step's spec,
//! its root mount and the run's files and descriptors, before `clone`, without a syscall.
//! This is what the unit tests read; the child (`child.rs`) only carries it out.

use super::child::{ChildStdio, ExtraPlan, Plan, Target};
use super::{SpawnOptions, cpath, cstr};
use crate::{ExecError, ExecSpec, MountSource};
use rdock_llb::{HostIp, Network};
use rdock_snapshotter::MountSpec;
use std::path::PathBuf;

/// The per-run files bound over the root's `/etc` ones.
pub(super) struct RunFiles {
    /// Where the root is mounted.
    pub rootfs: PathBuf,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    /// `/etc/hostname`, for containers.
    pub hostname: Option<PathBuf>,
}

/// The descriptors the child gets: where it reports a failed setup, and its stdio.
pub(super) struct ChildFds {
    pub err: i32,
    pub stdio: ChildStdio,
    /// The network namespace to join (-1: none).
    pub netns: i32,
}

/// `/etc/hosts`: localhost under the sandbox's hostname, then `--add-host` entries.
pub(super) fn hosts_file(hostname: &str, extra: &[HostIp]) -> String {
    let mut text = format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in extra {
        text.push_str(&format!("{}\t{}\n", h.ip, h.host));
    }
    text
}

/// The namespaces a run is cloned into: always mount, pid, uts and ipc; a network one of
/// its own unless it uses the host's or joins the default network's.
pub(super) fn clone_flags(network: Network, joins_netns: bool) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if own_netns(network, joins_netns) {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Whether a run gets a network namespace of its own.
fn own_netns(network: Network, joins_netns: bool) -> bool {
    network == Network::None || (network == Network::Sandbox && !joins_netns)
}

/// Where `execve` is tried, in order: the program itself if it names a path, else each
/// directory of the container's PATH (as runc looks it up, before the pivot).
pub(super) fn exec_paths(prog: &str, env: &[String]) -> Vec<String> {
    if prog.contains('/') {
        return vec![prog.to_string()];
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':').filter(|d| !d.is_empty()).map(|d| format!("{d}/{prog}")).collect()
}

fn target(path: &str, file: bool) -> Result<Target, ExecError> {
    Target::new(path, file).ok_or_else(|| ExecError::Setup(format!("cannot mount over the root: {path:?}")))
}

/// The device nodes of the minimal `/dev`: name, host node, device number.
fn dev_nodes() -> Result<Vec<(std::ffi::CString, std::ffi::CString, u64)>, ExecError> {
    [("null", (1, 3)), ("zero", (1, 5)), ("full", (1, 7)), ("random", (1, 8)), ("urandom", (1, 9)), ("tty", (5, 0))]
        .iter()
        .map(|(name, (ma, mi))| Ok((cstr(*name)?, cstr(format!("/dev/{name}"))?, libc::makedev(*ma, *mi))))
        .collect()
}

fn dev_links() -> Result<Vec<(std::ffi::CString, std::ffi::CString)>, ExecError> {
    [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ]
    .iter()
    .map(|(t, l)| Ok((cstr(*t)?, cstr(*l)?)))
    .collect()
}

fn extra_mount(m: &crate::ExtraMount) -> Result<ExtraPlan, ExecError> {
    let file = matches!(m.source, MountSource::File(_));
    let (source, tmpfs_opts) = match &m.source {
        MountSource::Dir(p) | MountSource::File(p) => (Some(cpath(p)?), cstr("")?),
        MountSource::Tmpfs { size: Some(n) } => (None, cstr(format!("mode=1777,size={n}"))?),
        MountSource::Tmpfs { size: None } => (None, cstr("mode=1777")?),
    };
    Ok(ExtraPlan { target: target(&m.dest, file)?, source, tmpfs_opts, readonly: m.readonly })
}

/// The plan for running `spec` on `root`.
pub(super) fn plan(
    spec: &ExecSpec,
    root: &MountSpec,
    opts: &SpawnOptions<'_>,
    files: &RunFiles,
    fds: ChildFds,
    cgroup_join: &[PathBuf],
    seccomp: Option<libc::sock_fprog>,
) -> Result<Plan, ExecError> {
    // The child changes into the layers' common parent and names them relative to it.
    let overlay = root.overlay_options("run").map_err(ExecError::Root)?;
    let overlay_opts = overlay.as_ref().map(|d| Ok::<_, ExecError>((cpath(&d.base)?, cstr(d.relative())?))).transpose()?;
    let bind_root = match root {
        MountSpec::Bind { source, readonly } => Some((cpath(source)?, *readonly)),
        MountSpec::Overlay { .. } => None,
    };
    let mut etc_files = vec![(cpath(&files.hosts)?, target("etc/hosts", true)?), (cpath(&files.resolv)?, target("etc/resolv.conf", true)?)];
    if let Some(f) = &files.hostname {
        etc_files.push((cpath(f)?, target("etc/hostname", true)?));
    }
    let prog = spec.args.first().ok_or_else(|| ExecError::Setup("empty command".into()))?;
    Ok(Plan {
        root: cpath(&files.rootfs)?,
        overlay_opts,
        bind_root,
        proc: target("proc", false)?,
        dev: target("dev", false)?,
        sys: target("sys", false)?,
        dev_nodes: dev_nodes()?,
        dev_links: dev_links()?,
        etc_files,
        extra: spec.mounts.iter().map(extra_mount).collect::<Result<_, _>>()?,
        cgroup_join: cgroup_join.iter().map(|p| cpath(p)).collect::<Result<_, _>>()?,
        hostname: cstr(opts.hostname)?,
        // 64 MiB by default, as Docker's.
        shm_opts: cstr(format!("mode=1777,size={}", spec.resources.shm_size.unwrap_or(64 << 20)))?,
        rlimits: spec
            .resources
            .ulimits
            .iter()
            .filter_map(|u| {
                let limit = |n: i64| if n < 0 { libc::RLIM_INFINITY } else { n as libc::rlim_t };
                Some((u.resource()?, limit(u.soft), limit(u.hard)))
            })
            .collect(),
        cwd: Target::new(&spec.cwd, false).unwrap_or(Target { path: cstr(".")?, file_in: None }),
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.additional_gids.clone(),
        // A namespace of its own has only a loopback, down until the child sets it up.
        net_loopback: own_netns(spec.network, fds.netns >= 0),
        netns: if spec.network == Network::Sandbox { fds.netns } else { -1 },
        security: spec.security,
        seccomp,
        exec_paths: exec_paths(prog, &spec.env).iter().map(cstr).collect::<Result<_, _>>()?,
        argv: spec.args.iter().map(cstr).collect::<Result<_, _>>()?,
        envp: spec.env.iter().map(cstr).collect::<Result<_, _>>()?,
        stdio: fds.stdio,
        init: opts.init,
        err_fd: fds.err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExtraMount, ResolvedUser};
    use rdock_llb::Security;

    fn spec(args: &[&str], env: &[&str], network: Network, mounts: Vec<ExtraMount>) -> ExecSpec {
        ExecSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: "/work/dir".into(),
            user: ResolvedUser { uid: 1000, gid: 100, additional_gids: vec![27], home: "/home/u".into() },
            network,
            security: Security::Sandbox,
            mounts,
            extra_hosts: Vec::new(),
            hostname: None,
            resources: Default::default(),
        }
    }

    fn plan_for(spec: &ExecSpec, netns: i32) -> Result<Plan, ExecError> {
        let opts = SpawnOptions {
            hostname: "buildkitsandbox",
            hostname_file: false,
            stdio: super::super::Stdio::Capture,
            init: false,
            limits: Default::default(),
            netns: None,
        };
        let files =
            RunFiles { rootfs: "/run/x/rootfs".into(), hosts: "/run/x/hosts".into(), resolv: "/run/x/resolv.conf".into(), hostname: None };
        let root = MountSpec::Bind { source: "/snap/1/fs".into(), readonly: true };
        plan(spec, &root, &opts, &files, ChildFds { err: 9, stdio: ChildStdio::Capture(8), netns }, &["/cg/tasks".into()], None)
    }

    fn s(c: &std::ffi::CString) -> &str {
        c.to_str().unwrap()
    }

    #[test]
    fn programs_are_looked_up_on_the_containers_path() {
        let p = plan_for(&spec(&["make", "all"], &["PATH=/opt/bin:/usr/bin"], Network::None, vec![]), -1).unwrap();
        assert_eq!(p.exec_paths.iter().map(s).collect::<Vec<_>>(), vec!["/opt/bin/make", "/usr/bin/make"]);
        let p = plan_for(&spec(&["./run.sh"], &[], Network::None, vec![]), -1).unwrap();
        assert_eq!(p.exec_paths.iter().map(s).collect::<Vec<_>>(), vec!["./run.sh"]);
        assert_eq!(exec_paths("sh", &[]).first().map(String::as_str), Some("/usr/local/sbin/sh"), "Docker's default PATH");
        assert!(plan_for(&spec(&[], &[], Network::None, vec![]), -1).is_err(), "an empty command is refused");
    }

    #[test]
    fn the_network_decides_namespaces_and_loopback() {
        use nix::sched::CloneFlags;
        assert!(clone_flags(Network::None, false).contains(CloneFlags::CLONE_NEWNET));
        assert!(!clone_flags(Network::Host, false).contains(CloneFlags::CLONE_NEWNET));
        assert!(clone_flags(Network::Sandbox, false).contains(CloneFlags::CLONE_NEWNET), "no default network: a namespace of its own");
        assert!(!clone_flags(Network::Sandbox, true).contains(CloneFlags::CLONE_NEWNET), "the default network's is joined");
        let joined = plan_for(&spec(&["true"], &[], Network::Sandbox, vec![]), 7).unwrap();
        assert_eq!((joined.netns, joined.net_loopback), (7, false));
        let own = plan_for(&spec(&["true"], &[], Network::None, vec![]), 7).unwrap();
        assert_eq!((own.netns, own.net_loopback), (-1, true), "only a sandbox network joins the namespace");
        let host = plan_for(&spec(&["true"], &[], Network::Host, vec![]), -1).unwrap();
        assert!(!host.net_loopback);
    }

    #[test]
    fn extra_mounts_keep_their_kind_target_and_mode() {
        let mounts = vec![
            ExtraMount { source: MountSource::Tmpfs { size: Some(4096) }, dest: "/tmp".into(), readonly: false },
            ExtraMount { source: MountSource::File("/host/secret".into()), dest: "/run/secrets/tok".into(), readonly: true },
            ExtraMount { source: MountSource::Dir("/cache/1".into()), dest: "/root/.cache/".into(), readonly: false },
        ];
        let p = plan_for(&spec(&["true"], &[], Network::None, mounts), -1).unwrap();
        assert_eq!(p.extra.len(), 3);
        assert_eq!((p.extra[0].source.is_none(), s(&p.extra[0].tmpfs_opts)), (true, "mode=1777,size=4096"));
        assert_eq!(s(&p.extra[1].target.path), "run/secrets/tok");
        assert_eq!(p.extra[1].target.file_in.as_ref().map(s), Some("run/secrets"), "a file is mounted on a file in its directory");
        assert!(p.extra[1].readonly);
        assert_eq!((s(&p.extra[2].target.path), p.extra[2].target.file_in.is_none()), ("root/.cache", true));
        let over_root = vec![ExtraMount { source: MountSource::Dir("/x".into()), dest: "/".into(), readonly: false }];
        assert!(plan_for(&spec(&["true"], &[], Network::None, over_root), -1).is_err(), "nothing mounts over the root");
    }

    #[test]
    fn user_cwd_root_and_etc_files_are_carried_over() {
        let p = plan_for(&spec(&["true"], &["A=1"], Network::None, vec![]), -1).unwrap();
        assert_eq!((p.uid, p.gid, p.groups.clone()), (1000, 100, vec![27]));
        assert_eq!(s(&p.cwd.path), "work/dir");
        assert_eq!(p.bind_root.as_ref().map(|(src, ro)| (s(src), *ro)), Some(("/snap/1/fs", true)));
        assert_eq!(
            p.etc_files.iter().map(|(src, t)| (s(src), s(&t.path))).collect::<Vec<_>>(),
            vec![("/run/x/hosts", "etc/hosts"), ("/run/x/resolv.conf", "etc/resolv.conf")]
        );
        assert_eq!(p.envp.iter().map(s).collect::<Vec<_>>(), vec!["A=1"]);
        assert_eq!(p.cgroup_join.iter().map(s).collect::<Vec<_>>(), vec!["/cg/tasks"]);
    }

    #[test]
    fn hosts_files_name_the_sandbox_and_added_hosts() {
        let extra = vec![HostIp { host: "db".into(), ip: "10.0.0.5".parse().unwrap() }];
        let text = hosts_file("buildkitsandbox", &extra);
        assert!(text.starts_with("127.0.0.1\tlocalhost buildkitsandbox\n"), "{text}");
        assert!(text.ends_with("10.0.0.5\tdb\n"), "{text}");
    }
}
