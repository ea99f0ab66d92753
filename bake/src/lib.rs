//! buildx bake's files read into a plan of builds. `docker-bake.hcl` (variables, groups,
//! targets, `inherits`, expressions and a few of buildx's functions, evaluated by the
//! `hcl-rs` crate), `docker-bake.json` (the same blocks as JSON, strings interpolated) and
//! `compose.yaml` (each service's `build:` a target) all become one [`Definition`]: targets
//! by name and groups of them. [`Definition::resolve`] expands the names asked for (groups,
//! nested, and `default`) into the targets to build, each with what it inherits merged in;
//! [`Plan::to_json`] prints them as `buildx bake --print` does.
//!
//! An attribute rdock does not know is an error that names it, never ignored. Nothing here
//! builds: the CLI turns each target into a build request.

mod compose;
mod funcs;
mod hclfile;
mod jsonfile;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One build, as a bake file describes it. Absent attributes are None or empty; when
/// targets are merged (a later file, or `inherits`), what the later one sets wins, and
/// maps are merged key by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Target {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The context (a directory, a git or http URL); `.` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The Dockerfile, relative to the context; `Dockerfile` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The Dockerfile's text, in place of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    /// The stage to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Build arguments.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Image labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Named contexts, as `--build-context` takes them (`target:NAME` for another target
    /// is not supported).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, String>,
    /// Image names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Target platforms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Cache imports, as `--cache-from` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    /// Cache exports, as `--cache-to` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_to: Vec<String>,
    /// Outputs, as `--output` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    /// Secrets, as `--secret` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret: Vec<String>,
    /// SSH agents, as `--ssh` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<String>,
    /// Stages to rebuild without the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_cache_filter: Vec<String>,
    /// Run every step without the cache (`true`, `1`, as buildx reads it).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_bool")]
    pub no_cache: Option<bool>,
    /// Ask registries for base images the store has (`true`, `1`, `"always"`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_bool")]
    pub pull: Option<bool>,
    /// The network of RUN steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Targets whose attributes this one starts from (resolved away by `resolve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<String>,
}

/// A boolean as bake files write them: `true`, `1`, `"true"`, `"always"` (pull).
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::Number(n) => Some(n.as_f64() != Some(0.0)),
        serde_json::Value::String(s) => Some(matches!(s.as_str(), "true" | "1" | "always" | "TRUE" | "True")),
        other => return Err(serde::de::Error::custom(format!("expected a boolean, got {other}"))),
    })
}

/// How two definitions of a target combine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// The same target in a later file: the attributes buildx documents as "overridden by
    /// the last occurrence" are replaced, other lists are joined, maps merged.
    Files,
    /// `inherits`: what the inheriting target sets replaces, maps merged key by key.
    Inherits,
}

impl Target {
    /// `self` with what `over` sets laid on top.
    fn merged(&self, over: &Target, how: Merge) -> Target {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>) -> Option<T> {
            over.clone().or_else(|| base.clone())
        }
        fn list(base: &[String], over: &[String]) -> Vec<String> {
            if over.is_empty() { base.to_vec() } else { over.to_vec() }
        }
        let join = |base: &[String], over: &[String]| -> Vec<String> {
            if how == Merge::Inherits {
                return list(base, over);
            }
            let mut v = base.to_vec();
            v.extend(over.iter().filter(|x| !base.contains(x)).cloned());
            v
        };
        fn map(base: &BTreeMap<String, String>, over: &BTreeMap<String, String>) -> BTreeMap<String, String> {
            let mut m = base.clone();
            m.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
            m
        }
        Target {
            description: pick(&self.description, &over.description),
            context: pick(&self.context, &over.context),
            dockerfile: pick(&self.dockerfile, &over.dockerfile),
            dockerfile_inline: pick(&self.dockerfile_inline, &over.dockerfile_inline),
            target: pick(&self.target, &over.target),
            args: map(&self.args, &over.args),
            labels: map(&self.labels, &over.labels),
            contexts: map(&self.contexts, &over.contexts),
            tags: list(&self.tags, &over.tags),
            platforms: list(&self.platforms, &over.platforms),
            cache_from: join(&self.cache_from, &over.cache_from),
            cache_to: list(&self.cache_to, &over.cache_to),
            output: list(&self.output, &over.output),
            secret: join(&self.secret, &over.secret),
            ssh: join(&self.ssh, &over.ssh),
            no_cache_filter: join(&self.no_cache_filter, &over.no_cache_filter),
            no_cache: pick(&self.no_cache, &over.no_cache),
            pull: pick(&self.pull, &over.pull),
            network: pick(&self.network, &over.network),
            inherits: join(&self.inherits, &over.inherits),
        }
    }
}

/// Why a bake file could not be read or resolved.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// A file could not be read.
    #[error("reading {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// An HCL file does not parse.
    #[error("{file}: {source}")]
    Hcl {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: hcl::Error,
    },
    /// A JSON or YAML file does not parse, or a value is of the wrong kind.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// An expression could not be evaluated.
    #[error("{file}: {what}: {message}")]
    Eval {
        /// The file.
        file: String,
        /// Which variable or attribute.
        what: String,
        /// Why.
        message: String,
    },
    /// A name asked for (or inherited, or in a group) is neither a target nor a group.
    #[error("no target or group {name:?} (known: {known})")]
    Unknown {
        /// The name.
        name: String,
        /// What there is.
        known: String,
    },
    /// Targets inherit from, or groups contain, one another in a circle.
    #[error("{0} refer to one another in a cycle")]
    Cycle(String),
    /// A `--set` override is malformed or names an attribute rdock does not know.
    #[error("--set {spec}: {message}")]
    Set {
        /// The override.
        spec: String,
        /// Why.
        message: String,
    },
}

/// Every target and group the bake files define.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definition {
    /// Groups: names of targets or of other groups.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Targets by name.
    pub targets: BTreeMap<String, Target>,
}

impl Definition {
    /// Lays `target` named `name` over what an earlier file defined by that name.
    fn add_target(&mut self, name: String, target: Target) {
        let merged = match self.targets.get(&name) {
            Some(old) => old.merged(&target, Merge::Files),
            None => target,
        };
        self.targets.insert(name, merged);
    }

    /// Expands `names` (default: `default`) into the targets to build, inherits merged in,
    /// each once, in the order first named.
    pub fn resolve(&self, names: &[String]) -> Result<Plan, BakeError> {
        let asked: Vec<String> = if names.is_empty() { vec!["default".to_string()] } else { names.to_vec() };
        let mut order = Vec::new();
        for n in &asked {
            self.expand(n, &mut Vec::new(), &mut order)?;
        }
        let mut targets = BTreeMap::new();
        for n in &order {
            targets.insert(n.clone(), self.flatten(n, &mut Vec::new())?);
        }
        let group = BTreeMap::from([("default".to_string(), order.clone())]);
        Ok(Plan { group, order, targets })
    }

    fn known(&self) -> String {
        let mut all: Vec<&str> = self.targets.keys().chain(self.groups.keys()).map(String::as_str).collect();
        all.sort();
        all.dedup();
        if all.is_empty() { "none".into() } else { all.join(", ") }
    }

    /// Appends the targets `name` stands for to `out`.
    fn expand(&self, name: &str, chain: &mut Vec<String>, out: &mut Vec<String>) -> Result<(), BakeError> {
        if chain.iter().any(|c| c == name) {
            return Err(BakeError::Cycle(format!("groups {} and {name}", chain.join(", "))));
        }
        if let Some(members) = self.groups.get(name) {
            chain.push(name.to_string());
            for m in members {
                self.expand(m, chain, out)?;
            }
            chain.pop();
            return Ok(());
        }
        if !self.targets.contains_key(name) {
            return Err(BakeError::Unknown { name: name.to_string(), known: self.known() });
        }
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
        Ok(())
    }

    /// The target `name` with what it inherits (in order, each flattened) beneath it.
    fn flatten(&self, name: &str, chain: &mut Vec<String>) -> Result<Target, BakeError> {
        if chain.iter().any(|c| c == name) {
            return Err(BakeError::Cycle(format!("targets {} and {name}", chain.join(", "))));
        }
        let t = self.targets.get(name).ok_or_else(|| BakeError::Unknown { name: name.to_string(), known: self.known() })?;
        chain.push(name.to_string());
        let mut base = Target::default();
        for parent in &t.inherits {
            base = base.merged(&self.flatten(parent, chain)?, Merge::Inherits);
        }
        chain.pop();
        let mut out = base.merged(t, Merge::Inherits);
        out.inherits.clear();
        Ok(out)
    }
}

/// The targets to build.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The group printed (`default`: every target asked for).
    pub group: BTreeMap<String, Vec<String>>,
    /// Target names in the order asked.
    pub order: Vec<String>,
    /// The targets, resolved.
    pub targets: BTreeMap<String, Target>,
}

impl Plan {
    /// The plan as `buildx bake --print` shows it.
    pub fn to_json(&self) -> String {
        let group: serde_json::Map<String, serde_json::Value> =
            self.group.iter().map(|(k, v)| (k.clone(), serde_json::json!({ "targets": v }))).collect();
        let mut targets = serde_json::Map::new();
        for (name, t) in &self.targets {
            let mut t = t.clone();
            t.context.get_or_insert_with(|| ".".into());
            if t.dockerfile_inline.is_none() {
                t.dockerfile.get_or_insert_with(|| "Dockerfile".into());
            }
            targets.insert(name.clone(), serde_json::to_value(&t).unwrap_or_default());
        }
        let doc = serde_json::json!({ "group": group, "target": targets });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// Applies a `--set TARGET.KEY=VALUE` override (`*` for every target; lists are
    /// comma-separated; `args.K`, `labels.K`, `contexts.K` set one entry; `platform` is
    /// `platforms`).
    pub fn set(&mut self, spec: &str) -> Result<(), BakeError> {
        let bad = |message: String| BakeError::Set { spec: spec.to_string(), message };
        let (path, value) = spec.split_once('=').ok_or_else(|| bad("expected TARGET.KEY=VALUE".into()))?;
        let (pattern, key) = path.split_once('.').ok_or_else(|| bad("expected TARGET.KEY=VALUE".into()))?;
        let names: Vec<String> = self.targets.keys().filter(|n| pattern == "*" || *n == pattern).cloned().collect();
        if names.is_empty() {
            return Err(bad(format!("no target {pattern:?} in this bake")));
        }
        for n in names {
            let t = self.targets.get_mut(&n).ok_or_else(|| bad(format!("no target {n:?}")))?;
            set_attr(t, key, value).map_err(bad)?;
        }
        Ok(())
    }
}

fn set_attr(t: &mut Target, key: &str, value: &str) -> Result<(), String> {
    let mut doc = serde_json::to_value(&*t).map_err(|e| e.to_string())?;
    let obj = doc.as_object_mut().ok_or("not an object")?;
    let key = if key == "platform" { "platforms" } else { key };
    if let Some((map, k)) = key.split_once('.') {
        let m = obj.entry(map).or_insert_with(|| serde_json::json!({}));
        m.as_object_mut().ok_or(format!("{map} is not a map"))?.insert(k.to_string(), value.into());
    } else {
        let list = ["tags", "platforms", "cache-from", "cache-to", "output", "secret", "ssh", "no-cache-filter"];
        let v = match key {
            _ if list.contains(&key) => serde_json::json!(value.split(',').map(str::trim).collect::<Vec<_>>()),
            "no-cache" | "pull" => serde_json::Value::Bool(value == "true" || value == "1"),
            _ => value.into(),
        };
        obj.insert(key.to_string(), v);
    }
    *t = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    Ok(())
}

/// A bake file's name and text.
#[derive(Debug, Clone)]
pub struct BakeFile {
    /// Its path, for errors and to tell the format.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

impl BakeFile {
    /// Reads the file at `path`.
    pub fn read(path: &Path) -> Result<BakeFile, BakeError> {
        let text = std::fs::read_to_string(path).map_err(|e| BakeError::Read(path.to_path_buf(), e))?;
        Ok(BakeFile { path: path.to_path_buf(), text })
    }
}

/// The files buildx bake reads in `dir` when none is named, in its order.
pub fn default_files(dir: &Path) -> Vec<PathBuf> {
    [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yml",
        "docker-compose.yaml",
        "docker-bake.json",
        "docker-bake.hcl",
        "docker-bake.override.json",
        "docker-bake.override.hcl",
    ]
    .iter()
    .map(|n| dir.join(n))
    .filter(|p| p.is_file())
    .collect()
}

/// Reads `files` in order into one definition; `env` gives the environment variables
/// that override HCL and JSON variables, and that compose files interpolate.
pub fn parse(files: &[BakeFile], env: &dyn Fn(&str) -> Option<String>) -> Result<Definition, BakeError> {
    let mut vars = hclfile::Variables::default();
    // Variables first, from every file: a target may use one a later file declares.
    for f in files {
        match kind(&f.path) {
            Kind::Hcl => hclfile::declare(f, &mut vars)?,
            Kind::Json => jsonfile::declare(f, &mut vars)?,
            Kind::Compose => {}
        }
    }
    let ctx = vars.evaluate(env)?;
    let mut def = Definition::default();
    for f in files {
        match kind(&f.path) {
            Kind::Hcl => hclfile::read(f, &ctx, &mut def)?,
            Kind::Json => jsonfile::read(f, &ctx, &mut def)?,
            Kind::Compose => compose::read(f, env, &mut def)?,
        }
    }
    Ok(def)
}

enum Kind {
    Hcl,
    Json,
    Compose,
}

fn kind(p: &Path) -> Kind {
    match p.extension().and_then(|e| e.to_str()) {
        Some("json") => Kind::Json,
        Some("yaml" | "yml") => Kind::Compose,
        _ => Kind::Hcl,
    }
}

/// Converts an evaluated attribute map into a target, attribute names checked.
fn target_from(file: &str, name: &str, mut obj: serde_json::Map<String, serde_json::Value>) -> Result<Target, BakeError> {
    // Build args and labels may be numbers or booleans in the file; null leaves one unset.
    for m in ["args", "labels", "contexts"] {
        if let Some(serde_json::Value::Object(map)) = obj.get_mut(m) {
            map.retain(|_, v| !v.is_null());
            for v in map.values_mut() {
                if !v.is_string() {
                    *v = serde_json::Value::String(v.to_string());
                }
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| BakeError::Invalid { file: file.to_string(), message: format!("target {name:?}: {e}") })
}

#[cfg(test)]
mod tests;
