//! `compose.yaml`: each service with a `build:` is a target of its name (`image:` its
//! tag), all of them the `default` group, as buildx bake reads compose files. `${VAR}` and `${VAR:-default}` are taken
//! from the environment, as compose does.

use crate::{BakeError, BakeFile, Definition, Target};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;

/// Reads the file's services into `def`.
pub(crate) fn read(f: &BakeFile, env: &dyn Fn(&str) -> Option<String>, def: &mut Definition) -> Result<(), BakeError> {
    let file = f.path.display().to_string();
    let invalid = |message: String| BakeError::Invalid { file: file.clone(), message };
    let doc: Value = serde_yaml_ng::from_str(&interpolate(&f.text, env)).map_err(|e| invalid(e.to_string()))?;
    let services = doc.get("services").and_then(Value::as_mapping).ok_or_else(|| invalid("no services".into()))?;
    for (name, svc) in services {
        let name = name.as_str().ok_or_else(|| invalid("a service name is not a string".into()))?.to_string();
        let Some(build) = svc.get("build") else { continue };
        let mut t = match build {
            Value::String(ctx) => Target { context: Some(ctx.clone()), ..Default::default() },
            Value::Mapping(_) => target(build).map_err(|e| invalid(format!("service {name:?}: {e}")))?,
            _ => return Err(invalid(format!("service {name:?}: build must be a path or a mapping"))),
        };
        if let Some(image) = svc.get("image").and_then(Value::as_str) {
            t.tags.insert(0, image.to_string());
        }
        // A compose file's services are its default group, as buildx reads it.
        let default = def.groups.entry("default".to_string()).or_default();
        if !default.contains(&name) {
            default.push(name.clone());
        }
        def.add_target(name, t);
    }
    Ok(())
}

/// A service's `build:` mapping as a target; a key rdock does not know is an error.
fn target(build: &Value) -> Result<Target, String> {
    let mut t = Target::default();
    let map = build.as_mapping().ok_or("not a mapping")?;
    for (k, v) in map {
        let k = k.as_str().ok_or("a key is not a string")?;
        match k {
            "context" => t.context = Some(text(v)?),
            "dockerfile" => t.dockerfile = Some(text(v)?),
            "dockerfile_inline" => t.dockerfile_inline = Some(text(v)?),
            "target" => t.target = Some(text(v)?),
            "network" => t.network = Some(text(v)?),
            "no_cache" => t.no_cache = v.as_bool(),
            "pull" => t.pull = v.as_bool(),
            "args" => t.args = pairs(v)?,
            "labels" => t.labels = pairs(v)?,
            "additional_contexts" => t.contexts = pairs(v)?,
            "tags" => t.tags = list(v)?,
            "platforms" => t.platforms = list(v)?,
            "cache_from" => t.cache_from = list(v)?,
            "cache_to" => t.cache_to = list(v)?,
            "secrets" => t.secret = list(v)?.into_iter().map(|s| format!("id={s}")).collect(),
            "ssh" => t.ssh = list(v)?,
            other => return Err(format!("build.{other} is not supported")),
        }
    }
    Ok(t)
}

fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!("expected a string, got {v:?}")),
    }
}

fn list(v: &Value) -> Result<Vec<String>, String> {
    v.as_sequence().ok_or("expected a list")?.iter().map(text).collect()
}

/// A mapping, or a list of `K=V`, as compose takes `args` and `labels`.
fn pairs(v: &Value) -> Result<BTreeMap<String, String>, String> {
    match v {
        Value::Mapping(m) => m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| Ok((text(k)?, text(v)?))).collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|x| text(x).map(|t| t.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap_or((t, String::new()))))
            .collect(),
        _ => Err("expected a mapping or a list of K=V".into()),
    }
}

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`, as compose interpolates.
fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
        {
            let expr = &body[..end];
            let value = match expr.split_once(":-").or_else(|| expr.split_once('-')) {
                Some((name, default)) => env(name).filter(|v| !v.is_empty() || !expr.contains(":-")).unwrap_or_else(|| default.to_string()),
                None => env(expr).unwrap_or_default(),
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn compose_interpolation() {
        let env = |k: &str| (k == "TAG").then(|| "v2".to_string());
        assert_eq!(super::interpolate("app:${TAG} ${NOPE:-dflt} ${NOPE} $$x", &env), "app:v2 dflt  $x");
    }
}
