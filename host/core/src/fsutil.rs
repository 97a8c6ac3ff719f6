//! Small filesystem helpers shared by the daemon's writers.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` so readers see the old file or the new one, never a part: the
/// bytes go to a unique temporary file (named `temp_prefix…`) in the same directory, are
/// fsynced, the file is renamed over `path`, and the directory is fsynced. Unique names keep two
/// writers of the same path from truncating each other's file. The rename is only an entry in
/// the directory: until the directory itself reaches the disk, a power cut can bring back the
/// old file (or no file), so `Ok` waits for that too.
pub fn write_atomic(path: &Path, bytes: &[u8], temp_prefix: &str) -> std::io::Result<()> {
    write_atomic_then(path, bytes, temp_prefix, sync_dir)
}

/// [`write_atomic`] with the directory sync given, so a test can see when it runs.
fn write_atomic_then(
    path: &Path,
    bytes: &[u8],
    temp_prefix: &str,
    sync_parent: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent dir", path.display())))?;
    let mut file = tempfile::Builder::new()
        .prefix(temp_prefix)
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    // `parent()` of a bare file name is "", which names the working directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    sync_parent(dir)
}

/// Fsyncs a directory, so the entries renamed or created in it survive a power cut.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Directories cannot be opened as files here; their entries are durable with the files'.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_synced_after_the_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"old").expect("seed");
        let mut synced = None;
        write_atomic_then(&path, b"new", ".state-", |parent| {
            // Called once the new file is in place under its name.
            synced = Some((
                parent.to_path_buf(),
                std::fs::read(&path).expect("renamed file"),
            ));
            Ok(())
        })
        .expect("written");
        assert_eq!(synced, Some((dir.path().to_path_buf(), b"new".to_vec())));
    }

    #[test]
    fn a_failed_directory_sync_is_an_error_not_a_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let error = write_atomic_then(&path, b"new", ".state-", |_| {
            Err(std::io::Error::other("disk gone"))
        })
        .expect_err("the sync failed");
        assert_eq!(error.to_string(), "disk gone");
    }

    #[test]
    fn a_real_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", ".state-").expect("first");
        write_atomic(&path, b"two", ".state-").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        sync_dir(dir.path()).expect("a directory syncs");
    }
}
