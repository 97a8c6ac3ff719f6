//! Small filesystem helpers shared by the daemon's writers.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` so readers see the old file or the new one, never a part: the
/// bytes go to a unique temporary file (named `temp_prefix…`) in the same directory, are
/// fsynced, and the file is renamed over `path`. Unique names keep two writers of the same path
/// from truncating each other's file.
pub fn write_atomic(path: &Path, bytes: &[u8], temp_prefix: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent dir", path.display())))?;
    let mut file = tempfile::Builder::new()
        .prefix(temp_prefix)
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
