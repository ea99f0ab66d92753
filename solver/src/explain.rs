//! Why a step missed the cache: every build records, per step, what its cache key was made
//! of ([`KeyInfo`]: the instruction, environment, sources, the context files it read and its
//! inputs), and which key each step of the target had. When a step misses, its ingredients
//! are compared with those of the same step in the last build of the same target, and the
//! differences are the reasons: the files that changed and how, the build arg or variable,
//! the base image digest, the instruction text, a step it depends on — or that there is no
//! earlier build to compare with.
//!
//! Records live in the metadata database: `key_info` (cache key → its ingredients, written
//! once per key) and `last_build` (target → its steps' keys, replaced by every build).

use crate::SolveError;
use rdock_snapshotter::Store;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What one vertex's cache key was computed from, in terms a user recognises.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The step as shown in progress (`[final 3/5] COPY . /app`).
    pub name: String,
    /// The op, without its position: the instruction text, or the source's identifier.
    pub text: String,
    /// `KEY=value` environment of a RUN (build args and ENV).
    pub env: Vec<String>,
    /// What a source resolved to (git commit, download digest).
    pub resolved: Option<String>,
    /// Input steps, by name, with their keys.
    pub inputs: Vec<(String, String)>,
    /// Context files read, by path.
    pub files: BTreeMap<String, FileNote>,
}

/// What a context file contributed to a key: cheap to note for every file on every build
/// (no formatting), compared only when a miss is explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNote {
    /// st_mode (type and permission bits).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// The first 12 bytes of the content digest (files), or the link target (symlinks).
    pub content: FileContent,
}

/// A file's content digest prefix, a link's target, or nothing (directories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileContent {
    /// Regular file.
    Digest([u8; 12]),
    /// Symlink.
    Link(String),
    /// Directory or other.
    None,
}

/// The step part of a name: `[final 3/5]`, the position that identifies a step across
/// builds even when its text changes.
fn step_of(name: &str) -> &str {
    if name.starts_with('[')
        && let Some(end) = name.find(']')
    {
        return &name[..=end];
    }
    name
}

/// The text after the step part.
fn text_of(name: &str) -> &str {
    name[step_of(name).len()..].trim()
}

impl KeyInfo {
    /// A record for a step named `name`.
    pub fn new(name: &str) -> KeyInfo {
        KeyInfo { name: name.to_string(), text: text_of(name).to_string(), ..Default::default() }
    }
}

/// The last build of each target and the ingredients of every key, over a store.
pub struct Explainer {
    store: Store,
    target: String,
    /// Step → key in the last build of this target.
    previous: HashMap<String, String>,
    /// Whether there was a last build at all.
    had_previous: bool,
}

impl Explainer {
    /// Loads the last build of `target` (a caller-chosen identity: context, Dockerfile,
    /// stage, platform).
    pub fn load(store: &Store, target: &str) -> Result<Explainer, SolveError> {
        let conn = store.db().conn();
        let steps: Option<Vec<u8>> =
            conn.query_row("SELECT steps FROM last_build WHERE target = ?1", params![target], |r| r.get(0)).optional()?;
        let had_previous = steps.is_some();
        let previous: Vec<(String, String)> = steps.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Ok(Explainer { store: store.clone(), target: target.to_string(), previous: previous.into_iter().collect(), had_previous })
    }

    fn info(&self, key: &str) -> Option<KeyInfo> {
        let conn = self.store.db().conn();
        let blob: Option<Vec<u8>> =
            conn.query_row("SELECT info FROM key_info WHERE key = ?1", params![key], |r| r.get(0)).optional().ok()?;
        blob.and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Why the step `now` (with key `key`) missed; `bypassed` when the cache was skipped on
    /// purpose (`--no-cache`, `--no-cache-filter`).
    pub fn why(&self, now: &KeyInfo, key: &str, bypassed: bool) -> Vec<String> {
        if bypassed {
            return vec!["the cache was bypassed for this step (--no-cache or --no-cache-filter)".into()];
        }
        if !self.had_previous {
            return vec!["no earlier build of this target to compare with".into()];
        }
        let step = step_of(&now.name);
        let prev_key = self.previous.get(step).or_else(|| {
            // A step that moved (an instruction added above it) is found by its text.
            self.previous.iter().find(|(s, k)| text_of(s) == now.text && !k.is_empty()).map(|(_, k)| k)
        });
        let Some(prev_key) = prev_key else {
            return vec![format!("{step} is new: the last build of this target had no such step")];
        };
        if prev_key == key {
            return vec!["the same step was built before, but its result is no longer in the cache (pruned)".into()];
        }
        let Some(prev) = self.info(prev_key) else {
            return vec!["the last build's record of this step is gone; cannot compare".into()];
        };
        diff(&prev, now)
    }

    /// Records this build: the ingredients of every key not yet known, and the target's steps.
    pub fn record(&self, steps: &[(KeyInfo, String)]) -> Result<(), SolveError> {
        let mut conn = self.store.db().conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM key_info WHERE key = ?1")?;
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO key_info (key, info) VALUES (?1, ?2)")?;
            let mut seen = HashSet::new();
            for (info, key) in steps {
                if !seen.insert(key) || exists.exists(params![key])? {
                    continue;
                }
                insert.execute(params![key, serde_json::to_vec(info).unwrap_or_default()])?;
            }
        }
        let list: Vec<(String, &String)> = steps.iter().map(|(i, k)| (step_of(&i.name).to_string(), k)).collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        tx.execute(
            "INSERT OR REPLACE INTO last_build (target, steps, time) VALUES (?1, ?2, ?3)",
            params![self.target, serde_json::to_vec(&list).unwrap_or_default(), now],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Garbage collection: forgets what keys were made of, except for keys still cached and
/// the steps of each target's last build (what the next build is explained against).
pub(crate) fn prune_records(store: &Store) -> Result<(), SolveError> {
    let mut conn = store.db().conn();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS keep_keys (key TEXT PRIMARY KEY); DELETE FROM keep_keys;")?;
    {
        let mut steps = tx.prepare("SELECT steps FROM last_build")?;
        let lists: Vec<Vec<u8>> = steps.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut keep = tx.prepare("INSERT OR IGNORE INTO keep_keys (key) VALUES (?1)")?;
        for list in lists {
            let list: Vec<(String, String)> = serde_json::from_slice(&list).unwrap_or_default();
            for (_, key) in list {
                keep.execute(params![key])?;
            }
        }
    }
    tx.execute("DELETE FROM key_info WHERE key NOT IN (SELECT key FROM keep_keys) AND key NOT IN (SELECT key FROM cache)", [])?;
    tx.execute_batch("DROP TABLE keep_keys;")?;
    tx.commit()?;
    Ok(())
}

/// The differences between two records of one step, most specific first.
fn diff(prev: &KeyInfo, now: &KeyInfo) -> Vec<String> {
    let mut why = Vec::new();
    if prev.text != now.text {
        why.push(format!("instruction changed: {:?} → {:?}", prev.text, now.text));
    }
    if prev.resolved != now.resolved {
        why.push(format!(
            "source now resolves to {} (was {})",
            now.resolved.as_deref().unwrap_or("nothing"),
            prev.resolved.as_deref().unwrap_or("nothing")
        ));
    }
    let env = |v: &[String]| -> BTreeMap<String, String> {
        v.iter().map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap_or((e.clone(), String::new()))).collect()
    };
    let (pe, ne) = (env(&prev.env), env(&now.env));
    for (k, v) in &ne {
        match pe.get(k) {
            None => why.push(format!("variable {k} is new: {v:?}")),
            Some(old) if old != v => why.push(format!("variable {k} changed: {old:?} → {v:?}")),
            _ => {}
        }
    }
    for k in pe.keys().filter(|k| !ne.contains_key(*k)) {
        why.push(format!("variable {k} is gone"));
    }
    let mut changed: Vec<String> = Vec::new();
    for (p, d) in &now.files {
        match prev.files.get(p) {
            None => changed.push(format!("{p} (added)")),
            Some(old) if old != d => {
                let how = if old.mode != d.mode { "mode" } else { "content" };
                changed.push(format!("{p} ({how} changed)"));
            }
            _ => {}
        }
    }
    for p in prev.files.keys().filter(|p| !now.files.contains_key(*p)) {
        changed.push(format!("{p} (removed)"));
    }
    if !changed.is_empty() {
        let n = changed.len();
        let shown: Vec<String> = changed.into_iter().take(10).collect();
        let more = if n > 10 { format!(" and {} more", n - 10) } else { String::new() };
        why.push(format!("context files changed: {}{more}", shown.join(", ")));
    }
    for (i, (name, key)) in now.inputs.iter().enumerate() {
        match prev.inputs.get(i) {
            Some((_, old)) if old == key => {}
            _ if name.starts_with("docker-image://") || name.contains("load metadata for") => {
                let was = prev.inputs.get(i).map(|(n, _)| n.as_str()).unwrap_or("nothing");
                why.push(format!("base image changed: {} (was {})", image_of(name), image_of(was)));
            }
            _ => why.push(format!("an input changed: {name}")),
        }
    }
    if why.is_empty() {
        why.push("its definition changed (an option that is not shown, such as a mount or a flag)".into());
    }
    why
}

fn image_of(name: &str) -> &str {
    name.trim_start_matches("docker-image://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named() {
        let mut a = KeyInfo::new("[final 2/3] RUN make");
        a.env = vec!["V=1".into(), "GONE=x".into()];
        let note = |mode, d| FileNote { mode, size: 3, content: FileContent::Digest([d; 12]) };
        a.files.insert("src/a.c".into(), note(0o100644, 1));
        a.files.insert("src/old.c".into(), note(0o100644, 2));
        a.inputs.push(("docker-image://busybox@sha256:1".into(), "k1".into()));
        let mut b = KeyInfo::new("[final 2/3] RUN make all");
        b.env = vec!["V=2".into()];
        b.files.insert("src/a.c".into(), note(0o100755, 1));
        b.files.insert("src/new.c".into(), note(0o100644, 3));
        b.inputs.push(("docker-image://busybox@sha256:2".into(), "k2".into()));
        let why = diff(&a, &b);
        assert_eq!(
            why,
            vec![
                "instruction changed: \"RUN make\" → \"RUN make all\"".to_string(),
                "variable V changed: \"1\" → \"2\"".into(),
                "variable GONE is gone".into(),
                "context files changed: src/a.c (mode changed), src/new.c (added), src/old.c (removed)".into(),
                "base image changed: busybox@sha256:2 (was busybox@sha256:1)".into(),
            ]
        );
    }
}
