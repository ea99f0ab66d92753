//! `rewrite-timestamp=true`: the file times in the layers a build wrote are clamped to
//! `SOURCE_DATE_EPOCH`, as BuildKit's exporters do, so that two builds of the same inputs
//! at different times give the same layers. Base image layers are never rewritten: a layer
//! is the base's while its diff ID is the base image's at the same position.
//!
//! Only times later than the epoch change (a file older than it keeps its time), in the
//! ustar header and in PAX `mtime`/`atime`/`ctime` records; every other byte of every
//! entry (names, modes, owners, xattrs, whiteouts, contents) is copied as it was.

use crate::OciError;
use rdock_imagespec::Digest;
use rdock_snapshotter::ContentStore;
use std::io::{Read, Write};

/// Writes the uncompressed layer `src` to `dst` with every time later than `epoch` set to
/// it.
pub(crate) fn clamp_layer(src: impl Read, dst: impl Write, epoch: i64) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(src);
    let mut out = tar::Builder::new(dst);
    // Raw: PAX and GNU long-name records come as entries of their own, copied through
    // (PAX times rewritten) so that nothing of the original encoding is lost.
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        if header.mtime().is_ok_and(|t| t as i64 > epoch) {
            header.set_mtime(epoch.max(0) as u64);
        }
        if let Some(gnu) = header.as_gnu_mut() {
            for t in [&mut gnu.atime, &mut gnu.ctime] {
                if octal(t).is_some_and(|v| v > epoch) {
                    write_octal(t, epoch.max(0) as u64);
                }
            }
        }
        if header.entry_type() == tar::EntryType::XHeader || header.entry_type() == tar::EntryType::XGlobalHeader {
            let mut records = Vec::new();
            entry.read_to_end(&mut records)?;
            let records = clamp_pax(&records, epoch);
            header.set_size(records.len() as u64);
            header.set_cksum();
            out.append(&header, &records[..])?;
            continue;
        }
        header.set_cksum();
        out.append(&header, &mut entry)?;
    }
    out.into_inner()?.flush()
}

/// PAX records (`LEN key=value\n`) with `mtime`, `atime` and `ctime` later than `epoch`
/// set to it; other records byte for byte.
fn clamp_pax(records: &[u8], epoch: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else { break };
        let Some(len) = std::str::from_utf8(&rest[..space]).ok().and_then(|s| s.parse::<usize>().ok()) else { break };
        if len <= space || len > rest.len() {
            break;
        }
        let record = &rest[..len];
        rest = &rest[len..];
        let body = &record[space + 1..record.len() - 1];
        let later = |v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
                .is_some_and(|s| s >= epoch && v != epoch.to_string().as_bytes())
        };
        match body.iter().position(|&b| b == b'=') {
            Some(eq) if matches!(&body[..eq], b"mtime" | b"atime" | b"ctime") && later(&body[eq + 1..]) => {
                let kv = format!("{}={epoch}\n", String::from_utf8_lossy(&body[..eq]));
                out.extend_from_slice(pax_record(&kv).as_bytes());
            }
            _ => out.extend_from_slice(record),
        }
    }
    out.extend_from_slice(rest);
    out
}

/// `kv` (`key=value\n`) with its length prefix, which counts itself.
fn pax_record(kv: &str) -> String {
    let mut len = kv.len() + 2;
    loop {
        let candidate = format!("{len} {kv}");
        if candidate.len() == len {
            return candidate;
        }
        len = candidate.len();
    }
}

fn octal(field: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(field).ok()?.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() { None } else { i64::from_str_radix(s, 8).ok() }
}

fn write_octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    if s.len() == field.len() {
        field.copy_from_slice(s.as_bytes());
    }
}

/// The layer `digest` with its times clamped, stored uncompressed; returns its digest
/// (which is also its diff ID) and size.
pub(crate) fn clamp_stored_layer(content: &ContentStore, digest: &Digest, epoch: i64) -> Result<(Digest, u64), OciError> {
    let src = content.open_uncompressed(digest)?;
    let mut w = content.writer()?;
    clamp_layer(std::io::BufReader::with_capacity(1 << 20, src), &mut w, epoch).map_err(|e| OciError::Io(content.path(digest), e))?;
    Ok(w.commit(None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, mtime) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_mtime(*mtime);
            h.set_cksum();
            b.append_data(&mut h, name, &b"hi"[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn times(tar: &[u8]) -> Vec<(String, u64)> {
        let mut a = tar::Archive::new(tar);
        a.entries().unwrap().map(|e| e.unwrap()).map(|e| (e.path().unwrap().display().to_string(), e.header().mtime().unwrap())).collect()
    }

    #[test]
    fn later_times_are_clamped_and_earlier_kept() {
        let long = "d/".repeat(80) + "long-name-beyond-the-ustar-header";
        let src = layer(&[("new", 2_000_000_000), ("old", 1_000), (&long, 2_000_000_000)]);
        let mut out = Vec::new();
        clamp_layer(&src[..], &mut out, 1_700_000_000).unwrap();
        assert_eq!(times(&out), vec![("new".into(), 1_700_000_000), ("old".into(), 1_000), (long, 1_700_000_000)]);
    }

    #[test]
    fn pax_times_are_clamped_with_their_lengths_right() {
        let recs = format!("{}{}", pax_record("mtime=2000000000.123456789\n"), pax_record("path=a\n"));
        let got = String::from_utf8(clamp_pax(recs.as_bytes(), 1_700_000_000)).unwrap();
        assert_eq!(got, format!("{}{}", pax_record("mtime=1700000000\n"), pax_record("path=a\n")));
        assert_eq!(pax_record("mtime=1700000000\n"), "20 mtime=1700000000\n");
        let early = pax_record("mtime=5.5\n");
        assert_eq!(clamp_pax(early.as_bytes(), 1_700_000_000), early.as_bytes());
    }
}
