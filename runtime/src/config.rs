//! How an image's config and `rdock run`'s flags become the container's process, with
//! Docker's rules: `--entrypoint` replaces ENTRYPOINT and drops the image's CMD; arguments
//! replace CMD; `-e` overrides ENV by key; `-w` and `-u` replace WORKDIR and USER. Pure:
//! no I/O, so every rule is unit-tested.

use crate::RuntimeError;
use rdock_imagespec::ContainerConfig;
use std::path::PathBuf;

/// The PATH Docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFlags {
    /// `--entrypoint`: Some("") resets the image's ENTRYPOINT.
    pub entrypoint: Option<String>,
    /// Arguments after the image: they replace CMD.
    pub args: Vec<String>,
    /// `-e K=V` (or `-e K`, taken from rdock's environment if set there).
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-v SRC:DST[:ro|rw]`.
    pub volumes: Vec<String>,
    /// `-t`: TERM is set.
    pub tty: bool,
}

/// A bind mount from `-v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (absolute, existing).
    pub source: PathBuf,
    /// The path in the container (absolute).
    pub dest: String,
    /// `:ro`.
    pub readonly: bool,
}

/// The container's first process, as the image and the flags define it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// argv: entrypoint then cmd.
    pub args: Vec<String>,
    /// `KEY=value`, image ENV overridden by `-e`.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// `user[:group]` to resolve in the image ("" is root).
    pub user: String,
}

/// Combines the image's `config` with the `flags`; `host_env` answers `-e K` without a
/// value; `hostname` becomes HOSTNAME.
pub fn process_config(
    config: &ContainerConfig,
    flags: &RunFlags,
    hostname: &str,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<ProcessConfig, RuntimeError> {
    let (entrypoint, cmd) = match &flags.entrypoint {
        // `--entrypoint` drops the image's CMD too: it was written for the old entrypoint.
        Some(e) if e.is_empty() => (Vec::new(), flags.args.clone()),
        Some(e) => (vec![e.clone()], flags.args.clone()),
        None if !flags.args.is_empty() => (config.entrypoint.clone().unwrap_or_default(), flags.args.clone()),
        None => (config.entrypoint.clone().unwrap_or_default(), config.cmd.clone().unwrap_or_default()),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(&kv).to_string();
        match env.iter_mut().find(|e| e.split_once('=').map(|(k, _)| k) == Some(&key)) {
            Some(slot) => *slot = kv,
            None => env.push(kv),
        }
    };
    set(format!("HOSTNAME={hostname}"));
    for e in &config.env {
        set(e.clone());
    }
    for e in &flags.env {
        if e.is_empty() || e.starts_with('=') {
            return Err(RuntimeError::Invalid(format!("invalid environment variable: {e:?}")));
        }
        if e.contains('=') {
            set(e.clone());
        } else if let Some(v) = host_env(e) {
            set(format!("{e}={v}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if flags.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = match &flags.workdir {
        Some(w) if !w.starts_with('/') => {
            return Err(RuntimeError::Invalid(format!("the working directory {w:?} is invalid, it needs to be an absolute path")));
        }
        Some(w) => w.clone(),
        None => config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
    };
    let user = flags.user.clone().or_else(|| config.user.clone()).unwrap_or_default();
    Ok(ProcessConfig { args, env, cwd, user })
}

/// Parses `-v SRC:DST[:ro|rw]`. SRC must be an absolute host path that exists: rdock has
/// no named volumes, and unlike `docker run -v` it never creates a missing source.
pub fn parse_volume(spec: &str) -> Result<Bind, RuntimeError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dest, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, None),
        [s, d, m] => (*s, *d, Some(*m)),
        _ => return Err(RuntimeError::Invalid(format!("invalid volume specification {spec:?}: want SRC:DST[:ro]"))),
    };
    let readonly = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(RuntimeError::Invalid(format!("invalid volume mode {m:?} in {spec:?}: ro or rw"))),
    };
    if !src.starts_with('/') {
        return Err(RuntimeError::Invalid(format!(
            "invalid volume specification {spec:?}: {src:?} is not an absolute host path (rdock has no named volumes)"
        )));
    }
    if !dest.starts_with('/') || dest == "/" {
        return Err(RuntimeError::Invalid(format!(
            "invalid volume specification {spec:?}: the destination must be an absolute path, not /"
        )));
    }
    let source = PathBuf::from(src);
    if std::fs::symlink_metadata(&source).is_err() {
        return Err(RuntimeError::BindSource(source));
    }
    Ok(Bind { source, dest: dest.to_string(), readonly })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ContainerConfig {
        ContainerConfig {
            entrypoint: entrypoint.map(|v| v.iter().map(|s| s.to_string()).collect()),
            cmd: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    fn argv(c: &ContainerConfig, entrypoint: Option<&str>, args: &[&str]) -> Result<Vec<String>, RuntimeError> {
        let flags = RunFlags {
            entrypoint: entrypoint.map(str::to_string),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        process_config(c, &flags, "h", |_| None).map(|p| p.args)
    }

    /// Docker's table (docs "Understand how CMD and ENTRYPOINT interact"), plus overrides.
    #[test]
    fn entrypoint_and_cmd_combine_as_docker() {
        let ep: &[&str] = &["/bin/ep", "x"];
        let sh_ep: &[&str] = &["/bin/sh", "-c", "exec ep"];
        let cmd: &[&str] = &["c1", "c2"];
        assert!(matches!(argv(&cfg(None, None), None, &[]), Err(RuntimeError::NoCommand)));
        assert_eq!(argv(&cfg(None, Some(cmd)), None, &[]).unwrap(), ["c1", "c2"]);
        assert_eq!(argv(&cfg(Some(ep), None), None, &[]).unwrap(), ["/bin/ep", "x"]);
        assert_eq!(argv(&cfg(Some(ep), Some(cmd)), None, &[]).unwrap(), ["/bin/ep", "x", "c1", "c2"]);
        // Shell-form ENTRYPOINT is stored as sh -c and ignores CMD in effect; the argv still carries it.
        assert_eq!(argv(&cfg(Some(sh_ep), Some(cmd)), None, &[]).unwrap(), ["/bin/sh", "-c", "exec ep", "c1", "c2"]);
        // Arguments replace CMD, not ENTRYPOINT.
        assert_eq!(argv(&cfg(Some(ep), Some(cmd)), None, &["a"]).unwrap(), ["/bin/ep", "x", "a"]);
        assert_eq!(argv(&cfg(None, Some(cmd)), None, &["a", "b"]).unwrap(), ["a", "b"]);
        // --entrypoint replaces ENTRYPOINT and drops CMD.
        assert_eq!(argv(&cfg(Some(ep), Some(cmd)), Some("/bin/other"), &[]).unwrap(), ["/bin/other"]);
        assert_eq!(argv(&cfg(Some(ep), Some(cmd)), Some("/bin/other"), &["a"]).unwrap(), ["/bin/other", "a"]);
        // --entrypoint "" resets it: the arguments are the command.
        assert_eq!(argv(&cfg(Some(ep), Some(cmd)), Some(""), &["ls"]).unwrap(), ["ls"]);
        assert!(matches!(argv(&cfg(Some(ep), Some(cmd)), Some(""), &[]), Err(RuntimeError::NoCommand)));
    }

    #[test]
    fn env_workdir_and_user_overrides() {
        let mut c = cfg(None, Some(&["sh"]));
        c.working_dir = Some("/app".into());
        c.user = Some("nobody".into());
        let flags =
            RunFlags { env: vec!["A=flag".into(), "B=new".into(), "FROM_HOST".into(), "UNSET".into()], tty: true, ..Default::default() };
        let p = process_config(&c, &flags, "box", |k| (k == "FROM_HOST").then(|| "hv".to_string())).unwrap();
        assert_eq!(p.env, ["HOSTNAME=box", "PATH=/bin", "A=flag", "B=new", "FROM_HOST=hv", "TERM=xterm"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/app", "nobody"));
        let flags = RunFlags { workdir: Some("/w".into()), user: Some("1:2".into()), ..Default::default() };
        let p = process_config(&c, &flags, "box", |_| None).unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/w", "1:2"));
        let flags = RunFlags { workdir: Some("rel".into()), ..Default::default() };
        assert!(matches!(process_config(&c, &flags, "box", |_| None), Err(RuntimeError::Invalid(m)) if m.contains("absolute")));
        // No PATH in the image: Docker's default.
        let p = process_config(&ContainerConfig { cmd: Some(vec!["x".into()]), ..Default::default() }, &RunFlags::default(), "h", |_| None)
            .unwrap();
        assert_eq!(p.env[0], format!("PATH={DEFAULT_PATH}"));
        assert_eq!(p.cwd, "/");
    }

    #[test]
    fn volumes_parse_and_check_their_source() {
        let dir = std::env::temp_dir();
        let d = dir.display().to_string();
        assert_eq!(parse_volume(&format!("{d}:/data:ro")).unwrap(), Bind { source: dir.clone(), dest: "/data".into(), readonly: true });
        assert!(!parse_volume(&format!("{d}:/data")).unwrap().readonly);
        assert!(
            matches!(parse_volume("/no/such/dir/x1:/d"), Err(RuntimeError::BindSource(p)) if p == std::path::Path::new("/no/such/dir/x1"))
        );
        for bad in ["named:/d", &format!("{d}:rel"), &format!("{d}:/d:rx"), "/a", &format!("{d}:/")] {
            assert!(matches!(parse_volume(bad), Err(RuntimeError::Invalid(_))), "{bad}");
        }
    }
}
