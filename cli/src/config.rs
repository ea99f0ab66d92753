//! `$RDOCK_ROOT/config.toml`: settings of the store that every command reads. A key rdock
//! does not know is an error naming it, never silently ignored.
//!
//! ```toml
//! [gc]
//! keep-storage = "10GB"   # prune after every build down to this
//!
//! [limits]                # every build step's cgroup (and a container's, unless its flags say)
//! pids = 4096             # tasks; 0 or -1 for no limit
//! memory = "4g"
//! cpus = 1.5
//! ```

use crate::format::parse_size;
use anyhow::Context;
use rdock_snapshotter::Store;
use rdock_worker::cgroup::Limits;

/// The file's contents.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gc]`.
    #[serde(default)]
    pub gc: GcConfig,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `[gc]`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// The cap on the store's disk use.
    #[serde(rename = "keep-storage")]
    pub keep_storage: Option<String>,
}

/// `[limits]`.
#[derive(serde::Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Tasks; 0 or negative for no limit.
    pub pids: Option<i64>,
    /// Memory, as `--memory` takes it.
    pub memory: Option<String>,
    /// CPUs, as `--cpus` takes it.
    pub cpus: Option<f64>,
}

/// Reads `$RDOCK_ROOT/config.toml` (an absent file is all defaults).
pub fn load(store: &Store) -> anyhow::Result<Config> {
    let path = store.root().join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Config::default()) };
    toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// A pids limit as docker's `--pids-limit` takes it: 0 or -1 is none.
pub fn pids(n: i64) -> Option<u64> {
    (n > 0).then_some(n as u64)
}

/// CPUs as docker's `--cpus` takes them, in thousandths.
pub fn millicpus(cpus: f64) -> anyhow::Result<u64> {
    anyhow::ensure!(cpus.is_finite() && cpus > 0.0, "invalid --cpus {cpus}: a number of CPUs above 0, like 1.5");
    Ok((cpus * 1000.0).round().max(1.0) as u64)
}

/// The limits `[limits]` sets, over rdock's defaults.
pub fn limits(store: &Store) -> anyhow::Result<Limits> {
    let c = load(store)?.limits;
    let mut l = Limits::default();
    if let Some(n) = c.pids {
        l.pids = pids(n);
    }
    if let Some(m) = &c.memory {
        l.memory = Some(parse_size(m).context("limits.memory in config.toml")?);
    }
    if let Some(cpus) = c.cpus {
        l.millicpus = Some(millicpus(cpus).context("limits.cpus in config.toml")?);
    }
    Ok(l)
}
