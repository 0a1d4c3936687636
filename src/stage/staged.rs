//! What staging put in a slot ([`Staged`]), and why staging failed ([`StageError`]):
//! shared by the slots, which clean up after it, and the inputs, which make it.

use crate::storage::StorageError;
use std::path::PathBuf;

/// Why a shard's inputs could not be staged. Typed so that a full staging disk is known by
/// its error kind, not by an error's text.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("staging: cannot create {}: {source}", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("staging input {}: {source}", path.display())]
    Link { path: PathBuf, source: std::io::Error },
    #[error("staging: {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("staging {what}: {source}")]
    Fetch { what: String, source: StorageError },
    #[error("staging shard {shard:05}: it was planned from another kind of source than the job reads")]
    OtherSource { shard: u64 },
}

impl StageError {
    /// True when the staging folder's file system ran out of room.
    pub fn is_no_space(&self) -> bool {
        match self {
            StageError::Folder { source, .. } | StageError::Link { source, .. } | StageError::Write { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            StageError::Fetch { source, .. } => source.is_no_space(),
            StageError::OtherSource { .. } => false,
        }
    }
}

/// What one shard's staging put in its slot, to be removed before the next shard.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub stdin: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    /// True when `files` were downloaded (ours to overwrite), not linked to a local source.
    pub downloaded: bool,
    /// Folders made under `in/` for nested keys, deepest first.
    pub dirs: Vec<PathBuf>,
}
