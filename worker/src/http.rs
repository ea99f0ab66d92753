//! HTTP sources (`ADD https://…`): the body is streamed into the content store, verified
//! against `--checksum` when given, and later laid out as a one-file snapshot.

use crate::WorkerError;
use rdock_imagespec::Digest;
use rdock_snapshotter::{ContentStore, Snapshotter};
use std::io::Read;

/// A fetched URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The body's sha256 (its blob in the content store).
    pub digest: Digest,
    /// Last-Modified as Unix seconds, if the server said.
    pub mtime: Option<i64>,
}

/// RFC 7231 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, _] = parts.as_slice() else { return None };
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = months.iter().position(|x| x == mon)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + t.first()? * 3600 + t.get(1)? * 60 + t.get(2)?)
}

/// Downloads `url` into the content store, checking `checksum` (`sha256:…`) if given.
pub fn fetch(url: &str, checksum: Option<&str>, content: &ContentStore) -> Result<Fetched, WorkerError> {
    let fail = |reason: String| WorkerError::Path { path: url.to_string(), reason };
    let expected = match checksum {
        Some(c) => Some(Digest::parse(c).map_err(|e| fail(format!("invalid --checksum: {e}")))?),
        None => None,
    };
    let mut resp = ureq::get(url).call().map_err(|e| fail(format!("download failed: {e}")))?;
    let mtime = resp.headers().get("last-modified").and_then(|v| v.to_str().ok()).and_then(parse_http_date);
    let mut body = resp.body_mut().as_reader();
    let mut reader: &mut dyn Read = &mut body;
    let (digest, _) = content.put_reader(&mut reader, expected.as_ref()).map_err(|e| match e {
        rdock_snapshotter::SnapshotError::DigestMismatch { expected, actual, .. } => {
            fail(format!("checksum mismatch: expected {expected}, got {actual}"))
        }
        other => WorkerError::Snapshot(other),
    })?;
    Ok(Fetched { digest, mtime })
}

/// Downloads `url` into the file `dest` (a build context fetched from a URL).
pub fn download(url: &str, dest: &std::path::Path) -> Result<(), WorkerError> {
    let fail = |reason: String| WorkerError::Path { path: url.to_string(), reason };
    let mut resp = ureq::get(url).call().map_err(|e| fail(format!("download failed: {e}")))?;
    let mut out = std::fs::File::create(dest).map_err(|e| WorkerError::Io(dest.to_path_buf(), e))?;
    std::io::copy(&mut resp.body_mut().as_reader(), &mut out).map_err(|e| fail(format!("download failed: {e}")))?;
    Ok(())
}

impl crate::Worker {
    /// Lays a fetched body out as a committed snapshot holding one file, `/<filename>`
    /// (mode 0600, BuildKit's default for downloads), and returns its name.
    pub fn http_snapshot(&self, fetched: &Fetched, filename: &str) -> Result<String, WorkerError> {
        let snaps = self.store().snapshots();
        let name = format!("http-{}-{}", fetched.digest.hex(), blake3::hash(filename.as_bytes()).to_hex());
        if snaps.exists(&name)? {
            return Ok(name);
        }
        let key = rdock_snapshotter::active_key("http");
        snaps.prepare(&key, None)?;
        let result = (|| {
            let fs = snaps.fs_dir(&key)?;
            let dest = fs.join(filename);
            let mut src = self.store().content().open(&fetched.digest)?;
            let mut out = std::fs::File::create(&dest).map_err(|e| WorkerError::Io(dest.clone(), e))?;
            std::io::copy(&mut src, &mut out).map_err(|e| WorkerError::Io(dest.clone(), e))?;
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| WorkerError::Io(dest.clone(), e))?;
            let t = nix::sys::time::TimeSpec::new(fetched.mtime.unwrap_or(0), 0);
            let _ = nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &dest, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink);
            Ok(())
        })();
        match result.and_then(|()| snaps.commit(&name, &key).map_err(WorkerError::from)) {
            Ok(()) => Ok(name),
            Err(e) => {
                let _ = snaps.remove(&key);
                if snaps.exists(&name)? { Ok(name) } else { Err(e) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(super::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
    }
}
