//! Text in and out as docker reads and writes it: byte counts and durations for people,
//! tables in columns, sizes (`512MB`) and platforms (`linux/arm64`) on the command line.
//! A leaf: every other CLI module may use it, it uses none of them.

use crate::UsageError;
use rdock_imagespec::Platform;

/// Prints `rows` under `headers` in columns as wide as their widest cell, three spaces
/// apart, as docker's tabwriter lays out its tables.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let print = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, c) in cells.enumerate() {
            line.push_str(c);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(c.chars().count()) + 3;
            line.extend(std::iter::repeat_n(' ', pad));
        }
        println!("{}", line.trim_end());
    };
    print(&mut headers.iter().copied());
    for r in rows {
        print(&mut r.iter().map(String::as_str));
    }
}

/// A byte count for people, in decimal units as docker prints them: `1.5MB`.
pub fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{n}B") } else { format!("{v:.1}{}", units[u]) }
}

/// Docker's `units.HumanDuration`: "Less than a second", "About a minute", "3 hours".
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..60 => format!("{s} seconds"),
        60..120 => "About a minute".into(),
        120..3600 => format!("{} minutes", s / 60),
        3600..7200 => "About an hour".into(),
        7200..172_800 => format!("{} hours", s / 3600),
        172_800..1_209_600 => format!("{} days", s / 86_400),
        1_209_600..5_184_000 => format!("{} weeks", s / 604_800),
        5_184_000..63_072_000 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// Parses a size as docker does (`RAMInBytes`): a number with an optional binary unit,
/// `k`, `m`, `g`, `t`, `p`, optionally followed by `i` and/or `b`, any case: `512MB`,
/// `1.5g`, `10GiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, UsageError> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || UsageError(format!("invalid size {s:?}: expected a number with an optional unit (b, k, m, g, t, p), like 10GB"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// Parses a target platform (`linux/arm64`); only one: multi-platform builds are not
/// supported.
pub fn parse_platform(spec: &str) -> anyhow::Result<Platform> {
    if spec.contains(',') {
        return Err(UsageError(format!("platform {spec}: one platform here, not a list")).into());
    }
    Platform::parse(spec).map_err(|e| UsageError(e.to_string()).into())
}

/// Parses `--platform`'s comma-separated list (`linux/amd64,linux/arm64`), each once.
pub fn parse_platforms(spec: &str) -> anyhow::Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = parse_platform(p)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(UsageError(format!("platform {spec:?}: expected os/arch[/variant], comma-separated")).into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_lists_parse_each_once() {
        let got = parse_platforms("linux/amd64, linux/arm64,linux/amd64").unwrap();
        assert_eq!(got.iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"]);
        assert!(parse_platforms(",").is_err());
        assert!(parse_platforms("linux/amd64,linux/potato").is_err());
    }

    #[test]
    fn sizes_parse_as_docker_parses_them() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10k").unwrap(), 10 * 1024);
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("3 mb").unwrap(), 3 << 20);
        for bad in ["", "ten", "10x", "1..2G", "-5m"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
