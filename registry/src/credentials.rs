//! Docker's credentials file, `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`):
//! `auths` entries with a base64 `auth` (`user:password`) or `username`/`password`, an
//! `identitytoken`, and credential helpers (`credsStore`, `credHelpers`) run as
//! `docker-credential-NAME get`, as the docker CLI does. `rdock login` writes the same file,
//! so docker and rdock share their logins.

use crate::RegistryError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::PathBuf;

/// What to send a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (`<token>` for identity tokens).
    pub username: String,
    /// The password or token. Never printed: `Debug` hides it.
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("secret", &"<hidden>").finish()
    }
}

impl Credentials {
    /// The `Authorization: Basic …` value.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", B64.encode(format!("{}:{}", self.username, self.secret)))
    }
}

/// The key docker uses for a registry host in `auths`.
fn server_key(host: &str) -> String {
    if host == "docker.io" || host == "registry-1.docker.io" || host == "index.docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

/// The credentials file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

fn read_config() -> Result<serde_json::Map<String, serde_json::Value>, RegistryError> {
    let Some(path) = config_path() else { return Ok(Default::default()) };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(RegistryError::Credentials(format!("{}: {e}", path.display()))),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(RegistryError::Credentials(format!("{}: not a JSON object", path.display()))),
        Err(e) => Err(RegistryError::Credentials(format!("{}: not valid JSON: {e}", path.display()))),
    }
}

/// Credentials for `host` from the credentials file or its helper, if there are any.
pub fn lookup(host: &str) -> Result<Option<Credentials>, RegistryError> {
    let config = read_config()?;
    let key = server_key(host);
    let helper = config
        .get("credHelpers")
        .and_then(|h| h.get(&key).or_else(|| h.get(host)))
        .or_else(|| config.get("credsStore"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if let Some(auths) = config.get("auths").and_then(|a| a.as_object()) {
        // Docker accepts the host alone or as a URL (`https://host`, `http://host/v1/`).
        let entry = auths.iter().find(|(k, _)| {
            let bare = k.trim_start_matches("https://").trim_start_matches("http://");
            let bare = bare.split('/').next().unwrap_or(bare);
            k.as_str() == key || bare == host
        });
        if let Some((_, e)) = entry
            && let Some(c) = from_entry(e)?
        {
            return Ok(Some(c));
        }
    }
    match helper {
        Some(h) => from_helper(&h, &key),
        None => Ok(None),
    }
}

fn from_entry(e: &serde_json::Value) -> Result<Option<Credentials>, RegistryError> {
    if let Some(t) = e.get("identitytoken").and_then(|v| v.as_str()).filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials { username: "<token>".into(), secret: t.to_string() }));
    }
    if let Some(a) = e.get("auth").and_then(|v| v.as_str()).filter(|a| !a.is_empty()) {
        let raw = B64.decode(a.trim()).map_err(|_| RegistryError::Credentials("an `auth` entry is not valid base64".into()))?;
        let text = String::from_utf8(raw).map_err(|_| RegistryError::Credentials("an `auth` entry is not UTF-8".into()))?;
        let (u, p) = text.split_once(':').ok_or_else(|| RegistryError::Credentials("an `auth` entry is not `user:password`".into()))?;
        return Ok(Some(Credentials { username: u.to_string(), secret: p.to_string() }));
    }
    match (e.get("username").and_then(|v| v.as_str()), e.get("password").and_then(|v| v.as_str())) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials { username: u.into(), secret: p.into() })),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-NAME get` with the server on stdin, as docker does.
fn from_helper(name: &str, server: &str) -> Result<Option<Credentials>, RegistryError> {
    use std::io::Write;
    let program = format!("docker-credential-{name}");
    let mut child = match std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Err(RegistryError::Credentials(format!("credential helper {program}: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| RegistryError::Credentials(format!("credential helper {program}: {e}")))?;
    if !out.status.success() {
        // Helpers say "credentials not found in native keychain" when they have none.
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperAnswer {
        username: String,
        secret: String,
    }
    let a: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|e| RegistryError::Credentials(format!("credential helper {program} answered something that is not its JSON: {e}")))?;
    Ok(Some(Credentials { username: a.username, secret: a.secret }))
}

/// Writes `host`'s credentials into the credentials file (mode 0600), keeping what else is
/// there, as `docker login` does.
pub fn store(host: &str, creds: &Credentials) -> Result<PathBuf, RegistryError> {
    let path = config_path().ok_or_else(|| RegistryError::Credentials("neither DOCKER_CONFIG nor HOME is set".into()))?;
    let mut config = read_config()?;
    let auths = config.entry("auths").or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(auths) = auths.as_object_mut() else {
        return Err(RegistryError::Credentials(format!("{}: `auths` is not an object", path.display())));
    };
    auths.insert(server_key(host), serde_json::json!({"auth": B64.encode(format!("{}:{}", creds.username, creds.secret))}));
    write_config(&path, &config)?;
    Ok(path)
}

/// Removes `host`'s entry; false if there was none.
pub fn erase(host: &str) -> Result<bool, RegistryError> {
    let Some(path) = config_path() else { return Ok(false) };
    let mut config = read_config()?;
    let removed = config.get_mut("auths").and_then(|a| a.as_object_mut()).and_then(|a| a.remove(&server_key(host))).is_some();
    if removed {
        write_config(&path, &config)?;
    }
    Ok(removed)
}

fn write_config(path: &std::path::Path, config: &serde_json::Map<String, serde_json::Value>) -> Result<(), RegistryError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| RegistryError::Credentials(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| RegistryError::Credentials(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_password_entries_and_never_prints_secrets() {
        let e = serde_json::json!({"auth": B64.encode("alice:s3cret")});
        let c = from_entry(&e).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("alice", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = serde_json::json!({"username": "bob", "password": "pw"});
        assert_eq!(from_entry(&e).unwrap().unwrap().username, "bob");
        assert!(from_entry(&serde_json::json!({"auth": "!!"})).is_err());
        assert!(from_entry(&serde_json::json!({})).unwrap().is_none());
        assert_eq!(c.basic_header(), format!("Basic {}", B64.encode("alice:s3cret")));
    }
}
