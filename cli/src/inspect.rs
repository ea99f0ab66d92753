//! `rdock layers IMAGE`: the layer analysis of [`rdock_oci::analysis`], in the terminal.

use rdock_oci::ImageStore;
use rdock_oci::analysis::{FileEntry, analyse};

/// `rdock layers IMAGE [--format json] [--limit N]`.
pub fn layers(name: &str, json: bool, limit: usize) -> anyhow::Result<()> {
    let images = ImageStore::new(crate::open_store()?);
    let (m, cfg) = crate::commands::image(&images, name)?;
    let report = analyse(&images, name, &m, &cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let human = crate::format::human;
    let cap = |n: usize| if limit == 0 { n } else { n.min(limit) };
    for l in &report.layers {
        println!("Layer {} {} {}", l.index, &l.digest.as_str()[..19], human(l.size));
        if !l.created_by.is_empty() {
            println!("  {}", l.created_by);
        }
        let mut lines: Vec<(char, &FileEntry)> = Vec::new();
        lines.extend(l.added.iter().map(|e| ('A', e)));
        lines.extend(l.changed.iter().map(|e| ('M', e)));
        lines.extend(l.removed.iter().map(|e| ('D', e)));
        for (c, e) in lines.iter().take(cap(lines.len())) {
            println!("  {c} {:>9}  {}", human(e.size), e.path);
        }
        if lines.len() > cap(lines.len()) {
            println!("  … and {} more (--limit 0 lists all)", lines.len() - cap(lines.len()));
        }
        println!("  {} added, {} changed, {} removed", l.added.len(), l.changed.len(), l.removed.len());
    }
    println!();
    println!("Total image size:       {}", human(report.final_bytes));
    println!("Potential wasted space: {}", human(report.wasted_bytes));
    println!("Image efficiency score: {:.1} %", report.efficiency * 100.0);
    if !report.inefficiencies.is_empty() {
        println!();
        println!("{:>6} {:>10}  PATH", "COUNT", "WASTED");
        for w in report.inefficiencies.iter().take(cap(report.inefficiencies.len())) {
            println!("{:>6} {:>10}  {}", w.count, human(w.wasted), w.path);
        }
    }
    Ok(())
}
