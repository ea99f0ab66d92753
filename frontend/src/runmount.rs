//! `RUN --mount=…` specs, as BuildKit's `instructions/commands_runmount.go` reads them:
//! comma-separated `key=value` fields (and bare `ro`, `rw`, `required`), `type=bind` by
//! default.

use rdock_llb::CacheSharing;

/// A parsed `--mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// `type=bind`: a read-only (unless `rw`) view of a stage, image or the context.
    Bind {
        /// Where.
        target: String,
        /// Path inside the source.
        source: String,
        /// Stage, image, or None for the build context.
        from: Option<String>,
        /// Writable (writes are discarded).
        rw: bool,
    },
    /// `type=cache`.
    Cache {
        /// Where.
        target: String,
        /// Identity (default: the target).
        id: String,
        /// Concurrency.
        sharing: CacheSharing,
        /// Mode, owner and group when first created.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Mounted read-only.
        readonly: bool,
        /// Stage, image or context whose `source` sub-path seeds a new cache.
        from: Option<String>,
        /// Sub-path of `from` to seed from.
        source: String,
    },
    /// `type=tmpfs`.
    Tmpfs {
        /// Where.
        target: String,
        /// Size in bytes.
        size: Option<u64>,
    },
    /// `type=ssh`: the forwarded agent socket.
    Ssh {
        /// Where (default `/run/buildkit/ssh_agent.N`).
        target: String,
        /// Agent id (default `default`).
        id: String,
        /// Fail without the agent.
        required: bool,
    },
    /// `type=secret`.
    Secret {
        /// Where (default `/run/secrets/ID`); empty when only `env` is wanted.
        target: String,
        /// Secret id (default: the target's file name).
        id: String,
        /// Fail without the secret.
        required: bool,
        /// Mode (default 0400), owner and group of the file.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Also expose it as this environment variable.
        env: Option<String>,
    },
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid value for {k}: {v:?} (expected true or false)")),
    }
}

fn parse_num(k: &str, v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("invalid value for {k}: {v:?} (expected a number)"))
}

fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = v[i..].to_ascii_lowercase();
            let m: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => return Err(format!("invalid size {v:?}")),
            };
            (&v[..i], m)
        }
        None => (v, 1),
    };
    num.trim().parse::<u64>().map(|n| n * mult).map_err(|_| format!("invalid size {v:?}"))
}

/// The keys each mount type takes (BuildKit's spellings, aliases included).
fn known_keys(ty: &str) -> Option<&'static [&'static str]> {
    const TARGET: [&str; 3] = ["target", "dst", "destination"];
    Some(match ty {
        "bind" => &["type", TARGET[0], TARGET[1], TARGET[2], "source", "src", "from", "ro", "rw", "readonly", "readwrite"],
        "cache" => &[
            "type",
            TARGET[0],
            TARGET[1],
            TARGET[2],
            "id",
            "sharing",
            "mode",
            "uid",
            "gid",
            "ro",
            "rw",
            "readonly",
            "readwrite",
            "from",
            "source",
            "src",
        ],
        "tmpfs" => &["type", TARGET[0], TARGET[1], TARGET[2], "size"],
        "secret" => &["type", TARGET[0], TARGET[1], TARGET[2], "id", "required", "mode", "uid", "gid", "env"],
        "ssh" => &["type", TARGET[0], TARGET[1], TARGET[2], "id", "required", "mode", "uid", "gid"],
        _ => return None,
    })
}

/// A `--mount` value's fields, keys in lower case; the last of a repeated key wins.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, keys: &[&str]) -> Option<String> {
        self.0.iter().rev().find(|(k, _)| keys.contains(&k.as_str())).map(|(_, v)| v.clone())
    }

    fn flag(&self, keys: &[&str]) -> Result<Option<bool>, String> {
        match self.0.iter().rev().find(|(k, _)| keys.contains(&k.as_str())) {
            Some((k, v)) => parse_bool(k, v).map(Some),
            None => Ok(None),
        }
    }

    fn mode(&self, default: u32) -> Result<u32, String> {
        match self.get(&["mode"]) {
            Some(m) => u32::from_str_radix(&m, 8).map_err(|_| format!("invalid mode {m:?} (expected octal)")),
            None => Ok(default),
        }
    }

    fn id_number(&self, key: &str) -> Result<u32, String> {
        Ok(self.get(&[key]).map(|v| parse_num(key, &v)).transpose()?.unwrap_or(0))
    }

    /// A non-empty `id=`.
    fn id(&self) -> Option<String> {
        self.get(&["id"]).filter(|i| !i.is_empty())
    }
}

/// A `--mount` value that does not parse, with what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RunMountError(String);

/// Parses one `--mount` value.
pub fn parse_run_mount(spec: &str) -> Result<RunMount, RunMountError> {
    parse_fields(spec).map_err(RunMountError)
}

fn parse_fields(spec: &str) -> Result<RunMount, String> {
    let mut fields = Vec::new();
    for f in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, v) = f.split_once('=').unwrap_or((f, ""));
        fields.push((k.to_ascii_lowercase(), v.to_string()));
    }
    let f = Fields(fields);
    let ty = f.get(&["type"]).unwrap_or_else(|| "bind".into());
    let known = known_keys(&ty).ok_or_else(|| format!("unsupported mount type {ty:?} (expected bind, cache, tmpfs, secret or ssh)"))?;
    if let Some((k, _)) = f.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(format!("unexpected key {k:?} for a {ty} mount"));
    }
    let target = f.get(&["target", "dst", "destination"]).unwrap_or_default();
    // Read (and so checked) for every type that takes them.
    let rw = f.flag(&["rw", "readwrite"])?.unwrap_or(false) || f.flag(&["ro", "readonly"])? == Some(false);
    let need_target = || if target.is_empty() { Err(format!("a {ty} mount needs target=PATH")) } else { Ok(target.clone()) };
    Ok(match ty.as_str() {
        "bind" => RunMount::Bind {
            target: need_target()?,
            source: f.get(&["source", "src"]).unwrap_or_else(|| "/".into()),
            from: f.get(&["from"]),
            rw,
        },
        "cache" => cache_mount(&f, need_target()?)?,
        "tmpfs" => RunMount::Tmpfs { target: need_target()?, size: f.get(&["size"]).map(|s| parse_size(&s)).transpose()? },
        "ssh" => {
            RunMount::Ssh { target, id: f.id().unwrap_or_else(|| "default".into()), required: f.flag(&["required"])?.unwrap_or(false) }
        }
        _ => secret_mount(&f, target)?,
    })
}

fn cache_mount(f: &Fields, target: String) -> Result<RunMount, String> {
    let sharing = match f.get(&["sharing"]).as_deref() {
        None | Some("shared") => CacheSharing::Shared,
        Some("private") => CacheSharing::Private,
        Some("locked") => CacheSharing::Locked,
        Some(other) => return Err(format!("unsupported sharing value {other:?} (expected shared, private or locked)")),
    };
    Ok(RunMount::Cache {
        id: f.id().unwrap_or_else(|| target.clone()),
        target,
        sharing,
        mode: f.mode(0o755)?,
        uid: f.id_number("uid")?,
        gid: f.id_number("gid")?,
        readonly: f.flag(&["ro", "readonly"])?.unwrap_or(false),
        from: f.get(&["from"]),
        source: f.get(&["source", "src"]).unwrap_or_else(|| "/".into()),
    })
}

/// A secret: its id defaults to the target's file name, its target to
/// `/run/secrets/ID` unless it only sets an environment variable.
fn secret_mount(f: &Fields, target: String) -> Result<RunMount, String> {
    let env = f.get(&["env"]).filter(|e| !e.is_empty());
    let id = match f.id() {
        Some(i) => i,
        None => target.rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_string).ok_or("a secret mount needs id=NAME")?,
    };
    let target = if target.is_empty() && env.is_none() { format!("/run/secrets/{id}") } else { target };
    Ok(RunMount::Secret {
        target,
        id,
        required: f.flag(&["required"])?.unwrap_or(false),
        mode: f.mode(0o400)?,
        uid: f.id_number("uid")?,
        gid: f.id_number("gid")?,
        env,
    })
}

/// Whether the unexpanded mount `spec` has a `from=` with a `$` before its last character,
/// which BuildKit refuses (its parseMount).
pub fn from_has_variable(spec: &str) -> bool {
    spec.split(',')
        .filter_map(|f| f.split_once('='))
        .any(|(k, v)| k.trim().eq_ignore_ascii_case("from") && v.find('$').is_some_and(|i| i + 1 != v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_forms() {
        assert_eq!(
            parse_run_mount("target=/src").unwrap(),
            RunMount::Bind { target: "/src".into(), source: "/".into(), from: None, rw: false }
        );
        assert_eq!(
            parse_run_mount("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1000").unwrap(),
            RunMount::Cache {
                target: "/root/.cache".into(),
                id: "/root/.cache".into(),
                sharing: CacheSharing::Locked,
                mode: 0o700,
                uid: 1000,
                gid: 0,
                readonly: false,
                from: None,
                source: "/".into(),
            }
        );
        assert_eq!(parse_run_mount("type=tmpfs,dst=/t,size=64m").unwrap(), RunMount::Tmpfs { target: "/t".into(), size: Some(64 << 20) });
        match parse_run_mount("type=secret,id=tok,required").unwrap() {
            RunMount::Secret { target, required, mode, .. } => {
                assert_eq!((target.as_str(), required, mode), ("/run/secrets/tok", true, 0o400))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_run_mount("type=cache").unwrap_err().to_string().contains("target"));
        assert!(parse_run_mount("type=bind,target=/a,bogus=1").unwrap_err().to_string().contains("bogus"));
        assert!(parse_run_mount("type=nope,target=/a").is_err());
        assert!(parse_run_mount("type=cache,target=/c,rw=maybe").is_err(), "flags are checked for every type that takes them");
        assert!(parse_run_mount("type=cache,target=/c,mode=9").unwrap_err().to_string().contains("octal"));
        match parse_run_mount("type=secret,target=/etc/app/key.pem,env=KEY").unwrap() {
            RunMount::Secret { target, id, env, .. } => {
                assert_eq!((target.as_str(), id.as_str(), env.as_deref()), ("/etc/app/key.pem", "key.pem", Some("KEY")))
            }
            other => panic!("{other:?}"),
        }
    }
}
