//! `rdock du`, `rdock prune` and the cap enforced after every build: parsing what users
//! type (`10GB`, `24h`), reading the configured cap, and printing what the solver's
//! garbage collector reports.

use crate::UsageError;
use crate::format::{human, parse_size};
use anyhow::Context;
use rdock_snapshotter::Store;
use rdock_snapshotter::lock::Wait;
use rdock_solver::gc::{self, ItemKind, PruneOptions};
use std::time::Duration;

/// Parses a duration as Go's `time.ParseDuration` does: `24h`, `1h30m`, `90s`, `1.5h`,
/// `500ms`; also `d` for days, which docker's `until` filters take too.
pub fn parse_duration(s: &str) -> Result<Duration, UsageError> {
    let bad = || UsageError(format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d), like 24h or 1h30m"));
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut secs = 0f64;
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        secs += n * scale;
        rest = &rest[u_end..];
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The cap on the store's disk use: `RDOCK_GC_KEEP_STORAGE`, else `keep-storage` in the
/// `[gc]` table of `$RDOCK_ROOT/config.toml`; None when neither is set.
pub fn configured_cap(store: &Store) -> anyhow::Result<Option<u64>> {
    if let Ok(v) = std::env::var("RDOCK_GC_KEEP_STORAGE")
        && !v.trim().is_empty()
    {
        return Ok(Some(parse_size(&v).context("RDOCK_GC_KEEP_STORAGE")?));
    }
    let cfg = crate::config::load(store)?;
    cfg.gc.keep_storage.map(|s| parse_size(&s).context("gc.keep-storage in config.toml")).transpose()
}

/// After a build: prunes least recently used data until the store is within the
/// configured cap. If other builds are running, the last of them to finish does it.
/// Says what it did on stderr unless `quiet`.
pub fn enforce_cap(store: &Store, quiet: bool) -> anyhow::Result<()> {
    let Some(cap) = configured_cap(store)? else { return Ok(()) };
    let Some(lock) = store.exclusive(Wait::NoWait)? else { return Ok(()) };
    let report = gc::prune(store, &PruneOptions { all: true, keep_storage: Some(cap), until: None }, &lock)?;
    if !quiet && !report.removed.is_empty() {
        eprintln!(
            "gc: freed {} ({} items); the store uses {} of its {} cap",
            human(report.freed()),
            report.removed.len(),
            human(report.total_after),
            human(cap)
        );
    }
    if report.total_after > cap {
        eprintln!(
            "warning: the store uses {} after garbage collection, over its cap of {}: what remains is needed by tagged images",
            human(report.total_after),
            human(cap)
        );
    }
    Ok(())
}

/// `rdock du [--verbose] [--format json]`.
pub fn du(verbose: bool, json: bool) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let inv = gc::inventory(&store)?;
    let kinds = inv.by_kind();
    if json {
        let doc = serde_json::json!({
            "kinds": kinds,
            "total": inv.total(),
            "reclaimable": kinds.iter().map(|k| k.reclaimable).sum::<u64>(),
            "items": if verbose { serde_json::to_value(&inv.items)? } else { serde_json::Value::Null },
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if verbose {
        let mut items: Vec<_> = inv.items.iter().filter(|i| i.kind != ItemKind::Metadata).collect();
        items.sort_by_key(|i| std::cmp::Reverse(i.last_used));
        println!("{:<13} {:<75} {:>10} {:<20} {:<11}", "KIND", "NAME", "SIZE", "LAST USED", "RECLAIMABLE");
        for i in items {
            let state = match (i.reclaimable, i.shared) {
                (false, _) => "no",
                (true, true) => "with --all",
                (true, false) => "yes",
            };
            println!(
                "{:<13} {:<75} {:>10} {:<20} {:<11}",
                i.kind.label(),
                i.name,
                human(i.size),
                rdock_imagespec::time::rfc3339(i.last_used, 0).get(..19).unwrap_or(""),
                state
            );
        }
        println!();
    }
    println!("{:<13} {:>10} {:>12} {:>6}", "KIND", "SIZE", "RECLAIMABLE", "ITEMS");
    for k in &kinds {
        println!("{:<13} {:>10} {:>12} {:>6}", k.kind.label(), human(k.size), human(k.reclaimable), k.count);
    }
    let reclaimable: u64 = kinds.iter().map(|k| k.reclaimable).sum();
    println!("{:<13} {:>10} {:>12} {:>6}", "total", human(inv.total()), human(reclaimable), inv.items.len());
    Ok(())
}

/// `rdock prune [--all] [--keep-storage SIZE] [--filter until=DURATION]`.
pub fn prune(all: bool, keep_storage: Option<&str>, filters: &[String], verbose: bool) -> anyhow::Result<()> {
    let mut opts = PruneOptions { all, keep_storage: keep_storage.map(parse_size).transpose()?, until: None };
    for f in filters {
        match f.split_once('=') {
            Some(("until", d)) => opts.until = Some(parse_duration(d)?),
            _ => return Err(UsageError(format!("unsupported filter {f:?}: supported is until=DURATION (like until=24h)")).into()),
        }
    }
    let store = crate::open_store()?;
    let lock = match store.exclusive(Wait::NoWait)? {
        Some(l) => l,
        None => {
            eprintln!("waiting for running builds to finish…");
            store.exclusive(Wait::Block)?.context("taking the store for garbage collection")?
        }
    };
    let report = gc::prune(&store, &opts, &lock)?;
    for (kind, name, size) in &report.removed {
        if verbose {
            println!("deleted {:<12} {name} {}", kind.label(), human(*size));
        }
    }
    let n = report.removed.len();
    println!(
        "Total reclaimed space: {} ({n} item{}); the store now uses {}",
        human(report.freed()),
        if n == 1 { "" } else { "s" },
        human(report.total_after)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_parses_them() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["", "24", "h", "1y", "1h30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
