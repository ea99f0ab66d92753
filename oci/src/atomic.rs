//! Output files appear whole or not at all: written beside their destination under a
//! temporary name, flushed, and renamed into place; removed on any error.

use crate::OciError;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Creates `dest` by letting `fill` write into a buffered temporary file next to it.
pub(crate) fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<(), OciError>,
) -> Result<(), OciError> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.rdock-tmp-{}", std::process::id()));
    let io = |e: std::io::Error| OciError::Io(dest.to_path_buf(), e);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        w.flush().map_err(io)?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, dest).map_err(io),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
