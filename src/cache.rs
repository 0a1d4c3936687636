//! fanout's cache on disk: where it is, and where content-addressed blobs live in it (side
//! files, the Python interpreter's files), and the lock that keeps two processes from filling
//! one entry at once. Only paths and locks: what goes into the cache is the business of the
//! modules that fill it (`runtime`, `python`, `side_files`).

use std::path::{Path, PathBuf};

/// Where fanout keeps compiled code and other caches: `$FANOUT_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/fanout`, else `~/.cache/fanout`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FANOUT_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("fanout")
}

/// Where the cache keeps the blob with this SHA-256.
pub fn blob_path(sha256: &str) -> PathBuf {
    cache_dir().join("files").join("blobs").join(sha256)
}

/// An exclusive lock on `path` (made, with its folder, if missing), held until the file is
/// dropped: one process fills a cache entry while another waits for it, instead of doing
/// minutes of the same work twice.
pub fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(path)?;
    file.lock()?;
    Ok(file)
}
